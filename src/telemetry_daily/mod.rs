//! The `telemetry-daily` job: raw events rolled up into one row per (day, event).
//!
//! [`run`] walks the days of a range in order. For each day it streams the source
//! events into a [`DayAggregate`](crate::model::DayAggregate), compares the result
//! with the stored rows ([`diff`](crate::model::diff)), and applies the difference in
//! one transaction, unless the retention guard or a dry run says otherwise. It holds
//! the range's days for the run, records the run in the history, and reports each
//! day. The arithmetic lives in [`model`](crate::model), the SQL in
//! [`store`](crate::store); this module drives them, and knows nothing of the
//! command line or HTTP.
//!
//! # Examples
//!
//! Yesterday (in UTC), on a SQLite file:
//!
//! ```no_run
//! use veris_jobs::store::{Store, TableName};
//! use veris_jobs::telemetry_daily::{self, RunOptions};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::connect("sqlite://veris.db", &TableName::parse("telemetry_events")?).await?;
//! store.migrate().await?;
//! let report = telemetry_daily::run(&store, &RunOptions::default()).await?;
//! assert!(report.ok);
//! # Ok(()) }
//! ```
//!
//! A range of days, cut in New York time:
//!
//! ```no_run
//! use jiff::civil::date;
//! use jiff::tz::TimeZone;
//! use veris_jobs::model::DayRange;
//! use veris_jobs::telemetry_daily::{self, RunOptions};
//! # async fn example(store: veris_jobs::store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! let options = RunOptions {
//!     range: Some(DayRange::new(date(2024, 1, 1), date(2024, 1, 31))?),
//!     timezone: TimeZone::get("America/New_York")?,
//!     ..RunOptions::default()
//! };
//! let report = telemetry_daily::run(&store, &options).await?;
//! println!("{} rows", report.totals.rows);
//! # Ok(()) }
//! ```
//!
//! A dry run, which writes nothing and says what would change:
//!
//! ```no_run
//! use veris_jobs::telemetry_daily::{self, RunOptions};
//! # async fn example(store: veris_jobs::store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! let options = RunOptions { dry_run: true, ..RunOptions::default() };
//! let report = telemetry_daily::run(&store, &options).await?;
//! for day in &report.days {
//!     println!("{}: +{} ~{} -{}", day.date, day.inserted, day.updated, day.deleted);
//! }
//! # Ok(()) }
//! ```

mod changed;
mod day;
mod spill;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use self::changed::Changed;
use crate::jobs::History;
use crate::model::{
    DateError, DayRange, DayReport, DayStatus, DayWindow, JOB_NAME, NewRun, RunReport, Totals,
    Trigger,
};
use crate::store::{DayLocks, Store, StoreError};

/// Days a run holds at once. PostgreSQL keeps advisory locks in a shared table
/// sized for about 64 per connection; a run takes its range's days a batch at a time.
pub const LOCKED_AT_ONCE: usize = 31;

/// How one run behaves. `RunOptions::default()` is the contract's default run:
/// yesterday in UTC, written, top 20 values, waiting up to 60 s for busy days.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The days to do; `None` means the `lookback_days` days ending yesterday.
    pub range: Option<DayRange>,
    /// The zone days are cut in.
    pub timezone: TimeZone,
    /// Read and aggregate, write nothing, report what would change.
    pub dry_run: bool,
    /// Overwrite days whose source holds fewer events than their rollups.
    pub force: bool,
    /// Values kept per metadata key.
    pub meta_top_k: usize,
    /// How long to wait for days another run holds.
    pub lock_timeout: Duration,
    /// Days the default range covers, ending yesterday.
    pub lookback_days: u32,
    /// Time slices each day is read in, concurrently, over as many connections;
    /// their partial aggregates are merged. 1 reads a day in one stream.
    pub read_slices: u32,
    /// What started the run, as the run history records it.
    pub trigger: Trigger,
    /// Also redo every day before the range that received source rows since the last
    /// successful `changed` run, found by the source's `id` watermark.
    pub changed: bool,
    /// Bytes a day's aggregation may hold; past them it spills to disk.
    pub memory_limit: usize,
    /// Where it spills; `None`: the system's temporary directory (`TMPDIR`).
    pub spill_dir: Option<PathBuf>,
    /// Runs the history keeps (`job_runs` rows); older ones are deleted as runs end.
    pub keep_runs: u32,
}

/// The default [`RunOptions::meta_top_k`]: the contract's 20 values per key.
pub const DEFAULT_META_TOP_K: usize = 20;

/// The default [`RunOptions::keep_runs`]: the newest 10,000 runs stay in `job_runs`.
pub const DEFAULT_KEEP_RUNS: u32 = 10_000;

/// The default [`RunOptions::memory_limit`]: 256 MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 * 1024 * 1024;

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            range: None,
            timezone: TimeZone::UTC,
            dry_run: false,
            force: false,
            meta_top_k: DEFAULT_META_TOP_K,
            lock_timeout: Duration::from_secs(60),
            lookback_days: 1,
            read_slices: 1,
            trigger: Trigger::Cli,
            changed: false,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            spill_dir: None,
            keep_runs: DEFAULT_KEEP_RUNS,
        }
    }
}

impl RunOptions {
    /// The range this run covers, resolving the default against `now`.
    ///
    /// # Errors
    ///
    /// [`DateError`] only at the limits of the calendar.
    pub fn resolve_range(&self, now: Timestamp) -> Result<DayRange, DateError> {
        match self.range {
            Some(range) => Ok(range),
            None => DayRange::ending_yesterday(now, &self.timezone, self.lookback_days),
        }
    }
}

/// Why a run could not start. Failures of single days do not stop a run; they are
/// reported in its [`RunReport`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The range could not be resolved.
    #[error(transparent)]
    Date(#[from] DateError),
    /// The days could not be taken, or the database is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `telemetry-daily` over `options`' range, reading events from and writing
/// rollups to `store`.
///
/// # Errors
///
/// [`RunError`] when the run cannot start: a day is held by another run past
/// `lock_timeout` ([`StoreError::DayBusy`]), or the database is unreachable. Once the
/// run has started, failed days are reported in the report, not returned as errors.
pub async fn run(store: &Store, options: &RunOptions) -> Result<RunReport, RunError> {
    run_with_progress(store, options, &mut ()).await
}

/// Hears how a run is going, day by day: for a progress bar.
pub trait Progress: Send {
    /// The run has taken its days and starts on the first of `days_total`.
    fn started(&mut self, days_total: usize);
    /// A day is done (written, kept, previewed or failed).
    fn day_done(&mut self, day: &DayReport);
}

/// No one listening.
impl Progress for () {
    fn started(&mut self, _days_total: usize) {}
    fn day_done(&mut self, _day: &DayReport) {}
}

/// [`run`], telling `progress` as each day is done.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with_progress<P>(
    store: &Store,
    options: &RunOptions,
    progress: &mut P,
) -> Result<RunReport, RunError>
where
    P: Progress,
{
    let started = Instant::now();
    let read_at = Timestamp::now();
    let range = options.resolve_range(read_at)?;
    range.check_begun(read_at, &options.timezone)?;
    // A database found unreachable before any day is the run's error (HTTP 503), not
    // a report of days that all failed.
    store.check_reachable().await?;
    let changed = if options.changed {
        Some(Changed::find(store, &range, &options.timezone).await?)
    } else {
        None
    };
    let mut dates: Vec<Date> = Vec::new();
    if let Some(changed) = &changed {
        dates.extend(&changed.earlier);
    }
    dates.extend(range.days());
    // The range's ends are where a window can fall outside the calendar: a range
    // that cannot be cut into days is refused before anything is taken.
    for date in [dates.first(), dates.last()].into_iter().flatten() {
        DayWindow::new(*date, &options.timezone)?;
    }
    // Days are held a batch at a time as the run goes: a long backfill holds no
    // more locks at once than a month's run does.
    let batches: Vec<&[Date]> = dates.chunks(LOCKED_AT_ONCE).collect();
    let mut locks = match (options.dry_run, batches.first()) {
        (false, Some(first)) => Some(store.lock_days(first, options.lock_timeout).await?),
        _ => None,
    };
    let writes = !options.dry_run;
    let timezone = options.timezone.iana_name().unwrap_or("UTC").to_owned();
    let mut report = RunReport {
        job: JOB_NAME.to_owned(),
        dry_run: options.dry_run,
        ok: true,
        start_date: range.start().to_string(),
        end_date: range.end().to_string(),
        timezone: timezone.clone(),
        days: Vec::new(),
        totals: Totals::default(),
        duration_ms: 0,
        changed: changed.as_ref().map(Changed::to_report),
    };
    // Dry runs write nothing, so they are not recorded either.
    let (history, busy) = match &locks {
        Some(_) => {
            let run = NewRun {
                job: JOB_NAME.to_owned(),
                trigger: options.trigger,
                range,
                timezone,
                days_total: u32::try_from(dates.len()).unwrap_or(u32::MAX),
                source_watermark: changed.as_ref().map(|c| c.through_id),
            };
            History::start(store, &run).await
        }
        None => (History::Off, None),
    };
    progress.started(dates.len());
    let mut days_done = 0u32;
    // Set when trying further days is pointless: the database no longer answers or
    // stays busy, or the day locks are gone.
    let mut stopped: Option<String> = busy;
    for (index, batch) in batches.iter().enumerate() {
        if index > 0 && writes && stopped.is_none() {
            // Let the last batch go before taking the next: a run never waits while
            // holding days, so two runs cannot wait for each other.
            if let Some(held) = locks.take() {
                held.release().await;
            }
            match store.lock_days(batch, options.lock_timeout).await {
                Ok(held) => locks = Some(held),
                Err(error) => stopped = Some(error.without_addresses()),
            }
        }
        for &date in *batch {
            let day = run_day(store, date, options, locks.as_mut(), &mut stopped).await;
            day::log(&day);
            if day.status != DayStatus::Failed {
                days_done += 1;
                history.progress(store, days_done).await;
            }
            progress.day_done(&day);
            report.days.push(day);
        }
    }
    report.summarize();
    report.duration_ms = elapsed_ms(started);
    history
        .finish(store, &report, days_done, options.keep_runs)
        .await;
    if let Some(locks) = locks {
        locks.release().await;
    }
    tracing::info!(
        start_date = %report.start_date,
        end_date = %report.end_date,
        dry_run = report.dry_run,
        ok = report.ok,
        days = report.days.len(),
        events_read = report.totals.events_read,
        rows = report.totals.rows,
        duration_ms = report.duration_ms,
        "run done"
    );
    Ok(report)
}

/// One day of the run, or its failure; sets `stopped` when further days are pointless.
async fn run_day(
    store: &Store,
    date: Date,
    options: &RunOptions,
    locks: Option<&mut DayLocks>,
    stopped: &mut Option<String>,
) -> DayReport {
    let day_started = Instant::now();
    if let Some(reason) = stopped {
        return day::failed(date, format!("not attempted: {reason}"), 0);
    }
    let window = match DayWindow::new(date, &options.timezone) {
        Ok(window) => window,
        Err(error) => return day::failed(date, error.to_string(), 0),
    };
    match day::roll_up(store, &window, options, locks).await {
        Ok(day) => day,
        Err(day::DayFailure { error, events_read }) => {
            // A lost connection is retried on the next day; a database that no
            // longer answers at all ends the run, as do lost locks.
            if error.is_lock_lost() {
                *stopped = Some(error.for_report());
            } else if error.is_unreachable() && !store.ping().await {
                *stopped = Some(format!(
                    "the database became unreachable ({})",
                    error.for_report()
                ));
            }
            let mut day = day::failed(date, error.for_report(), elapsed_ms(day_started));
            day.events_read = events_read;
            day
        }
    }
}

/// Aggregates `window`'s day now and compares it with the stored rows, writing
/// nothing: the day's report as a dry run of `options` gives it (`failed` with its
/// error when the day could not be read). `telemetry-purge` checks a day with it.
pub(crate) async fn check_day(
    store: &Store,
    window: &DayWindow,
    options: &RunOptions,
) -> DayReport {
    let options = RunOptions {
        dry_run: true,
        ..options.clone()
    };
    match day::roll_up(store, window, &options, None).await {
        Ok(day) => day,
        Err(day::DayFailure { error, events_read }) => {
            let mut day = day::failed(window.date, error.for_report(), 0);
            day.events_read = events_read;
            day
        }
    }
}

pub(crate) fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
