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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("HOMEOSTAT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
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
            Command::Run(args) => run(args).await,
            Command::Query(args) => query(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
