//! The dashboard with a full list: time to first render and to filter 1000
//! decisions in Chromium, against the same page with 10 decisions measured
//! in the same run (the baseline: what the page costs whatever the list).
//!
//! `cargo bench --bench dashboard` starts an instance in this process per
//! size, ingests one span for each of N services so that a dry-run rule
//! makes N decisions, then runs `tests/browser/dashboard.py --phase
//! thousand` (Playwright driving Debian's Chromium; `tests/setup.sh`
//! installs both). It reports the page's own timings: first render since
//! navigation (fetch + build), the filter functions, and each filter round
//! until the next frame is painted. Under `cargo test --benches` it runs
//! with 10 and 50 decisions and checks the page showed them all.

use std::path::PathBuf;
use std::time::Duration;

use homeostat::config::Config;
use homeostat::decisions::{DECISIONS_KEPT, Filter};
use homeostat::server;
use serde_json::Value;

#[path = "../tests/browser/services.rs"]
mod services;

const TOKEN: &str = "dashboard-bench-token-0123";

/// Starts an instance with `n` decisions and measures the page on it.
async fn measure(n: usize) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rules = tempfile::tempdir().expect("temporary folder");
    std::fs::write(
        rules.path().join("every_service.toml"),
        services::EVERY_SERVICE_RULE,
    )
    .expect("rule written");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config {
        otlp_grpc: any,
        otlp_http: any,
        api: any,
        data: "memory://".into(),
        rules: rules.path().to_owned(),
        ..Config::default()
    };
    config.web.token = TOKEN.into();
    let running = server::start(config).await.expect("instance starts");
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", running.otlp_http))
        .header("content-type", "application/json")
        .body(services::spans_for_services(
            n,
            homeostat::ingest::now_nanos(),
        ))
        .send()
        .await
        .expect("OTLP/HTTP reachable");
    assert_eq!(response.status(), 200);
    let log = running.actor.log();
    let mut changes = log.subscribe();
    let all = Filter {
        limit: n,
        ..Filter::default()
    };
    tokio::time::timeout(Duration::from_secs(300), async {
        while log.list(&all).len() < n {
            changes.changed().await.expect("the log lives");
        }
    })
    .await
    .expect("every decision within 5 minutes");

    let python = std::env::var_os("HOMEOSTAT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/test-env/venv/bin/python"));
    let out = root.join(format!("target/browser/bench-{n}"));
    let output = tokio::process::Command::new(&python)
        .arg(root.join("tests/browser/dashboard.py"))
        .args(["--url", &format!("http://{}", running.api)])
        .args(["--token", TOKEN, "--phase", "thousand"])
        .args(["--expect", &n.to_string()])
        .arg("--out")
        .arg(&out)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} cannot run ({e}): run tests/setup.sh first",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "dashboard.py with {n} decisions failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    running.shutdown();
    let measured: Value = serde_json::from_slice(&output.stdout).expect("dashboard.py prints JSON");
    assert_eq!(measured["rows"], n, "{measured}");
    measured
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn mean(v: &Value) -> f64 {
    let all: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().map(ms).collect())
        .unwrap_or_default();
    all.iter().sum::<f64>() / all.len().max(1) as f64
}

fn main() {
    let timing = std::env::args().any(|a| a == "--bench");
    homeostat::act::host::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (small, full) = if timing {
        (10, DECISIONS_KEPT)
    } else {
        (10, 50)
    };
    let base = runtime.block_on(measure(small));
    let big = runtime.block_on(measure(full));
    if !timing {
        println!(
            "dashboard bench: {small} and {full} decisions shown (run with `cargo bench --bench dashboard` for figures)"
        );
        return;
    }
    println!();
    println!("Dashboard in Chromium: {full} decisions against {small} (baseline, same run)");
    println!("| measure | {small} decisions | {full} decisions | ratio |");
    println!("|---|---|---|---|");
    let row = |what: &str, a: f64, b: f64| {
        println!("| {what} | {a:.1} ms | {b:.1} ms | {:.1}x |", b / a);
    };
    row(
        "first render since navigation",
        ms(&base["first_render_ms"]),
        ms(&big["first_render_ms"]),
    );
    row(
        "of which fetching the list",
        ms(&base["fetch_ms"]),
        ms(&big["fetch_ms"]),
    );
    row(
        "of which building the rows",
        ms(&base["build_ms"]),
        ms(&big["build_ms"]),
    );
    row(
        "filter function (mean)",
        mean(&base["filter_ms"]),
        mean(&big["filter_ms"]),
    );
    row(
        "filter to next painted frame (mean)",
        mean(&base["round_ms"]),
        mean(&big["round_ms"]),
    );
    row(
        "filter to next painted frame (max)",
        ms(&base["max_round_ms"]),
        ms(&big["max_round_ms"]),
    );
}
