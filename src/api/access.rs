//! Access to the API and the dashboard.
//!
//! With a token configured, programs send `Authorization: Bearer <token>`;
//! people sign in once on `/login`, which sets an expiring session cookie
//! standing for the token (HttpOnly, SameSite=Strict). Without either, API
//! requests get 401 with a JSON error and pages get 401 with the sign-in
//! form. Health checks and the sign-in page itself stay open.
//!
//! Whatever the token, a write whose `Origin` names another host is refused:
//! another site's page cannot act through a browser. Without a token, only
//! requests to an IP address, `localhost` or `[web] allowed_hosts` are
//! answered, so that a name pointed at this address by someone else's DNS
//! (rebinding) cannot reach it either.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::{ApiState, json_error};

/// The session cookie's name.
pub const COOKIE: &str = "homeostat_session";

/// Paths served without the token (health checks are open before any
/// check): the sign-in page and the style it uses.
fn open(path: &str) -> bool {
    matches!(path, "/login" | "/assets/app.css")
}

/// The values of cookie `name` sent (a page on another port of the same
/// host can add one of its own: each is tried).
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The host the request was sent to: `Host`, or the URI's authority (HTTP/2
/// sends `:authority` and no `Host`).
fn host(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

/// `host[:port]` without a default port, lower case, for comparison.
fn normalized(host: &str, https: bool) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default = if https { ":443" } else { ":80" };
    host.strip_suffix(default)
        .map(str::to_owned)
        .unwrap_or(host)
}

/// Whether a host name is one the API answers to without a token: an IP
/// address, `localhost`, or one of `[web] allowed_hosts`. Anything else is
/// a name that could be pointed at this address by someone else's DNS (DNS
/// rebinding), letting a web page read and write the API.
fn trusted_host(host: &str, allowed: &[String]) -> bool {
    let name = match host.rsplit_once(':') {
        // [::1]:8480, 127.0.0.1:8480, localhost:8480
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether a write comes from this server's own pages: its `Origin`, when
/// the browser sends one, names the host it was sent to (`Host` or
/// `:authority`, or `X-Forwarded-Host` behind a proxy that rewrites `Host`;
/// a page on another origin cannot set that header without a CORS
/// preflight, which this API never grants).
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let (https, origin_host) = match origin.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return false,
    };
    let origin_host = normalized(origin_host, https);
    let forwarded = headers
        .get("x-forwarded-host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next());
    host(request)
        .into_iter()
        .chain(forwarded)
        .any(|h| normalized(h, https) == origin_host)
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The middleware in front of every route.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if matches!(path, "/livez" | "/readyz") {
        return next.run(request).await;
    }
    // Writes from another site's page are refused whatever signs them.
    if !request.method().is_safe() && !same_origin(&request) {
        return json_error(
            StatusCode::FORBIDDEN,
            "a write from a page must come from the dashboard's own origin (the Origin header does not name this host)".into(),
        );
    }
    let Some(token) = &state.token else {
        if !host(&request).is_some_and(|h| trusted_host(h, &state.allowed_hosts)) {
            return json_error(
                StatusCode::FORBIDDEN,
                format!(
                    "the API has no token and answers only to IP addresses, localhost and [web] allowed_hosts, not to Host {:?}",
                    host(&request).unwrap_or("")
                ),
            );
        }
        return next.run(request).await;
    };
    if open(path) {
        return next.run(request).await;
    }
    if let Some(value) = request.headers().get(header::AUTHORIZATION)
        && value
            .as_bytes()
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
    {
        return if token.matches_header(value.as_bytes()) {
            next.run(request).await
        } else {
            unauthorized(&request, "the bearer token is not the API's token")
        };
    }
    // Another scheme (a proxy's Basic authentication) leaves the cookie to
    // decide.
    let now = now_secs();
    let (sent, valid) = cookies(request.headers(), COOKIE).fold((false, false), |(_, ok), s| {
        (true, ok || token.matches_session(s.as_bytes(), now))
    });
    if valid {
        return next.run(request).await;
    }
    if !sent {
        return unauthorized(
            &request,
            "a token is required: send Authorization: Bearer <token>",
        );
    }
    unauthorized(
        &request,
        "the session has expired or was made with another token: sign in again",
    )
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
        "{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        token.session(now_secs()),
        crate::auth::SESSION_MAX_AGE.as_secs()
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
            (header::COOKIE, "b=2; homeostat_session=def"),
        ]);
        assert_eq!(cookies(&h, COOKIE).collect::<Vec<_>>(), ["abc", "def"]);
        assert_eq!(cookies(&h, "b").collect::<Vec<_>>(), ["2"]);
        assert_eq!(cookies(&h, "c").count(), 0);
    }

    fn request(pairs: &[(header::HeaderName, &str)], uri: &str) -> Request {
        let mut r = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        *r.headers_mut() = headers(pairs);
        r
    }

    #[test]
    fn writes_from_another_origin_are_told_apart() {
        let host = (header::HOST, "127.0.0.1:8480");
        let origin = |o| (header::ORIGIN, o);
        assert!(same_origin(&request(std::slice::from_ref(&host), "/")));
        assert!(same_origin(&request(
            &[host.clone(), origin("http://127.0.0.1:8480")],
            "/"
        )));
        assert!(!same_origin(&request(
            &[host.clone(), origin("http://evil.example")],
            "/"
        )));
        assert!(!same_origin(&request(&[host, origin("null")], "/")));
        // HTTP/2: no Host, the authority is in the URI.
        assert!(same_origin(&request(
            &[origin("https://ops.example")],
            "https://ops.example/api/v1/query"
        )));
        assert!(!same_origin(&request(
            &[origin("https://evil.example")],
            "https://ops.example/api/v1/query"
        )));
        // Behind a proxy; default ports and case do not matter.
        let forwarded = header::HeaderName::from_static("x-forwarded-host");
        assert!(same_origin(&request(
            &[
                (header::HOST, "homeostat:8480"),
                (forwarded, "Ops.Example:443, internal"),
                origin("https://ops.example")
            ],
            "/"
        )));
    }

    #[test]
    fn without_a_token_only_addresses_and_allowed_names_are_answered() {
        let allowed = vec!["homeostat.internal".to_owned()];
        for ok in [
            "127.0.0.1:8480",
            "[::1]:8480",
            "10.0.0.7",
            "localhost:8480",
            "LOCALHOST",
            "homeostat.internal:8480",
        ] {
            assert!(trusted_host(ok, &allowed), "{ok}");
        }
        for refused in [
            "attacker.example:8480",
            "localhost.attacker.example",
            "example",
        ] {
            assert!(!trusted_host(refused, &allowed), "{refused}");
        }
    }
}
