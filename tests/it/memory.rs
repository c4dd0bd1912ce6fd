//! The episodic memory end to end: decisions, facts and alert state survive
//! restarts and kill -9; the chain verifies and tampering is named; runs a
//! crash interrupted are marked, not repeated.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use homeostat::decisions::{Decision, RunStatus, Verdict};
use homeostat::memory::{Storage, audit, load};
use homeostat::rules::AlertState;

use crate::actions::{decision, webhook, write};
use crate::common::{Instance, ready_address, spans_now_json, start_with};

/// A rule that fires as soon as spans of `service` arrive, and whose
/// action counts in the facts and posts to `hook`.
fn rule(service: &str, hook: &str, extra: &str) -> String {
    format!(
        r#"
every = "1s"
window = "2s"
lateness = "0s"
keep_firing_for = "3s"
sql = "SELECT service_name FROM spans WHERE service_name LIKE '{service}' GROUP BY service_name"

[action]
http = ["{hook}"]
{extra}
inline = """
let n = memory::get("seen/" + alert.fingerprint);
memory::put("seen/" + alert.fingerprint, if n == () {{ 1 }} else {{ n + 1 }});
let acted = memory::count("acted/" + alert.rule + "/" + alert.fingerprint, "1h");
http::post("{hook}hook", #{{ decision: alert.decision_id, service: alert.labels.service_name, acted: acted }}).status
"""
"#
    )
}

async fn send(h: &Instance, service: &str) {
    let r = reqwest::Client::new()
        .post(h.otlp_http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(spans_now_json(service))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// An instance on `rules` and `data` whose write-ahead log is in `wal` (a
/// temporary folder of the test's, not the working folder an object-store
/// `data` would put it in).
async fn start_on(rules: &Path, data: &str, wal: &Path) -> Instance {
    let (rules, data, wal) = (rules.to_owned(), data.to_owned(), wal.to_owned());
    start_with(move |c| {
        c.rules = rules;
        c.data = data;
        c.node = "test-node".into();
        c.ingest.wal_dir = Some(wal);
    })
    .await
}

async fn stop(mut h: Instance) {
    h.running.shutdown();
    h.running.join().await.unwrap();
}

/// The restart suite, on any storage: a decision survives, the instance
/// does not fire again, a new episode inside the cooldown is suppressed,
/// facts keep their versions, and the SQL tables show it all.
pub async fn restart_during_cooldown(data: &str) {
    let hook = webhook().await;
    let rules = tempfile::tempdir().unwrap();
    let wal = tempfile::tempdir().unwrap();
    write(
        rules.path(),
        "cooling.toml",
        &rule("cooling", &hook.url, "cooldown = \"1h\""),
    );
    let h = start_on(rules.path(), data, wal.path()).await;
    send(&h, "cooling").await;
    let first = decision(&h, "that ran", |d| {
        d.run
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Succeeded)
    })
    .await;
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
    stop(h).await;

    // A rule may watch the memory itself.
    write(
        rules.path(),
        "watch.toml",
        "every = \"1s\"\nwindow = \"1m\"\nsql = \"SELECT rule FROM decisions WHERE verdict = 'suppressed' GROUP BY rule\"\n",
    );
    let h = start_on(rules.path(), data, wal.path()).await;
    let mut watch = h.running.rules.subscribe();
    let restored = h.running.actor.log().get(&first.id).expect("restored");
    assert_eq!(restored.run.unwrap().status, RunStatus::Succeeded);
    let instance = h.running.rules.rule("cooling").unwrap();
    let state = instance.runtime.lock().state.instances[&first.fingerprint].state;
    assert_eq!(state, AlertState::Firing, "the firing instance came back");

    // Still matching after the restart (within keep_firing_for): the same
    // episode goes on; a re-fire would show as a third decision below.
    let mut evaluations = h.running.rules.subscribe_evaluations();
    send(&h, "cooling").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (rule, e) = evaluations.recv().await.unwrap();
            if rule == "cooling" && e.rows > 0 {
                return;
            }
        }
    })
    .await
    .expect("an evaluation sees the new spans");
    let mut events = h.running.rules.subscribe();
    crate::rules::wait_for(&mut events, "cooling", AlertState::Resolved).await;

    // A new episode, within the cooldown recorded before the restart.
    send(&h, "cooling").await;
    let second = decision(&h, "suppressed", |d| d.id != first.id).await;
    assert_eq!(second.policy.verdict, Verdict::Suppressed, "{second:#?}");
    assert!(
        second.policy.reason.contains("cooldown until"),
        "{}",
        second.policy.reason
    );
    assert_eq!(second.episode, first.episode + 1);
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1, "no second action");
    let all = h.running.actor.log().list(&homeostat::decisions::Filter {
        limit: 10,
        ..Default::default()
    });
    assert_eq!(all.len(), 2, "{all:#?}");
    crate::rules::wait_for(&mut watch, "watch", AlertState::Firing).await;
    let entries = h.metric("homeostat_memory_entries_total").await;
    assert!(entries.is_some_and(|n| n > 0.0), "{entries:?}");
    assert_eq!(
        h.metric("homeostat_memory_entry_failures_total").await,
        Some(0.0)
    );

    let facts = h
        .query("SELECT key, version, value, valid_to FROM facts WHERE key NOT LIKE 'acted/%' ORDER BY version")
        .await;
    assert_eq!(facts.rows.len(), 1, "{:?}", facts.rows);
    assert_eq!(facts.get(0, "value"), "1");
    let runs = h
        .count("SELECT count(*) FROM facts WHERE key LIKE 'acted/cooling/%'")
        .await;
    assert_eq!(runs, 1, "the engine's own record of runs: one run");
    assert_eq!(
        hook.bodies.lock()[0]["acted"],
        1,
        "memory::count saw its own run"
    );
    let decisions = h
        .query("SELECT id, verdict, status, stage FROM decisions ORDER BY at")
        .await;
    assert_eq!(decisions.rows.len(), 2, "{:?}", decisions.rows);
    assert_eq!(decisions.get(0, "id"), first.id.as_str());
    assert_eq!(decisions.get(0, "status"), "succeeded");
    assert_eq!(decisions.get(1, "verdict"), "suppressed");
    stop(h).await;

    let storage = Storage::open(data).unwrap();
    let report = audit::verify(&storage).await.unwrap();
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_cooldown_does_not_act_again() {
    let data = tempfile::tempdir().unwrap();
    restart_during_cooldown(data.path().to_str().unwrap()).await;
}

/// A process frozen mid-action, then replaced: the new one marks the run
/// interrupted and does not run it again; an idempotent action is run
/// again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_is_marked_interrupted_or_rerun_if_idempotent() {
    for idempotent in [false, true] {
        let hook = webhook().await;
        let rules = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let data = data.path().to_str().unwrap().to_owned();
        // The first run hangs on a remote that never answers.
        let hanging = format!(
            r#"
every = "1s"
window = "2s"
lateness = "0s"
keep_firing_for = "1h"
sql = "SELECT service_name FROM spans WHERE service_name = 'frozen' GROUP BY service_name"

[action]
http = ["{hook}"]
idempotent = {idempotent}
call_timeout = "2m"
timeout = "5m"
inline = """
let n = memory::get("runs");
memory::put("runs", if n == () {{ 1 }} else {{ n + 1 }});
let acted = memory::count("acted/" + alert.rule + "/" + alert.fingerprint, "1h");
if n == () {{ http::post("{hook}hang", #{{}}) }} else {{ http::post("{hook}hook", #{{ acted: acted }}) }}
"""
"#,
            hook = hook.url
        );
        write(rules.path(), "frozen.toml", &hanging);
        let first_wal = tempfile::tempdir().unwrap();
        let first = start_on(rules.path(), &data, first_wal.path()).await;
        send(&first, "frozen").await;
        let running = decision(&first, "running", |d| {
            d.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Running)
        })
        .await;
        // Its fact is durable before the call, and the call has started.
        tokio::time::timeout(Duration::from_secs(60), hook.hung.notified())
            .await
            .expect("the first run reaches the hanging remote");
        // Frozen: its script waits forever; stopped, it writes nothing
        // more. A new process takes over its storage (what a restart after
        // kill -9 is; its write-ahead log is its own, as the frozen one
        // still holds the first's).
        first.running.shutdown();
        let wal = tempfile::tempdir().unwrap();
        let (rules_dir, data_dir, wal_dir) =
            (rules.path().to_owned(), data.clone(), wal.path().to_owned());
        let second = start_with(move |c| {
            c.rules = rules_dir;
            c.data = data_dir;
            c.node = "test-node".into();
            c.ingest.wal_dir = Some(wal_dir);
        })
        .await;
        let after = decision(&second, "restored", |d| {
            d.id == running.id
                && d.run
                    .as_ref()
                    .is_some_and(|r| r.status != RunStatus::Running)
        })
        .await;
        let run = after.run.unwrap();
        if idempotent {
            assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
            assert!(after.policy.checks.iter().any(|c| c.policy == "recovery"));
            assert_eq!(hook.calls.load(Ordering::SeqCst), 1, "run again, once");
            let acted = &hook.bodies.lock()[0]["acted"];
            assert_eq!(acted, 2, "both runs counted, one from before the restart");
        } else {
            assert_eq!(run.status, RunStatus::Interrupted);
            assert_eq!(run.error.unwrap().kind, "interrupted");
            assert_eq!(hook.calls.load(Ordering::SeqCst), 0, "not run again");
        }
        stop(second).await;
        // Its script thread never ends; dropping leaves it behind.
        drop(first);
    }
}

fn homeostat() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
}

/// Starts `homeostat run` on `data`; returns it, its OTLP/HTTP address, and
/// a task that drains its log (a full pipe would block it).
async fn spawn_binary(
    rules: &Path,
    data: &str,
    wal: &Path,
    env: &[(String, String)],
) -> (tokio::process::Child, String) {
    let mut child = homeostat()
        .envs(env.iter().cloned())
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--node", "crash", "--rules"])
        .arg(rules)
        .args(["--data", data])
        .arg("--wal-dir")
        .arg(wal)
        .env("HOMEOSTAT_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (http, mut lines) = ready_address(&mut child, "otlp_http").await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http)
}

/// Decisions as the memory holds them, by id, every writer.
async fn stored(data: &str) -> HashMap<String, Decision> {
    let loaded = load(&Storage::open(data).unwrap()).await.unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    audit::decisions(&loaded, &Default::default())
        .into_iter()
        .map(|s| (s.decision.id.clone(), s.decision))
        .collect()
}

/// kill -9 at random moments while decisions are made, 20 times: after
/// each restart every action the remote saw has its decision, the chain
/// verifies, no action ran twice, and cut runs are marked interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    crash_trials(dir.path().to_str().unwrap(), &[]).await;
}

/// The same on S3 (moto's server): create-only writes there are
/// conditional requests, and every object a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_s3_loses_and_repeats_nothing() {
    let s3 = crate::s3::shared();
    crash_trials(&s3.url("kill-9"), &s3.env()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_cooldown_on_s3_does_not_act_again() {
    restart_during_cooldown(&crate::s3::shared().url("cooldown")).await;
}

/// Two processes claiming one node name on S3: the second is refused at
/// its first write, and nothing of the first is overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_one_name_on_s3_conflict_without_loss() {
    use homeostat::memory::journal::{Journal, JournalError, Record, Tail, read_chain};
    let storage = crate::s3::storage("same-node");
    let fact = |v: i64| Record::Fact {
        fact: homeostat::decisions::memory::Fact {
            key: "k".into(),
            version: 1,
            value: v.into(),
            valid_from: v,
            valid_to: None,
            written_by: "test".into(),
        },
    };
    let a = Journal::start(storage.clone(), "n", Tail::default());
    let b = Journal::start(storage.clone(), "n", Tail::default());
    a.append_durable(fact(1)).await.unwrap();
    let e = b.append_durable(fact(2)).await.unwrap_err();
    assert!(matches!(e, JournalError::Conflict { .. }), "{e}");
    a.append_durable(fact(3)).await.unwrap();
    let (entries, problems) = read_chain(&storage, "n").await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let values: Vec<i64> = entries
        .iter()
        .map(|e| match &e.entry.record {
            Record::Fact { fact } => fact.value.as_i64().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, [1, 3]);
}

async fn crash_trials(data: &str, env: &[(String, String)]) {
    const TRIALS: u64 = 20;
    let hook = webhook().await;
    let rules = tempfile::tempdir().unwrap();
    let wal = tempfile::tempdir().unwrap();
    let data = data.to_owned();
    // The remote answers slowly, so that some kills land mid-run.
    let text = rule("crash-%", &hook.url, "").replace("hook\", #{", "slow\", #{");
    write(rules.path(), "crash.toml", &text);
    let client = reqwest::Client::new();
    // A fixed-seed generator: the kill moments are random but repeatable.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut interrupted = 0;
    for trial in 0..=TRIALS {
        let (mut child, http) = spawn_binary(rules.path(), &data, wal.path(), env).await;
        // What the remote saw, then what the memory holds: an action's
        // intent is durable before its call, so every call seen is there
        // (the restarted process may act meanwhile, on the telemetry its
        // log gave back).
        let seen: Vec<String> = hook
            .bodies
            .lock()
            .iter()
            .map(|b| b["decision"].as_str().unwrap().to_owned())
            .collect();
        let decisions = stored(&data).await;
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an action ran twice: {seen:?}");
        let mut episodes = HashSet::new();
        for id in &seen {
            let d = decisions.get(id).unwrap_or_else(|| {
                panic!("trial {trial}: the remote saw {id}, the memory lost it")
            });
            assert!(
                episodes.insert((d.fingerprint.clone(), d.episode)),
                "two actions for one episode: {d:#?}"
            );
        }
        // A restart is ready once it has marked what was cut short.
        for d in decisions.values() {
            let status = d.run.as_ref().map(|r| r.status);
            assert_ne!(status, Some(RunStatus::Running), "trial {trial}: {d:#?}");
        }
        interrupted = decisions
            .values()
            .filter(|d| {
                d.run
                    .as_ref()
                    .is_some_and(|r| r.status == RunStatus::Interrupted)
            })
            .count();
        if trial == TRIALS {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            break;
        }
        // New services each trial: new instances, new decisions.
        for i in 0..4 {
            let service = format!("crash-{trial}-{i}");
            let body = spans_now_json(&service);
            let r = client
                .post(format!("http://{http}/v1/traces"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        // The random moment: the point of the test is not knowing what is
        // in flight when the process dies.
        let delay = Duration::from_millis(next() % 2500);
        tokio::time::sleep(delay).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
    }
    let seen = hook.bodies.lock().len();
    assert!(
        seen >= TRIALS as usize / 2,
        "too few actions ran to mean anything: {seen}"
    );
    eprintln!("{TRIALS} kills: {seen} actions, {interrupted} runs marked interrupted");
    let report = audit::verify(&Storage::open(&data).unwrap()).await.unwrap();
    assert!(report.ok(), "{report}");
}

/// `audit verify` names a flipped byte and a removed entry; `audit log`
/// prints decisions by rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_found_and_named() {
    let hook = webhook().await;
    let rules = tempfile::tempdir().unwrap();
    let wal = tempfile::tempdir().unwrap();
    write(
        rules.path(),
        "tamper.toml",
        &rule("tamper-%", &hook.url, ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let h = start_on(rules.path(), data, wal.path()).await;
    for service in ["tamper-a", "tamper-b"] {
        send(&h, service).await;
        decision(&h, service, |d| {
            d.labels.get("service_name").map(String::as_str) == Some(service)
                && d.run
                    .as_ref()
                    .is_some_and(|r| r.status == RunStatus::Succeeded)
        })
        .await;
    }
    stop(h).await;

    let audit = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .arg("audit")
            .args(args)
            .args(["--data", data])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = audit(&["verify"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("node test-node"), "{text}");
    let (code, text) = audit(&["log", "--rule", "tamper"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("service_name=tamper-a") && text.contains("2 decisions"),
        "{text}"
    );

    // Flip one byte inside an entry that records a decision.
    let log = dir.path().join("memory/test-node/log");
    let mut objects: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    objects.sort();
    let target = objects
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("tamper-b"))
        .unwrap()
        .clone();
    let original = std::fs::read(&target).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    std::fs::write(&target, text.replacen("tamper-b", "tamper-c", 1)).unwrap();
    let (code, report) = audit(&["verify"]);
    assert_eq!(code, Some(1), "{report}");
    let name = target.file_name().unwrap().to_str().unwrap();
    assert!(
        report.contains("first broken entry")
            && report.contains(name)
            && report.contains("altered"),
        "{report}"
    );

    // Put it back, and remove a whole object from the middle instead.
    std::fs::write(&target, &original).unwrap();
    assert_eq!(audit(&["verify"]).0, Some(0));
    let removed = &objects[objects.len() / 2];
    std::fs::remove_file(removed).unwrap();
    let (code, report) = audit(&["verify"]);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("missing (removed?)"), "{report}");

    // Before the latest snapshot, the gap does not stop a start (which reads
    // the snapshot and what follows), and the check of the whole history
    // that follows it names the problem.
    let mut child = homeostat()
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--node", "test-node", "--rules"])
        .arg(rules.path())
        .args(["--data", data])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (api, mut lines) = ready_address(&mut child, "api").await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let metrics = |api: String| async move {
        reqwest::get(format!("http://{api}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(api.clone()).await;
        if text.contains("homeostat_memory_index_complete 1") {
            assert!(
                text.contains("homeostat_memory_chain_problems 1"),
                "the gap is counted: {text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the history was never checked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // Without the snapshots, the start reads the chain from its first entry:
    // a broken chain stops it, with the reason.
    std::fs::remove_dir_all(dir.path().join("memory/test-node/snapshot")).unwrap();
    let out = homeostat()
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--node", "test-node", "--rules"])
        .arg(rules.path())
        .args(["--data", data])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not verify") && err.contains("audit verify"),
        "{err}"
    );
}

fn threshold_rule(hook: &str, at_least: u32) -> String {
    format!(
        r#"
every = "1s"
window = "2s"
lateness = "0s"
sql = """
SELECT service_name, count(*) AS spans FROM spans
WHERE service_name LIKE 'replay-%'
GROUP BY service_name HAVING count(*) >= {at_least}
"""

[action]
http = ["{hook}"]
max_concurrent = 4
inline = """
decide("notify", `${{alert.values.spans}} spans`);
http::post("{hook}hook", #{{ decision: alert.decision_id }}).status
"""
"#
    )
}

/// A recorded period replayed with the same rules decides the same; with
/// a higher threshold, the replay shows the decision it would not have
/// made. The archive it reads is queryable with no instance running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reproduces_the_record_and_shows_a_changed_threshold() {
    use homeostat::memory::replay::{Difference, replay};
    let hook = webhook().await;
    let deployed = tempfile::tempdir().unwrap();
    write(
        deployed.path(),
        "threshold.toml",
        &threshold_rule(&hook.url, 3),
    );
    let changed = tempfile::tempdir().unwrap();
    let wal = tempfile::tempdir().unwrap();
    write(
        changed.path(),
        "threshold.toml",
        &threshold_rule(&hook.url, 5),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();

    let h = start_on(deployed.path(), data, wal.path()).await;
    // replay-a: 6 spans; replay-b: 3.
    send(&h, "replay-a").await;
    send(&h, "replay-a").await;
    send(&h, "replay-b").await;
    let mut recorded = Vec::new();
    for service in ["replay-a", "replay-b"] {
        recorded.push(
            decision(&h, service, |d| {
                d.labels.get("service_name").map(String::as_str) == Some(service)
                    && d.run
                        .as_ref()
                        .is_some_and(|r| r.status == RunStatus::Succeeded)
            })
            .await,
        );
    }
    // A graceful stop archives what memory holds.
    stop(h).await;
    let from = recorded.iter().map(|d| d.at).min().unwrap() - 30_000_000_000;
    let to = recorded.iter().map(|d| d.at).max().unwrap() + 30_000_000_000;
    let storage = Storage::open(data).unwrap();

    let same = replay(&storage, deployed.path(), from, to).await.unwrap();
    assert_eq!(
        same.rows["spans"],
        9,
        "{}",
        homeostat::memory::replay::render(&same)
    );
    let rule = &same.rules[0];
    assert_eq!(rule.recorded.len(), 2);
    assert_eq!(rule.alerts.len(), 2);
    assert_eq!(
        (rule.same(), rule.added(), rule.removed(), rule.changed()),
        (2, 0, 0, 0),
        "{}",
        homeostat::memory::replay::render(&same)
    );
    assert!(!same.differs());

    let higher = replay(&storage, changed.path(), from, to).await.unwrap();
    let rule = &higher.rules[0];
    let text = homeostat::memory::replay::render(&higher);
    assert_eq!((rule.same(), rule.removed()), (1, 1), "{text}");
    let removed = rule
        .differences
        .iter()
        .find_map(|d| match d {
            Difference::Removed(d) => Some(d),
            _ => None,
        })
        .unwrap();
    assert_eq!(removed.labels["service_name"], "replay-b");
    assert!(
        text.contains("- removed") && text.contains("service_name=replay-b"),
        "{text}"
    );
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        2,
        "a replay performs nothing"
    );

    // DuckDB reads the archive as it is.
    let duckdb = format!(
        "import duckdb; print(duckdb.sql(\"SELECT count(*), min(date) FROM read_parquet('{data}/archive/spans/*/*/*.parquet', hive_partitioning = true) WHERE service_name LIKE 'replay-%'\").fetchall())"
    );
    let out = std::process::Command::new(crate::common::python())
        .args(["-c", &duckdb])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.starts_with("[(9, datetime.date("), "{printed}");

    // The same through the command line, and the archive by SQL.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let rfc = |t: i64| homeostat::act::policy::rfc3339(t);
    let (code, text) = cli(&[
        "replay",
        "--data",
        data,
        "--from",
        &rfc(from),
        "--to",
        &rfc(to),
        "--rules",
        changed.path().to_str().unwrap(),
        "--fail-on-difference",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("1 removed"), "{text}");
    let (code, text) = cli(&[
        "query",
        "--data",
        data,
        "--format",
        "json",
        "SELECT count(*) AS n FROM spans WHERE service_name LIKE 'replay-%'",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("[[9]]"), "{text}");
    let (code, text) = cli(&[
        "query",
        "--data",
        data,
        "--format",
        "json",
        "SELECT count(*) AS n FROM decisions WHERE status = 'succeeded'",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("[[2]]"), "{text}");
}

/// A graceful stop lets a running action finish and records its result:
/// the next start finds it succeeded, not interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_waits_for_running_actions() {
    let hook = webhook().await;
    let rules = tempfile::tempdir().unwrap();
    let wal = tempfile::tempdir().unwrap();
    let text = rule("graceful", &hook.url, "").replace("hook\", #{", "slow\", #{");
    write(rules.path(), "graceful.toml", &text);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let h = start_on(rules.path(), data, wal.path()).await;
    send(&h, "graceful").await;
    let running = decision(&h, "running", |d| {
        d.run
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Running)
    })
    .await;
    stop(h).await;
    let after = stored(data).await;
    let run = after[&running.id].run.clone().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 1);
}
