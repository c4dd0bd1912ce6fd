//! A rule with one instance per service and the telemetry that fires it
//! for N services: how the dashboard test and bench get N decisions.
//! Included by `tests/it/dashboard.rs` and `benches/dashboard.rs`.

/// One instance per `svc-*` service, each noted in dry-run.
pub const EVERY_SERVICE_RULE: &str = r#"
description = "One instance per service, each noted in dry-run"
every = "500ms"
window = "5m"
sql = """
SELECT service_name, count(*) AS spans,
       sum(CASE WHEN status_code = 'ERROR' THEN 1 ELSE 0 END) AS errors
FROM spans
WHERE service_name LIKE 'svc-%'
GROUP BY service_name
"""

[action]
dry_run = true
max_concurrent = 8
inline = "decide(\"note\", \"seen\"); 1"
"#;

/// One server span for each of `n` services (`svc-0000`...), half of them
/// failed, as an OTLP/JSON trace request stamped `now` (UTC nanoseconds).
pub fn spans_for_services(n: usize, now: i64) -> String {
    let resource_spans: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": format!("svc-{i:04}")}}]},
                "scopeSpans": [{"spans": [{
                    "traceId": format!("{:032x}", i + 1),
                    "spanId": format!("{:016x}", i + 1),
                    "name": "GET /",
                    "kind": 2,
                    "startTimeUnixNano": now.to_string(),
                    "endTimeUnixNano": (now + 1_000_000).to_string(),
                    "status": {"code": if i % 2 == 0 { 2 } else { 1 }}
                }]}]
            })
        })
        .collect();
    serde_json::json!({ "resourceSpans": resource_spans }).to_string()
}
