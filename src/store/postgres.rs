//! PostgreSQL: the production database.
//!
//! Events stream out of the source with one query per day; a day's rollup changes
//! are written with one batched statement per kind (arrays bound to `unnest`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use jiff::Timestamp;
use jiff::civil::Date;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolCopyExt as _, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _, Row as _};
use tokio::sync::OnceCell;

use super::pg_copy::{CopyFormatError, CopyReader};
use super::{
    DayLocks, DemoSample, NewEvent, NewRun, RunRecord, RunStatus, StoreError, TableName, day_lock,
    query_error, redact_url,
};
use crate::telemetry_daily::{DayChanges, DayRange, DayWindow, MergeableSink, RollupRow};

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a health check waits for the pool.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

fn copy_error(action: &str) -> impl FnOnce(CopyFormatError) -> StoreError + '_ {
    move |error| StoreError::Query {
        action: action.to_owned(),
        source: sqlx::Error::Decode(Box::new(error)),
    }
}

/// A PostgreSQL database holding the source table and `telemetry_daily`.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    options: Arc<PgConnectOptions>,
    target: String,
    source: TableName,
    sql: Arc<Statements>,
    /// Looked up on the first scan: the source table may not exist before `migrate`.
    meta_is_jsonb: Arc<OnceCell<bool>>,
}

/// Statements that name the configured source table, built once.
#[derive(Debug)]
struct Statements {
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
            id_watermark: format!("SELECT max(id)::int8 FROM {src}"),
            // Whole UTC hours: the caller cuts them into days of any zone.
            hours_with_ids: format!(
                "SELECT DISTINCT to_char(date_trunc('hour', created_at AT TIME ZONE 'UTC'), \
                 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"') FROM {src} \
                 WHERE id > $1 AND id <= $2"
            ),
            insert_events: format!(
                "INSERT INTO {src} (event, user_id, created_at, meta) \
                 SELECT e, u, c::timestamptz, m::jsonb \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(e, u, c, m) \
                 RETURNING id"
            ),
            count_foreign: format!("SELECT count(*) FROM {src} WHERE NOT (id BETWEEN $1 AND $2)"),
            delete_sample: format!("DELETE FROM {src} WHERE id BETWEEN $1 AND $2"),
        }
    }
}

impl PgStore {
    /// Connects a small pool to `url`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] or [`StoreError::Unreachable`].
    pub async fn connect(url: &str, source: &TableName) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(url, source)?;
        // Connects once now, so that an unreachable server is reported at once (the
        // pool would retry until its timeout).
        let conn = store.fresh_connection().await?;
        let _ = conn.close().await;
        Ok(store)
    }

    /// A pool that connects on first use: for a server that should start (and answer
    /// 503) while the database is down.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`].
    pub fn connect_lazy(url: &str, source: &TableName) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", redact_url(url))))?;
        // Streaming a big day takes seconds by design: not worth a warning.
        let options = options.log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let target = redact_url(url);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options: Arc::new(options),
            target,
            source: source.clone(),
            sql: Arc::new(Statements::new(source)),
            meta_is_jsonb: Arc::new(OnceCell::new()),
        })
    }

    /// The pool, for callers that need the database itself (tests, tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection of its own, outside the pool, within the connect timeout.
    async fn fresh_connection(&self) -> Result<sqlx::postgres::PgConnection, StoreError> {
        let unreachable = |source| StoreError::Unreachable {
            target: self.target.clone(),
            source,
        };
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            sqlx::postgres::PgConnection::connect_with(&self.options),
        )
        .await
        .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
        .map_err(unreachable)
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting the migration"))?;
        // Concurrent migrations would race on CREATE ... IF NOT EXISTS.
        sqlx::query("SELECT pg_advisory_xact_lock(1986359913)")
            .execute(&mut *tx)
            .await
            .map_err(query_error("locking for the migration"))?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.source.quoted())
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error("looking for the source table"))?;
        if !exists {
            let sql = include_str!("../../migrations/postgres/source.sql")
                .replace("{source}", &self.source.quoted())
                .replace(
                    "{source_index}",
                    &format!("\"{}_created_at_idx\"", self.source.table()),
                );
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(query_error(&format!(
                    "creating the source table {}",
                    self.source
                )))?;
        }
        sqlx::raw_sql(include_str!("../../migrations/postgres/rollup.sql"))
            .execute(&mut *tx)
            .await
            .map_err(query_error("creating the rollup tables"))?;
        tx.commit()
            .await
            .map_err(query_error("committing the migration"))
    }

    /// Asks through the pool, and if that fails on a fresh connection: a pooled
    /// connection may be one the server has just closed.
    pub(super) async fn ping(&self) -> bool {
        // A health check answers quickly, well within the pool's connect timeout.
        let pooled =
            tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await;
        if matches!(pooled, Ok(Ok(_))) {
            return true;
        }
        let Ok(mut conn) = self.fresh_connection().await else {
            return false;
        };
        let answered = sqlx::query("SELECT 1").execute(&mut conn).await.is_ok();
        let _ = conn.close().await;
        answered
    }

    /// Streams the day out with binary `COPY`, the fastest way PostgreSQL hands
    /// rows over.
    pub(super) async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        let action = format!("reading the events of {} from {}", window.date, self.source);
        let meta_is_jsonb = *self
            .meta_is_jsonb
            .get_or_try_init(|| self.source_meta_is_jsonb())
            .await?;
        let meta = if meta_is_jsonb { "meta" } else { "meta::text" };
        // COPY takes no parameters; the bounds are timestamps formatted here, not input.
        let sql = format!(
            "COPY (SELECT event::text, user_id::text, {meta} FROM {} \
             WHERE created_at >= '{}'::timestamptz AND created_at < '{}'::timestamptz) \
             TO STDOUT (FORMAT binary)",
            self.source.quoted(),
            window.start,
            window.end
        );
        let mut chunks = self
            .pool
            .copy_out_raw(&sql)
            .await
            .map_err(query_error(&action))?;
        let mut reader = CopyReader::new(meta_is_jsonb);
        while let Some(chunk) = chunks.try_next().await.map_err(query_error(&action))? {
            reader.feed(&chunk, sink).map_err(copy_error(&action))?;
        }
        reader.finish().map_err(copy_error(&action))
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

    /// Whether the source's `meta` column is `jsonb` (sent with a version byte) rather
    /// than `json` or text (sent as text, after a cast).
    async fn source_meta_is_jsonb(&self) -> Result<bool, StoreError> {
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::regclass AND attname = 'meta' AND NOT attisdropped",
        )
        .bind(self.source.quoted())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error(&format!(
            "looking up the meta column of {}",
            self.source
        )))?;
        Ok(kind.as_deref() == Some("jsonb"))
    }

    pub(super) async fn load_day(&self, date: Date) -> Result<Vec<RollupRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT event, count, unique_users, meta::text FROM telemetry_daily WHERE date = $1::date",
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
        let mut tx = self.pool.begin().await.map_err(query_error(&action))?;
        if !changes.deletes.is_empty() {
            sqlx::query(
                "DELETE FROM telemetry_daily WHERE date = $1::date AND event = ANY($2::text[])",
            )
            .bind(date.to_string())
            .bind(&changes.deletes)
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        let upserts = changes.inserts.iter().chain(&changes.updates);
        let (mut events, mut counts, mut users, mut metas) = (vec![], vec![], vec![], vec![]);
        for row in upserts {
            events.push(row.event.as_str());
            counts.push(row.count);
            users.push(row.unique_users);
            metas.push(row.meta.as_str());
        }
        if !events.is_empty() {
            sqlx::query(
                "INSERT INTO telemetry_daily (date, event, count, unique_users, meta, updated_at) \
                 SELECT $1::date, e, c, u, m::jsonb, now() \
                 FROM unnest($2::text[], $3::int8[], $4::int8[], $5::text[]) AS t(e, c, u, m) \
                 ON CONFLICT (date, event) DO UPDATE SET count = EXCLUDED.count, \
                 unique_users = EXCLUDED.unique_users, meta = EXCLUDED.meta, updated_at = EXCLUDED.updated_at",
            )
            .bind(date.to_string())
            .bind(&events)
            .bind(&counts)
            .bind(&users)
            .bind(&metas)
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
        // Session locks need a session of their own, outside the pool.
        let conn = self.fresh_connection().await?;
        let inner = day_lock::lock_pg_days(conn, days, wait).await?;
        Ok(DayLocks { inner })
    }

    pub(super) async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("inserting events"))?;
        self.insert_events_in(&mut tx, events).await?;
        tx.commit().await.map_err(query_error("inserting events"))
    }

    /// Inserts `events` in batches, returning the ids given to them.
    async fn insert_events_in(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(10_000) {
            let names: Vec<Option<&str>> = chunk.iter().map(|e| e.event.as_deref()).collect();
            let users: Vec<Option<&str>> = chunk.iter().map(|e| e.user_id.as_deref()).collect();
            let times: Vec<String> = chunk.iter().map(|e| e.created_at.to_string()).collect();
            let metas: Vec<Option<&str>> = chunk.iter().map(|e| e.meta.as_deref()).collect();
            let mut batch: Vec<i64> =
                sqlx::query_scalar(AssertSqlSafe(self.sql.insert_events.as_str()))
                    .bind(&names)
                    .bind(&users)
                    .bind(&times)
                    .bind(&metas)
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
            "SELECT first_id, last_id, start_date::text, end_date::text FROM veris_demo_sample LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading the demo sample"))?;
        row.map(|row| {
            let start: String = row.try_get(2)?;
            let end: String = row.try_get(3)?;
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
        let mut tx = self.pool.begin().await.map_err(query_error(action))?;
        if let Some(old) = previous {
            sqlx::query(AssertSqlSafe(self.sql.delete_sample.as_str()))
                .bind(old.first_id)
                .bind(old.last_id)
                .execute(&mut *tx)
                .await
                .map_err(query_error(action))?;
            sqlx::query("DELETE FROM telemetry_daily WHERE date BETWEEN $1::date AND $2::date")
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
        sqlx::query("INSERT INTO veris_demo_sample (first_id, last_id, start_date, end_date) VALUES ($1, $2, $3::date, $4::date)")
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
        let mut tx = self.pool.begin().await.map_err(query_error(action))?;
        sqlx::query(
            "UPDATE job_runs SET status = 'abandoned', finished_at = now() \
             WHERE status = 'running' AND job = $1 AND start_date <= $3::date AND end_date >= $2::date",
        )
        .bind(&run.job)
        .bind(run.range.start().to_string())
        .bind(run.range.end().to_string())
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO job_runs (job, trigger, start_date, end_date, timezone, status, days_total, source_watermark) \
             VALUES ($1, $2, $3::date, $4::date, $5, 'running', $6, $7) RETURNING id",
        )
        .bind(&run.job)
        .bind(&run.trigger)
        .bind(run.range.start().to_string())
        .bind(run.range.end().to_string())
        .bind(&run.timezone)
        .bind(i32::try_from(run.days_total).unwrap_or(i32::MAX))
        .bind(run.source_watermark)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error(action))?;
        tx.commit().await.map_err(query_error(action))?;
        Ok(id)
    }

    pub(super) async fn run_progress(&self, id: i64, days_done: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE job_runs SET days_done = $2 WHERE id = $1")
            .bind(id)
            .bind(i32::try_from(days_done).unwrap_or(i32::MAX))
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
            "UPDATE job_runs SET status = $2, days_done = $3, report = $4::jsonb, finished_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(i32::try_from(days_done).unwrap_or(i32::MAX))
        .bind(report_json)
        .execute(&self.pool)
        .await
        .map_err(query_error("recording the end of the run"))?;
        Ok(())
    }

    pub(super) async fn last_watermark(&self, job: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT source_watermark FROM job_runs WHERE job = $1 AND status = 'ok' \
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
        let utc = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";
        let sql = format!(
            "SELECT id, job, trigger, to_char(started_at AT TIME ZONE 'UTC', {utc}), \
             to_char(finished_at AT TIME ZONE 'UTC', {utc}), start_date::text, end_date::text, timezone, status, \
             days_done::int8, days_total::int8, report::text, source_watermark FROM job_runs ORDER BY id DESC LIMIT $1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error(
                "reading job_runs (veris-jobs migrate brings it up to date)",
            ))?;
        rows.iter()
            .map(super::run_record)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error(
                "reading job_runs (veris-jobs migrate brings it up to date)",
            ))
    }
}
