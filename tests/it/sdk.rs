//! The real OpenTelemetry Python SDK against Homeostat, over OTLP/gRPC and
//! OTLP/HTTP: `tests/sdk/send.py` sends traces, metrics and logs and writes
//! a manifest of exactly what the SDK sent; these tests read the `spans`,
//! `metrics` and `logs` tables back through the SQL API and compare every
//! column of every row with the manifest.
//!
//! Every column a query returns must be checked: a new column fails the test
//! until it is compared here too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, Answer, Instance};

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_over_grpc_is_stored_field_by_field() {
    let instance = common::start().await;
    let endpoint = instance.otlp_grpc_url();
    round_trip(&instance, "grpc", &endpoint, "sdk-test-grpc").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_over_http_is_stored_field_by_field() {
    let instance = common::start().await;
    let endpoint = instance.otlp_http_url("");
    round_trip(&instance, "http", &endpoint, "sdk-test-http").await;
}

async fn round_trip(instance: &Instance, protocol: &str, endpoint: &str, service: &str) {
    let manifest = send(protocol, endpoint, service).await;
    assert_eq!(manifest["protocol"], protocol);
    assert_eq!(manifest["service"], service);
    for signal in ["traces", "metrics", "logs"] {
        let n = manifest["exports"][signal].as_u64().expect("export count");
        assert!(n >= 1, "send.py made no {signal} export");
    }
    check_spans(instance, service, &manifest).await;
    check_metrics(instance, service, &manifest).await;
    check_logs(instance, service, &manifest).await;
}

/// Runs `send.py` and returns its manifest. The script exits only after
/// every provider is flushed and shut down, and Homeostat stores data before
/// answering an export, so everything is queryable when this returns.
async fn send(protocol: &str, endpoint: &str, service: &str) -> Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("manifest.json");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/send.py");
    let run = tokio::process::Command::new(common::python())
        .arg(&script)
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--service",
            service,
        ])
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("send.py finishes within 2 minutes")
        .expect("send.py starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "send.py --protocol {protocol} failed ({}):\n--- stderr ---\n{stderr}\n--- stdout ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
    );
    let text = std::fs::read(&out).expect("send.py writes its manifest");
    serde_json::from_slice(&text).expect("the manifest is JSON")
}

// ---------------------------------------------------------------------------
// Traces

async fn check_spans(instance: &Instance, service: &str, manifest: &Value) {
    let expected = manifest["spans"].as_array().expect("spans");
    assert_eq!(expected.len(), 4, "send.py sends four spans");
    let answer = instance
        .query(&format!(
            "SELECT *, CAST(start_time AS BIGINT) AS start_ns, CAST(end_time AS BIGINT) AS end_ns \
             FROM spans WHERE service_name = '{service}' ORDER BY start_time"
        ))
        .await;
    let mut rows = rows(&answer, "span_id");
    let stored_ids: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    let sent_ids: BTreeSet<&str> = expected
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    assert_eq!(stored_ids, sent_ids, "stored span ids");
    assert_eq!(
        answer.rows.len(),
        expected.len(),
        "one row per span, no duplicates"
    );

    for want in expected {
        let id = want["span_id"].as_str().unwrap();
        let mut row = rows.remove(id).unwrap();
        let what = format!("span {:?} ({id})", want["name"]);
        row.what = what.clone();

        let start_ns = want["start_time_ns"].as_i64().expect("start time");
        let end_ns = want["end_time_ns"].as_i64().expect("end time");
        row.eq("start_ns", Value::from(start_ns));
        row.eq("end_ns", Value::from(end_ns));
        row.time("start_time", Some(start_ns));
        row.time("end_time", Some(end_ns));
        row.eq("duration_ns", Value::from(end_ns - start_ns));
        row.eq("trace_id", want["trace_id"].clone());
        row.eq("span_id", want["span_id"].clone());
        row.eq("parent_span_id", want["parent_span_id"].clone());
        row.eq("trace_state", want["trace_state"].clone());
        row.eq("flags", want["flags"].clone());
        row.eq("service_name", Value::from(service));
        row.eq("span_name", want["name"].clone());
        row.eq("span_kind", want["kind"].clone());
        row.eq("status_code", want["status_code"].clone());
        row.eq("status_message", want["status_message"].clone());
        row.attributes("attributes", &want["attributes"]);
        row.attributes("resource_attributes", &want["resource"]);
        row.eq("scope_name", want["scope_name"].clone());
        row.eq("scope_version", want["scope_version"].clone());
        row.eq(
            "dropped_attributes_count",
            want["dropped_attributes_count"].clone(),
        );
        row.eq("dropped_events_count", want["dropped_events_count"].clone());
        row.eq("dropped_links_count", want["dropped_links_count"].clone());

        let events = row.take("events");
        let events = events
            .as_array()
            .unwrap_or_else(|| panic!("{what}: events is a list"));
        let want_events = want["events"].as_array().unwrap();
        assert_eq!(events.len(), want_events.len(), "{what}: number of events");
        for (i, (got, want)) in events.iter().zip(want_events).enumerate() {
            let what = format!("{what} event {i}");
            let mut got = Struct::new(&what, got, &["time", "name", "attributes"]);
            got.time("time", want["time_ns"].as_i64());
            got.eq("name", want["name"].clone());
            got.attributes("attributes", &want["attributes"]);
        }

        let links = row.take("links");
        let links = links
            .as_array()
            .unwrap_or_else(|| panic!("{what}: links is a list"));
        let want_links = want["links"].as_array().unwrap();
        assert_eq!(links.len(), want_links.len(), "{what}: number of links");
        for (i, (got, want)) in links.iter().zip(want_links).enumerate() {
            let what = format!("{what} link {i}");
            let mut got = Struct::new(
                &what,
                got,
                &["trace_id", "span_id", "trace_state", "flags", "attributes"],
            );
            got.eq("trace_id", want["trace_id"].clone());
            got.eq("span_id", want["span_id"].clone());
            got.eq("trace_state", want["trace_state"].clone());
            got.eq("flags", want["flags"].clone());
            got.attributes("attributes", &want["attributes"]);
        }
        row.finish();
    }

    // What send.py meant to send, independently of the manifest.
    let by_name = |name: &str| -> &Value {
        expected
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name:?} in the manifest"))
    };
    let server = by_name("GET /checkout");
    let client = by_name("POST /payments");
    let internal = by_name("validate card");
    let producer = by_name("publish order.created");
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(client["kind"], "CLIENT");
    assert_eq!(internal["kind"], "INTERNAL");
    assert_eq!(producer["kind"], "PRODUCER");
    assert_eq!(server["status_code"], "OK");
    assert_eq!(client["status_code"], "ERROR");
    assert_eq!(client["status_message"], "payment gateway returned 503");
    assert_eq!(client["links"][0]["span_id"], producer["span_id"]);
    assert_eq!(
        producer["trace_state"],
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    let attrs = expected_attributes(&server["attributes"]);
    for (key, text) in [
        ("http.response.status_code", "200"),
        ("int.negative.beyond.f64", "-9007199254740993"),
        ("server.load.ratio", "0.25"),
        ("float.whole", "3"),
        ("float.huge", "1000000000000000000000"),
        ("float.tiny", "0.00000015"),
        ("cache.hit", "true"),
        (
            "feature.flags",
            r#"["dark-mode","a,b","quote\"d","ünïcødé ✓"]"#,
        ),
        ("retry.delays.ms", "[1,20,300]"),
        ("float.list", "[0.5,2]"),
        ("bool.list", "[true,false]"),
        ("empty.string", ""),
    ] {
        assert_eq!(attrs[key].as_deref(), Some(text), "expected text of {key}");
    }
    let resource = expected_attributes(&server["resource"]);
    assert_eq!(resource["service.name"].as_deref(), Some(service));
    assert_eq!(resource["host.cpu.count"].as_deref(), Some("8"));
    assert_eq!(resource["process.load"].as_deref(), Some("0.125"));
    assert_eq!(resource["feature.enabled"].as_deref(), Some("true"));

    // Numbers stored as text compare as numbers once cast: as text, "90" >
    // "100" too, and both spans would match.
    let q = |condition: &str| {
        format!(
            "SELECT span_name FROM spans WHERE service_name = '{service}' AND {condition} \
             ORDER BY span_name"
        )
    };
    let numeric = instance
        .query(&q(
            "CAST(attributes['http.request.body.size'] AS BIGINT) > 100",
        ))
        .await;
    assert_eq!(numeric.rows, vec![vec![Value::from("POST /payments")]]);
    let textual = instance
        .query(&q("attributes['http.request.body.size'] > '100'"))
        .await;
    assert_eq!(
        textual.rows.len(),
        2,
        "the text comparison differs: {:?}",
        textual.rows
    );
    let float = instance
        .query(&q("CAST(attributes['server.load.ratio'] AS DOUBLE) = 0.25"))
        .await;
    assert_eq!(float.rows, vec![vec![Value::from("GET /checkout")]]);
    let huge = instance
        .query(&q("CAST(attributes['float.huge'] AS DOUBLE) = 1e21"))
        .await;
    assert_eq!(huge.rows, vec![vec![Value::from("GET /checkout")]]);
    let exact = instance
        .query(&q(
            "CAST(attributes['int.negative.beyond.f64'] AS BIGINT) = -9007199254740993",
        ))
        .await;
    assert_eq!(exact.rows, vec![vec![Value::from("GET /checkout")]]);

    // The tree, by joining parent ids.
    let tree = instance
        .query(&format!(
            "SELECT p.span_kind, c.span_kind FROM spans p JOIN spans c \
             ON c.parent_span_id = p.span_id AND c.trace_id = p.trace_id \
             WHERE p.service_name = '{service}' AND c.service_name = '{service}' \
             ORDER BY p.start_time"
        ))
        .await;
    assert_eq!(
        tree.rows,
        vec![
            vec![Value::from("SERVER"), Value::from("CLIENT")],
            vec![Value::from("CLIENT"), Value::from("INTERNAL")],
        ]
    );
}

// ---------------------------------------------------------------------------
// Metrics

const METRIC_COLUMNS_ONLY_FOR: &[(&str, &[&str])] = &[
    ("value", &["sum", "gauge"]),
    ("count", &["histogram", "exponential_histogram"]),
    ("sum", &["histogram", "exponential_histogram"]),
    ("min", &["histogram", "exponential_histogram"]),
    ("max", &["histogram", "exponential_histogram"]),
    ("bucket_counts", &["histogram"]),
    ("explicit_bounds", &["histogram"]),
    ("scale", &["exponential_histogram"]),
    ("zero_count", &["exponential_histogram"]),
    ("zero_threshold", &["exponential_histogram"]),
    ("positive_offset", &["exponential_histogram"]),
    ("positive_bucket_counts", &["exponential_histogram"]),
    ("negative_offset", &["exponential_histogram"]),
    ("negative_bucket_counts", &["exponential_histogram"]),
];

async fn check_metrics(instance: &Instance, service: &str, manifest: &Value) {
    let points = manifest["metrics"].as_array().expect("metrics");
    let exports = manifest["exports"]["metrics"].as_u64().unwrap();
    let answer = instance
        .query(&format!(
            "SELECT *, CAST(time AS BIGINT) AS time_ns, CAST(start_time AS BIGINT) AS start_ns \
             FROM metrics WHERE service_name = '{service}'"
        ))
        .await;
    assert_eq!(
        answer.rows.len(),
        points.len(),
        "one row per data point sent"
    );

    // Series: metric name and attributes; each export of cumulative data
    // repeats every series, so rows and points are compared in time order.
    let mut stored: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in all_rows(&answer) {
        let name = row.values["metric_name"]
            .as_str()
            .expect("metric_name")
            .to_owned();
        let key = format!("{name} {:?}", stored_attributes(&row.values["attributes"]));
        stored.entry(key).or_default().push(row);
    }
    let mut sent: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in points {
        let key = format!(
            "{} {:?}",
            p["name"].as_str().unwrap(),
            expected_attributes(&p["attributes"])
        );
        sent.entry(key).or_default().push(p);
    }
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "series"
    );
    assert_eq!(sent.len(), 6, "six series: {:?}", sent.keys());

    for (key, mut rows) in stored {
        let mut want = sent.remove(&key).unwrap();
        assert_eq!(rows.len(), want.len(), "{key}: rows, one per export");
        assert_eq!(
            want.len() as u64,
            exports,
            "{key}: every export carries every series"
        );
        rows.sort_by_key(|r| r.values["time_ns"].as_i64().expect("time"));
        want.sort_by_key(|p| p["time_ns"].as_i64().unwrap());
        for (i, (mut row, want)) in rows.into_iter().zip(want).enumerate() {
            row.what = format!("{key} point {i}");
            check_metric_row(&mut row, want, service);
            row.finish();
        }
    }

    // What send.py recorded, independently of the manifest: the latest
    // cumulative point of each series.
    let latest = |metric: &str, columns: &str, filter: &str| {
        format!(
            "SELECT {columns} FROM metrics WHERE service_name = '{service}' \
             AND metric_name = '{metric}' {filter} ORDER BY time DESC LIMIT 1"
        )
    };
    let requests = |route: &str| {
        latest(
            "sdk_test.requests",
            "value",
            &format!("AND attributes['http.route'] = '{route}'"),
        )
    };
    assert_eq!(
        instance.query(&requests("/checkout")).await.rows,
        vec![vec![Value::from(7.0)]]
    );
    assert_eq!(
        instance.query(&requests("/cart")).await.rows,
        vec![vec![Value::from(1.0)]]
    );
    let sums = instance
        .query(&latest(
            "sdk_test.requests",
            "metric_type, is_monotonic, temporality",
            "",
        ))
        .await;
    assert_eq!(
        sums.rows,
        vec![vec![
            Value::from("sum"),
            Value::from(true),
            Value::from("cumulative")
        ]]
    );
    let updown = instance
        .query(&latest(
            "sdk_test.queue.depth",
            "value, is_monotonic, temporality",
            "",
        ))
        .await;
    assert_eq!(
        updown.rows,
        vec![vec![
            Value::from(7.0),
            Value::from(false),
            Value::from("cumulative")
        ]]
    );
    let gauge = instance
        .query(&latest(
            "sdk_test.temperature",
            "metric_type, value, attributes['room'], unit",
            "",
        ))
        .await;
    assert_eq!(
        gauge.rows,
        vec![vec![
            Value::from("gauge"),
            Value::from(21.5),
            Value::from("lab"),
            Value::from("Cel")
        ]]
    );
    let histogram = instance
        .query(&latest(
            "sdk_test.latency",
            "count, sum, min, max, bucket_counts, explicit_bounds, temporality",
            "",
        ))
        .await;
    assert_eq!(
        histogram.rows,
        vec![vec![
            Value::from(6),
            Value::from(2212.5),
            Value::from(0.0),
            Value::from(2000.0),
            serde_json::json!([1, 2, 1, 1, 1]),
            serde_json::json!([0.0, 10.0, 100.0, 1000.0]),
            Value::from("cumulative"),
        ]]
    );
    let exponential = instance
        .query(&latest(
            "sdk_test.payload.size",
            "metric_type, count, sum, min, max, scale, zero_count, positive_offset, positive_bucket_counts",
            "",
        ))
        .await;
    assert_eq!(
        exponential.rows,
        vec![vec![
            Value::from("exponential_histogram"),
            Value::from(6),
            Value::from(18.0),
            Value::from(0.0),
            Value::from(8.0),
            Value::from(0),
            Value::from(1),
            Value::from(-1),
            serde_json::json!([1, 1, 2, 1]),
        ]]
    );
    // The measurement made inside "validate card" is an exemplar of it.
    let exemplar = instance
        .query(&format!(
            "SELECT DISTINCT s.span_name, m.exemplars[1]['value'] FROM metrics m JOIN spans s \
             ON m.exemplars[1]['span_id'] = s.span_id \
             WHERE m.service_name = '{service}' AND s.service_name = '{service}'"
        ))
        .await;
    assert_eq!(
        exemplar.rows,
        vec![vec![Value::from("validate card"), Value::from(150.0)]]
    );
}

fn check_metric_row(row: &mut Row, want: &Value, service: &str) {
    let what = row.what.clone();
    let kind = want["type"].as_str().expect("metric type");
    let time_ns = want["time_ns"].as_i64().expect("time");
    let start_ns = want["start_time_ns"].as_i64();
    row.eq("time_ns", Value::from(time_ns));
    row.time("time", Some(time_ns));
    row.eq("start_ns", start_ns.map_or(Value::Null, Value::from));
    row.time("start_time", start_ns);
    row.eq("service_name", Value::from(service));
    row.eq("metric_name", want["name"].clone());
    row.eq("metric_description", want["description"].clone());
    row.eq("unit", want["unit"].clone());
    row.eq("metric_type", Value::from(kind));
    row.eq("is_monotonic", want["is_monotonic"].clone());
    let temporality = want["temporality"].as_str().map(str::to_lowercase);
    row.eq("temporality", temporality.map_or(Value::Null, Value::from));
    row.eq("flags", want["flags"].clone());
    row.attributes("attributes", &want["attributes"]);
    row.attributes("resource_attributes", &want["resource"]);
    row.eq("scope_name", want["scope_name"].clone());
    row.eq("scope_version", want["scope_version"].clone());
    row.eq("quantiles", Value::Array(vec![]));

    for (column, kinds) in METRIC_COLUMNS_ONLY_FOR {
        if !kinds.contains(&kind) {
            row.eq(column, Value::Null);
            continue;
        }
        let want_value = &want[*column];
        assert!(
            !want_value.is_null() || ["sum", "min", "max"].contains(column),
            "{what}: manifest lacks {column}"
        );
        match *column {
            // Floats: integers sent as `as_int` are widened to f64.
            "value" | "sum" | "min" | "max" | "zero_threshold" => {
                row.float(column, want_value.as_f64());
            }
            "explicit_bounds" => {
                let got = row.take(column);
                let got: Vec<f64> = got
                    .as_array()
                    .unwrap_or_else(|| panic!("{what}: {column}"))
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let want: Vec<f64> = want_value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(got, want, "{what}: {column}");
            }
            _ => row.eq(column, want_value.clone()),
        }
    }

    let exemplars = row.take("exemplars");
    let exemplars = exemplars
        .as_array()
        .unwrap_or_else(|| panic!("{what}: exemplars is a list"));
    let want_exemplars = want["exemplars"].as_array().unwrap();
    assert_eq!(
        exemplars.len(),
        want_exemplars.len(),
        "{what}: number of exemplars"
    );
    for (i, (got, want)) in exemplars.iter().zip(want_exemplars).enumerate() {
        let what = format!("{what} exemplar {i}");
        let mut got = Struct::new(
            &what,
            got,
            &[
                "time",
                "value",
                "trace_id",
                "span_id",
                "filtered_attributes",
            ],
        );
        got.time("time", want["time_ns"].as_i64());
        got.float("value", want["value"].as_f64());
        got.eq("trace_id", want["trace_id"].clone());
        got.eq("span_id", want["span_id"].clone());
        got.attributes("filtered_attributes", &want["filtered_attributes"]);
    }
}

// ---------------------------------------------------------------------------
// Logs

async fn check_logs(instance: &Instance, service: &str, manifest: &Value) {
    let expected = manifest["logs"].as_array().expect("logs");
    assert_eq!(expected.len(), 3, "send.py sends three log records");
    let answer = instance
        .query(&format!(
            "SELECT *, CAST(time AS BIGINT) AS time_ns, CAST(observed_time AS BIGINT) AS observed_ns \
             FROM logs WHERE service_name = '{service}'"
        ))
        .await;
    assert_eq!(answer.rows.len(), expected.len(), "one row per log record");
    // Each record has its own severity.
    let mut rows = rows(&answer, "severity_number");

    for want in expected {
        let severity = want["severity_number"].as_i64().unwrap();
        let mut row = rows
            .remove(&severity.to_string())
            .unwrap_or_else(|| panic!("no stored log record of severity {severity}"));
        row.what = format!("log record {:?}", want["body"]);
        let observed = want["observed_time_ns"].as_i64();
        // A record without a time of its own is placed at its observed time.
        let time = want["time_ns"].as_i64().or(observed).expect("a time");
        row.eq("time_ns", Value::from(time));
        row.time("time", Some(time));
        row.eq("observed_ns", observed.map_or(Value::Null, Value::from));
        row.time("observed_time", observed);
        row.eq("severity_number", want["severity_number"].clone());
        row.eq("severity_text", want["severity_text"].clone());
        row.eq(
            "body",
            expected_text(&want["body"]).map_or(Value::Null, Value::from),
        );
        row.eq("trace_id", want["trace_id"].clone());
        row.eq("span_id", want["span_id"].clone());
        row.eq("flags", want["flags"].clone());
        row.eq("event_name", want["event_name"].clone());
        row.eq("service_name", Value::from(service));
        row.attributes("attributes", &want["attributes"]);
        row.attributes("resource_attributes", &want["resource"]);
        row.eq("scope_name", want["scope_name"].clone());
        row.eq("scope_version", want["scope_version"].clone());
        row.eq(
            "dropped_attributes_count",
            want["dropped_attributes_count"].clone(),
        );
        row.finish();
    }

    // What send.py meant to send, independently of the manifest.
    let by_severity = |text: &str| {
        expected
            .iter()
            .find(|r| r["severity_text"] == text)
            .unwrap_or_else(|| panic!("no {text} record in the manifest"))
    };
    let warn = by_severity("WARN");
    let internal = manifest["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "validate card")
        .unwrap();
    assert_eq!(
        warn["trace_id"], internal["trace_id"],
        "the WARN record is inside the span"
    );
    assert_eq!(warn["span_id"], internal["span_id"]);
    let attrs = expected_attributes(&warn["attributes"]);
    assert_eq!(attrs["payload"].as_deref(), Some("AP8="));
    assert_eq!(
        attrs["user"].as_deref(),
        Some(r#"{"id":7,"roles":["admin","dev"]}"#)
    );
    assert_eq!(attrs["attempts"].as_deref(), Some("[1,2]"));
    let error = by_severity("ERROR");
    assert_eq!(error["severity_number"], 17);
    assert_eq!(error["trace_id"], Value::Null);
    assert_eq!(error["body"]["string"], "payment failed for order A-17");
    let info = by_severity("INFO");
    assert_eq!(
        info["time_ns"],
        Value::Null,
        "sent without a time of its own"
    );
    assert_eq!(
        expected_text(&info["body"]).as_deref(),
        Some(r#"{"event":"checkout","items":[1,2],"ok":true,"ratio":0.5,"nested":{"k":"v"}}"#)
    );

    // Logs join spans by id.
    let joined = instance
        .query(&format!(
            "SELECT s.span_name, l.severity_text FROM logs l JOIN spans s \
             ON l.trace_id = s.trace_id AND l.span_id = s.span_id \
             WHERE l.service_name = '{service}' AND s.service_name = '{service}'"
        ))
        .await;
    assert_eq!(
        joined.rows,
        vec![vec![Value::from("validate card"), Value::from("WARN")]]
    );
    let amount = instance
        .query(&format!(
            "SELECT severity_text FROM logs WHERE service_name = '{service}' \
             AND CAST(attributes['amount'] AS DOUBLE) > 12.25"
        ))
        .await;
    assert_eq!(amount.rows, vec![vec![Value::from("ERROR")]]);
}

// ---------------------------------------------------------------------------
// Rows and comparisons

/// One stored row as column → value. Each check takes its column out, and
/// [`Row::finish`] fails if any column was left unchecked.
struct Row {
    what: String,
    values: BTreeMap<String, Value>,
}

fn all_rows(answer: &Answer) -> Vec<Row> {
    answer
        .rows
        .iter()
        .map(|r| Row {
            what: String::new(),
            values: answer
                .columns
                .iter()
                .cloned()
                .zip(r.iter().cloned())
                .collect(),
        })
        .collect()
}

/// Rows by the text of a unique column.
fn rows(answer: &Answer, key: &str) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for row in all_rows(answer) {
        let k = match &row.values[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert!(
            out.insert(k.clone(), row).is_none(),
            "{key} {k} is stored twice"
        );
    }
    out
}

impl Row {
    fn take(&mut self, column: &str) -> Value {
        self.values
            .remove(column)
            .unwrap_or_else(|| panic!("{}: no column {column}, or it was checked twice", self.what))
    }

    fn eq(&mut self, column: &str, want: Value) {
        let got = self.take(column);
        assert_eq!(got, want, "{}: {column}", self.what);
    }

    fn float(&mut self, column: &str, want: Option<f64>) {
        let got = self.take(column);
        assert_eq!(got.as_f64(), want, "{}: {column} (stored {got})", self.what);
        assert!(
            want.is_some() || got.is_null(),
            "{}: {column} (stored {got})",
            self.what
        );
    }

    fn time(&mut self, column: &str, want: Option<i64>) {
        let got = self.take(column);
        assert_eq!(
            rendered_time(&got),
            want,
            "{}: {column} (stored {got})",
            self.what
        );
    }

    fn attributes(&mut self, column: &str, want: &Value) {
        let got = self.take(column);
        assert_eq!(
            stored_attributes(&got),
            expected_attributes(want),
            "{}: {column}",
            self.what
        );
    }

    fn finish(self) {
        assert!(
            self.values.is_empty(),
            "{}: columns the test does not check: {:?}",
            self.what,
            self.values.keys().collect::<Vec<_>>()
        );
    }
}

/// An element of a list-of-struct column. Null fields are left out of the
/// JSON, so a missing field reads as null; unknown fields fail.
struct Struct {
    row: Row,
}

impl Struct {
    fn new(what: &str, value: &Value, fields: &[&str]) -> Self {
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("{what}: a struct, got {value}"));
        for key in object.keys() {
            assert!(
                fields.contains(&key.as_str()),
                "{what}: unexpected field {key}"
            );
        }
        let values = fields
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    object.get(*f).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        Self {
            row: Row {
                what: what.to_owned(),
                values,
            },
        }
    }
}

impl std::ops::Deref for Struct {
    type Target = Row;
    fn deref(&self) -> &Row {
        &self.row
    }
}

impl std::ops::DerefMut for Struct {
    fn deref_mut(&mut self) -> &mut Row {
        &mut self.row
    }
}

impl Drop for Struct {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let row = std::mem::replace(
                &mut self.row,
                Row {
                    what: String::new(),
                    values: BTreeMap::new(),
                },
            );
            row.finish();
        }
    }
}

/// A stored attribute map: JSON object of text values (or nulls).
fn stored_attributes(value: &Value) -> BTreeMap<String, Option<String>> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an attribute map, got {value}"))
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => panic!("attribute {k}: stored as text, got {other}"),
            };
            (k.clone(), text)
        })
        .collect()
}

/// The manifest's attributes (tagged values) as Homeostat documents storing
/// them: text, with non-strings in their canonical text form.
fn expected_attributes(value: &Value) -> BTreeMap<String, Option<String>> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("manifest attributes, got {value}"))
        .iter()
        .map(|(k, v)| (k.clone(), expected_text(v)))
        .collect()
}

/// The text Homeostat stores for a value: strings as they are, integers and
/// doubles in their shortest round-trip decimal form (Rust's `Display`),
/// booleans as `true`/`false`, bytes as standard base64, arrays and maps as
/// compact JSON. `None` for an empty value.
fn expected_text(tagged: &Value) -> Option<String> {
    if tagged.is_null() {
        return None;
    }
    let (tag, inner) = tag_of(tagged);
    Some(match tag {
        "string" => inner.as_str().expect("a string").to_owned(),
        "int" => inner.as_i64().expect("an integer").to_string(),
        "double" => inner.as_f64().expect("a double").to_string(),
        "bool" => inner.as_bool().expect("a boolean").to_string(),
        "bytes" => inner.as_str().expect("base64 text").to_owned(),
        "array" | "kvlist" => {
            let mut out = String::new();
            expected_json(tagged, &mut out);
            serde_json::from_str::<Value>(&out).expect("the expected text is JSON");
            out
        }
        other => panic!("unknown value tag {other}"),
    })
}

fn expected_json(tagged: &Value, out: &mut String) {
    if tagged.is_null() {
        out.push_str("null");
        return;
    }
    let (tag, inner) = tag_of(tagged);
    match tag {
        "string" => out.push_str(&serde_json::to_string(inner).unwrap()),
        "double" => {
            let d = inner.as_f64().unwrap();
            if d.is_finite() {
                write!(out, "{d}").unwrap();
            } else {
                write!(out, "\"{d}\"").unwrap();
            }
        }
        "bytes" => write!(out, "\"{}\"", inner.as_str().unwrap()).unwrap(),
        "int" | "bool" => out.push_str(&expected_text(tagged).unwrap()),
        "array" => {
            out.push('[');
            for (i, v) in inner.as_array().unwrap().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                expected_json(v, out);
            }
            out.push(']');
        }
        "kvlist" => {
            out.push('{');
            for (i, pair) in inner.as_array().unwrap().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&pair[0]).unwrap());
                out.push(':');
                expected_json(&pair[1], out);
            }
            out.push('}');
        }
        other => panic!("unknown value tag {other}"),
    }
}

fn tag_of(tagged: &Value) -> (&str, &Value) {
    let object = tagged
        .as_object()
        .unwrap_or_else(|| panic!("a tagged value, got {tagged}"));
    assert_eq!(object.len(), 1, "a tagged value has one tag: {tagged}");
    let (tag, inner) = object.iter().next().unwrap();
    (tag.as_str(), inner)
}

/// Nanoseconds since the epoch of a timestamp as the API renders it
/// (RFC 3339 in UTC), or `None` for null. Exact to the nanosecond.
fn rendered_time(value: &Value) -> Option<i64> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.as_str(),
        other => panic!("a timestamp is rendered as text, got {other}"),
    };
    fn fail(text: &str) -> ! {
        panic!("not an RFC 3339 UTC timestamp: {text:?}")
    }
    let (date, time) = text.split_once('T').unwrap_or_else(|| fail(text));
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))
        .unwrap_or_else(|| fail(text));
    let num = |s: &str| -> i64 {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            fail(text);
        }
        s.parse().unwrap()
    };
    let d: Vec<i64> = date.split('-').map(num).collect();
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms.split(':').map(num).collect();
    if d.len() != 3 || t.len() != 3 || fraction.len() > 9 {
        fail(text);
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        num(&format!("{fraction:0<9}"))
    };
    let days = days_from_civil(d[0], d[1], d[2]);
    Some(((days * 24 + t[0]) * 60 + t[1]) * 60 * 1_000_000_000 + t[2] * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[test]
fn rendered_times_parse_exactly() {
    assert_eq!(rendered_time(&Value::from("1970-01-01T00:00:00Z")), Some(0));
    assert_eq!(
        rendered_time(&Value::from("2023-11-14T22:13:20.123456789Z")),
        Some(1_700_000_000_123_456_789)
    );
    assert_eq!(
        rendered_time(&Value::from("2023-11-14T22:13:20.5+00:00")),
        Some(1_700_000_000_500_000_000)
    );
    assert_eq!(
        rendered_time(&Value::from("2000-03-01T00:00:00.000000001Z")),
        Some(951_868_800_000_000_001)
    );
    assert_eq!(rendered_time(&Value::Null), None);
}

#[test]
fn expected_texts_follow_the_documented_forms() {
    let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    assert_eq!(
        expected_text(&v(r#"{"double": 3.0}"#)).as_deref(),
        Some("3")
    );
    assert_eq!(
        expected_text(&v(r#"{"double": 1e21}"#)).as_deref(),
        Some("1000000000000000000000")
    );
    assert_eq!(
        expected_text(&v(r#"{"int": -9007199254740993}"#)).as_deref(),
        Some("-9007199254740993")
    );
    assert_eq!(
        expected_text(&v(r#"{"kvlist": [["b", {"array": [{"double": 2.0}, null, {"bytes": "AP8="}]}], ["a", {"bool": false}]]}"#)).as_deref(),
        Some(r#"{"b":[2,null,"AP8="],"a":false}"#)
    );
    assert_eq!(expected_text(&Value::Null), None);
}
