//! With a small memory budget, a flood is pushed back (HTTP 429 with
//! Retry-After, gRPC UNAVAILABLE), the store stays within the budget, and
//! every accepted span stays queryable.

use bytesize::ByteSize;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use crate::common::start_with;

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// `n` spans with distinct ids, starting at span number `first`.
fn batch(first: u64, n: u64) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| Span {
            trace_id: [i.to_be_bytes(), [1; 8]].concat(),
            span_id: i.to_be_bytes().to_vec(),
            name: "flood".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
            end_time_unix_nano: 1_700_000_000_000_100_000 + i,
            attributes: vec![
                string("http.route", "/api/flood"),
                string("http.method", "POST"),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", "flood")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

const PER_REQUEST: u64 = 500;
const MAX_REQUESTS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_is_pushed_back_and_nothing_accepted_is_lost() {
    let budget = ByteSize::mib(2);
    let h = start_with(|c| c.store.memory_budget = budget).await;

    // HTTP: send until refused (bounded).
    let mut accepted = 0;
    let mut next = 0;
    let mut refusal = None;
    for _ in 0..MAX_REQUESTS {
        let body = batch(next, PER_REQUEST).encode_to_vec();
        next += PER_REQUEST;
        let r = h
            .post("/v1/traces", "application/x-protobuf", false, body)
            .await;
        match r.status().as_u16() {
            200 => accepted += PER_REQUEST,
            429 => {
                refusal = Some(r);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refusal = refusal.expect("the budget fills up within the bounded flood");
    let retry_after: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert!(accepted > 0);

    // gRPC: refused as UNAVAILABLE, which OTLP clients retry with backoff.
    let mut client = TraceServiceClient::connect(h.otlp_grpc_url())
        .await
        .unwrap();
    let status = client.export(batch(next, PER_REQUEST)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The store stays within its budget...
    let used = h
        .metric(r#"homeostat_store_bytes{table="spans"}"#)
        .await
        .unwrap();
    assert!(
        used <= budget.as_u64() as f64,
        "{used} bytes held, budget {budget}"
    );
    assert!(
        used >= 0.5 * budget.as_u64() as f64,
        "the budget was used: {used}"
    );
    // ...and every accepted span is there, each once.
    let stored = h.count("SELECT count(DISTINCT span_id) FROM spans").await;
    assert_eq!(stored as u64, accepted);
    assert_eq!(h.count("SELECT count(*) FROM spans").await as u64, accepted);
    let refused = h
        .metric(r#"homeostat_refused_requests_total{signal="traces",transport="grpc",reason="memory_budget"}"#)
        .await;
    assert_eq!(refused, Some(1.0));
}
