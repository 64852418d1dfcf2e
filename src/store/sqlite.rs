//! SQLite: the embedded default, zero set-up.
//!
//! The database runs in WAL mode so that readers see the old day or the new day
//! while a day commits. Rollup changes are written with one statement per kind,
//! the rows passed as one JSON array and unpacked by `json_each`.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Row as _};

use super::{
    DayLocks, DemoSample, NewEvent, NewRun, RunRecord, RunStatus, StoreError, TableName, day_lock,
    query_error, sqlite_scan,
};
use crate::telemetry_daily::{DayChanges, DayRange, DayWindow, MergeableSink, RollupRow};

/// How long a statement waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite database file holding the source table and `telemetry_daily`.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    db_path: PathBuf,
    lock_path: PathBuf,
    source: TableName,
    sql: Arc<Statements>,
}

/// Statements that name the configured source table, built once.
#[derive(Debug)]
struct Statements {
    scan: String,
    insert_events: String,
    count_foreign: String,
    delete_sample: String,
    id_watermark: String,
    hours_with_ids: String,
}

impl Statements {
    fn new(source: &TableName) -> Self {
        let src = source.quoted();
        Self {
            id_watermark: format!("SELECT max(id) FROM {src}"),
            // Whole UTC hours, cut from the contract's text form: the caller cuts them
            // into days of any zone.
            hours_with_ids: format!(
                "SELECT DISTINCT substr(created_at, 1, 13) || ':00:00Z' FROM {src} \
                 WHERE id > ?1 AND id <= ?2"
            ),
            // Text compared as text: the contract's fixed RFC 3339 form sorts in time
            // order, against bounds made by `sqlite_bound`.
            // BLOB casts let text that is not UTF-8 through, to be decoded leniently.
            scan: format!(
                "SELECT CAST(event AS BLOB), CAST(user_id AS BLOB), CAST(meta AS BLOB) FROM {src} \
                 WHERE created_at >= ?1 AND created_at < ?2"
            ),
            insert_events: format!(
                "INSERT INTO {src} (event, user_id, created_at, meta) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1) \
                 RETURNING id"
            ),
            count_foreign: format!("SELECT count(*) FROM {src} WHERE NOT (id BETWEEN ?1 AND ?2)"),
            delete_sample: format!("DELETE FROM {src} WHERE id BETWEEN ?1 AND ?2"),
        }
    }
}

/// An instant in the source table's text form, e.g. `2024-01-15T10:00:00.000Z`.
pub fn sqlite_timestamp(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A window bound as the text `created_at` is compared with: the instant rounded up
/// to a whole second, without fraction or zone, e.g. `2024-01-15T00:00:00`.
///
/// Every text form of an instant in that second (`…:00Z`, `…:00.000Z`,
/// `…:00.000000000Z`) starts with this text, so it sorts at or after it, and every
/// earlier second sorts before it: the comparison is right whatever the number of
/// fractional digits. A bound inside a second would not be (`.5Z` sorts after `.51`),
/// hence the rounding; windows that share a bound still share it after rounding, so
/// no event falls between them or into both.
pub fn sqlite_bound(at: Timestamp) -> String {
    // `as_second` truncates towards zero: the ceiling for instants before 1970.
    let second = at.as_second() + i64::from(at.subsec_nanosecond() > 0);
    // Within a second of jiff's limits no day ends; keep the bound as it is there.
    let whole = Timestamp::from_second(second).unwrap_or(at);
    whole.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] for an in-memory or malformed URL,
    /// [`StoreError::Unreachable`] when the file cannot be opened.
    pub async fn connect(url: &str, source: &TableName) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::InvalidUrl(format!(
                "'{url}' is an in-memory database; veris-jobs needs a file, e.g. sqlite://veris.db"
            )));
        }
        let options: SqliteConnectOptions = url
            .parse()
            .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            // Streaming a big day takes seconds by design: not worth a warning.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let db_path = options.get_filename().to_owned();
        let mut lock_path = db_path.as_os_str().to_owned();
        lock_path.push(".veris-lock");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Unreachable {
                target: url.to_owned(),
                source,
            })?;
        Ok(Self {
            pool,
            db_path,
            lock_path: lock_path.into(),
            source: source.clone(),
            sql: Arc::new(Statements::new(source)),
        })
    }

    /// The pool, for callers that need the database itself (tests, tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error("starting the migration"))?;
        let (schema, table) = match self.source.to_string().split_once('.') {
            Some((schema, table)) => (format!("\"{schema}\""), table.to_owned()),
            None => ("\"main\"".to_owned(), self.source.table().to_owned()),
        };
        let exists: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1"
        )))
        .bind(&table)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error("looking for the source table"))?;
        if exists == 0 {
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
        sqlx::raw_sql(include_str!("../../migrations/sqlite/rollup.sql"))
            .execute(&mut *tx)
            .await
            .map_err(query_error("creating the rollup tables"))?;
        // Tables made before source_watermark existed (SQLite has no ADD COLUMN IF NOT EXISTS).
        let has_watermark: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pragma_table_info('job_runs') WHERE name = 'source_watermark'",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error("looking at job_runs"))?;
        if has_watermark == 0 {
            sqlx::query("ALTER TABLE job_runs ADD COLUMN source_watermark integer")
                .execute(&mut *tx)
                .await
                .map_err(query_error("adding job_runs.source_watermark"))?;
        }
        tx.commit()
            .await
            .map_err(query_error("committing the migration"))
    }

    pub(super) async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Reads the window on a blocking thread with a plain SQLite connection, in
    /// batches that several blocking threads aggregate, each into a part of `sink`
    /// (see [`sqlite_scan`](super::sqlite_scan)).
    pub(super) async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        let action = || format!("reading the events of {} from {}", window.date, self.source);
        let cancelled = || StoreError::Aborted(format!("{} was cancelled", action()));
        let (parts, reader) = sqlite_scan::read_parts::<K>(
            &self.db_path,
            &self.sql.scan,
            sqlite_bound(window.start),
            sqlite_bound(window.end),
            BUSY_TIMEOUT,
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
            .map_err(query_error(&format!(
                "reading the highest id of {} (--changed needs an integer id column)",
                self.source
            )))
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
                .map_err(query_error(&format!(
                    "finding the hours of {}'s new events",
                    self.source
                )))?;
        Ok(super::parse_hours(&hours))
    }

    pub(super) async fn load_day(&self, date: Date) -> Result<Vec<RollupRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT event, count, unique_users, meta FROM telemetry_daily WHERE date = ?1",
        )
        .bind(date.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(&format!("reading the rollup rows of {date}")))?;
        rows.into_iter()
            .map(|row| {
                Ok(RollupRow {
                    event: row.try_get(0)?,
                    count: row.try_get(1)?,
                    unique_users: row.try_get(2)?,
                    meta: row.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error(&format!("reading the rollup rows of {date}")))
    }

    pub(super) async fn write_day(
        &self,
        date: Date,
        changes: &DayChanges,
    ) -> Result<(), StoreError> {
        let action = format!("writing the rollup rows of {date}");
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error(&action))?;
        if !changes.deletes.is_empty() {
            sqlx::query(
                "DELETE FROM telemetry_daily WHERE date = ?1 AND event IN (SELECT value FROM json_each(?2))",
            )
            .bind(date.to_string())
            .bind(json!(changes.deletes).to_string())
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        let rows: Vec<_> = changes
            .inserts
            .iter()
            .chain(&changes.updates)
            .map(|r| json!([r.event, r.count, r.unique_users, r.meta]))
            .collect();
        if !rows.is_empty() {
            // `WHERE true` keeps SQLite from reading ON CONFLICT as part of a join.
            sqlx::query(
                "INSERT INTO telemetry_daily (date, event, count, unique_users, meta, updated_at) \
                 SELECT ?1, value ->> 0, value ->> 1, value ->> 2, value ->> 3, \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM json_each(?2) WHERE true \
                 ON CONFLICT (date, event) DO UPDATE SET count = excluded.count, \
                 unique_users = excluded.unique_users, meta = excluded.meta, updated_at = excluded.updated_at",
            )
            .bind(date.to_string())
            .bind(serde_json::Value::Array(rows).to_string())
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

    pub(super) async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error("inserting events"))?;
        self.insert_events_in(&mut tx, events).await?;
        tx.commit().await.map_err(query_error("inserting events"))
    }

    async fn insert_events_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(10_000) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|e| json!([e.event, e.user_id, sqlite_timestamp(e.created_at), e.meta]))
                .collect();
            let mut batch: Vec<i64> =
                sqlx::query_scalar(AssertSqlSafe(self.sql.insert_events.as_str()))
                    .bind(serde_json::Value::Array(rows).to_string())
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(query_error(&format!(
                        "inserting events into {}",
                        self.source
                    )))?;
            ids.append(&mut batch);
        }
        Ok(ids)
    }

    pub(super) async fn demo_sample(&self) -> Result<Option<DemoSample>, StoreError> {
        let row = sqlx::query(
            "SELECT first_id, last_id, start_date, end_date FROM veris_demo_sample LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading the demo sample"))?;
        row.map(|row| {
            let start: Cow<'_, str> = row.try_get::<String, _>(2)?.into();
            let end: Cow<'_, str> = row.try_get::<String, _>(3)?.into();
            Ok(DemoSample {
                first_id: row.try_get(0)?,
                last_id: row.try_get(1)?,
                start_date: start
                    .parse()
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                end_date: end.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            })
        })
        .transpose()
        .map_err(query_error("reading the demo sample"))
    }

    pub(super) async fn count_foreign_events(
        &self,
        sample: Option<&DemoSample>,
    ) -> Result<i64, StoreError> {
        let (first, last) = sample.map_or((0, -1), |s| (s.first_id, s.last_id));
        sqlx::query_scalar(AssertSqlSafe(self.sql.count_foreign.as_str()))
            .bind(first)
            .bind(last)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error(&format!(
                "counting the events in {}",
                self.source
            )))
    }

    pub(super) async fn replace_demo_sample(
        &self,
        previous: Option<&DemoSample>,
        events: &[NewEvent],
        range: &DayRange,
    ) -> Result<DemoSample, StoreError> {
        let action = "replacing the demo sample";
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error(action))?;
        if let Some(old) = previous {
            sqlx::query(AssertSqlSafe(self.sql.delete_sample.as_str()))
                .bind(old.first_id)
                .bind(old.last_id)
                .execute(&mut *tx)
                .await
                .map_err(query_error(action))?;
            sqlx::query("DELETE FROM telemetry_daily WHERE date BETWEEN ?1 AND ?2")
                .bind(old.start_date.to_string())
                .bind(old.end_date.to_string())
                .execute(&mut *tx)
                .await
                .map_err(query_error(action))?;
        }
        let ids = self.insert_events_in(&mut tx, events).await?;
        let sample = DemoSample {
            first_id: ids.iter().copied().min().unwrap_or(0),
            last_id: ids.iter().copied().max().unwrap_or(-1),
            start_date: range.start(),
            end_date: range.end(),
        };
        sqlx::query("DELETE FROM veris_demo_sample")
            .execute(&mut *tx)
            .await
            .map_err(query_error(action))?;
        sqlx::query("INSERT INTO veris_demo_sample (first_id, last_id, start_date, end_date) VALUES (?1, ?2, ?3, ?4)")
            .bind(sample.first_id)
            .bind(sample.last_id)
            .bind(sample.start_date.to_string())
            .bind(sample.end_date.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query_error(action))?;
        tx.commit().await.map_err(query_error(action))?;
        Ok(sample)
    }

    pub(super) async fn start_run(&self, run: &NewRun) -> Result<i64, StoreError> {
        let action = "recording the run";
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error(action))?;
        sqlx::query(
            "UPDATE job_runs SET status = 'abandoned', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE status = 'running' AND job = ?1 AND start_date <= ?3 AND end_date >= ?2",
        )
        .bind(&run.job)
        .bind(run.range.start().to_string())
        .bind(run.range.end().to_string())
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO job_runs (job, trigger, started_at, start_date, end_date, timezone, status, \
             days_total, source_watermark) \
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?3, ?4, ?5, 'running', ?6, ?7) RETURNING id",
        )
        .bind(&run.job)
        .bind(&run.trigger)
        .bind(run.range.start().to_string())
        .bind(run.range.end().to_string())
        .bind(&run.timezone)
        .bind(i64::from(run.days_total))
        .bind(run.source_watermark)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error(action))?;
        tx.commit().await.map_err(query_error(action))?;
        Ok(id)
    }

    pub(super) async fn run_progress(&self, id: i64, days_done: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE job_runs SET days_done = ?2 WHERE id = ?1")
            .bind(id)
            .bind(i64::from(days_done))
            .execute(&self.pool)
            .await
            .map_err(query_error("recording the run's progress"))?;
        Ok(())
    }

    pub(super) async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        days_done: u32,
        report_json: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_runs SET status = ?2, days_done = ?3, report = ?4, \
             finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(i64::from(days_done))
        .bind(report_json)
        .execute(&self.pool)
        .await
        .map_err(query_error("recording the end of the run"))?;
        Ok(())
    }

    pub(super) async fn last_watermark(&self, job: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT source_watermark FROM job_runs WHERE job = ?1 AND status = 'ok' \
             AND source_watermark IS NOT NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error(
            "reading the last watermark from job_runs (veris-jobs migrate brings it up to date)",
        ))
        .map(Option::flatten)
    }

    pub(super) async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, job, trigger, started_at, finished_at, start_date, end_date, timezone, status, \
             days_done, days_total, report, source_watermark FROM job_runs ORDER BY id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading job_runs (veris-jobs migrate brings it up to date)"))?;
        rows.iter()
            .map(super::run_record)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error(
                "reading job_runs (veris-jobs migrate brings it up to date)",
            ))
    }
}
