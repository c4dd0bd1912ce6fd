//! The API while the instance recovers: `/livez` answers at once (the
//! process is alive), `/readyz` says what recovery is doing, and every
//! other path is "starting, retry". Once recovery is done, the whole API
//! takes over behind the same listener.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tower::ServiceExt as _;

/// The router to serve once recovery is done, and meanwhile what
/// recovery is doing.
#[derive(Clone, Default)]
pub struct Gate {
    router: Arc<OnceLock<Router>>,
    phase: Arc<Mutex<&'static str>>,
}

impl Gate {
    /// Says what recovery is doing now (shown by `/readyz`).
    pub fn phase(&self, phase: &'static str) {
        *self.phase.lock() = phase;
    }

    /// Opens the whole API.
    pub fn open(&self, router: Router) {
        let _ = self.router.set(router);
    }

    /// The router to serve from the start.
    pub fn router(&self) -> Router {
        Router::new().fallback(gated).with_state(self.clone())
    }
}

async fn gated(State(gate): State<Gate>, request: Request<Body>) -> Response {
    if let Some(router) = gate.router.get() {
        return match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let phase = *gate.phase.lock();
    match request.uri().path() {
        "/livez" => "ok".into_response(),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("starting: {phase}"),
        )
            .into_response(),
        _ => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": format!("the instance is starting ({phase}); retry shortly")
                })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}
