//! Reading a window of SQLite source events fast.
//!
//! A day is read on a blocking thread of its own with a plain read-only SQLite
//! connection, and its rows are handed out in batches (one buffer per few thousand
//! rows) to aggregating threads, one on each other core (up to four), each taking
//! the rows of its own share of the users. When an aggregator falls behind and
//! its queue is full, the reader aggregates that batch itself instead of waiting, so
//! the reader never sits idle while there is work. Each thread fills a part of
//! the sink, and the parts are merged at the end; no value is copied or freed one by
//! one across threads.

use std::hash::BuildHasher as _;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::rows::lenient_utf8;
use crate::model::{EventSink, MergeableSink, SourceEvent};

/// Rows per batch: large enough that handing a batch over costs nothing per row.
const BATCH_ROWS: usize = 4096;
/// Batches in flight per aggregating thread: bounds the memory of a day being read.
const BATCHES_IN_FLIGHT: usize = 4;
/// Most threads that aggregate one window beside the reader.
const MAX_AGGREGATORS: usize = 4;

/// The three source columns of a batch of rows, as ranges into one text buffer.
/// The reader thread checks (and if need be repairs) the UTF-8 as it copies, so
/// that the aggregator, the busier side, does not have to.
#[derive(Debug, Default)]
pub(super) struct RowBatch {
    text: String,
    rows: Vec<[Option<Range<u32>>; 3]>,
}

impl RowBatch {
    fn push_row(&mut self, fields: [Option<&[u8]>; 3]) {
        let ranges = fields.map(|field| {
            field.map(|bytes| {
                let start = self.text.len() as u32;
                self.text.push_str(&lenient_utf8(bytes));
                start..self.text.len() as u32
            })
        });
        self.rows.push(ranges);
    }

    /// Pushes every row of the batch into `sink`.
    pub(super) fn drain_into(&self, sink: &mut (dyn EventSink + Send)) {
        // Ranges were taken at string lengths after whole pushes: on char boundaries.
        let text = |range: &Option<Range<u32>>| {
            range
                .as_ref()
                .and_then(|r| self.text.get(r.start as usize..r.end as usize))
        };
        for [event, user_id, meta] in &self.rows {
            sink.push(SourceEvent {
                event: text(event),
                user_id: text(user_id),
                meta: text(meta),
            });
        }
    }
}

/// Starts reading `sql` (bound to `start` and `end`) from the database at `path` on a
/// blocking thread, and aggregating its batches there and on others, each into a
/// part of `sink`. Returns the aggregating tasks, each giving its part once the
/// reader is done, and the reader's task, giving the part it aggregated itself.
pub(super) fn read_parts<K: MergeableSink>(
    sink: &K,
    path: &Path,
    sql: &str,
    (start, end): (String, String),
    busy_timeout: Duration,
    stop: &Arc<AtomicBool>,
) -> (
    Vec<tokio::task::JoinHandle<K>>,
    tokio::task::JoinHandle<rusqlite::Result<K>>,
) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let aggregators = (cores - 1).min(MAX_AGGREGATORS);
    let (senders, parts): (Vec<_>, Vec<_>) = (0..aggregators)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<RowBatch>(BATCHES_IN_FLIGHT);
            let mut part = sink.part(aggregators + 1);
            let part = tokio::task::spawn_blocking(move || {
                while let Some(batch) = rx.blocking_recv() {
                    batch.drain_into(&mut part);
                }
                part
            });
            (tx, part)
        })
        .unzip();
    let (path, sql) = (path.to_owned(), sql.to_owned());
    let own = sink.part(aggregators + 1);
    let stop = Arc::clone(stop);
    let reader = tokio::task::spawn_blocking(move || {
        read(
            own,
            &path,
            &sql,
            (&start, &end),
            busy_timeout,
            &senders,
            &stop,
        )
    });
    (parts, reader)
}

fn read<K: MergeableSink>(
    mut own: K,
    path: &Path,
    sql: &str,
    (start, end): (&str, &str),
    busy_timeout: Duration,
    senders: &[mpsc::Sender<RowBatch>],
    stop: &AtomicBool,
) -> rusqlite::Result<K> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query([start, end])?;
    let mut batches: Vec<RowBatch> = (0..senders.len().max(1))
        .map(|_| RowBatch::default())
        .collect();
    // Rows are dealt out by user, so that each aggregator sees only its own users and
    // keeps a table of them a fraction of the size: fewer cache misses per row.
    let users = foldhash::fast::FixedState::with_seed(0);
    let mut anonymous = 0usize;
    while let Some(row) = rows.next()? {
        let fields = [field(row, 0)?, field(row, 1)?, field(row, 2)?];
        let shard = match fields[1] {
            _ if batches.len() == 1 => 0,
            Some(user) if !user.is_empty() => users.hash_one(user) as usize % batches.len(),
            _ => {
                anonymous = anonymous.wrapping_add(1);
                anonymous % batches.len()
            }
        };
        let batch = &mut batches[shard];
        batch.push_row(fields);
        if batch.rows.len() == BATCH_ROWS {
            // No one waits for the result any more (the run was stopped).
            if stop.load(Ordering::Relaxed) {
                return Ok(own);
            }
            let next = RowBatch {
                text: String::with_capacity(batch.text.capacity()),
                rows: Vec::with_capacity(BATCH_ROWS),
            };
            let full = std::mem::replace(batch, next);
            let Some(tx) = senders.get(shard) else {
                full.drain_into(&mut own); // a single core: the reader does it all
                continue;
            };
            match tx.try_send(full) {
                Ok(()) => {}
                Err(TrySendError::Full(full)) => full.drain_into(&mut own),
                // The aggregators have gone (the run was cancelled): stop quietly.
                Err(TrySendError::Closed(_)) => return Ok(own),
            }
        }
    }
    // The rest is small, and the reader has nothing else to do.
    for batch in batches {
        batch.drain_into(&mut own);
    }
    Ok(own)
}

/// Column `i` of `row` as bytes, `None` for NULL.
fn field<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'r [u8]>> {
    Ok(match row.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(b),
        // The query casts to BLOB, so numbers do not come through; if they ever did,
        // they would simply not be a name, user or JSON object.
        ValueRef::Integer(_) | ValueRef::Real(_) => Some(b""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DayAggregate;

    const SQL: &str = "SELECT event, user_id, meta FROM events WHERE at >= ?1 AND at < ?2";

    /// A SQLite file holding `n` events of a few names and users, all at "b".
    fn events_file(n: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        let mut conn = Connection::open(file.path()).expect("open");
        conn.execute(
            "CREATE TABLE events (event TEXT, user_id TEXT, meta TEXT, at TEXT)",
            [],
        )
        .expect("create");
        let tx = conn.transaction().expect("transaction");
        for i in 0..n {
            let user = (i % 7 != 0).then(|| format!("u{}", i % 1000));
            let meta = format!(r#"{{"plan":"p{}","n":{i}}}"#, i % 3);
            tx.execute(
                "INSERT INTO events VALUES (?1, ?2, ?3, 'b')",
                (format!("e{}", i % 5), user, meta),
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
        file
    }

    fn one_pass(path: &Path) -> DayAggregate {
        let conn = Connection::open(path).expect("open");
        let mut statement = conn.prepare(SQL).expect("prepare");
        let mut rows = statement.query(["a", "c"]).expect("query");
        let mut agg = DayAggregate::new();
        while let Some(row) = rows.next().expect("row") {
            let text = |i| {
                row.get_ref(i)
                    .expect("column")
                    .as_str_or_null()
                    .expect("text")
            };
            agg.push(SourceEvent {
                event: text(0),
                user_id: text(1),
                meta: text(2),
            });
        }
        agg
    }

    #[test]
    fn the_reader_alone_aggregates_everything() {
        let file = events_file(3 * BATCH_ROWS + 17);
        let read = read(
            DayAggregate::new(),
            file.path(),
            SQL,
            ("a", "c"),
            Duration::ZERO,
            &[],
            &AtomicBool::new(false),
        )
        .expect("read");
        assert_eq!(read.events_read(), 3 * BATCH_ROWS as u64 + 17);
        assert_eq!(
            read.finish(5).unwrap(),
            one_pass(file.path()).finish(5).unwrap()
        );
    }

    #[test]
    fn batches_a_full_queue_refuses_are_aggregated_by_the_reader() {
        let file = events_file(3 * BATCH_ROWS + 17);
        // Nobody receives while the reader runs: the queue takes one batch, and the
        // reader must aggregate the others itself.
        let (tx, mut rx) = mpsc::channel::<RowBatch>(1);
        let mut read = read(
            DayAggregate::new(),
            file.path(),
            SQL,
            ("a", "c"),
            Duration::ZERO,
            &[tx],
            &AtomicBool::new(false),
        )
        .expect("read");
        let queued = rx.try_recv().expect("one batch was queued");
        assert_eq!(queued.rows.len(), BATCH_ROWS);
        assert_eq!(read.events_read(), 2 * BATCH_ROWS as u64 + 17);
        let mut part = DayAggregate::new();
        queued.drain_into(&mut part);
        read.merge(part);
        assert_eq!(
            read.finish(5).unwrap(),
            one_pass(file.path()).finish(5).unwrap()
        );
    }
}
