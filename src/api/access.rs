//! Access to the API and the dashboard when a token is configured.
//!
//! Programs send `Authorization: Bearer <token>`. People sign in once on
//! `/login`, which sets a session cookie standing for the token (HttpOnly,
//! SameSite=Strict). Without either, API requests get 401 with a JSON error
//! and pages get 401 with the sign-in form. Health checks and the sign-in
//! page itself stay open. Writes authorized by the cookie must come from the
//! dashboard's own origin.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::{ApiState, json_error};

/// The session cookie's name.
pub const COOKIE: &str = "homeostat_session";

/// Paths served without a token: health checks for orchestrators, the
/// sign-in page and the style it uses.
fn open(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/login" | "/assets/app.css")
}

/// The value of cookie `name`, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a cookie-authorized write comes from this server's own pages:
/// its `Origin`, when the browser sends one, names the host it was sent to
/// (`Host`, or `X-Forwarded-Host` behind a proxy that rewrites `Host`; a
/// page on another origin cannot set that header without a CORS preflight,
/// which this API never grants).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let Some(origin_host) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| headers.get(name).and_then(|h| h.to_str().ok()))
        .any(|host| host == origin_host)
}

fn wants_html(request: &Request) -> bool {
    request.method() == Method::GET
        && !request.uri().path().starts_with("/api/")
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

fn unauthorized(request: &Request, message: &str) -> Response {
    let mut response = if wants_html(request) {
        (StatusCode::UNAUTHORIZED, login_page(None)).into_response()
    } else {
        json_error(StatusCode::UNAUTHORIZED, message.to_owned())
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"homeostat\""),
    );
    response
}

/// The middleware in front of every route.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if open(request.uri().path()) {
        return next.run(request).await;
    }
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        return if token.matches_header(value.as_bytes()) {
            next.run(request).await
        } else {
            unauthorized(&request, "the bearer token is not the API's token")
        };
    }
    match cookie(request.headers(), COOKIE) {
        Some(session) if token.matches_session(session.as_bytes()) => {
            if !request.method().is_safe() && !same_origin(request.headers()) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "a write signed in by cookie must come from the dashboard's own origin".into(),
                );
            }
            next.run(request).await
        }
        Some(_) => unauthorized(&request, "the session has expired: sign in again"),
        None => unauthorized(
            &request,
            "a token is required: send Authorization: Bearer <token>",
        ),
    }
}

/// `GET /login`: the sign-in form, or the dashboard when no token is set.
pub async fn login_form(State(state): State<ApiState>) -> Response {
    if state.token.is_none() {
        return Redirect::to("/").into_response();
    }
    login_page(None).into_response()
}

/// `POST /login`: checks the token typed in and sets the session cookie.
pub async fn login(State(state): State<ApiState>, body: Bytes) -> Response {
    let Some(token) = &state.token else {
        return Redirect::to("/").into_response();
    };
    let typed = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !token.matches(typed.trim().as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            login_page(Some("That is not the token this instance was given.")),
        )
            .into_response();
    }
    let secure = if state.info.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        token.session()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: forgets the session.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "homeostat_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

/// The sign-in page: a plain form, no script.
fn login_page(error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"login-error\" role=\"alert\">{e}</p>"))
        .unwrap_or_default();
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Homeostat</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/app.css">
</head>
<body class="login">
<main class="login-box">
<h1>Homeostat</h1>
<p>This instance asks for its API token.</p>
{error}
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[
            (header::COOKIE, "a=1; homeostat_session=abc"),
            (header::COOKIE, "b=2"),
        ]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn writes_from_another_origin_are_told_apart() {
        let host = (header::HOST, "127.0.0.1:8480");
        assert!(same_origin(&headers(std::slice::from_ref(&host))));
        assert!(same_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:8480")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            (header::ORIGIN, "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[(
            header::ORIGIN,
            "http://127.0.0.1:8480"
        )])));
        assert!(same_origin(&headers(&[
            (header::HOST, "homeostat:8480"),
            (
                header::HeaderName::from_static("x-forwarded-host"),
                "ops.example"
            ),
            (header::ORIGIN, "https://ops.example")
        ])));
        assert!(!same_origin(&headers(&[
            (header::HOST, "127.0.0.1:8480"),
            (header::ORIGIN, "null")
        ])));
    }
}
