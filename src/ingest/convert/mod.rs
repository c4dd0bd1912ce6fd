//! Pure functions from OTLP protobuf messages to Arrow record batches, one
//! file per signal. The network layer only decodes and hands over; nothing
//! here does I/O, so the same code serves gRPC, HTTP, tests and benches.
//!
//! Items that cannot be represented (ids of the wrong length, times past
//! 2262) are rejected one by one and counted for OTLP's partial success; the
//! rest of the request is kept.

pub mod common;
pub mod logs;
pub mod metrics;
pub mod spans;

use arrow::array::RecordBatch;

pub use common::Rejections;

/// The rows of one export request, and the items that were rejected.
#[derive(Debug)]
pub struct Converted {
    pub batch: RecordBatch,
    pub rejected: Rejections,
}

#[cfg(test)]
mod tests;
