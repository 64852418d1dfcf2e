//! Storage: every line of SQL lives below this module.
//!
//! [`Store`] is what the rest of the crate talks to: a pool to either database,
//! chosen by the URL ([`PgStore`] for PostgreSQL in `postgres.rs`, [`SqliteStore`]
//! for SQLite in `sqlite.rs`), and the ClickHouse source of events when there is one
//! (`clickhouse/`). Each of its methods reaches the backend one way, through the
//! `dispatch!` macro below; what both databases do alike is written once, on
//! `Store`, with each backend's statements (`history.rs` for `job_runs`,
//! `raw_events.rs` for the raw-event writer and the demo's bookkeeping). It streams
//! raw events into an [`EventSink`] (a [`MergeableSink`]: a source may fill parts of
//! it on several threads), reads and writes one day's `telemetry_daily` rows in one
//! transaction, takes the day locks that keep runs apart (`day_lock.rs`), and records
//! runs. This module depends on the [`model`](crate::model) alone: it knows nothing
//! of how a run is driven, nor of aggregation beyond feeding a sink.
//!
//! [`EventSink`]: crate::model::EventSink
//! [`MergeableSink`]: crate::model::MergeableSink

/// The rollup table's name (fixed by the contract), for SQL built with `concat!`.
macro_rules! rollup_table {
    () => {
        "telemetry_daily"
    };
}

/// Forwards a call to whichever backend a [`Store`]'s database is.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.database {
            $crate::store::Database::Postgres($backend) => $call,
            $crate::store::Database::Sqlite($backend) => $call,
        }
    };
}

mod clickhouse;
mod day_lock;
mod deal;
mod error;
mod history;
mod pg_copy;
pub mod postgres;
mod purge;
mod raw_events;
mod rows;
pub mod sqlite;
mod sqlite_batch;
mod sqlite_scan;
mod sqlite_time;
mod table_name;

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::model::{
    DayChanges, DayRange, DayWindow, HourFold, HourRow, MergeableSink, RollupFold, RollupRow,
};

pub use self::clickhouse::ClickHouseSource;
pub use self::error::StoreError;
pub use self::postgres::PgStore;
pub use self::purge::{DayEvents, PurgeRecord};
pub use self::raw_events::{DemoSample, NewEvent};
pub use self::sqlite::SqliteStore;
pub use self::table_name::TableName;

/// Queries one command runs at once on a store at most (a report's parts). Two keep
/// the database's cores and the command's busy on a small machine, and leave most of
/// a pool's eight connections to the other requests of a dashboard that loads a few
/// reports at once.
pub const READS_AT_ONCE: usize = 2;

/// The rollup table's name (fixed by the contract).
pub const ROLLUP_TABLE: &str = rollup_table!();

/// Days held by one run; dropping it (or the process ending) lets them go.
#[derive(Debug)]
pub struct DayLocks {
    inner: day_lock::Held,
}

impl DayLocks {
    /// Checks that the days are still held: the PostgreSQL session holding them is
    /// alive and holds them all, the SQLite lock file is still the one locked.
    ///
    /// # Errors
    ///
    /// [`StoreError::LockLost`] when they are not.
    pub async fn verify(&mut self) -> Result<(), StoreError> {
        self.inner.verify().await
    }

    /// Lets the days go now.
    pub async fn release(self) {
        self.inner.release().await;
    }
}

/// A connection pool to either database, behind every storage interface, and the
/// source of events when they live elsewhere (ClickHouse).
#[derive(Debug, Clone)]
pub struct Store {
    database: Database,
    /// Where events are read from instead of the database's own source table.
    source: Option<ClickHouseSource>,
}

/// The database of rollups, run history and locks (and, by default, of events).
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl From<Database> for Store {
    fn from(database: Database) -> Self {
        Self {
            database,
            source: None,
        }
    }
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
        match Backend::of(database_url)? {
            Backend::Postgres => PgStore::connect(database_url, source_table)
                .await
                .map(|pg| Database::Postgres(pg).into()),
            Backend::Sqlite => SqliteStore::connect(database_url, source_table)
                .await
                .map(|sqlite| Database::Sqlite(sqlite).into()),
        }
    }

    /// Like [`Store::connect`], but a SQLite file must exist already: nothing is
    /// created for a command that only reads.
    ///
    /// # Errors
    ///
    /// As [`Store::connect`], and [`StoreError::NoDatabase`].
    pub async fn connect_existing(
        database_url: &str,
        source_table: &TableName,
    ) -> Result<Self, StoreError> {
        match Backend::of(database_url)? {
            Backend::Postgres => Self::connect(database_url, source_table).await,
            Backend::Sqlite => SqliteStore::connect_existing(database_url, source_table)
                .await
                .map(|sqlite| Database::Sqlite(sqlite).into()),
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
        match Backend::of(database_url)? {
            Backend::Postgres => PgStore::connect_lazy(database_url, source_table)
                .map(|pg| Database::Postgres(pg).into()),
            Backend::Sqlite => Self::connect(database_url, source_table).await,
        }
    }

    /// Reads events from `source` rather than from the database's source table,
    /// which `migrate` then leaves alone.
    pub fn with_source(mut self, source: ClickHouseSource) -> Self {
        match &mut self.database {
            Database::Postgres(pg) => pg.creates_source = false,
            Database::Sqlite(sqlite) => sqlite.creates_source = false,
        }
        self.source = Some(source);
        self
    }

    /// The database of rollups, run history and locks.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Closes the pool's connections, waiting for them: SQLite folds its write-ahead
    /// log back into the database file as the last one closes, leaving no `-wal`
    /// file behind.
    pub async fn close(&self) {
        dispatch!(self, db => db.pool().close().await);
    }

    /// Whether events come from another database than the rollups'.
    pub fn has_external_source(&self) -> bool {
        self.source.is_some()
    }

    /// Whether this database can hold `meta` text that is not valid JSON.
    pub fn keeps_invalid_json(&self) -> bool {
        matches!(self.database, Database::Sqlite(_))
    }
}

/// Which backend a URL names.
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    fn of(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(StoreError::InvalidUrl(format!(
                "'{}' is neither a postgres:// nor a sqlite:// URL",
                redact_url(url)
            )))
        }
    }
}

/// Methods that forward to whichever backend a [`Store`]'s database is, one line a
/// method.
macro_rules! forward {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $($(#[$doc])* pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
            dispatch!(self, s => s.$name($($arg),*).await)
        })*
    };
}

/// What every part of the crate asks of storage, on whichever database and source.
impl Store {
    /// Streams every event with `window.start <= created_at < window.end` into `sink`,
    /// without gathering them in memory. A source may fill parts of the sink on
    /// several threads and merge them into `sink`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read.
    pub async fn scan_window<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        match &self.source {
            Some(source) => source.scan_window(window, sink).await,
            None => dispatch!(self, s => s.scan_window(window, sink).await),
        }
    }

    /// Whether the source hands over counted aggregates (distinct users and all)
    /// rather than single events: a day must then be read whole, since distinct
    /// users of time slices do not add up.
    pub fn counts_itself(&self) -> bool {
        self.source.is_some()
    }

    /// The highest `id` in the source, `None` when it is empty: the watermark a
    /// `--changed` run records. Meaningful only where ids grow with insertion order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read, or has no integer `id`.
    pub async fn id_watermark(&self) -> Result<Option<i64>, StoreError> {
        match &self.source {
            Some(source) => source.id_watermark().await,
            None => dispatch!(self, s => s.id_watermark().await),
        }
    }

    /// The UTC hours (each as the instant it starts) in which events with
    /// `after < id <= through` happened.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read.
    pub async fn hours_with_ids(
        &self,
        after: i64,
        through: i64,
    ) -> Result<Vec<Timestamp>, StoreError> {
        match &self.source {
            Some(source) => source.hours_with_ids(after, through).await,
            None => dispatch!(self, s => s.hours_with_ids(after, through).await),
        }
    }

    forward! {
        /// Creates the source table (when absent), the rollup table and the run history;
        /// safe to repeat.
        ///
        /// # Errors
        ///
        /// [`StoreError`] when a statement fails.
        fn migrate(&self) -> Result<(), StoreError>;
        /// The stored rows of `date`, with their metadata as stored.
        ///
        /// # Errors
        ///
        /// [`StoreError`] when the rows cannot be read.
        fn load_day(&self, date: Date) -> Result<Vec<RollupRow>, StoreError>;
        /// Applies `changes` to the rows of `date` in one transaction: readers see the
        /// old day or the new day, never a mix.
        ///
        /// # Errors
        ///
        /// [`StoreError`]; the transaction is then rolled back and the day left as it was.
        fn write_day(&self, date: Date, changes: &DayChanges) -> Result<(), StoreError>;
        /// The stored hour rows of `window`'s day.
        ///
        /// # Errors
        ///
        /// [`StoreError`] when the rows cannot be read.
        fn load_hours(&self, window: &DayWindow) -> Result<Vec<HourRow>, StoreError>;
        /// Takes `days` (in ascending order) for this run, waiting up to `wait` for days
        /// that another run holds. The days stay held until the returned guard is
        /// released or dropped, or the process dies.
        ///
        /// # Errors
        ///
        /// [`StoreError::DayBusy`] naming the first day still held when `wait` ran out.
        fn lock_days(&self, days: &[Date], wait: Duration) -> Result<DayLocks, StoreError>;
        /// Checks, before a run, that the database can be reached: a connection of the
        /// pool answers (PostgreSQL); the file could be opened afresh and a pooled
        /// connection reads it (SQLite, whose pooled connections keep a file they opened
        /// long ago, readable now or not).
        ///
        /// # Errors
        ///
        /// [`StoreError::Unreachable`] saying why.
        fn check_reachable(&self) -> Result<(), StoreError>;
    }

    /// Hands `fold` the stored rows of the days `range` covers, for the events
    /// named (all when `events` is empty), ordered by date and event, one at a time
    /// as they are read; gives `fold` back.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the rows cannot be read.
    pub async fn fold_rollups<F: RollupFold>(
        &self,
        range: &DayRange,
        events: &[String],
        fold: F,
    ) -> Result<F, StoreError> {
        dispatch!(self, s => s.fold_rollups(range, events, fold).await)
    }

    /// The names of `window` with their events, distinct users and sketches, into
    /// `sink`, without metadata: from a source that counts for itself (ClickHouse),
    /// steps 1 and 2 of its plan; else the window's events.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read.
    pub async fn scan_counts<K: MergeableSink>(
        &self,
        window: &DayWindow,
        sink: &mut K,
    ) -> Result<(), StoreError> {
        match &self.source {
            Some(source) => source.scan_counts(window, sink).await,
            None => self.scan_window(window, sink).await,
        }
    }

    /// Hands `fold` the stored hour rows of `[start, end)` for the events named (all
    /// when `events` is empty), ordered by hour and event, one at a time as they are
    /// read; gives `fold` back.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the rows cannot be read.
    pub async fn fold_hours<F: HourFold>(
        &self,
        span: (Timestamp, Timestamp),
        events: &[String],
        fold: F,
    ) -> Result<F, StoreError> {
        dispatch!(self, s => s.fold_hours(span, events, fold).await)
    }

    /// Whether the tables every run writes exist (`migrate` has run). An answer
    /// other than a missing table counts as migrated: the health check tells the rest.
    pub async fn is_migrated(&self) -> bool {
        const SQL: &str = "SELECT 1 FROM telemetry_daily, telemetry_hourly, job_runs WHERE 1 = 0";
        let answer = dispatch!(self, s => sqlx::query(SQL).execute(s.pool()).await.map(drop));
        !matches!(answer, Err(error) if error::is_missing_table(&error))
    }

    /// Whether the database, and the events' source when there is one, answer now.
    pub async fn ping(&self) -> bool {
        let database = dispatch!(self, s => s.ping().await);
        match &self.source {
            Some(source) => database && source.ping().await,
            None => database,
        }
    }
}

/// A failed read of `job_runs`. A table or column that is missing (an older
/// table, or none) is what `migrate` mends, and the message says so.
fn history_read_error(source: sqlx::Error) -> StoreError {
    let missing = match &source {
        sqlx::Error::Database(db) => {
            // PostgreSQL: undefined_table, undefined_column; SQLite says it in words.
            matches!(db.code().as_deref(), Some("42P01" | "42703"))
                || db.message().contains("no such table")
                || db.message().contains("no such column")
        }
        _ => false,
    };
    let action = if missing {
        "reading job_runs (`veris-jobs migrate` creates it or brings it up to date)"
    } else {
        "reading job_runs"
    };
    error::query_error(action)(source)
}

fn watermark_action(source: &TableName) -> String {
    format!("reading the highest id of {source} (--changed needs an integer id column)")
}

fn hours_action(source: &TableName) -> String {
    format!("finding the hours of {source}'s new events")
}

fn load_day_action(date: Date) -> String {
    format!("reading the rollup rows of {date}")
}

fn rollups_action(range: &DayRange) -> String {
    format!("reading the rollup rows of {range}")
}

fn load_hours_action(date: Date) -> String {
    format!("reading the hour rows of {date}")
}

fn hours_report_action(start: Timestamp, end: Timestamp) -> String {
    format!("reading the hour rows from {start} to {end}")
}

fn write_day_action(date: Date) -> String {
    format!("writing the rollup rows of {date}")
}

/// The URL with every password replaced by `***`, for messages: the one in the user
/// information and any query parameter that the drivers read as one (`password`,
/// `sslpassword`; any name holding `pass`, `secret` or `token`). A URL the drivers
/// could not read keeps its scheme and host only: what it holds cannot be told apart.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // A path holding '@' is most likely a password with an unencoded '/' that the
    // parser took for the path's start: it is treated as unreadable too.
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| !u.path().contains('@'));
    let Some(mut parsed) = parsed else {
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = host.split(['/', '?', '#']).next().unwrap_or_default();
        let user = if rest.contains('@') { "***@" } else { "" };
        return format!("{scheme}://{user}{host}");
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["pass", "secret", "token"].iter().any(|s| name.contains(s))
    };
    if parsed.query_pairs().any(|(name, _)| secret(&name)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret(&name) {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(None);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_url("postgres://u:p@h/db?options=a@b"),
            "postgres://u:***@h/db?options=a@b"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://veris.db"), "sqlite://veris.db");
    }

    #[test]
    fn passwords_wherever_a_driver_reads_them_are_redacted() {
        assert_eq!(
            redact_url("postgres://alice@host/db?password=hunter2&sslmode=disable"),
            "postgres://alice@host/db?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("clickhouse://reader@ch:8123/db?password=hunter2"),
            "clickhouse://reader@ch:8123/db?password=***"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslpassword=hunter2&PassWord=hunter2"),
            "postgres://u@h/db?sslpassword=***&PassWord=***"
        );
        // Unencoded '/', '?' or '#' in a password: no driver reads such a URL, and
        // nothing before its host is kept.
        for url in [
            "postgres://u:hun/ter2@h/db",
            "postgres://u:hun?ter2@h/db",
            "postgres://u:hun#ter2@h/db",
        ] {
            let redacted = redact_url(url);
            assert!(
                !redacted.contains("hun") && !redacted.contains("ter2"),
                "{redacted}"
            );
        }
        assert_eq!(redact_url("postgres://u:hun/ter2@h/db"), "postgres://***@h");
        assert_eq!(redact_url("postgres://u:123/45@h/db"), "postgres://***@h");
    }
}
