//! The web dashboard: a page and its script and style, embedded in the
//! binary so that nothing is fetched from elsewhere.
//!
//! Setting `HOMEOSTAT_DASHBOARD_DIR` to a folder holding `index.html`,
//! `app.js` and `app.css` serves those files instead, read at each request:
//! that is how the dashboard is worked on without rebuilding.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Each asset: its name, content type and embedded text.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/app.css"),
    ),
];

/// What the page may load and run: only this origin, and no inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(name: &str) -> Response {
    let Some((name, content_type, embedded)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let body = match std::env::var_os("HOMEOSTAT_DASHBOARD_DIR") {
        Some(dir) => match std::fs::read_to_string(std::path::Path::new(&dir).join(name)) {
            Ok(text) => text,
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "HOMEOSTAT_DASHBOARD_DIR: cannot read {}: {e}",
                        std::path::Path::new(&dir).join(name).display()
                    ),
                )
                    .into_response();
            }
        },
        None => (*embedded).to_owned(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// On every response of the API listener (pages, the sign-in form, errors):
/// the page's policy, and no content-type guessing.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub async fn index() -> Response {
    asset("index.html")
}

pub async fn assets(Path(name): Path<String>) -> Response {
    asset(&name)
}
