//! The `exec` host module: runs the programs a rule allows, never through a
//! shell.
//!
//! What the script sees:
//! - `exec::run(program, args)` and `exec::run(program, args, options)`,
//!   where `options` may hold `stdin` (a string written to the program) and
//!   `env` (a map of strings added to its environment);
//! - the answer `#{code, stdout, stderr}`. A non-zero code is an answer, not
//!   an error: the script decides what it means. A program killed by a
//!   signal has `code: ()` (the record's detail names the signal). In
//!   dry-run the answer is `#{code: (), stdout: "", stderr: "", dry_run: true}`.
//!
//! What is refused (denied, in dry-run too, before anything runs):
//! - a program that is not exactly one of the rule's `exec` paths after
//!   path normalization. No PATH lookup, no relative path, and `..` is not
//!   resolved, so `/usr/bin/../bin/rm` is not `/usr/bin/rm`;
//! - arguments that are not strings, or that hold shell metacharacters
//!   (`;` `|` `&` `$` `` ` `` `<` `>`) or control characters. Without a shell
//!   they would be passed literally and do no harm, but their presence means
//!   the author expected a shell (`"a | grep b"`, `"$HOME"`), and a command
//!   that silently does something other than intended is worse than one
//!   refused with a reason;
//! - environment names that are empty or hold `=` or NUL, and `LD_*` and
//!   `DYLD_*` names, which would load code of the script's choosing into an
//!   allowed program; unknown option keys (a typo must not be ignored).
//!
//! The child starts with an empty environment but `PATH=/usr/bin:/bin`,
//! then `env`. Its stdout and stderr are read together, each capped at the
//! call's `max_output`: past it the child is killed and the call fails. At
//! the call timeout the child is killed too (it is killed when dropped).
//! Programs it started itself are not tracked.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;

use super::{Answer, Call, CallLimits, HostError, perform};

const FUNCTION: &str = "exec::run";
/// The child's search path, for the programs it runs itself.
const PATH: &str = "/usr/bin:/bin";
const SHELL_CHARACTERS: [char; 7] = [';', '|', '&', '$', '`', '<', '>'];

pub fn module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("run", |program: &str, args: Array| {
        run(program, args, Map::new())
    });
    m.set_native_fn("run", run);
    m
}

/// A command checked for everything but the allow-list.
struct Command {
    program: PathBuf,
    args: Vec<String>,
    stdin: Option<String>,
    env: Vec<(String, String)>,
}

fn run(program: &str, args: Array, options: Map) -> Result<Dynamic, Box<EvalAltResult>> {
    let words: Vec<String> = args.iter().map(ToString::to_string).collect();
    let call = Call {
        module: "exec",
        function: "run",
        target: shown(program, &words),
    };
    let prepared = prepare(program, args, options).map_err(|reason| call.denied(reason));
    let checked = prepared
        .as_ref()
        .map(|c| c.program.clone())
        .map_err(Clone::clone);
    let mut dry = Map::new();
    dry.insert("code".into(), Dynamic::UNIT);
    dry.insert("stdout".into(), "".into());
    dry.insert("stderr".into(), "".into());
    dry.insert("dry_run".into(), true.into());
    perform(
        call,
        move |env| check_allowed(&checked?, &env.capabilities.exec),
        dry.into(),
        move |env| async move { execute(prepared?, env.limits).await },
    )
}

fn denied(reason: String) -> HostError {
    HostError::Denied {
        function: FUNCTION.into(),
        reason,
    }
}

fn failed(message: String) -> HostError {
    HostError::Failed {
        function: FUNCTION.into(),
        message,
    }
}

fn prepare(program: &str, args: Array, options: Map) -> Result<Command, String> {
    let program = Path::new(program);
    if !program.is_absolute() {
        return Err(format!(
            "{} must be an absolute path (no PATH lookup)",
            program.display()
        ));
    }
    let mut words = Vec::with_capacity(args.len());
    for (i, arg) in args.into_iter().enumerate() {
        let word = arg
            .into_string()
            .map_err(|t| format!("argument {} must be a string, not {t}", i + 1))?;
        if let Some(c) = word
            .chars()
            .find(|c| SHELL_CHARACTERS.contains(c) || c.is_control())
        {
            return Err(format!(
                "argument {} ({word:?}) holds {c:?}: no shell runs the program, pass each word \
                 as an argument of its own",
                i + 1
            ));
        }
        words.push(word);
    }
    let mut command = Command {
        program: program.components().collect(),
        args: words,
        stdin: None,
        env: Vec::new(),
    };
    for (key, value) in options {
        match key.as_str() {
            "stdin" => {
                let input = value.into_string();
                command.stdin =
                    Some(input.map_err(|t| format!("stdin must be a string, not {t}"))?);
            }
            "env" => {
                let vars = value
                    .try_cast::<Map>()
                    .ok_or("env must be a map of strings")?;
                for (name, value) in vars {
                    check_env_name(&name)?;
                    let value = value
                        .into_string()
                        .map_err(|t| format!("env {name} must be a string, not {t}"))?;
                    if value.contains('\0') {
                        return Err(format!("env {name} holds a NUL character"));
                    }
                    command.env.push((name.into(), value));
                }
            }
            other => return Err(format!("unknown option {other:?} (expected stdin or env)")),
        }
    }
    Ok(command)
}

fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(format!("{name:?} is not an environment variable name"));
    }
    if name.starts_with("LD_") || name.starts_with("DYLD_") {
        return Err(format!(
            "env {name} would change the code an allowed program loads"
        ));
    }
    Ok(())
}

fn check_allowed(program: &Path, granted: &[PathBuf]) -> Result<(), HostError> {
    let normalized = |p: &PathBuf| p.components().collect::<PathBuf>();
    if granted.iter().any(|g| normalized(g) == program) {
        return Ok(());
    }
    Err(denied(format!(
        "{} is not one of the programs the rule allows",
        program.display()
    )))
}

async fn execute(command: Command, limits: CallLimits) -> Result<Answer, HostError> {
    let mut child = tokio::process::Command::new(&command.program)
        .args(&command.args)
        .env_clear()
        .env("PATH", PATH)
        .envs(command.env)
        .stdin(match command.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", command.program.display())))?;
    let stdout = child.stdout.take().expect("piped above");
    let stderr = child.stderr.take().expect("piped above");
    let streams = tokio::try_join!(
        read_capped(stdout, limits.max_output, "stdout"),
        read_capped(stderr, limits.max_output, "stderr"),
        feed(child.stdin.take(), command.stdin),
    );
    let (stdout, stderr, ()) = match streams {
        Ok(streams) => streams,
        Err(message) => {
            // Dropping the child would kill it too: this makes it explicit.
            let _ = child.start_kill();
            return Err(failed(message));
        }
    };
    let status = child
        .wait()
        .await
        .map_err(|e| failed(format!("waiting for the program: {e}")))?;
    let (code, detail) = outcome(status);
    let mut value = Map::new();
    value.insert("code".into(), code);
    value.insert("stdout".into(), text(stdout));
    value.insert("stderr".into(), text(stderr));
    Ok(Answer {
        value: value.into(),
        detail,
    })
}

fn text(bytes: Vec<u8>) -> Dynamic {
    String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        .into()
}

/// Reads at most `max` bytes; one more is an error, so the output is never
/// silently truncated nor buffered past the cap.
async fn read_capped(
    stream: impl AsyncRead + Unpin,
    max: usize,
    name: &str,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    stream
        .take(limit)
        .read_to_end(&mut out)
        .await
        .map_err(|e| format!("reading {name}: {e}"))?;
    if out.len() > max {
        return Err(format!("{name} over {max} bytes"));
    }
    Ok(out)
}

/// Writes the input and closes the pipe, so the program sees its end. A
/// program that exits without reading all of it is its own business.
async fn feed(pipe: Option<ChildStdin>, input: Option<String>) -> Result<(), String> {
    let (Some(mut pipe), Some(input)) = (pipe, input) else {
        return Ok(());
    };
    match pipe.write_all(input.as_bytes()).await {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing stdin: {e}")),
        _ => Ok(()),
    }
}

/// The script's `code` and the record's detail.
fn outcome(status: ExitStatus) -> (Dynamic, serde_json::Value) {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    match (status.code(), signal) {
        (Some(code), _) => (Dynamic::from(i64::from(code)), json!({ "code": code })),
        (None, Some(signal)) => (Dynamic::UNIT, json!({ "signal": signal })),
        (None, None) => (Dynamic::UNIT, serde_json::Value::Null),
    }
}

/// The command line as recorded, shell-quoted for display only: it is never
/// given to a shell. Control characters are shown escaped.
fn shown(program: &str, args: &[String]) -> String {
    let quote = |word: &str| {
        let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
        if !word.is_empty() && word.chars().all(plain) {
            word.to_owned()
        } else if word.chars().any(char::is_control) {
            format!("{word:?}")
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::act::config::ActionLimits;
    use crate::act::host::{CallStatus, Capabilities};
    use crate::act::sandbox::ScriptError;
    use crate::act::sandbox::tests::{run_script, run_with};

    fn allowing(programs: &[&str]) -> Capabilities {
        Capabilities {
            exec: programs.iter().map(PathBuf::from).collect(),
            ..Capabilities::default()
        }
    }

    fn kind(result: &Result<Value, ScriptError>) -> &'static str {
        result.as_ref().map_or_else(|e| e.kind(), |_| "ok")
    }

    fn error(r: &crate::act::sandbox::RunReport) -> &str {
        r.calls[0].error.as_deref().unwrap_or_default()
    }

    #[test]
    fn a_program_answers_with_its_code_and_output() {
        let r = run_script(
            r#"[exec::run("/bin/echo", ["hello", "world"]),
                exec::run("/bin/cat", [], #{stdin: "from the script\n"}),
                exec::run("/bin/false", [])]"#,
            allowing(&["/bin/echo", "/bin/cat", "/bin/false"]),
            false,
        );
        assert_eq!(
            r.result,
            Ok(json!([
                {"code": 0, "stdout": "hello world\n", "stderr": ""},
                {"code": 0, "stdout": "from the script\n", "stderr": ""},
                {"code": 1, "stdout": "", "stderr": ""},
            ]))
        );
        assert_eq!(r.calls[0].target, "/bin/echo hello world");
        assert_eq!(r.calls[0].detail, json!({"code": 0}));
        assert_eq!(
            r.calls[2].status,
            CallStatus::Ok,
            "a non-zero code is an answer"
        );
        assert_eq!(r.calls[2].detail, json!({"code": 1}));
    }

    #[test]
    fn the_environment_is_only_path_and_what_the_script_gives() {
        let r = run_script(
            r#"exec::run("/usr/bin/env", [], #{env: #{GREETING: "hi there"}}).stdout"#,
            allowing(&["/usr/bin/env"]),
            false,
        );
        let stdout = r.result.expect("env runs");
        let mut lines: Vec<&str> = stdout.as_str().unwrap_or_default().lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["GREETING=hi there", "PATH=/usr/bin:/bin"]);
    }

    #[test]
    fn arguments_are_never_shell_interpreted() {
        let r = run_script(
            r#"exec::run("/bin/echo", ["a  b", "*", "~", "'q'", "(x)"]).stdout"#,
            allowing(&["/bin/echo"]),
            false,
        );
        assert_eq!(r.result, Ok(json!("a  b * ~ 'q' (x)\n")));
        assert_eq!(
            r.calls[0].target,
            r#"/bin/echo 'a  b' '*' '~' ''\''q'\''' '(x)'"#
        );
    }

    #[test]
    fn refused_commands_run_nothing_even_in_dry_run() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("created");
        let file = file.display();
        let refused = [
            (
                format!(r#""/usr/bin/touch", ["{file}"]"#),
                "not one of the programs",
            ),
            (format!(r#""touch", ["{file}"]"#), "absolute path"),
            (
                format!(r#""/usr/bin/../bin/touch", ["{file}"]"#),
                "not one of the programs",
            ),
            (
                format!(r#""/bin/sh", ["-c", "touch {file} > /dev/null"]"#),
                "holds '>'",
            ),
            (
                format!(r#""/bin/sh", ["-c", "touch {file}; true"]"#),
                "holds ';'",
            ),
            (format!(r#""/bin/echo", ["$(touch {file})"]"#), "holds '$'"),
            (r#""/bin/echo", ["a\nb"]"#.into(), "holds '\\n'"),
            (r#""/bin/echo", [1]"#.into(), "must be a string"),
            (
                r#""/bin/echo", [], #{env: #{LD_PRELOAD: "/tmp/x.so"}}"#.into(),
                "LD_PRELOAD",
            ),
            (
                r#""/bin/echo", [], #{environment: #{}}"#.into(),
                "unknown option",
            ),
        ];
        let capabilities = || allowing(&["/bin/sh", "/bin/echo", "/bin/touch"]);
        for dry_run in [false, true] {
            for (arguments, reason) in &refused {
                let r = run_script(&format!("exec::run({arguments})"), capabilities(), dry_run);
                assert_eq!(kind(&r.result), "capability_denied", "{arguments}");
                assert_eq!(r.calls[0].status, CallStatus::Denied);
                assert!(error(&r).contains(reason), "{arguments}: {}", error(&r));
            }
        }
        assert!(!dir.path().join("created").exists());
        let touch = format!(r#"exec::run("/bin/touch", ["{file}"])"#);
        let r = run_script(&touch, capabilities(), true);
        assert_eq!(r.calls[0].status, CallStatus::DryRun);
        assert_eq!(
            r.result,
            Ok(json!({"code": null, "stdout": "", "stderr": "", "dry_run": true}))
        );
        assert!(!dir.path().join("created").exists());
        let r = run_script(&touch, capabilities(), false);
        assert_eq!(r.calls[0].status, CallStatus::Ok);
        assert!(
            dir.path().join("created").exists(),
            "the same call, performed"
        );
    }

    #[test]
    fn output_over_the_cap_kills_the_program() {
        let limits = ActionLimits {
            max_output: bytesize::ByteSize::b(1024),
            ..ActionLimits::default()
        };
        let long_name = "x".repeat(1100);
        for (call, stream) in [
            // `yes` never ends: only the kill stops it before the timeout.
            (r#"exec::run("/usr/bin/yes", [])"#.to_owned(), "stdout"),
            (
                r#"exec::run("/usr/bin/head", ["-c", "1025", "/dev/zero"])"#.to_owned(),
                "stdout",
            ),
            (
                format!(r#"exec::run("/bin/cat", ["{long_name}"])"#),
                "stderr",
            ),
        ] {
            let r = run_with(
                &call,
                allowing(&["/usr/bin/yes", "/usr/bin/head", "/bin/cat"]),
                false,
                &limits,
            );
            assert_eq!(kind(&r.result), "host_error", "{call}");
            assert_eq!(r.calls[0].status, CallStatus::Error);
            assert!(
                error(&r).contains(&format!("{stream} over 1024 bytes")),
                "{}",
                error(&r)
            );
        }
        let r = run_with(
            r#"exec::run("/usr/bin/head", ["-c", "1024", "/dev/zero"]).stdout.len()"#,
            allowing(&["/usr/bin/head"]),
            false,
            &limits,
        );
        assert_eq!(r.result, Ok(json!(1024)), "exactly the cap is kept");
    }

    #[test]
    fn timeouts_and_missing_programs_fail_and_can_be_caught() {
        let limits = ActionLimits {
            call_timeout: Duration::from_millis(200),
            ..ActionLimits::default()
        };
        let capabilities = || allowing(&["/bin/sleep", "/nonexistent/program"]);
        let r = run_with(
            r#"exec::run("/bin/sleep", ["30"])"#,
            capabilities(),
            false,
            &limits,
        );
        assert_eq!(kind(&r.result), "host_timeout");
        assert_eq!(r.calls[0].status, CallStatus::Timeout);
        let r = run_script(
            r#"exec::run("/nonexistent/program", [])"#,
            capabilities(),
            false,
        );
        assert_eq!(kind(&r.result), "host_error");
        assert!(error(&r).contains("No such file"), "{}", error(&r));
        let r = run_with(
            r#"let seen = [];
               try { exec::run("/bin/sleep", ["30"]); } catch (e) { seen.push(e); }
               try { exec::run("/bin/rm", ["-rf", "/"]); } catch (e) { seen.push(e); }
               seen"#,
            capabilities(),
            false,
            &limits,
        );
        let seen = r.result.expect("the script caught both failures");
        assert!(
            seen[0]
                .as_str()
                .is_some_and(|e| e.contains("no answer within")),
            "{seen}"
        );
        assert!(
            seen[1].as_str().is_some_and(|e| e.contains("denied")),
            "{seen}"
        );
    }

    #[test]
    fn a_signal_death_has_no_code() {
        use std::os::unix::process::ExitStatusExt;
        // Raw wait statuses: killed by SIGKILL; exited with 3.
        let (code, detail) = outcome(ExitStatus::from_raw(9));
        assert!(code.is_unit());
        assert_eq!(detail, json!({"signal": 9}));
        let (code, detail) = outcome(ExitStatus::from_raw(3 << 8));
        assert_eq!(code.as_int(), Ok(3));
        assert_eq!(detail, json!({"code": 3}));
    }
}
