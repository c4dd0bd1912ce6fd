//! The `memory` host module: versioned facts scripts keep between runs.
//!
//! - `memory::put(key, value)` writes a new version and returns its number;
//! - `memory::get(key)` gives the current value, or `()`;
//! - `memory::history(key)` gives every kept version, oldest first, each
//!   `#{version, value, valid_from, valid_to}` (UTC nanoseconds);
//! - `memory::count(key, within)` counts the versions written in the last
//!   `within` ("1h"). The engine itself keeps one key per rule and
//!   instance, `acted/{rule}/{fingerprint}`, with a version per run, so
//!   `memory::count("acted/" + alert.rule + "/" + alert.fingerprint, "1h")`
//!   is how many times this rule acted on this instance in the last hour.
//!
//! Facts are stamped on the decision's clock (virtual under `homeostat
//! test` and `replay`).
//! Always granted: facts are the engine's own memory, not the outside world.
//! Writes are recorded as host calls and are not performed in dry-run.

use rhai::{Dynamic, EvalAltResult, Module};
use serde_json::json;

use super::{Answer, Call, HostError, from_json, perform, to_json};
use crate::ingest::now_nanos;

pub fn module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("put", put);
    m.set_native_fn("get", get);
    m.set_native_fn("history", history);
    m.set_native_fn("count", count);
    m
}

/// The decision's clock now.
fn now() -> Result<i64, Box<EvalAltResult>> {
    Ok(now_nanos() + super::with_context(|c| c.clock_offset)?)
}

fn count(key: &str, within: &str) -> Result<i64, Box<EvalAltResult>> {
    let within = humantime::parse_duration(within).map_err(|e| {
        Box::new(EvalAltResult::ErrorRuntime(
            format!("memory::count: invalid duration {within:?}: {e}").into(),
            rhai::Position::NONE,
        ))
    })?;
    let since = now()? - i64::try_from(within.as_nanos()).unwrap_or(i64::MAX);
    let facts = super::with_context(|c| c.facts.clone())?;
    Ok(facts
        .history(key)
        .iter()
        .filter(|f| f.valid_from >= since)
        .count() as i64)
}

fn put(key: &str, value: Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
    let json = to_json(&value)?;
    let call = Call {
        module: "memory",
        function: "put",
        target: key.to_owned(),
    };
    let key = key.to_owned();
    perform(
        call,
        |_| Ok(()),
        Dynamic::UNIT,
        move |env| async move {
            let failed = |message: String| HostError::Failed {
                function: "memory::put".into(),
                message,
            };
            let (version, ack) = env
                .facts
                .put_recorded(&key, json, now_nanos() + env.clock_offset, &env.rule)
                .map_err(|e| failed(e.to_string()))?;
            // Returns once the version is durable, like a decision's intent.
            if let Some(ack) = ack {
                ack.await
                    .unwrap_or(Err(crate::memory::journal::JournalError::Stopped))
                    .map_err(|e| failed(e.to_string()))?;
            }
            Ok(Answer {
                value: Dynamic::from(version as i64),
                detail: json!({ "version": version }),
            })
        },
    )
}

/// Reads are not side effects: performed even in dry-run, and not recorded.
fn get(key: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let facts = super::with_context(|c| c.facts.clone())?;
    Ok(facts
        .get(key)
        .map_or(Dynamic::UNIT, |fact| from_json(&fact.value)))
}

fn history(key: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let facts = super::with_context(|c| c.facts.clone())?;
    let versions: Vec<Dynamic> = facts
        .history(key)
        .iter()
        .map(|f| {
            from_json(&json!({
                "version": f.version,
                "value": f.value,
                "valid_from": f.valid_from,
                "valid_to": f.valid_to,
                "written_by": f.written_by,
            }))
        })
        .collect();
    Ok(versions.into())
}
