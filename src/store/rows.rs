//! Row decoders both backends share: each backend selects the same columns in the
//! same order (as text where the types differ), and one function reads them.

use std::borrow::Cow;

use jiff::Timestamp;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::model::{HourRow, RollupRow, RunRecord, plain_ascii};

/// Reads a `telemetry_daily` row selected as (event, count, unique_users, meta,
/// users_hll, partial, meta_sketches).
pub(super) fn rollup_row<'r, R>(row: &'r R) -> Result<RollupRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(RollupRow {
        event: row.try_get(0)?,
        count: row.try_get(1)?,
        unique_users: row.try_get(2)?,
        meta: row.try_get(3)?,
        users_hll: row.try_get(4)?,
        partial: row.try_get(5)?,
        meta_sketches: row.try_get(6)?,
    })
}

/// Reads a `telemetry_hourly` row selected as (hour as `YYYY-MM-DDTHH:MM:SSZ` text,
/// event, count, unique_users, users_hll).
pub(super) fn hour_row<'r, R>(row: &'r R) -> Result<HourRow, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let hour: String = row.try_get(0)?;
    Ok(HourRow {
        hour: hour.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        event: row.try_get(1)?,
        count: row.try_get(2)?,
        unique_users: row.try_get(3)?,
        users_hll: row.try_get(4)?,
    })
}

/// Reads a `job_runs` row selected as (id, job, trigger, started_at, finished_at,
/// start_date, end_date, timezone, status, days_done, days_total, source_watermark,
/// summary, report), all text but the numbers; a listing selects NULL for the report.
pub(super) fn run_record<'r, R>(row: &'r R) -> Result<RunRecord, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    // Both written by this crate from serialized values; text that does not parse
    // is left out rather than failing the listing.
    let summary: Option<String> = row.try_get(12)?;
    let report: Option<String> = row.try_get(13)?;
    Ok(RunRecord {
        id: row.try_get(0)?,
        job: row.try_get(1)?,
        trigger: row.try_get(2)?,
        started_at: row.try_get(3)?,
        finished_at: row.try_get(4)?,
        start_date: row.try_get(5)?,
        end_date: row.try_get(6)?,
        timezone: row.try_get(7)?,
        status: row.try_get(8)?,
        days_done: row.try_get(9)?,
        days_total: row.try_get(10)?,
        source_watermark: row.try_get(11)?,
        summary: summary.and_then(|text| serde_json::from_str(&text).ok()),
        report: report.and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// A date column selected as `YYYY-MM-DD` text.
pub(super) fn date_column<'r, R>(row: &'r R, index: usize) -> Result<jiff::civil::Date, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let text: String = row.try_get(index)?;
    text.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Hours as both databases give them, `2024-01-15T10:00:00Z`, as instants. A
/// `created_at` that is NULL or not in the contract's form is in no day's window
/// either, so it is left out.
pub(super) fn parse_hours(hours: &[Option<String>]) -> Vec<Timestamp> {
    hours
        .iter()
        .flatten()
        .filter_map(|h| h.parse().ok())
        .collect()
}

/// Text as it is when it is valid UTF-8 without NUL characters (the fast, usual
/// case), else with U+FFFD in place of each bad byte sequence and each NUL: names and
/// metadata read the same from every source, and PostgreSQL, whose text cannot hold a
/// NUL, takes whatever SQLite or ClickHouse held.
pub(super) fn lenient_utf8(bytes: &[u8]) -> Cow<'_, str> {
    if let Some(text) = plain_ascii(bytes) {
        return Cow::Borrowed(text);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    if text.as_bytes().contains(&0) {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        text
    }
}

/// A user id as text that is equal for two ids exactly when their bytes are: the id
/// itself when it is valid UTF-8 (the usual case), else a NUL followed by its bytes in
/// hexadecimal. Ids are only compared and hashed, never written, so nothing is lost;
/// an id that itself begins with a NUL is written the second way too, so that no
/// two ids can meet.
pub(super) fn user_id_text(bytes: &[u8]) -> Cow<'_, str> {
    if let Some(text) = plain_ascii(bytes) {
        return Cow::Borrowed(text);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.starts_with('\0') => Cow::Borrowed(text),
        _ => {
            use std::fmt::Write as _;
            let mut escaped = String::with_capacity(1 + 2 * bytes.len());
            escaped.push('\0');
            for byte in bytes {
                let _ = write!(escaped, "{byte:02x}");
            }
            Cow::Owned(escaped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_metadata_read_bad_bytes_and_nul_as_the_replacement_character() {
        assert_eq!(lenient_utf8(b"page_view"), "page_view");
        assert_eq!(lenient_utf8(b"nul\0name"), "nul\u{FFFD}name");
        assert_eq!(lenient_utf8(b"bad\xffbyte"), "bad\u{FFFD}byte");
        assert_eq!(lenient_utf8(b"\0\xfe"), "\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn user_ids_stay_apart_exactly_when_their_bytes_differ() {
        assert_eq!(user_id_text(b"u1"), "u1");
        assert_eq!(user_id_text(b"a\0b"), "a\0b");
        let ids: [&[u8]; 6] = [b"a\xff", b"a\xfe", b"a\xef\xbf\xbd", b"\0", b"\0ff", b""];
        let texts: Vec<_> = ids.iter().map(|id| user_id_text(id)).collect();
        for (i, a) in texts.iter().enumerate() {
            for (j, b) in texts.iter().enumerate() {
                assert_eq!(a == b, i == j, "{:?} and {:?}", ids[i], ids[j]);
            }
        }
    }
}
