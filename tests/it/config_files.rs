//! The example configuration, the binary's flags and its lifecycle.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use homeostat::config::Config;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/homeostat.toml");

#[test]
fn the_example_config_parses_and_documents_every_key() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let config = Config::parse(&text, Path::new(EXAMPLE)).unwrap();
    config.validate().unwrap();
    // Every key of the configuration appears in the example with a comment
    // line right above it.
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&defaults, "", &mut keys);
    let lines: Vec<&str> = text.lines().collect();
    for key in keys {
        let leaf = key.rsplit('.').next().unwrap();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{leaf} =")))
            .unwrap_or_else(|| panic!("{key} is missing from {EXAMPLE}"));
        assert!(
            at > 0 && lines[at - 1].trim_start().starts_with('#'),
            "{key} has no comment above it in {EXAMPLE}"
        );
    }
}

fn collect_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = value {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(_) => collect_keys(v, &key, out),
                _ => out.push(key),
            }
        }
    }
}

/// `homeostat run --config F --api ...`: flags win over the file; the
/// instance answers `homeostat query`; SIGHUP reloads the rules; SIGTERM
/// stops it cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_runs_queries_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeostat.toml");
    std::fs::write(
        &config,
        "otlp_grpc = \"127.0.0.1:0\"\notlp_http = \"127.0.0.1:0\"\napi = \"192.0.2.1:1\"\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_homeostat");
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--api", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("HOMEOSTAT_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The ready line names the bound addresses; the file's unroutable API
    // address would have failed the start, so the flag won.
    let (api, mut lines) = crate::common::ready_address(&mut child, "api").await;
    homeostat::act::host::install_crypto_provider();
    let ready = reqwest::get(format!("http://{api}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    let out = tokio::process::Command::new(bin)
        .args([
            "query",
            "--api",
            &api,
            "SELECT 40 + 2 AS answer, 'a' AS letter",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| answer | letter |"), "{table}");
    assert!(table.contains("| 42     | a      |"), "{table}");
    assert!(table.contains("1 row"), "{table}");

    let bad = tokio::process::Command::new(bin)
        .args(["query", "--api", &api, "SELECT missing FROM spans"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("No field named missing"));

    // The rules folder did not exist at start (so nothing watches it):
    // SIGHUP is what loads the rule written since.
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("hup.toml"), "sql = \"SELECT 1 AS one\"\n").unwrap();
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a reload within 30 s of SIGHUP")
            .unwrap()
            .expect("homeostat exited");
        if line.contains("rules loaded") && line.contains("loaded=1") {
            break;
        }
    }
    let listed: serde_json::Value = reqwest::get(format!("http://{api}/api/v1/rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["rules"][0]["name"], "hup");

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

#[test]
fn a_config_error_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "api = \"127.0.0.1:0\"\n\n[store]\nmemory_budget = 12\nretention = \"1x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5:"), "{err}");
    assert!(err.contains("invalid duration"), "{err}");
}
