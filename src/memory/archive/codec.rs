//! Arrow ↔ Parquet: rows split by hour, files encoded off the async
//! threads, files decoded, and the time order a merge writes rows in.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch, TimestampNanosecondArray, UInt32Array};
use arrow::compute::{max, min, take_record_batch};
use arrow::datatypes::{SchemaRef, TimestampNanosecondType};
use arrow::error::ArrowError;
use bytes::Bytes;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{KeyValue, SortingColumn};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::ArchiveError;
use super::layout::Hour;
use crate::ingest::Signal;

pub(super) fn time_column(
    signal: Signal,
    batch: &RecordBatch,
) -> Result<&TimestampNanosecondArray, ArchiveError> {
    let column = signal.time_column();
    batch
        .column_by_name(column)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| ArchiveError::Batch {
            table: signal.table(),
            message: format!("no nanosecond timestamp column {column:?}"),
        })
}

/// The rows of `batches` by UTC hour of the time column.
pub(super) fn split_by_hour(
    signal: Signal,
    batches: Vec<RecordBatch>,
) -> Result<BTreeMap<Hour, Vec<RecordBatch>>, ArchiveError> {
    let mut hours: BTreeMap<Hour, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches {
        let times = time_column(signal, &batch)?;
        let (Some(lo), Some(hi)) = (min(times), max(times)) else {
            continue;
        };
        if Hour::of(lo) == Hour::of(hi) {
            hours.entry(Hour::of(lo)).or_default().push(batch);
            continue;
        }
        let mut rows: BTreeMap<Hour, Vec<u32>> = BTreeMap::new();
        for (i, t) in times.iter().enumerate() {
            // The time column is not nullable; a null row goes with the first hour.
            rows.entry(Hour::of(t.unwrap_or(lo)))
                .or_default()
                .push(i as u32);
        }
        for (hour, indices) in rows {
            let part = take_record_batch(&batch, &UInt32Array::from(indices)).map_err(|e| {
                ArchiveError::Batch {
                    table: signal.table(),
                    message: e.to_string(),
                }
            })?;
            hours.entry(hour).or_default().push(part);
        }
    }
    Ok(hours)
}

/// Every row as `(time, batch, row)`, sorted by time (ties in input order).
pub(super) fn time_order(
    signal: Signal,
    batches: &[RecordBatch],
) -> Result<Vec<(i64, usize, usize)>, ArchiveError> {
    let mut order = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (b, batch) in batches.iter().enumerate() {
        let times = time_column(signal, batch)?;
        order.extend(times.values().iter().enumerate().map(|(r, t)| (*t, b, r)));
    }
    order.sort_unstable();
    Ok(order)
}

/// Merged files declare their sort order: the time column, ascending.
pub(super) fn sorting_column(signal: Signal, schema: &SchemaRef) -> Option<Vec<SortingColumn>> {
    let parquet = ArrowSchemaConverter::new().convert(schema).ok()?;
    let column_idx = parquet
        .columns()
        .iter()
        .position(|c| c.path().parts() == [signal.time_column()])?;
    Some(vec![SortingColumn {
        column_idx: i32::try_from(column_idx).ok()?,
        descending: false,
        nulls_first: false,
    }])
}

/// Encodes one Parquet file off the async threads: `fill` writes the rows.
pub(super) async fn encode_blocking(
    path: String,
    schema: SchemaRef,
    metadata: Vec<KeyValue>,
    sorting: Option<Vec<SortingColumn>>,
    fill: impl FnOnce(&mut ArrowWriter<Vec<u8>>) -> Result<(), ParquetError> + Send + 'static,
) -> Result<Bytes, ArchiveError> {
    let encoded = tokio::task::spawn_blocking(move || {
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_key_value_metadata(Some(metadata))
            .set_sorting_columns(sorting)
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties))?;
        fill(&mut writer)?;
        writer.into_inner().map(Bytes::from)
    })
    .await
    .unwrap_or_else(|e| {
        Err(ParquetError::General(format!(
            "the encoding task failed: {e}"
        )))
    });
    encoded.map_err(|source| ArchiveError::Encode { path, source })
}

/// Decodes whole files (path, bytes) into batches.
pub(super) fn decode_files(files: Vec<(String, Bytes)>) -> Result<Vec<RecordBatch>, ArchiveError> {
    let mut batches = Vec::new();
    for (path, bytes) in files {
        let decode = |source| ArchiveError::Decode {
            path: path.clone(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(decode)?;
        for batch in reader {
            batches.push(batch.map_err(|e: ArrowError| decode(e.into()))?);
        }
    }
    Ok(batches)
}
