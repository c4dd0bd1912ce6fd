//! What a decision shows of the evaluation behind it, and the `alert` a
//! script sees.

use arrow::array::RecordBatch;
use serde_json::{Map, Value, json};

use crate::act::config::CompiledAction;
use crate::decisions::{Decision, Detection};
use crate::rules::CompiledRule;
use crate::rules::eval::row_json;

/// What the rule saw, for the decision: the instance's row first, then
/// other rows of the same evaluation, up to `evidence_rows`.
pub(super) fn detection(
    rule: &CompiledRule,
    action: &CompiledAction,
    evidence: &RecordBatch,
    e: &crate::rules::state::Event,
) -> Detection {
    let window = rule.window_at(e.transition.at);
    let mut own = Vec::new();
    let mut others = Vec::new();
    for row in 0..evidence.num_rows() {
        let mine = rule
            .row_labels(evidence, row)
            .is_ok_and(|labels| labels == e.labels);
        if let Ok(json) = row_json(evidence, row) {
            if mine {
                own.push(json);
            } else {
                others.push(json);
            }
        }
    }
    let values = own.first().cloned().unwrap_or_default();
    let trace_ids = trace_ids(&values, action.evidence_rows.max(1));
    own.extend(others);
    own.truncate(action.evidence_rows);
    Detection {
        sql: rule.sql.clone(),
        window_start: window.start.unwrap_or(i64::MIN),
        window_end: window.end.unwrap_or(i64::MAX),
        rows: evidence.num_rows(),
        state: e.transition.to,
        since: e.since,
        values: e.transition.values.clone(),
        evidence: own,
        evidence_trace_ids: trace_ids,
    }
}

/// Trace ids in a row: a `trace_id` column, or a `trace_ids` list.
pub(super) fn trace_ids(row: &Map<String, Value>, max: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    if let Some(Value::String(t)) = row.get("trace_id") {
        ids.push(t.clone());
    }
    if let Some(Value::Array(list)) = row.get("trace_ids") {
        for t in list.iter().filter_map(Value::as_str) {
            if !ids.iter().any(|x| x == t) {
                ids.push(t.to_owned());
            }
        }
    }
    ids.truncate(max.min(crate::decisions::trace::MAX_LINKS));
    ids
}

/// The `alert` a script sees.
pub(super) fn alert_value(
    rule: &CompiledRule,
    d: &Decision,
    escalates: Option<&Decision>,
) -> Value {
    let mut labels: Map<String, Value> = rule
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    for (k, v) in &d.labels {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "rule": d.rule,
        "description": rule.description,
        "labels": labels,
        "values": d.detection.values,
        "fingerprint": d.fingerprint,
        "episode": d.episode,
        "state": d.detection.state.name(),
        "since": d.detection.since,
        "trigger": d.trigger.name(),
        "evidence": d.detection.evidence,
        "trace_ids": d.detection.evidence_trace_ids,
        "decision_id": d.id,
        "trace_id": d.trace_id,
        "dry_run": d.policy.dry_run,
        "previous": escalates.map(|p| json!({
            "decision_id": p.id,
            "choice": p.reasoning.decision.as_ref().map(|c| c.option.clone()),
            "expectation": p.verification.as_ref().map(|v| v.expected.clone()),
        })),
    })
}
