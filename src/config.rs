//! Configuration: plain data read from TOML (every key documented here and in
//! `deploy/homeostat.toml`), overridden by command-line flags, then validated
//! once into the options each subsystem takes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::query::QueryOptions;
use crate::store::StoreOptions;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error(transparent)]
    Archive(#[from] crate::memory::archive::ArchiveError),
    #[error(transparent)]
    Access(#[from] crate::auth::AuthError),
    #[error(
        "refusing to serve the API on {addr} without a token: anyone who reaches it could run SQL and approve actions. Set [web] token_file (or {API_TOKEN_ENV}), listen on 127.0.0.1, or pass --insecure-api if something in front of it (a proxy, a network policy) already controls access"
    )]
    InsecureApi { addr: SocketAddr },
}

/// The whole configuration file. Every key is optional; `homeostat run`
/// with no file at all uses these defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the OTLP/gRPC receiver.
    pub otlp_grpc: SocketAddr,
    /// Address of the OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics`, `/v1/logs`).
    pub otlp_http: SocketAddr,
    /// Address of the HTTP API.
    pub api: SocketAddr,
    /// Folder of rule files.
    pub rules: PathBuf,
    /// Where decisions and archived telemetry are kept: a local folder or an
    /// object-store URL.
    pub data: String,
    /// This instance's name in the memory: each writer appends to its own
    /// chain under `memory/{node}/`, so replicas sharing storage need
    /// distinct names. Empty: the host name.
    pub node: String,
    /// OTLP receivers.
    pub ingest: IngestConfig,
    /// The API and dashboard served on `api`: token, TLS, trace links.
    pub web: WebConfig,
    /// `--insecure-api`: serve the API on a non-loopback address without a
    /// token. A command-line flag only, so that it is never left in a file.
    #[serde(skip)]
    pub insecure_api: bool,
    /// The in-memory store.
    pub store: StoreConfig,
    /// The SQL engine behind `/api/v1/query`.
    pub query: QueryConfig,
    /// Defaults and maxima of rule actions (each rule's `[action]` is
    /// bounded by these).
    pub actions: crate::act::config::ActionLimits,
    /// Where rationale traces are exported over OTLP, besides the local
    /// `spans` table. The standard `OTEL_EXPORTER_OTLP_*` variables override
    /// this section.
    pub export: crate::decisions::export::ExportConfig,
    /// Telemetry kept as Parquet on the `data` storage after it leaves
    /// memory.
    pub archive: crate::memory::archive::ArchiveConfig,
    /// Replicas sharing the `data` storage: leases on episodes, heartbeats,
    /// and how often each reads the others' decisions.
    pub cluster: crate::cluster::ClusterConfig,
    /// Snapshots of the decision log, which bound what a start reads.
    pub memory: crate::act::actor::recovery::SnapshotConfig,
}

/// `[ingest]`: the OTLP receivers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body accepted, checked on the body as sent and again
    /// after decompression ("20 MiB"); larger requests get HTTP 413 or gRPC
    /// RESOURCE_EXHAUSTED.
    pub max_request_size: ByteSize,
    /// The delay suggested to senders (HTTP `Retry-After`) when the memory
    /// budget is full.
    #[serde(with = "crate::serde_duration")]
    pub retry_after: Duration,
    /// Bearer token senders must present (`Authorization: Bearer ...`, as
    /// `OTEL_EXPORTER_OTLP_HEADERS` sets it). The environment variable
    /// `HOMEOSTAT_OTLP_TOKEN` overrides it. Empty: no token asked.
    pub token: String,
    /// A file holding that token instead.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: both receivers serve TLS when set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How accepted telemetry is kept until the archive has it: `fsync`
    /// (on disk before the answer; survives a crash and a power loss),
    /// `os` (handed to the operating system before the answer; survives a
    /// crash of the process), `none` (memory only until the next flush).
    pub durability: crate::store::wal::Durability,
    /// Requests decoded and converted at once, per receiver: each holds its
    /// body, its decoded form and its rows until they are in the memory
    /// budget; more wait (HTTP/2 flow control holds their bodies back).
    pub max_concurrent_requests: usize,
    /// Folder of the write-ahead log, on a local disk: by default
    /// `wal/{node}` under `data` when that is a folder, and `./wal/{node}`
    /// when `data` is an object store. One process per folder.
    pub wal_dir: Option<PathBuf>,
}

/// `[web]`: the HTTP API and the dashboard, on the `api` address.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Bearer token API requests must present; the dashboard asks for it
    /// once and keeps a session cookie. `HOMEOSTAT_API_TOKEN` overrides it.
    /// Required to listen on a non-loopback address (or `--insecure-api`),
    /// because the API runs SQL and approves actions.
    pub token: String,
    /// A file holding that token instead.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: the API serves HTTPS when set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Link from a decision to an external trace viewer, `{trace_id}`
    /// replaced by the decision's rationale trace id: for Jaeger
    /// `http://jaeger:16686/trace/{trace_id}`, for Grafana Tempo an Explore
    /// URL. Empty: no link.
    pub trace_url: String,
    /// Host names the API answers to when it has no token, besides IP
    /// addresses and `localhost`: any other name could be pointed at this
    /// address by someone else's DNS, letting a web page reach the API.
    pub allowed_hosts: Vec<String>,
}

/// The environment variable that overrides `[web] token`.
pub const API_TOKEN_ENV: &str = "HOMEOSTAT_API_TOKEN";
/// The environment variable that overrides `[ingest] token`.
pub const OTLP_TOKEN_ENV: &str = "HOMEOSTAT_OTLP_TOKEN";

impl WebConfig {
    pub fn access(&self) -> crate::auth::Access {
        crate::auth::Access {
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

impl IngestConfig {
    pub fn access(&self) -> crate::auth::Access {
        crate::auth::Access {
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

/// `[store]`: the in-memory tables.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Arrow memory all tables together may hold. When it is full, the
    /// oldest rows already in the archive leave memory to make room (and are
    /// read from the archive); only when it is full of rows the archive does
    /// not have yet are senders asked to retry later.
    pub memory_budget: ByteSize,
    /// How long data stays in memory, counted from both its event time and
    /// its arrival, when the budget allows; queries and rules read older
    /// rows from the archive.
    #[serde(with = "crate::serde_duration")]
    pub retention: Duration,
    /// Width of the event-time partitions that queries prune by.
    #[serde(with = "crate::serde_duration")]
    pub partition: Duration,
    /// Rows whose time is older than this are refused (OTLP partial
    /// success, with the count and the reason).
    #[serde(with = "crate::serde_duration")]
    pub max_age: Duration,
    /// Rows whose time is further in the future than this are refused.
    #[serde(with = "crate::serde_duration")]
    pub max_future: Duration,
}

/// `[query]`: SQL from the API and the CLI.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Memory one query may use for sorts, joins and aggregations.
    pub memory_limit: ByteSize,
    /// Rows returned at most; longer results are cut and flagged `truncated`.
    pub max_rows: usize,
    /// Time a query may run before it is cancelled.
    #[serde(with = "crate::serde_duration")]
    pub timeout: Duration,
    /// Memory one rule evaluation may use for sorts, joins and
    /// aggregations, each in a pool of its own: an evaluation over it fails
    /// that rule's tick (recorded in its evaluations), nothing else.
    pub rule_memory_limit: ByteSize,
    /// Arrow bytes a query's answer may hold; a larger answer is an error
    /// (ask for fewer columns or rows) rather than memory the process
    /// cannot bound.
    pub max_result_bytes: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            api: SocketAddr::from(([127, 0, 0, 1], 8480)),
            rules: PathBuf::from("rules"),
            data: "data".into(),
            node: String::new(),
            ingest: IngestConfig::default(),
            web: WebConfig::default(),
            insecure_api: false,
            store: StoreConfig::default(),
            query: QueryConfig::default(),
            actions: Default::default(),
            export: Default::default(),
            archive: Default::default(),
            cluster: Default::default(),
            memory: Default::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_request_size: ByteSize::mib(20),
            retry_after: Duration::from_secs(5),
            token: String::new(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
            durability: Default::default(),
            max_concurrent_requests: 4,
            wal_dir: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_budget: ByteSize::gib(1),
            retention: Duration::from_secs(3600),
            partition: Duration::from_secs(60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(600),
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: ByteSize::mib(512),
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
            rule_memory_limit: ByteSize::mib(256),
            max_result_bytes: ByteSize::mib(64),
        }
    }
}

impl Config {
    /// Parses a TOML document; errors name the file, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks the values no type can: sizes and durations that would make
    /// the engine useless.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        let node = self.node_name();
        if node.len() > 64
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || node.starts_with('.')
        {
            return invalid(
                "node",
                "must be 1 to 64 letters, digits, '-', '_' or '.' (it names a folder in the storage)",
            );
        }
        self.archive.validate()?;
        if let Err(message) = self.cluster.validate() {
            return invalid("cluster", &message);
        }
        if !self.web.trace_url.is_empty() && !self.web.trace_url.contains("{trace_id}") {
            return invalid(
                "web.trace_url",
                "must contain {trace_id}, where the decision's trace id goes",
            );
        }
        if self.ingest.max_concurrent_requests == 0 {
            return invalid("ingest.max_concurrent_requests", "must be at least 1");
        }
        if self.ingest.max_request_size.as_u64() == 0 {
            return invalid("ingest.max_request_size", "must be more than 0 bytes");
        }
        if self.store.memory_budget.as_u64() == 0 {
            return invalid("store.memory_budget", "must be more than 0 bytes");
        }
        if self.store.partition.is_zero() {
            return invalid("store.partition", "must be longer than 0s");
        }
        if self.store.retention < self.store.partition {
            return invalid("store.retention", "must be at least one partition long");
        }
        if self.store.max_age < self.store.partition {
            return invalid("store.max_age", "must be at least one partition long");
        }
        let m = &self.memory;
        if m.snapshot_every == 0 || m.snapshot_interval.is_zero() || m.snapshots_kept == 0 {
            return invalid(
                "memory",
                "snapshot_every, snapshot_interval and snapshots_kept must be above zero",
            );
        }
        if self.query.max_rows == 0 {
            return invalid("query.max_rows", "must be at least 1");
        }
        if self.query.timeout.is_zero() {
            return invalid("query.timeout", "must be longer than 0s");
        }
        let a = &self.actions;
        if a.max_concurrent == 0 {
            return invalid("actions.max_concurrent", "must be at least 1");
        }
        if a.timeout.is_zero() || a.timeout > a.max_timeout {
            return invalid(
                "actions.timeout",
                "must be longer than 0s and at most max_timeout",
            );
        }
        if a.call_timeout.is_zero() || a.call_timeout > a.max_call_timeout {
            return invalid(
                "actions.call_timeout",
                "must be longer than 0s and at most max_call_timeout",
            );
        }
        if a.operations == 0 || a.operations > a.max_operations {
            return invalid("actions.operations", "must be between 1 and max_operations");
        }
        if a.concurrent_per_rule == 0 || a.concurrent_per_rule > a.max_concurrent {
            return invalid(
                "actions.concurrent_per_rule",
                "must be between 1 and max_concurrent",
            );
        }
        if a.max_call_depth == 0 {
            return invalid("actions.max_call_depth", "must be at least 1");
        }
        Ok(())
    }

    /// The node name: `node`, else the host name, else `local`.
    pub fn node_name(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into())
    }

    /// The API's and the receivers' tokens, from the environment variables
    /// `var` reads, the token files or the settings; and the check that an
    /// API reachable from elsewhere has one.
    pub fn tokens(&self, var: impl Fn(&str) -> Option<String>) -> Result<Tokens, ConfigError> {
        let api = self.web.access().token("web", API_TOKEN_ENV, &var)?;
        let otlp = self.ingest.access().token("ingest", OTLP_TOKEN_ENV, &var)?;
        if api.is_none() && !self.api.ip().is_loopback() && !self.insecure_api {
            return Err(ConfigError::InsecureApi { addr: self.api });
        }
        Ok(Tokens { api, otlp })
    }

    pub fn store_options(&self) -> StoreOptions {
        let budget = self.store.memory_budget.as_u64();
        StoreOptions {
            memory_budget: budget,
            retention: self.store.retention,
            partition: self.store.partition,
            max_age: self.store.max_age,
            max_future: self.store.max_future,
            flush_bytes: (budget / 4).max(1),
        }
    }

    /// The write-ahead log's folder: `[ingest] wal_dir`, else `wal/{node}`
    /// under a local `data` folder, else under the working folder;
    /// `None` for in-memory storage (`memory://`), which nothing survives.
    pub fn wal_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.ingest.wal_dir {
            return Some(dir.clone());
        }
        if self.data.starts_with("memory://") {
            return None;
        }
        if let Some(path) = self.data.strip_prefix("file://") {
            return Some(PathBuf::from(path).join("wal").join(self.node_name()));
        }
        if self.data.contains("://") {
            return Some(PathBuf::from("wal").join(self.node_name()));
        }
        Some(PathBuf::from(&self.data).join("wal").join(self.node_name()))
    }

    pub fn query_options(&self) -> QueryOptions {
        QueryOptions {
            memory_limit: usize::try_from(self.query.memory_limit.as_u64()).unwrap_or(usize::MAX),
            max_rows: self.query.max_rows,
            timeout: self.query.timeout,
            max_result_bytes: usize::try_from(self.query.max_result_bytes.as_u64())
                .unwrap_or(usize::MAX),
        }
    }
}

/// The tokens the listeners ask for.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub api: Option<crate::auth::Token>,
    pub otlp: Option<crate::auth::Token>,
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_their_line() {
        let err = Config::parse(
            "api = \"127.0.0.1:1\"\n[store]\nbudget = \"1 GiB\"\n",
            Path::new("h.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("h.toml:3:1: unknown field `budget`"),
            "{err}"
        );
    }

    #[test]
    fn sizes_and_durations_are_human() {
        let c = Config::parse(
            "[store]\nmemory_budget = \"64 MiB\"\nretention = \"2h 30m\"\n",
            Path::new("h.toml"),
        )
        .unwrap();
        assert_eq!(c.store.memory_budget, ByteSize::mib(64));
        assert_eq!(c.store.retention, Duration::from_secs(9000));
        let err =
            Config::parse("[store]\nretention = \"soon\"\n", Path::new("h.toml")).unwrap_err();
        assert!(
            err.to_string().contains("invalid duration \"soon\""),
            "{err}"
        );
    }
}
