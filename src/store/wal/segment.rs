//! The on-disk format of the log: segments of framed records.
//!
//! ```text
//! segment:  MAGIC (8 bytes) epoch (u64 LE) frame*
//! frame:    length (u32 LE) crc32 (u32 LE) body
//! body:     lsn (u64 LE) written_at (i64 LE) signal (u8) Arrow IPC stream
//! ```
//!
//! `length` counts the body; the CRC covers it. A segment is named after
//! the first LSN it may hold, `{lsn:020}.wal`. Reading stops at the first
//! frame that is short, fails its CRC, breaks the LSN order or does not
//! decode: that and everything after it is the torn or corrupt tail.

use std::io::Cursor;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::ingest::Signal;

pub(super) const MAGIC: &[u8; 8] = b"HSTWAL01";
pub(super) const HEADER: usize = 16;
const FRAME_HEAD: usize = 8;
const BODY_HEAD: usize = 17;
/// A frame longer than this is taken for garbage, not allocated.
pub(super) const MAX_FRAME: usize = 1 << 30;

pub(super) fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

pub(super) fn header(epoch: u64) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&epoch.to_le_bytes());
    h
}

/// Encodes batches of one signal as an Arrow IPC stream.
pub(super) fn encode(signal: Signal, batches: &[&RecordBatch]) -> Result<Vec<u8>, String> {
    let schema = signal.schema();
    let mut writer =
        StreamWriter::try_new(Vec::new(), &schema).map_err(|e| format!("IPC encoding: {e}"))?;
    for b in batches {
        writer.write(b).map_err(|e| format!("IPC encoding: {e}"))?;
    }
    writer
        .into_inner()
        .map_err(|e| format!("IPC encoding: {e}"))
}

/// The bytes of a frame before its payload: the payload is written after
/// them as it is, not copied into one buffer with them.
pub(super) fn frame_head(
    lsn: u64,
    written_at: i64,
    signal: Signal,
    payload: &[u8],
) -> [u8; FRAME_HEAD + BODY_HEAD] {
    let body_len = BODY_HEAD + payload.len();
    let mut head = [0u8; FRAME_HEAD + BODY_HEAD];
    head[8..16].copy_from_slice(&lsn.to_le_bytes());
    head[16..24].copy_from_slice(&written_at.to_le_bytes());
    head[24] = signal as u8;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[FRAME_HEAD..]);
    crc.update(payload);
    head[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    head
}

/// Appends one frame to `out` (tests).
#[cfg(test)]
pub(super) fn frame(out: &mut Vec<u8>, lsn: u64, written_at: i64, signal: Signal, payload: &[u8]) {
    out.extend_from_slice(&frame_head(lsn, written_at, signal, payload));
    out.extend_from_slice(payload);
}

/// One record read back.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) lsn: u64,
    pub(super) written_at: i64,
    pub(super) signal: Signal,
    pub(super) batches: Vec<RecordBatch>,
}

/// Where and why reading a segment stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cut {
    /// Offset of the first bad frame: the segment is valid up to here.
    pub(super) offset: u64,
    pub(super) reason: String,
}

/// What a segment holds: its epoch, its good records (from `from_lsn` on;
/// earlier ones are skipped without decoding) and where it went bad.
pub(super) struct Read {
    pub(super) epoch: Option<u64>,
    pub(super) records: Vec<Record>,
    /// The last LSN seen, decoded or skipped.
    pub(super) last_lsn: Option<u64>,
    pub(super) cut: Option<Cut>,
}

/// Parses a whole segment. `expect_lsn` is the LSN the first frame should
/// carry at least (frames must increase).
pub(super) fn read(bytes: &[u8], from_lsn: u64) -> Read {
    let mut read = Read {
        epoch: None,
        records: Vec::new(),
        last_lsn: None,
        cut: None,
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        read.cut = Some(Cut {
            offset: 0,
            reason: "not a log segment (bad or missing header)".into(),
        });
        return read;
    }
    read.epoch = Some(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    ));
    let mut at = HEADER;
    while at < bytes.len() {
        let cut = |reason: String| Cut {
            offset: at as u64,
            reason,
        };
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEAD {
            read.cut = Some(cut(format!("torn frame header ({} bytes)", rest.len())));
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if !(BODY_HEAD..=MAX_FRAME).contains(&len) {
            read.cut = Some(cut(format!("impossible frame length {len}")));
            break;
        }
        if rest.len() < FRAME_HEAD + len {
            read.cut = Some(cut(format!(
                "torn frame: {} of {len} bytes",
                rest.len() - FRAME_HEAD
            )));
            break;
        }
        let body = &rest[FRAME_HEAD..FRAME_HEAD + len];
        if crc32fast::hash(body) != crc {
            read.cut = Some(cut("checksum mismatch".into()));
            break;
        }
        let lsn = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let written_at = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        let Some(signal) = Signal::ALL.get(body[16] as usize).copied() else {
            read.cut = Some(cut(format!("unknown signal {}", body[16])));
            break;
        };
        if read.last_lsn.is_some_and(|last| lsn <= last) {
            read.cut = Some(cut(format!("LSN {lsn} out of order")));
            break;
        }
        if lsn >= from_lsn {
            match decode(signal, &body[BODY_HEAD..]) {
                Ok(batches) => read.records.push(Record {
                    lsn,
                    written_at,
                    signal,
                    batches,
                }),
                Err(e) => {
                    read.cut = Some(cut(format!("record {lsn} does not decode: {e}")));
                    break;
                }
            }
        }
        read.last_lsn = Some(lsn);
        at += FRAME_HEAD + len;
    }
    read
}

/// Decodes a record's batches, each copied into buffers of its own: the
/// IPC reader slices every column out of one shared buffer, which memory
/// accounting would count once per column.
fn decode(signal: Signal, payload: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let reader = StreamReader::try_new(Cursor::new(payload), None).map_err(|e| e.to_string())?;
    if reader.schema() != signal.schema() {
        return Err(format!(
            "its {} schema differs from this version's",
            signal.table()
        ));
    }
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let all = UInt32Array::from_iter_values(0..batch.num_rows() as u32);
        batches.push(take_record_batch(&batch, &all).map_err(|e| e.to_string())?);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::convert::spans::spans_at;

    fn segment(records: &[(u64, &RecordBatch)]) -> Vec<u8> {
        let mut out = header(7).to_vec();
        for (lsn, b) in records {
            let payload = encode(Signal::Traces, &[b]).unwrap();
            frame(&mut out, *lsn, 5, Signal::Traces, &payload);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_earlier_lsns_are_skipped() {
        let a = spans_at(&[1, 2]);
        let b = spans_at(&[3]);
        let bytes = segment(&[(10, &a), (11, &b)]);
        let read = super::read(&bytes, 0);
        assert_eq!(read.epoch, Some(7));
        assert!(read.cut.is_none());
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.records[0].batches, [a]);
        assert_eq!(read.records[1].lsn, 11);
        let read = super::read(&bytes, 11);
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.last_lsn, Some(11));
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_at_the_first_bad_frame() {
        let a = spans_at(&[1]);
        let bytes = segment(&[(1, &a), (2, &a), (3, &a)]);
        let whole = super::read(&bytes, 0);
        let second = HEADER + (bytes.len() - HEADER) / 3;
        // Torn in the middle of the third frame.
        let torn = &bytes[..bytes.len() - 5];
        let read = super::read(torn, 0);
        assert_eq!(read.records.len(), 2);
        assert!(
            read.cut.as_ref().unwrap().reason.contains("torn"),
            "{:?}",
            read.cut
        );
        // A flipped bit in the second frame: only the first survives.
        let mut flipped = bytes.clone();
        flipped[second + 40] ^= 1;
        let read = super::read(&flipped, 0);
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.cut.as_ref().unwrap().offset, second as u64);
        assert_eq!(whole.records.len(), 3);
        // Zeros after the last frame (a preallocated or torn tail).
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        let read = super::read(&zeros, 0);
        assert_eq!(read.records.len(), 3);
        assert!(read.cut.is_some());
    }

    #[test]
    fn decoded_batches_own_their_buffers() {
        let a = spans_at(&[1, 2, 3]);
        let bytes = segment(&[(1, &a)]);
        let read = super::read(&bytes, 0);
        let b = &read.records[0].batches[0];
        assert!(
            b.get_array_memory_size() < 2 * a.get_array_memory_size() + 4096,
            "{} vs {}",
            b.get_array_memory_size(),
            a.get_array_memory_size()
        );
    }
}
