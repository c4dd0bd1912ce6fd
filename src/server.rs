//! Starting and stopping a whole instance: binds every listener first (so a
//! busy port fails the start with its name), then serves until shut down,
//! letting requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::act::actor::recovery::{self, Snapshotter};
use crate::act::actor::{Actor, Clock, TraceSink};
use crate::api::gate::Gate;
use crate::api::{self, ApiState};
use crate::cluster::Cluster;
use crate::cluster::follow::{Follower, Views};
use crate::config::{Config, ConfigError};
use crate::decisions::DecisionLog;
use crate::decisions::export::Exporter;
use crate::decisions::memory::Facts;
use crate::ingest::{self, Ingester, Signal, now_nanos};
use crate::internal_events::{Metrics, WalReplayed};
use crate::memory::archive::{Archive, Flusher};
use crate::memory::{Memory, MemoryError, Storage};
use crate::query::QueryEngine;
use crate::rules::RuleEngine;
use crate::rules::engine::Executor;
use crate::store::Store;
use crate::store::wal::{Dir, Durability};

/// Why an instance could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the query engine: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("cannot watch the rules folder {dir}: {source}")]
    Watch {
        dir: std::path::PathBuf,
        source: notify::Error,
    },
    #[error("cannot start the rule evaluation threads: {source}")]
    Executor { source: std::io::Error },
    #[error("cannot start the action threads: {source}")]
    Actions { source: std::io::Error },
    #[error("invalid OTLP export settings: {0}")]
    Export(#[from] crate::decisions::export::ExportConfigError),
    #[error("cannot open the archive: {0}")]
    Archive(#[from] crate::memory::archive::ArchiveError),
    #[error("cannot open the memory: {0}")]
    Memory(Box<MemoryError>),
    #[error("{what} server failed: {message}")]
    Serve { what: &'static str, message: String },
    #[error(transparent)]
    Wal(#[from] crate::store::wal::WalError),
}

impl From<MemoryError> for ServerError {
    fn from(e: MemoryError) -> Self {
        ServerError::Memory(Box::new(e))
    }
}

/// A running instance.
pub struct Running {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub api: SocketAddr,
    pub store: Arc<Store>,
    pub engine: QueryEngine,
    pub metrics: Arc<Metrics>,
    pub rules: Arc<RuleEngine>,
    /// Runs actions and keeps the decisions.
    pub actor: Arc<Actor>,
    /// Sends rationale spans to the configured OTLP endpoint, if any.
    pub exporter: Option<Exporter>,
    /// The episodic memory on storage.
    pub memory: Memory,
    /// How long a graceful stop waits for running actions.
    grace: std::time::Duration,
    /// Writes memory's rows to the archive; the last flush is at the stop.
    flusher: Arc<Flusher>,
    /// Writes snapshots of the decision log; the last one at the stop.
    snapshotter: Arc<Snapshotter>,
    /// Set once the receivers listen.
    ready: Arc<AtomicBool>,
    /// The threads rules are evaluated on; stopped with the instance.
    _executor: Executor,
    /// Watches the rules folder while the instance runs.
    _watcher: Option<notify::RecommendedWatcher>,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), ServerError>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

fn local(
    listener: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Starts an instance on `config`, with tokens from the environment
/// variables that override it (`HOMEOSTAT_API_TOKEN`,
/// `HOMEOSTAT_OTLP_TOKEN`).
pub async fn start(config: Config) -> Result<Running, ServerError> {
    start_with_env(config, |name| std::env::var(name).ok()).await
}

/// [`start`], with the environment read through `var` (tests pass their
/// own, so that the caller's environment does not change them).
pub async fn start_with_env(
    config: Config,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Running, ServerError> {
    config.validate()?;
    // Tokens and certificates are checked before anything listens.
    let tokens = config.tokens(var)?;
    let api_tls = config
        .web
        .access()
        .tls("web", &[b"h2", b"http/1.1"])
        .map_err(ConfigError::from)?;
    let otlp_tls = config
        .ingest
        .access()
        .tls("ingest", &[b"h2", b"http/1.1"])
        .map_err(ConfigError::from)?;
    let otlp_pem = config
        .ingest
        .access()
        .tls_pem("ingest")
        .map_err(ConfigError::from)?;
    let grpc_listener = bind("OTLP/gRPC", config.otlp_grpc).await?;
    let http_listener = bind("OTLP/HTTP", config.otlp_http).await?;
    let api_listener = bind("the API", config.api).await?;
    let otlp_grpc = local(&grpc_listener, "OTLP/gRPC", config.otlp_grpc)?;
    let otlp_http = local(&http_listener, "OTLP/HTTP", config.otlp_http)?;
    let api = local(&api_listener, "the API", config.api)?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // The API listens first, behind a gate: `/livez` answers during recovery,
    // `/readyz` and the rest once it is done.
    let gate = Gate::default();
    tasks.spawn(serve_http(
        "API",
        api_listener,
        gate.router(),
        api_tls.clone(),
        shutdown.clone(),
    ));
    let recovered = recover(&config, tokens, otlp_pem, &gate, &shutdown, &mut tasks).await;
    let (mut running, otlp) = match recovered {
        Ok(r) => r,
        Err(e) => {
            shutdown.cancel();
            return Err(e);
        }
    };
    // Receivers open last: what the log held is back in memory, and the
    // rules and actions run, before the first new request is taken.
    tasks.spawn(serve_grpc(
        grpc_listener,
        otlp.ingester.clone(),
        otlp.max_request,
        ingest::grpc::Access {
            token: otlp.token.clone(),
            tls_pem: otlp.pem,
        },
        shutdown.clone(),
    ));
    let otlp_router = ingest::http::router(otlp.ingester, otlp.max_request, otlp.token);
    tasks.spawn(serve_http(
        "OTLP/HTTP",
        http_listener,
        otlp_router,
        otlp_tls,
        shutdown.clone(),
    ));
    gate.open(otlp.api_router);
    running.ready.store(true, Ordering::Release);
    running.otlp_grpc = otlp_grpc;
    running.otlp_http = otlp_http;
    running.api = api;
    running.tasks = tasks;
    running.shutdown = shutdown;
    tracing::info!(%otlp_grpc, %otlp_http, %api, "homeostat is ready");
    Ok(running)
}

/// What the receivers need once recovery is done.
struct Receivers {
    ingester: Ingester,
    max_request: usize,
    token: Option<crate::auth::Token>,
    pem: Option<(Vec<u8>, Vec<u8>)>,
    api_router: axum::Router,
}

/// Everything between binding the listeners and opening the receivers:
/// the storage, the telemetry the log held, the memory, the rules and the
/// actor; the tasks that run them are spawned into `tasks`.
async fn recover(
    config: &Config,
    tokens: crate::config::Tokens,
    otlp_pem: Option<(Vec<u8>, Vec<u8>)>,
    gate: &Gate,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<Result<(), ServerError>>,
) -> Result<(Running, Receivers), ServerError> {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    gate.phase("opening the storage");
    let node = config.node_name();
    let store = Arc::new(Store::new(config.store_options()));
    let metrics = Arc::new(Metrics::new());
    let storage = Storage::open(&config.data).map_err(MemoryError::from)?;
    let archive = Arc::new(Archive::new(
        storage.clone(),
        &node,
        config.archive.clone(),
    )?);
    store.set_cold(archive.clone());
    let wal_dir = match config.wal_dir() {
        Some(path) => {
            let dir = tokio::task::spawn_blocking(move || Dir::open(&path))
                .await
                .map_err(|e| ServerError::Serve {
                    what: "the write-ahead log",
                    message: e.to_string(),
                })??;
            Some(Arc::new(dir))
        }
        None => None,
    };
    bound_memory(config, &store, &archive, wal_dir.as_deref()).await?;
    let flusher = Arc::new(Flusher::new(
        archive.clone(),
        store.clone(),
        wal_dir.clone(),
        metrics.clone(),
    )?);
    // The previous process's last signs of life: its last logged request,
    // its last journal entry, its last heartbeat.
    let mut down: Option<i64> = None;
    if let Some(dir) = &wal_dir {
        gate.phase("replaying the write-ahead log");
        let (replaying, into) = (dir.clone(), store.clone());
        let replayed = tokio::task::spawn_blocking(move || replaying.replay(&into))
            .await
            .map_err(|e| ServerError::Serve {
                what: "the write-ahead log",
                message: e.to_string(),
            })??;
        WalReplayed {
            dir: dir.path(),
            replayed: &replayed,
        }
        .emit(&metrics);
        down = down.max(replayed.last_written_at);
        if config.ingest.durability != Durability::None {
            store.start_wal(dir.clone(), config.ingest.durability, replayed.next_lsn)?;
        }
    }
    let engine = QueryEngine::new(&store, config.query_options())?;
    let ingester = Ingester::with_concurrency(
        store.clone(),
        metrics.clone(),
        config.ingest.retry_after,
        config.ingest.max_concurrent_requests,
    );
    let max_request =
        usize::try_from(config.ingest.max_request_size.as_u64()).unwrap_or(usize::MAX);
    let export = config
        .export
        .clone()
        .with_env(|name| std::env::var(name).ok())?;
    export.validate()?;

    gate.phase("loading the memory");
    // Each writer's latest snapshot and the entries after it: the start
    // reads what the snapshot interval bounds, not the whole history.
    let memories = recovery::recover_all(&storage, &node)
        .await
        .map_err(MemoryError::from)?;
    if let Some(problem) = memories.own.problems.first() {
        return Err(MemoryError::Broken {
            node: node.clone(),
            location: storage.location().to_owned(),
            problem: problem.clone(),
        }
        .into());
    }
    for problem in memories.others.iter().flat_map(|r| &r.problems) {
        tracing::error!(%problem, "another writer's decision log does not verify");
    }
    // The SQL tables: the recent decisions and the facts now, the whole
    // history once the background load below has read it.
    let index = store.memory_index().clone();
    for r in std::iter::once(&memories.own).chain(&memories.others) {
        for kept in r.recovery.kept() {
            index.put_decision(crate::memory::tables::DecisionRow::new(
                &kept.decision,
                kept.stage.name(),
                &r.recovery.node,
                kept.seq,
                &kept.hash,
            ));
        }
        for fact in r.recovery.facts.values().flatten() {
            index.put_fact(fact, &r.recovery.node);
        }
    }
    let memory = Memory::start(
        storage.clone(),
        &node,
        memories.own.recovery.tail.clone(),
        index.clone(),
    );
    let snapshotter = Snapshotter::start(
        storage.clone(),
        config.memory.clone(),
        memories.own.recovery.clone(),
        &memory.journal,
    );
    memory.record_start().await?;
    let cluster = Arc::new(Cluster::new(
        memory.storage.clone(),
        &node,
        config.api.to_string(),
        config.cluster.clone(),
    ));
    let previous = cluster.own_heartbeat().await.map_err(MemoryError::from)?;
    down = down
        .max(previous.map(|h| h.seen_at))
        .max(memories.own.tail_entries.last().map(|e| e.entry.written_at))
        .max(memories.own.from_snapshot.as_ref().map(|c| c.written_at));
    // Alive before it claims anything: a claim of a node without a
    // heartbeat is taken for a dead node's.
    cluster.beat().await.map_err(MemoryError::from)?;
    gate.phase("loading the rules");
    let planner = crate::rules::RulePlanner::new(&store)?
        .with_action_limits(config.actions.clone())
        .with_memory_limit(
            usize::try_from(config.query.rule_memory_limit.as_u64()).unwrap_or(usize::MAX),
        );
    let rules = Arc::new(RuleEngine::with_planner(
        config.rules.clone(),
        planner,
        metrics.clone(),
    )?);
    let report = rules.reload().await;
    for e in &report.errors {
        tracing::warn!(error = %e, "rule not loaded");
    }
    let watcher = if config.rules.is_dir() {
        Some(rules.watch().map_err(|source| ServerError::Watch {
            dir: config.rules.clone(),
            source,
        })?)
    } else {
        tracing::warn!(dir = %config.rules.display(), "no rules folder: no rules run until it exists and /-/reload is called");
        None
    };
    let ready = Arc::new(AtomicBool::new(false));
    let exporter = export
        .endpoint
        .is_some()
        .then(|| Exporter::start(export, shutdown.clone()));
    let actor = Arc::new(
        Actor::new(
            config.actions.clone(),
            Arc::new(DecisionLog::default()),
            Arc::new(Facts::default()),
            TraceSink {
                store: Some(store.clone()),
                exporter: exporter.clone(),
            },
            metrics.clone(),
            Clock::Wall,
        )
        .map_err(|source| ServerError::Actions { source })?
        .with_journal(memory.journal.clone())
        .with_cluster(cluster.clone()),
    );
    gate.phase("restoring alerts and actions");
    // The other replicas' decisions, as they stood when this one started.
    for r in &memories.others {
        for kept in r.recovery.kept() {
            let mut d = kept.decision.clone();
            if d.node.is_empty() {
                d.node.clone_from(&r.recovery.node);
            }
            actor.log().upsert(&d);
        }
    }
    // Before any transition flows: what the memory holds comes back first.
    let (restored, _reruns) = actor
        .restore(
            &memories.own.recovery,
            memories.facts(),
            &rules,
            now_nanos(),
        )
        .await;
    // Their runs count in this one's cooldowns and hourly rates.
    for r in &memories.others {
        for (rule, policy) in &r.recovery.policies {
            actor.absorb_remote(rule, &policy.snapshot(now_nanos()));
        }
    }
    tracing::info!(
        data = memory.storage.location(),
        %node,
        snapshot = memories.own.from_snapshot.as_ref().map(|c| c.seq),
        entries_read = memories.entries_read(),
        elapsed = ?memories.own.elapsed,
        decisions = restored.decisions,
        instances = restored.instances,
        facts = restored.facts,
        approvals = restored.approvals,
        verifying = restored.verifying,
        interrupted = restored.interrupted,
        rerun = restored.rerun,
        "memory loaded"
    );
    crate::internal_events::MemoryRecovered {
        entries_read: memories.entries_read(),
        elapsed: memories.own.elapsed,
    }
    .emit(&metrics);
    if let Some(down) = down {
        rules.seen_until(down);
    }
    let follower = Follower::new(
        memory.storage.clone(),
        &node,
        memories.others.iter().map(|r| {
            (
                r.recovery.node.clone(),
                r.last_object.clone(),
                r.recovery.tail.clone(),
            )
        }),
    );
    drop(memories);
    // The whole history into the SQL tables, after the start: entries that
    // come meanwhile are applied too, each once.
    let (filling, storage_all, counts, facts) = (
        index.clone(),
        storage.clone(),
        metrics.clone(),
        actor.facts().clone(),
    );
    tasks.spawn(async move {
        fill_index(&storage_all, &filling, &facts, &counts).await;
        Ok(())
    });
    let (snapshotting, token) = (snapshotter.clone(), shutdown.clone());
    tasks.spawn(async move {
        snapshotting.run(token).await;
        Ok(())
    });
    let views = Views {
        index: store.memory_index().clone(),
        log: actor.log().clone(),
        facts: actor.facts().clone(),
        actor: Some(actor.clone()),
    };
    let (interval, token) = (config.cluster.sync_interval, shutdown.clone());
    tasks.spawn(async move {
        follower.run(views, interval, token).await;
        Ok(())
    });
    let (beating, token, counts) = (cluster.clone(), shutdown.clone(), metrics.clone());
    tasks.spawn(async move {
        beating.run_heartbeats(&counts, token).await;
        Ok(())
    });
    let acting = actor.clone().run(rules.clone(), shutdown.clone());
    tasks.spawn(async move {
        acting.await;
        Ok(())
    });

    let tokens_api_set = tokens.api.is_some();
    let api_router = api::router(ApiState {
        engine: engine.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        rules: rules.clone(),
        actor: actor.clone(),
        cluster: cluster.clone(),
        exporter: exporter.clone(),
        ready: ready.clone(),
        token: tokens.api,
        info: Arc::new(api::Info {
            version: env!("CARGO_PKG_VERSION"),
            node: node.clone(),
            data: memory.storage.location().to_owned(),
            started_at: now_nanos(),
            trace_url: config.web.trace_url.clone(),
            auth: tokens_api_set,
            tls: config.web.tls_cert.is_some(),
            decisions_kept: crate::decisions::DECISIONS_KEPT,
        }),
        shutdown: shutdown.clone(),
        allowed_hosts: Arc::new(config.web.allowed_hosts.clone()),
    });
    // Memory's rows go to the archive as they come (flushes), and leave
    // memory once archived (retention, budget).
    let (flushing, token) = (flusher.clone(), shutdown.clone());
    tasks.spawn(async move {
        flushing.run(token).await;
        Ok(())
    });
    let maintaining = archive.clone().maintain(metrics.clone(), shutdown.clone());
    tasks.spawn(async move {
        maintaining.await;
        Ok(())
    });
    // Rules hold their instances until their windows are past the time
    // nothing was taken (the receivers open right after this).
    if let Some(down) = down {
        rules.set_outage(down, now_nanos());
    }
    let executor = Executor::new(std::thread::available_parallelism().map_or(2, usize::from))
        .map_err(|source| ServerError::Executor { source })?;
    let (scheduler, token, handle) = (rules.clone(), shutdown.clone(), executor.handle());
    tasks.spawn(async move {
        scheduler.run(handle, token).await;
        Ok(())
    });
    let (reloader, token) = (rules.clone(), shutdown.clone());
    tasks.spawn(async move {
        reloader.reload_loop(token).await;
        Ok(())
    });
    let running = Running {
        otlp_grpc: any,
        otlp_http: any,
        api: any,
        store,
        engine,
        metrics,
        rules,
        actor,
        exporter,
        memory,
        grace: config.actions.timeout,
        flusher,
        snapshotter,
        ready,
        _executor: executor,
        _watcher: watcher,
        shutdown: shutdown.clone(),
        tasks: JoinSet::new(),
    };
    let receivers = Receivers {
        ingester,
        max_request,
        token: tokens.otlp,
        pem: otlp_pem,
        api_router,
    };
    Ok((running, receivers))
}

/// Reads every writer's whole chain into the SQL tables' index and the
/// facts' older versions, in the background: the start only read each
/// chain's latest snapshot and what followed. Problems are logged and
/// counted (`homeostat audit verify` names them all).
async fn fill_index(
    storage: &Storage,
    index: &crate::memory::tables::MemoryIndex,
    facts: &crate::decisions::memory::Facts,
    metrics: &Metrics,
) {
    let started = std::time::Instant::now();
    match crate::memory::load(storage).await {
        Ok(loaded) => {
            for problem in &loaded.problems {
                tracing::error!(%problem, "the decision log does not verify (`homeostat audit verify`)");
            }
            for e in loaded.chains.values().flatten() {
                index.apply(&e.entry, &e.hash);
            }
            facts.backfill(loaded.facts());
            index.set_complete();
            crate::internal_events::MemoryHistoryChecked {
                entries: loaded.len(),
                problems: loaded.problems.len(),
                elapsed: started.elapsed(),
            }
            .emit(metrics);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the whole decision history: the SQL tables show what the start read and what came since");
        }
    }
}

/// After a restart, rows older than what memory holds whole may be in the
/// archive: per table, times up to the newest row any committed flush
/// wrote. A new log folder knows nothing of earlier flushes: if the archive
/// has files of the table, every time up to `max_future` from now may be
/// there (remembered in the folder's checkpoint from then on).
async fn bound_memory(
    config: &Config,
    store: &Store,
    archive: &Archive,
    dir: Option<&Dir>,
) -> Result<(), ServerError> {
    let checkpoint = dir.and_then(Dir::checkpoint);
    let fresh = dir.is_none_or(Dir::is_fresh);
    let horizon = now_nanos()
        .saturating_add(i64::try_from(config.store.max_future.as_nanos()).unwrap_or(i64::MAX));
    let mut remembered = checkpoint.clone();
    for signal in Signal::ALL {
        let known = checkpoint
            .as_ref()
            .and_then(|c| c.max_times.get(signal.table()).copied());
        let from = match known {
            Some(t) => Some(t),
            None if fresh && archive.has_files(signal).await? => {
                if let Some(c) = remembered.as_mut() {
                    c.max_times.insert(signal.table().to_owned(), horizon);
                }
                Some(horizon)
            }
            None => None,
        };
        if let Some(t) = from {
            store.set_complete_from(signal, t);
        }
    }
    if let (Some(dir), Some(c)) = (dir, remembered)
        && Some(&c) != checkpoint.as_ref()
    {
        dir.write_checkpoint(&c)?;
    }
    Ok(())
}

async fn serve_grpc(
    listener: TcpListener,
    ingester: Ingester,
    max_request: usize,
    access: ingest::grpc::Access,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let stop = shutdown.clone();
    let serving = async move {
        ingest::grpc::serve(listener, ingester, max_request, access, stop)
            .await
            .map_err(|e| ServerError::Serve {
                what: "OTLP/gRPC",
                message: with_sources(&e),
            })
    };
    drained("OTLP/gRPC", serving, shutdown).await
}

/// An error and its causes, `a: b: c` (tonic's own message is only "transport
/// error").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// How long a stop lets requests in flight finish before their
/// connections are closed (a sender trickling a large body would otherwise
/// hold the stop forever).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a server until it ends, or until [`DRAIN`] after `shutdown`.
async fn drained(
    what: &'static str,
    serving: impl std::future::Future<Output = Result<(), ServerError>>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        result = serving => result,
        () = deadline => {
            tracing::warn!(what, drain = ?DRAIN, "requests still in flight after the stop: their connections are closed");
            Ok(())
        }
    }
}

async fn serve_http(
    what: &'static str,
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let failed = |e: std::io::Error| ServerError::Serve {
        what,
        message: e.to_string(),
    };
    let Some(tls) = tls else {
        let serving = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        return drained(what, async { serving.await.map_err(failed) }, shutdown).await;
    };
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopping.graceful_shutdown(Some(DRAIN));
    });
    let listener = listener.into_std().map_err(failed)?;
    axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .map_err(failed)?
    .handle(handle)
    .serve(router.into_make_service())
    .await
    .map_err(failed)
}

impl Running {
    /// Asks every server to stop accepting and finish what is in flight.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that stops the instance when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every server has stopped; the first error wins, and
    /// stops the others.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        self.join().await
    }

    /// [`Running::wait`] without giving up the handle.
    pub async fn join(&mut self) -> Result<(), ServerError> {
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|e| {
                Err(ServerError::Serve {
                    what: "a server task",
                    message: e.to_string(),
                })
            });
            if let Err(e) = outcome {
                self.shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        // Rationale spans still queued go out (within the export timeout)
        // before the process ends.
        if let Some(exporter) = &self.exporter {
            exporter.flush().await;
        }
        // Runs in progress end with their result (within the actions'
        // timeout); then what is recorded is durable when this returns.
        if tokio::time::timeout(self.grace, self.actor.idle())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "actions still running at shutdown: a restart will mark them interrupted");
        }
        // What memory holds and the archive does not goes out last, once
        // nothing comes in any more; what cannot (the storage is down) stays
        // in the write-ahead log for the next start.
        if !self.flusher.final_flush(3).await {
            tracing::warn!(
                unarchived_bytes = self.store.unflushed_bytes(),
                "telemetry not archived at the stop: the write-ahead log keeps it for the next start"
            );
        }
        let store = self.store.clone();
        let closing = tokio::task::spawn_blocking(move || {
            if let Some(wal) = store.wal() {
                wal.close();
            }
        });
        if let Err(e) = closing.await {
            tracing::error!(error = %e, "the write-ahead log did not close cleanly");
        }
        self.memory.journal.flush().await;
        // The next start reads this snapshot and nothing after it.
        if let Err(e) = self.snapshotter.write(now_nanos()).await {
            tracing::warn!(error = %e, "no snapshot of the decision log at the stop: the next start reads the entries since the last one");
        }
        result
    }
}
