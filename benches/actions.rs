//! What acting costs beyond the script itself.
//!
//! `cargo bench --bench actions` prints, next to baselines measured in the
//! same run:
//! 1. per action: from an instance's firing transition handed to the actor
//!    to its decision recorded with its result and rationale spans (policies,
//!    decision record, alert value, the hop to a script thread, sandbox set-up,
//!    spans built and stored in the local `spans` table), for a script that
//!    does nothing (`1`); baseline: evaluating that script with the same
//!    `alert` in a bare Rhai engine on the calling thread;
//! 2. per host call: the bookkeeping of a host call without its I/O (a
//!    dry-run `http::post`: capability check, record, dry value), against a
//!    call to a native function that does nothing, in the same sandbox.
//!
//! Target: at most 100 µs of overhead per action. Under `cargo test
//! --benches` it runs a few iterations and checks the answers, without
//! timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use homeostat::act::actor::{Actor, Clock};
use homeostat::act::config::ActionLimits;
use homeostat::act::host::{CallLimits, CallStatus, Capabilities, RunContext};
use homeostat::act::sandbox::{RunSpec, Sandbox, compile};
use homeostat::decisions::memory::Facts;
use homeostat::decisions::{Filter, RunStatus};
use homeostat::ingest::now_nanos;
use homeostat::internal_events::Metrics;
use homeostat::rules::state::{Event, Transition};
use homeostat::rules::{AlertState, RuleEngine, RuleEvent};
use homeostat::store::{Store, StoreOptions};

const RULE: &str = r#"
every = "10s"
window = "1m"
sql = "SELECT service_name, count(*) AS errors FROM spans GROUP BY service_name"

[action]
max_concurrent = 4
inline = 'memory::put("seen", alert.fingerprint); 1'
"#;

fn store() -> Arc<Store> {
    Arc::new(Store::new(StoreOptions {
        memory_budget: 4 << 30,
        retention: Duration::from_secs(3600),
        partition: Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    }))
}

/// A firing transition of instance `i` of `rule`, with a one-row evidence
/// batch as an evaluation gives.
fn event(rule: &Arc<homeostat::rules::CompiledRule>, i: usize) -> RuleEvent {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    let service = format!("service-{i}");
    let evidence = RecordBatch::try_new(
        rule.output.clone(),
        vec![
            Arc::new(StringArray::from(vec![service.clone()])),
            Arc::new(Int64Array::from(vec![42])),
        ],
    )
    .expect("the rule's own schema");
    let mut values = serde_json::Map::new();
    values.insert("errors".into(), 42.into());
    RuleEvent {
        rule: rule.clone(),
        event: Event {
            fingerprint: format!("{i:016x}"),
            labels: [("service_name".to_owned(), service)].into(),
            episode: 1,
            since: now_nanos(),
            transition: Transition {
                at: now_nanos(),
                evaluation: 1,
                from: AlertState::Pending,
                to: AlertState::Firing,
                values,
            },
        },
        evidence: Arc::new(evidence),
    }
}

/// What `n` actions handed over one after the other cost: the time from
/// an instance's transition handed to the actor to its script's first
/// statement (a recorded `memory::put`, whose start time the host call
/// keeps), mean and p99; the whole per-action time to a recorded result;
/// and the last decision made.
struct Acting {
    to_start_mean: Duration,
    to_start_p99: Duration,
    whole: Duration,
    sample: homeostat::decisions::Decision,
}

async fn actions(n: usize) -> Acting {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("bench.toml"), RULE).expect("rule written");
    let store = store();
    let metrics = Arc::new(Metrics::new());
    let engine =
        RuleEngine::new(dir.path().to_owned(), &store, metrics.clone()).expect("rule engine");
    let report = engine.reload().await;
    assert!(report.errors.is_empty(), "{report:?}");
    let rule = engine.rule("bench").expect("loaded").rule;
    let actor = Arc::new(Actor::standalone(store.clone(), metrics, Clock::Wall).expect("actor"));
    let events: Vec<RuleEvent> = (0..n).map(|i| event(&rule, i)).collect();
    let mut fired = std::collections::HashMap::new();
    let started = Instant::now();
    for e in &events {
        fired.insert(e.event.fingerprint.clone(), now_nanos());
        for run in actor.on_event(e, now_nanos()) {
            run.await.expect("the action task");
        }
    }
    let elapsed = started.elapsed();
    // Check the answer: every action ran, and its spans are stored.
    let decisions = actor.log().list(&Filter {
        limit: n,
        ..Default::default()
    });
    assert_eq!(decisions.len(), n.min(homeostat::decisions::DECISIONS_KEPT));
    assert!(
        decisions.iter().all(|d| d
            .run
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Succeeded)),
        "{:?}",
        decisions.first()
    );
    let (_, rows) = store.table(homeostat::ingest::Signal::Traces).usage();
    // Detection, policy, action and host call spans; the root waits for
    // verification.
    assert_eq!(rows as usize, 4 * n);
    let mut to_start: Vec<i64> = decisions
        .iter()
        .map(|d| d.host_calls[0].started_at - fired[&d.fingerprint])
        .collect();
    to_start.sort_unstable();
    let nanos = |t: i64| Duration::from_nanos(u64::try_from(t).unwrap_or(0));
    let mean = to_start.iter().sum::<i64>() / to_start.len() as i64;
    Acting {
        to_start_mean: nanos(mean),
        to_start_p99: nanos(to_start[to_start.len() * 99 / 100]),
        whole: elapsed / n as u32,
        sample: decisions[0].clone(),
    }
}

/// Parts of the per-action cost, measured alone: storing a decision's
/// rationale spans locally (OTLP message → Arrow → store), and the hop from
/// the caller's runtime to a script thread and back.
fn parts(
    d: &homeostat::decisions::Decision,
    n: usize,
    runtime: &tokio::runtime::Runtime,
) -> (Duration, Duration) {
    use homeostat::decisions::trace::{action_spans, resource_spans};
    use homeostat::ingest::ExportRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let store = store();
    let started = Instant::now();
    for _ in 0..n {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(action_spans(d))],
        };
        let batch = request.convert().expect("converts").batch;
        store
            .insert(homeostat::ingest::Signal::Traces, batch, now_nanos())
            .expect("fits");
    }
    let spans = started.elapsed() / n as u32;
    let scripts = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let handle = scripts.handle().clone();
    let started = Instant::now();
    runtime.block_on(async {
        for _ in 0..n {
            handle.spawn_blocking(|| ()).await.expect("joins");
        }
    });
    (spans, started.elapsed() / n as u32)
}

/// The same script and alert in a bare engine.
fn bare_eval(n: usize) -> Duration {
    let engine = rhai::Engine::new();
    let ast = engine.compile("1").expect("compiles");
    let alert = rhai::serde::to_dynamic(serde_json::json!({
        "rule": "bench", "labels": {"service_name": "service-1"}, "values": {"errors": 42}
    }))
    .expect("alert");
    let started = Instant::now();
    for _ in 0..n {
        let mut scope = rhai::Scope::new();
        scope.push_constant("alert", alert.clone());
        let v: i64 = engine.eval_ast_with_scope(&mut scope, &ast).expect("runs");
        assert_eq!(v, 1);
    }
    started.elapsed() / n as u32
}

/// Time per call of a script making `calls` calls, in the sandbox.
fn per_call(
    source: &str,
    calls: usize,
    runs: usize,
    runtime: &tokio::runtime::Runtime,
) -> Duration {
    let limits = ActionLimits::default();
    let sandbox = Sandbox::new(&limits);
    let ast = compile(source).expect("compiles");
    let started = Instant::now();
    for _ in 0..runs {
        let context = RunContext {
            capabilities: Arc::new(Capabilities {
                http: vec!["http://127.0.0.1:9/".into()],
                ..Default::default()
            }),
            limits: CallLimits {
                timeout: Duration::from_secs(1),
                max_output: 1 << 20,
            },
            dry_run: true,
            runtime: runtime.handle().clone(),
            facts: Arc::new(Facts::default()),
            rule: "bench".into(),
            clock_offset: 0,
            attempt: 1,
            calls: Vec::new(),
            last_failure: None,
        };
        let report = sandbox.run(
            &ast,
            rhai::Dynamic::UNIT,
            RunSpec {
                timeout: Duration::from_secs(60),
                max_operations: 100_000_000,
                context,
            },
        );
        assert!(report.result.is_ok(), "{:?}", report.result);
        if source.contains("http::") {
            assert_eq!(report.calls.len(), calls);
            assert!(report.calls.iter().all(|c| c.status == CallStatus::DryRun));
        }
    }
    started.elapsed() / (runs * calls) as u32
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let timing = std::env::args().any(|a| a == "--bench");
    // At most MAX_CALLS_PER_RUN host calls per run.
    let calls = homeostat::act::host::MAX_CALLS_PER_RUN;
    let (n, runs) = if timing { (5_000, 200) } else { (20, 1) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    // Warm up, then measure.
    runtime.block_on(actions(n.min(100)));
    let acting = runtime.block_on(actions(n));
    let action = acting.whole;
    let (spans, hop) = parts(&acting.sample, n, &runtime);
    let bare = bare_eval(n);
    let native = format!("let s = \"\"; for i in 0..{calls} {{ s.len(); }}");
    let host_body =
        format!("for i in 0..{calls} {{ http::post(\"http://127.0.0.1:9/hook\", #{{}}); }}");
    // The baseline: a native function with next to nothing to do.
    let noop = per_call(&native, calls, runs, &runtime);
    let host = per_call(&host_body, calls, runs, &runtime);

    if !timing {
        println!(
            "actions bench: answers checked (run with `cargo bench --bench actions` for figures)"
        );
        return;
    }
    let overhead = acting.to_start_mean;
    println!();
    println!("Acting, beyond the script itself ({n} actions, {calls} host calls x {runs} runs)");
    println!("| measure | time | baseline | ratio | overhead |");
    println!("|---|---|---|---|---|");
    println!(
        "| firing to the script's first statement (mean; p99 {}) | {} | a thread hop there and back {} | {:.1}x | {} |",
        micros(acting.to_start_p99),
        micros(acting.to_start_mean),
        micros(hop),
        acting.to_start_mean.as_secs_f64() / hop.as_secs_f64(),
        micros(acting.to_start_mean),
    );
    println!(
        "| one action, firing to recorded result (a one-line script) | {} | bare Rhai eval {} | {:.0}x | {} |",
        micros(action),
        micros(bare),
        action.as_secs_f64() / bare.as_secs_f64(),
        micros(action.saturating_sub(bare)),
    );
    println!(
        "| of which: storing its rationale spans locally | {} | | | |",
        micros(spans)
    );
    println!(
        "| of which: the hop to a script thread and back | {} | | | |",
        micros(hop)
    );
    println!(
        "| one host call, dry-run http::post (no I/O) | {} | native fn call {} | {:.1}x | {} |",
        micros(host),
        micros(noop),
        host.as_secs_f64() / noop.as_secs_f64(),
        micros(host.saturating_sub(noop)),
    );
    println!();
    println!(
        "Target: at most 100 µs from firing to the script's start: {}",
        if overhead <= Duration::from_micros(100) {
            "met"
        } else {
            "NOT met"
        }
    );
}
