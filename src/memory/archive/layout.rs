//! Names in the archive: UTC hours and their `date=`/`hour=` folders, and
//! file names, which say which node wrote a file and whether it is a merge.

use super::{DAY, HOUR};

/// An hour of UTC time: hours since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Hour(pub(super) i64);

impl Hour {
    pub(super) fn of(nanos: i64) -> Self {
        Hour(nanos.div_euclid(HOUR))
    }

    pub(super) fn start(self) -> i64 {
        self.0.saturating_mul(HOUR)
    }

    pub(super) fn end(self) -> i64 {
        self.start().saturating_add(HOUR)
    }

    /// `("date=YYYY-MM-DD", "hour=HH")`
    pub(super) fn folders(self) -> (String, String) {
        let (y, m, d) = civil_from_days(self.0.div_euclid(24));
        (
            format!("date={y:04}-{m:02}-{d:02}"),
            format!("hour={:02}", self.0.rem_euclid(24)),
        )
    }

    pub(super) fn parse(date: &str, hour: &str) -> Option<Self> {
        let day = parse_date(date)?;
        let hour = hour.strip_prefix("hour=")?;
        if hour.len() != 2 {
            return None;
        }
        let hour: i64 = hour.parse().ok().filter(|h| (0..24).contains(h))?;
        Some(Hour(day * 24 + hour))
    }
}

/// `date=YYYY-MM-DD` → days since the epoch, for days whose every hour a
/// nanosecond timestamp can name (1677 to 2262).
pub(super) fn parse_date(folder: &str) -> Option<i64> {
    let date = folder.strip_prefix("date=")?;
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if (y.len(), m.len(), d.len()) != (4, 2, 2) {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    let representable = i64::MIN / DAY < days && days < i64::MAX / DAY;
    // Rejects 2024-02-30 and the like.
    (representable && civil_from_days(days) == (y, m, d)).then_some(days)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let (m, d) = (i64::from(m), i64::from(d));
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A file name of the archive layout: `{node}-{offset}_{w|m|f}….parquet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileName<'a> {
    pub(super) node: &'a str,
    pub(super) merged: bool,
    /// For a flush's file (`_f{epoch:016x}_{flush}_{n}`): its log folder's
    /// epoch and the flush's number.
    pub(super) flush: Option<(u64, u64)>,
}

impl<'a> FileName<'a> {
    pub(super) fn parse(name: &'a str) -> Option<Self> {
        let stem = name.strip_suffix(".parquet")?;
        // Node ids may hold '-'; what follows the last one never does.
        let (node, unique) = stem.rsplit_once('-')?;
        let (offset, tag) = unique.split_once('_')?;
        if node.is_empty() || offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let file = |merged, flush| {
            Some(FileName {
                node,
                merged,
                flush,
            })
        };
        match tag.as_bytes().first()? {
            b'w' => file(false, None),
            b'm' => file(true, None),
            b'f' => {
                let mut fields = tag[1..].split('_');
                let epoch = u64::from_str_radix(fields.next()?, 16).ok()?;
                let flush = fields.next()?.parse().ok()?;
                fields.next()?.parse::<u64>().ok()?;
                file(false, Some((epoch, flush)))
            }
            _ => None,
        }
    }
}

/// The name of the `n`-th file of flush `flush` of the log folder `epoch`.
pub(super) fn flush_file_name(node: &str, offset: i64, epoch: u64, flush: u64, n: usize) -> String {
    format!("{node}-{offset:013}_f{epoch:016x}_{flush:010}_{n}.parquet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_say_who_wrote_them_and_how() {
        let w = FileName::parse("node-a-0000000000005_w00000000000000ff_3.parquet").unwrap();
        assert_eq!((w.node, w.merged, w.flush), ("node-a", false, None));
        let m = FileName::parse("n-0000000000000_mabcdef.parquet").unwrap();
        assert!(m.merged);
        let name = flush_file_name("n-1", 42, 0xdead, 7, 2);
        let f = FileName::parse(&name).unwrap();
        assert_eq!(
            (f.node, f.merged, f.flush),
            ("n-1", false, Some((0xdead, 7)))
        );
        assert!(FileName::parse("n-0000000000000_fzz_1_2.parquet").is_none());
        assert!(FileName::parse("n-0000000000000_x.parquet").is_none());
    }
}
