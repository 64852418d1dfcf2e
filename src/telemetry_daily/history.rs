//! The run's row in `job_runs`. The history is a record, not a precondition: if it
//! cannot be written, the run goes on and says so in the log.

use crate::model::{NewRun, RunReport, RunStatus};
use crate::store::RunHistory;

pub(super) enum History {
    Recorded(i64),
    Off,
}

impl History {
    pub(super) async fn start<S: RunHistory>(store: &S, run: &NewRun) -> Self {
        match store.start_run(run).await {
            Ok(id) => History::Recorded(id),
            Err(error) => {
                tracing::warn!(%error, "the run could not be recorded in job_runs");
                History::Off
            }
        }
    }

    pub(super) async fn progress<S: RunHistory>(&self, store: &S, days_done: u32) {
        if let History::Recorded(id) = *self
            && let Err(error) = store.run_progress(id, days_done).await
        {
            tracing::warn!(%error, "the run history could not be updated");
        }
    }

    pub(super) async fn finish<S: RunHistory>(
        &self,
        store: &S,
        report: &RunReport,
        days_done: u32,
    ) {
        let History::Recorded(id) = *self else { return };
        let status = if report.ok {
            RunStatus::Ok
        } else {
            RunStatus::Failed
        };
        let json = serde_json::to_string(report)
            .expect("a run report holds only strings, numbers and maps with string keys");
        if let Err(error) = store.finish_run(id, status, days_done, &json).await {
            tracing::warn!(%error, "the end of the run could not be recorded");
        }
    }
}
