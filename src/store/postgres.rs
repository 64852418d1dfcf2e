//! PostgreSQL: the production database.
//!
//! Events stream out of the source with one query per day; a day's rollup changes
//! are written with one batched statement per kind (arrays bound to `unnest`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use futures_util::future::join_all;
use jiff::Timestamp;
use jiff::civil::Date;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};
use tokio::sync::OnceCell;

use super::deal::{Dealer, Spread};
use super::error::query_error;
use super::pg_copy::{CopyFormatError, CopyReader};
use super::{DayLocks, StoreError, TableName, day_lock, redact_url, rows};
use crate::model::{
    DayChanges, DayRange, DayWindow, HourChanges, HourFold, HourRef, HourRow, MergeableSink,
    RollupFold, RollupRef, RollupRow,
};

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections a command's pool opens while the server is checked: as many as its
/// queries run at once, so that none waits for a handshake of its own later.
const WARM_CONNECTIONS: usize = super::READS_AT_ONCE;

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
    pub(super) pool: PgPool,
    options: Arc<PgConnectOptions>,
    target: String,
    pub(super) source: TableName,
    /// Whether `migrate` creates the source table: not when events come from
    /// another database.
    pub(super) creates_source: bool,
    sql: Arc<Statements>,
    /// Looked up on the first scan: the source table may not exist before `migrate`.
    meta_is_jsonb: Arc<OnceCell<bool>>,
    /// When the latest health check ended and what it found; held while one runs.
    last_ping: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
}

/// Statements that name the configured source table, built once.
#[derive(Debug)]
struct Statements {
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
        // pool would retry until its timeout). The pool opens its first connections
        // meanwhile: over TLS, whose handshake takes this driver about 90 ms, they
        // all take the time of one.
        {
            let pooled = join_all((0..WARM_CONNECTIONS).map(|_| store.pool.acquire()));
            tokio::pin!(pooled);
            let checked = store.fresh_connection();
            tokio::pin!(checked);
            let (conn, opened) = tokio::select! {
                conn = &mut checked => (conn?, None),
                opened = &mut pooled => (checked.await?, Some(opened)),
            };
            let _ = conn.close().await;
            // Reachable: the pool's connections follow, and go back to the pool
            // for the command's first queries.
            if opened.is_none() {
                let _ = pooled.await;
            }
        }
        Ok(store)
    }

    /// A pool that connects on first use: for a server that should start (and answer
    /// 503) while the database is down.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`].
    pub fn connect_lazy(url: &str, source: &TableName) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::InvalidUrl(format!("{}: {}", redact_url(url), url_problem(&e)))
        })?;
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
            creates_source: true,
            sql: Arc::new(Statements::new(source)),
            meta_is_jsonb: Arc::new(OnceCell::new()),
            last_ping: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// The pool, for callers that need the database itself (tests, tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pooled connection for work that must not be cut off half way.
    async fn acquire_guarded(&self) -> Result<WholeOrClosed, sqlx::Error> {
        Ok(WholeOrClosed {
            conn: self.pool.acquire().await?,
            finished: false,
        })
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

    /// One health check: the pool within [`PING_TIMEOUT`], then a fresh connection
    /// within as long again.
    async fn ping_now(&self) -> bool {
        let pooled =
            tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await;
        if matches!(pooled, Ok(Ok(_))) {
            return true;
        }
        let Ok(Ok(mut conn)) = tokio::time::timeout(PING_TIMEOUT, self.fresh_connection()).await
        else {
            return false;
        };
        let answered = sqlx::query("SELECT 1").execute(&mut conn).await.is_ok();
        let _ = conn.close().await;
        answered
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
}

/// Applies a day's hour changes inside its write transaction `tx`.
async fn write_hours(
    tx: &mut PgConnection,
    hours: &HourChanges,
    action: &str,
) -> Result<(), StoreError> {
    if !hours.deletes.is_empty() {
        let (instants, events): (Vec<String>, Vec<&str>) = hours
            .deletes
            .iter()
            .map(|(hour, event)| (hour.to_string(), event.as_str()))
            .unzip();
        sqlx::query(
            "DELETE FROM telemetry_hourly WHERE (hour, event) IN \
             (SELECT h::timestamptz, e FROM unnest($1::text[], $2::text[]) AS t(h, e))",
        )
        .bind(&instants)
        .bind(&events)
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?;
    }
    let (mut instants, mut events, mut counts, mut users, mut sketches) =
        (vec![], vec![], vec![], vec![], vec![]);
    for row in hours.inserts.iter().chain(&hours.updates) {
        instants.push(row.hour.to_string());
        events.push(row.event.as_str());
        counts.push(row.count);
        users.push(row.unique_users);
        sketches.push(row.users_hll.as_slice());
    }
    if !events.is_empty() {
        sqlx::query(
            "INSERT INTO telemetry_hourly (hour, event, count, unique_users, users_hll, updated_at) \
             SELECT h::timestamptz, e, c, u, s, now() \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bytea[]) \
             AS t(h, e, c, u, s) \
             ON CONFLICT (hour, event) DO UPDATE SET count = EXCLUDED.count, \
             unique_users = EXCLUDED.unique_users, users_hll = EXCLUDED.users_hll, \
             updated_at = EXCLUDED.updated_at",
        )
        .bind(&instants)
        .bind(&events)
        .bind(&counts)
        .bind(&users)
        .bind(&sketches)
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?;
    }
    Ok(())
}

/// A pooled connection that goes back to the pool only once its work is
/// [`finished`](WholeOrClosed::finished). One dropped half way through a `COPY` or a
/// transaction (its caller hung up, its run was stopped) is closed instead: the
/// driver would hand it to the next query still in the middle of the old one.
struct WholeOrClosed {
    conn: PoolConnection<Postgres>,
    finished: bool,
}

impl WholeOrClosed {
    /// The work ended cleanly: the connection may serve the next query.
    fn finished(&mut self) {
        self.finished = true;
    }
}

impl std::ops::Deref for WholeOrClosed {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WholeOrClosed {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for WholeOrClosed {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

impl PgStore {
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
        // created_at comes along for the reader to tell each event's local hour.
        let sql = format!(
            "COPY (SELECT event::text, user_id::text, {meta}, created_at::timestamptz \
             FROM {} WHERE created_at >= '{}'::timestamptz AND created_at < '{}'::timestamptz) \
             TO STDOUT (FORMAT binary)",
            self.source.quoted(),
            window.start,
            window.end,
        );
        let mut conn = self.acquire_guarded().await.map_err(query_error(&action))?;
        let mut chunks = conn
            .copy_out_raw(&sql)
            .await
            .map_err(query_error(&action))?;
        // Parsing the stream keeps this task busy; the rows are dealt out to
        // aggregators on the other cores, whose work would otherwise wait for it.
        let (mut dealer, parts) = Dealer::start(&*sink, Spread::OnceSpilled);
        let mut reader = CopyReader::new(meta_is_jsonb, window.day_start);
        while let Some(chunk) = chunks.try_next().await.map_err(query_error(&action))? {
            reader
                .feed(&chunk, &mut dealer)
                .map_err(copy_error(&action))?;
        }
        reader.finish().map_err(copy_error(&action))?;
        drop(chunks);
        conn.finished();
        let own = dealer.finish();
        for part in parts {
            match part.await {
                Ok(part) => sink.merge(part),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(StoreError::Aborted(format!("{action} was cancelled"))),
            }
        }
        sink.merge(own);
        Ok(())
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

impl PgStore {
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
        if !exists && self.creates_source {
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
        let rollup = include_str!("../../migrations/postgres/rollup.sql")
            .replace("{rollup}", rollup_table!());
        sqlx::raw_sql(AssertSqlSafe(rollup))
            .execute(&mut *tx)
            .await
            .map_err(query_error("creating the rollup tables"))?;
        tx.commit()
            .await
            .map_err(query_error("committing the migration"))
    }

    pub(super) async fn load_day(&self, date: Date) -> Result<Vec<RollupRow>, StoreError> {
        let action = super::load_day_action(date);
        sqlx::query(concat!(
            "SELECT event, count, unique_users, meta::text, users_hll, partial, meta_sketches::text FROM ",
            rollup_table!(),
            " WHERE date = $1::date"
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
        mut fold: F,
    ) -> Result<F, StoreError> {
        use sqlx::Row as _;

        let action = super::rollups_action(range);
        let (first, last) = (range.start().to_string(), range.end().to_string());
        // The rows must come in date order, which the primary key's order gives (the
        // output is named `day` so that `ORDER BY date` means the column). Over a
        // range that is most of the table the planner prefers a sort, which would
        // convert and copy every wide row (the summaries' text, the sketches) before
        // the sort and spill them to disk, with workers passing them on again: on the
        // benchmark's year, half as much CPU again as reading in the key's order. With
        // a list of events only theirs are sorted, which costs less than reading
        // every event's rows in the key's order.
        let begin = if events.is_empty() {
            "BEGIN READ ONLY; SET LOCAL enable_sort = off; \
             SET LOCAL max_parallel_workers_per_gather = 0"
        } else {
            "BEGIN READ ONLY"
        };
        let mut conn = self.acquire_guarded().await.map_err(query_error(&action))?;
        let mut tx = conn.begin_with(begin).await.map_err(query_error(&action))?;
        let query = sqlx::query(concat!(
            "SELECT date::text AS day, event, count, unique_users, meta::text, users_hll, partial, \
             to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
             meta_sketches::text FROM ",
            rollup_table!(),
            " WHERE date BETWEEN $1::date AND $2::date \
             AND (cardinality($3::text[]) = 0 OR event = ANY($3::text[])) ORDER BY date, event"
        ))
        .bind(&first)
        .bind(&last)
        .bind(events);
        let mut found = query.fetch(&mut *tx);
        // Each row is folded from the driver's buffer as it arrives.
        while let Some(row) = found.try_next().await.map_err(query_error(&action))? {
            let read = || -> Result<RollupRef<'_>, sqlx::Error> {
                Ok(RollupRef {
                    date: rows::date_column(&row, 0)?,
                    event: row.try_get(1)?,
                    count: row.try_get(2)?,
                    unique_users: row.try_get(3)?,
                    meta: row.try_get(4)?,
                    users_hll: row.try_get(5)?,
                    partial: row.try_get(6)?,
                    updated_at: row.try_get(7)?,
                    meta_sketches: row.try_get(8)?,
                })
            };
            fold.add(read().map_err(query_error(&action))?);
        }
        drop(found);
        tx.commit().await.map_err(query_error(&action))?;
        conn.finished();
        Ok(fold)
    }

    pub(super) async fn write_day(
        &self,
        date: Date,
        changes: &DayChanges,
    ) -> Result<(), StoreError> {
        let action = super::write_day_action(date);
        let mut conn = self.acquire_guarded().await.map_err(query_error(&action))?;
        let mut tx = conn.begin().await.map_err(query_error(&action))?;
        if !changes.deletes.is_empty() {
            sqlx::query(concat!(
                "DELETE FROM ",
                rollup_table!(),
                " WHERE date = $1::date AND event = ANY($2::text[])"
            ))
            .bind(date.to_string())
            .bind(&changes.deletes)
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        let upserts = changes.inserts.iter().chain(&changes.updates);
        let (mut events, mut counts, mut users, mut metas, mut sketches, mut partials) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut meta_sketches = vec![];
        for row in upserts {
            events.push(row.event.as_str());
            counts.push(row.count);
            users.push(row.unique_users);
            metas.push(row.meta.as_str());
            sketches.push(row.users_hll.as_deref());
            partials.push(row.partial);
            meta_sketches.push(row.meta_sketches.as_deref());
        }
        if !events.is_empty() {
            sqlx::query(concat!(
                "INSERT INTO ",
                rollup_table!(),
                " (date, event, count, unique_users, meta, users_hll, partial, meta_sketches, \
                 updated_at) \
                 SELECT $1::date, e, c, u, m::jsonb, h, p, s::jsonb, now() \
                 FROM unnest($2::text[], $3::int8[], $4::int8[], $5::text[], $6::bytea[], \
                 $7::bool[], $8::text[]) AS t(e, c, u, m, h, p, s) \
                 ON CONFLICT (date, event) DO UPDATE SET count = EXCLUDED.count, \
                 unique_users = EXCLUDED.unique_users, meta = EXCLUDED.meta, \
                 users_hll = EXCLUDED.users_hll, partial = EXCLUDED.partial, \
                 meta_sketches = EXCLUDED.meta_sketches, updated_at = EXCLUDED.updated_at"
            ))
            .bind(date.to_string())
            .bind(&events)
            .bind(&counts)
            .bind(&users)
            .bind(&metas)
            .bind(&sketches)
            .bind(&partials)
            .bind(&meta_sketches)
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        }
        write_hours(&mut tx, &changes.hours, &action).await?;
        tx.commit().await.map_err(query_error(&action))?;
        conn.finished();
        Ok(())
    }

    pub(super) async fn fold_hours<F: HourFold>(
        &self,
        (start, end): (Timestamp, Timestamp),
        events: &[String],
        mut fold: F,
    ) -> Result<F, StoreError> {
        use sqlx::Row as _;

        let action = super::hours_report_action(start, end);
        let mut conn = self.acquire_guarded().await.map_err(query_error(&action))?;
        let mut tx = conn
            .begin_with("BEGIN READ ONLY")
            .await
            .map_err(query_error(&action))?;
        let query = sqlx::query(
            "SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), event, \
             count, unique_users, users_hll, \
             to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
             FROM telemetry_hourly WHERE hour >= $1::timestamptz AND hour < $2::timestamptz \
             AND (cardinality($3::text[]) = 0 OR event = ANY($3::text[])) ORDER BY hour, event",
        )
        .bind(start.to_string())
        .bind(end.to_string())
        .bind(events);
        let mut found = query.fetch(&mut *tx);
        while let Some(row) = found.try_next().await.map_err(query_error(&action))? {
            let read = || -> Result<HourRef<'_>, sqlx::Error> {
                let hour: &str = row.try_get(0)?;
                Ok(HourRef {
                    hour: hour.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    event: row.try_get(1)?,
                    count: row.try_get(2)?,
                    unique_users: row.try_get(3)?,
                    users_hll: row.try_get(4)?,
                    updated_at: row.try_get(5)?,
                })
            };
            fold.add(read().map_err(query_error(&action))?);
        }
        drop(found);
        tx.commit().await.map_err(query_error(&action))?;
        conn.finished();
        Ok(fold)
    }

    pub(super) async fn load_hours(&self, window: &DayWindow) -> Result<Vec<HourRow>, StoreError> {
        let action = super::load_hours_action(window.date);
        sqlx::query(
            "SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), event, \
             count, unique_users, users_hll FROM telemetry_hourly \
             WHERE hour >= $1::timestamptz AND hour < $2::timestamptz",
        )
        .bind(window.start.to_string())
        .bind(window.end.to_string())
        .fetch_all(&self.pool)
        .await
        .and_then(|found| found.iter().map(rows::hour_row).collect())
        .map_err(query_error(&action))
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

    /// Asks through the pool, and if that fails on a fresh connection: a pooled
    /// connection may be one the server has just closed. One check at a time: checks
    /// that arrive meanwhile take its answer, so that a flood of health checks against
    /// a silent server opens no more connections than one does.
    ///
    /// A pool that gives no connection within [`PING_TIMEOUT`] is either busy (the
    /// health check then finds the server up) or facing a silent server: the caller
    /// hears so within seconds, not after the pool's own wait.
    pub(super) async fn check_reachable(&self) -> Result<(), StoreError> {
        let unreachable = |source| StoreError::Unreachable {
            target: self.target.clone(),
            source,
        };
        match tokio::time::timeout(PING_TIMEOUT, self.pool.acquire()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(unreachable(source)),
            Err(_) if self.ping().await => Ok(()),
            Err(_) => Err(unreachable(sqlx::Error::PoolTimedOut)),
        }
    }

    pub(super) async fn ping(&self) -> bool {
        let asked = Instant::now();
        let mut last = self.last_ping.lock().await;
        if let Some((answered_at, answered)) = *last
            && answered_at >= asked
        {
            return answered;
        }
        let answered = self.ping_now().await;
        *last = Some((Instant::now(), answered));
        answered
    }
}

/// What is wrong with a URL the driver refused, said once: its configuration
/// errors wrap a message that already starts with their own prefix.
fn url_problem(error: &sqlx::Error) -> String {
    const PREFIX: &str = "error with configuration: ";
    let text = error.to_string();
    let mut problem = text.as_str();
    while let Some(rest) = problem.strip_prefix(PREFIX) {
        problem = rest;
    }
    problem.to_owned()
}
