//! Host modules: the only ways a script reaches outside its sandbox.
//!
//! Each module is one file exposing a `module() -> rhai::Module` of native
//! functions, registered under its name by [`register`] (one line per
//! module). Every host function goes through [`perform`], which checks the
//! rule's capability, honours dry-run, bounds the call with its own timeout
//! (the script's deadline cannot interrupt a host call) and records a
//! [`HostCall`] for the decision, whatever happens.
//!
//! Scripts run synchronously on a thread of their own; the run's context
//! (capabilities, dry-run, limits, the calls made so far) is kept in a
//! thread-local set by [`RunContext::enter`] for the duration of the run.

pub mod exec;
pub mod http;
pub mod k8s;
pub mod memory;

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, EvalAltResult, Position};
use serde::Serialize;

use crate::decisions::memory::Facts;
use crate::ingest::now_nanos;

/// Host calls one run may make: each is recorded and becomes a span, so a
/// script calling in a loop is stopped rather than flooding its decision.
pub const MAX_CALLS_PER_RUN: usize = 100;

/// Registers every host module on the engine, each under its own name
/// (`http::post(...)`). Adding a module is one line here.
pub fn register(engine: &mut rhai::Engine) {
    engine.register_static_module("http", http::module().into());
    engine.register_static_module("exec", exec::module().into());
    engine.register_static_module("memory", memory::module().into());
    engine.register_static_module("k8s", k8s::module().into());
}

/// Installs ring as the process's TLS crypto provider (rustls wants one per
/// process; ring is the one built). Idempotent.
pub fn install_crypto_provider() {
    // Already installed (by an earlier call) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a rule grants its script, from its `[action]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// URL prefixes the `http` module may call (and be redirected to).
    pub http: Vec<String>,
    /// Absolute paths of the programs the `exec` module may run.
    pub exec: Vec<PathBuf>,
    /// Kubernetes namespaces the `k8s` module may act in.
    pub k8s: Vec<String>,
}

/// Bounds on each host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// How long one call may take before it is abandoned.
    pub timeout: Duration,
    /// Largest response body (http) or output stream (exec) kept, in bytes;
    /// a larger one is an error, not silently truncated.
    pub max_output: usize,
}

/// How a host call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Performed; the target answered (whatever the answer).
    Ok,
    /// Performed and failed: connection refused, program missing, ...
    Error,
    /// Cut at the call's timeout.
    Timeout,
    /// Refused before anything was done: not allowed by the capabilities, or
    /// invalid arguments (shell metacharacters, bad URL...).
    Denied,
    /// Allowed, recorded and not performed: the action runs in dry-run.
    DryRun,
}

impl CallStatus {
    pub fn name(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Error => "error",
            CallStatus::Timeout => "timeout",
            CallStatus::Denied => "denied",
            CallStatus::DryRun => "dry_run",
        }
    }
}

/// One call a script made to a host module.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostCall {
    /// `http`, `exec`, `k8s`, `memory`.
    pub module: &'static str,
    /// The function, qualified: `http::post`.
    pub function: String,
    /// What it acted on: a URL, a program and its arguments, a namespaced
    /// object, a key.
    pub target: String,
    /// Start (UTC nanoseconds).
    pub started_at: i64,
    pub duration_ns: u64,
    pub status: CallStatus,
    /// Why it failed or was denied.
    pub error: Option<String>,
    /// What came back, briefly: an HTTP status, an exit code...
    pub detail: serde_json::Value,
    /// The attempt of the action it belongs to (1 for the first run).
    pub attempt: u32,
}

/// [`HostCall`] as stored in the memory.
#[derive(serde::Deserialize)]
struct HostCallRead {
    module: String,
    function: String,
    target: String,
    started_at: i64,
    duration_ns: u64,
    status: CallStatus,
    error: Option<String>,
    detail: serde_json::Value,
    attempt: u32,
}

impl From<HostCallRead> for HostCall {
    fn from(c: HostCallRead) -> Self {
        Self {
            module: crate::decisions::static_name(c.module),
            function: c.function,
            target: c.target,
            started_at: c.started_at,
            duration_ns: c.duration_ns,
            status: c.status,
            error: c.error,
            detail: c.detail,
            attempt: c.attempt,
        }
    }
}

impl<'de> serde::Deserialize<'de> for HostCall {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <HostCallRead as serde::Deserialize>::deserialize(d).map(Into::into)
    }
}

/// A host call's failure, as the script sees it (a thrown error it may
/// catch) and as the decision records it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Not allowed by the rule's capabilities, or arguments refused.
    #[error("{function}: denied: {reason}")]
    Denied { function: String, reason: String },
    /// Cut at the call's timeout.
    #[error("{function}: no answer within {after:?}")]
    Timeout { function: String, after: Duration },
    /// Performed and failed.
    #[error("{function}: {message}")]
    Failed { function: String, message: String },
}

impl HostError {
    pub fn status(&self) -> CallStatus {
        match self {
            HostError::Denied { .. } => CallStatus::Denied,
            HostError::Timeout { .. } => CallStatus::Timeout,
            HostError::Failed { .. } => CallStatus::Error,
        }
    }
}

/// The context of one script run, seen by host functions through a
/// thread-local while the run lasts.
pub struct RunContext {
    pub capabilities: Arc<Capabilities>,
    pub limits: CallLimits,
    pub dry_run: bool,
    /// The runtime host calls do their I/O on.
    pub runtime: tokio::runtime::Handle,
    pub facts: Arc<Facts>,
    /// The rule the script belongs to, for the memory module.
    pub rule: String,
    /// The decision's clock minus the wall clock: 0 live, the virtual
    /// time's lead under `homeostat test` and `replay`. Facts are stamped
    /// on the decision's clock.
    pub clock_offset: i64,
    pub attempt: u32,
    /// What the script has done so far.
    pub calls: Vec<HostCall>,
    /// The failure of the last host call, if it failed: the run's typed
    /// error when the script does not catch it.
    pub last_failure: Option<HostError>,
}

thread_local! {
    static CURRENT: RefCell<Option<RunContext>> = const { RefCell::new(None) };
}

impl RunContext {
    /// Makes this the context of the script run on this thread until `f`
    /// returns; gives back the context with the calls made.
    pub fn enter<T>(self, f: impl FnOnce() -> T) -> (T, RunContext) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self));
        let out = f();
        let context = CURRENT
            .with(|c| c.borrow_mut().take())
            .expect("set above and only taken here");
        (out, context)
    }
}

/// Runs `f` with the current run's context. Host functions called outside
/// a run (which cannot happen through the engine) get an error.
pub fn with_context<T>(f: impl FnOnce(&mut RunContext) -> T) -> Result<T, Box<EvalAltResult>> {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(context) => Ok(f(context)),
        None => Err("host functions can only be called from an action".into()),
    })
}

/// The environment a host call runs its I/O with.
#[derive(Clone)]
pub struct CallEnv {
    pub capabilities: Arc<Capabilities>,
    pub limits: CallLimits,
    pub facts: Arc<Facts>,
    pub rule: String,
    pub clock_offset: i64,
}

/// A host call about to be made.
pub struct Call<'a> {
    pub module: &'static str,
    /// Unqualified function name: `post`.
    pub function: &'a str,
    /// The target as recorded: URL, argv, object.
    pub target: String,
}

impl Call<'_> {
    fn qualified(&self) -> String {
        format!("{}::{}", self.module, self.function)
    }

    pub fn denied(&self, reason: impl Into<String>) -> HostError {
        HostError::Denied {
            function: self.qualified(),
            reason: reason.into(),
        }
    }
}

/// What a performed host call gives back: the value for the script and a
/// short detail for the record.
pub struct Answer {
    pub value: Dynamic,
    pub detail: serde_json::Value,
}

/// Performs one host call: `allow` checks the capability and arguments
/// (also in dry-run, so that a dry run finds the permission problems a real
/// one would hit); in dry-run the call is recorded and `dry` is returned;
/// otherwise `io` runs on the runtime under the call timeout. Every outcome
/// is recorded. A failure becomes a Rhai error the script may catch.
pub fn perform<F, Fut>(
    call: Call<'_>,
    allow: impl FnOnce(&CallEnv) -> Result<(), HostError>,
    dry: Dynamic,
    io: F,
) -> Result<Dynamic, Box<EvalAltResult>>
where
    F: FnOnce(CallEnv) -> Fut,
    Fut: Future<Output = Result<Answer, HostError>>,
{
    let (env, dry_run, runtime, attempt, made) = with_context(|c| {
        (
            CallEnv {
                capabilities: c.capabilities.clone(),
                limits: c.limits,
                facts: c.facts.clone(),
                rule: c.rule.clone(),
                clock_offset: c.clock_offset,
            },
            c.dry_run,
            c.runtime.clone(),
            c.attempt,
            c.calls.len(),
        )
    })?;
    let started_at = now_nanos();
    let started = Instant::now();
    let timeout = env.limits.timeout;
    let within_budget = || {
        if made >= MAX_CALLS_PER_RUN {
            Err(call.denied(format!(
                "more than {MAX_CALLS_PER_RUN} host calls in one run"
            )))
        } else {
            Ok(())
        }
    };
    let outcome = match within_budget().and_then(|()| allow(&env)) {
        Err(e) => Err(e),
        Ok(()) if dry_run => Ok(None),
        Ok(()) => {
            let function = call.qualified();
            runtime
                .block_on(async move { tokio::time::timeout(timeout, io(env)).await })
                .unwrap_or(Err(HostError::Timeout {
                    function,
                    after: timeout,
                }))
                .map(Some)
        }
    };
    let mut record = HostCall {
        module: call.module,
        function: call.qualified(),
        target: call.target,
        started_at,
        duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        status: CallStatus::Ok,
        error: None,
        detail: serde_json::Value::Null,
        attempt,
    };
    let result = match outcome {
        Ok(Some(answer)) => {
            record.detail = answer.detail;
            Ok(answer.value)
        }
        Ok(None) => {
            record.status = CallStatus::DryRun;
            Ok(dry)
        }
        Err(e) => {
            record.status = e.status();
            record.error = Some(e.to_string());
            Err(e)
        }
    };
    with_context(|c| {
        c.calls.push(record);
        match result {
            Ok(value) => {
                c.last_failure = None;
                Ok(value)
            }
            Err(e) => {
                let message = e.to_string();
                c.last_failure = Some(e);
                Err(Box::new(EvalAltResult::ErrorRuntime(
                    message.into(),
                    Position::NONE,
                )))
            }
        }
    })?
}

/// Converts a script value to JSON (for request bodies and records).
pub fn to_json(value: &Dynamic) -> Result<serde_json::Value, Box<EvalAltResult>> {
    rhai::serde::from_dynamic(value)
}

/// Converts JSON to a script value (for responses).
pub fn from_json(value: &serde_json::Value) -> Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}
