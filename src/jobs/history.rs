//! The run's row in `job_runs`. The history is a record, not a precondition: if it
//! cannot be written, the run goes on and says so in the log, unless the database
//! was too busy to take it: then no day could be written either.

use crate::model::{JobReport, NewRun};
use crate::store::Store;

/// A run's row in `job_runs`, or none when it could not be written.
pub(crate) enum History {
    Recorded(i64),
    Off,
}

impl History {
    /// Records the run; with the history, why the run should stop before its
    /// first day: the database stayed busy (another writer) past its timeout, which
    /// every day's write would wait out again.
    pub(crate) async fn start(store: &Store, run: &NewRun) -> (Self, Option<String>) {
        match store.start_run(run).await {
            Ok(id) => (History::Recorded(id), None),
            Err(error) => {
                tracing::warn!(%error, "the run could not be recorded in job_runs");
                let stop = error
                    .is_busy()
                    .then(|| format!("the database is busy ({error})"));
                (History::Off, stop)
            }
        }
    }

    pub(crate) async fn progress(&self, store: &Store, days_done: u32) {
        if let History::Recorded(id) = *self
            && let Err(error) = store.run_progress(id, days_done).await
        {
            tracing::warn!(%error, "the run history could not be updated");
        }
    }

    /// Records the end of the run, then lets the history go beyond its newest
    /// `keep_runs` rows.
    pub(crate) async fn finish(
        &self,
        store: &Store,
        report: &impl JobReport,
        days_done: u32,
        keep_runs: u32,
    ) {
        let History::Recorded(id) = *self else { return };
        if let Err(error) = store.finish_run(id, days_done, report).await {
            tracing::warn!(%error, "the end of the run could not be recorded");
        }
        match store.prune_runs(keep_runs).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, keep_runs, "pruned the run history"),
            Err(error) => tracing::warn!(%error, "the run history could not be pruned"),
        }
    }
}
