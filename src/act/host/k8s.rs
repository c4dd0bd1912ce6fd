//! The `k8s` host module: the few Kubernetes actions remediation needs,
//! each in the namespaces a rule grants.
//!
//! What the script sees (each mutation answers a small map, in dry-run the
//! same map with `dry_run: true`):
//! - `k8s::rollout_restart(namespace, deployment)`, as `kubectl rollout
//!   restart`: sets the pod template's `kubectl.kubernetes.io/restartedAt`
//!   annotation to now (RFC 3339) → `#{namespace, name, restarted_at}`;
//! - `k8s::scale(namespace, deployment, replicas)` sets `spec.replicas`
//!   → `#{namespace, name, replicas}` (an autoscaler owning the deployment
//!   will set it back);
//! - `k8s::replicas(namespace, deployment)` → the deployment's
//!   `spec.replicas`. In dry-run nothing is asked and the answer is `()`, so
//!   a script that may run dry must handle it:
//!   `let n = k8s::replicas("shop", "web"); if n == () { ... }`;
//! - `k8s::delete_pod(namespace, pod)` → `#{namespace, name}`;
//! - `k8s::cordon(node)` / `k8s::uncordon(node)` mark a node
//!   (un)schedulable → `#{name, unschedulable}`;
//! - `k8s::annotate(namespace, kind, name, key, value)`, `kind` one of
//!   `deployment`, `statefulset`, `daemonset`, `pod`, `service` (a merge
//!   patch of `metadata.annotations`) → `#{namespace, kind, name, key, value}`.
//!
//! What is refused (denied, in dry-run too, before anything is sent): a
//! namespace not in the rule's `k8s` list (the entry `"*"` grants every
//! namespace); nodes, which are cluster-scoped, without `"*"`; names that
//! are not Kubernetes names (RFC 1123 labels for namespaces, subdomains for
//! objects), which the API server would refuse anyway, but a script that
//! builds a name from telemetry must not send what it did not mean; replicas
//! outside 0..=1000, a guard against a computed count gone wrong; unknown
//! kinds and malformed annotation keys.
//!
//! Credentials are found as `kubectl` finds them: the kubeconfig named by
//! `KUBECONFIG` or `~/.kube/config`, else the pod's service account. They are
//! loaded once per process, on first use (a failure is not kept: the next
//! call tries again). The client is built from them for each call, because a
//! `kube::Client` runs a worker on the runtime it was built on, and the
//! actions' runtime may be rebuilt while the process lives. Errors of the
//! API server (403, 404, 409...) fail the call with their status and message.

use std::fmt::{self, Debug};
use std::future::Future;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Config, Resource};
use rhai::{Dynamic, EvalAltResult, Module};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{Answer, Call, CallEnv, HostError, from_json, perform};

const MODULE: &str = "k8s";
/// The `k8s` capability entry granting every namespace and the cluster-scoped
/// objects (nodes).
pub const ALL_NAMESPACES: &str = "*";
/// Most replicas `k8s::scale` may set.
pub const MAX_REPLICAS: i64 = 1000;
/// The API server's bound on all of an object's annotations together.
const MAX_ANNOTATION_VALUE: usize = 256 * 1024;
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Who the API server records as having made the change.
const FIELD_MANAGER: &str = "homeostat";
/// The kinds `k8s::annotate` accepts.
const KINDS: [&str; 5] = ["deployment", "statefulset", "daemonset", "pod", "service"];

/// Credentials found on first use.
static CONFIG: OnceCell<Config> = OnceCell::const_new();

pub fn module() -> Module {
    let mut m = Module::new();
    m.set_native_fn("rollout_restart", rollout_restart);
    m.set_native_fn("scale", scale);
    m.set_native_fn("replicas", replicas);
    m.set_native_fn("delete_pod", delete_pod);
    m.set_native_fn("cordon", |node: &str| {
        set_unschedulable("cordon", node, true)
    });
    m.set_native_fn("uncordon", |node: &str| {
        set_unschedulable("uncordon", node, false)
    });
    m.set_native_fn("annotate", annotate);
    m
}

/// The object a call acts on; recorded as `deployment shop/web` or
/// `node node-1`.
struct Target {
    kind: String,
    /// `None` for cluster-scoped objects.
    namespace: Option<String>,
    name: String,
    /// The check of the call's other arguments.
    args: Result<(), String>,
}

impl Target {
    fn namespaced(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
            args: Ok(()),
        }
    }

    fn with_args(self, args: Result<(), String>) -> Self {
        Self { args, ..self }
    }

    /// Whether its arguments are right, its names Kubernetes names, and
    /// `granted` (the rule's `k8s` list) allows acting on it.
    fn check(self, granted: &[String]) -> Result<(), String> {
        self.args?;
        if !is_dns_subdomain(&self.name) {
            return Err(format!(
                "{:?} is not a valid {} name (lowercase letters, digits, '-' and '.', \
                 at most 253 characters)",
                self.name, self.kind
            ));
        }
        let all = granted.iter().any(|g| g == ALL_NAMESPACES);
        match &self.namespace {
            None if all => Ok(()),
            None => Err(format!(
                "{} {} is cluster-scoped: it needs k8s = [\"*\"], the grant of the whole cluster",
                self.kind, self.name
            )),
            Some(ns) if !is_dns_label(ns) => Err(format!(
                "{ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', \
                 at most 63 characters)"
            )),
            Some(ns) if all || granted.contains(ns) => Ok(()),
            Some(ns) => Err(format!(
                "namespace {ns:?} is not granted to this rule (k8s = {granted:?})"
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

fn rollout_restart(namespace: &str, name: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let target = Target::namespaced("deployment", namespace, name);
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let shown = json!({ "namespace": namespace, "name": name, "restarted_at": now });
    let patch = json!({ "spec": { "template": { "metadata": {
        "annotations": { RESTARTED_AT: now } } } } });
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    act(
        "rollout_restart",
        target,
        dry(&shown),
        |client| async move {
            let d: Deployment = patch_in(client, &namespace, &name, &patch).await?;
            Ok(Answer {
                value: from_json(&shown),
                detail: json!({ "restarted_at": now, "generation": d.metadata.generation }),
            })
        },
    )
}

fn scale(namespace: &str, name: &str, replicas: i64) -> Result<Dynamic, Box<EvalAltResult>> {
    let args = if (0..=MAX_REPLICAS).contains(&replicas) {
        Ok(())
    } else {
        Err(format!(
            "replicas must be between 0 and {MAX_REPLICAS}, not {replicas}"
        ))
    };
    let target = Target::namespaced("deployment", namespace, name).with_args(args);
    let shown = json!({ "namespace": namespace, "name": name, "replicas": replicas });
    let patch = json!({ "spec": { "replicas": replicas } });
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    act("scale", target, dry(&shown), |client| async move {
        let d: Deployment = patch_in(client, &namespace, &name, &patch).await?;
        Ok(Answer {
            value: from_json(&shown),
            detail: json!({ "replicas": d.spec.replicas, "generation": d.metadata.generation }),
        })
    })
}

/// A read, but through [`perform`] so that it is checked and recorded like
/// the rest: in dry-run it is not sent and answers `()`.
fn replicas(namespace: &str, name: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let target = Target::namespaced("deployment", namespace, name);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    act("replicas", target, Dynamic::UNIT, |client| async move {
        let api = Api::<Deployment>::namespaced(client, &namespace);
        let d = api.get(&name).await?;
        // The API server defaults an unset spec.replicas to 1.
        let replicas = d.spec.replicas.unwrap_or(1);
        let ready = d.status.and_then(|s| s.ready_replicas);
        Ok(Answer {
            value: Dynamic::from(i64::from(replicas)),
            detail: json!({ "replicas": replicas, "ready": ready }),
        })
    })
}

fn delete_pod(namespace: &str, name: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let target = Target::namespaced("pod", namespace, name);
    let shown = json!({ "namespace": namespace, "name": name });
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    act("delete_pod", target, dry(&shown), |client| async move {
        let api = Api::<Pod>::namespaced(client, &namespace);
        let deleted = api.delete(&name, &DeleteParams::default()).await?;
        Ok(Answer {
            value: from_json(&shown),
            // Usually answered as terminating, for its grace period.
            detail: json!({ "terminating": deleted.is_left() }),
        })
    })
}

fn set_unschedulable(
    function: &'static str,
    node: &str,
    unschedulable: bool,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let target = Target {
        kind: "node".into(),
        namespace: None,
        name: node.to_owned(),
        args: Ok(()),
    };
    let shown = json!({ "name": node, "unschedulable": unschedulable });
    // As kubectl: uncordon removes the field rather than setting false.
    let value = if unschedulable {
        json!(true)
    } else {
        Value::Null
    };
    let patch = json!({ "spec": { "unschedulable": value } });
    let node = node.to_owned();
    act(function, target, dry(&shown), |client| async move {
        let n = Api::<Node>::all(client)
            .patch(&node, &patch_params(), &Patch::Merge(&patch))
            .await?;
        let now = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        Ok(Answer {
            value: from_json(&shown),
            detail: json!({ "unschedulable": now }),
        })
    })
}

fn annotate(
    namespace: &str,
    kind: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let args = check_kind(kind).and_then(|()| check_annotation_key(key));
    let args = args.and_then(|()| match value.len() {
        n if n > MAX_ANNOTATION_VALUE => Err(format!(
            "annotation value is {n} bytes, over the {MAX_ANNOTATION_VALUE} the API allows"
        )),
        _ => Ok(()),
    });
    let target = Target::namespaced(kind, namespace, name).with_args(args);
    let shown = json!({
        "namespace": namespace, "kind": kind, "name": name, "key": key, "value": value
    });
    let patch = json!({ "metadata": { "annotations": { key: value } } });
    let (namespace, kind, name) = (namespace.to_owned(), kind.to_owned(), name.to_owned());
    let key = key.to_owned();
    act("annotate", target, dry(&shown), |client| async move {
        let (ns, n, p) = (namespace.as_str(), name.as_str(), &patch);
        let version = match kind.as_str() {
            "deployment" => resource_version(patch_in::<Deployment>(client, ns, n, p).await?),
            "statefulset" => resource_version(patch_in::<StatefulSet>(client, ns, n, p).await?),
            "daemonset" => resource_version(patch_in::<DaemonSet>(client, ns, n, p).await?),
            "pod" => resource_version(patch_in::<Pod>(client, ns, n, p).await?),
            _ => resource_version(patch_in::<Service>(client, ns, n, p).await?),
        };
        Ok(Answer {
            value: from_json(&shown),
            detail: json!({ "key": key, "resource_version": version }),
        })
    })
}

/// Makes one call through [`perform`]: the target is checked first, also in
/// dry-run; then `io` runs with a client, its API errors becoming failures
/// of the call.
fn act<F, Fut>(
    function: &str,
    target: Target,
    dry: Dynamic,
    io: F,
) -> Result<Dynamic, Box<EvalAltResult>>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<Answer, kube::Error>>,
{
    let qualified = format!("{MODULE}::{function}");
    let call = Call {
        module: MODULE,
        function,
        target: target.to_string(),
    };
    let denied = qualified.clone();
    let allow = move |env: &CallEnv| {
        target
            .check(&env.capabilities.k8s)
            .map_err(|reason| HostError::Denied {
                function: denied,
                reason,
            })
    };
    perform(call, allow, dry, move |_env| async move {
        let failed = |message| HostError::Failed {
            function: qualified.clone(),
            message,
        };
        let client = client().await.map_err(failed)?;
        io(client).await.map_err(|e| failed(explain(&e)))
    })
}

/// A client from the process's credentials, loaded on first use.
async fn client() -> Result<Client, String> {
    let config = CONFIG
        .get_or_try_init(|| async {
            Config::infer()
                .await
                .map_err(|e| format!("no Kubernetes credentials: {}", chain(&e)))
        })
        .await?;
    super::install_crypto_provider();
    Client::try_from(config.clone())
        .map_err(|e| format!("cannot build the Kubernetes client: {}", chain(&e)))
}

/// A merge patch of a namespaced object of type `K`.
async fn patch_in<K>(
    client: Client,
    namespace: &str,
    name: &str,
    patch: &Value,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client, namespace)
        .patch(name, &patch_params(), &Patch::Merge(patch))
        .await
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn resource_version<K: Resource>(object: K) -> Option<String> {
    object.meta().resource_version.clone()
}

/// What went wrong, as a person reading the decision needs it: the API
/// server's status and message, or the transport's chain of causes.
fn explain(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => chain(other),
    }
}

/// An error and its causes, each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        cause = c.source();
    }
    text
}

/// The dry-run answer: the map a real call gives, marked.
fn dry(shown: &Value) -> Dynamic {
    let mut marked = shown.clone();
    marked["dry_run"] = Value::Bool(true);
    from_json(&marked)
}

fn check_kind(kind: &str) -> Result<(), String> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(format!("kind {kind:?} is not one of {}", KINDS.join(", ")))
    }
}

/// Lowercase letters, digits and '-', neither first nor last.
fn is_label_shaped(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 label, as namespaces are.
fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// RFC 1123 subdomain, as most object names are (Kubernetes bounds the
/// whole, not each label).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_shaped)
}

/// An annotation key: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 letters, digits, '-', '_' and '.', alphanumeric at both
/// ends.
fn check_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key
        .split_once('/')
        .map_or((None, key), |(p, n)| (Some(p), n));
    if let Some(prefix) = prefix.filter(|p| !is_dns_subdomain(p)) {
        return Err(format!(
            "annotation key {key:?}: the prefix {prefix:?} must be a DNS subdomain (example.com)"
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let shaped = name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if shaped {
        Ok(())
    } else {
        Err(format!(
            "annotation key {key:?}: the name must be 1 to 63 letters, digits, '-', '_' or '.', \
             beginning and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::host::{CallStatus, Capabilities};
    use crate::act::sandbox::tests::run_script;

    fn granting(namespaces: &[&str]) -> Capabilities {
        Capabilities {
            k8s: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            ..Capabilities::default()
        }
    }

    #[test]
    fn what_is_not_granted_or_not_a_name_is_denied_before_anything_is_sent() {
        let long = "a".repeat(254);
        let cases = format!(
            r#"
k8s::scale("other", "web", 2)                         | namespace "other" is not granted
k8s::rollout_restart("Shop", "web")                   | not a Kubernetes namespace name
k8s::cordon("node-1")                                 | cluster-scoped
k8s::uncordon("node-1")                               | needs k8s = ["*"]
k8s::delete_pod("shop", "web_1")                      | not a valid pod name
k8s::replicas("shop", "{long}")                       | not a valid deployment name
k8s::scale("shop", "web", 1001)                       | between 0 and 1000, not 1001
k8s::scale("shop", "web", -1)                         | between 0 and 1000, not -1
k8s::annotate("shop", "secret", "db", "a", "b")       | kind "secret" is not one of
k8s::annotate("shop", "pod", "db", "bad key", "b")    | the name must be
k8s::annotate("shop", "pod", "db", "Ex.com/k", "b")   | the prefix "Ex.com""#
        );
        let cases = cases.lines().filter_map(|l| l.split_once(" | "));
        for (script, reason) in cases {
            let (script, reason) = (script.trim_end(), reason.trim());
            // Live, not dry-run: a check that let the call through would
            // fail differently (no credentials here).
            let r = run_script(script, granting(&["shop"]), false);
            let error = r.result.as_ref().expect_err(script);
            assert_eq!(error.kind(), "capability_denied", "{script}: {error}");
            assert_eq!(r.calls.len(), 1, "{script}");
            assert_eq!(r.calls[0].status, CallStatus::Denied, "{script}");
            let recorded = r.calls[0].error.as_deref().unwrap_or_default();
            assert!(recorded.contains(reason), "{script}: {recorded}");
        }
    }

    #[test]
    fn dry_run_records_each_call_and_answers_without_sending() {
        let r = run_script(
            r#"let n = k8s::replicas("shop", "web");
               let s = k8s::scale("shop", "web", if n == () { 3 } else { n + 1 });
               k8s::rollout_restart("shop", "web");
               k8s::delete_pod("shop", "web-7d4b9-x2x5q");
               k8s::annotate("shop", "service", "web", "example.com/paused-by", "homeostat");
               [n == (), s.replicas, s.dry_run]"#,
            granting(&["shop"]),
            true,
        );
        assert_eq!(r.result, Ok(json!([true, 3, true])));
        let targets: Vec<(&str, &str)> = r
            .calls
            .iter()
            .map(|c| (c.function.as_str(), c.target.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                ("k8s::replicas", "deployment shop/web"),
                ("k8s::scale", "deployment shop/web"),
                ("k8s::rollout_restart", "deployment shop/web"),
                ("k8s::delete_pod", "pod shop/web-7d4b9-x2x5q"),
                ("k8s::annotate", "service shop/web"),
            ]
        );
        assert!(r.calls.iter().all(|c| c.status == CallStatus::DryRun));
    }

    #[test]
    fn the_whole_cluster_grant_allows_any_namespace_and_nodes() {
        let r = run_script(
            r#"k8s::cordon("node-1"); k8s::uncordon("node-1").unschedulable"#,
            granting(&["*"]),
            true,
        );
        assert_eq!(r.result, Ok(json!(false)));
        assert_eq!(r.calls[0].target, "node node-1");
        let r = run_script(
            r#"k8s::scale("kube-system", "dns", 0)"#,
            granting(&["*"]),
            true,
        );
        assert!(r.result.is_ok(), "{:?}", r.result);
        assert_eq!(r.calls[0].status, CallStatus::DryRun);
    }

    #[test]
    fn a_live_call_without_credentials_fails_as_a_host_error() {
        let home_config = std::env::var_os("HOME")
            .map(|home| std::path::Path::new(&home).join(".kube/config"))
            .is_some_and(|p| p.exists());
        let configured = std::env::var_os("KUBECONFIG").is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            || home_config;
        let r = run_script(
            r#"try { k8s::scale("shop", "web", 2) } catch (e) { print(e) }
               k8s::replicas("shop", "web")"#,
            granting(&["shop"]),
            false,
        );
        assert_eq!(r.calls.len(), 2);
        if configured {
            println!(
                "note: Kubernetes credentials are configured here; not asserting their absence"
            );
            return;
        }
        let error = r.result.expect_err("no credentials, no answer");
        assert_eq!(error.kind(), "host_error", "{error}");
        for call in &r.calls {
            assert_eq!(call.status, CallStatus::Error);
            let message = call.error.as_deref().unwrap_or_default();
            assert!(message.contains("no Kubernetes credentials"), "{message}");
        }
        // The first failure was the script's to catch.
        let caught = r.reasoning.output.first().map(String::as_str);
        assert!(caught.is_some_and(|e| e.contains("k8s::scale: no Kubernetes credentials")));
    }

    #[test]
    fn names_and_annotation_keys_follow_kubernetes_rules() {
        assert!(is_dns_subdomain("web-1.canary"));
        assert!(is_dns_subdomain(&"a".repeat(100)));
        assert!(!is_dns_subdomain("web..1") && !is_dns_subdomain("-web") && !is_dns_subdomain(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        for key in ["paused", "example.com/paused-by", "a/B_c.d", RESTARTED_AT] {
            assert_eq!(check_annotation_key(key), Ok(()), "{key}");
        }
        for key in [
            "",
            "/x",
            "example.com/",
            "a/b/c",
            "x-",
            "_x",
            &"k".repeat(64),
        ] {
            assert!(check_annotation_key(key).is_err(), "{key}");
        }
    }
}
