//! A decision as a trace: the rationale, readable in any tracing backend.
//!
//! ```text
//! homeostat.decision {rule}            root: trigger, verdict, choice, outcome
//! ├── homeostat.detect                 the SQL, rows, evidence; links to evidence traces
//! ├── homeostat.policy                 each check as an event; the verdict
//! ├── homeostat.act                    the script; options considered as events
//! │   └── execute_tool http::post      one per host call: target, status, error
//! └── homeostat.verify                 expectation, deadline, outcome
//! ```
//!
//! Spans are emitted when their part is over: detection, policy and action
//! once the action has run (or was stopped by a policy), verification and
//! the root once the outcome is known. Span ids derive from the decision id
//! and the span's role, so parts emitted at different times fit together.
//! Attributes are under `homeostat.*`, plus the OpenTelemetry GenAI agent
//! conventions where they fit (`gen_ai.operation.name`, `gen_ai.tool.name`).

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value as Any,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use sha2::{Digest, Sha256};

use super::{Decision, Outcome};
use crate::act::host::CallStatus;

/// The service name rationale spans carry (and rules can watch).
pub const SERVICE_NAME: &str = "homeostat";
/// Most span links to evidence traces per decision.
pub const MAX_LINKS: usize = 32;
/// Longest attribute value written (evidence, SQL), in bytes.
const MAX_ATTRIBUTE: usize = 8192;

pub const DECISION_SPAN: &str = "homeostat.decision";
pub const DETECT_SPAN: &str = "homeostat.detect";
pub const POLICY_SPAN: &str = "homeostat.policy";
pub const ACT_SPAN: &str = "homeostat.act";
pub const VERIFY_SPAN: &str = "homeostat.verify";

/// The span id of one role (`decision`, `detect`, `call.3`...) in a
/// decision's trace.
pub fn span_id(decision_id: &str, role: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(decision_id.as_bytes());
    h.update([0]);
    h.update(role.as_bytes());
    h.finalize()[..8].to_vec()
}

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    let mut value: String = value.into();
    if value.len() > MAX_ATTRIBUTE {
        let mut end = MAX_ATTRIBUTE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    kv(key, Any::StringValue(value))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, Any::IntValue(value))
}

fn flag(key: &str, value: bool) -> KeyValue {
    kv(key, Any::BoolValue(value))
}

fn nanos(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

struct Builder<'a> {
    d: &'a Decision,
    trace_id: Vec<u8>,
}

impl Builder<'_> {
    fn span(&self, role: &str, name: &str, start: i64, end: i64) -> Span {
        Span {
            trace_id: self.trace_id.clone(),
            span_id: span_id(&self.d.id, role),
            parent_span_id: if role == "decision" {
                Vec::new()
            } else {
                span_id(&self.d.id, "decision")
            },
            name: name.to_owned(),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: nanos(start),
            end_time_unix_nano: nanos(end.max(start)),
            attributes: vec![
                text("homeostat.rule", &self.d.rule),
                text("homeostat.decision.id", &self.d.id),
                text("homeostat.fingerprint", &self.d.fingerprint),
            ],
            ..Default::default()
        }
    }
}

fn status(error: Option<String>) -> Option<Status> {
    Some(match error {
        Some(message) => Status {
            message,
            code: StatusCode::Error as i32,
        },
        None => Status {
            message: String::new(),
            code: StatusCode::Ok as i32,
        },
    })
}

fn trace_id(d: &Decision) -> Vec<u8> {
    const_hex::decode(&d.trace_id).unwrap_or_else(|_| vec![0; 16])
}

/// The spans of detection, policy and action (with its host calls): emitted
/// once the policies have decided and the action, if any, has run.
pub fn action_spans(d: &Decision) -> Vec<Span> {
    let b = Builder {
        d,
        trace_id: trace_id(d),
    };
    let mut spans = Vec::new();

    let mut detect = b.span("detect", DETECT_SPAN, d.at, d.at);
    detect.attributes.extend([
        text("homeostat.rule.sql", &d.detection.sql),
        int("homeostat.window.start", d.detection.window_start),
        int("homeostat.window.end", d.detection.window_end),
        int("homeostat.rows", d.detection.rows as i64),
        text("homeostat.state", d.detection.state.name()),
        text(
            "homeostat.values",
            serde_json::Value::Object(d.detection.values.clone()).to_string(),
        ),
        text(
            "homeostat.evidence",
            serde_json::to_string(&d.detection.evidence).unwrap_or_default(),
        ),
        int(
            "homeostat.evidence.trace_count",
            d.detection.evidence_trace_ids.len() as i64,
        ),
    ]);
    detect.links = evidence_links(d);
    detect.status = status(None);
    spans.push(detect);

    let mut policy = b.span("policy", POLICY_SPAN, d.at, d.policy.decided_at);
    policy.attributes.extend([
        text("homeostat.policy.verdict", d.policy.verdict.name()),
        text("homeostat.policy.reason", &d.policy.reason),
        flag("homeostat.dry_run", d.policy.dry_run),
    ]);
    if let Some(a) = &d.policy.approval {
        if let Some(by) = &a.by {
            policy.attributes.push(text("homeostat.approval.by", by));
        }
        if let Some(approved) = a.approved {
            policy
                .attributes
                .push(flag("homeostat.approval.approved", approved));
        }
    }
    policy.events = d
        .policy
        .checks
        .iter()
        .map(|c| Event {
            time_unix_nano: nanos(d.at),
            name: "homeostat.policy.check".into(),
            attributes: vec![
                text("homeostat.policy", c.policy),
                flag("homeostat.policy.passed", c.passed),
                text("homeostat.policy.detail", &c.detail),
            ],
            dropped_attributes_count: 0,
        })
        .collect();
    policy.status = status(None);
    spans.push(policy);

    if let Some(run) = &d.run {
        let end = run.ended_at.unwrap_or(run.started_at);
        let mut act = b.span("act", ACT_SPAN, run.started_at, end);
        act.attributes.extend([
            text("gen_ai.operation.name", "invoke_agent"),
            text("gen_ai.agent.name", SERVICE_NAME),
            text("homeostat.script", &run.script),
            text("homeostat.trigger", d.trigger.name()),
            text("homeostat.run.status", run.status.name()),
            int("homeostat.run.attempts", i64::from(run.attempts)),
            int(
                "homeostat.run.operations",
                i64::try_from(run.operations).unwrap_or(i64::MAX),
            ),
            flag("homeostat.dry_run", d.policy.dry_run),
            int("homeostat.host_calls", d.host_calls.len() as i64),
        ]);
        if let Some(choice) = &d.reasoning.decision {
            act.attributes.extend([
                text("homeostat.choice", &choice.option),
                text("homeostat.choice.reason", &choice.reason),
            ]);
        }
        if let Some(skip) = &d.reasoning.skipped {
            act.attributes.push(text("homeostat.skip.reason", skip));
        }
        if let Some(e) = &d.reasoning.expectation {
            act.attributes.extend([
                text("homeostat.expectation", &e.description),
                int(
                    "homeostat.expectation.within_seconds",
                    e.within.as_secs() as i64,
                ),
            ]);
        }
        if let Some(e) = &run.error {
            act.attributes.push(text("error.type", e.kind));
        }
        let option = |name: &str, c: &crate::act::sandbox::Considered| Event {
            time_unix_nano: nanos(run.started_at),
            name: name.into(),
            attributes: vec![
                text("homeostat.option", &c.option),
                text("homeostat.option.reason", &c.reason),
            ],
            dropped_attributes_count: 0,
        };
        let considered = d.reasoning.considered.iter();
        act.events = considered
            .map(|c| option("homeostat.option.considered", c))
            .chain(
                d.reasoning
                    .decision
                    .iter()
                    .map(|c| option("homeostat.option.chosen", c)),
            )
            .collect();
        act.status = status(run.error.as_ref().map(|e| e.message.clone()));
        let act_id = act.span_id.clone();
        spans.push(act);

        for (i, call) in d.host_calls.iter().enumerate() {
            let end = call.started_at + i64::try_from(call.duration_ns).unwrap_or(i64::MAX);
            let mut s = b.span(
                &format!("call.{i}"),
                &format!("execute_tool {}", call.function),
                call.started_at,
                end,
            );
            s.parent_span_id = act_id.clone();
            s.kind = SpanKind::Client as i32;
            s.attributes.extend([
                text("gen_ai.operation.name", "execute_tool"),
                text("gen_ai.tool.name", &call.function),
                text("gen_ai.tool.type", "extension"),
                text("homeostat.host.module", call.module),
                text("homeostat.host.target", &call.target),
                text("homeostat.host.status", call.status.name()),
                int("homeostat.run.attempt", i64::from(call.attempt)),
            ]);
            if !call.detail.is_null() {
                s.attributes
                    .push(text("homeostat.host.detail", call.detail.to_string()));
            }
            let failed = !matches!(call.status, CallStatus::Ok | CallStatus::DryRun);
            if failed {
                s.attributes.push(text("error.type", call.status.name()));
            }
            s.status = status(failed.then(|| {
                call.error
                    .clone()
                    .unwrap_or_else(|| call.status.name().into())
            }));
            spans.push(s);
        }
    }
    spans
}

/// The verification span (when there was something to verify) and the
/// root: emitted once the outcome is known.
pub fn closing_spans(d: &Decision) -> Vec<Span> {
    let b = Builder {
        d,
        trace_id: trace_id(d),
    };
    let mut spans = Vec::new();
    let mut end = d.policy.decided_at;
    if let Some(run) = &d.run {
        end = end.max(run.ended_at.unwrap_or(run.started_at));
    }
    if let Some(v) = &d.verification {
        let start = end;
        let checked = v.checked_at.unwrap_or(v.deadline);
        let mut verify = b.span("verify", VERIFY_SPAN, start, checked);
        verify.attributes.extend([
            text("homeostat.expectation", &v.expected),
            int("homeostat.verify.deadline", v.deadline),
            text("homeostat.outcome", d.outcome.name()),
        ]);
        if let Some(r) = v.resolved_at {
            verify.attributes.push(int("homeostat.resolved_at", r));
        }
        if let Some(e) = &v.escalation {
            verify.attributes.push(text("homeostat.escalation", e));
        }
        verify.status = status(
            (d.outcome == Outcome::Ineffective)
                .then(|| "the instance did not resolve in time".into()),
        );
        end = end.max(checked);
        spans.push(verify);
    }
    let mut root = b.span(
        "decision",
        &format!("{DECISION_SPAN} {}", d.rule),
        d.at,
        end,
    );
    root.attributes.extend([
        text("gen_ai.operation.name", "invoke_agent"),
        text("gen_ai.agent.name", SERVICE_NAME),
        int(
            "homeostat.episode",
            i64::try_from(d.episode).unwrap_or(i64::MAX),
        ),
        text("homeostat.trigger", d.trigger.name()),
        text("homeostat.policy.verdict", d.policy.verdict.name()),
        text("homeostat.policy.reason", &d.policy.reason),
        text("homeostat.outcome", d.outcome.name()),
        flag("homeostat.dry_run", d.policy.dry_run),
        text(
            "homeostat.labels",
            serde_json::to_string(&d.labels).unwrap_or_default(),
        ),
    ]);
    if let Some(choice) = &d.reasoning.decision {
        root.attributes.extend([
            text("homeostat.choice", &choice.option),
            text("homeostat.choice.reason", &choice.reason),
        ]);
    }
    if let Some(e) = &d.escalates {
        root.attributes.push(text("homeostat.escalates", e));
    }
    let failed = d.run.as_ref().and_then(|r| r.error.as_ref());
    root.status = status(failed.map(|e| e.message.clone()));
    spans.push(root);
    spans
}

fn evidence_links(d: &Decision) -> Vec<Link> {
    let mut links = Vec::new();
    for row in &d.detection.evidence {
        let (Some(trace), span) = (
            row.get("trace_id").and_then(|v| v.as_str()),
            row.get("span_id").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        links.push((trace.to_owned(), span.map(str::to_owned)));
    }
    for trace in &d.detection.evidence_trace_ids {
        if !links.iter().any(|(t, _)| t == trace) {
            links.push((trace.clone(), None));
        }
    }
    links
        .into_iter()
        .filter_map(|(trace, span)| {
            let trace_id = const_hex::decode(&trace).ok().filter(|t| t.len() == 16)?;
            let span_id = span
                .and_then(|s| const_hex::decode(s).ok())
                .filter(|s| s.len() == 8)
                .unwrap_or_default();
            Some(Link {
                trace_id,
                span_id,
                attributes: vec![text("homeostat.link", "evidence")],
                ..Default::default()
            })
        })
        .take(MAX_LINKS)
        .collect()
}

/// Wraps spans with Homeostat's resource and scope.
pub fn resource_spans(spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                text("service.name", SERVICE_NAME),
                text("service.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "homeostat.decisions".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}
