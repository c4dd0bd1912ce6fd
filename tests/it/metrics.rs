//! `/metrics`: valid exposition by the Prometheus project's own parser, and
//! counters that move with what the instance does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use homeostat::decisions::RunStatus;
use serde_json::Value;

use crate::access::sdk_spans;
use crate::actions::{decision, write};
use crate::common::{Instance, python, start_with};

/// Every sample of the exposition, parsed by `prometheus_client`: name and
/// sorted labels to value.
async fn scrape(h: &Instance) -> BTreeMap<String, f64> {
    let text = h
        .client
        .get(h.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/parse_metrics.py");
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(s["labels"].clone()).unwrap();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (
                format!("{}{{{}}}", s["name"].as_str().unwrap(), labels.join(",")),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

const RULE: &str = r#"
description = "Failed server spans per service"
every = "1s"
window = "1m"
sql = """
SELECT service_name, count(*) AS errors
FROM spans
WHERE status_code = 'ERROR' AND service_name <> 'homeostat'
GROUP BY service_name
"""

[action]
max_concurrent = 2
inline = """
if alert.labels.service_name == "broken" {
    throw "this script fails on purpose";
}
decide("note", "failures seen in " + alert.labels.service_name);
1
"""
"#;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_exposition_and_move_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "errors.toml", RULE);
    let rules = dir.path().to_owned();
    let h = start_with(|c| c.rules = rules).await;

    let before = scrape(&h).await;
    for family in [
        "homeostat_rules_loaded{}",
        "homeostat_store_budget_bytes{}",
        "homeostat_export_queue_spans{}",
        "homeostat_approvals_pending{}",
    ] {
        assert!(before.contains_key(family), "no {family} in {before:#?}");
    }
    assert_eq!(get(&before, "homeostat_rules_loaded{}"), 1.0);

    let endpoint = format!("http://{}", h.running.otlp_http);
    let sent = sdk_spans("http", &endpoint, "checkout,broken", 5, None, None)
        .await
        .unwrap();
    assert_eq!(sent, 40);
    decision(&h, "for checkout, succeeded", |d| {
        d.labels.get("service_name").map(String::as_str) == Some("checkout")
            && d.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    decision(&h, "for broken, failed", |d| {
        d.labels.get("service_name").map(String::as_str) == Some("broken")
            && d.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Failed)
    })
    .await;

    let after = scrape(&h).await;
    let moved = |key: &str| get(&after, key) - get(&before, key);
    assert_eq!(
        moved("homeostat_ingested_items_total{signal=traces,transport=http}"),
        40.0
    );
    assert!(get(&after, "homeostat_store_bytes{table=spans}") > 0.0);
    assert!(get(&after, "homeostat_store_rows{table=spans}") >= 40.0);
    assert!(
        moved("homeostat_rule_evaluation_seconds_count{}") >= 1.0,
        "the evaluation histogram counts"
    );
    assert!(
        get(&after, "homeostat_rule_evaluation_seconds_bucket{le=+Inf}")
            == get(&after, "homeostat_rule_evaluation_seconds_count{}")
    );
    assert_eq!(
        get(
            &after,
            "homeostat_alert_instances{rule=errors,state=firing}"
        ),
        2.0,
        "{after:#?}"
    );
    assert_eq!(moved("homeostat_decisions_total{verdict=allowed}"), 2.0);
    assert_eq!(
        moved("homeostat_action_runs_total{error=,status=succeeded}"),
        1.0
    );
    assert_eq!(
        moved("homeostat_action_runs_total{error=script_error,status=failed}"),
        1.0
    );
    assert_eq!(
        moved("homeostat_script_errors_total{kind=script_error}"),
        1.0
    );
    assert_eq!(moved("homeostat_queries_total{outcome=ok}"), 0.0);

    // One item refused inside an accepted request is counted as rejected.
    let now = homeostat::ingest::now_nanos();
    let bad = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0102", "spanId": "0102030405060708", "name": "bad id",
         "startTimeUnixNano": now.to_string(), "endTimeUnixNano": now.to_string()}
    ]}]}]});
    let r = h
        .post(
            "/v1/traces",
            "application/json",
            false,
            bad.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let last = scrape(&h).await;
    assert_eq!(
        get(
            &last,
            "homeostat_rejected_items_total{signal=traces,transport=http}"
        ) - get(
            &after,
            "homeostat_rejected_items_total{signal=traces,transport=http}"
        ),
        1.0
    );
}
