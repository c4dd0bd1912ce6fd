//! Rules end to end: `homeostat check` and `homeostat test` as a user runs
//! them, a live error burst from the real SDK walking an instance through
//! its states, and hot reload.

use std::path::Path;
use std::time::Duration;

use homeostat::rules::AlertState;
use serde_json::Value;

use crate::common::{homeostat_cli as homeostat, python, spans_now_json, start_with};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");

#[test]
fn the_shipped_rules_check_and_pass_their_tests() {
    let (ok, out) = homeostat(&["check", RULES]);
    assert!(ok, "{out}");
    assert!(out.contains("5 rules OK"), "{out}");
    let (ok, out) = homeostat(&["test", RULES]);
    assert!(ok, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // The shipped dataset, a recorded incident, runs with them.
    assert!(
        out.contains("checkout_error_burst/v1/dataset.test.toml")
            && out.contains("1 recorded decisions still happen, 0 no longer happen"),
        "{out}"
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn check_reports_each_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "good.toml",
        "sql = \"SELECT service_name, count(*) AS n FROM spans GROUP BY service_name\"\n",
    );
    write(
        d,
        "toml_syntax.toml",
        "description = \"x\"\nsql = \"SELECT 1\n",
    );
    write(
        d,
        "unknown_key.toml",
        "sql = \"SELECT 1\"\n\nthreshold = 0.5\n",
    );
    write(
        d,
        "bad_duration.toml",
        "sql = \"SELECT 1\"\nevery = \"often\"\n",
    );
    write(
        d,
        "sql_syntax.toml",
        "description = \"x\"\nsql = \"\"\"\nSELECT service_name\nFROM spans\nWHERE WHERE\n\"\"\"\n",
    );
    write(
        d,
        "unknown_column.toml",
        "sql = \"\"\"\nSELECT service_name,\n       no_such_column\nFROM spans\n\"\"\"\n",
    );
    write(
        d,
        "missing_sql_file.toml",
        "every = \"5s\"\nsql_file = \"nope.sql\"\n",
    );
    write(
        d,
        "bad_key.toml",
        "sql = \"SELECT 'a' AS x\"\nkey = [\"y\"]\n",
    );
    write(
        d,
        "bad_script.toml",
        "sql = \"SELECT 1 AS one\"\n[action]\nscript = \"bad.rhai\"\n",
    );
    write(d, "bad.rhai", "let a = 1;\nlet = 2;\n");
    write(
        d,
        "sub/duplicate.toml",
        "name = \"good\"\nsql = \"SELECT 1\"\n",
    );
    write(
        d,
        "good.test.toml",
        "this is not a rule file = and is ignored by check\n",
    );

    let (ok, out) = homeostat(&["check", d.to_str().unwrap()]);
    assert!(!ok, "check must fail:\n{out}");
    let p = |f: &str| d.join(f).display().to_string();
    let expected = [
        format!("{}:2: ", p("toml_syntax.toml")),
        format!("{}:3: unknown field `threshold`", p("unknown_key.toml")),
        format!("{}:2: invalid duration \"often\"", p("bad_duration.toml")),
        format!("{}:5: ", p("sql_syntax.toml")),
        format!("{}:3: ", p("unknown_column.toml")),
        format!("{}:2: cannot read sql_file", p("missing_sql_file.toml")),
        format!(
            "{}:2: key column \"y\" is not in the query's result",
            p("bad_key.toml")
        ),
        format!("{}:2: script error", p("bad.rhai")),
        format!(
            "{}:1: rule name \"good\" is already used by",
            p("sub/duplicate.toml")
        ),
    ];
    for e in &expected {
        assert!(
            out.lines().any(|l| l.starts_with(e.as_str())),
            "missing {e:?} in:\n{out}"
        );
    }
    assert!(out.contains("no_such_column"), "{out}");
    assert!(
        out.contains(&format!("{} problems found", expected.len())),
        "{out}"
    );
}

#[test]
fn a_failing_rule_test_names_the_file_the_test_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rule = std::fs::read_to_string(Path::new(RULES).join("checkout_error_ratio.toml"))
        .unwrap()
        .replace("> 0.05", "> 0.5");
    write(d, "checkout_error_ratio.toml", &rule);
    std::fs::create_dir(d.join("actions")).unwrap();
    std::fs::copy(
        Path::new(RULES).join("actions/restart_deployment.rhai"),
        d.join("actions/restart_deployment.rhai"),
    )
    .unwrap();
    let test =
        std::fs::read_to_string(Path::new(RULES).join("tests/checkout_error_ratio.test.toml"))
            .unwrap();
    write(d, "checkout_error_ratio.test.toml", &test);
    let (ok, out) = homeostat(&["test", d.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  "), "{out}");
    assert!(
        out.contains("an error burst goes pending, fires, then resolves"),
        "{out}"
    );
    assert!(
        out.contains("at 35s rule checkout_error_ratio:\n    expected: {service_name=\"checkout\"} pending\n    got:      (no alerts)"),
        "{out}"
    );
    // The expected action is missing too, and said so.
    assert!(
        out.contains("rule checkout_error_ratio: expected 1 decisions, got 0"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

/// The rule named `name` in a `/api/v1/rules` answer.
fn rule<'a>(rules: &'a Value, name: &str) -> &'a Value {
    rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {rules}"))
}

/// Waits for the instance of `rule` to reach `state`, driven by the engine's
/// own transition events (no sleeping).
pub async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<homeostat::rules::RuleEvent>,
    rule: &str,
    state: AlertState,
) {
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        loop {
            let e = events.recv().await.expect("engine running");
            if e.rule.name == rule && e.event.transition.to == state {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{rule} did not become {state:?} within {deadline:?}"));
}

const BURST_RULE: &str = r#"
description = "Any failed span"
every = "1s"
window = "2s"
lateness = "0s"
for = "2s"
sql = """
SELECT service_name, count(*) AS errors
FROM spans
WHERE status_code = 'ERROR'
GROUP BY service_name
"""
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_error_burst_goes_pending_firing_resolved() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "burst.toml", BURST_RULE);
    let rules_dir = dir.path().to_owned();
    let h = start_with(|c| c.rules = rules_dir).await;
    let mut events = h.running.rules.subscribe();

    let sender = tokio::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/burst.py"))
        .args([
            "--endpoint",
            &h.otlp_grpc_url(),
            "--service",
            "checkout",
            "--seconds",
            "4",
        ])
        .output();
    let (output, ()) = tokio::join!(sender, async {
        wait_for(&mut events, "burst", AlertState::Pending).await;
        wait_for(&mut events, "burst", AlertState::Firing).await;
    });
    let output = output.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for(&mut events, "burst", AlertState::Resolved).await;

    let rules: Value = h.get_json("/api/v1/rules").await;
    let rule = &rules["rules"][0];
    assert_eq!(rule["name"], "burst");
    assert_eq!(rule["health"], "ok");
    assert!(rule["last_evaluation"]["at"].as_i64().unwrap() > 0);
    let instance = &rule["instances"][0];
    assert_eq!(instance["labels"]["service_name"], "checkout");
    assert_eq!(instance["state"], "resolved");
    let path: Vec<(&str, &str)> = instance["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["from"].as_str().unwrap(), t["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        path,
        [
            ("inactive", "pending"),
            ("pending", "firing"),
            ("firing", "resolved")
        ]
    );
    let t: Vec<i64> = instance["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["at"].as_i64().unwrap())
        .collect();
    assert!(
        t[1] - t[0] >= 2_000_000_000,
        "firing waited for `for`: {t:?}"
    );
    assert!(
        instance["transitions"][1]["values"]["errors"]
            .as_i64()
            .unwrap()
            > 0
    );
}

const RATIO_RULE: &str = r#"
every = "1s"
window = "1h"
sql = "SELECT service_name, count(*) AS spans FROM spans GROUP BY service_name HAVING count(*) > 0"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_applies_edits_keeps_state_and_survives_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "volume.toml", RATIO_RULE);
    write(
        dir.path(),
        "other.toml",
        &RATIO_RULE.replace("count(*) > 0", "count(*) > 1000000"),
    );
    let rules_dir = dir.path().to_owned();
    let h = start_with(|c| c.rules = rules_dir).await;
    let mut events = h.running.rules.subscribe();
    let mut reloads = h.running.rules.reloads();

    let r = h
        .post(
            "/v1/traces",
            "application/json",
            false,
            spans_now_json("reload-svc"),
        )
        .await;
    assert_eq!(r.status(), 200);
    wait_for(&mut events, "volume", AlertState::Firing).await;
    let fired_at = |rules: &Value| rule(rules, "volume")["instances"][0]["fired_at"].as_i64();
    let before: Value = h.get_json("/api/v1/rules").await;

    // Edit the other rule's threshold: the watcher reloads it.
    reloads.borrow_and_update();
    write(
        dir.path(),
        "other.toml",
        &RATIO_RULE.replace("count(*) > 0", "count(*) > 0 AND count(*) < 1000"),
    );
    tokio::time::timeout(Duration::from_secs(30), reloads.changed())
        .await
        .expect("file change reloads")
        .unwrap();
    wait_for(&mut events, "other", AlertState::Firing).await;
    let after: Value = h.get_json("/api/v1/rules").await;
    assert_eq!(
        fired_at(&before),
        fired_at(&after),
        "the unchanged rule kept its instance"
    );
    let other = rule(&after, "other");
    assert!(other["sql"].as_str().unwrap().contains("< 1000"));

    // A broken edit: reported, and the previous version keeps running.
    write(dir.path(), "other.toml", "sql = \"SELECT FROM WHERE\"\n");
    let report: Value = h
        .client
        .post(h.api_url("/-/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(
        errors[0].as_str().unwrap().contains("other.toml:1: "),
        "{report}"
    );
    let rules: Value = h.get_json("/api/v1/rules").await;
    assert_eq!(rules["errors"], report["errors"]);
    let other = rule(&rules, "other");
    assert!(
        other["sql"].as_str().unwrap().contains("< 1000"),
        "old version kept"
    );
    assert_eq!(other["instances"][0]["state"], "firing");
    assert_eq!(fired_at(&before), fired_at(&rules));
    // And the old version is still evaluated on schedule.
    let mut evaluations = h.running.rules.subscribe_evaluations();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (name, e) = evaluations.recv().await.unwrap();
            if name == "other" {
                assert_eq!(e.error, None);
                assert_eq!(e.rows, 1);
                return;
            }
        }
    })
    .await
    .expect("the previous version keeps running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_rule_is_recorded_and_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    // Plans fine, fails at run time on every tick once there is data.
    write(
        dir.path(),
        "broken_at_runtime.toml",
        "every = \"1s\"\nwindow = \"1h\"\nsql = \"SELECT span_name, CAST(span_name AS BIGINT) AS n FROM spans\"\n",
    );
    write(dir.path(), "volume.toml", RATIO_RULE);
    let rules_dir = dir.path().to_owned();
    let h = start_with(|c| c.rules = rules_dir).await;
    let mut events = h.running.rules.subscribe();
    let mut evaluations = h.running.rules.subscribe_evaluations();
    let r = h
        .post(
            "/v1/traces",
            "application/json",
            false,
            spans_now_json("failing-neighbour"),
        )
        .await;
    assert_eq!(r.status(), 200);

    wait_for(&mut events, "volume", AlertState::Firing).await;
    // The broken rule keeps being tried, and says why it fails.
    let error = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (name, e) = evaluations.recv().await.unwrap();
            if name == "broken_at_runtime"
                && let Some(error) = e.error
            {
                return error;
            }
        }
    })
    .await
    .expect("the broken rule is evaluated");
    assert!(error.contains("Cannot cast string 'GET /'"), "{error}");
    let rules: Value = h.get_json("/api/v1/rules").await;
    let broken = rule(&rules, "broken_at_runtime");
    assert_eq!(broken["health"], "error");
    assert!(broken["last_evaluation"]["error"].as_str().is_some());
    let failures = h
        .metric(r#"homeostat_rule_evaluations_total{outcome="error"}"#)
        .await
        .unwrap();
    assert!(failures >= 1.0);
}
