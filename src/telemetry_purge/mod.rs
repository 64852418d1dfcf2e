//! The `telemetry-purge` job: raw events of old days deleted once their rollups hold
//! them, and nothing else.
//!
//! [`run`] finds the days before the kept ones that hold events, oldest first. A day
//! is purged only when its rollup is current: it has rows, none partial, and
//! aggregating its events now gives exactly those rows, days and hours, sketches
//! included (a dry run of `telemetry-daily` finding them all unchanged). The largest
//! `id` that check read bounds the deletion, so an event that arrives later stays.
//! The start of each day's deletion is recorded in `purged_days` before the first
//! batch: a purge stopped half way is finished by the next one without a new check
//! (the rollup was current when it started, and nothing of it has changed since:
//! `telemetry-daily` keeps a purged day's rollup).
//!
//! # Examples
//!
//! Keep 90 days of raw events, in UTC:
//!
//! ```no_run
//! use veris_jobs::telemetry_purge::{self, PurgeOptions};
//! # async fn example(store: veris_jobs::store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! let report = telemetry_purge::run(&store, &PurgeOptions::keeping(90)).await?;
//! println!("{} events deleted", report.totals.events_deleted);
//! # Ok(()) }
//! ```

use std::time::Instant;

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan as _};

use crate::jobs::History;
use crate::model::{
    DateError, DayRange, DayStatus, DayWindow, KeptReason, NewRun, PURGE_JOB_NAME, PurgeDay,
    PurgeReport, PurgeStatus, PurgeTotals, Trigger,
};
use crate::store::{Store, StoreError};
use crate::telemetry_daily::{self, RunOptions, elapsed_ms};

/// The default [`PurgeOptions::batch_size`]: rows deleted per transaction.
pub const DEFAULT_BATCH_SIZE: u32 = 10_000;

/// How one purge behaves.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    /// Days of raw events kept, ending yesterday: older days may be purged. At least 1.
    pub keep_days: u32,
    /// Check and count, delete nothing.
    pub dry_run: bool,
    /// Rows deleted per transaction.
    pub batch_size: u32,
    /// What started the run, as the run history records it.
    pub trigger: Trigger,
    /// How a day's rollup is checked: the zone days are cut in, top-K, memory limit,
    /// read slices (as `telemetry-daily` runs with them), and the lock timeout and
    /// history size. Its range, dry run and trigger are not used.
    pub job: RunOptions,
}

impl PurgeOptions {
    /// A purge keeping `keep_days` days, with the default job settings.
    pub fn keeping(keep_days: u32) -> Self {
        Self {
            keep_days,
            dry_run: false,
            batch_size: DEFAULT_BATCH_SIZE,
            trigger: Trigger::Cli,
            job: RunOptions::default(),
        }
    }
}

/// Why a purge could not start. Failures of single days are reported in its
/// [`PurgeReport`].
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// No `--keep-days` (0 is none).
    #[error(
        "telemetry-purge needs --keep-days N (TELEMETRY_KEEP_DAYS), at least 1: \
         the days of raw events to keep, ending yesterday"
    )]
    KeepDaysRequired,
    /// Events come from ClickHouse, whose own `TTL` deletes old rows.
    #[error(
        "telemetry-purge deletes from the database's own source table; events read \
         from ClickHouse are deleted by the table's TTL (ALTER TABLE … MODIFY TTL \
         created_at + INTERVAL N DAY)"
    )]
    UnsupportedSource,
    /// A batch size of 0.
    #[error("--batch-size must be at least 1")]
    BatchSize,
    #[error(transparent)]
    Date(#[from] DateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `telemetry-purge` over `store` as `options` say.
///
/// # Errors
///
/// [`PurgeError`] when the purge cannot start; once started, failed days are
/// reported in the report.
pub async fn run(store: &Store, options: &PurgeOptions) -> Result<PurgeReport, PurgeError> {
    let started = Instant::now();
    if options.keep_days == 0 {
        return Err(PurgeError::KeepDaysRequired);
    }
    if options.batch_size == 0 {
        return Err(PurgeError::BatchSize);
    }
    if store.has_external_source() {
        return Err(PurgeError::UnsupportedSource);
    }
    let zone = &options.job.timezone;
    let timezone = zone.iana_name().unwrap_or("UTC").to_owned();
    let today = Timestamp::now().to_zoned_datetime(zone.clone()).date();
    let before = today
        .checked_sub(i64::from(options.keep_days).days())
        .map_err(|_| DateError::OutOfRange { date: today })?;
    store.check_reachable().await?;
    let dates = old_days(store, before, zone).await?;
    let mut report = PurgeReport {
        job: PURGE_JOB_NAME.to_owned(),
        dry_run: options.dry_run,
        ok: true,
        keep_days: options.keep_days,
        before: before.to_string(),
        timezone: timezone.clone(),
        days: Vec::new(),
        totals: PurgeTotals::default(),
        duration_ms: 0,
    };
    // Dry runs delete nothing, so they are not recorded either.
    let (history, busy) = match (options.dry_run, dates.first(), dates.last()) {
        (false, Some(&first), Some(&last)) => {
            let run = NewRun {
                job: PURGE_JOB_NAME.to_owned(),
                trigger: options.trigger,
                range: DayRange::new(first, last)?,
                timezone: timezone.clone(),
                days_total: u32::try_from(dates.len()).unwrap_or(u32::MAX),
                source_watermark: None,
            };
            History::start(store, &run).await
        }
        _ => (History::Off, None),
    };
    let mut stopped = busy;
    let mut days_done = 0u32;
    for date in dates {
        let day_started = Instant::now();
        let outcome = match &stopped {
            Some(reason) => Err(format!("not attempted: {reason}")),
            None => purge_held_day(store, date, &timezone, options).await,
        };
        let mut day = match outcome {
            Ok(Some(day)) => day,
            // The day's events went meanwhile (another purge).
            Ok(None) => continue,
            Err(error) => {
                if !store.ping().await {
                    stopped = Some(format!("the database became unreachable ({error})"));
                }
                failed(date, error)
            }
        };
        day.duration_ms = elapsed_ms(day_started);
        log(&day);
        if day.status != PurgeStatus::Failed {
            days_done += 1;
            history.progress(store, days_done).await;
        }
        report.days.push(day);
    }
    report.summarize();
    report.duration_ms = elapsed_ms(started);
    history
        .finish(store, &report, days_done, options.job.keep_runs)
        .await;
    tracing::info!(
        before = %report.before,
        dry_run = report.dry_run,
        ok = report.ok,
        days = report.days.len(),
        events_deleted = report.totals.events_deleted,
        duration_ms = report.duration_ms,
        "purge done"
    );
    Ok(report)
}

/// The days before `before` (in `zone`) that hold events, oldest first: each found
/// by the earliest event after the last one's end, one lookup of the index a day.
async fn old_days(
    store: &Store,
    before: Date,
    zone: &jiff::tz::TimeZone,
) -> Result<Vec<Date>, PurgeError> {
    let end = DayWindow::new(before, zone)?.start;
    // Year 1: before any event and within both databases' range of times.
    let mut from = Timestamp::from_second(-62_135_596_800).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut dates = Vec::new();
    while let Some(at) = store.first_event_between(from, end).await? {
        let date = at.to_zoned_datetime(zone.clone()).date();
        let window = DayWindow::new(date, zone)?;
        dates.push(date);
        if window.end <= from {
            break;
        }
        from = window.end;
    }
    Ok(dates)
}

/// Purges one day while holding it, so that no run of `telemetry-daily` writes its
/// rollup meanwhile; a dry run holds nothing.
async fn purge_held_day(
    store: &Store,
    date: Date,
    timezone: &str,
    options: &PurgeOptions,
) -> Result<Option<PurgeDay>, String> {
    let window = DayWindow::new(date, &options.job.timezone).map_err(|e| e.to_string())?;
    let locks = if options.dry_run {
        None
    } else {
        Some(
            store
                .lock_days(&[date], options.job.lock_timeout)
                .await
                .map_err(|e| e.without_addresses())?,
        )
    };
    let outcome = purge_day(store, &window, timezone, options).await;
    if let Some(locks) = locks {
        locks.release().await;
    }
    outcome.map_err(|e| e.without_addresses())
}

/// One old day: finished if a purge of it had started, else checked, then (unless
/// a dry run) deleted. `None` when the day holds no events.
async fn purge_day(
    store: &Store,
    window: &DayWindow,
    timezone: &str,
    options: &PurgeOptions,
) -> Result<Option<PurgeDay>, StoreError> {
    let date = window.date;
    if let Some(record) = store.purge_record(date, timezone).await? {
        let left = store.day_events(window, Some(record.through_id)).await?;
        if !record.finished {
            // Checked when it started; its rollup is kept since: finish it.
            return delete(
                store,
                window,
                timezone,
                record.through_id,
                left.count,
                options,
            )
            .await
            .map(Some);
        }
        // Events that arrived after the purge: no rollup holds them.
        let late = store.day_events(window, None).await?;
        return Ok((late.count > 0).then(|| kept(date, KeptReason::RollupOutOfDate)));
    }
    let events = store.day_events(window, None).await?;
    let Some(through) = events.max_id.filter(|_| events.count > 0) else {
        return Ok(None);
    };
    let stored = store.load_day(date).await?;
    if stored.is_empty() {
        return Ok(Some(kept(date, KeptReason::NotRolledUp)));
    }
    if stored.iter().any(|row| row.partial) {
        return Ok(Some(kept(date, KeptReason::Partial)));
    }
    let check = telemetry_daily::check_day(store, window, &options.job).await;
    if check.status == DayStatus::Failed {
        return Err(StoreError::Aborted(format!(
            "checking the rollup of {date}: {}",
            check.error.unwrap_or_default()
        )));
    }
    // The check read exactly the events up to `through` (one that arrived
    // meanwhile, or a transaction with a lower id that committed since, shows as a
    // difference in the count), and found every row unchanged.
    let read = store.day_events(window, Some(through)).await?;
    let current = check.status == DayStatus::DryRun
        && check.inserted == 0
        && check.updated == 0
        && check.deleted == 0
        && check.hours.inserted == 0
        && check.hours.updated == 0
        && check.hours.deleted == 0
        && check.events_read == read.count;
    if !current {
        return Ok(Some(kept(date, KeptReason::RollupOutOfDate)));
    }
    delete(store, window, timezone, through, read.count, options)
        .await
        .map(Some)
}

/// Deletes `window`'s events up to `through` in batches (or, in a dry run, counts
/// the `count` that would go), recording the start first and the end last.
async fn delete(
    store: &Store,
    window: &DayWindow,
    timezone: &str,
    through: i64,
    count: u64,
    options: &PurgeOptions,
) -> Result<PurgeDay, StoreError> {
    let date = window.date;
    if options.dry_run {
        return Ok(done(date, PurgeStatus::WouldPurge, count));
    }
    store.start_purge(date, timezone, through).await?;
    let mut deleted = 0;
    loop {
        let batch = store
            .delete_batch(window, timezone, through, options.batch_size)
            .await?;
        if batch == 0 {
            break;
        }
        deleted += batch;
        // Let inserts waiting on the table's locks in (SQLite has one writer).
        tokio::task::yield_now().await;
    }
    store.finish_purge(date, timezone).await?;
    Ok(done(date, PurgeStatus::Purged, deleted))
}

fn done(date: Date, status: PurgeStatus, events_deleted: u64) -> PurgeDay {
    PurgeDay {
        date: date.to_string(),
        status,
        reason: None,
        events_deleted,
        duration_ms: 0,
        error: None,
    }
}

fn kept(date: Date, reason: KeptReason) -> PurgeDay {
    PurgeDay {
        date: date.to_string(),
        status: PurgeStatus::Kept,
        reason: Some(reason),
        events_deleted: 0,
        duration_ms: 0,
        error: None,
    }
}

fn failed(date: Date, error: String) -> PurgeDay {
    PurgeDay {
        date: date.to_string(),
        status: PurgeStatus::Failed,
        reason: None,
        events_deleted: 0,
        duration_ms: 0,
        error: Some(error),
    }
}

fn log(day: &PurgeDay) {
    match day.status {
        PurgeStatus::Failed => tracing::warn!(
            date = %day.date,
            error = day.error.as_deref().unwrap_or(""),
            "a day could not be purged"
        ),
        status => tracing::info!(
            date = %day.date,
            status = %status,
            reason = day.reason.map(|r| r.as_str()),
            events_deleted = day.events_deleted,
            duration_ms = day.duration_ms,
            "day done"
        ),
    }
}
