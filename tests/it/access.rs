//! Access control: a token on the API, the dashboard and both receivers;
//! the refusal to expose an API without one; TLS on every listener. The
//! receivers are exercised with the real OpenTelemetry SDK.

use std::path::{Path, PathBuf};

use homeostat::server;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde_json::Value;

use crate::common::{Instance, local_config, python, start_with};

const API_TOKEN: &str = "api-token-0123456789abcdef";
const OTLP_TOKEN: &str = "otlp-token-0123456789abcdef";

/// Sends spans with the SDK (`tests/sdk/spans.py`): `Ok(sent)`, or
/// `Err(why)` when the receiver refused them.
pub async fn sdk_spans(
    protocol: &str,
    endpoint: &str,
    services: &str,
    errors: u32,
    token: Option<&str>,
    ca: Option<&Path>,
) -> Result<u64, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/spans.py");
    let mut command = tokio::process::Command::new(python());
    command
        .arg(script)
        .args(["--protocol", protocol, "--endpoint", endpoint])
        .args(["--services", services, "--errors", &errors.to_string()]);
    if let Some(t) = token {
        command.args(["--token", t]);
    }
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    let output = command.output().await.expect("spans.py starts");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        Some(0) => {
            let out: Value = serde_json::from_slice(&output.stdout).expect("spans.py prints JSON");
            Ok(out["sent"].as_u64().expect("sent"))
        }
        Some(2) => Err(stderr),
        _ => panic!("spans.py failed ({}): {stderr}", output.status),
    }
}

/// The SDK's export was refused for want of the token, not for anything
/// else (a connection or TLS failure): its log names the status.
fn assert_unauthenticated(protocol: &str, sent: Result<u64, String>) {
    let why = sent.expect_err("refused");
    let status = if protocol == "grpc" {
        "UNAUTHENTICATED"
    } else {
        "401"
    };
    assert!(
        why.contains(status),
        "{protocol}: not refused with {status}: {why}"
    );
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn www_authenticate(headers: &HeaderMap) -> &str {
    headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn guarded() -> Instance {
    start_with(|c| {
        c.web.token = API_TOKEN.into();
        c.ingest.token = OTLP_TOKEN.into();
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_token_the_api_and_dashboard_answer_401() {
    let h = guarded().await;
    let client = no_redirects();
    for path in [
        "/",
        "/api/v1/status",
        "/api/v1/decisions",
        "/api/v1/rules",
        "/api/v1/approvals",
        "/api/v1/events",
        "/metrics",
        "/assets/app.js",
    ] {
        let r = client.get(h.api_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "GET {path}");
        assert!(
            www_authenticate(r.headers()).starts_with("Bearer"),
            "GET {path}"
        );
        let r = client
            .get(h.api_url(path))
            .bearer_auth("not-the-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "GET {path}, wrong token"
        );
    }
    for (path, body) in [
        ("/api/v1/query", r#"{"sql": "SELECT 1"}"#),
        ("/api/v1/approvals/some-id", r#"{"decision": "approve"}"#),
        ("/-/reload", ""),
    ] {
        let r = client
            .post(h.api_url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "POST {path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
    // Orchestrators' health checks and the sign-in page stay open.
    for path in ["/livez", "/readyz", "/login", "/assets/app.css"] {
        let r = client.get(h.api_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
    }
    // A browser asking for the page gets the sign-in form, still with 401.
    let r = client
        .get(h.api_url("/"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let page = r.text().await.unwrap();
    assert!(
        page.contains(r#"<form method="post" action="/login">"#),
        "{page}"
    );

    // With the token, everything answers.
    let status = h.get_json_as(API_TOKEN, "/api/v1/status").await;
    assert_eq!(status["auth"], true);
    assert_eq!(status["tls"], false);
    let r = client
        .post(h.api_url("/api/v1/query"))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({ "sql": "SELECT 1 AS one" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_once_and_the_session_cookie_cannot_be_used_from_elsewhere() {
    let h = guarded().await;
    let client = no_redirects();
    let r = client
        .post(h.api_url("/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={}", "not-the-token-0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("not the token"));

    let r = client
        .post(h.api_url("/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={}", API_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(API_TOKEN),
        "the cookie is not the token: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    let page = client
        .get(h.api_url("/"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let r = client
        .get(h.api_url("/api/v1/decisions"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A write carried by the cookie from another site's page is refused;
    // from the dashboard's own origin it goes through.
    let query = serde_json::json!({ "sql": "SELECT 1 AS one" });
    let r = client
        .post(h.api_url("/api/v1/query"))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, "http://attacker.example")
        .json(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client
        .post(h.api_url("/api/v1/query"))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, format!("http://{}", h.running.api))
        .json(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A forged cookie is no session.
    let r = client
        .get(h.api_url("/api/v1/decisions"))
        .header(header::COOKIE, "homeostat_session=00ff")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = client
        .post(h.api_url("/logout"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cleared = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receivers_refuse_senders_without_their_token() {
    let h = guarded().await;
    let grpc = h.otlp_grpc_url();
    let http = format!("http://{}", h.running.otlp_http);
    for (protocol, endpoint) in [("grpc", &grpc), ("http", &http)] {
        let service = format!("guarded-{protocol}");
        let refused = sdk_spans(protocol, endpoint, &service, 0, None, None).await;
        assert_unauthenticated(protocol, refused);
        // The API's token is not the receivers'.
        let refused = sdk_spans(protocol, endpoint, &service, 0, Some(API_TOKEN), None).await;
        assert_unauthenticated(protocol, refused);
        let sent = sdk_spans(protocol, endpoint, &service, 0, Some(OTLP_TOKEN), None)
            .await
            .unwrap_or_else(|e| panic!("{protocol} with the token: {e}"));
        let stored = h
            .count_as(
                API_TOKEN,
                &format!("SELECT count(*) FROM spans WHERE service_name = '{service}'"),
            )
            .await;
        assert_eq!(stored, sent as i64, "{protocol}: only the accepted spans");
    }
    // The refusal follows OTLP/HTTP: 401, a google.rpc.Status with code 16.
    let r = h
        .post("/v1/traces", "application/json", false, b"{}".to_vec())
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_authenticate(r.headers()).starts_with("Bearer"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 16, "{body}");

    let metrics = h.metrics_as(API_TOKEN).await;
    for transport in ["grpc", "http"] {
        let line = format!(
            "homeostat_refused_requests_total{{signal=\"traces\",transport=\"{transport}\",reason=\"unauthenticated\"}}"
        );
        let n = sample(&metrics, &line).unwrap_or_else(|| panic!("no {line} in\n{metrics}"));
        assert!(n >= 2.0, "{line} = {n}");
    }
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Instance {
    async fn count_as(&self, token: &str, sql: &str) -> i64 {
        let body: Value = self
            .client
            .post(self.api_url("/api/v1/query"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["rows"][0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{body}"))
    }

    async fn metrics_as(&self, token: &str) -> String {
        self.client
            .get(self.api_url("/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_reachable_from_elsewhere_needs_a_token() {
    homeostat::act::host::install_crypto_provider();
    let everywhere = |c: &mut homeostat::config::Config| {
        c.api = "0.0.0.0:0".parse().unwrap();
    };
    let mut config = local_config();
    everywhere(&mut config);
    let err = server::start_with_env(config.clone(), |_| None)
        .await
        .err()
        .expect("no token, no start")
        .to_string();
    assert!(
        err.starts_with("refusing to serve the API on 0.0.0.0:0 without a token"),
        "{err}"
    );
    assert!(err.contains("--insecure-api"), "{err}");

    // Told that something else controls access, it starts.
    let open = start_with(|c| {
        everywhere(c);
        c.insecure_api = true;
    })
    .await;
    let status = open.get_json("/api/v1/status").await;
    assert_eq!(status["auth"], false);
    drop(open);
    // With a token from a file, it starts and asks for it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{API_TOKEN}\n")).unwrap();
    let guarded = start_with(|c| {
        everywhere(c);
        c.web.token_file = Some(file.clone());
    })
    .await;
    let r = guarded
        .client
        .get(guarded.api_url("/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(guarded.count_as(API_TOKEN, "SELECT 1").await, 1);

    // Bad settings are named.
    for (adjust, want) in [
        (
            Box::new(|c: &mut homeostat::config::Config| c.web.token = "short".into())
                as Box<dyn Fn(&mut homeostat::config::Config)>,
            "web.token is too short (5 characters)",
        ),
        (
            Box::new(|c: &mut homeostat::config::Config| {
                c.ingest.token_file = Some("/nonexistent/otlp-token".into())
            }),
            "ingest.token_file /nonexistent/otlp-token: ",
        ),
        (
            Box::new(|c: &mut homeostat::config::Config| {
                c.web.tls_cert = Some("/nonexistent/cert.pem".into());
                c.web.tls_key = Some("/nonexistent/key.pem".into());
            }),
            "web.tls_cert /nonexistent/cert.pem: ",
        ),
        (
            Box::new(|c: &mut homeostat::config::Config| c.web.trace_url = "http://j/".into()),
            "invalid setting web.trace_url: must contain {trace_id}",
        ),
    ] {
        let mut config = local_config();
        adjust(&mut config);
        let err = server::start(config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.starts_with(want), "{err}");
    }

    // The binary says so and exits 1 before listening.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["run", "--api", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--rules")
        .arg(dir.path())
        .env_remove("HOMEOSTAT_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve the API on 0.0.0.0:0"),
        "{stderr}"
    );
}

/// A test CA and a server certificate for 127.0.0.1 it signed, as PEM
/// files: `(ca, server certificate, server key)`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "homeostat test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_on_the_api_and_both_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let (c, k) = (cert.clone(), key.clone());
    let h = start_with(move |config| {
        config.web.token = API_TOKEN.into();
        config.web.tls_cert = Some(c.clone());
        config.web.tls_key = Some(k.clone());
        config.ingest.token = OTLP_TOKEN.into();
        config.ingest.tls_cert = Some(c);
        config.ingest.tls_key = Some(k);
    })
    .await;
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = format!("https://{}", h.running.api);
    let status: Value = trusting
        .get(format!("{api}/api/v1/status"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["tls"], true);
    // Plain HTTP gets no answer from a TLS listener.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/api/v1/status", h.running.api))
        .bearer_auth(API_TOKEN)
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "{plain:?}"
    );
    // The session cookie is only ever sent back over TLS.
    let r = trusting
        .post(format!("{api}/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={}", API_TOKEN))
        .send()
        .await
        .unwrap();
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.contains("; Secure"), "{set}");
    // A browser's write over HTTP/2 (no Host header, the authority in the
    // URI) from the dashboard's own origin goes through.
    let cookie = set.split(';').next().unwrap();
    let r = trusting
        .post(format!("{api}/api/v1/query"))
        .header(header::COOKIE, cookie)
        .header(header::ORIGIN, &api)
        .json(&serde_json::json!({ "sql": "SELECT 1 AS one" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);

    // The SDK over TLS, on both receivers, trusting the certificate.
    let grpc = format!("https://{}", h.running.otlp_grpc);
    let http = format!("https://{}", h.running.otlp_http);
    let mut sent = 0;
    for (protocol, endpoint) in [("grpc", &grpc), ("http", &http)] {
        sent += sdk_spans(
            protocol,
            endpoint,
            "over-tls",
            0,
            Some(OTLP_TOKEN),
            Some(&ca),
        )
        .await
        .unwrap_or_else(|e| panic!("{protocol} over TLS: {e}"));
        let refused = sdk_spans(protocol, endpoint, "over-tls", 0, None, Some(&ca)).await;
        assert_unauthenticated(protocol, refused);
    }

    // The CLI queries an HTTPS API with the token from the environment.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["query", "--format", "json", "--api", &api, "--ca-cert"])
        .arg(&ca)
        .arg("SELECT count(*) AS n FROM spans WHERE service_name = 'over-tls'")
        .env("HOMEOSTAT_API_TOKEN", API_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["rows"][0][0], sent, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_foreign_host_names_and_origins_are_refused() {
    let h = crate::common::start().await;
    let client = no_redirects();
    let ok = client
        .get(h.api_url("/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // A name someone else's DNS pointed at this address (DNS rebinding).
    for path in ["/api/v1/decisions", "/", "/metrics"] {
        let r = client
            .get(h.api_url(path))
            .header(header::HOST, "attacker.example:8480")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "GET {path}");
    }
    let r = client
        .get(h.api_url("/readyz"))
        .header(header::HOST, "attacker.example:8480")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "health checks answer any name");
    // A write from another site's page, even with no token to steal.
    let r = client
        .post(h.api_url("/api/v1/query"))
        .header(header::ORIGIN, "http://attacker.example")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(r#"{"sql": "SELECT 1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Origin"), "{body}");
    // A name the operator allowed is answered.
    let allowed = start_with(|c| c.web.allowed_hosts = vec!["homeostat.internal".into()]).await;
    let r = client
        .get(allowed.api_url("/api/v1/status"))
        .header(header::HOST, "homeostat.internal:8480")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
