//! The one place the application is wired: the store (the database, and the
//! ClickHouse source when there is one) and the [`Launcher`] every run goes through.
//!
//! [`Application::build`] connects as a command needs ([`Connect`]); every face starts
//! there: the command line for its commands, `serve` (which then binds and serves,
//! [`Application::serve`]), and the tests. [`Server::run_until_stopped`] serves until a
//! shutdown signal, then stops the schedule and waits for the runs under way.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{CronSecret, Secret};
use crate::error::Error;
use crate::http::{self, AppState, JOB_PATH, PURGE_PATH, REPORT_PATH, RUNS_PATH};
use crate::launcher::Launcher;
use crate::schedule::{self, Schedule};
use crate::store::{ClickHouseSource, Store, TableName};
use crate::telemetry_daily::RunOptions;

/// How [`Application::build`] opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// For a command that writes: a missing SQLite file is created.
    Write,
    /// For a command that only reads: a missing SQLite file is an error.
    Read,
    /// For a server: PostgreSQL connects on first use, so that a server whose
    /// database is down starts and answers 503.
    Lazy,
}

/// What every face gives the application: where the data is and how runs go.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub source_table: TableName,
    /// Where events are read when not from the database (ClickHouse).
    pub source_url: Option<String>,
    /// Every run's zone, top-K, lookback, read slices and lock timeout.
    pub job: RunOptions,
    /// Runs that requests may have going at once.
    pub max_http_runs: usize,
}

/// The store and the launcher, wired.
#[derive(Debug, Clone)]
pub struct Application {
    launcher: Launcher,
}

impl Application {
    /// Connects to the database (as `connect` says) and the source of events, and
    /// builds the launcher every run goes through.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for an unusable database or source URL, or a database that
    /// cannot be reached ([`Connect::Write`] and [`Connect::Read`]).
    pub async fn build(settings: Settings, connect: Connect) -> Result<Self, Error> {
        let (url, table) = (&settings.database_url, &settings.source_table);
        let mut store = match connect {
            Connect::Write => Store::connect(url, table).await?,
            Connect::Read => Store::connect_existing(url, table).await?,
            Connect::Lazy => Store::connect_lazy(url, table).await?,
        };
        if let Some(source) = &settings.source_url {
            store = store.with_source(ClickHouseSource::new(source, table)?);
        }
        let launcher = Launcher::with_requested_runs(store, settings.job, settings.max_http_runs);
        Ok(Self { launcher })
    }

    /// The launcher every run goes through.
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.launcher.store()
    }

    /// Parses the schedule and binds the address, so that every problem is reported
    /// before anything is served.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a bad schedule or an address that cannot be bound.
    pub async fn serve(self, settings: ServeSettings) -> Result<Server, Error> {
        let schedule = settings
            .schedule
            .as_deref()
            .map(|expression| {
                Schedule::parse(expression, self.launcher.job().timezone.clone())
                    .map_err(|e| Error::Usage(format!("--schedule: {e}")))
            })
            .transpose()?;
        let purge_schedule = match (settings.purge_schedule.as_deref(), settings.keep_days) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::Usage(
                    "--purge-schedule needs --keep-days (TELEMETRY_KEEP_DAYS): the days of raw events to keep"
                        .into(),
                ));
            }
            (Some(expression), Some(keep_days)) => Some((
                Schedule::parse(expression, self.launcher.job().timezone.clone())
                    .map_err(|e| Error::Usage(format!("--purge-schedule: {e}")))?,
                keep_days,
            )),
        };
        let listener = TcpListener::bind(settings.bind).await.map_err(|e| {
            Error::Usage(format!(
                "--bind {}: cannot listen there: {e}",
                settings.bind
            ))
        })?;
        let address = listener.local_addr().unwrap_or(settings.bind);
        let mut state = AppState::with_launcher(
            self.launcher.clone(),
            settings.max_range_days,
            settings.secret,
        )
        .with_keep_days(settings.keep_days);
        if let Some(read) = settings.read_secret {
            state = state.with_read_secret(read);
        }
        Ok(Server {
            listener,
            address,
            state,
            launcher: self.launcher,
            schedule,
            purge_schedule,
            today_every: settings.today_every,
        })
    }
}

/// What `serve` needs besides the [`Settings`], taken from the command line and the
/// environment.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub bind: SocketAddr,
    pub max_range_days: u32,
    /// A cron expression, evaluated in the job's zone.
    pub schedule: Option<String>,
    /// How often to roll up today so far; never when `None`.
    pub today_every: Option<std::time::Duration>,
    /// A cron expression for `telemetry-purge`, in the job's zone; needs `keep_days`.
    pub purge_schedule: Option<String>,
    /// The purge's days kept, for its schedule and for requests that do not say.
    pub keep_days: Option<u32>,
    pub secret: CronSecret,
    /// `READ_SECRET`: reads only (the report, the run history, the metrics).
    pub read_secret: Option<Secret>,
}

/// A server, built and bound, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
    launcher: Launcher,
    schedule: Option<Schedule>,
    /// The purge's schedule and its days kept.
    purge_schedule: Option<(Schedule, u32)>,
    today_every: Option<std::time::Duration>,
}

impl Server {
    /// The address the server listens on (the real port when bound to port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes; then stops accepting, stops the schedule,
    /// and waits for the requests and runs under way to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let base = format!("http://{}", self.address);
        tracing::info!(
            address = %self.address,
            dashboard = %format!("{base}/"),
            "serving: the dashboard at {base}/, runs at {JOB_PATH} and {PURGE_PATH} (CRON_SECRET), \
             the report at {REPORT_PATH}, the run history at {RUNS_PATH}, /metrics \
             (READ_SECRET or CRON_SECRET), and /healthz"
        );
        let stop = CancellationToken::new();
        let scheduler = self.schedule.map(|schedule| {
            let next = schedule
                .next_after(jiff::Timestamp::now())
                .map(|tick| tick.to_string())
                .unwrap_or_default();
            tracing::info!(
                schedule = schedule.expression(),
                next_run = %next,
                timezone = self.launcher.job().timezone.iana_name().unwrap_or("UTC"),
                "running telemetry-daily on schedule"
            );
            tokio::spawn(schedule::run_on_schedule(
                self.launcher.clone(),
                schedule,
                stop.clone().cancelled_owned(),
            ))
        });
        let refresher = self.today_every.map(|every| {
            tracing::info!(
                every_s = every.as_secs(),
                "rolling up today so far at this interval"
            );
            tokio::spawn(schedule::refresh_today_every(
                self.launcher.clone(),
                every,
                stop.clone().cancelled_owned(),
            ))
        });
        let purger = self.purge_schedule.map(|(schedule, keep_days)| {
            tracing::info!(
                schedule = schedule.expression(),
                keep_days,
                "running telemetry-purge on schedule"
            );
            tokio::spawn(schedule::run_job_on_schedule(
                self.launcher.clone(),
                schedule,
                stop.clone().cancelled_owned(),
                move |launcher: &Launcher| launcher.launch_scheduled_purge(keep_days),
            ))
        });
        let stop_on_signal = stop.clone();
        http::serve(self.listener, self.state, async move {
            shutdown.await;
            stop_on_signal.cancel();
        })
        .await;
        stop.cancel();
        for task in [scheduler, refresher, purger].into_iter().flatten() {
            if let Err(error) = task.await
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
        // A scheduled run started just before the stop is waited for too.
        self.launcher.wait().await;
        tracing::info!("stopped");
    }
}
