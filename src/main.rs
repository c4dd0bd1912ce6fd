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
    Check(DirArgs),
    /// Run rule unit tests (`*.test.toml`) on virtual time.
    Test(DirArgs),
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The rules folder.
    #[arg(default_value = "rules")]
    dir: PathBuf,
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
    /// Address of the instance's API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8480")]
    api: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

fn main() -> ExitCode {
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

async fn check(args: DirArgs) -> ExitCode {
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
    for o in &outcomes {
        let ms = o.elapsed.as_secs_f64() * 1000.0;
        if o.failures.is_empty() {
            println!("ok    {}: {} ({ms:.0} ms)", o.file.display(), o.name);
        } else {
            failed += 1;
            println!("FAIL  {}: {} ({ms:.0} ms)", o.file.display(), o.name);
            for f in &o.failures {
                println!("  {f}");
            }
        }
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed == 0 && !outcomes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn query(args: QueryArgs) -> Result<()> {
    let base = if args.api.contains("://") {
        args.api.clone()
    } else {
        format!("http://{}", args.api)
    };
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "sql": args.sql }))
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
