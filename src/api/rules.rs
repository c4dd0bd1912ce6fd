//! `GET /api/v1/rules` and `POST /-/reload`: the rules, their last
//! evaluations and instances, and reloading them on demand.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use crate::rules::state::Event;
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
    instances: Vec<Instance>,
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

fn view(loaded: &LoadedRule) -> RuleView {
    let rule = &loaded.rule;
    let runtime = loaded.runtime.lock();
    let last = runtime.evaluations.back().cloned();
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
        instances: runtime.state.instances.values().cloned().collect(),
        vanished: runtime.state.vanished.iter().cloned().collect(),
    }
}

fn snapshot(engine: &RuleEngine) -> RulesView {
    RulesView {
        rules: engine.rules().values().map(view).collect(),
        errors: engine.errors().iter().map(ToString::to_string).collect(),
    }
}

pub async fn list(State(state): State<ApiState>) -> Response {
    Json(snapshot(&state.rules)).into_response()
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
