//! Running a decision's script on a script thread, with retries, and
//! recording what happened.

use std::sync::Arc;
use std::time::Instant;

use super::{Actor, Clock, MAX_VERIFYING, Prepared, Verifying, nanos};
use crate::act::config::Trigger;
use crate::act::host::{CallLimits, RunContext};
use crate::act::sandbox::RunSpec;
use crate::decisions::trace::{action_spans, closing_spans};
use crate::decisions::{Outcome, RunError, RunStatus, Verification};
use crate::ingest::now_nanos;
use crate::internal_events::ActionRan;
use crate::memory::journal::{JournalError, Stage};

impl Actor {
    /// Runs the script, retrying what a retry can help, then records.
    ///
    /// Runs on a script thread from start to end: one hop off the caller's
    /// runtime, none back and forth per attempt.
    pub(super) fn execute(self: Arc<Self>, mut prepared: Prepared) {
        if prepared.claim_first {
            prepared.claim_first = false;
            let Some(prepared_) = self.claim(prepared) else {
                return;
            };
            prepared = prepared_;
            let now = self.clock.now();
            self.intend(&mut prepared, now);
        }
        // The intent must be durable before anything runs: a crash after
        // this point leaves a record that says so (interrupted).
        if let Some(intent) = prepared.intent.take() {
            let recorded = intent.blocking_recv().unwrap_or(Err(JournalError::Stopped));
            if let Err(e) = recorded {
                return self.not_recorded(prepared, &e);
            }
        }
        let started = Instant::now();
        let started_at = prepared.decision.run.as_ref().map_or(0, |r| r.started_at);
        let rule = prepared.rule.clone();
        let action = rule.action.as_ref().expect("decisions have actions");
        let ast = if prepared.escalation {
            action.on_ineffective.as_ref().map(|(_, a)| a.clone())
        } else {
            Some(action.ast.clone())
        };
        let alert = rhai::serde::to_dynamic(&prepared.alert).unwrap_or(rhai::Dynamic::UNIT);
        let mut backoff = action.retry_backoff;
        let mut attempt = 0;
        let report = loop {
            attempt += 1;
            let Some(ast) = ast.clone() else {
                break None;
            };
            let spec = RunSpec {
                timeout: action.timeout,
                max_operations: action.max_operations,
                context: RunContext {
                    capabilities: action.capabilities.clone(),
                    limits: CallLimits {
                        timeout: action.call_timeout,
                        max_output: action.max_output,
                    },
                    dry_run: prepared.decision.policy.dry_run,
                    runtime: self.scripts.handle(),
                    facts: self.facts.clone(),
                    rule: rule.name.clone(),
                    clock_offset: match self.clock {
                        Clock::Wall => 0,
                        Clock::Virtual(_) => self.clock.now() - now_nanos(),
                    },
                    attempt,
                    calls: Vec::new(),
                    last_failure: None,
                },
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.sandbox.run(&ast, alert.clone(), spec)
            }));
            let mut report = match run {
                Ok(report) => report,
                Err(_) => break Some(Err("the script's thread panicked".to_owned())),
            };
            // Host call times on the decision's clock.
            if !matches!(self.clock, Clock::Wall) {
                let shift = started_at + nanos(started.elapsed()) - now_nanos();
                for call in &mut report.calls {
                    call.started_at += shift;
                }
            }
            prepared.decision.host_calls.extend(report.calls.clone());
            prepared.decision.reasoning = report.reasoning.clone();
            if let Some(run) = prepared.decision.run.as_mut() {
                run.attempts = attempt;
                run.operations += report.operations;
            }
            match &report.result {
                Err(e) if e.retryable() && attempt <= action.retries => {
                    prepared.decision.updated_at = self.clock.now();
                    self.record(&prepared.decision, Stage::Retry);
                    // A backoff, not a wait for something: the outside world
                    // gets time to recover.
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                }
                _ => break Some(Ok(report)),
            }
        };
        let ended_at = started_at + nanos(started.elapsed());
        let now = self.clock.now().max(ended_at);
        self.release(&rule.name);
        let d = &mut prepared.decision;
        let run = d.run.as_mut().expect("set when started");
        run.ended_at = Some(ended_at);
        match report {
            None => {
                run.status = RunStatus::Failed;
                run.error = Some(RunError {
                    kind: "internal",
                    message: "no script to run".into(),
                });
            }
            Some(Err(message)) => {
                run.status = RunStatus::Failed;
                run.error = Some(RunError {
                    kind: "internal",
                    message,
                });
            }
            Some(Ok(report)) => match report.result {
                Ok(value) => {
                    run.value = value;
                    run.status = if d.reasoning.skipped.is_some() {
                        RunStatus::Skipped
                    } else {
                        RunStatus::Succeeded
                    };
                }
                Err(e) => {
                    run.status = RunStatus::Failed;
                    run.error = Some(RunError {
                        kind: e.kind(),
                        message: e.to_string(),
                    });
                }
            },
        }
        ActionRan {
            rule: &rule.name,
            run,
            calls: &d.host_calls,
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
        let waiting = self.state.lock().verifying.len();
        let verify = run.status == RunStatus::Succeeded
            && !d.policy.dry_run
            && matches!(d.trigger, Trigger::Firing | Trigger::Repeat)
            && waiting < MAX_VERIFYING;
        if waiting >= MAX_VERIFYING {
            tracing::warn!(rule = %rule.name, waiting, "outcome not verified: too many decisions already wait for theirs");
        }
        d.updated_at = now;
        self.sink.emit(action_spans(d), now, &self.metrics);
        if verify {
            let within = d
                .reasoning
                .expectation
                .as_ref()
                .map_or(action.verify_within, |e| e.within);
            let expected = d.reasoning.expectation.as_ref().map_or_else(
                || {
                    format!(
                        "the instance resolves within {} (verify_within)",
                        humantime::format_duration(within)
                    )
                },
                |e| {
                    format!(
                        "{} within {}",
                        e.description,
                        humantime::format_duration(e.within)
                    )
                },
            );
            d.verification = Some(Verification {
                deadline: ended_at.saturating_add(nanos(within)),
                expected,
                checked_at: None,
                resolved_at: None,
                escalation: None,
            });
            let ack = self.record(d, Stage::Result);
            self.settle_claim(d, ack);
            self.state.lock().verifying.insert(
                d.id.clone(),
                Verifying {
                    decision: prepared.decision,
                    rule,
                },
            );
        } else {
            d.outcome = Outcome::None;
            let ack = self.record(d, Stage::Result);
            self.settle_claim(d, ack);
            self.sink.emit(closing_spans(d), now, &self.metrics);
        }
        self.ran();
    }

    /// Gives back the concurrency slot a run took (it ended, or it does not
    /// happen after all).
    pub(super) fn release(&self, rule: &str) {
        let mut state = self.state.lock();
        state.running = state.running.saturating_sub(1);
        if let Some(p) = state.policies.get_mut(rule) {
            p.running = p.running.saturating_sub(1);
        }
    }

    /// A run ended and its result is queued for the log: [`Actor::idle`]
    /// may return once none is left.
    pub(super) fn ran(&self) {
        let running = self.state.lock().running;
        self.running.send_replace(running);
    }

    /// The intent could not be recorded: the action does not run, and the
    /// decision says why.
    fn not_recorded(&self, prepared: Prepared, error: &JournalError) {
        self.not_started(
            prepared,
            "not_recorded",
            format!("the action did not run: its intent could not be recorded: {error}"),
        );
    }

    /// The action does not run after all: its slot is given back, the
    /// episode may be acted on again, and the decision says why.
    pub(super) fn not_started(&self, mut prepared: Prepared, kind: &'static str, message: String) {
        self.release(&prepared.rule.name);
        if let Some(p) = self.state.lock().policies.get_mut(&prepared.rule.name) {
            p.forget(&prepared.decision);
        }
        let now = self.clock.now();
        let d = &mut prepared.decision;
        if let Some(run) = d.run.as_mut() {
            run.status = RunStatus::Failed;
            run.ended_at = Some(now);
            run.error = Some(RunError { kind, message });
        }
        d.outcome = Outcome::None;
        d.updated_at = now;
        self.record(d, Stage::Result);
        let mut spans = action_spans(d);
        spans.extend(closing_spans(d));
        self.sink.emit(spans, now, &self.metrics);
        self.ran();
    }
}
