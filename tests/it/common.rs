//! Starting an instance on free ports, and talking to it.

use std::net::SocketAddr;
use std::path::PathBuf;

use homeostat::config::Config;
use homeostat::server::{self, Running};
use serde_json::Value;

/// A running instance; stopped when dropped.
pub struct Instance {
    pub running: Running,
    pub client: reqwest::Client,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.running.shutdown();
    }
}

/// The answer to a query: column names and rows of JSON values.
#[derive(Debug)]
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Answer {
    /// The value of `column` in `row`.
    pub fn get(&self, row: usize, column: &str) -> &Value {
        let i = self
            .columns
            .iter()
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns));
        &self.rows[row][i]
    }
}

pub fn local_config() -> Config {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config {
        otlp_grpc: any,
        otlp_http: any,
        api: any,
        // Each instance its own memory, gone with it.
        data: "memory://".into(),
        ..Config::default()
    };
    // Tests send telemetry at fixed times of years ago (the time bounds
    // have tests of their own, with the defaults).
    config.store.max_age = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    config
}

pub async fn start() -> Instance {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Instance {
    homeostat::act::host::install_crypto_provider();
    let mut config = local_config();
    adjust(&mut config);
    // The caller's HOMEOSTAT_API_TOKEN (the CLI's way to pass a token) must
    // not change what the tests configure.
    let running = server::start_with_env(config, |_| None)
        .await
        .expect("instance starts");
    Instance {
        running,
        client: reqwest::Client::new(),
    }
}

impl Instance {
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.api)
    }

    pub fn otlp_http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.otlp_http)
    }

    pub fn otlp_grpc_url(&self) -> String {
        format!("http://{}", self.running.otlp_grpc)
    }

    /// Runs SQL through the HTTP API; panics on anything but 200.
    pub async fn query(&self, sql: &str) -> Answer {
        let response = self
            .client
            .post(self.api_url("/api/v1/query"))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("API reachable");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 200, "query {sql:?} failed: {body}");
        let columns = body["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c.as_str().expect("column name").to_owned())
            .collect();
        let rows = body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r.as_array().expect("row").clone())
            .collect();
        Answer { columns, rows }
    }

    /// GETs an API path and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get_json_with(path, None).await
    }

    /// [`Instance::get_json`] on an instance that asks for a bearer token.
    pub async fn get_json_as(&self, token: &str, path: &str) -> Value {
        self.get_json_with(path, Some(token)).await
    }

    async fn get_json_with(&self, path: &str, token: Option<&str>) -> Value {
        let mut request = self.client.get(self.api_url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("API reachable");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON answer")
    }

    /// The single number a `SELECT count(*) ...` returns.
    pub async fn count(&self, sql: &str) -> i64 {
        let answer = self.query(sql).await;
        answer.rows[0][0].as_i64().expect("a count")
    }

    /// POSTs an OTLP/HTTP body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        gzip: bool,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.otlp_http_url(path))
            .header("content-type", content_type)
            .body(body);
        if gzip {
            request = request.header("content-encoding", "gzip");
        }
        request.send().await.expect("OTLP/HTTP reachable")
    }

    /// The value of one sample of the Prometheus exposition at /metrics.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self
            .client
            .get(self.api_url("/metrics"))
            .send()
            .await
            .expect("API reachable")
            .text()
            .await
            .expect("metrics text");
        text.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("in-memory gzip");
    e.finish().expect("in-memory gzip")
}

/// The Python interpreter of the test environment that `tests/setup.sh`
/// builds (with the OpenTelemetry SDK installed).
pub fn python() -> PathBuf {
    let path = std::env::var_os("HOMEOSTAT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-env/venv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run tests/setup.sh (or tests/run.sh) to install the OpenTelemetry SDK",
        path.display()
    );
    path
}

/// An OTLP/JSON trace request with three spans of `service` starting now.
pub fn spans_now_json(service: &str) -> Vec<u8> {
    let now = homeostat::ingest::now_nanos();
    let spans: Vec<Value> = (0..3)
        .map(|i| {
            serde_json::json!({
                "traceId": format!("{:032x}", now as u128 + i),
                "spanId": format!("{:016x}", i + 1),
                "name": "GET /",
                "kind": 2,
                "startTimeUnixNano": (now - 1_000_000 * (i as i64 + 1)).to_string(),
                "endTimeUnixNano": now.to_string()
            })
        })
        .collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"spans": spans}]
        }]
    })
    .to_string()
    .into_bytes()
}

/// The rest of a child's log, once its ready line was read.
pub type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Reads a starting `homeostat run`'s log until its ready line; returns
/// that line (give it to [`address_in`]) and the rest of the log.
pub async fn ready_line(child: &mut tokio::process::Child) -> (String, LogLines) {
    use tokio::io::AsyncBufReadExt;
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .expect("log readable")
            .expect("homeostat exited before ready");
        if line.contains("homeostat is ready") {
            return (line, lines);
        }
    }
}

/// The address a ready line names for `what` (`api`, `otlp_http`,
/// `otlp_grpc`).
pub fn address_in(ready: &str, what: &str) -> String {
    let key = format!("{what}=");
    let at = ready.find(&key).expect("the address in the ready line") + key.len();
    ready[at..]
        .split_whitespace()
        .next()
        .expect("an address")
        .to_owned()
}

/// [`ready_line`], and the address it names for `what`.
pub async fn ready_address(child: &mut tokio::process::Child, what: &str) -> (String, LogLines) {
    let (line, lines) = ready_line(child).await;
    (address_in(&line, what), lines)
}

/// Runs a command to its end: whether it succeeded, and what it printed
/// (standard output, then standard error).
pub fn run(command: &mut std::process::Command) -> (bool, String) {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the `homeostat` binary as a user would.
pub fn homeostat_cli(args: &[&str]) -> (bool, String) {
    run(std::process::Command::new(env!("CARGO_BIN_EXE_homeostat")).args(args))
}
