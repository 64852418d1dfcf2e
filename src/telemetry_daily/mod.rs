//! The `telemetry-daily` job: raw events rolled up into one row per (day, event).
//!
//! [`run`] walks the days of a range in order. For each day it streams the source
//! events into a [`DayAggregate`], compares the result with the stored rows
//! ([`diff`]), and applies the difference in one transaction, unless the retention
//! guard or a dry run says otherwise. Everything here is pure logic over the two
//! storage interfaces in [`crate::store`]; no SQL, no HTTP.
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
//! use veris_jobs::telemetry_daily::{self, DayRange, RunOptions};
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

mod aggregate;
mod days;
mod diff;
mod flat_json;
pub mod meta;
mod report;

use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

pub use self::aggregate::{
    DayAggregate, DayRollup, EventSink, MAX_EVENT_NAME_BYTES, MergeableSink, RollupRow, SkipCounts,
    SourceEvent,
};
pub use self::days::{DateError, DayRange, DayWindow, day_number, parse_date};
pub use self::diff::{DayChanges, diff};
pub use self::report::{ChangedDays, DayReport, DayStatus, RunReport, Totals};

use crate::store::{EventSource, NewRun, RollupStore, RunHistory, RunStatus, StoreError};

/// Hash maps keyed by event data. foldhash is several times faster than the
/// standard SipHash and, seeded per process, still resists crafted collisions.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// The keys of those maps: names, user ids and values are mostly short, and kept
/// inline (up to 24 bytes) they are compared without a second memory access.
type CompactString = compact_str::CompactString;

/// The job's name, as reports and logs give it.
pub const JOB_NAME: &str = "telemetry-daily";

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
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// The command line (and library calls).
    #[default]
    Cli,
    /// The HTTP endpoint.
    Http,
    /// The built-in schedule.
    Schedule,
}

impl Trigger {
    /// The name `job_runs.trigger` holds.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Http => "http",
            Trigger::Schedule => "schedule",
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            range: None,
            timezone: TimeZone::UTC,
            dry_run: false,
            force: false,
            meta_top_k: 20,
            lock_timeout: Duration::from_secs(60),
            lookback_days: 1,
            read_slices: 1,
            trigger: Trigger::Cli,
            changed: false,
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
pub async fn run<S>(store: &S, options: &RunOptions) -> Result<RunReport, RunError>
where
    S: EventSource + RollupStore + RunHistory + Clone + Send + Sync + 'static,
{
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
pub async fn run_with_progress<S, P>(
    store: &S,
    options: &RunOptions,
    progress: &mut P,
) -> Result<RunReport, RunError>
where
    S: EventSource + RollupStore + RunHistory + Clone + Send + Sync + 'static,
    P: Progress,
{
    let started = Instant::now();
    let range = options.resolve_range(Timestamp::now())?;
    let changed = if options.changed {
        Some(changed_days(store, &range, &options.timezone).await?)
    } else {
        None
    };
    let mut dates: Vec<Date> = Vec::new();
    if let Some(changed) = &changed {
        dates.extend(&changed.earlier);
    }
    dates.extend(range.days());
    let windows = dates
        .iter()
        .map(|&date| DayWindow::new(date, &options.timezone))
        .collect::<Result<Vec<_>, _>>()?;
    let locks = if options.dry_run {
        None
    } else {
        Some(store.lock_days(&dates, options.lock_timeout).await?)
    };
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
    let history = match &locks {
        Some(_) => {
            let run = NewRun {
                job: JOB_NAME.to_owned(),
                trigger: options.trigger.as_str().to_owned(),
                range,
                timezone,
                days_total: u32::try_from(dates.len()).unwrap_or(u32::MAX),
                source_watermark: changed.as_ref().map(|c| c.through_id),
            };
            History::start(store, &run).await
        }
        None => History::Off,
    };
    progress.started(windows.len());
    let mut days_done = 0u32;
    let mut unreachable: Option<String> = None;
    for window in &windows {
        let date = window.date;
        let day_started = Instant::now();
        let day = match &unreachable {
            Some(reason) => failed_day(date, format!("not attempted: {reason}"), 0),
            None => match run_day(store, window, options).await {
                Ok(day) => day,
                Err(error) => {
                    // A lost connection is retried on the next day; a database that no
                    // longer answers at all ends the run.
                    if error.is_unreachable() && !store.ping().await {
                        unreachable = Some(format!("the database became unreachable ({error})"));
                    }
                    failed_day(date, error.to_string(), elapsed_ms(day_started))
                }
            },
        };
        log_day(&day);
        if day.status != DayStatus::Failed {
            days_done += 1;
            history.progress(store, days_done).await;
        }
        progress.day_done(&day);
        report.days.push(day);
    }
    report.summarize();
    report.duration_ms = elapsed_ms(started);
    history.finish(store, &report, days_done).await;
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

/// What `--changed` adds to a run: the days before its range that received source
/// rows since the last successful `--changed` run, and the watermark to record.
struct Changed {
    since_id: Option<i64>,
    through_id: i64,
    earlier: Vec<Date>,
}

impl Changed {
    fn to_report(&self) -> ChangedDays {
        ChangedDays {
            since_id: self.since_id,
            through_id: self.through_id,
            earlier_days: self.earlier.iter().map(Date::to_string).collect(),
        }
    }
}

/// Finds the days before `range` that received source rows with ids above the last
/// recorded watermark. The watermark is read before any day is, so rows arriving
/// during this run are left for the next one.
async fn changed_days<S>(
    store: &S,
    range: &DayRange,
    zone: &TimeZone,
) -> Result<Changed, StoreError>
where
    S: EventSource + RunHistory,
{
    let through_id = store.id_watermark().await?.unwrap_or(0);
    let since_id = store.last_watermark(JOB_NAME).await?;
    let mut earlier = std::collections::BTreeSet::new();
    match since_id {
        Some(since) if since < through_id => {
            // An hour of UTC can straddle two local days (zones with offsets of :30 or
            // :45): both its first and last instant are placed.
            let last_instant = jiff::SignedDuration::from_nanos(3_600_000_000_000 - 1);
            for hour in store.hours_with_ids(since, through_id).await? {
                for instant in [Some(hour), hour.checked_add(last_instant).ok()]
                    .into_iter()
                    .flatten()
                {
                    let date = instant.to_zoned_datetime(zone.clone()).date();
                    if date < range.start() {
                        earlier.insert(date);
                    }
                }
            }
        }
        Some(_) => {}
        None => tracing::info!(
            through_id,
            "--changed: no earlier successful --changed run to compare with; \
             this run records the watermark the next one starts from"
        ),
    }
    Ok(Changed {
        since_id,
        through_id,
        earlier: earlier.into_iter().collect(),
    })
}

/// The run's row in `job_runs`. The history is a record, not a precondition: if it
/// cannot be written, the run goes on and says so in the log.
enum History {
    Recorded(i64),
    Off,
}

impl History {
    async fn start<S: RunHistory>(store: &S, run: &NewRun) -> Self {
        match store.start_run(run).await {
            Ok(id) => History::Recorded(id),
            Err(error) => {
                tracing::warn!(%error, "the run could not be recorded in job_runs");
                History::Off
            }
        }
    }

    async fn progress<S: RunHistory>(&self, store: &S, days_done: u32) {
        if let History::Recorded(id) = *self
            && let Err(error) = store.run_progress(id, days_done).await
        {
            tracing::warn!(%error, "the run history could not be updated");
        }
    }

    async fn finish<S: RunHistory>(&self, store: &S, report: &RunReport, days_done: u32) {
        let History::Recorded(id) = *self else { return };
        let status = if report.ok {
            RunStatus::Ok
        } else {
            RunStatus::Failed
        };
        // A report holds only strings and numbers, so serializing cannot fail.
        let json = serde_json::to_string(report).unwrap_or_default();
        if let Err(error) = store.finish_run(id, status, days_done, &json).await {
            tracing::warn!(%error, "the end of the run could not be recorded");
        }
    }
}

/// Aggregates one day and, unless told otherwise, writes it.
async fn run_day<S>(
    store: &S,
    window: &DayWindow,
    options: &RunOptions,
) -> Result<DayReport, StoreError>
where
    S: EventSource + RollupStore + RunHistory + Clone + Send + Sync + 'static,
{
    let started = Instant::now();
    let date = window.date;
    let rollup = read_day(store, window, options.read_slices)
        .await?
        .finish(options.meta_top_k);
    let stored = store.load_day(date).await?;
    let changes = diff(&rollup.rows, &stored);

    let stored_events: i64 = stored.iter().map(|r| r.count).sum();
    let purged = i64::try_from(rollup.named_events()).unwrap_or(i64::MAX) < stored_events;
    let mut day = DayReport {
        date: date.to_string(),
        status: if options.dry_run {
            DayStatus::DryRun
        } else {
            DayStatus::Written
        },
        events_read: rollup.events_read,
        events_skipped: rollup.skipped.total(),
        skipped: rollup
            .skipped
            .by_reason()
            .into_iter()
            .map(|(reason, n)| (reason.to_owned(), n))
            .collect(),
        rows: rollup.rows.len() as u64,
        inserted: changes.inserts.len() as u64,
        updated: changes.updates.len() as u64,
        deleted: changes.deletes.len() as u64,
        unchanged: changes.unchanged,
        duration_ms: 0,
        error: None,
    };
    if purged && !options.force {
        day.status = DayStatus::Kept;
        day.error = Some(format!(
            "the source holds {} events but the stored rollups count {stored_events}; \
             kept the rollups (use --force to overwrite)",
            rollup.named_events()
        ));
        day.rows = stored.len() as u64;
        (day.inserted, day.updated, day.deleted) = (0, 0, 0);
        day.unchanged = stored.len() as u64;
    } else if !options.dry_run && !changes.is_empty() {
        store.write_day(date, &changes).await?;
    }
    day.duration_ms = elapsed_ms(started);
    Ok(day)
}

/// Streams a day's events into an aggregate: in one stream, or in `slices` time
/// slices read concurrently on tasks of their own (so that their parsing can use
/// several cores) and merged. The aggregate is mergeable, so the result is the same.
async fn read_day<S>(store: &S, window: &DayWindow, slices: u32) -> Result<DayAggregate, StoreError>
where
    S: EventSource + Clone + Send + Sync + 'static,
{
    let mut day = DayAggregate::new();
    if slices <= 1 {
        store.scan_window(window, &mut day).await?;
        return Ok(day);
    }
    let tasks: Vec<_> = window
        .slices(slices)
        .into_iter()
        .map(|slice| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut part = DayAggregate::new();
                store.scan_window(&slice, &mut part).await.map(|()| part)
            })
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(part) => day.merge(part?),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => {
                return Err(StoreError::Aborted(format!(
                    "reading {} was cancelled",
                    window.date
                )));
            }
        }
    }
    Ok(day)
}

fn failed_day(date: Date, error: String, duration_ms: u64) -> DayReport {
    DayReport {
        date: date.to_string(),
        status: DayStatus::Failed,
        events_read: 0,
        events_skipped: 0,
        skipped: Default::default(),
        rows: 0,
        inserted: 0,
        updated: 0,
        deleted: 0,
        unchanged: 0,
        duration_ms,
        error: Some(error),
    }
}

fn log_day(day: &DayReport) {
    if day.status == DayStatus::Failed {
        tracing::error!(date = %day.date, error = day.error.as_deref().unwrap_or(""), "day failed");
    } else {
        tracing::info!(
            date = %day.date,
            status = %day.status,
            events_read = day.events_read,
            events_skipped = day.events_skipped,
            rows = day.rows,
            inserted = day.inserted,
            updated = day.updated,
            deleted = day.deleted,
            unchanged = day.unchanged,
            duration_ms = day.duration_ms,
            "day done"
        );
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
