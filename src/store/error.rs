//! The storage layer's errors, and how a driver error is put into words.

use std::time::Duration;

use jiff::civil::Date;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL cannot be used.
    #[error("DATABASE_URL: {0}")]
    InvalidUrl(String),
    /// The events' source URL cannot be used.
    #[error("--source-url (TELEMETRY_SOURCE_URL): {0}")]
    InvalidSourceUrl(String),
    /// The events' source (ClickHouse) could not be reached, or stopped answering.
    #[error("cannot reach the source of events {target}: {message}")]
    SourceUnreachable { target: String, message: String },
    /// The events' source refused a query or answered something unreadable.
    #[error("{action}: {message}")]
    Source { action: String, message: String },
    /// A command that only reads was pointed at a SQLite file that does not exist.
    #[error("there is no database at {0}: run `veris-jobs migrate` first, which creates it")]
    NoDatabase(String),
    /// The database could not be reached, or the connection was lost.
    #[error("cannot reach the database {target}: {}", driver_words(source))]
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
    #[error("{action}: {}", sqlite_words(source))]
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
    /// The run's day locks were lost while it held them.
    #[error("{0}; another run could take the days, so this run writes no more")]
    LockLost(String),
}

impl StoreError {
    /// The error in words for those who see no configuration: a run's report (kept
    /// in the history, served over HTTP) and HTTP answers name no database or source
    /// address, user or database name. The command line prints the full error.
    pub fn without_addresses(&self) -> String {
        match self {
            StoreError::Unreachable { source, .. } => {
                format!("cannot reach the database ({})", driver_words(source))
            }
            StoreError::SourceUnreachable { message, .. } => {
                format!("cannot reach the source of events ({message})")
            }
            StoreError::NoDatabase(_) => "there is no database file".to_owned(),
            StoreError::LockFile { source, .. } => format!("the lock file: {source}"),
            other => other.to_string(),
        }
    }

    /// Whether a statement gave up waiting for another writer (SQLite's busy
    /// timeout), which the next write would wait out again.
    pub fn is_busy(&self) -> bool {
        // SQLite's SQLITE_BUSY (5) and SQLITE_LOCKED (6), extended codes included.
        match self {
            StoreError::Query {
                source: sqlx::Error::Database(db),
                ..
            } => {
                db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && db
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            }
            _ => false,
        }
    }

    /// Whether the database (or the source of events) cannot be reached, so that
    /// trying further days is pointless.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::SourceUnreachable { .. } => true,
            StoreError::Query { source, .. } => is_connection_error(source),
            // The SQLite file could no longer be opened.
            StoreError::Read { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen)
            }
            _ => false,
        }
    }
}

/// A driver error in words: a lost connection says so first, a missing table says
/// what to do.
fn describe(error: &sqlx::Error) -> String {
    if is_connection_error(error) {
        format!(
            "the connection to the database was lost ({})",
            driver_words(error)
        )
    } else if is_missing_table(error) {
        format!("{}; run `veris-jobs migrate` first", driver_words(error))
    } else {
        driver_words(error)
    }
}

/// The driver's words for `error`, without what only concerns the server's own
/// code: PostgreSQL's errors carry the line of its C source (`… at line 433`).
fn driver_words(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => format!("the database said: {}", db.message()),
        other => other.to_string(),
    }
}

/// Whether `error` says a table does not exist: PostgreSQL's `undefined_table`,
/// SQLite's "no such table".
pub(super) fn is_missing_table(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("42P01") || db.message().starts_with("no such table")
        }
        _ => false,
    }
}

/// SQLite's words for a failed read, with what to do about a missing table.
fn sqlite_words(error: &rusqlite::Error) -> String {
    let text = error.to_string();
    if text.contains("no such table") {
        format!("{text}; run `veris-jobs migrate` first")
    } else {
        text
    }
}

/// Whether a driver error says the connection is unusable rather than the statement wrong.
pub(super) fn is_connection_error(error: &sqlx::Error) -> bool {
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

/// Wraps a failed statement with what it was doing. The action is copied only if
/// the statement fails, so this costs nothing in a loop over rows.
pub(super) fn query_error(action: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Query {
        action: action.to_owned(),
        source,
    }
}
