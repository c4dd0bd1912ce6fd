//! Bad input gets the right status and loses nothing else: data sent before
//! and after each bad request is still there.

use bytesize::ByteSize;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use crate::common::{Instance, gzip, start_with};

const PROTOBUF: &str = "application/x-protobuf";

/// A valid request with one span named `name` for service `bad-input`.
fn request(name: &str, attributes: Vec<KeyValue>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("bad-input".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![7; 16],
                    span_id: vec![9; 8],
                    name: name.into(),
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    attributes,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn nested(depth: usize) -> AnyValue {
    let mut value = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..depth {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![value],
            })),
        };
    }
    value
}

async fn send_good(h: &Instance, name: &str) {
    let r = h
        .post(
            "/v1/traces",
            PROTOBUF,
            false,
            request(name, vec![]).encode_to_vec(),
        )
        .await;
    assert_eq!(r.status(), 200, "a good request is accepted");
}

async fn span_names(h: &Instance) -> Vec<String> {
    h.query("SELECT span_name FROM spans WHERE service_name = 'bad-input' ORDER BY span_name")
        .await
        .rows
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect()
}

/// Sends `body` between two good requests; checks the status and that both
/// good requests are stored and nothing else.
async fn check_refused(
    h: &Instance,
    label: &str,
    content_type: &str,
    gzipped: bool,
    body: Vec<u8>,
    status: u16,
) -> String {
    let before = format!("{label} before");
    let after = format!("{label} after");
    send_good(h, &before).await;
    let response = h.post("/v1/traces", content_type, gzipped, body).await;
    assert_eq!(response.status(), status, "{label}");
    let text = response.text().await.unwrap();
    send_good(h, &after).await;
    let names = span_names(h).await;
    assert!(
        names.contains(&before) && names.contains(&after),
        "{label}: {names:?}"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_request_is_refused_alone() {
    let cap = ByteSize::kib(256);
    let h = start_with(|c| c.ingest.max_request_size = cap).await;

    // Truncated protobuf: 400 with a google.rpc.Status in protobuf.
    let mut truncated = request("x", vec![]).encode_to_vec();
    truncated.truncate(truncated.len() - 5);
    check_refused(&h, "truncated", PROTOBUF, false, truncated, 400).await;

    // Wrong content type.
    let text = check_refused(
        &h,
        "content type",
        "text/plain",
        false,
        b"hello".to_vec(),
        415,
    )
    .await;
    assert!(text.contains("unsupported content type"), "{text}");

    // Unsupported content encoding.
    let r = h
        .client
        .post(h.otlp_http_url("/v1/traces"))
        .header("content-type", PROTOBUF)
        .header("content-encoding", "br")
        .body(request("x", vec![]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // A gzip bomb: a few KiB that inflate past the cap.
    let bomb = gzip(&vec![0u8; 8 * cap.as_u64() as usize]);
    assert!(bomb.len() < 64 * 1024);
    check_refused(&h, "gzip bomb", PROTOBUF, true, bomb, 413).await;

    // Not gzip at all, though labelled so.
    check_refused(&h, "bad gzip", PROTOBUF, true, b"not gzip".to_vec(), 400).await;

    // Oversized body as sent.
    let big = request(&"x".repeat(cap.as_u64() as usize + 1), vec![]).encode_to_vec();
    check_refused(&h, "oversized", PROTOBUF, false, big, 413).await;

    // Invalid UTF-8 in a protobuf string field.
    let mut bytes = request("INVALIDUTF8", vec![]).encode_to_vec();
    let at = bytes.windows(11).position(|w| w == b"INVALIDUTF8").unwrap();
    bytes[at] = 0xff;
    bytes[at + 1] = 0xfe;
    check_refused(&h, "invalid utf-8 protobuf", PROTOBUF, false, bytes, 400).await;

    // Invalid UTF-8 in a JSON body.
    let mut json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"XX"}]}]}]}"#.to_vec();
    let at = json.windows(2).position(|w| w == b"XX").unwrap();
    json[at] = 0xc3;
    json[at + 1] = 0x28;
    check_refused(
        &h,
        "invalid utf-8 json",
        "application/json",
        false,
        json,
        400,
    )
    .await;

    // JSON that is not OTLP.
    check_refused(
        &h,
        "wrong json",
        "application/json",
        false,
        br#"{"resourceSpans": 5}"#.to_vec(),
        400,
    )
    .await;

    // Deeply nested AnyValue, past the decoders' recursion limits.
    let deep = request(
        "deep",
        vec![KeyValue {
            key: "deep".into(),
            value: Some(nested(500)),
            ..Default::default()
        }],
    );
    check_refused(
        &h,
        "deep protobuf",
        PROTOBUF,
        false,
        deep.encode_to_vec(),
        400,
    )
    .await;
    let deep_json = serde_json::to_vec(&deep).unwrap();
    check_refused(&h, "deep json", "application/json", false, deep_json, 400).await;

    // Moderate nesting is fine and kept as JSON text.
    let ok = request(
        "nested ok",
        vec![KeyValue {
            key: "n".into(),
            value: Some(nested(3)),
            ..Default::default()
        }],
    );
    let r = h
        .post("/v1/traces", PROTOBUF, false, ok.encode_to_vec())
        .await;
    assert_eq!(r.status(), 200);
    let a = h
        .query("SELECT attributes['n'] AS n FROM spans WHERE span_name = 'nested ok'")
        .await;
    assert_eq!(a.rows[0][0], "[[[1]]]");

    // Every refusal is counted.
    let refused = h
        .metric(r#"homeostat_refused_requests_total{signal="traces",transport="http",reason="bad_request"}"#)
        .await;
    assert_eq!(refused, Some(7.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_refuses_oversized_messages_even_when_compressed() {
    let cap = ByteSize::kib(64);
    let h = start_with(|c| c.ingest.max_request_size = cap).await;
    let mut client = TraceServiceClient::connect(h.otlp_grpc_url())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(request("grpc before", vec![])).await.unwrap();
    // Compresses to almost nothing, inflates past the cap.
    let huge = request(&"a".repeat(4 * cap.as_u64() as usize), vec![]);
    let status = client.export(huge).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    client.export(request("grpc after", vec![])).await.unwrap();
    let names = span_names(&h).await;
    assert_eq!(names, vec!["grpc after", "grpc before"]);
}
