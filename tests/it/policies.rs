//! Policies and outcomes on virtual time: the rule engine and the actor
//! driven step by step as `homeostat test` drives them, with real scripts,
//! real host calls to a webhook this test serves, and no waiting for the
//! clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use homeostat::act::actor::{Actor, Clock};
use homeostat::act::config::Trigger;
use homeostat::decisions::{Decision, Filter, Outcome, RunStatus, Verdict};
use homeostat::ingest::ExportRequest;
use homeostat::internal_events::Metrics;
use homeostat::rules::{RuleEngine, RuleEvent};
use homeostat::store::{Store, StoreOptions};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::actions::{webhook, write};

const S: i64 = 1_000_000_000;
const ORIGIN: i64 = homeostat::rules::testing::ORIGIN;

struct Sim {
    store: Arc<Store>,
    engine: Arc<RuleEngine>,
    actor: Arc<Actor>,
    clock: Arc<AtomicI64>,
    events: tokio::sync::broadcast::Receiver<RuleEvent>,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Loads `rules` (file name, text), plus extra files, on virtual time.
    async fn new(files: &[(&str, String)]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let store = Arc::new(Store::new(StoreOptions {
            memory_budget: u64::MAX,
            retention: std::time::Duration::from_secs(365 * 24 * 3600),
            partition: std::time::Duration::from_secs(60),
            max_age: std::time::Duration::MAX,
            max_future: std::time::Duration::MAX,
            flush_bytes: u64::MAX,
        }));
        let metrics = Arc::new(Metrics::new());
        let engine =
            Arc::new(RuleEngine::new(dir.path().to_owned(), &store, metrics.clone()).unwrap());
        let report = engine.reload().await;
        assert!(report.errors.is_empty(), "{report:?}");
        let clock = Arc::new(AtomicI64::new(ORIGIN));
        let actor = Arc::new(
            Actor::standalone(store.clone(), metrics, Clock::Virtual(clock.clone())).unwrap(),
        );
        let events = engine.subscribe();
        Sim {
            store,
            engine,
            actor,
            clock,
            events,
            _dir: dir,
        }
    }

    /// One span of `service` every second over `[from, to)` seconds.
    fn spans(&self, service: &str, from: i64, to: i64) {
        let spans = (from..to)
            .map(|t| Span {
                trace_id: ((ORIGIN + t * S) as u128).to_be_bytes().to_vec(),
                span_id: (t as u64 + 1).to_be_bytes().to_vec(),
                name: "GET /".into(),
                kind: 2,
                start_time_unix_nano: (ORIGIN + t * S) as u64,
                end_time_unix_nano: (ORIGIN + t * S) as u64 + 1_000,
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(service.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let converted = request.convert().unwrap();
        self.store
            .insert(homeostat::ingest::Signal::Traces, converted.batch, ORIGIN)
            .unwrap();
    }

    /// Evaluates every rule at `t` seconds, hands the transitions to the
    /// actor, lets time-driven work happen, and waits for the runs.
    async fn at(&mut self, t: i64) {
        let now = ORIGIN + t * S;
        self.clock.store(now, Ordering::Release);
        for name in self.engine.rules().keys() {
            self.engine.evaluate(name, now).await.unwrap();
        }
        let mut runs = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            runs.extend(self.actor.on_event(&event, now));
        }
        runs.extend(self.actor.tick(&self.engine, now));
        for run in runs {
            run.await.unwrap();
        }
    }

    /// Evaluates every 10 s from `from` to `to` seconds, both included.
    async fn run(&mut self, from: i64, to: i64) {
        let mut t = from;
        while t <= to {
            self.at(t).await;
            t += 10;
        }
    }

    /// The rule's decisions, oldest first.
    fn decisions(&self, rule: &str) -> Vec<Decision> {
        let mut d = self.actor.log().list(&Filter {
            rule: Some(rule.into()),
            limit: 1000,
            ..Default::default()
        });
        d.reverse();
        d
    }
}

/// Fires for every service with spans in the last 30 s.
fn rule(action: &str) -> String {
    format!(
        r#"
every = "10s"
window = "30s"
sql = "SELECT service_name, count(*) AS n FROM spans WHERE service_name <> 'homeostat' GROUP BY service_name"

[action]
{action}
"#
    )
}

fn verdicts(decisions: &[Decision]) -> Vec<Verdict> {
    decisions.iter().map(|d| d.policy.verdict).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn once_per_episode_then_cooldown_across_episodes() {
    let mut sim = Sim::new(&[(
        "r.toml",
        rule("cooldown = \"5m\"\ninline = \"decide(\\\"act\\\", \\\"test\\\"); 1\""),
    )])
    .await;
    sim.spans("a", 0, 60); // episode 1: fires at 10 s, resolves at 90 s
    sim.spans("a", 100, 110); // episode 2 at 110 s: cooling down until 310 s
    sim.spans("a", 400, 410); // episode 3 at 410 s: acts again
    sim.run(0, 450).await;
    let d = sim.decisions("r");
    assert_eq!(
        verdicts(&d),
        [Verdict::Allowed, Verdict::Suppressed, Verdict::Allowed],
        "{d:#?}"
    );
    assert_eq!(d.iter().map(|d| d.episode).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        d[1].policy.reason,
        "suppressed: cooldown until 2024-01-01T00:05:10Z"
    );
    assert_eq!(d[1].outcome, Outcome::None);
    assert!(d[1].run.is_none());
    let cooldown = d[1]
        .policy
        .checks
        .iter()
        .find(|c| c.policy == "cooldown")
        .unwrap();
    assert!(!cooldown.passed);
    // Within an episode the instance keeps firing: no second decision.
    assert_eq!(d[0].at, ORIGIN + 10 * S);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_per_rule_and_concurrency() {
    // The busy rule's run hangs (up to its call timeout) while the other
    // instances' transitions are handled.
    let hook = webhook().await;
    let mut sim = Sim::new(&[
        (
            "rate.toml",
            rule("max_per_hour = 2\nmax_concurrent = 5\ninline = \"1\""),
        ),
        (
            "busy.toml",
            rule(&format!(
                "max_concurrent = 1\nhttp = [\"{0}\"]\ncall_timeout = \"3s\"\ninline = \"try {{ http::post(\\\"{0}hang\\\", #{{}}) }} catch {{ 0 }}\"",
                hook.url
            )),
        ),
    ])
    .await;
    for service in ["a", "b", "c"] {
        sim.spans(service, 0, 5);
    }
    sim.at(10).await;
    let rate = sim.decisions("rate");
    let allowed = rate
        .iter()
        .filter(|d| d.policy.verdict == Verdict::Allowed)
        .count();
    assert_eq!(allowed, 2, "{rate:#?}");
    let limited: Vec<&Decision> = rate
        .iter()
        .filter(|d| d.policy.verdict == Verdict::Suppressed)
        .collect();
    assert_eq!(limited.len(), 1);
    assert!(
        limited[0]
            .policy
            .reason
            .starts_with("suppressed: rate limit of 2 per hour until 2024-01-01T01:00:10Z"),
        "{}",
        limited[0].policy.reason
    );
    // Three instances fire at once; one run at a time: the others wait for
    // nobody, they are suppressed and say why.
    let busy = sim.decisions("busy");
    assert_eq!(busy.len(), 3);
    assert_eq!(
        busy.iter()
            .filter(|d| d.policy.verdict == Verdict::Allowed)
            .count(),
        1
    );
    for d in busy
        .iter()
        .filter(|d| d.policy.verdict == Verdict::Suppressed)
    {
        assert!(
            d.policy.reason.contains("max_concurrent = 1"),
            "{}",
            d.policy.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_expires_when_nobody_answers() {
    let mut sim = Sim::new(&[(
        "r.toml",
        rule("approval = \"required\"\napproval_expiry = \"1m\"\ninline = \"1\""),
    )])
    .await;
    sim.spans("a", 0, 200);
    sim.run(0, 60).await;
    let d = sim.decisions("r");
    assert_eq!(verdicts(&d), [Verdict::AwaitingApproval]);
    assert_eq!(d[0].outcome, Outcome::Pending);
    assert_eq!(sim.actor.pending_approvals().len(), 1);
    sim.at(70).await;
    let d = sim.decisions("r");
    assert_eq!(verdicts(&d), [Verdict::Expired]);
    assert_eq!(d[0].outcome, Outcome::None);
    assert!(d[0].run.is_none());
    assert!(sim.actor.pending_approvals().is_empty());
    // Too late to answer.
    assert!(sim.actor.answer(&d[0].id, true, None, None).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_records_calls_without_making_them() {
    let hook = webhook().await;
    let mut sim = Sim::new(&[(
        "r.toml",
        rule(&format!(
            "dry_run = true\nhttp = [\"{0}\"]\ninline = \"http::post(\\\"{0}hook\\\", #{{}}); memory::put(\\\"k\\\", 1); 1\"",
            hook.url
        )),
    )])
    .await;
    sim.spans("a", 0, 5);
    sim.at(10).await;
    let d = &sim.decisions("r")[0];
    assert!(d.policy.dry_run);
    assert_eq!(d.run.as_ref().unwrap().status, RunStatus::Succeeded);
    let statuses: Vec<&str> = d.host_calls.iter().map(|c| c.status.name()).collect();
    assert_eq!(statuses, ["dry_run", "dry_run"]);
    assert_eq!(hook.calls.load(Ordering::SeqCst), 0);
    assert!(sim.actor.facts().get("k").is_none());
    assert_eq!(d.outcome, Outcome::None, "a dry run has nothing to verify");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_webhook_is_cut_at_its_timeout_and_retried() {
    let hook = webhook().await;
    let mut sim = Sim::new(&[(
        "r.toml",
        rule(&format!(
            "http = [\"{0}\"]\ncall_timeout = \"300ms\"\nretries = 1\nretry_backoff = \"10ms\"\ninline = \"http::post(\\\"{0}hang\\\", #{{}})\"",
            hook.url
        )),
    )])
    .await;
    sim.spans("a", 0, 5);
    sim.at(10).await;
    let d = &sim.decisions("r")[0];
    let run = d.run.as_ref().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_ref().unwrap().kind, "host_timeout");
    assert_eq!(run.attempts, 2);
    assert_eq!(d.host_calls.len(), 2);
    for (i, call) in d.host_calls.iter().enumerate() {
        assert_eq!(call.status.name(), "timeout");
        assert_eq!(call.attempt, i as u32 + 1);
        assert!(call.error.as_ref().unwrap().contains("no answer within"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outcomes_are_verified_and_ineffective_actions_escalate() {
    let mut sim = Sim::new(&[
        (
            "fixed.toml",
            rule("verify_within = \"1m\"\nmax_concurrent = 2\ninline = \"decide(\\\"restart\\\", \\\"x\\\"); 1\""),
        ),
        (
            "stuck.toml",
            rule("on_ineffective = \"escalate.rhai\"\nmax_concurrent = 2\ninline = \"decide(\\\"restart\\\", \\\"x\\\"); expect(\\\"recovers\\\", \\\"1m\\\"); 1\""),
        ),
        (
            "escalate.rhai",
            "decide(\"page\", `${alert.previous.choice} did not help`); alert.trigger".into(),
        ),
    ])
    .await;
    // "a" recovers 40 s after the action; "b" never does.
    sim.spans("a", 0, 20);
    sim.spans("b", 0, 300);
    sim.run(0, 120).await;

    let fixed = sim.decisions("fixed");
    let a = fixed
        .iter()
        .find(|d| d.labels["service_name"] == "a")
        .unwrap();
    assert_eq!(a.outcome, Outcome::Effective, "{a:#?}");
    let b = fixed
        .iter()
        .find(|d| d.labels["service_name"] == "b")
        .unwrap();
    assert_eq!(b.outcome, Outcome::Ineffective, "{b:#?}");
    assert_eq!(b.verification.as_ref().unwrap().resolved_at, None);

    let stuck = sim.decisions("stuck");
    let first = stuck
        .iter()
        .find(|d| d.labels["service_name"] == "b" && d.trigger == Trigger::Firing)
        .unwrap();
    assert_eq!(first.outcome, Outcome::Ineffective);
    let v = first.verification.as_ref().unwrap();
    assert_eq!(v.expected, "recovers within 1m");
    let escalation = stuck
        .iter()
        .find(|d| d.trigger == Trigger::Ineffective)
        .unwrap();
    assert_eq!(v.escalation.as_deref(), Some(escalation.id.as_str()));
    assert_eq!(escalation.escalates.as_deref(), Some(first.id.as_str()));
    let choice = escalation.reasoning.decision.as_ref().unwrap();
    assert_eq!(choice.option, "page");
    assert_eq!(choice.reason, "restart did not help");
    assert_eq!(escalation.run.as_ref().unwrap().value, "ineffective");
    assert!(
        escalation
            .run
            .as_ref()
            .unwrap()
            .script
            .ends_with("escalate.rhai")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repeat_runs_again_while_firing() {
    let mut sim = Sim::new(&[(
        "r.toml",
        rule("on = [\"firing\", \"repeat\", \"resolved\"]\nrepeat_every = \"30s\"\ninline = \"alert.trigger\""),
    )])
    .await;
    sim.spans("a", 0, 75); // firing from 10 s, resolved at 110 s
    sim.run(0, 130).await;
    let d = sim.decisions("r");
    let triggers: Vec<(i64, Trigger)> =
        d.iter().map(|d| ((d.at - ORIGIN) / S, d.trigger)).collect();
    assert_eq!(
        triggers,
        [
            (10, Trigger::Firing),
            (40, Trigger::Repeat),
            (70, Trigger::Repeat),
            (100, Trigger::Repeat),
            (110, Trigger::Resolved),
        ]
    );
    assert!(d.iter().all(|d| d.policy.verdict == Verdict::Allowed));
    assert_eq!(d[4].run.as_ref().unwrap().value, "resolved");
}
