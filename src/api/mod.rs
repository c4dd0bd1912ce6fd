//! The HTTP API: SQL queries, rules, decisions and approvals, health and
//! readiness, and the engine's own metrics in Prometheus format.

pub mod access;
mod dashboard;
mod decisions;
pub mod events;
pub mod gate;
mod rules;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::internal_events::{Metrics, QueryExecuted};
use crate::query::{QueryEngine, QueryError};
use crate::rules::RuleEngine;
use crate::store::Store;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: QueryEngine,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub rules: Arc<RuleEngine>,
    pub actor: Arc<crate::act::actor::Actor>,
    /// The replicas sharing this one's storage.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// The OTLP exporter of rationale spans, when one is configured.
    pub exporter: Option<crate::decisions::export::Exporter>,
    /// Set once every receiver listens.
    pub ready: Arc<AtomicBool>,
    /// The token requests must carry, when one is configured.
    pub token: Option<crate::auth::Token>,
    /// What `/api/v1/status` tells about this instance.
    pub info: Arc<Info>,
    /// `[web] allowed_hosts`: names answered to without a token.
    pub allowed_hosts: Arc<Vec<String>>,
    /// Cancelled when the instance stops: long-lived responses (the event
    /// stream) end then, so that a graceful stop does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// This instance, as `GET /api/v1/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub version: &'static str,
    pub node: String,
    /// Where the memory and archive are.
    pub data: String,
    /// Start time (UTC nanoseconds).
    pub started_at: i64,
    /// The external trace viewer's URL template (`{trace_id}`), or empty.
    pub trace_url: String,
    /// Whether requests need a token.
    pub auth: bool,
    /// Whether the API serves HTTPS.
    pub tls: bool,
    /// Decisions the dashboard can show.
    pub decisions_kept: usize,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/query", post(query))
        .route("/api/v1/rules", get(rules::list))
        .route("/-/reload", post(rules::reload))
        .route("/api/v1/decisions", get(decisions::list))
        .route("/api/v1/decisions/{id}", get(decisions::get_one))
        .route("/api/v1/approvals", get(decisions::pending))
        .route("/api/v1/approvals/{id}", post(decisions::answer))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/events", get(events::stream))
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::assets))
        .route("/login", get(access::login_form).post(access::login))
        .route("/logout", post(access::logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::require_token,
        ))
        .layer(axum::middleware::map_response(dashboard::security_headers))
        .with_state(state)
}

/// The body of `POST /api/v1/query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn query(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"sql\": \"...\"}}: {e}"),
            );
        }
    };
    match state.engine.sql(&request.sql).await {
        Ok(result) => {
            QueryExecuted { error: None }.emit(&state.metrics);
            (
                [(header::CONTENT_TYPE, "application/json")],
                result.to_json(),
            )
                .into_response()
        }
        Err(e) => {
            let message = e.to_string();
            QueryExecuted {
                error: Some(&message),
            }
            .emit(&state.metrics);
            let status = match e {
                QueryError::User(_) => StatusCode::BAD_REQUEST,
                QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                QueryError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_error(status, message)
        }
    }
}

/// `GET /api/v1/cluster`: the nodes that share this one's storage, from
/// their heartbeats, and the settings that decide when one counts as gone.
async fn cluster(State(state): State<ApiState>) -> Response {
    let config = state.cluster.config();
    axum::Json(serde_json::json!({
        "node": state.cluster.node(),
        "lease_seconds": config.lease.as_secs_f64(),
        "heartbeat_seconds": config.heartbeat.as_secs_f64(),
        "nodes": state.cluster.peers(),
    }))
    .into_response()
}

async fn status(State(state): State<ApiState>) -> Response {
    axum::Json(state.info.as_ref()).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            let _scrape = state.metrics.scrape();
            if let Some(exporter) = &state.exporter {
                state.metrics.observe_export(exporter.stats());
            }
            state.metrics.observe_alerts(&state.rules);
            if let Some(journal) = state.actor.journal() {
                state.metrics.observe_memory(journal.stats());
            }
            state.metrics.render(&state.store)
        },
    )
        .into_response()
}
