//! The run history, `job_runs`, on both databases: each step is written once, on
//! [`Store`], and each backend gives its own statements, which bind the same values in
//! the same order.

use super::{PgStore, SqliteStore, Store, StoreError, history_read_error, rows};
use crate::model::{JobReport, NewRun, RunRecord, RunStatus};

use super::error::query_error;

/// A backend's statements for `job_runs`.
struct HistorySql {
    /// Begins a writing transaction.
    begin: &'static str,
    /// Marks `running` runs of job $1 over days overlapping $2..=$3 `abandoned`.
    abandon: &'static str,
    /// Inserts a `running` run (job, trigger, start, end, zone, days, watermark),
    /// returning its id.
    insert: &'static str,
    /// Sets run $1's days done to $2.
    progress: &'static str,
    /// Ends run $1 with status $2, days done $3, report $4 and summary $5.
    finish: &'static str,
    /// Deletes finished runs older than the newest $1, but for the run holding the
    /// latest successful `--changed` watermark.
    prune: &'static str,
    /// The watermark of job $1's latest successful run that recorded one.
    watermark: &'static str,
    /// The $1 newest runs (of job $2 only, unless it is null), selected as
    /// [`rows::run_record`] reads them (no report).
    recent: &'static str,
    /// Run $1, with its report.
    one: &'static str,
}

/// The columns of `job_runs` as [`rows::run_record`] reads them, on PostgreSQL, with
/// `$report` for the report and `$tail` after the table.
macro_rules! pg_runs {
    ($report:literal, $tail:literal) => {
        concat!(
            "SELECT id, job, trigger, ",
            "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), ",
            "to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), ",
            "start_date::text, end_date::text, timezone, status, days_done::int8, days_total::int8, ",
            "source_watermark, summary::text, ",
            $report,
            " FROM job_runs ",
            $tail
        )
    };
}

/// [`pg_runs!`] on SQLite, which keeps times and dates as text already.
macro_rules! sqlite_runs {
    ($report:literal, $tail:literal) => {
        concat!(
            "SELECT id, job, trigger, started_at, finished_at, start_date, end_date, timezone, ",
            "status, days_done, days_total, source_watermark, summary, ",
            $report,
            " FROM job_runs ",
            $tail
        )
    };
}

impl Store {
    /// Records a run as `running`, first marking `abandoned` every earlier `running` run
    /// of the same job over overlapping days (its process died: its days were free for
    /// this run to take). Returns the new run's id.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    pub async fn start_run(&self, run: &NewRun) -> Result<i64, StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
                    let action = "recording the run";
            let (start, end) = (run.range.start().to_string(), run.range.end().to_string());
            let mut tx = db
                .pool
                .begin_with(sql.begin)
                .await
                .map_err(query_error(action))?;
            sqlx::query(sql.abandon)
                .bind(&run.job)
                .bind(&start)
                .bind(&end)
                .execute(&mut *tx)
                .await
                .map_err(query_error(action))?;
            let id: i64 = sqlx::query_scalar(sql.insert)
                .bind(&run.job)
                .bind(run.trigger.as_str())
                .bind(&start)
                .bind(&end)
                .bind(&run.timezone)
                .bind(i64::from(run.days_total))
                .bind(run.source_watermark)
                .fetch_one(&mut *tx)
                .await
                .map_err(query_error(action))?;
            tx.commit().await.map_err(query_error(action))?;
            Ok(id)
        })
    }

    /// Records that `days_done` days of run `id` are committed.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    pub async fn run_progress(&self, id: i64, days_done: u32) -> Result<(), StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
                    sqlx::query(sql.progress)
                .bind(id)
                .bind(i64::from(days_done))
                .execute(&db.pool)
                .await
                .map_err(query_error("recording the run's progress"))?;
            Ok(())
        })
    }

    /// Records the end of run `id`: `ok` or `failed` as its report says, the report
    /// and its summary.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    pub async fn finish_run(
        &self,
        id: i64,
        days_done: u32,
        report: &impl JobReport,
    ) -> Result<(), StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
                    let action = "recording the end of the run";
            let status = if report.ok() {
                RunStatus::Ok
            } else {
                RunStatus::Failed
            };
            let encode =
                |e: serde_json::Error| query_error(action)(sqlx::Error::Encode(Box::new(e)));
            let report_json = serde_json::to_string(report).map_err(encode)?;
            let summary_json =
                serde_json::to_string(&report.summary()).map_err(encode)?;
            sqlx::query(sql.finish)
                .bind(id)
                .bind(status.as_str())
                .bind(i64::from(days_done))
                .bind(report_json)
                .bind(summary_json)
                .execute(&db.pool)
                .await
                .map_err(query_error(action))?;
            Ok(())
        })
    }

    /// Deletes the oldest finished runs beyond the newest `keep`, but never the run
    /// whose watermark the next `--changed` run starts from. Returns how many went.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be written.
    pub async fn prune_runs(&self, keep: u32) -> Result<u64, StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
                    sqlx::query(sql.prune)
                .bind(i64::from(keep))
                .execute(&db.pool)
                .await
                .map(|done| done.rows_affected())
                .map_err(query_error("pruning job_runs"))
        })
    }

    /// The source watermark of the latest successful run of `job` that recorded one.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be read.
    pub async fn last_watermark(&self, job: &str) -> Result<Option<i64>, StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
                    sqlx::query_scalar(sql.watermark)
                .bind(job)
                .fetch_optional(&db.pool)
                .await
                .map(Option::flatten)
                .map_err(history_read_error)
        })
    }

    /// The `limit` most recent runs, newest first, with their summaries (not their
    /// reports).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be read.
    pub async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        self.recent_runs_of(limit, None).await
    }

    /// The `limit` most recent runs of `job` (of every job when `None`), newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be read.
    pub async fn recent_runs_of(
        &self,
        limit: u32,
        job: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
            sqlx::query(sql.recent)
                .bind(i64::from(limit))
                .bind(job)
                .fetch_all(&db.pool)
                .await
                .and_then(|found| found.iter().map(rows::run_record).collect())
                .map_err(history_read_error)
        })
    }

    /// Run `id` with its report, if it is recorded.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the history cannot be read.
    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self, db => {
            let sql = db.history_sql();
                    sqlx::query(sql.one)
                .bind(id)
                .fetch_optional(&db.pool)
                .await
                .and_then(|found| found.as_ref().map(rows::run_record).transpose())
                .map_err(history_read_error)
        })
    }
}

/// PostgreSQL's statements.
const PG_HISTORY: HistorySql = HistorySql {
    begin: "BEGIN",
    abandon: "UPDATE job_runs SET status = 'abandoned', finished_at = now() \
                  WHERE status = 'running' AND job = $1 AND start_date <= $3::date AND end_date >= $2::date",
    insert: "INSERT INTO job_runs (job, trigger, start_date, end_date, timezone, status, days_total, \
                 source_watermark) VALUES ($1, $2, $3::date, $4::date, $5, 'running', $6, $7) RETURNING id",
    progress: "UPDATE job_runs SET days_done = $2 WHERE id = $1",
    finish: "UPDATE job_runs SET status = $2, days_done = $3, report = $4::jsonb, \
                 summary = $5::jsonb, finished_at = now() WHERE id = $1",
    prune: "DELETE FROM job_runs WHERE status <> 'running' \
                AND id < (SELECT min(id) FROM (SELECT id FROM job_runs ORDER BY id DESC LIMIT $1) AS newest) \
                AND id IS DISTINCT FROM (SELECT max(id) FROM job_runs \
                    WHERE status = 'ok' AND source_watermark IS NOT NULL)",
    watermark: "SELECT source_watermark FROM job_runs WHERE job = $1 AND status = 'ok' \
                    AND source_watermark IS NOT NULL ORDER BY id DESC LIMIT 1",
    recent: pg_runs!(
        "NULL::text",
        "WHERE ($2::text IS NULL OR job = $2) ORDER BY id DESC LIMIT $1"
    ),
    one: pg_runs!("report::text", "WHERE id = $1"),
};

impl PgStore {
    fn history_sql(&self) -> &'static HistorySql {
        &PG_HISTORY
    }
}

/// SQLite's statements.
const SQLITE_HISTORY: HistorySql = HistorySql {
    begin: "BEGIN IMMEDIATE",
    abandon: "UPDATE job_runs SET status = 'abandoned', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                  WHERE status = 'running' AND job = ?1 AND start_date <= ?3 AND end_date >= ?2",
    insert: "INSERT INTO job_runs (job, trigger, started_at, start_date, end_date, timezone, status, \
                 days_total, source_watermark) \
                 VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?3, ?4, ?5, 'running', ?6, ?7) RETURNING id",
    progress: "UPDATE job_runs SET days_done = ?2 WHERE id = ?1",
    finish: "UPDATE job_runs SET status = ?2, days_done = ?3, report = ?4, summary = ?5, \
                 finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
    prune: "DELETE FROM job_runs WHERE status <> 'running' \
                AND id < (SELECT min(id) FROM (SELECT id FROM job_runs ORDER BY id DESC LIMIT ?1)) \
                AND id IS NOT (SELECT max(id) FROM job_runs \
                    WHERE status = 'ok' AND source_watermark IS NOT NULL)",
    watermark: "SELECT source_watermark FROM job_runs WHERE job = ?1 AND status = 'ok' \
                    AND source_watermark IS NOT NULL ORDER BY id DESC LIMIT 1",
    recent: sqlite_runs!(
        "NULL",
        "WHERE (?2 IS NULL OR job = ?2) ORDER BY id DESC LIMIT ?1"
    ),
    one: sqlite_runs!("report", "WHERE id = ?1"),
};

impl SqliteStore {
    fn history_sql(&self) -> &'static HistorySql {
        &SQLITE_HISTORY
    }
}
