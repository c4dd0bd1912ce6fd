//! `GET /api/v1/decisions`, `GET /api/v1/decisions/{id}`, and approvals:
//! `GET /api/v1/approvals` lists the decisions waiting for a person,
//! `POST /api/v1/approvals/{id}` answers one.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiState, json_error};
use crate::decisions::{DECISIONS_KEPT, Filter, Outcome};

/// Decisions returned when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<usize>,
    rule: Option<String>,
    outcome: Option<String>,
    /// Only decisions changed after this version of the list (the
    /// `version` of an earlier answer): what a dashboard fetches after the
    /// first load.
    after: Option<u64>,
}

pub async fn list(
    State(state): State<ApiState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}: the parameters are limit (1 to {DECISIONS_KEPT}), rule, outcome and after (a version)"
                ),
            );
        }
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > DECISIONS_KEPT {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {DECISIONS_KEPT}"),
        );
    }
    let outcome = match params.outcome.as_deref().map(|o| (o, Outcome::parse(o))) {
        None => None,
        Some((_, Some(o))) => Some(o),
        Some((o, None)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("unknown outcome {o:?}: use pending, effective, ineffective or none"),
            );
        }
    };
    let mut filter = Filter {
        rule: params.rule,
        outcome,
        changed_after: params.after,
        limit,
    };
    let (mut decisions, mut version) = state.actor.log().list_versioned(&filter);
    // A version from the future is from before a restart: the list starts
    // over, and the answer says so.
    let full = params.after.is_some_and(|after| after > version);
    if full {
        filter.changed_after = None;
        (decisions, version) = state.actor.log().list_versioned(&filter);
    }
    Json(serde_json::json!({
        "decisions": decisions,
        "version": version,
        "full": params.after.is_none() || full,
    }))
    .into_response()
}

pub async fn get_one(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.actor.log().get(&id) {
        Some(d) => Json(d).into_response(),
        None => json_error(StatusCode::NOT_FOUND, format!("no decision {id}")),
    }
}

pub async fn pending(State(state): State<ApiState>) -> Response {
    Json(serde_json::json!({ "approvals": state.actor.pending_approvals() })).into_response()
}

/// The body of `POST /api/v1/approvals/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// "approve" or "deny".
    pub decision: String,
    /// Who answers, for the record.
    pub by: Option<String>,
    pub comment: Option<String>,
}

pub async fn answer(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let answer: Answer = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"decision\": \"approve\" | \"deny\", \"by\": \"...\", \"comment\": \"...\"}}: {e}"
                ),
            );
        }
    };
    let approve = match answer.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("decision must be \"approve\" or \"deny\", not {other:?}"),
            );
        }
    };
    match state.actor.answer(&id, approve, answer.by, answer.comment) {
        Ok((decision, _run)) => Json(decision).into_response(),
        Err(e) => json_error(StatusCode::NOT_FOUND, e.to_string()),
    }
}
