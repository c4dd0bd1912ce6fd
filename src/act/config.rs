//! The `[action]` section of a rule file, and the global `[actions]` limits
//! that bound it, validated into a [`CompiledAction`]: scripts compiled once,
//! capabilities checked, every setting within the global maxima. Problems
//! name their file and line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::host::Capabilities;
use crate::rules::file::{RuleError, key_line, value_start_line};

/// When an action runs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// An instance starts firing (once per episode).
    Firing,
    /// A firing instance resolves.
    Resolved,
    /// Every `repeat_every` while an instance keeps firing.
    Repeat,
    /// The action did not fix the problem in time: runs `on_ineffective`.
    Ineffective,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Firing => "firing",
            Trigger::Resolved => "resolved",
            Trigger::Repeat => "repeat",
            Trigger::Ineffective => "ineffective",
        }
    }
}

/// Whether a person must approve an action before it runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    #[default]
    None,
    Required,
}

fn default_on() -> Vec<Trigger> {
    vec![Trigger::Firing]
}

/// The `[action]` section of a rule, as written. Durations are humantime
/// ("30s", "5m"); unset settings take the `[actions]` defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionFile {
    /// A Rhai script file, relative to the rule file.
    pub script: Option<PathBuf>,
    /// A Rhai script written in the rule file itself.
    pub inline: Option<String>,
    /// The transitions that run the action: "firing", "resolved", "repeat".
    #[serde(default = "default_on")]
    pub on: Vec<Trigger>,
    /// With "repeat": how often the action runs again while firing.
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub repeat_every: Option<Duration>,
    /// Wall-clock deadline of one run of the script.
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub timeout: Option<Duration>,
    /// Operations (Rhai's unit of work) one run may take.
    pub max_operations: Option<u64>,
    /// Timeout of each host call (HTTP request, program, Kubernetes call).
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub call_timeout: Option<Duration>,
    /// Runs again after a failure a retry can help (host call errors and
    /// timeouts), this many times, waiting `retry_backoff`, doubled each
    /// time. Sandbox violations are never retried.
    #[serde(default)]
    pub retries: u32,
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub retry_backoff: Option<Duration>,
    /// After an action on an instance, further actions on the same
    /// instance (even in a new episode) are suppressed this long.
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub cooldown: Option<Duration>,
    /// Runs of this rule's action at the same time; more are suppressed.
    pub max_concurrent: Option<usize>,
    /// Runs of this rule's action per rolling hour; more are suppressed.
    pub max_per_hour: Option<u32>,
    /// Record host calls without performing them.
    #[serde(default)]
    pub dry_run: bool,
    /// Running it twice does no harm: a run interrupted by a crash or kill
    /// is run again after the restart instead of being marked
    /// `interrupted`.
    #[serde(default)]
    pub idempotent: bool,
    /// "required": each run waits for `POST /api/v1/approvals/{id}`.
    #[serde(default)]
    pub approval: Approval,
    /// How long an approval request stays open before it expires.
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub approval_expiry: Option<Duration>,
    /// How long after the action the instance should resolve for the action
    /// to count as effective, unless the script says `expect(..., within)`.
    #[serde(default, with = "crate::serde_duration::option")]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub verify_within: Option<Duration>,
    /// A script run when the action turns out ineffective (escalation).
    pub on_ineffective: Option<PathBuf>,
    /// Evidence rows of the instance passed to the script and recorded.
    pub evidence_rows: Option<usize>,
    /// URL prefixes the `http` module may call ("https://host/path/").
    #[serde(default)]
    pub http: Vec<String>,
    /// Absolute paths of programs the `exec` module may run.
    #[serde(default)]
    pub exec: Vec<PathBuf>,
    /// Namespaces the `k8s` module may act in.
    #[serde(default)]
    pub k8s: Vec<String>,
}

/// Global defaults and maxima of actions: the `[actions]` section of the
/// configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionLimits {
    /// Default script deadline.
    #[serde(with = "crate::serde_duration")]
    pub timeout: Duration,
    /// Largest `timeout` a rule may set.
    #[serde(with = "crate::serde_duration")]
    pub max_timeout: Duration,
    /// Default operations per run.
    pub operations: u64,
    /// Most operations a rule may allow.
    pub max_operations: u64,
    /// Default timeout of a host call.
    #[serde(with = "crate::serde_duration")]
    pub call_timeout: Duration,
    /// Longest `call_timeout` a rule may set.
    #[serde(with = "crate::serde_duration")]
    pub max_call_timeout: Duration,
    /// Largest HTTP response body or program output kept per call.
    pub max_output: bytesize::ByteSize,
    /// Deepest function-call nesting of a script.
    pub max_call_depth: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_size: usize,
    /// Largest array a script may build.
    pub max_array_size: usize,
    /// Largest map a script may build.
    pub max_map_size: usize,
    /// Actions running at once, all rules together; more are suppressed.
    pub max_concurrent: usize,
    /// Default `max_concurrent` of a rule.
    pub concurrent_per_rule: usize,
    /// Most retries a rule may ask for.
    pub max_retries: u32,
    /// Default wait before the first retry.
    #[serde(with = "crate::serde_duration")]
    pub retry_backoff: Duration,
    /// Default approval expiry.
    #[serde(with = "crate::serde_duration")]
    pub approval_expiry: Duration,
    /// Default outcome verification delay.
    #[serde(with = "crate::serde_duration")]
    pub verify_within: Duration,
    /// Default evidence rows per decision.
    pub evidence_rows: usize,
    /// Most evidence rows a rule may ask for.
    pub max_evidence_rows: usize,
    /// Decisions awaiting approval, all rules together; more are suppressed.
    pub max_pending_approvals: usize,
}

impl Default for ActionLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            operations: 1_000_000,
            max_operations: 100_000_000,
            call_timeout: Duration::from_secs(10),
            max_call_timeout: Duration::from_secs(120),
            max_output: bytesize::ByteSize::mib(1),
            max_call_depth: 32,
            max_string_size: 1 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_concurrent: 16,
            concurrent_per_rule: 1,
            max_retries: 10,
            retry_backoff: Duration::from_secs(1),
            approval_expiry: Duration::from_secs(3600),
            verify_within: Duration::from_secs(600),
            evidence_rows: 10,
            max_evidence_rows: 1000,
            max_pending_approvals: 1000,
        }
    }
}

/// A rule's action, ready to run.
#[derive(Debug)]
pub struct CompiledAction {
    /// The script file, or the rule file for an inline script.
    pub path: PathBuf,
    pub ast: Arc<rhai::AST>,
    pub on: Vec<Trigger>,
    pub repeat_every: Option<Duration>,
    pub timeout: Duration,
    pub max_operations: u64,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub cooldown: Duration,
    pub max_concurrent: usize,
    pub max_per_hour: Option<u32>,
    pub dry_run: bool,
    pub idempotent: bool,
    pub approval: Approval,
    pub approval_expiry: Duration,
    pub verify_within: Duration,
    /// The escalation script and its path.
    pub on_ineffective: Option<(PathBuf, Arc<rhai::AST>)>,
    pub evidence_rows: usize,
    pub capabilities: Arc<Capabilities>,
    pub call_timeout: Duration,
    pub max_output: usize,
}

/// Compiles a rule's `[action]` section; `text` is the rule file's text, for
/// positions; `hasher` takes the scripts' sources (a changed script is a
/// changed rule).
pub fn compile(
    path: &Path,
    text: &str,
    action: &ActionFile,
    limits: &ActionLimits,
    hasher: &mut Sha256,
) -> Result<CompiledAction, Vec<RuleError>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut errors = Vec::new();
    let at = |key: &str| key_line(text, key);
    let mut error =
        |key: &str, message: String| errors.push(RuleError::new(path, at(key), message));

    let script = match (&action.script, &action.inline) {
        (Some(f), None) => read_script(&dir.join(f)).map_err(|m| ("script", m)),
        (None, Some(inline)) => Ok((
            inline.clone(),
            path.to_owned(),
            value_start_line(text, "inline"),
        )),
        _ => Err((
            "action",
            "[action] needs exactly one of script or inline".to_owned(),
        )),
    };
    let on_ineffective = action
        .on_ineffective
        .as_ref()
        .map(|f| read_script(&dir.join(f)).map_err(|m| ("on_ineffective", m)));

    if action.on.is_empty() {
        error(
            "on",
            "on must list at least one of firing, resolved, repeat".into(),
        );
    }
    if action.on.contains(&Trigger::Ineffective) {
        error(
            "on",
            "\"ineffective\" is not a trigger of on: set on_ineffective to a script".into(),
        );
    }
    match (action.on.contains(&Trigger::Repeat), action.repeat_every) {
        (true, None) => error("on", "on = [\"repeat\"] needs repeat_every".into()),
        (true, Some(d)) if d < Duration::from_secs(1) => {
            error("repeat_every", "repeat_every must be at least 1s".into())
        }
        (false, Some(_)) => error(
            "repeat_every",
            "repeat_every is set but on does not include \"repeat\"".into(),
        ),
        _ => {}
    }
    let timeout = action.timeout.unwrap_or(limits.timeout);
    if timeout.is_zero() || timeout > limits.max_timeout {
        error(
            "timeout",
            format!(
                "timeout must be between 0s and {} (the [actions] max_timeout)",
                humantime::format_duration(limits.max_timeout)
            ),
        );
    }
    let call_timeout = action.call_timeout.unwrap_or(limits.call_timeout);
    if call_timeout.is_zero() || call_timeout > limits.max_call_timeout {
        error(
            "call_timeout",
            format!(
                "call_timeout must be between 0s and {} (the [actions] max_call_timeout)",
                humantime::format_duration(limits.max_call_timeout)
            ),
        );
    }
    let max_operations = action.max_operations.unwrap_or(limits.operations);
    if max_operations == 0 || max_operations > limits.max_operations {
        error(
            "max_operations",
            format!(
                "max_operations must be between 1 and {} (the [actions] max_operations)",
                limits.max_operations
            ),
        );
    }
    if action.retries > limits.max_retries {
        error(
            "retries",
            format!("retries must be at most {}", limits.max_retries),
        );
    }
    let max_concurrent = action.max_concurrent.unwrap_or(limits.concurrent_per_rule);
    if max_concurrent == 0 || max_concurrent > limits.max_concurrent {
        error(
            "max_concurrent",
            format!(
                "max_concurrent must be between 1 and {} (the [actions] max_concurrent)",
                limits.max_concurrent
            ),
        );
    }
    if action.max_per_hour == Some(0) {
        error(
            "max_per_hour",
            "max_per_hour = 0 would never act: remove the action or set dry_run".into(),
        );
    }
    let evidence_rows = action.evidence_rows.unwrap_or(limits.evidence_rows);
    if evidence_rows > limits.max_evidence_rows {
        error(
            "evidence_rows",
            format!("evidence_rows must be at most {}", limits.max_evidence_rows),
        );
    }
    for prefix in &action.http {
        if let Err(m) = check_url_prefix(prefix) {
            error("http", m);
        }
    }
    for program in &action.exec {
        if !program.is_absolute() {
            error(
                "exec",
                format!(
                    "exec program {} must be an absolute path (no PATH lookup)",
                    program.display()
                ),
            );
        }
    }
    for namespace in &action.k8s {
        // "*" grants every namespace and the cluster-scoped objects.
        if namespace != "*" && !is_dns_label(namespace) {
            error(
                "k8s",
                format!("{namespace:?} is not a Kubernetes namespace name (or \"*\")"),
            );
        }
    }

    let mut compile_one = |source: Result<(String, PathBuf, usize), (&str, String)>| match source {
        Err((key, message)) => {
            errors.push(RuleError::new(path, at(key), message));
            None
        }
        Ok((source, script_path, first_line)) => {
            hasher.update(source.as_bytes());
            match super::sandbox::compile(&source) {
                Ok(ast) => Some((script_path, Arc::new(ast))),
                Err((line, message)) => {
                    errors.push(RuleError::new(
                        &script_path,
                        first_line + line.saturating_sub(1),
                        message,
                    ));
                    None
                }
            }
        }
    };
    let main = compile_one(script);
    let on_ineffective = on_ineffective.and_then(&mut compile_one);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (path, ast) = main.expect("no errors means the script compiled");
    Ok(CompiledAction {
        path,
        ast,
        on: action.on.clone(),
        repeat_every: action.repeat_every,
        timeout,
        max_operations,
        retries: action.retries,
        retry_backoff: action.retry_backoff.unwrap_or(limits.retry_backoff),
        cooldown: action.cooldown.unwrap_or_default(),
        max_concurrent,
        max_per_hour: action.max_per_hour,
        dry_run: action.dry_run,
        idempotent: action.idempotent,
        approval: action.approval,
        approval_expiry: action.approval_expiry.unwrap_or(limits.approval_expiry),
        verify_within: action.verify_within.unwrap_or(limits.verify_within),
        on_ineffective,
        evidence_rows,
        capabilities: Arc::new(Capabilities {
            http: action.http.clone(),
            exec: action.exec.clone(),
            k8s: action.k8s.clone(),
        }),
        call_timeout,
        max_output: usize::try_from(limits.max_output.as_u64()).unwrap_or(usize::MAX),
    })
}

fn read_script(path: &Path) -> Result<(String, PathBuf, usize), String> {
    std::fs::read_to_string(path)
        .map(|s| (s, path.to_owned(), 1))
        .map_err(|e| format!("cannot read script {}: {e}", path.display()))
}

/// An http allow-list entry: an absolute http(s) URL with a host and a
/// path, so that `https://api.example.com` cannot be taken as allowing
/// `https://api.example.com.evil.net/`.
pub fn check_url_prefix(prefix: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(prefix)
        .map_err(|e| format!("http prefix {prefix:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "http prefix {prefix:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !prefix
        .trim_start_matches(url.scheme())
        .trim_start_matches("://")
        .contains('/')
    {
        return Err(format!(
            "http prefix {prefix:?} must include a path, at least \"/\" after the host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "http prefix {prefix:?} must not carry a query, fragment or credentials"
        ));
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes namespaces are.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_text(text: &str) -> Result<CompiledAction, Vec<RuleError>> {
        #[derive(Deserialize)]
        struct Rule {
            action: ActionFile,
        }
        let rule: Rule = toml::from_str(text).expect("test text is valid TOML");
        compile(
            Path::new("r.toml"),
            text,
            &rule.action,
            &ActionLimits::default(),
            &mut Sha256::new(),
        )
    }

    #[test]
    fn defaults_come_from_the_limits() {
        let a = compile_text("[action]\ninline = \"1\"\n").unwrap();
        assert_eq!(a.on, [Trigger::Firing]);
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert_eq!(a.max_concurrent, 1);
        assert_eq!(a.approval, Approval::None);
        assert_eq!(a.path, Path::new("r.toml"));
    }

    #[test]
    fn every_bad_setting_is_reported_with_its_line() {
        let text = "[action]\ninline = \"1\"\non = [\"repeat\"]\ntimeout = \"1h\"\nmax_concurrent = 0\nhttp = [\"https://example.com\"]\nexec = [\"kubectl\"]\nk8s = [\"Shop\"]\n";
        let errors = compile_text(text).unwrap_err();
        let lines: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert_eq!(lines[0].0, 3);
        assert!(lines[0].1.contains("repeat_every"));
        assert_eq!(lines[1].0, 4);
        assert_eq!(lines[2].0, 5);
        assert_eq!(lines[3].0, 6);
        assert!(lines[3].1.contains("must include a path"), "{}", lines[3].1);
        assert_eq!(lines[4].0, 7);
        assert!(lines[4].1.contains("absolute"));
        assert_eq!(lines[5].0, 8);
    }

    #[test]
    fn script_errors_point_into_the_inline_script() {
        let text = "[action]\ninline = \"\"\"\nlet x = 1;\nlet = ;\n\"\"\"\n";
        let errors = compile_text(text).unwrap_err();
        assert_eq!(errors[0].line, 4, "{errors:?}");
    }

    #[test]
    fn url_prefixes_need_a_scheme_host_and_path() {
        assert!(check_url_prefix("https://api.example.com/v1/").is_ok());
        assert!(check_url_prefix("http://127.0.0.1:8080/").is_ok());
        assert!(check_url_prefix("ftp://example.com/").is_err());
        assert!(check_url_prefix("https://example.com").is_err());
        assert!(check_url_prefix("https://user@example.com/").is_err());
        assert!(check_url_prefix("/relative/").is_err());
    }
}
