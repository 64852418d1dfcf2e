//! Reading a window of SQLite source events fast: on a blocking thread of its own,
//! with a plain read-only SQLite connection, its rows dealt out to aggregating
//! threads (`deal.rs`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::deal::{Dealer, Spread};
use crate::model::MergeableSink;

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
    let (dealer, parts) = Dealer::start(sink, Spread::Always);
    let (path, sql) = (path.to_owned(), sql.to_owned());
    let stop = Arc::clone(stop);
    let reader = tokio::task::spawn_blocking(move || {
        read(dealer, &path, &sql, (&start, &end), busy_timeout, &stop)
    });
    (parts, reader)
}

fn read<K: MergeableSink>(
    mut dealer: Dealer<K>,
    path: &Path,
    sql: &str,
    (start, end): (&str, &str),
    busy_timeout: Duration,
    stop: &AtomicBool,
) -> rusqlite::Result<K> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query([start, end])?;
    while let Some(row) = rows.next()? {
        let fields = [field(row, 0)?, field(row, 1)?, field(row, 2)?];
        // No one waits for the result any more (the run was stopped or cancelled).
        if dealer.deal_bytes(fields) && (stop.load(Ordering::Relaxed) || dealer.deserted()) {
            break;
        }
    }
    Ok(dealer.finish())
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
    use crate::model::{DayAggregate, EventSink as _, SourceEvent};
    use crate::store::deal::{BATCH_ROWS, RowBatch};
    use tokio::sync::mpsc;

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
            Dealer::new(DayAggregate::new(), Vec::new(), Spread::Always),
            file.path(),
            SQL,
            ("a", "c"),
            Duration::ZERO,
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
            Dealer::new(DayAggregate::new(), vec![tx], Spread::Always),
            file.path(),
            SQL,
            ("a", "c"),
            Duration::ZERO,
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
