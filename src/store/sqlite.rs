//! SQLite: the embedded default, zero set-up.
//!
//! The database runs in WAL mode so that readers see the old day or the new day
//! while a day commits. Rollup changes are written with a statement per kind (and
//! per batch of a very large day), the rows passed as one JSON array unpacked by
//! `json_each` and their sketches as one blob (`sqlite_batch.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _};

use super::error::query_error;
use super::{
    DayLocks, StoreError, TableName, day_lock, rows, sqlite_batch, sqlite_scan, sqlite_time,
};
use crate::model::{
    DayChanges, DayRange, DayWindow, HourFold, HourRef, HourRow, MergeableSink, RollupFold,
    RollupRef, RollupRow,
};

/// Columns added since the first version, as (table, column, type).
const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("job_runs", "source_watermark", "integer"),
    ("job_runs", "summary", "text"),
    (rollup_table!(), "users_hll", "blob"),
    (rollup_table!(), "partial", "integer NOT NULL DEFAULT 0"),
    (rollup_table!(), "meta_sketches", "text"),
];

/// How long a statement waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite database file holding the source table and `telemetry_daily`.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// The URL as configured, to name the database in errors.
    url: String,
    db_path: PathBuf,
    lock_path: PathBuf,
    pub(super) source: TableName,
    /// Whether `migrate` creates the source table: not when events come from
    /// another database.
    pub(super) creates_source: bool,
    sql: Arc<Statements>,
}

/// Statements that name the configured source table, built once.
#[derive(Debug)]
struct Statements {
    scan: String,
    scan_band: String,
    id_watermark: String,
    hours_with_ids: String,
}

impl Statements {
    fn new(source: &TableName) -> Self {
        let src = source.quoted();
        Self {
            id_watermark: format!("SELECT max(id) FROM {src}"),
            // Whole UTC hours, read by SQLite from any form of the text: the caller
            // cuts them into days of any zone.
            hours_with_ids: format!(
                "SELECT DISTINCT strftime('%Y-%m-%dT%H:00:00Z', created_at) FROM {src} \
                 WHERE id > ?1 AND id <= ?2"
            ),
            // Text compared as text: the UTC form sorts in time order, against bounds
            // made by `sqlite_bound`; `created_at` comes along to be checked
            // (`sqlite_time`). BLOB casts let text that is not UTF-8 through, to be
            // decoded leniently.
            scan: format!(
                "SELECT CAST(event AS BLOB), CAST(user_id AS BLOB), CAST(meta AS BLOB), \
                 created_at FROM {src} WHERE created_at >= ?1 AND created_at < ?2"
            ),
            // The rows in other forms, within a band of dates around the window,
            // through the partial index that holds only them.
            scan_band: format!(
                "SELECT CAST(event AS BLOB), CAST(user_id AS BLOB), CAST(meta AS BLOB), \
                 created_at FROM {src} WHERE created_at >= ?1 AND created_at < ?2 AND {}",
                sqlite_time::NOT_UTC_FORM
            ),
        }
    }
}

/// A flag raised when dropped.
#[derive(Debug, Default)]
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub use super::sqlite_time::{sqlite_bound, sqlite_timestamp};

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] for an in-memory or malformed URL,
    /// [`StoreError::Unreachable`] when the file cannot be opened.
    pub async fn connect(url: &str, source: &TableName) -> Result<Self, StoreError> {
        Self::open(url, source, true).await
    }

    /// As [`SqliteStore::connect`], but a missing file is
    /// [`StoreError::NoDatabase`] and nothing is created: for commands that only
    /// read.
    ///
    /// # Errors
    ///
    /// As [`SqliteStore::connect`], and [`StoreError::NoDatabase`].
    pub async fn connect_existing(url: &str, source: &TableName) -> Result<Self, StoreError> {
        Self::open(url, source, false).await
    }

    async fn open(url: &str, source: &TableName, create: bool) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::InvalidUrl(format!(
                "'{url}' is an in-memory database; veris-jobs needs a file, e.g. sqlite://veris.db"
            )));
        }
        let options: SqliteConnectOptions = url
            .parse()
            .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?;
        if !create && !options.get_filename().exists() {
            return Err(StoreError::NoDatabase(
                options.get_filename().display().to_string(),
            ));
        }
        let options = options
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            // Streaming a big day takes seconds by design: not worth a warning.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let db_path = options.get_filename().to_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Unreachable {
                target: url.to_owned(),
                source,
            })?;
        // Beside the file itself, so that every path to it (a symbolic link, say)
        // shares one lock file. The pool has created the file by now.
        let mut lock_path = std::fs::canonicalize(&db_path)
            .unwrap_or_else(|_| db_path.clone())
            .into_os_string();
        lock_path.push(".veris-lock");
        Ok(Self {
            pool,
            url: url.to_owned(),
            db_path,
            lock_path: lock_path.into(),
            source: source.clone(),
            creates_source: true,
            sql: Arc::new(Statements::new(source)),
        })
    }

    /// The pool, for callers that need the database itself (tests, tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteStore {
    /// Reads the window on a blocking thread with a plain SQLite connection, in
    /// batches that several blocking threads aggregate, each into a part of `sink`
    /// (see `sqlite_scan.rs`).
    pub(super) async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        let action = || format!("reading the events of {} from {}", window.date, self.source);
        let cancelled = || StoreError::Aborted(format!("{} was cancelled", action()));
        // If this future is dropped (its run stopped), the reader stops too.
        let stop = StopOnDrop::default();
        let (parts, reader) = sqlite_scan::read_parts(
            &*sink,
            &self.db_path,
            sqlite_scan::WindowQuery {
                utc_sql: self.sql.scan.clone(),
                utc_bounds: (sqlite_bound(window.start), sqlite_bound(window.end)),
                band_sql: self.sql.scan_band.clone(),
                band_bounds: sqlite_time::band_bounds(window.start, window.end),
                window: *window,
            },
            BUSY_TIMEOUT,
            &stop.0,
        );
        for part in parts {
            match part.await {
                Ok(part) => sink.merge(part),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(cancelled()),
            }
        }
        match reader.await {
            Ok(Ok(part)) => {
                sink.merge(part);
                Ok(())
            }
            Ok(Err(source)) => Err(StoreError::Read {
                action: action(),
                source,
            }),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(cancelled()),
        }
    }

    pub(super) async fn id_watermark(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(AssertSqlSafe(self.sql.id_watermark.as_str()))
            .fetch_one(&self.pool)
            .await
            .map_err(query_error(&super::watermark_action(&self.source)))
    }

    pub(super) async fn hours_with_ids(
        &self,
        after: i64,
        through: i64,
    ) -> Result<Vec<Timestamp>, StoreError> {
        let hours: Vec<Option<String>> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.hours_with_ids.as_str()))
                .bind(after)
                .bind(through)
                .fetch_all(&self.pool)
                .await
                .map_err(query_error(&super::hours_action(&self.source)))?;
        Ok(rows::parse_hours(&hours))
    }
}

impl SqliteStore {
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error("starting the migration"))?;
        let schema = format!("\"{}\"", self.source.schema().unwrap_or("main"));
        let table = self.source.table();
        // SQLite's names are case-insensitive (ASCII, which is all a table name
        // may hold), quoted or not: `Events` is the table `events` too.
        let exists: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE"
        )))
        .bind(table)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error("looking for the source table"))?;
        if exists == 0 && self.creates_source {
            let sql = include_str!("../../migrations/sqlite/source.sql")
                .replace("{source}", &self.source.quoted())
                .replace("{source_unqualified}", &format!("\"{table}\""))
                .replace(
                    "{source_index}",
                    &format!("{schema}.\"{table}_created_at_idx\""),
                );
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(query_error(&format!(
                    "creating the source table {}",
                    self.source
                )))?;
        }
        // A table made by `migrate` (now, or by an earlier version: it has the
        // index `migrate` names so) gets the partial index of the rows whose
        // `created_at` is not in the UTC form, through which a day's read finds them
        // (`sqlite_time`). A table of the application's own is left as it is.
        let ours: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'index' AND name = ?1"
        )))
        .bind(format!("{table}_created_at_idx"))
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error("looking for the source table's index"))?;
        if self.creates_source && ours > 0 {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE INDEX IF NOT EXISTS {schema}.\"{table}_created_at_zoned_idx\" \
                 ON \"{table}\" (created_at) WHERE {}",
                sqlite_time::NOT_UTC_FORM
            )))
            .execute(&mut *tx)
            .await
            .map_err(query_error(&format!(
                "indexing the created_at of {} not in UTC form",
                self.source
            )))?;
        }
        let rollup =
            include_str!("../../migrations/sqlite/rollup.sql").replace("{rollup}", rollup_table!());
        sqlx::raw_sql(AssertSqlSafe(rollup))
            .execute(&mut *tx)
            .await
            .map_err(query_error("creating the rollup tables"))?;
        // Columns that tables made by earlier versions lack (SQLite has no ADD COLUMN
        // IF NOT EXISTS).
        for (table, column, kind) in ADDED_COLUMNS {
            let has: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2")
                    .bind(table)
                    .bind(column)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(query_error(&format!("looking at {table}")))?;
            if has == 0 {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {kind}"
                )))
                .execute(&mut *tx)
                .await
                .map_err(query_error(&format!("adding {table}.{column}")))?;
            }
        }
        tx.commit()
            .await
            .map_err(query_error("committing the migration"))
    }

    pub(super) async fn load_day(&self, date: Date) -> Result<Vec<RollupRow>, StoreError> {
        let action = super::load_day_action(date);
        sqlx::query(concat!(
            "SELECT event, count, unique_users, meta, users_hll, partial, meta_sketches FROM ",
            rollup_table!(),
            " WHERE date = ?1"
        ))
        .bind(date.to_string())
        .fetch_all(&self.pool)
        .await
        .and_then(|found| found.iter().map(rows::rollup_row).collect())
        .map_err(query_error(&action))
    }

    pub(super) async fn fold_rollups<F: RollupFold>(
        &self,
        range: &DayRange,
        events: &[String],
        fold: F,
    ) -> Result<F, StoreError> {
        // A plain connection on a blocking thread, as the job's scan reads, and the
        // rows folded straight from SQLite's buffers: the pool's driver would copy
        // every row and hand it over through a channel.
        let action = || super::rollups_action(range);
        let path = self.db_path.clone();
        let bounds = (range.start().to_string(), range.end().to_string());
        let events = json!(events).to_string();
        let read = tokio::task::spawn_blocking(move || read_rollups(&path, bounds, &events, fold));
        match read.await {
            Ok(read) => read.map_err(|source| StoreError::Read {
                action: action(),
                source,
            }),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(StoreError::Aborted(format!("{} was cancelled", action()))),
        }
    }

    pub(super) async fn fold_hours<F: HourFold>(
        &self,
        (start, end): (Timestamp, Timestamp),
        events: &[String],
        fold: F,
    ) -> Result<F, StoreError> {
        let action = || super::hours_report_action(start, end);
        let path = self.db_path.clone();
        let bounds = (start.to_string(), end.to_string());
        let events = json!(events).to_string();
        let read = tokio::task::spawn_blocking(move || read_hours(&path, bounds, &events, fold));
        match read.await {
            Ok(read) => read.map_err(|source| StoreError::Read {
                action: action(),
                source,
            }),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(StoreError::Aborted(format!("{} was cancelled", action()))),
        }
    }

    pub(super) async fn load_hours(&self, window: &DayWindow) -> Result<Vec<HourRow>, StoreError> {
        let action = super::load_hours_action(window.date);
        sqlx::query(
            "SELECT hour, event, count, unique_users, users_hll FROM telemetry_hourly \
             WHERE hour >= ?1 AND hour < ?2",
        )
        .bind(window.start.to_string())
        .bind(window.end.to_string())
        .fetch_all(&self.pool)
        .await
        .and_then(|found| found.iter().map(rows::hour_row).collect())
        .map_err(query_error(&action))
    }

    pub(super) async fn write_day(
        &self,
        date: Date,
        changes: &DayChanges,
    ) -> Result<(), StoreError> {
        let action = super::write_day_action(date);
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error(&action))?;
        // One instant for every row of the day, as PostgreSQL's `now()` gives: SQLite's
        // 'now' is fixed only within a statement, and a day takes several.
        let written_at: String = sqlx::query_scalar("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        if !changes.deletes.is_empty() {
            sqlx::query(concat!(
                "DELETE FROM ",
                rollup_table!(),
                " WHERE date = ?1 AND event IN (SELECT value FROM json_each(?2))"
            ))
            .bind(date.to_string())
            .bind(json!(changes.deletes).to_string())
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        let upserts = changes.inserts.iter().chain(&changes.updates);
        let upserts = sqlite_batch::batches(
            upserts,
            |r| r.users_hll.as_deref(),
            |r, start, length| {
                json!([
                    r.event,
                    r.count,
                    r.unique_users,
                    r.meta,
                    start,
                    length,
                    i64::from(r.partial),
                    r.meta_sketches
                ])
            },
        );
        for batch in upserts {
            // `WHERE true` keeps SQLite from reading ON CONFLICT as part of a join.
            sqlx::query(concat!(
                "INSERT INTO ",
                rollup_table!(),
                " (date, event, count, unique_users, meta, users_hll, partial, meta_sketches, \
                 updated_at) \
                 SELECT ?1, value ->> 0, value ->> 1, value ->> 2, value ->> 3, \
                 substr(?3, value ->> 4, value ->> 5), value ->> 6, value ->> 7, ?4 \
                 FROM json_each(?2) WHERE true \
                 ON CONFLICT (date, event) DO UPDATE SET count = excluded.count, \
                 unique_users = excluded.unique_users, meta = excluded.meta, \
                 users_hll = excluded.users_hll, partial = excluded.partial, \
                 meta_sketches = excluded.meta_sketches, updated_at = excluded.updated_at"
            ))
            .bind(date.to_string())
            .bind(batch.rows)
            .bind(batch.blobs)
            .bind(&written_at)
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        let hours = &changes.hours;
        if !hours.deletes.is_empty() {
            let keys: Vec<_> = hours
                .deletes
                .iter()
                .map(|(hour, event)| json!([hour.to_string(), event]))
                .collect();
            sqlx::query(
                "DELETE FROM telemetry_hourly WHERE (hour, event) IN \
                 (SELECT value ->> 0, value ->> 1 FROM json_each(?1))",
            )
            .bind(serde_json::Value::Array(keys).to_string())
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        let upserts = hours.inserts.iter().chain(&hours.updates);
        let upserts = sqlite_batch::batches(
            upserts,
            |r| Some(r.users_hll.as_slice()),
            |r, start, length| {
                json!([
                    r.hour.to_string(),
                    r.event,
                    r.count,
                    r.unique_users,
                    start,
                    length
                ])
            },
        );
        for batch in upserts {
            sqlx::query(
                "INSERT INTO telemetry_hourly (hour, event, count, unique_users, users_hll, updated_at) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, \
                 substr(?2, value ->> 4, value ->> 5), ?3 \
                 FROM json_each(?1) WHERE true \
                 ON CONFLICT (hour, event) DO UPDATE SET count = excluded.count, \
                 unique_users = excluded.unique_users, users_hll = excluded.users_hll, \
                 updated_at = excluded.updated_at",
            )
            .bind(batch.rows)
            .bind(batch.blobs)
            .bind(&written_at)
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        tx.commit().await.map_err(query_error(&action))
    }

    pub(super) async fn lock_days(
        &self,
        days: &[Date],
        wait: Duration,
    ) -> Result<DayLocks, StoreError> {
        let inner = day_lock::lock_file_days(&self.lock_path, days, wait).await?;
        Ok(DayLocks { inner })
    }

    pub(super) async fn ping(&self) -> bool {
        self.check_reachable().await.is_ok()
    }

    pub(super) async fn check_reachable(&self) -> Result<(), StoreError> {
        let unreachable = |source| StoreError::Unreachable {
            target: self.url.clone(),
            source,
        };
        // Not by opening the file: SQLite hands a new connection a descriptor it
        // kept open, and closing a descriptor of our own would drop every
        // connection's locks on the file. `access` asks the permission check an
        // open would make.
        let path = std::ffi::CString::new(self.db_path.as_os_str().as_encoded_bytes())
            .map_err(|e| unreachable(sqlx::Error::Io(std::io::Error::other(e))))?;
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::access(path.as_ptr(), libc::R_OK | libc::W_OK) } != 0 {
            return Err(unreachable(
                sqlx::Error::Io(std::io::Error::last_os_error()),
            ));
        }
        sqlx::query("SELECT count(*) FROM sqlite_schema")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(unreachable)
    }
}

/// A plain read-only connection to the file at `path`, for the report's folds.
fn open_for_reading(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Hands `fold` the rollup rows of the days from `first` to `last` (and of
/// `events`, a JSON array, unless it is empty), by date and event.
fn read_rollups<F: RollupFold>(
    path: &std::path::Path,
    (first, last): (String, String),
    events: &str,
    mut fold: F,
) -> rusqlite::Result<F> {
    let conn = open_for_reading(path)?;
    let mut statement = conn.prepare(concat!(
        "SELECT date, event, count, unique_users, meta, users_hll, partial, updated_at, \
         meta_sketches FROM ",
        rollup_table!(),
        " WHERE date BETWEEN ?1 AND ?2 \
         AND (json_array_length(?3) = 0 OR event IN (SELECT value FROM json_each(?3))) \
         ORDER BY date, event"
    ))?;
    let mut rows = statement.query((first, last, events))?;
    while let Some(row) = rows.next()? {
        let date = row.get_ref(0)?.as_str()?;
        fold.add(RollupRef {
            date: parsed(date)?,
            event: row.get_ref(1)?.as_str()?,
            count: row.get(2)?,
            unique_users: row.get(3)?,
            meta: row.get_ref(4)?.as_str()?,
            users_hll: row.get_ref(5)?.as_blob_or_null()?,
            partial: row.get::<_, i64>(6)? != 0,
            updated_at: row.get_ref(7)?.as_str()?,
            meta_sketches: row.get_ref(8)?.as_str_or_null()?,
        });
    }
    Ok(fold)
}

/// Hands `fold` the hour rows of `[start, end)` (UTC text bounds) for `events` (all
/// when the JSON list is empty), by hour, read on this thread with a plain connection.
fn read_hours<F: HourFold>(
    path: &std::path::Path,
    (start, end): (String, String),
    events: &str,
    mut fold: F,
) -> rusqlite::Result<F> {
    let conn = open_for_reading(path)?;
    let mut statement = conn.prepare(
        "SELECT hour, event, count, unique_users, users_hll, updated_at FROM telemetry_hourly \
         WHERE hour >= ?1 AND hour < ?2 \
         AND (json_array_length(?3) = 0 OR event IN (SELECT value FROM json_each(?3))) \
         ORDER BY hour, event",
    )?;
    let mut rows = statement.query((start, end, events))?;
    while let Some(row) = rows.next()? {
        let hour = row.get_ref(0)?.as_str()?;
        fold.add(HourRef {
            hour: parsed(hour)?,
            event: row.get_ref(1)?.as_str()?,
            count: row.get(2)?,
            unique_users: row.get(3)?,
            users_hll: row.get_ref(4)?.as_blob()?,
            updated_at: row.get_ref(5)?.as_str()?,
        });
    }
    Ok(fold)
}

/// The first column's text parsed, or a conversion error naming it.
fn parsed<T>(text: &str) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}
