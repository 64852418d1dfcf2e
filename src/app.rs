//! `veris-jobs serve`, wired: the store, one [`Runner`] shared by the HTTP endpoint
//! and the built-in schedule, and the listener.
//!
//! [`Application::build`] checks the settings, connects and binds, so that every
//! problem is reported before anything is served; [`Application::run_until_stopped`]
//! serves until a shutdown signal, then stops the schedule and waits for the runs
//! under way.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{CronSecret, Secret};
use crate::error::Error;
use crate::http::{self, AppState, JOB_PATH};
use crate::runner::Runner;
use crate::schedule::{self, Schedule};
use crate::store::{ClickHouseSource, Store, TableName};
use crate::telemetry_daily::RunOptions;

/// What `serve` needs, taken from the command line and the environment.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub database_url: String,
    pub source_table: TableName,
    /// Where events are read when not from the database (ClickHouse).
    pub source_url: Option<String>,
    /// Every run's zone, top-K, lookback, read slices and lock timeout.
    pub job: RunOptions,
    pub bind: SocketAddr,
    pub max_range_days: u32,
    /// Runs that requests may have going at once.
    pub max_http_runs: usize,
    /// A cron expression, evaluated in the job's zone.
    pub schedule: Option<String>,
    pub secret: CronSecret,
    /// `READ_SECRET`: reads only (the report, the run history, the metrics).
    pub read_secret: Option<Secret>,
}

/// A server, built and bound, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
    runner: Runner,
    schedule: Option<Schedule>,
}

impl Application {
    /// Parses the schedule, connects to the database (lazily on PostgreSQL, so that a
    /// server whose database is down starts and answers 503) and binds the address.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a bad schedule or an address that cannot be bound;
    /// [`Error::Store`] for an unusable database URL or SQLite file.
    pub async fn build(settings: ServeSettings) -> Result<Self, Error> {
        let schedule = settings
            .schedule
            .as_deref()
            .map(|expression| {
                Schedule::parse(expression, settings.job.timezone.clone())
                    .map_err(|e| Error::Usage(format!("--schedule: {e}")))
            })
            .transpose()?;
        let mut store = Store::connect_lazy(&settings.database_url, &settings.source_table).await?;
        if let Some(url) = &settings.source_url {
            store = store.with_source(ClickHouseSource::new(url, &settings.source_table)?);
        }
        let listener = TcpListener::bind(settings.bind).await.map_err(|e| {
            Error::Usage(format!(
                "--bind {}: cannot listen there: {e}",
                settings.bind
            ))
        })?;
        let address = listener.local_addr().unwrap_or(settings.bind);
        let runner = Runner::with_requested_runs(store, settings.job, settings.max_http_runs);
        let mut state =
            AppState::with_runner(runner.clone(), settings.max_range_days, settings.secret);
        if let Some(read) = settings.read_secret {
            state = state.with_read_secret(read);
        }
        Ok(Self {
            listener,
            address,
            state,
            runner,
            schedule,
        })
    }

    /// The address the server listens on (the real port when bound to port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes; then stops accepting, stops the schedule,
    /// and waits for the requests and runs under way to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        tracing::info!(address = %self.address, "serving {JOB_PATH} and /healthz");
        let stop = CancellationToken::new();
        let scheduler = self.schedule.map(|schedule| {
            tracing::info!(
                schedule = schedule.expression(),
                timezone = self.runner.job().timezone.iana_name().unwrap_or("UTC"),
                "running telemetry-daily on schedule"
            );
            tokio::spawn(schedule::run_on_schedule(
                self.runner.clone(),
                schedule,
                stop.clone().cancelled_owned(),
            ))
        });
        let stop_on_signal = stop.clone();
        http::serve(self.listener, self.state, async move {
            shutdown.await;
            stop_on_signal.cancel();
        })
        .await;
        stop.cancel();
        if let Some(scheduler) = scheduler
            && let Err(error) = scheduler.await
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
        // A scheduled run started just before the stop is waited for too.
        self.runner.wait().await;
        tracing::info!("stopped");
    }
}
