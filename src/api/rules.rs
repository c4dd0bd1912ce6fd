//! `GET /api/v1/rules` and `POST /-/reload`: the rules, their last
//! evaluations and instances, and reloading them on demand.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use crate::rules::state::{AlertState, Event};
use crate::rules::{Evaluation, Instance, LoadedRule, RuleEngine};

#[derive(Serialize)]
struct RuleView {
    name: String,
    file: String,
    description: String,
    every: String,
    window: String,
    lateness: String,
    #[serde(rename = "for")]
    for_: String,
    keep_firing_for: String,
    labels: BTreeMap<String, String>,
    sql: String,
    action: Option<String>,
    /// `ok`, or `error` when the last evaluation failed.
    health: &'static str,
    last_evaluation: Option<Evaluation>,
    /// Recent evaluations, oldest first.
    evaluations: Vec<Evaluation>,
    /// Instances, firing first, then pending, resolved and inactive; within
    /// a state the most recently active first. At most `?instances=`.
    instances: Vec<Instance>,
    /// How many instances the rule has in all, and in each state.
    instances_total: usize,
    instance_counts: BTreeMap<&'static str, usize>,
    /// Transitions of instances that are gone (a pending instance that
    /// stopped matching), oldest first.
    vanished: Vec<Event>,
}

#[derive(Serialize)]
struct RulesView {
    rules: Vec<RuleView>,
    /// Problems of the last load, `file:line: message`.
    errors: Vec<String>,
}

fn human(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Where a state's instances are listed: those that need a look first.
fn rank(state: AlertState) -> u8 {
    match state {
        AlertState::Firing => 0,
        AlertState::Pending => 1,
        AlertState::Resolved => 2,
        AlertState::Inactive => 3,
    }
}

fn view(loaded: &LoadedRule, max_instances: usize) -> RuleView {
    let rule = &loaded.rule;
    let runtime = loaded.runtime.lock();
    let last = runtime.evaluations.back().cloned();
    let mut instance_counts = BTreeMap::new();
    for i in runtime.state.instances.values() {
        *instance_counts.entry(i.state.name()).or_default() += 1;
    }
    let mut instances: Vec<&Instance> = runtime.state.instances.values().collect();
    instances.sort_by(|a, b| {
        (rank(a.state), std::cmp::Reverse(a.active_since), &a.labels).cmp(&(
            rank(b.state),
            std::cmp::Reverse(b.active_since),
            &b.labels,
        ))
    });
    RuleView {
        name: rule.name.clone(),
        file: rule.path.display().to_string(),
        description: rule.description.clone(),
        every: human(rule.every),
        window: human(rule.window),
        lateness: human(rule.lateness),
        for_: human(rule.for_),
        keep_firing_for: human(rule.keep_firing_for),
        labels: rule.labels.clone(),
        sql: rule.sql.clone(),
        action: rule.action.as_ref().map(|a| a.path.display().to_string()),
        health: if last.as_ref().is_some_and(|e| e.error.is_some()) {
            "error"
        } else {
            "ok"
        },
        last_evaluation: last,
        evaluations: runtime.evaluations.iter().cloned().collect(),
        instances_total: instances.len(),
        instances: instances.into_iter().take(max_instances).cloned().collect(),
        instance_counts,
        vanished: runtime.state.vanished.iter().cloned().collect(),
    }
}

fn snapshot(engine: &RuleEngine, max_instances: usize) -> RulesView {
    RulesView {
        rules: engine
            .rules()
            .values()
            .map(|r| view(r, max_instances))
            .collect(),
        errors: engine.errors().iter().map(ToString::to_string).collect(),
    }
}

/// `?instances=N`: at most N instances per rule (all by default).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    instances: Option<usize>,
}

pub async fn list(
    State(state): State<ApiState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    match params {
        Ok(Query(p)) => {
            Json(snapshot(&state.rules, p.instances.unwrap_or(usize::MAX))).into_response()
        }
        Err(e) => super::json_error(
            StatusCode::BAD_REQUEST,
            format!("{e}: the parameter is instances (a number)"),
        ),
    }
}

pub async fn reload(State(state): State<ApiState>) -> Response {
    let report = state.rules.reload().await;
    let status = if report.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(report)).into_response()
}
