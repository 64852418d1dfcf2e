//! Storage: every line of SQL lives below this module.
//!
//! Two interfaces keep reading raw events apart from writing rollups, so that a
//! source can live in another system than the rollups:
//!
//! - [`EventSource`] streams the raw events of a window of time into an [`EventSink`].
//! - [`RollupStore`] reads and writes one day's `telemetry_daily` rows, one
//!   transaction per day, and takes the per-day locks that keep runs apart.
//!
//! [`Store`] implements both for PostgreSQL ([`postgres`]) and SQLite ([`sqlite`]).
//! It also creates the tables ([`Store::migrate`]) and holds the few writes the demo
//! needs. It knows nothing of aggregation.

mod day_lock;
mod pg_copy;
pub mod postgres;
pub mod sqlite;
mod sqlite_scan;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::telemetry_daily::{DayChanges, DayRange, DayWindow, MergeableSink, RollupRow};

pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;

/// The rollup table's name (fixed by the contract).
pub const ROLLUP_TABLE: &str = "telemetry_daily";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL cannot be used.
    #[error("DATABASE_URL: {0}")]
    InvalidUrl(String),
    /// The database could not be reached, or the connection was lost.
    #[error("cannot reach the database {target}: {source}")]
    Unreachable {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed.
    #[error("{action}: {}", describe(source))]
    Query {
        action: String,
        #[source]
        source: sqlx::Error,
    },
    /// Another run holds a day this run needs.
    #[error(
        "day {date} is held by another run (waited {waited:?}); try again when it has finished"
    )]
    DayBusy { date: Date, waited: Duration },
    /// Reading SQLite source events failed.
    #[error("{action}: {source}")]
    Read {
        action: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The work was cancelled before it finished (the runtime is shutting down).
    #[error("{0}")]
    Aborted(String),
    /// The lock file beside a SQLite database could not be used.
    #[error("lock file {path}: {source}")]
    LockFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether this error means the database itself is gone, so that trying
    /// further days is pointless.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Query { source, .. } => is_connection_error(source),
            _ => false,
        }
    }
}

/// A driver error in words: a lost connection says so first.
fn describe(error: &sqlx::Error) -> String {
    if is_connection_error(error) {
        format!("the connection to the database was lost ({error})")
    } else {
        error.to_string()
    }
}

/// Whether a driver error says the connection is unusable rather than the statement wrong.
pub(crate) fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            // Class 08 (connection exception) and 57P0x (admin or crash shutdown).
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

/// A table name taken from configuration: validated, then always used quoted.
///
/// Accepts `name` or `schema.name`, each part an ASCII letter or underscore followed
/// by letters, digits or underscores, at most 63 bytes (PostgreSQL's limit). Nothing
/// else can reach SQL, so no configuration value can inject any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    parts: Vec<String>,
}

impl TableName {
    /// Validates `value`.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong with the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.split('.').collect();
        if parts.len() > 2 {
            return Err(format!("'{}' has more than one '.'", value.escape_debug()));
        }
        for part in &parts {
            let valid_start = part
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            let valid_rest = part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_start || !valid_rest || part.len() > 63 {
                return Err(format!(
                    "'{}' is not a plain SQL identifier (letters, digits and _, not starting with a digit, at most 63 bytes, optionally schema.table)",
                    value.escape_debug()
                ));
            }
        }
        Ok(Self {
            parts: parts.into_iter().map(str::to_owned).collect(),
        })
    }

    /// The name quoted for SQL, e.g. `"public"."events"`.
    pub fn quoted(&self) -> String {
        let quoted: Vec<String> = self.parts.iter().map(|p| format!("\"{p}\"")).collect();
        quoted.join(".")
    }

    /// The unqualified table name.
    pub fn table(&self) -> &str {
        // `parse` always yields one or two non-empty parts.
        self.parts.last().map_or("", String::as_str)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// A source of raw telemetry events.
pub trait EventSource {
    /// Streams every event with `window.start <= created_at < window.end` into `sink`,
    /// without gathering them in memory. A source may fill parts of the sink on
    /// several threads and merge them into `sink`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read.
    fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The highest `id` in the source, `None` when it is empty: the watermark a
    /// `--changed` run records. Meaningful only where ids grow with insertion order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read, or has no integer `id`.
    fn id_watermark(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The UTC hours (each as the instant it starts) in which events with
    /// `after < id <= through` happened.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read.
    fn hours_with_ids(
        &self,
        after: i64,
        through: i64,
    ) -> impl Future<Output = Result<Vec<Timestamp>, StoreError>> + Send;
}

/// Where the rollup rows live.
pub trait RollupStore {
    /// The stored rows of `date`, with their metadata as stored.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the rows cannot be read.
    fn load_day(
        &self,
        date: Date,
    ) -> impl Future<Output = Result<Vec<RollupRow>, StoreError>> + Send;

    /// Applies `changes` to the rows of `date` in one transaction: readers see the
    /// old day or the new day, never a mix.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; the transaction is then rolled back and the day left as it was.
    fn write_day(
        &self,
        date: Date,
        changes: &DayChanges,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes `days` (in ascending order) for this run, waiting up to `wait` for days
    /// that another run holds. The days stay held until the returned guard is
    /// released or dropped, or the process dies.
    ///
    /// # Errors
    ///
    /// [`StoreError::DayBusy`] naming the first day still held when `wait` ran out.
    fn lock_days(
        &self,
        days: &[Date],
        wait: Duration,
    ) -> impl Future<Output = Result<DayLocks, StoreError>> + Send;

    /// Whether the database answers now (on a fresh connection if need be).
    fn ping(&self) -> impl Future<Output = bool> + Send;
}

/// Where runs are recorded, as `job_runs`.
pub trait RunHistory {
    /// Records a run as `running`, first marking `abandoned` every earlier `running` run
    /// of the same job over overlapping days (its process died: its days were free for
    /// this run to take). Returns the new run's id.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    fn start_run(&self, run: &NewRun) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Records that `days_done` days of run `id` are committed.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    fn run_progress(
        &self,
        id: i64,
        days_done: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records the end of run `id`: `ok` or `failed`, and its report as JSON.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        days_done: u32,
        report_json: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The source watermark of the latest successful run of `job` that recorded one.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be read.
    fn last_watermark(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The `limit` most recent runs, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be read.
    fn recent_runs(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<RunRecord>, StoreError>> + Send;
}

/// A run about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub job: String,
    pub trigger: String,
    pub range: DayRange,
    pub timezone: String,
    /// The range's days plus any earlier days a `--changed` run adds.
    pub days_total: u32,
    /// The source's highest id when a `--changed` run started; `None` for other runs.
    pub source_watermark: Option<i64>,
}

/// The state of a recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
    Abandoned,
}

impl RunStatus {
    /// The name stored in `job_runs.status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
        }
    }
}

/// One row of `job_runs`, as `runs` and `GET /api/jobs/runs` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    pub start_date: String,
    pub end_date: String,
    pub timezone: String,
    pub status: String,
    pub days_done: i64,
    pub days_total: i64,
    /// The run report, once the run has finished.
    pub report: Option<serde_json::Value>,
    /// The source's highest id when a `--changed` run started.
    pub source_watermark: Option<i64>,
}

/// Days held by one run; dropping it (or the process ending) lets them go.
#[derive(Debug)]
pub struct DayLocks {
    inner: day_lock::Held,
}

impl DayLocks {
    /// Lets the days go now.
    pub async fn release(self) {
        self.inner.release().await;
    }
}

/// A raw event to write into the source table (the demo and tests write these).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event: Option<String>,
    pub user_id: Option<String>,
    pub created_at: Timestamp,
    /// JSON text; on SQLite it may be anything, on PostgreSQL it must be valid JSON.
    pub meta: Option<String>,
}

/// The events a previous `demo` wrote, so that it can start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSample {
    pub first_id: i64,
    pub last_id: i64,
    pub start_date: Date,
    pub end_date: Date,
}

/// A connection pool to either database, behind both storage interfaces.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Store {
    /// Connects to `database_url` (`postgres://…` or `sqlite://…`), reading events
    /// from `source_table`. A missing SQLite file is created.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] for an unusable URL, [`StoreError::Unreachable`]
    /// when the database does not answer within the connect timeout.
    pub async fn connect(database_url: &str, source_table: &TableName) -> Result<Self, StoreError> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            PgStore::connect(database_url, source_table)
                .await
                .map(Store::Postgres)
        } else if database_url.starts_with("sqlite:") {
            SqliteStore::connect(database_url, source_table)
                .await
                .map(Store::Sqlite)
        } else {
            Err(StoreError::InvalidUrl(format!(
                "'{}' is neither a postgres:// nor a sqlite:// URL",
                redact_url(database_url)
            )))
        }
    }

    /// Like [`Store::connect`], but a PostgreSQL pool connects on first use, so that a
    /// server can start, and answer 503, while its database is down.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`]; for SQLite also [`StoreError::Unreachable`] when the
    /// file cannot be opened.
    pub async fn connect_lazy(
        database_url: &str,
        source_table: &TableName,
    ) -> Result<Self, StoreError> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            PgStore::connect_lazy(database_url, source_table).map(Store::Postgres)
        } else {
            Self::connect(database_url, source_table).await
        }
    }

    /// Creates the source table (when absent) and the rollup table; safe to repeat.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a statement fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.migrate().await,
            Store::Sqlite(s) => s.migrate().await,
        }
    }

    /// Writes raw events into the source table in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is written then.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.insert_events(events).await,
            Store::Sqlite(s) => s.insert_events(events).await,
        }
    }

    /// The sample the demo last wrote, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when it cannot be read.
    pub async fn demo_sample(&self) -> Result<Option<DemoSample>, StoreError> {
        match self {
            Store::Postgres(s) => s.demo_sample().await,
            Store::Sqlite(s) => s.demo_sample().await,
        }
    }

    /// How many source events lie outside `sample` (all of them without one).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when they cannot be counted.
    pub async fn count_foreign_events(
        &self,
        sample: Option<&DemoSample>,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Postgres(s) => s.count_foreign_events(sample).await,
            Store::Sqlite(s) => s.count_foreign_events(sample).await,
        }
    }

    /// In one transaction: removes the `previous` demo sample's events and rollup
    /// rows, writes `events` and records them as the new sample of `range`.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing changes then.
    pub async fn replace_demo_sample(
        &self,
        previous: Option<&DemoSample>,
        events: &[NewEvent],
        range: &DayRange,
    ) -> Result<DemoSample, StoreError> {
        match self {
            Store::Postgres(s) => s.replace_demo_sample(previous, events, range).await,
            Store::Sqlite(s) => s.replace_demo_sample(previous, events, range).await,
        }
    }

    /// Whether this database can hold `meta` text that is not valid JSON.
    pub fn keeps_invalid_json(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }
}

impl EventSource for Store {
    async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.scan_window(window, sink).await,
            Store::Sqlite(s) => s.scan_window(window, sink).await,
        }
    }

    async fn id_watermark(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Postgres(s) => s.id_watermark().await,
            Store::Sqlite(s) => s.id_watermark().await,
        }
    }

    async fn hours_with_ids(&self, after: i64, through: i64) -> Result<Vec<Timestamp>, StoreError> {
        match self {
            Store::Postgres(s) => s.hours_with_ids(after, through).await,
            Store::Sqlite(s) => s.hours_with_ids(after, through).await,
        }
    }
}

impl RunHistory for Store {
    async fn start_run(&self, run: &NewRun) -> Result<i64, StoreError> {
        match self {
            Store::Postgres(s) => s.start_run(run).await,
            Store::Sqlite(s) => s.start_run(run).await,
        }
    }

    async fn run_progress(&self, id: i64, days_done: u32) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.run_progress(id, days_done).await,
            Store::Sqlite(s) => s.run_progress(id, days_done).await,
        }
    }

    async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        days_done: u32,
        report_json: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.finish_run(id, status, days_done, report_json).await,
            Store::Sqlite(s) => s.finish_run(id, status, days_done, report_json).await,
        }
    }

    async fn last_watermark(&self, job: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Postgres(s) => s.last_watermark(job).await,
            Store::Sqlite(s) => s.last_watermark(job).await,
        }
    }

    async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        match self {
            Store::Postgres(s) => s.recent_runs(limit).await,
            Store::Sqlite(s) => s.recent_runs(limit).await,
        }
    }
}

impl RollupStore for Store {
    async fn load_day(&self, date: Date) -> Result<Vec<RollupRow>, StoreError> {
        match self {
            Store::Postgres(s) => s.load_day(date).await,
            Store::Sqlite(s) => s.load_day(date).await,
        }
    }

    async fn write_day(&self, date: Date, changes: &DayChanges) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.write_day(date, changes).await,
            Store::Sqlite(s) => s.write_day(date, changes).await,
        }
    }

    async fn lock_days(&self, days: &[Date], wait: Duration) -> Result<DayLocks, StoreError> {
        match self {
            Store::Postgres(s) => s.lock_days(days, wait).await,
            Store::Sqlite(s) => s.lock_days(days, wait).await,
        }
    }

    async fn ping(&self) -> bool {
        match self {
            Store::Postgres(s) => s.ping().await,
            Store::Sqlite(s) => s.ping().await,
        }
    }
}

/// Reads a `job_runs` row selected as (id, job, trigger, started_at, finished_at,
/// start_date, end_date, timezone, status, days_done, days_total, report,
/// source_watermark), all text but the numbers, on either database.
pub(crate) fn run_record<'r, R>(row: &'r R) -> Result<RunRecord, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let report: Option<String> = row.try_get(11)?;
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
        // Written by this crate from a serialized report; text that does not parse is
        // kept out rather than failing the listing.
        report: report.and_then(|text| serde_json::from_str(&text).ok()),
        source_watermark: row.try_get(12)?,
    })
}

/// Hours as both databases give them, `2024-01-15T10:00:00Z`, as instants. A
/// `created_at` that is NULL or not in the contract's form is in no day's window
/// either, so it is left out.
pub(crate) fn parse_hours(hours: &[Option<String>]) -> Vec<Timestamp> {
    hours
        .iter()
        .flatten()
        .filter_map(|h| h.parse().ok())
        .collect()
}

/// Text as it is when valid UTF-8 (the fast, usual case), else with replacement characters.
pub(crate) fn lenient_utf8(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The URL with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Wraps a failed statement with what it was doing. The action is copied only if
/// the statement fails, so this costs nothing in a loop over rows.
pub(crate) fn query_error(action: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Query {
        action: action.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated_and_quoted() {
        assert_eq!(TableName::parse("events").unwrap().quoted(), "\"events\"");
        assert_eq!(
            TableName::parse("app.events_2").unwrap().quoted(),
            "\"app\".\"events_2\""
        );
        for hostile in [
            "events; DROP TABLE x",
            "ev\"ents",
            "events--",
            "a.b.c",
            "1events",
            "",
            "évènements",
            "events/*",
            &"x".repeat(64),
        ] {
            assert!(
                TableName::parse(hostile).is_err(),
                "{hostile} must be refused"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://veris.db"), "sqlite://veris.db");
    }
}
