//! Hand-written OTLP/JSON requests exercising the encoding's quirks: hex ids,
//! integer enums, 64-bit integers as strings or numbers, unknown fields.

use serde_json::{Value, json};

use crate::common::{gzip, start};

const JSON: &str = "application/json";

fn trace_request() -> Value {
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "json-quirks"}},
                    {"key": "host.cpus", "value": {"intValue": 8}}
                ],
                "someFutureField": {"nested": true}
            },
            "scopeSpans": [{
                "scope": {"name": "quirk-lib", "version": "1.2.3"},
                "spans": [{
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "eee19b7ec3c1b174",
                    "parentSpanId": "",
                    "name": "GET /cart",
                    "kind": 2,
                    "startTimeUnixNano": "1700000000000000001",
                    "endTimeUnixNano": 1700000000250000000u64,
                    "attributes": [
                        {"key": "http.status_code", "value": {"intValue": "503"}},
                        {"key": "retries", "value": {"intValue": 3}},
                        {"key": "ratio", "value": {"doubleValue": 0.25}},
                        {"key": "cached", "value": {"boolValue": false}},
                        {"key": "tags", "value": {"arrayValue": {"values": [
                            {"stringValue": "a"}, {"intValue": "7"}
                        ]}}},
                        {"key": "payload", "value": {"bytesValue": "AP8="}},
                        {"key": "future", "value": {"stringValue": "kept", "unknownKind": 1}}
                    ],
                    "events": [{
                        "timeUnixNano": "1700000000100000000",
                        "name": "retry",
                        "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]
                    }],
                    "status": {"code": 2, "message": "upstream unavailable"},
                    "unknownSpanField": [1, 2, 3]
                }]
            }]
        }]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn json_quirks_are_decoded_faithfully() {
    let h = start().await;
    let response = h
        .post(
            "/v1/traces",
            JSON,
            false,
            trace_request().to_string().into_bytes(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], JSON);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.get("partialSuccess").is_none_or(Value::is_null),
        "full success has no partial success: {body}"
    );

    let a = h
        .query(
            "SELECT trace_id, span_id, parent_span_id, span_kind, status_code, status_message,
                    CAST(start_time AS BIGINT) AS start_ns, duration_ns, attributes,
                    resource_attributes, scope_name, scope_version, events
             FROM spans WHERE service_name = 'json-quirks'",
        )
        .await;
    assert_eq!(a.rows.len(), 1);
    assert_eq!(a.get(0, "trace_id"), "5b8efff798038103d269b633813fc60c");
    assert_eq!(a.get(0, "span_id"), "eee19b7ec3c1b174");
    assert_eq!(a.get(0, "parent_span_id"), &Value::Null);
    assert_eq!(a.get(0, "span_kind"), "SERVER");
    assert_eq!(a.get(0, "status_code"), "ERROR");
    assert_eq!(a.get(0, "status_message"), "upstream unavailable");
    assert_eq!(a.get(0, "start_ns"), 1_700_000_000_000_000_001i64);
    assert_eq!(a.get(0, "duration_ns"), 249_999_999);
    assert_eq!(
        a.get(0, "attributes"),
        &json!({
            "http.status_code": "503",
            "retries": "3",
            "ratio": "0.25",
            "cached": "false",
            "tags": "[\"a\",7]",
            "payload": "AP8=",
            "future": "kept"
        })
    );
    assert_eq!(
        a.get(0, "resource_attributes"),
        &json!({"service.name": "json-quirks", "host.cpus": "8"})
    );
    assert_eq!(a.get(0, "scope_name"), "quirk-lib");
    assert_eq!(a.get(0, "scope_version"), "1.2.3");
    let events = a.get(0, "events");
    assert_eq!(events[0]["name"], "retry");
    assert_eq!(events[0]["attributes"], json!({"attempt": "2"}));

    // Text attributes compare as numbers once cast.
    let n = h
        .count(
            "SELECT count(*) FROM spans
             WHERE CAST(attributes['http.status_code'] AS BIGINT) >= 500
               AND CAST(attributes['ratio'] AS DOUBLE) < 0.5",
        )
        .await;
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_metrics_accept_64_bit_integers_as_strings_and_numbers() {
    let h = start().await;
    let request = json!({
        "resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-metrics"}}]},
            "scopeMetrics": [{
                "metrics": [
                    {
                        "name": "requests", "unit": "1",
                        "sum": {
                            "aggregationTemporality": 2, "isMonotonic": true,
                            "dataPoints": [
                                {"timeUnixNano": "1700000000000000000", "startTimeUnixNano": 1690000000000000000u64,
                                 "asInt": "9007199254740993", "attributes": [{"key": "route", "value": {"stringValue": "/a"}}]},
                                {"timeUnixNano": 1700000000000000000u64, "asInt": 42}
                            ]
                        }
                    },
                    {
                        "name": "latency", "unit": "ms",
                        "histogram": {
                            "aggregationTemporality": 1,
                            "dataPoints": [{
                                "timeUnixNano": "1700000000000000000",
                                "count": "6", "sum": 123.5, "min": 1, "max": 90,
                                "bucketCounts": ["1", 2, "3"], "explicitBounds": [10, 50]
                            }]
                        }
                    }
                ]
            }]
        }]
    });
    let response = h
        .post(
            "/v1/metrics",
            JSON,
            true,
            gzip(request.to_string().as_bytes()),
        )
        .await;
    assert_eq!(response.status(), 200);
    let a = h
        .query(
            "SELECT metric_name, metric_type, temporality, is_monotonic, value, count, sum, min, max,
                    bucket_counts, explicit_bounds, attributes, CAST(start_time AS BIGINT) AS start_ns
             FROM metrics WHERE service_name = 'json-metrics' ORDER BY metric_name, value",
        )
        .await;
    assert_eq!(a.rows.len(), 3);
    assert_eq!(a.get(0, "metric_name"), "latency");
    assert_eq!(a.get(0, "metric_type"), "histogram");
    assert_eq!(a.get(0, "temporality"), "delta");
    assert_eq!(a.get(0, "count"), 6);
    assert_eq!(a.get(0, "sum"), 123.5);
    assert_eq!(a.get(0, "min"), 1.0);
    assert_eq!(a.get(0, "max"), 90.0);
    assert_eq!(a.get(0, "bucket_counts"), &json!([1, 2, 3]));
    assert_eq!(a.get(0, "explicit_bounds"), &json!([10.0, 50.0]));
    assert_eq!(a.get(1, "metric_type"), "sum");
    assert_eq!(a.get(1, "temporality"), "cumulative");
    assert_eq!(a.get(1, "is_monotonic"), true);
    assert_eq!(a.get(1, "value"), 42.0);
    assert_eq!(a.get(1, "start_ns"), &Value::Null);
    assert_eq!(
        a.get(2, "value"),
        9007199254740992.0,
        "as_int widened to f64"
    );
    assert_eq!(a.get(2, "attributes"), &json!({"route": "/a"}));
    assert_eq!(a.get(2, "start_ns"), 1_690_000_000_000_000_000i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_keep_bodies_of_every_type() {
    let h = start().await;
    let request = json!({
        "resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-logs"}}]},
            "scopeLogs": [{
                "logRecords": [
                    {"timeUnixNano": "1700000000000000000", "severityNumber": 17, "severityText": "ERROR",
                     "body": {"stringValue": "OOMKilled"}, "traceId": "0102030405060708090a0b0c0d0e0f10",
                     "spanId": "0102030405060708", "attributes": [{"key": "k8s.pod", "value": {"stringValue": "p-1"}}]},
                    {"observedTimeUnixNano": "1700000000000000005", "severityNumber": 9,
                     "body": {"kvlistValue": {"values": [{"key": "msg", "value": {"stringValue": "hi"}}]}}}
                ]
            }]
        }]
    });
    let response = h
        .post("/v1/logs", JSON, false, request.to_string().into_bytes())
        .await;
    assert_eq!(response.status(), 200);
    let a = h
        .query(
            "SELECT severity_number, severity_text, body, trace_id, span_id, attributes,
                    CAST(time AS BIGINT) AS t, CAST(observed_time AS BIGINT) AS o
             FROM logs WHERE service_name = 'json-logs' ORDER BY t",
        )
        .await;
    assert_eq!(a.rows.len(), 2);
    assert_eq!(a.get(0, "severity_number"), 17);
    assert_eq!(a.get(0, "severity_text"), "ERROR");
    assert_eq!(a.get(0, "body"), "OOMKilled");
    assert_eq!(a.get(0, "trace_id"), "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(a.get(0, "span_id"), "0102030405060708");
    assert_eq!(a.get(0, "attributes"), &json!({"k8s.pod": "p-1"}));
    assert_eq!(a.get(0, "o"), &Value::Null);
    assert_eq!(a.get(1, "body"), "{\"msg\":\"hi\"}");
    assert_eq!(
        a.get(1, "t"),
        1_700_000_000_000_000_005i64,
        "time falls back to observed time"
    );
    assert_eq!(a.get(1, "severity_text"), &Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn items_that_cannot_be_stored_are_rejected_alone_with_a_partial_success() {
    let h = start().await;
    let mut request = trace_request();
    let spans = &mut request["resourceSpans"][0]["scopeSpans"][0]["spans"];
    let mut bad = spans[0].clone();
    bad["traceId"] = json!("0102");
    bad["name"] = json!("bad id");
    spans.as_array_mut().unwrap().push(bad);
    let response = h
        .post("/v1/traces", JSON, false, request.to_string().into_bytes())
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let partial = &body["partialSuccess"];
    // OTLP/JSON writes 64-bit integers as strings; accept either spelling.
    let rejected = match &partial["rejectedSpans"] {
        Value::String(s) => s.parse::<i64>().ok(),
        other => other.as_i64(),
    };
    assert_eq!(rejected, Some(1), "{body}");
    assert!(
        partial["errorMessage"]
            .as_str()
            .unwrap()
            .contains("trace_id must be 16 bytes, got 2"),
        "{body}"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM spans WHERE service_name = 'json-quirks'")
            .await,
        1
    );
}
