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
use super::sqlite_time::{self, Placement};
use crate::model::{DayWindow, MergeableSink};

/// The two queries that read a window (see `sqlite_time`): the range of the UTC
/// form, and the band of rows in other forms, each with its two bounds.
#[derive(Debug, Clone)]
pub(super) struct WindowQuery {
    pub(super) utc_sql: String,
    pub(super) utc_bounds: (String, String),
    pub(super) band_sql: String,
    pub(super) band_bounds: (String, String),
    /// The window: its instants, `[start, end)`, and the day its hours count from.
    pub(super) window: DayWindow,
}

/// Starts reading the window of `query` from the database at `path` on a blocking
/// thread, and aggregating its batches there and on others, each into a part of
/// `sink`. Returns the aggregating tasks, each giving its part once the reader is
/// done, and the reader's task, giving the part it aggregated itself.
pub(super) fn read_parts<K: MergeableSink>(
    sink: &K,
    path: &Path,
    query: WindowQuery,
    busy_timeout: Duration,
    stop: &Arc<AtomicBool>,
) -> (
    Vec<tokio::task::JoinHandle<K>>,
    tokio::task::JoinHandle<rusqlite::Result<K>>,
) {
    let (dealer, parts) = Dealer::start(sink, Spread::Always);
    let path = path.to_owned();
    let stop = Arc::clone(stop);
    let reader =
        tokio::task::spawn_blocking(move || read(dealer, &path, &query, busy_timeout, &stop));
    (parts, reader)
}

fn read<K: MergeableSink>(
    mut dealer: Dealer<K>,
    path: &Path,
    query: &WindowQuery,
    busy_timeout: Duration,
    stop: &AtomicBool,
) -> rusqlite::Result<K> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    // Both queries see one snapshot: a row is read by exactly one of them.
    conn.execute_batch("BEGIN")?;
    let window = &query.window;
    let (low, high) = (&query.utc_bounds.0, &query.utc_bounds.1);
    let mut statement = conn.prepare(&query.utc_sql)?;
    let mut rows = statement.query([low, high])?;
    while let Some(row) = rows.next()? {
        let placement = sqlite_time::place_in_utc_range(field(row, 3)?);
        if deal(&mut dealer, row, placement, window)? && stopped(&dealer, stop) {
            return Ok(dealer.finish());
        }
    }
    drop(rows);
    let (low, high) = (&query.band_bounds.0, &query.band_bounds.1);
    let mut statement = conn.prepare(&query.band_sql)?;
    let mut rows = statement.query([low, high])?;
    while let Some(row) = rows.next()? {
        let placement = sqlite_time::place_in_band(field(row, 3)?, window.start, window.end);
        if deal(&mut dealer, row, placement, window)? && stopped(&dealer, stop) {
            break;
        }
    }
    Ok(dealer.finish())
}

/// Deals `row` out as `placement` says; true when a batch went out.
fn deal<K: MergeableSink>(
    dealer: &mut Dealer<K>,
    row: &rusqlite::Row<'_>,
    placement: Placement,
    window: &DayWindow,
) -> rusqlite::Result<bool> {
    Ok(match placement {
        Placement::Inside(at) => dealer.deal_bytes(
            [field(row, 0)?, field(row, 1)?, field(row, 2)?],
            window.hour_of(at),
        ),
        Placement::Elsewhere => false,
        Placement::Invalid => {
            dealer.skip_invalid_created_at();
            false
        }
    })
}

/// No one waits for the result any more (the run was stopped or cancelled).
fn stopped<K: MergeableSink>(dealer: &Dealer<K>, stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed) || dealer.deserted()
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
    use crate::model::{EventSink as _, SourceEvent};
    use crate::rollup::DayAggregate;
    use crate::store::deal::{BATCH_ROWS, RowBatch};
    use tokio::sync::mpsc;

    const SQL: &str = "SELECT event, user_id, meta, at FROM events WHERE at >= ?1 AND at < ?2";

    /// The window 2024-01-01 (UTC) of the test table.
    fn query() -> WindowQuery {
        WindowQuery {
            utc_sql: SQL.to_owned(),
            utc_bounds: ("2024-01-01T00:00:00".into(), "2024-01-02T00:00:00".into()),
            band_sql: format!("{SQL} AND substr(at, -1) <> 'Z'"),
            band_bounds: ("2023-12-31".into(), "2024-01-03".into()),
            window: DayWindow::new("2024-01-01".parse().unwrap(), &jiff::tz::TimeZone::UTC)
                .unwrap(),
        }
    }

    /// A SQLite file holding `n` events of a few names and users, all on 2024-01-01.
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
                "INSERT INTO events VALUES (?1, ?2, ?3, '2024-01-01T12:00:00Z')",
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
        let mut rows = statement
            .query(["2024-01-01T00:00:00", "2024-01-02T00:00:00"])
            .expect("query");
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
                hour: Some(12),
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
            &query(),
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
            &query(),
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
