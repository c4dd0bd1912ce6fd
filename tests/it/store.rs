//! The store's time bounds, end to end: a batch mixing 1970, 2262 and now
//! keeps its normal rows (which then leave memory on time, into the
//! archive) and refuses the extreme ones with an OTLP partial success.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use homeostat::config::StoreConfig;
use homeostat::ingest::now_nanos;

use crate::common::start_with;

fn span(i: u64, at: u64) -> Span {
    Span {
        trace_id: vec![i as u8 + 1; 16],
        span_id: (i + 1).to_be_bytes().to_vec(),
        name: format!("at-{i}"),
        start_time_unix_nano: at,
        end_time_unix_nano: at.saturating_add(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_far_in_the_past_or_future_are_refused_and_normal_rows_expire_on_time() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let h = start_with(move |c| {
        // The default bounds (the tests' configuration widens max_age).
        c.store = StoreConfig {
            partition: Duration::from_secs(1),
            retention: Duration::from_secs(2),
            ..StoreConfig::default()
        };
        c.archive.flush_interval = Duration::from_secs(1);
        c.data = dir;
    })
    .await;
    let now = now_nanos() as u64;
    // 1970, a normal row, the year 2262, another normal row.
    let spans = vec![
        span(0, 1),
        span(1, now - 500_000_000),
        span(2, i64::MAX as u64 - 10),
        span(3, now),
    ];
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = h
        .post(
            "/v1/traces",
            "application/x-protobuf",
            false,
            request.encode_to_vec(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_spans, 2, "{partial:?}");
    assert!(
        partial.error_message.contains("2 rows") && partial.error_message.contains("max_age"),
        "{}",
        partial.error_message
    );
    assert_eq!(h.count("SELECT count(*) FROM spans").await, 2);

    // The normal rows leave memory once archived and past the retention,
    // and stay queryable from the archive.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = h
            .metric(r#"homeostat_store_rows{table="spans"}"#)
            .await
            .unwrap_or(0.0);
        if held == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{held} rows still in memory");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        h.metric(r#"homeostat_expired_rows_total{table="spans"}"#)
            .await,
        Some(2.0)
    );
    let names = h
        .query("SELECT span_name FROM spans ORDER BY span_name")
        .await
        .rows;
    assert_eq!(names, [["at-1"], ["at-3"]]);
    assert_eq!(
        h.metric(r#"homeostat_rejected_items_total{signal="traces",transport="http"}"#)
            .await,
        Some(2.0)
    );
}
