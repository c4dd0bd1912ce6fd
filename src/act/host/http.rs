//! The `http` host module: requests to the URLs a rule allows.
//!
//! What the script sees:
//! - `http::get(url)`, `http::delete(url)`, `http::post(url, body)`,
//!   `http::put(url, body)`, each also with a last `headers` argument, a map
//!   of string values;
//! - a body that is a map, array, number or bool is sent as JSON; a string
//!   as `text/plain` unless the headers name a `content-type`; a blob as
//!   bytes; `()` as no body;
//! - the answer `#{status, headers, body}`: header names in lowercase, the
//!   body parsed when the response says it is JSON, else text. Every status
//!   is an answer, 4xx and 5xx included: the script decides what a 503 means.
//!   In dry-run the answer is `#{status: (), dry_run: true}`.
//!
//! What is refused (denied, in dry-run too, before anything is sent):
//! - a URL not under one of the rule's `http` prefixes. Both are compared
//!   normalized (parsed and serialized again, so case, default ports and `..`
//!   cannot sneak past) and at a path boundary;
//! - credentials in the URL (`user:pass@`), which would end up in records: an
//!   `authorization` header keeps them out;
//! - invalid header names or values, non-string values, and the headers the
//!   client owns: `host` (it would reach another virtual host than the one
//!   allowed), `content-length`, `transfer-encoding`, `connection`;
//! - a redirect outside the prefixes. Redirects are followed here rather than
//!   by the client, at most [`MAX_REDIRECTS`], so that each hop is checked
//!   and a refusal names its target.
//!
//! What fails (a host error): no connection, too many redirects, a body over
//! the call's `max_output` (read chunk by chunk, never buffered past it). The
//! call timeout covers the whole exchange, reading the body included.

use std::sync::LazyLock;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, Response, StatusCode, Url};
use rhai::{Dynamic, EvalAltResult, Map, Module};
use serde_json::json;

use super::{Answer, Call, CallEnv, HostError, from_json, perform, to_json};

/// Redirects followed before the call fails.
pub const MAX_REDIRECTS: usize = 5;

/// Headers the client sets from the request itself.
const RESERVED_HEADERS: [&str; 4] = ["host", "content-length", "transfer-encoding", "connection"];

/// Dropped when a redirect leaves the origin, as browsers do.
const CREDENTIAL_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

static CLIENT: LazyLock<Client> = LazyLock::new(|| {
    super::install_crypto_provider();
    Client::builder()
        .user_agent(concat!("homeostat/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        // Actions are rare: keeping no idle connection means none goes stale
        // or outlives the runtime it was opened on.
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client with the process's crypto provider and no proxy always builds")
});

pub fn module() -> Module {
    let mut m = Module::new();
    for name in ["get", "delete"] {
        m.set_native_fn(name, move |url: &str| {
            request(name, url, Dynamic::UNIT, None)
        });
        m.set_native_fn(name, move |url: &str, headers: Map| {
            request(name, url, Dynamic::UNIT, Some(headers))
        });
    }
    for name in ["post", "put"] {
        m.set_native_fn(name, move |url: &str, body| request(name, url, body, None));
        m.set_native_fn(name, move |url: &str, body, headers: Map| {
            request(name, url, body, Some(headers))
        });
    }
    m
}

/// A request checked for everything but the allow-list.
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
}

fn request(
    name: &'static str,
    url: &str,
    body: Dynamic,
    headers: Option<Map>,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let method = match name {
        "get" => Method::GET,
        "delete" => Method::DELETE,
        "post" => Method::POST,
        _ => Method::PUT,
    };
    let call = Call {
        module: "http",
        function: name,
        target: format!("{method} {}", shown(url)),
    };
    let prepared = prepare(method, url, body, headers).map_err(|reason| call.denied(reason));
    let checked = prepared
        .as_ref()
        .map(|r| r.url.clone())
        .map_err(Clone::clone);
    let denied = move |reason: String| call_denied(name, reason);
    let mut dry = Map::new();
    dry.insert("status".into(), Dynamic::UNIT);
    dry.insert("dry_run".into(), true.into());
    perform(
        call,
        move |env| check_allowed(&checked?, &env.capabilities.http).map_err(denied),
        dry.into(),
        move |env| async move { send(prepared?, name, env).await },
    )
}

fn call_denied(name: &str, reason: String) -> HostError {
    HostError::Denied {
        function: format!("http::{name}"),
        reason,
    }
}

/// The URL as recorded: normalized, without credentials.
fn shown(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            // Only fails for URLs that cannot carry credentials anyway.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

fn prepare(
    method: Method,
    url: &str,
    body: Dynamic,
    headers: Option<Map>,
) -> Result<Request, String> {
    let url = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let mut map = HeaderMap::new();
    for (name, value) in headers.unwrap_or_default() {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "header {name} is set by the client, not the script"
            ));
        }
        let value = value
            .into_string()
            .map_err(|t| format!("header {name} must be a string, not {t}"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("header {name} has characters a header cannot carry"))?;
        map.append(name, value);
    }
    let (body, content_type) = encode(body)?;
    if let Some(content_type) = content_type {
        map.entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static(content_type));
    }
    Ok(Request {
        method,
        url,
        headers: map,
        body,
    })
}

/// The bytes of a body and the content type they default to.
fn encode(body: Dynamic) -> Result<(Option<Bytes>, Option<&'static str>), String> {
    if body.is_unit() {
        return Ok((None, None));
    }
    if body.is_string() {
        let text = body.into_string().map_err(|t| format!("body: {t}"))?;
        return Ok((Some(text.into()), Some("text/plain; charset=utf-8")));
    }
    if body.is_blob() {
        let blob = body.into_blob().map_err(|t| format!("body: {t}"))?;
        return Ok((Some(blob.into()), Some("application/octet-stream")));
    }
    let json = to_json(&body).map_err(|e| format!("body cannot be sent as JSON: {e}"))?;
    let bytes = serde_json::to_vec(&json).map_err(|e| format!("body: {e}"))?;
    Ok((Some(bytes.into()), Some("application/json")))
}

/// Whether `url` is under one of `prefixes`, both normalized the same way.
/// A prefix not ending in `/` still ends at a path boundary: `/v1` allows
/// `/v1/x` and `/v1?q`, not `/v1x`.
fn check_allowed(url: &Url, prefixes: &[String]) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are refused: use an authorization header".into());
    }
    if prefixes.is_empty() {
        return Err("the rule allows no http prefix".into());
    }
    let under = |prefix: &Url| match url.as_str().strip_prefix(prefix.as_str()) {
        Some(rest) => {
            prefix.as_str().ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#'])
        }
        None => false,
    };
    if prefixes
        .iter()
        .filter_map(|p| Url::parse(p).ok())
        .any(|p| under(&p))
    {
        Ok(())
    } else {
        Err(format!(
            "{url} is not under an allowed prefix ({})",
            prefixes.join(", ")
        ))
    }
}

async fn send(request: Request, name: &str, env: CallEnv) -> Result<Answer, HostError> {
    let failed = |message: String| HostError::Failed {
        function: format!("http::{name}"),
        message,
    };
    let Request {
        mut method,
        mut url,
        mut headers,
        mut body,
    } = request;
    let mut redirects = 0;
    let response = loop {
        let mut builder = CLIENT
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(body) = &body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(|e| failed(describe(&e)))?;
        let status = response.status();
        let location = response.headers().get(header::LOCATION);
        let (true, Some(location)) = (is_followed(status), location) else {
            break response;
        };
        let next = location
            .to_str()
            .ok()
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| failed(format!("redirect from {url} to an invalid location")))?;
        if redirects == MAX_REDIRECTS {
            return Err(failed(format!("more than {MAX_REDIRECTS} redirects")));
        }
        redirects += 1;
        check_allowed(&next, &env.capabilities.http)
            .map_err(|reason| call_denied(name, format!("redirect to {next}: {reason}")))?;
        // As browsers and reqwest do: 301, 302 and 303 turn into a GET
        // without a body; 307 and 308 repeat the request as it was.
        if matches!(status.as_u16(), 301..=303) {
            body = None;
            headers.remove(header::CONTENT_TYPE);
            if method != Method::HEAD {
                method = Method::GET;
            }
        }
        if next.origin() != url.origin() {
            for sensitive in &CREDENTIAL_HEADERS {
                headers.remove(sensitive);
            }
        }
        url = next;
    };
    let status = response.status().as_u16();
    let answer_headers = response_headers(response.headers());
    let is_json = answer_headers
        .get("content-type")
        .and_then(|t| t.clone().into_string().ok())
        .is_some_and(|t| is_json(&t));
    let bytes = read_capped(response, env.limits.max_output)
        .await
        .map_err(failed)?;
    let text = || Dynamic::from(String::from_utf8_lossy(&bytes).into_owned());
    let body = match is_json {
        // A response that says JSON and is not stays readable as text.
        true => serde_json::from_slice(&bytes).map_or_else(|_| text(), |v| from_json(&v)),
        false => text(),
    };
    let mut value = Map::new();
    value.insert("status".into(), Dynamic::from(i64::from(status)));
    value.insert("headers".into(), answer_headers.into());
    value.insert("body".into(), body);
    let detail = match redirects {
        0 => json!({ "status": status }),
        _ => json!({ "status": status, "redirected_to": url.as_str() }),
    };
    Ok(Answer {
        value: value.into(),
        detail,
    })
}

fn is_followed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301..=303 | 307 | 308)
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

/// Header names (lowercase already) to values, repeated ones joined by ", ".
fn response_headers(headers: &HeaderMap) -> Map {
    let mut map = Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(name.as_str().into(), values.join(", ").into());
    }
    map
}

async fn read_capped(mut response: Response, max: usize) -> Result<Vec<u8>, String> {
    let over = || format!("response body over {max} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response body: {}", describe(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes: reqwest's own message rarely says what failed.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{StatusCode as Code, Uri};
    use axum::response::{IntoResponse, Redirect, Response as Reply};
    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::act::config::ActionLimits;
    use crate::act::host::{CallStatus, Capabilities};
    use crate::act::sandbox::RunReport;
    use crate::act::sandbox::tests::{run_script, run_with};

    /// A local server on a runtime of its own (a script blocks its thread),
    /// counting the requests it receives.
    struct Server {
        base: String,
        hits: Arc<AtomicUsize>,
        _runtime: tokio::runtime::Runtime,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }
        fn allowing_ok(&self) -> Capabilities {
            Capabilities {
                http: vec![self.url("/ok/")],
                ..Capabilities::default()
            }
        }
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
        fn get(&self, path: &str, limits: &ActionLimits) -> RunReport {
            let script = format!(r#"http::get("{}")"#, self.url(path));
            run_with(&script, self.allowing_ok(), false, limits)
        }
    }

    type Stream = Vec<Result<String, std::io::Error>>;

    async fn respond(
        State(hits): State<Arc<AtomicUsize>>,
        uri: Uri,
        headers: axum::http::HeaderMap,
        body: String,
    ) -> Reply {
        hits.fetch_add(1, Ordering::SeqCst);
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let host = header("host").unwrap_or_default();
        let chunks = |c: Stream| futures::stream::iter(c);
        match uri.path() {
            "/ok/json" => axum::Json(json!({"replicas": 3})).into_response(),
            "/ok/down" => (Code::SERVICE_UNAVAILABLE, "down").into_response(),
            "/ok/echo" => axum::Json(json!({
                "content_type": header("content-type"),
                "token": header("x-token"),
                "body": body,
            }))
            .into_response(),
            "/ok/hop" => Redirect::to("/ok/json").into_response(),
            "/ok/leave" => Redirect::temporary("/private/x").into_response(),
            "/ok/away" => {
                let other = host.replace("127.0.0.1", "localhost");
                Redirect::temporary(&format!("http://{other}/ok/json")).into_response()
            }
            "/ok/loop" => Redirect::temporary("/ok/loop").into_response(),
            "/ok/large" => "x".repeat(4096).into_response(),
            // Chunked, without a content-length to check beforehand.
            "/ok/stream" => {
                let eight = (0..8).map(|_| Ok("x".repeat(512))).collect();
                Body::from_stream(chunks(eight)).into_response()
            }
            "/ok/stall" => std::future::pending().await,
            "/ok/slow-body" => {
                let first = chunks(vec![Ok("{".into())]);
                Body::from_stream(first.chain(futures::stream::pending())).into_response()
            }
            _ => (Code::NOT_FOUND, "secret").into_response(),
        }
    }

    fn serve() -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a local port");
        let addr = listener.local_addr().expect("a bound address");
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .fallback(respond)
            .with_state(hits.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Server {
            base: format!("http://{addr}"),
            hits,
            _runtime: runtime,
        }
    }

    fn kind(r: &RunReport) -> &'static str {
        r.result.as_ref().map_or_else(|e| e.kind(), |_| "ok")
    }

    fn error(r: &RunReport) -> &str {
        r.calls[0].error.as_deref().unwrap_or_default()
    }

    #[test]
    fn allow_list_is_compared_on_normalized_urls_at_a_path_boundary() {
        let allowed = |url: &str, prefixes: &[&str]| {
            let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
            check_allowed(&Url::parse(url).expect("test URLs parse"), &prefixes).is_ok()
        };
        let v1 = ["https://api.example.com/v1/"];
        assert!(allowed("https://api.example.com/v1/x", &v1));
        assert!(allowed("HTTPS://API.EXAMPLE.COM:443/v1/x?q=1", &v1));
        assert!(!allowed("https://api.example.com/v1x", &v1));
        assert!(!allowed("https://api.example.com/v1/../admin", &v1));
        assert!(!allowed("https://api.example.com.evil.net/v1/", &v1));
        assert!(!allowed("http://api.example.com/v1/x", &v1));
        assert!(!allowed("https://api.example.com:8443/v1/x", &v1));
        assert!(!allowed("https://user:pw@api.example.com/v1/x", &v1));
        let bare = ["https://api.example.com/v1"];
        assert!(allowed("https://api.example.com/v1/x", &bare));
        assert!(allowed("https://api.example.com/v1?q", &bare));
        assert!(!allowed("https://api.example.com/v1x", &bare));
        assert!(!allowed("https://api.example.com/", &[]));
    }

    #[test]
    fn answers_carry_status_headers_and_parsed_bodies() {
        let server = serve();
        let (json, down) = (server.url("/ok/json"), server.url("/ok/down"));
        let script = format!(
            r#"let a = http::get("{json}"); let b = http::get("{down}");
               #{{ replicas: a.body.replicas, type: a.headers["content-type"],
                  status: b.status, down: b.body }}"#
        );
        let r = run_script(&script, server.allowing_ok(), false);
        let expected =
            json!({"replicas": 3, "type": "application/json", "status": 503, "down": "down"});
        assert_eq!(r.result, Ok(expected));
        assert_eq!(r.calls[1].status, CallStatus::Ok, "a 503 is an answer");
        assert_eq!(r.calls[1].detail, json!({"status": 503}));
        assert_eq!(r.calls[1].target, format!("GET {down}"));
        assert_eq!(r.calls[1].function, "http::get");
    }

    #[test]
    fn bodies_are_sent_as_json_or_text() {
        let server = serve();
        let url = server.url("/ok/echo");
        let script = format!(
            r#"[http::post("{url}", #{{n: 1}}).body, http::put("{url}", "plain").body,
                http::post("{url}", "<a/>", #{{"content-type": "text/xml", "x-token": "t"}}).body]"#
        );
        let r = run_script(&script, server.allowing_ok(), false);
        let expected = json!([
            {"content_type": "application/json", "token": null, "body": "{\"n\":1}"},
            {"content_type": "text/plain; charset=utf-8", "token": null, "body": "plain"},
            {"content_type": "text/xml", "token": "t", "body": "<a/>"},
        ]);
        assert_eq!(r.result, Ok(expected));
        assert_eq!(r.calls[1].target, format!("PUT {url}"));
    }

    #[test]
    fn refused_requests_send_nothing_even_in_dry_run() {
        let server = serve();
        let ok = server.url("/ok/json");
        let refused = [
            (
                server.url("/private/x"),
                "{}",
                "not under an allowed prefix",
            ),
            (server.url("/okx"), "{}", "not under an allowed prefix"),
            (
                ok.replace("http://", "http://user:pw@"),
                "{}",
                "credentials",
            ),
            (
                ok.clone(),
                r#"{"bad name": "v"}"#,
                "not a valid header name",
            ),
            (ok.clone(), r#"{host: "internal"}"#, "set by the client"),
            (ok.clone(), r#"{"x-n": 1}"#, "must be a string"),
        ];
        for dry_run in [false, true] {
            for (url, headers, reason) in &refused {
                let script = format!(r#"http::get("{url}", #{headers})"#);
                let r = run_script(&script, server.allowing_ok(), dry_run);
                assert_eq!(kind(&r), "capability_denied", "{url} {headers}");
                assert_eq!(r.calls[0].status, CallStatus::Denied);
                assert!(error(&r).contains(reason), "{}", error(&r));
                assert!(!r.calls[0].target.contains("pw"), "{}", r.calls[0].target);
            }
        }
        let r = run_script(
            &format!(r#"http::delete("{ok}")"#),
            server.allowing_ok(),
            true,
        );
        assert_eq!(r.result, Ok(json!({"status": null, "dry_run": true})));
        assert_eq!(r.calls[0].status, CallStatus::DryRun);
        assert_eq!(server.hits(), 0);
    }

    #[test]
    fn redirects_are_followed_only_inside_the_allow_list() {
        let server = serve();
        let limits = ActionLimits::default();
        let r = server.get("/ok/hop", &limits);
        assert_eq!(
            r.result.map(|v| v["body"].clone()),
            Ok(json!({"replicas": 3}))
        );
        let to = server.url("/ok/json");
        assert_eq!(
            r.calls[0].detail,
            json!({"status": 200, "redirected_to": to})
        );
        let elsewhere = to.replace("127.0.0.1", "localhost");
        for (path, target) in [
            ("/ok/leave", server.url("/private/x")),
            ("/ok/away", elsewhere),
        ] {
            let before = server.hits();
            let r = server.get(path, &limits);
            assert_eq!(kind(&r), "capability_denied");
            assert_eq!(r.calls[0].status, CallStatus::Denied);
            assert!(
                error(&r).contains(&format!("redirect to {target}")),
                "{}",
                error(&r)
            );
            assert_eq!(
                server.hits(),
                before + 1,
                "the redirect target was not asked"
            );
        }
        let r = server.get("/ok/loop", &limits);
        assert_eq!(kind(&r), "host_error");
        assert!(error(&r).contains("more than 5 redirects"), "{}", error(&r));
    }

    #[test]
    fn large_bodies_fail_and_silent_servers_time_out() {
        let server = serve();
        let limits = ActionLimits {
            call_timeout: Duration::from_millis(300),
            max_output: bytesize::ByteSize::b(1024),
            ..ActionLimits::default()
        };
        for path in ["/ok/large", "/ok/stream"] {
            let r = server.get(path, &limits);
            assert_eq!(kind(&r), "host_error", "{path}");
            assert_eq!(r.calls[0].status, CallStatus::Error);
            assert!(
                error(&r).contains("response body over 1024 bytes"),
                "{}",
                error(&r)
            );
        }
        // No answer at all, and headers with a body that never ends.
        for path in ["/ok/stall", "/ok/slow-body"] {
            let r = server.get(path, &limits);
            assert_eq!(kind(&r), "host_timeout", "{path}");
            assert_eq!(r.calls[0].status, CallStatus::Timeout);
        }
    }

    #[test]
    fn scripts_can_catch_failures() {
        let server = serve();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let capabilities = Capabilities {
            http: vec![server.url("/ok/"), format!("http://{closed}/")],
            ..Capabilities::default()
        };
        let script = format!(
            r#"let seen = [];
               try {{ http::get("{}"); }} catch (e) {{ seen.push(e); }}
               try {{ http::get("http://{closed}/"); }} catch (e) {{ seen.push(e); }}
               seen"#,
            server.url("/private/x")
        );
        let r = run_script(&script, capabilities, false);
        let seen = r.result.expect("the script caught both failures");
        assert!(
            seen[0].as_str().is_some_and(|e| e.contains("denied")),
            "{seen}"
        );
        assert_eq!(r.calls[1].status, CallStatus::Error);
        assert!(
            seen[1].as_str().is_some_and(|e| e.contains("refused")),
            "{seen}"
        );
    }
}
