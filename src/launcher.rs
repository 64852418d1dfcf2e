//! Starting runs, for every face: the command line, the HTTP endpoint and the
//! built-in schedule all start `telemetry-daily` and `telemetry-purge` through a
//! [`Launcher`].
//!
//! The launcher owns what runs share within a process: the store, the job's settings,
//! the tasks of runs under way (so that a shutdown can wait for them), the run
//! counters of `/metrics`, and the limit on runs started over HTTP. It knows nothing
//! of how a run was asked for.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::model::PurgeReport;
use crate::model::{RunReport, Trigger};
use crate::store::Store;
use crate::telemetry_daily::{self, Progress, RunError, RunOptions};
use crate::telemetry_purge::{self, PurgeError, PurgeOptions};

/// Starts runs over one store with one set of job settings.
#[derive(Debug, Clone)]
pub struct Launcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    job: RunOptions,
    tasks: TaskTracker,
    metrics: Metrics,
    /// Permits for runs started by requests.
    requested: Arc<Semaphore>,
    requested_limit: usize,
}

/// Runs that requests may have going at once, by default.
pub const DEFAULT_REQUESTED_RUNS: usize = 4;

/// A run could not start: as many as allowed are going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} runs started by requests are going already; try again when one has finished")]
pub struct TooManyRuns(pub usize);

impl Launcher {
    /// A launcher over `store`. `job` gives the zone, top-K, lookback, read slices,
    /// memory limit and lock timeout of every run; each run sets its own range, dry
    /// run and trigger. At most [`DEFAULT_REQUESTED_RUNS`] requested runs at once.
    pub fn new(store: Store, job: RunOptions) -> Self {
        Self::with_requested_runs(store, job, DEFAULT_REQUESTED_RUNS)
    }

    /// [`Launcher::new`] allowing `requested_runs` runs started by requests at once.
    pub fn with_requested_runs(store: Store, job: RunOptions, requested_runs: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                job,
                tasks: TaskTracker::new(),
                metrics: Metrics::new(),
                requested: Arc::new(Semaphore::new(requested_runs.max(1))),
                requested_limit: requested_runs.max(1),
            }),
        }
    }

    /// The store runs read from and write to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The job's settings, as every run starts from them.
    pub fn job(&self) -> &RunOptions {
        &self.inner.job
    }

    /// The counters of the runs this launcher has made.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Runs `options` here and now, telling `progress` as each day is done, and
    /// counts the outcome.
    ///
    /// # Errors
    ///
    /// [`RunError`] when the run cannot start.
    pub async fn run_here<P: Progress>(
        &self,
        options: &RunOptions,
        progress: &mut P,
    ) -> Result<RunReport, RunError> {
        let outcome =
            telemetry_daily::run_with_progress(&self.inner.store, options, progress).await;
        self.observe(options.trigger, &outcome);
        outcome
    }

    /// Starts a run on a task of its own, which [`Launcher::wait`] waits for. The run
    /// logs and counts its own outcome, so it is on record even if no one awaits it
    /// (a caller that hung up, say).
    pub fn launch(&self, options: RunOptions) -> JoinHandle<Result<RunReport, RunError>> {
        self.launch_holding(options, None)
    }

    /// [`Launcher::launch`], the run holding `permit` until it ends.
    fn launch_holding(
        &self,
        options: RunOptions,
        permit: Option<OwnedSemaphorePermit>,
    ) -> JoinHandle<Result<RunReport, RunError>> {
        let launcher = self.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            let outcome = telemetry_daily::run(&launcher.inner.store, &options).await;
            if let Err(error) = &outcome {
                tracing::warn!(%error, trigger = options.trigger.as_str(), "run did not start");
            }
            launcher.observe(options.trigger, &outcome);
            outcome
        })
    }

    /// Starts a run asked for by a request, unless as many as allowed are going
    /// already. The run keeps its place until it ends, even if its caller hangs up.
    ///
    /// # Errors
    ///
    /// [`TooManyRuns`] when none can start now.
    pub fn launch_requested(
        &self,
        options: RunOptions,
    ) -> Result<JoinHandle<Result<RunReport, RunError>>, TooManyRuns> {
        let permit = Arc::clone(&self.inner.requested)
            .try_acquire_owned()
            .map_err(|_| TooManyRuns(self.inner.requested_limit))?;
        Ok(self.launch_holding(options, Some(permit)))
    }

    /// Starts a run of the built-in schedule: the default range, with the earlier
    /// days that changed, waiting for busy days up to the lock timeout.
    pub fn launch_scheduled(&self) -> JoinHandle<Result<RunReport, RunError>> {
        self.launch(RunOptions {
            range: None,
            dry_run: false,
            force: false,
            changed: true,
            trigger: Trigger::Schedule,
            ..self.inner.job.clone()
        })
    }

    /// Starts a roll-up of today so far in the job's zone (trigger `schedule`),
    /// waiting for busy days up to the lock timeout.
    pub fn launch_today(&self) -> JoinHandle<Result<RunReport, RunError>> {
        let today = jiff::Timestamp::now()
            .to_zoned_datetime(self.inner.job.timezone.clone())
            .date();
        self.launch(RunOptions {
            range: Some(crate::model::DayRange::single(today)),
            dry_run: false,
            force: false,
            changed: false,
            trigger: Trigger::Schedule,
            ..self.inner.job.clone()
        })
    }

    /// Runs a purge here and now, and counts the outcome.
    ///
    /// # Errors
    ///
    /// [`PurgeError`] when the purge cannot start.
    pub async fn purge_here(&self, options: &PurgeOptions) -> Result<PurgeReport, PurgeError> {
        let outcome = telemetry_purge::run(&self.inner.store, options).await;
        self.observe_purge(options.trigger, &outcome);
        outcome
    }

    /// Starts a purge on a task of its own, as [`Launcher::launch`] does a run;
    /// with `permit`, a requested one that holds its place until it ends.
    fn launch_purge_holding(
        &self,
        options: PurgeOptions,
        permit: Option<OwnedSemaphorePermit>,
    ) -> JoinHandle<Result<PurgeReport, PurgeError>> {
        let launcher = self.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            let outcome = telemetry_purge::run(&launcher.inner.store, &options).await;
            if let Err(error) = &outcome {
                tracing::warn!(%error, trigger = options.trigger.as_str(), "purge did not start");
            }
            launcher.observe_purge(options.trigger, &outcome);
            outcome
        })
    }

    /// Starts a purge asked for by a request, unless as many runs as allowed are
    /// going already (purges and runs share the places).
    ///
    /// # Errors
    ///
    /// [`TooManyRuns`] when none can start now.
    pub fn launch_requested_purge(
        &self,
        options: PurgeOptions,
    ) -> Result<JoinHandle<Result<PurgeReport, PurgeError>>, TooManyRuns> {
        let permit = Arc::clone(&self.inner.requested)
            .try_acquire_owned()
            .map_err(|_| TooManyRuns(self.inner.requested_limit))?;
        Ok(self.launch_purge_holding(options, Some(permit)))
    }

    /// Starts a purge of the built-in purge schedule, keeping `keep_days` days.
    pub fn launch_scheduled_purge(
        &self,
        keep_days: u32,
    ) -> JoinHandle<Result<PurgeReport, PurgeError>> {
        self.launch_purge_holding(
            PurgeOptions {
                trigger: Trigger::Schedule,
                job: self.inner.job.clone(),
                ..PurgeOptions::keeping(keep_days)
            },
            None,
        )
    }

    /// Stops taking runs on tasks and waits for those under way to finish.
    pub async fn wait(&self) {
        let tasks = &self.inner.tasks;
        tasks.close();
        if !tasks.is_empty() {
            tracing::info!(runs = tasks.len(), "waiting for runs under way to finish");
        }
        tasks.wait().await;
    }

    fn observe(&self, trigger: Trigger, outcome: &Result<RunReport, RunError>) {
        self.inner.metrics.observe(trigger, outcome.as_ref().ok());
    }

    fn observe_purge(&self, trigger: Trigger, outcome: &Result<PurgeReport, PurgeError>) {
        self.inner
            .metrics
            .observe_purge(trigger, outcome.as_ref().ok());
    }
}
