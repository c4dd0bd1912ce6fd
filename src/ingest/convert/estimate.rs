//! How much Arrow memory converting a request will take, known before
//! converting it: the converters copy each resource's attributes, its scope
//! and (for metrics) the metric's name, description and unit into every
//! row, so a small request can expand a thousandfold. The ingester reserves
//! this much of the memory budget first; a request that would not fit is
//! refused before anything is allocated.
//!
//! The estimate counts, per row, the encoded size of what the row holds and
//! of what is copied into it (text in Arrow takes about what it took on the
//! wire, plus offsets and builder slack), and a fixed part for the
//! fixed-width columns.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;

/// Bytes of fixed-width columns, validity and offsets per row.
const ROW: u64 = 256;
/// Arrow bytes per byte of text: values, offsets and builders' slack.
const TEXT: u64 = 2;

fn row(own: usize, copied: usize) -> u64 {
    ROW + TEXT * (own + copied) as u64
}

/// Spans: each span, its resource and scope.
pub fn spans(request: &ExportTraceServiceRequest) -> u64 {
    let mut total = 0;
    for rs in &request.resource_spans {
        let resource = rs.resource.as_ref().map_or(0, |r| r.encoded_len());
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref().map_or(0, |s| s.encoded_len());
            for span in &ss.spans {
                total += row(span.encoded_len(), resource + scope);
            }
        }
    }
    total
}

/// Metrics: each data point, its metric's name, description, unit and
/// metadata, its resource and scope.
pub fn metrics(request: &ExportMetricsServiceRequest) -> u64 {
    let mut total = 0;
    for rm in &request.resource_metrics {
        let resource = rm.resource.as_ref().map_or(0, |r| r.encoded_len());
        for sm in &rm.scope_metrics {
            let scope = sm.scope.as_ref().map_or(0, |s| s.encoded_len());
            for m in &sm.metrics {
                let header = m.name.len()
                    + m.description.len()
                    + m.unit.len()
                    + m.metadata.iter().map(|kv| kv.encoded_len()).sum::<usize>();
                let copied = header + resource + scope;
                let points: Vec<usize> = match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.iter().map(|p| p.encoded_len()).collect(),
                    Some(Data::Sum(s)) => s.data_points.iter().map(|p| p.encoded_len()).collect(),
                    Some(Data::Histogram(h)) => {
                        h.data_points.iter().map(|p| p.encoded_len()).collect()
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        h.data_points.iter().map(|p| p.encoded_len()).collect()
                    }
                    Some(Data::Summary(s)) => {
                        s.data_points.iter().map(|p| p.encoded_len()).collect()
                    }
                    None => Vec::new(),
                };
                total += points.into_iter().map(|own| row(own, copied)).sum::<u64>();
            }
        }
    }
    total
}

/// Log records: each record, its resource and scope.
pub fn logs(request: &ExportLogsServiceRequest) -> u64 {
    let mut total = 0;
    for rl in &request.resource_logs {
        let resource = rl.resource.as_ref().map_or(0, |r| r.encoded_len());
        for sl in &rl.scope_logs {
            let scope = sl.scope.as_ref().map_or(0, |s| s.encoded_len());
            for record in &sl.log_records {
                total += row(record.encoded_len(), resource + scope);
            }
        }
    }
    total
}
