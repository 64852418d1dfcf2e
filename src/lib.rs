//! `veris-jobs`: the background jobs of the Veris application.
//!
//! Its first job, [`telemetry_daily`], rolls raw telemetry events (event name, user
//! id, time, JSON metadata) up into one row per (day, event) and per (hour, event):
//! how many events, how many distinct users, and a summary of their metadata. Its
//! second, [`telemetry_purge`], deletes the raw events of old days whose rollups hold
//! them, and nothing else. They run on PostgreSQL in production and on a SQLite file
//! with no set-up at all.
//!
//! # Layout
//!
//! Modules import each other in one direction: each one below imports only modules
//! listed before it.
//!
//! 1. [`model`]: the vocabulary every layer shares: days and zones, raw events and
//!    the sinks that take them, rollup rows, the diff against stored rows, the
//!    canonical form of their JSON, the metadata summary's format and exact sums, the
//!    users' sketch, the numbers' percentile sketch, the run report, the run
//!    history's records. No I/O.
//! 2. [`rollup`]: the engine: the pure and mergeable aggregator, the metadata summary,
//!    the reading of `meta`, and the spill to disk (its port, record codec and
//!    partition files). Imports only the model.
//! 3. [`store`]: every line of SQL. [`store::Store`] is a pool to PostgreSQL or
//!    SQLite, chosen by the URL, with events read from a [`store::ClickHouseSource`]
//!    when one is given; each method reaches the backend through one `dispatch!`.
//! 4. [`jobs`]: the registry of job names and the run history the jobs share.
//!    [`telemetry_daily`]: a run of the job: holds the days, reads, aggregates, diffs
//!    and writes each day, records the run ([`telemetry_daily::run`]).
//!    [`telemetry_purge`]: finds old days, checks each day's rollup with
//!    `telemetry_daily`'s own read, and deletes in batches ([`telemetry_purge::run`]).
//!    [`report`]: the read path whole: the rollups read back, grouped by day, week or
//!    month, merged and rendered.
//! 5. [`metrics`]: counters of the runs a process made, in Prometheus text format.
//! 6. [`launcher`]: starts runs for every face; owns the runs under way and the
//!    metrics.
//! 7. [`config`] (settings from flags and environment, and the bearer secret,
//!    validated once) and [`error`] (the top-level error and its exit status).
//! 8. [`app`]: the one wiring root: [`app::Application::build`] connects the store and
//!    builds the launcher for every face, and serves.
//! 9. The faces: [`http`] (the endpoint: router, bearer auth, handlers),
//!    [`schedule`] (the built-in cron schedule), [`progress`] (the terminal's
//!    progress bar), [`demo`] (sample events for a first look) and [`cli`] (the
//!    command line, one function a command).
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

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod report;
pub mod rollup;

pub mod launcher;
pub mod schedule;
pub mod store;
pub mod telemetry_daily;
pub mod telemetry_purge;

pub use error::Error;
