//! The dashboard in a real browser: Debian's Chromium, driven by Playwright
//! (`tests/browser/dashboard.py`), against an instance fed by the real
//! OpenTelemetry SDK. Screenshots go to `target/browser/`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use homeostat::decisions::{Decision, Filter, RunStatus, Verdict};
use serde_json::Value;

use crate::access::sdk_spans;
use crate::actions::{decision, webhook, write};
use crate::common::{Instance, python, start_with};

#[path = "../browser/services.rs"]
mod services;

const TOKEN: &str = "dashboard-token-0123456789";

/// Runs `dashboard.py` for `phase` and returns what it printed.
async fn browser(h: &Instance, phase: &str, args: &[&str]) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/browser").join(phase);
    let _ = std::fs::remove_dir_all(&out);
    let output = tokio::process::Command::new(python())
        .arg(root.join("tests/browser/dashboard.py"))
        .args(["--url", &format!("http://{}", h.running.api)])
        .args(["--token", TOKEN, "--phase", phase])
        .arg("--out")
        .arg(&out)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("dashboard.py starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "dashboard.py --phase {phase} failed ({}); screenshots in {}:\n{stderr}",
        output.status,
        out.display()
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "dashboard.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn service(d: &Decision) -> Option<&str> {
    d.labels.get("service_name").map(String::as_str)
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_of_a_real_rule_are_filtered_opened_and_approved_in_chromium() {
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "checkout_errors.toml",
        &format!(
            r#"
description = "Failed server spans for a service"
every = "1s"
window = "5m"
sql = """
SELECT service_name, count(*) AS errors, array_agg(trace_id) AS trace_ids
FROM spans
WHERE status_code = 'ERROR' AND service_name <> 'homeostat'
GROUP BY service_name
"""

[action]
approval = "required"
approval_expiry = "10m"
http = ["{url}"]
inline = """
consider("notify", "the on-call channel hears of it");
consider("wait", "it may pass");
decide("notify", `${{alert.values.errors}} failed spans`);
http::post("{url}hook", #{{ service: alert.labels.service_name }}).status
"""
"#,
            url = hook.url
        ),
    );
    write(
        dir.path(),
        "traffic.toml",
        r#"
description = "Any server traffic, noted in dry-run"
every = "1s"
window = "5m"
sql = """
SELECT service_name, count(*) AS spans
FROM spans
WHERE span_kind = 'SERVER' AND service_name <> 'homeostat'
GROUP BY service_name
"""

[action]
dry_run = true
max_concurrent = 4
inline = "decide(\"note\", \"traffic seen\"); 1"
"#,
    );
    let rules = dir.path().to_owned();
    let h = start_with(|c| {
        c.rules = rules;
        c.web.token = TOKEN.into();
        c.web.trace_url = "http://jaeger.example:16686/trace/{trace_id}".into();
    })
    .await;
    let grpc = h.otlp_grpc_url();
    sdk_spans("grpc", &grpc, "checkout", 5, None, None)
        .await
        .unwrap();
    sdk_spans("grpc", &grpc, "payments", 0, None, None)
        .await
        .unwrap();
    let pending = decision(&h, "awaiting approval", |d| {
        d.policy.verdict == Verdict::AwaitingApproval
    })
    .await;
    for svc in ["checkout", "payments"] {
        decision(&h, &format!("traffic for {svc}"), |d| {
            d.rule == "traffic" && service(d) == Some(svc)
        })
        .await;
    }
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        0,
        "nothing runs unapproved"
    );

    let seen = browser(&h, "paths", &["--rule", "checkout_errors", "--expect", "3"]).await;
    assert_eq!(seen["approved"], pending.id.as_str(), "{seen}");

    // The click in the browser ran the action, once, as approved.
    let done = decision(&h, "approved and run", |d| {
        d.id == pending.id
            && d.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    assert_eq!(done.policy.verdict, Verdict::Approved);
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    assert_eq!(hook.bodies.lock()[0]["service"], "checkout");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_decisions_render_and_filter_without_stalling() {
    const SERVICES: usize = homeostat::decisions::DECISIONS_KEPT;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "every_service.toml",
        services::EVERY_SERVICE_RULE,
    );
    let rules = dir.path().to_owned();
    let h = start_with(|c| {
        c.rules = rules;
        c.web.token = TOKEN.into();
    })
    .await;
    // A thousand services in one request, half of them failing.
    let body = services::spans_for_services(SERVICES, homeostat::ingest::now_nanos());
    let r = h
        .post("/v1/traces", "application/json", false, body.into_bytes())
        .await;
    assert_eq!(r.status(), 200);
    let log = h.running.actor.log();
    let mut changes = log.subscribe();
    let all = Filter {
        limit: SERVICES,
        ..Filter::default()
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while log.list(&all).len() < SERVICES {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} decisions, not {SERVICES}", log.list(&all).len()));

    // The rules view asks for a page of instances, and the counts of all.
    let rules = h.get_json_as(TOKEN, "/api/v1/rules?instances=5").await;
    let rule = &rules["rules"][0];
    assert_eq!(rule["instances"].as_array().unwrap().len(), 5);
    assert_eq!(rule["instances_total"], SERVICES);
    assert_eq!(rule["instance_counts"]["firing"], SERVICES);
    assert_eq!(rule["instances"][0]["state"], "firing");

    let measured = browser(&h, "thousand", &["--expect", &SERVICES.to_string()]).await;
    assert_eq!(measured["rows"], SERVICES, "{measured}");
    // Reported, not asserted: wall-clock times depend on the machine.
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser/thousand.json");
    std::fs::write(&report, measured.to_string()).unwrap();
    println!("dashboard with {SERVICES} decisions: {measured}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_tells_of_decisions_and_ends_when_the_instance_stops() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "seen.toml",
        r#"
every = "1s"
window = "5m"
sql = "SELECT service_name FROM spans WHERE service_name = 'streamed' GROUP BY service_name"

[action]
dry_run = true
inline = "1"
"#,
    );
    let rules = dir.path().to_owned();
    let mut h = start_with(|c| c.rules = rules).await;
    let mut stream = h
        .client
        .get(h.api_url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    let mut next = async |text: &mut String, want: &str| {
        while !text.contains(want) {
            let chunk = stream.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let bounded = std::time::Duration::from_secs(30);
    tokio::time::timeout(bounded, next(&mut text, "event: tick\n"))
        .await
        .expect("a tick within 30 s");
    let before = h.get_json("/api/v1/decisions").await;
    assert_eq!(before["full"], true);
    let version = before["version"].as_u64().unwrap();
    let r = h
        .post(
            "/v1/traces",
            "application/json",
            false,
            crate::common::spans_now_json("streamed"),
        )
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::timeout(bounded, next(&mut text, "event: decisions\n"))
        .await
        .expect("a decisions event within 30 s");

    // What changed after a version, exactly; a version from before a
    // restart (here: from the future) gets the whole list.
    let changed = h
        .get_json(&format!("/api/v1/decisions?after={version}"))
        .await;
    assert_eq!(changed["full"], false);
    let ids: Vec<&str> = changed["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let all = h.get_json("/api/v1/decisions").await;
    assert_eq!(all["decisions"].as_array().unwrap().len(), ids.len());
    assert!(!ids.is_empty());
    let now = changed["version"].as_u64().unwrap();
    assert!(now > version);
    let nothing = h.get_json(&format!("/api/v1/decisions?after={now}")).await;
    if nothing["version"] == now {
        assert_eq!(nothing["decisions"].as_array().unwrap().len(), 0);
    }
    let future = h
        .get_json(&format!("/api/v1/decisions?after={}", now + 1_000_000))
        .await;
    assert_eq!(future["full"], true);
    assert!(!future["decisions"].as_array().unwrap().is_empty());

    // An open stream does not hold up a graceful stop.
    h.running.shutdown();
    tokio::time::timeout(bounded, h.running.join())
        .await
        .expect("the instance stops with a stream open")
        .unwrap();
    let rest = tokio::time::timeout(bounded, async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ended");
}
