//! A reader of PostgreSQL's binary `COPY` format for the three source columns and
//! `created_at`, from which it tells each event's local hour.
//!
//! `COPY (SELECT event, user_id, meta …) TO STDOUT (FORMAT binary)` is the fastest way
//! to take rows out of PostgreSQL: no per-row protocol message decoding, no text
//! conversion of `jsonb` beyond its version byte. This module turns the byte stream
//! back into [`SourceEvent`]s, whatever the chunk boundaries.

use std::borrow::Cow;

use super::rows::lenient_utf8;
use crate::model::{EventSink, SourceEvent};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags field and header-extension length.
const HEADER_LEN: usize = SIGNATURE.len() + 4 + 4;
/// The only `jsonb` binary format version there is.
const JSONB_VERSION: u8 = 1;

/// PostgreSQL's epoch (2000-01-01T00:00:00Z) in microseconds after Unix's.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Microseconds in an hour.
const HOUR_MICROS: i64 = 3_600_000_000;

/// Incremental parser of a binary COPY stream of `(text, text, jsonb, timestamptz)`
/// tuples.
///
/// The hour is told here rather than computed by the query: PostgreSQL's `extract`
/// works in `numeric`, and an expression per row made the server's side of the COPY
/// slower than the aggregation; a `timestamptz` goes out as the 8 bytes it is.
#[derive(Debug)]
pub struct CopyReader {
    /// The day's first instant, in PostgreSQL's microseconds: hours count from it.
    day_start: i64,
    /// Bytes of an incomplete tuple carried over from the previous chunk.
    pending: Vec<u8>,
    /// Whether the third column is `jsonb` (a version byte before the text).
    meta_is_jsonb: bool,
    header_seen: bool,
    trailer_seen: bool,
}

/// Why a COPY stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed binary COPY data: {0}")]
pub struct CopyFormatError(String);

impl CopyReader {
    /// A reader at the start of a stream whose third column is `jsonb` (or, if not,
    /// text), of a day that begins at `day_start`.
    pub fn new(meta_is_jsonb: bool, day_start: jiff::Timestamp) -> Self {
        Self {
            day_start: day_start.as_microsecond() - PG_EPOCH_MICROS,
            pending: Vec::new(),
            meta_is_jsonb,
            header_seen: false,
            trailer_seen: false,
        }
    }

    /// Parses `chunk`, pushing every complete tuple into `sink`.
    ///
    /// # Errors
    ///
    /// [`CopyFormatError`] when the bytes are not the expected format.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        sink: &mut (dyn EventSink + Send),
    ) -> Result<(), CopyFormatError> {
        if self.pending.is_empty() {
            let used = self.parse(chunk, sink)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(chunk);
            let used = self.parse(&data, sink)?;
            data.drain(..used);
            self.pending = data;
        }
        Ok(())
    }

    /// Checks that the stream ended where it should.
    ///
    /// # Errors
    ///
    /// [`CopyFormatError`] when the stream stopped inside a tuple or before its trailer.
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        if !self.trailer_seen || !self.pending.is_empty() {
            return Err(CopyFormatError("the stream ended early".into()));
        }
        Ok(())
    }

    /// Parses as many whole tuples of `data` as there are; returns the bytes used.
    fn parse(
        &mut self,
        data: &[u8],
        sink: &mut (dyn EventSink + Send),
    ) -> Result<usize, CopyFormatError> {
        let mut pos = 0;
        if !self.header_seen {
            if data.len() < HEADER_LEN {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyFormatError("bad signature".into()));
            }
            let extension = be_u32(&data[SIGNATURE.len() + 4..]) as usize;
            if data.len() < HEADER_LEN + extension {
                return Ok(0);
            }
            pos = HEADER_LEN + extension;
            self.header_seen = true;
        }
        while pos + 2 <= data.len() {
            let fields = i16::from_be_bytes([data[pos], data[pos + 1]]);
            if fields == -1 {
                self.trailer_seen = true;
                return Ok(pos + 2);
            }
            if fields != 4 {
                return Err(CopyFormatError(format!("expected 4 columns, got {fields}")));
            }
            let Some((values, end)) = read_fields(data, pos + 2) else {
                break; // the tuple continues in the next chunk
            };
            let meta = match values[2] {
                Some(bytes) if !self.meta_is_jsonb => Some(bytes),
                Some([JSONB_VERSION, text @ ..]) => Some(text),
                Some(_) => return Err(CopyFormatError("unknown jsonb version".into())),
                None => None,
            };
            let (event, user_id, meta) = (text(values[0]), text(values[1]), text(meta));
            // The local hour: whole hours since the day's first instant (the local
            // hours of a day are whole hours after its midnight in every zone whose
            // offsets change by whole hours).
            let hour = values[3]
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .and_then(|bytes| {
                    let since_start = i64::from_be_bytes(bytes) - self.day_start;
                    u8::try_from(since_start.div_euclid(HOUR_MICROS)).ok()
                });
            sink.push(SourceEvent {
                event: event.as_deref(),
                user_id: user_id.as_deref(),
                meta: meta.as_deref(),
                hour,
            });
            pos = end;
        }
        Ok(pos)
    }
}

/// The four fields starting at `pos`, or `None` if the data stops inside them.
fn read_fields(data: &[u8], mut pos: usize) -> Option<([Option<&[u8]>; 4], usize)> {
    let mut values = [None; 4];
    for value in &mut values {
        let len = i32::from_be_bytes(data.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len >= 0 {
            let end = pos + len as usize;
            *value = Some(data.get(pos..end)?);
            pos = end;
        }
    }
    Some((values, pos))
}

/// PostgreSQL sends text in the database encoding; anything not UTF-8 is decoded
/// leniently rather than failing the day.
fn text(bytes: Option<&[u8]>) -> Option<Cow<'_, str>> {
    bytes.map(lenient_utf8)
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    type Collected = (Option<String>, Option<String>, Option<String>, Option<u8>);

    #[derive(Default)]
    struct Collect(Vec<Collected>);

    impl EventSink for Collect {
        fn push(&mut self, e: SourceEvent<'_>) {
            self.0.push((
                e.event.map(str::to_owned),
                e.user_id.map(str::to_owned),
                e.meta.map(str::to_owned),
                e.hour,
            ));
        }

        fn push_counted(&mut self, _: crate::model::CountedEvents<'_>) {
            unreachable!("COPY hands over single events")
        }

        fn push_meta(&mut self, _: &str, _: Option<&str>, _: u64) {
            unreachable!("COPY hands over single events")
        }

        fn push_invalid_created_at(&mut self, _: u64) {
            unreachable!("COPY checks no created_at")
        }
    }

    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    /// The test day's first instant.
    fn day_start() -> jiff::Timestamp {
        "2024-01-15T05:00:00Z".parse().unwrap()
    }

    /// `created_at` as COPY sends it, `hour` hours and 59 minutes into the test day.
    fn at(hour: i64) -> [u8; 8] {
        let micros =
            day_start().as_microsecond() - PG_EPOCH_MICROS + hour * HOUR_MICROS + 59 * 60_000_000;
        micros.to_be_bytes()
    }

    fn stream() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for (event, user, meta, hour) in [
            (
                Some(&b"view"[..]),
                Some(&b"u1"[..]),
                Some(&b"\x01{\"a\": 1}"[..]),
                Some(&at(23)[..]),
            ),
            (Some(b"click"), None, None, None),
            (Some(b""), Some(b"u2"), Some(b"\x01[1]"), Some(&at(0)[..])),
        ] {
            out.extend_from_slice(&4i16.to_be_bytes());
            field(&mut out, event);
            field(&mut out, user);
            field(&mut out, meta);
            field(&mut out, hour);
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn tuples_are_read_whatever_the_chunk_boundaries() {
        let data = stream();
        let mut whole = Collect::default();
        let mut reader = CopyReader::new(true, day_start());
        reader.feed(&data, &mut whole).unwrap();
        reader.finish().unwrap();
        assert_eq!(whole.0.len(), 3);
        assert_eq!(
            whole.0[0],
            (
                Some("view".into()),
                Some("u1".into()),
                Some("{\"a\": 1}".into()),
                Some(23)
            )
        );
        assert_eq!(whole.0[1], (Some("click".into()), None, None, None));

        for size in 1..data.len() {
            let mut parts = Collect::default();
            let mut reader = CopyReader::new(true, day_start());
            for chunk in data.chunks(size) {
                reader.feed(chunk, &mut parts).unwrap();
            }
            reader.finish().unwrap();
            assert_eq!(parts.0, whole.0, "chunks of {size}");
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let data = stream();
        let mut reader = CopyReader::new(true, day_start());
        reader
            .feed(&data[..data.len() - 5], &mut Collect::default())
            .unwrap();
        assert!(reader.finish().is_err());
        let mut bad = data.clone();
        bad[0] = b'X';
        assert!(
            CopyReader::new(true, day_start())
                .feed(&bad, &mut Collect::default())
                .is_err()
        );
    }
}
