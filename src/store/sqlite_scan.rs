//! Reading a window of SQLite source events fast.
//!
//! A day is read on a blocking thread of its own with a plain read-only SQLite
//! connection, and its rows are handed to the async side in batches (one buffer per
//! few thousand rows). The reader steps through SQLite while the aggregator parses
//! the previous batch, so the two use two cores, and no value is copied or freed
//! one by one across threads.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

use super::lenient_utf8;
use crate::telemetry_daily::{EventSink, SourceEvent};

/// Rows per batch: large enough that handing a batch over costs nothing per row.
const BATCH_ROWS: usize = 4096;
/// Batches in flight: bounds the memory of a day being read.
const BATCHES_IN_FLIGHT: usize = 4;

/// The three source columns of a batch of rows, as byte ranges into one buffer.
#[derive(Debug, Default)]
pub(super) struct RowBatch {
    bytes: Vec<u8>,
    rows: Vec<[Option<Range<u32>>; 3]>,
}

impl RowBatch {
    fn push_row(&mut self, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        let mut fields: [Option<Range<u32>>; 3] = Default::default();
        for (i, field) in fields.iter_mut().enumerate() {
            let bytes: &[u8] = match row.get_ref(i)? {
                ValueRef::Null => continue,
                ValueRef::Text(b) | ValueRef::Blob(b) => b,
                // The query casts to BLOB, so numbers do not come through; if they
                // ever did, they would simply not be a name, user or JSON object.
                ValueRef::Integer(_) | ValueRef::Real(_) => b"",
            };
            let start = self.bytes.len() as u32;
            self.bytes.extend_from_slice(bytes);
            *field = Some(start..self.bytes.len() as u32);
        }
        self.rows.push(fields);
        Ok(())
    }

    /// Pushes every row of the batch into `sink`.
    pub(super) fn drain_into(&self, sink: &mut (dyn EventSink + Send)) {
        let text = |range: &Option<Range<u32>>| {
            range
                .as_ref()
                .map(|r| lenient_utf8(&self.bytes[r.start as usize..r.end as usize]))
        };
        for [event, user_id, meta] in &self.rows {
            let (event, user_id, meta) = (text(event), text(user_id), text(meta));
            sink.push(SourceEvent {
                event: event.as_deref(),
                user_id: user_id.as_deref(),
                meta: meta.as_deref(),
            });
        }
    }
}

/// Starts reading `sql` (bound to `start` and `end`) from the database at `path` on a
/// blocking thread. Batches arrive on the returned channel, which closes when the
/// reader is done; the reader's own result comes from the returned task.
pub(super) fn read_batches(
    path: &Path,
    sql: &str,
    start: String,
    end: String,
    busy_timeout: Duration,
) -> (
    mpsc::Receiver<RowBatch>,
    tokio::task::JoinHandle<rusqlite::Result<()>>,
) {
    let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let (path, sql) = (path.to_owned(), sql.to_owned());
    let reader =
        tokio::task::spawn_blocking(move || read(&path, &sql, &start, &end, busy_timeout, &tx));
    (rx, reader)
}

fn read(
    path: &Path,
    sql: &str,
    start: &str,
    end: &str,
    busy_timeout: Duration,
    tx: &mpsc::Sender<RowBatch>,
) -> rusqlite::Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query([start, end])?;
    let mut batch = RowBatch::default();
    while let Some(row) = rows.next()? {
        batch.push_row(row)?;
        if batch.rows.len() == BATCH_ROWS {
            let capacity = batch.bytes.capacity();
            let next = RowBatch {
                bytes: Vec::with_capacity(capacity),
                rows: Vec::with_capacity(BATCH_ROWS),
            };
            let full = std::mem::replace(&mut batch, next);
            if tx.blocking_send(full).is_err() {
                return Ok(()); // the reader's caller has gone: stop quietly
            }
        }
    }
    if !batch.rows.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(())
}
