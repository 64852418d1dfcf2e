//! `veris-jobs`: the background jobs of the Veris application.
//!
//! Its first job, [`telemetry_daily`], rolls raw telemetry events (event name, user
//! id, time, JSON metadata) up into one row per (day, event): how many events, how
//! many distinct users, and a summary of their metadata. It runs on PostgreSQL in
//! production and on a SQLite file with no set-up at all.
//!
//! # Layout
//!
//! Modules import each other in one direction: each one below imports only modules
//! listed before it.
//!
//! 1. [`model`]: days and zones, the pure and mergeable aggregator, the metadata
//!    summary, the diff against stored rows, the run report, the run history's
//!    records. No I/O.
//! 2. [`store`]: every line of SQL. The storage traits ([`store::EventSource`],
//!    [`store::RollupStore`], [`store::RunHistory`], [`store::DemoData`]), each
//!    implemented by the PostgreSQL and the SQLite backend; [`store::Store`] is either,
//!    with events read from a [`store::ClickHouseSource`] when one is given.
//! 3. [`telemetry_daily`]: a run of the job: holds the days, reads, aggregates, diffs
//!    and writes each day, records the run ([`telemetry_daily::run`]).
//!    [`rollup_report`]: the rollups read back, grouped by day, week or month.
//! 4. [`metrics`]: counters of the runs a process made, in Prometheus text format.
//! 5. [`runner`]: starts runs for every face; owns the runs under way and the metrics.
//! 6. [`config`] (settings from flags and environment, and the bearer secret,
//!    validated once) and [`error`] (the top-level error and its exit status).
//! 7. The faces: [`http`] (the endpoint: router, bearer auth, handlers),
//!    [`schedule`] (the built-in cron schedule), [`progress`] (the terminal's
//!    progress bar), [`demo`] (sample events for a first look), [`app`] (`serve`
//!    wired: the endpoint and the schedule over one runner) and [`cli`] (the command
//!    line, one function a command).
//!
//! # Example
//!
//! ```no_run
//! use veris_jobs::store::{RollupStore as _, Store, TableName};
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
pub mod metrics;
pub mod model;
pub mod progress;
pub mod report;
pub mod rollup;

pub mod runner;
pub mod schedule;
pub mod store;
pub mod telemetry_daily;

pub use error::Error;
