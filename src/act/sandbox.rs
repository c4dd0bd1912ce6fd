//! The Rhai sandbox: one engine configuration for every script, compiled
//! once per rule (at load) and run many times.
//!
//! What a script cannot do: build code from strings (`eval` is not part of
//! the language here), load files (`import` is off and no module resolver is
//! set), touch files, processes or the network except through the host
//! modules its rule was granted ([`super::host`]). What bounds it: the
//! operation count and a wall-clock deadline (both checked by Rhai's progress
//! callback, between operations), call depth, expression depth, and the
//! sizes of strings, arrays and maps. A host call is bounded by its own
//! timeout, since the deadline cannot interrupt one.
//!
//! The reasoning API (`consider`, `decide`, `expect`, `skip`) and `print`
//! record into the run's [`Reasoning`].

use std::cell::RefCell;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, Scope};
use serde::Serialize;

use super::config::ActionLimits;
use super::host::{self, HostCall, HostError, RunContext};

/// Deepest expression nesting (statements, and inside functions).
pub const MAX_EXPR_DEPTH: usize = 64;
pub const MAX_FUNCTION_EXPR_DEPTH: usize = 32;
/// Options a script may consider, and lines it may print, per run.
pub const MAX_RECORDED: usize = 100;
/// Longest reason or printed line kept, in bytes.
pub const MAX_TEXT: usize = 4096;
/// How often (in operations) the deadline is checked.
const DEADLINE_CHECK_EVERY: u64 = 256;

/// The options considered, the choice, the expectation: the script's own
/// account of its decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Reasoning {
    pub considered: Vec<Considered>,
    pub decision: Option<Considered>,
    pub expectation: Option<Expectation>,
    /// Why the script chose to do nothing, when it called `skip`.
    pub skipped: Option<String>,
    /// What the script printed.
    pub output: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Considered {
    pub option: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Expectation {
    pub description: String,
    #[serde(with = "crate::serde_duration")]
    pub within: Duration,
}

/// Why a run failed. `kind()` is what decisions, metrics and traces record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    #[error("stopped at its deadline of {0:?}")]
    Deadline(Duration),
    #[error("stopped after {0} operations, its limit")]
    Operations(u64),
    #[error("call depth over the limit (deep recursion)")]
    CallDepth,
    #[error("{0} over its size limit")]
    TooLarge(String),
    #[error(transparent)]
    Host(HostError),
    #[error("script error at line {line}: {message}")]
    Runtime { line: usize, message: String },
    #[error("the script could not be started: {0}")]
    Internal(String),
}

impl ScriptError {
    /// A short stable name: `deadline`, `operations`, `call_depth`,
    /// `too_large`, `capability_denied`, `host_timeout`, `host_error`,
    /// `script_error`, `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            ScriptError::Deadline(_) => "deadline",
            ScriptError::Operations(_) => "operations",
            ScriptError::CallDepth => "call_depth",
            ScriptError::TooLarge(_) => "too_large",
            ScriptError::Host(HostError::Denied { .. }) => "capability_denied",
            ScriptError::Host(HostError::Timeout { .. }) => "host_timeout",
            ScriptError::Host(HostError::Failed { .. }) => "host_error",
            ScriptError::Runtime { .. } => "script_error",
            ScriptError::Internal(_) => "internal",
        }
    }

    /// Whether running again may help: only failures of the outside world.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ScriptError::Host(HostError::Timeout { .. } | HostError::Failed { .. })
        )
    }
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub reasoning: Reasoning,
    pub calls: Vec<HostCall>,
    /// The script's value (its last expression) as JSON, or its failure.
    pub result: Result<serde_json::Value, ScriptError>,
    pub operations: u64,
    pub duration: Duration,
}

/// One run's bounds and grants.
pub struct RunSpec {
    pub timeout: Duration,
    pub max_operations: u64,
    pub context: RunContext,
}

/// Per-run state the engine's callbacks reach through a thread-local.
struct Progress {
    deadline: Instant,
    timeout: Duration,
    max_operations: u64,
    operations: u64,
    reasoning: Reasoning,
}

thread_local! {
    static PROGRESS: RefCell<Option<Progress>> = const { RefCell::new(None) };
}

const STOP_DEADLINE: &str = "deadline";
const STOP_OPERATIONS: &str = "operations";
const STOP_SKIP: &str = "skip";

/// The engine every script is compiled and run with.
pub struct Sandbox {
    engine: Engine,
}

impl Sandbox {
    pub fn new(limits: &ActionLimits) -> Self {
        let mut engine = base_engine();
        engine.set_max_call_levels(limits.max_call_depth);
        engine.set_max_string_size(limits.max_string_size);
        engine.set_max_array_size(limits.max_array_size);
        engine.set_max_map_size(limits.max_map_size);
        engine.set_max_variables(10_000);
        engine.set_max_functions(1_000);
        engine.on_progress(|operations| {
            PROGRESS.with(|p| {
                let mut p = p.borrow_mut();
                let p = p.as_mut()?;
                p.operations = operations;
                if operations > p.max_operations {
                    return Some(STOP_OPERATIONS.into());
                }
                if operations % DEADLINE_CHECK_EVERY == 0 && Instant::now() >= p.deadline {
                    return Some(STOP_DEADLINE.into());
                }
                None
            })
        });
        engine.on_print(|text| {
            record(|r| {
                if r.output.len() < MAX_RECORDED {
                    r.output.push(clip(text));
                }
            })
        });
        engine.on_debug(|text, _, position| {
            record(|r| {
                if r.output.len() < MAX_RECORDED {
                    r.output.push(clip(&format!("{position}: {text}")));
                }
            })
        });
        register_reasoning(&mut engine);
        host::register(&mut engine);
        Self { engine }
    }

    /// Runs `ast` with `alert` in scope, on this thread, until it ends or a
    /// limit stops it. Blocks: call it off the async runtime.
    pub fn run(&self, ast: &AST, alert: Dynamic, spec: RunSpec) -> RunReport {
        let started = Instant::now();
        PROGRESS.with(|p| {
            *p.borrow_mut() = Some(Progress {
                deadline: started + spec.timeout,
                timeout: spec.timeout,
                max_operations: spec.max_operations,
                operations: 0,
                reasoning: Reasoning::default(),
            })
        });
        let mut scope = Scope::new();
        scope.push_constant("alert", alert);
        let (result, context) = spec
            .context
            .enter(|| self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast));
        let progress = PROGRESS
            .with(|p| p.borrow_mut().take())
            .expect("set above and only taken here");
        let result = match result {
            Ok(value) => Ok(host::to_json(&value).unwrap_or(serde_json::Value::Null)),
            Err(e) => classify(*e, &progress, context.last_failure.clone()),
        };
        RunReport {
            reasoning: progress.reasoning,
            calls: context.calls,
            result,
            operations: progress.operations,
            duration: started.elapsed(),
        }
    }
}

/// An engine with the language restricted; no limits or host modules yet.
fn base_engine() -> Engine {
    let mut engine = Engine::new();
    // No code from strings, no code from files.
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FUNCTION_EXPR_DEPTH);
    engine
}

static COMPILER: LazyLock<Engine> = LazyLock::new(base_engine);

/// Compiles a script; a syntax error gives its 1-based line and message.
pub fn compile(source: &str) -> Result<AST, (usize, String)> {
    COMPILER.compile(source).map_err(|e| {
        let line = e.position().line().unwrap_or(1);
        (line, format!("script error: {}", e.err_type()))
    })
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn record(f: impl FnOnce(&mut Reasoning)) {
    PROGRESS.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            f(&mut p.reasoning);
        }
    });
}

fn register_reasoning(engine: &mut Engine) {
    engine.register_fn("consider", |option: &str, reason: &str| {
        record(|r| {
            if r.considered.len() < MAX_RECORDED {
                r.considered.push(Considered {
                    option: clip(option),
                    reason: clip(reason),
                });
            }
        })
    });
    engine.register_fn("decide", |option: &str, reason: &str| {
        record(|r| {
            r.decision = Some(Considered {
                option: clip(option),
                reason: clip(reason),
            })
        })
    });
    engine.register_fn(
        "expect",
        |description: &str, within: &str| -> Result<(), Box<EvalAltResult>> {
            let within = humantime::parse_duration(within)
                .map_err(|e| format!("expect: invalid duration {within:?}: {e}"))?;
            record(|r| {
                r.expectation = Some(Expectation {
                    description: clip(description),
                    within,
                })
            });
            Ok(())
        },
    );
    engine.register_fn(
        "expect",
        |description: &str, seconds: i64| -> Result<(), Box<EvalAltResult>> {
            let within = u64::try_from(seconds)
                .map(Duration::from_secs)
                .map_err(|_| format!("expect: negative duration {seconds}"))?;
            record(|r| {
                r.expectation = Some(Expectation {
                    description: clip(description),
                    within,
                })
            });
            Ok(())
        },
    );
    // `skip` ends the script: the decision is to do nothing.
    engine.register_fn("skip", |reason: &str| -> Result<(), Box<EvalAltResult>> {
        record(|r| r.skipped = Some(clip(reason)));
        Err(Box::new(EvalAltResult::ErrorTerminated(
            STOP_SKIP.into(),
            rhai::Position::NONE,
        )))
    });
}

/// Turns Rhai's error into the run's outcome: a skip is a normal end; a
/// host failure the script did not catch keeps its type.
fn classify(
    error: EvalAltResult,
    progress: &Progress,
    host_failure: Option<HostError>,
) -> Result<serde_json::Value, ScriptError> {
    match error {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => {
            classify(*inner, progress, host_failure)
        }
        EvalAltResult::ErrorTerminated(token, _) => match token.into_string().as_deref() {
            Ok(STOP_SKIP) => Ok(serde_json::Value::Null),
            Ok(STOP_OPERATIONS) => Err(ScriptError::Operations(progress.max_operations)),
            _ => Err(ScriptError::Deadline(progress.timeout)),
        },
        EvalAltResult::ErrorTooManyOperations(_) => {
            Err(ScriptError::Operations(progress.max_operations))
        }
        EvalAltResult::ErrorStackOverflow(_) => Err(ScriptError::CallDepth),
        EvalAltResult::ErrorDataTooLarge(what, _) => Err(ScriptError::TooLarge(what)),
        EvalAltResult::ErrorTooManyVariables(_) => {
            Err(ScriptError::TooLarge("number of variables".into()))
        }
        EvalAltResult::ErrorRuntime(_, _) if host_failure.is_some() => Err(ScriptError::Host(
            host_failure.expect("checked by the guard"),
        )),
        other => Err(ScriptError::Runtime {
            line: other.position().line().unwrap_or(0),
            message: other.to_string(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::act::host::{CallLimits, Capabilities};
    use crate::decisions::memory::Facts;

    /// Runs `source` in a fresh sandbox with default limits, granting
    /// `capabilities`, on a runtime of its own (as actions run: off the
    /// async runtime, host I/O on it).
    pub fn run_script(source: &str, capabilities: Capabilities, dry_run: bool) -> RunReport {
        run_with(source, capabilities, dry_run, &ActionLimits::default())
    }

    pub fn run_with(
        source: &str,
        capabilities: Capabilities,
        dry_run: bool,
        limits: &ActionLimits,
    ) -> RunReport {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a test runtime");
        let ast = compile(source).expect("test scripts compile");
        let sandbox = Sandbox::new(limits);
        let context = RunContext {
            capabilities: Arc::new(capabilities),
            limits: CallLimits {
                timeout: limits.call_timeout,
                max_output: usize::try_from(limits.max_output.as_u64()).unwrap_or(usize::MAX),
            },
            dry_run,
            runtime: runtime.handle().clone(),
            facts: Arc::new(Facts::default()),
            rule: "test".into(),
            clock_offset: 0,
            attempt: 1,
            calls: Vec::new(),
            last_failure: None,
        };
        let spec = RunSpec {
            timeout: limits.timeout,
            max_operations: limits.operations,
            context,
        };
        // Scripts run on a thread of their own with a roomy stack.
        let report = std::thread::Builder::new()
            .stack_size(super::super::SCRIPT_STACK)
            .spawn(move || sandbox.run(&ast, Dynamic::UNIT, spec))
            .expect("a script thread")
            .join()
            .expect("the script thread does not panic");
        drop(runtime);
        report
    }

    fn kind(report: &RunReport) -> &'static str {
        report.result.as_ref().map_or_else(|e| e.kind(), |_| "ok")
    }

    #[test]
    fn the_reasoning_api_records_the_decision() {
        let r = run_script(
            r#"consider("a", "because"); consider("b", "why not");
               decide("a", "best"); expect("resolved", "2m"); print("done"); 42"#,
            Capabilities::default(),
            false,
        );
        assert_eq!(r.result, Ok(42.into()));
        assert_eq!(r.reasoning.considered.len(), 2);
        assert_eq!(r.reasoning.decision.as_ref().unwrap().option, "a");
        assert_eq!(
            r.reasoning.expectation.as_ref().unwrap().within,
            Duration::from_secs(120)
        );
        assert_eq!(r.reasoning.output, ["done"]);
    }

    #[test]
    fn host_calls_per_run_are_bounded() {
        let r = run_script(
            "loop { memory::put(\"k\", 1); }",
            Capabilities::default(),
            true,
        );
        assert_eq!(kind(&r), "capability_denied", "{:?}", r.result);
        assert_eq!(r.calls.len(), crate::act::host::MAX_CALLS_PER_RUN + 1);
        let last = r.calls.last().unwrap();
        assert!(
            last.error
                .as_ref()
                .unwrap()
                .contains("more than 100 host calls")
        );
    }

    #[test]
    fn skip_ends_the_script_without_error() {
        let r = run_script(
            r#"skip("nothing to do"); http::get("http://x/")"#,
            Capabilities::default(),
            false,
        );
        assert_eq!(r.result, Ok(serde_json::Value::Null));
        assert_eq!(r.reasoning.skipped.as_deref(), Some("nothing to do"));
        assert!(r.calls.is_empty());
    }

    #[test]
    fn hostile_scripts_are_stopped_with_a_typed_error() {
        let limits = ActionLimits {
            timeout: Duration::from_millis(300),
            operations: u64::MAX / 2,
            ..ActionLimits::default()
        };
        let none = Capabilities::default;
        let r = run_with("loop {}", none(), false, &limits);
        assert_eq!(kind(&r), "deadline");
        let r = run_script("let x = 0; loop { x += 1; }", none(), false);
        assert_eq!(kind(&r), "operations", "{:?}", r.result);
        let r = run_script("fn f(n) { f(n + 1) } f(0)", none(), false);
        assert_eq!(kind(&r), "call_depth", "{:?}", r.result);
        let r = run_script("let s = \"x\"; loop { s += s; }", none(), false);
        assert_eq!(kind(&r), "too_large", "{:?}", r.result);
        // Sizes are stopped before the operation limit is reached.
        let roomy = ActionLimits {
            operations: 100_000_000,
            ..ActionLimits::default()
        };
        let r = run_with("let a = []; loop { a.push(1); }", none(), false, &roomy);
        assert_eq!(kind(&r), "too_large", "{:?}", r.result);
        let r = run_with(
            "let m = #{}; m.a = [1]; let i = 0; loop { m.a.push(i); i += 1; }",
            none(),
            false,
            &roomy,
        );
        assert_eq!(kind(&r), "too_large", "{:?}", r.result);
        // Rhai checks a map's size when it is built or merged, not when one
        // key is set by index: such growth is bounded by the operations.
        let r = run_script(
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            none(),
            false,
        );
        assert_eq!(kind(&r), "operations", "{:?}", r.result);

        let r = run_script("let a = [1]; a.pad(100_000_000, 0);", none(), false);
        assert_eq!(kind(&r), "too_large", "{:?}", r.result);
        let r = run_script("undefined_function()", none(), false);
        assert_eq!(kind(&r), "script_error");
        assert!(compile("eval(\"1\")").is_err());
        assert!(compile("import \"fs\" as fs;").is_err());
    }

    #[test]
    fn syntax_errors_and_forbidden_symbols_name_their_line() {
        assert!(compile("let x = 1;\nx + 1").is_ok());
        let (line, message) = compile("let x = 1;\nlet = ;").unwrap_err();
        assert_eq!(line, 2, "{message}");
        let (line, _) = compile("let a = 1;\n\neval(\"a\")").unwrap_err();
        assert_eq!(line, 3);
        let (line, _) = compile("import \"fs\" as fs;").unwrap_err();
        assert_eq!(line, 1);
    }

    #[test]
    fn memory_keeps_versions_and_dry_run_does_not_write() {
        let r = run_script(
            r#"memory::put("k", 1); memory::put("k", #{a: 2}); memory::history("k").len()"#,
            Capabilities::default(),
            false,
        );
        assert_eq!(r.result, Ok(2.into()));
        assert_eq!(r.calls.len(), 2);
        let r = run_script(
            r#"memory::put("k", 1); memory::get("k")"#,
            Capabilities::default(),
            true,
        );
        assert_eq!(r.result, Ok(serde_json::Value::Null));
        assert_eq!(r.calls[0].status, crate::act::host::CallStatus::DryRun);
    }
}
