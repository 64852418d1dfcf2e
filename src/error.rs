//! The crate's top-level error, and the exit status each kind of failure gives.

use crate::model::DateError;
use crate::store::StoreError;
use crate::telemetry_daily::RunError;
use crate::telemetry_purge::PurgeError;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or configuration: the message names the flag or setting.
    #[error("{0}")]
    Usage(String),
    /// A range that cannot be run.
    #[error(transparent)]
    Date(#[from] DateError),
    /// The run could not start (a busy day, an unreachable database).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The purge could not start.
    #[error(transparent)]
    Purge(#[from] PurgeError),
}

impl Error {
    /// The exit status: 2 for bad usage or configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Date(_) => 2,
            Error::Store(StoreError::InvalidUrl(_) | StoreError::InvalidSourceUrl(_))
            | Error::Run(RunError::Store(
                StoreError::InvalidUrl(_) | StoreError::InvalidSourceUrl(_),
            )) => 2,
            Error::Run(RunError::Date(_)) => 2,
            Error::Purge(
                PurgeError::KeepDaysRequired
                | PurgeError::UnsupportedSource
                | PurgeError::BatchSize
                | PurgeError::Date(_)
                | PurgeError::Store(StoreError::InvalidUrl(_) | StoreError::InvalidSourceUrl(_)),
            ) => 2,
            Error::Run(_) | Error::Store(_) | Error::Purge(_) => 1,
        }
    }
}
