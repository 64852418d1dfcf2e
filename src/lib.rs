//! `veris-jobs`: the background jobs of the Veris application.
//!
//! Its first job, [`telemetry_daily`], rolls raw telemetry events (event name, user
//! id, time, JSON metadata) up into one row per (day, event): how many events, how
//! many distinct users, and a summary of their metadata. It runs on PostgreSQL in
//! production and on a SQLite file with no set-up at all.
//!
//! # Layout
//!
//! - [`telemetry_daily`]: the job. Day ranges and zones, the pure and mergeable
//!   aggregator, the metadata summary, the diff against stored rows, the run report,
//!   and [`telemetry_daily::run`]. No SQL, no HTTP.
//! - [`store`]: all SQL. [`store::EventSource`] reads raw events,
//!   [`store::RollupStore`] writes rollups and holds days; [`store::Store`]
//!   implements both for PostgreSQL and SQLite.
//! - [`config`]: settings from flags and environment, validated once.
//! - [`http`]: the endpoint `serve` answers: router, bearer auth, handlers.
//! - [`metrics`]: counters of the runs a process made, in Prometheus text format.
//! - [`schedule`]: the built-in cron schedule of `serve`.
//! - [`progress`]: the progress bar of multi-day runs on a terminal.
//! - [`cli`]: the command line (`migrate`, `telemetry-daily`, `runs`, `serve`, `demo`).
//! - [`demo`]: sample events for a first look.
//! - [`error`]: the top-level error and its exit status.
//!
//! # Example
//!
//! ```no_run
//! use veris_jobs::store::{Store, TableName};
//! use veris_jobs::telemetry_daily::{self, RunOptions};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::connect("sqlite://veris.db", &TableName::parse("telemetry_events")?).await?;
//! store.migrate().await?;
//! let report = telemetry_daily::run(&store, &RunOptions::default()).await?;
//! println!("{}", report.to_table());
//! # Ok(()) }
//! ```

pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod metrics;
pub mod progress;
pub mod schedule;
pub mod store;
pub mod telemetry_daily;

pub use error::Error;
