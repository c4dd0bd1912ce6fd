//! The `memory` host module: versioned facts scripts keep between runs.
//!
//! - `memory::put(key, value)` writes a new version and returns its number;
//! - `memory::get(key)` gives the current value, or `()`;
//! - `memory::history(key)` gives every kept version, oldest first, each
//!   `#{version, value, valid_from, valid_to}` (UTC nanoseconds).
//!
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
    m
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
            let version = env
                .facts
                .put(&key, json, now_nanos(), &env.rule)
                .map_err(|e| HostError::Failed {
                    function: "memory::put".into(),
                    message: e.to_string(),
                })?;
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
