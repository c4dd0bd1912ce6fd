//! The `homeostat` command line.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use homeostat::config::Config;
use homeostat::server;
use tracing_subscriber::EnvFilter;

/// Telemetry-driven remediation: OTLP in, SQL rules, sandboxed actions,
/// auditable decisions.
#[derive(Debug, Parser)]
#[command(name = "homeostat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: OTLP receivers, store, API.
    Run(RunArgs),
    /// Run a SQL query against a running instance and print the result.
    Query(QueryArgs),
    /// Validate rule files: parse, plan the SQL, compile the scripts.
    /// Prints `file:line: message` per problem; exits 1 if there is any.
    /// With `--config`, checks that configuration file too.
    Check(CheckArgs),
    /// Run rule unit tests (`*.test.toml`) on virtual time.
    Test(DirArgs),
    /// Check the memory's hash chains, or print its decisions, with no
    /// instance running.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run rules over archived telemetry on virtual time, in dry-run, and
    /// compare what they decide with the decisions recorded then.
    Replay(ReplayArgs),
    /// Capture a past period as a regression dataset: the archived
    /// telemetry the rules read and the decisions recorded then, as a test
    /// `homeostat test` runs. Versioned: a different capture is a new
    /// version, an equal one writes nothing.
    Capture(CaptureArgs),
    /// Print the JSON Schema of rule files or of test files, generated from
    /// the types `homeostat check` and `homeostat test` read them into.
    Schema(SchemaArgs),
}

/// A period of the past, for replay and capture.
#[derive(Debug, Args)]
struct PeriodArgs {
    /// Start of the period: RFC 3339, or a duration back from now ("2h").
    #[arg(long, value_name = "T")]
    from: String,
    /// End of the period [default: now].
    #[arg(long, value_name = "T")]
    to: Option<String>,
}

impl PeriodArgs {
    /// `(from, to)` in UTC nanoseconds.
    fn resolve(&self) -> Result<(i64, i64)> {
        let from = parse_time(&self.from)?;
        let to = match &self.to {
            Some(t) => parse_time(t)?,
            None => homeostat::ingest::now_nanos(),
        };
        Ok((from, to))
    }
}

#[derive(Debug, Args)]
struct CaptureArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    period: PeriodArgs,
    /// A rule to capture (repeatable) [default: every rule].
    #[arg(long = "rule", value_name = "NAME")]
    rules: Vec<String>,
    /// The rules folder, as deployed then.
    #[arg(long, value_name = "DIR", default_value = "rules")]
    rules_dir: PathBuf,
    /// The dataset's folder: versions go to OUT/v1, OUT/v2, ...
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// An attribute removed from every attribute map (repeatable).
    #[arg(long = "drop-attribute", value_name = "KEY")]
    drop_attributes: Vec<String>,
    /// An attribute whose values are replaced by their SHA-256 (repeatable).
    #[arg(long = "hash-attribute", value_name = "KEY")]
    hash_attributes: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaKind {
    /// Rule files (`rules/*.toml`).
    Rules,
    /// Test files (`*.test.toml`), captured datasets included.
    Tests,
}

#[derive(Debug, Args)]
struct SchemaArgs {
    #[arg(value_enum)]
    kind: SchemaKind,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    period: PeriodArgs,
    /// The rules to replay: the deployed ones, or a changed copy.
    #[arg(long, value_name = "DIR", default_value = "rules")]
    rules: PathBuf,
    /// Exit 1 when the replay decides differently from the record.
    #[arg(long)]
    fail_on_difference: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Re-read every entry and check every hash and link; name the first
    /// broken entry and exit 1 if there is any.
    Verify(DataArgs),
    /// Print the decisions, oldest first.
    Log(LogArgs),
}

#[derive(Debug, Args)]
struct DataArgs {
    /// Local folder or object-store URL of the memory.
    #[arg(long, value_name = "URL-or-DIR", default_value = "data")]
    data: String,
}

#[derive(Debug, Args)]
struct LogArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Only this rule's decisions.
    #[arg(long)]
    rule: Option<String>,
    /// Only decisions since: a duration back from now ("1h", "7d") or an
    /// RFC 3339 time.
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Output format: a table, or one JSON decision per line.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The rules folder.
    #[arg(default_value = "rules")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The rules folder.
    #[arg(default_value = "rules")]
    dir: PathBuf,
    /// A configuration file to check as `homeostat run --config` would
    /// read it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file; flags override its settings.
    #[arg(long, env = "HOMEOSTAT_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the OTLP/gRPC receiver [default: 127.0.0.1:4317].
    #[arg(long, value_name = "ADDR")]
    otlp_grpc: Option<SocketAddr>,
    /// Address of the OTLP/HTTP receiver [default: 127.0.0.1:4318].
    #[arg(long, value_name = "ADDR")]
    otlp_http: Option<SocketAddr>,
    /// Address of the HTTP API [default: 127.0.0.1:8480].
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Folder of rule files [default: ./rules].
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Local folder or object-store URL for decisions and archives [default: ./data].
    #[arg(long, value_name = "URL-or-DIR")]
    data: Option<String>,
    /// This replica's name in the memory and the cluster, distinct per
    /// replica [default: the host name].
    #[arg(long, visible_alias = "node-id", env = "HOMEOSTAT_NODE")]
    node: Option<String>,
    /// Local folder of the write-ahead log [default: wal/NODE under the
    /// data folder, or under the working folder when --data is a URL].
    #[arg(long, value_name = "DIR")]
    wal_dir: Option<PathBuf>,
    /// Serve the API on a non-loopback address without a token, because
    /// something in front of it (a proxy, a network policy) controls access.
    #[arg(long)]
    insecure_api: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// The SQL statement.
    sql: String,
    /// Address of the instance's API: host:port, or a URL (https://...).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8480")]
    api: String,
    /// The API's bearer token, when it asks for one.
    #[arg(long, env = "HOMEOSTAT_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A PEM certificate to trust for an https:// API (a self-signed one).
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Query the archive and the memory in this folder or object-store URL
    /// directly, with no instance running, instead of an instance's API.
    #[arg(long, value_name = "URL-or-DIR", conflicts_with = "api")]
    data: Option<String>,
}

/// glibc gives every thread that allocates an arena of its own (up to eight
/// per core), each keeping what it freed: under bursts of large requests
/// that is hundreds of MiB the budget never sees. A few arenas keep the
/// process close to the memory it accounts for (docs/memory.md); an
/// explicit `MALLOC_ARENA_MAX` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any thread is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // TLS (webhooks, OTLP export, Kubernetes) uses ring, chosen once here.
    homeostat::act::host::install_crypto_provider();
    // A server logs what it does; a command only its warnings.
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HOMEOSTAT_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Query(args) => query(args).await.map(|()| ExitCode::SUCCESS),
            Command::Check(args) => Ok(check(args).await),
            Command::Test(args) => Ok(test(args).await),
            Command::Audit(AuditCommand::Verify(args)) => audit_verify(args).await,
            Command::Audit(AuditCommand::Log(args)) => {
                audit_log(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Replay(args) => replay(args).await,
            Command::Capture(args) => capture(args).await.map(|()| ExitCode::SUCCESS),
            Command::Schema(args) => {
                let schema = match args.kind {
                    SchemaKind::Rules => homeostat::rules::schema::rules(),
                    SchemaKind::Tests => homeostat::rules::schema::tests(),
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schema).unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Config file, then flags: flags win.
fn resolve_config(args: RunArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(a) = args.otlp_grpc {
        config.otlp_grpc = a;
    }
    if let Some(a) = args.otlp_http {
        config.otlp_http = a;
    }
    if let Some(a) = args.api {
        config.api = a;
    }
    if let Some(r) = args.rules {
        config.rules = r;
    }
    if let Some(d) = args.data {
        config.data = d;
    }
    if let Some(n) = args.node {
        config.node = n;
    }
    if let Some(w) = args.wal_dir {
        config.ingest.wal_dir = Some(w);
    }
    config.insecure_api = args.insecure_api;
    Ok(config)
}

async fn run(args: RunArgs) -> Result<()> {
    let config = resolve_config(args)?;
    let running = server::start(config).await?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let rules = running.rules.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading rules");
                rules.request_reload();
            }
        });
    }
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        token.cancel();
    });
    running.wait().await?;
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    if let Some(path) = &args.config {
        match Config::load(path).and_then(|c| c.validate().map(|()| c)) {
            Ok(_) => println!("{}: configuration OK", path.display()),
            Err(e) => {
                println!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let (ok, errors) = homeostat::rules::check(&args.dir).await;
    for e in &errors {
        println!("{e}");
    }
    if errors.is_empty() {
        println!("{ok} rule{} OK", if ok == 1 { "" } else { "s" });
        ExitCode::SUCCESS
    } else {
        println!(
            "{} problem{} found",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
        ExitCode::FAILURE
    }
}

async fn test(args: DirArgs) -> ExitCode {
    let outcomes = match homeostat::rules::testing::run_dir(&args.dir).await {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    if outcomes.is_empty() {
        println!("no tests: no *.test.toml file under {}", args.dir.display());
        return ExitCode::FAILURE;
    }
    let mut failed = 0;
    let mut skipped = 0;
    for o in &outcomes {
        let ms = o.elapsed.as_secs_f64() * 1000.0;
        let note = o
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        if o.skipped {
            skipped += 1;
            println!("skip  {}: {}{note}", o.file.display(), o.name);
        } else if o.failures.is_empty() {
            println!("ok    {}: {} ({ms:.0} ms){note}", o.file.display(), o.name);
        } else {
            failed += 1;
            println!("FAIL  {}: {} ({ms:.0} ms){note}", o.file.display(), o.name);
            for f in &o.failures {
                println!("  {f}");
            }
        }
    }
    println!(
        "{} passed, {failed} failed{}",
        outcomes.len() - failed - skipped,
        if skipped > 0 {
            format!(", {skipped} superseded")
        } else {
            String::new()
        }
    );
    if failed == 0 && !outcomes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn audit_verify(args: DataArgs) -> Result<ExitCode> {
    let storage = homeostat::memory::Storage::open(&args.data)?;
    let report = homeostat::memory::audit::verify(&storage).await?;
    print!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn audit_log(args: LogArgs) -> Result<()> {
    use homeostat::memory::audit;
    let since = args.since.as_deref().map(parse_time).transpose()?;
    let storage = homeostat::memory::Storage::open(&args.data.data)?;
    let loaded = homeostat::memory::load(&storage).await?;
    for p in &loaded.problems {
        eprintln!("warning: {p} (`homeostat audit verify` lists every problem)");
    }
    let filter = audit::LogFilter {
        rule: args.rule,
        since,
    };
    let decisions = audit::decisions(&loaded, &filter);
    match args.format {
        Format::Table => print!("{}", audit::render(&decisions)),
        Format::Json => {
            for s in &decisions {
                println!("{}", serde_json::to_string(&s.decision)?);
            }
        }
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let (from, to) = args.period.resolve()?;
    let storage = homeostat::memory::Storage::open(&args.data.data)?;
    let report = homeostat::memory::replay::replay(&storage, &args.rules, from, to)
        .await
        .map_err(anyhow::Error::msg)?;
    print!("{}", homeostat::memory::replay::render(&report));
    Ok(if args.fail_on_difference && report.differs() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn capture(args: CaptureArgs) -> Result<()> {
    let (from, to) = args.period.resolve()?;
    let captured = homeostat::rules::dataset::capture(&homeostat::rules::dataset::Capture {
        storage: homeostat::memory::Storage::open(&args.data.data)?,
        rules_dir: args.rules_dir,
        rules: args.rules,
        from,
        to,
        out: args.out,
        drop_attributes: args.drop_attributes,
        hash_attributes: args.hash_attributes,
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let info = &captured.info;
    let rows: Vec<String> = info.rows.iter().map(|(t, n)| format!("{n} {t}")).collect();
    if captured.created {
        println!(
            "captured dataset {} v{} in {}: {}; {} decisions expected; {}",
            info.name,
            info.version,
            captured.dir.display(),
            rows.join(", "),
            captured.decisions,
            info.content_hash
        );
    } else {
        println!(
            "dataset {} unchanged: v{} in {} has this content ({})",
            info.name,
            info.version,
            captured.dir.display(),
            info.content_hash
        );
    }
    Ok(())
}

/// A time: RFC 3339, or a duration back from now.
fn parse_time(text: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        let since = t.duration_since(std::time::UNIX_EPOCH)?;
        return Ok(i64::try_from(since.as_nanos())?);
    }
    let back = humantime::parse_duration(text).with_context(|| {
        format!("{text:?} is neither an RFC 3339 time nor a duration like \"1h\"")
    })?;
    Ok(homeostat::ingest::now_nanos() - i64::try_from(back.as_nanos())?)
}

async fn query(args: QueryArgs) -> Result<()> {
    if let Some(data) = &args.data {
        let storage = homeostat::memory::Storage::open(data)?;
        let options = homeostat::config::Config::default().query_options();
        let engine = homeostat::query::QueryEngine::offline(&storage, options).await?;
        let result = engine.sql(&args.sql).await?;
        let body: serde_json::Value = serde_json::from_slice(&result.to_json())?;
        match args.format {
            Format::Json => println!("{body}"),
            Format::Table => print!("{}", render_table(&body)),
        }
        return Ok(());
    }
    let base = if args.api.contains("://") {
        args.api.clone()
    } else {
        format!("http://{}", args.api)
    };
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let mut client = reqwest::Client::builder();
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("--ca-cert {}: not a PEM certificate", path.display()))?;
        client = client.add_root_certificate(cert);
    }
    let mut request = client
        .build()
        .context("cannot set up the HTTP client")?
        .post(&url)
        .json(&serde_json::json!({ "sql": args.sql }));
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        request = request.bearer_auth(token.trim());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach homeostat at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("unreadable answer from {url}"))?;
    if !status.is_success() {
        let message = body["error"].as_str().unwrap_or("no message");
        bail!("query failed ({status}): {message}");
    }
    match args.format {
        Format::Json => println!("{body}"),
        Format::Table => print!("{}", render_table(&body)),
    }
    Ok(())
}

/// A query answer as a text table, with its row count.
fn render_table(body: &serde_json::Value) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    let columns = body["columns"].as_array().cloned().unwrap_or_default();
    table.set_header(columns.iter().map(|c| c.as_str().unwrap_or("").to_owned()));
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    for row in &rows {
        let cells = row.as_array().cloned().unwrap_or_default();
        table.add_row(cells.iter().map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }));
    }
    let mut out = format!("{table}\n");
    let n = rows.len();
    out.push_str(&format!("{n} row{}", if n == 1 { "" } else { "s" }));
    if body["truncated"].as_bool() == Some(true) {
        out.push_str(" (truncated: raise [query] max_rows or add a LIMIT)");
    }
    out.push('\n');
    out
}
