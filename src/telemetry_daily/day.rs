//! One day of a run: read and aggregate it, compare with the stored rows, and write
//! the difference unless the retention guard or a dry run says otherwise.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use jiff::civil::Date;

use super::spill::ScratchDir;
use super::{RunOptions, elapsed_ms};
use crate::model::{
    DayReport, DayStatus, DayWindow, HourCounts, HourRow, MergeableSink, diff, diff_hours,
};
use crate::rollup::{DayAggregate, DayAndHourRollup, MemoryLimit, SpillError};
use crate::store::{DayLocks, Store, StoreError};

/// Why a day failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}; nothing of the day was written")]
    Spill(#[from] SpillError),
}

impl DayError {
    /// The error as a run's report keeps it: without addresses (see
    /// [`StoreError::without_addresses`]).
    pub(super) fn for_report(&self) -> String {
        match self {
            DayError::Store(error) => error.without_addresses(),
            DayError::Spill(_) => self.to_string(),
        }
    }

    /// Whether the database itself is gone.
    pub(super) fn is_unreachable(&self) -> bool {
        matches!(self, DayError::Store(error) if error.is_unreachable())
    }

    /// Whether the run's day locks are gone.
    pub(super) fn is_lock_lost(&self) -> bool {
        matches!(self, DayError::Store(StoreError::LockLost(_)))
    }
}

/// A day that failed, and how many of its events had been read by then.
#[derive(Debug)]
pub(super) struct DayFailure {
    pub(super) error: DayError,
    pub(super) events_read: u64,
}

impl<E: Into<DayError>> From<E> for DayFailure {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            events_read: 0,
        }
    }
}

/// Aggregates one day and, unless told otherwise, writes it.
pub(super) async fn roll_up(
    store: &Store,
    window: &DayWindow,
    options: &RunOptions,
    locks: Option<&mut DayLocks>,
) -> Result<DayReport, DayFailure> {
    let started = Instant::now();
    // A day read before its end is written as it stands, marked partial.
    let partial = Timestamp::now() < window.end;
    let date = window.date;
    let limit = MemoryLimit {
        bytes: options.memory_limit,
        space: Arc::new(ScratchDir::new(options.spill_dir.clone())),
    };
    let aggregate = read(
        store,
        window,
        options.read_slices,
        DayAggregate::with_limit(limit),
    )
    .await?;
    // Reading back what spilled is file work: off the async threads.
    let top_k = options.meta_top_k;
    let day_start = window.day_start;
    let DayAndHourRollup {
        day: mut rollup,
        hours: fresh_hours,
    } = tokio::task::spawn_blocking(move || aggregate.finish_with_hours(top_k, day_start))
        .await
        .map_err(|_| StoreError::Aborted(format!("aggregating {date} was cancelled")))??;
    for row in &mut rollup.rows {
        row.partial = partial;
    }
    if rollup.spilled_bytes > 0 {
        tracing::info!(
            date = %date,
            spilled_bytes = rollup.spilled_bytes,
            memory_limit = options.memory_limit,
            "the day's aggregation outgrew the memory limit and spilled to disk"
        );
    }
    let read = rollup.events_read;
    let after_reading = |error: StoreError| DayFailure {
        error: error.into(),
        events_read: read,
    };
    let stored = store.load_day(date).await.map_err(after_reading)?;
    let mut changes = diff(&rollup.rows, &stored);
    // A source that counts for itself (ClickHouse) tells no event's hour: each local
    // hour is counted on its own.
    let fresh_hours = if store.counts_itself() {
        counted_hours(store, window)
            .await
            .map_err(|error| DayFailure {
                error,
                events_read: read,
            })?
    } else {
        fresh_hours
    };
    let stored_hours = store.load_hours(window).await.map_err(after_reading)?;
    changes.hours = diff_hours(&fresh_hours, &stored_hours);

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
        reason: None,
        spilled_bytes: rollup.spilled_bytes,
        hours: HourCounts {
            inserted: changes.hours.inserts.len() as u64,
            updated: changes.hours.updates.len() as u64,
            deleted: changes.hours.deletes.len() as u64,
            unchanged: changes.hours.unchanged,
        },
    };
    // A day whose events telemetry-purge deleted (or is deleting) keeps its rollup
    // whatever --force says: it is the only copy left of what went.
    let purge_started = !stored.is_empty() && store.is_purged(date).await.map_err(after_reading)?;
    if purge_started || (purged && !options.force) {
        day.status = DayStatus::Kept;
        day.error = Some(if purge_started {
            "telemetry-purge deleted this day's events; kept the rollups, the only copy of them"
                .to_owned()
        } else {
            format!(
                "the source holds {} events but the stored rollups count {stored_events}; \
                 kept the rollups (use --force to overwrite)",
                rollup.named_events()
            )
        });
        day.reason = purge_started.then(|| "purged".to_owned());
        day.rows = stored.len() as u64;
        (day.inserted, day.updated, day.deleted) = (0, 0, 0);
        day.unchanged = stored.len() as u64;
        day.hours = HourCounts {
            unchanged: stored_hours.len() as u64,
            ..HourCounts::default()
        };
    } else if !options.dry_run && !changes.is_empty() {
        // Another run may have taken the day if the locks were lost meanwhile.
        if let Some(locks) = locks {
            locks.verify().await.map_err(after_reading)?;
        }
        store
            .write_day(date, &changes)
            .await
            .map_err(after_reading)?;
    }
    day.duration_ms = elapsed_ms(started);
    Ok(day)
}

/// The hour rows of `window`'s day from a source that counts for itself, each local
/// hour counted on its own into an aggregate of the hour.
async fn counted_hours(store: &Store, window: &DayWindow) -> Result<Vec<HourRow>, DayError> {
    let mut rows = Vec::new();
    for hour in window.local_hours() {
        let mut counts = DayAggregate::new();
        store.scan_counts(&hour, &mut counts).await?;
        let rollup = counts.finish(0)?;
        rows.extend(
            rollup
                .rows
                .into_iter()
                .map(|row| HourRow::of(hour.start, row)),
        );
    }
    Ok(rows)
}

/// Streams a day's events into `day`: in one stream, or in `slices` time slices read
/// concurrently on tasks of their own (so that their parsing can use several cores)
/// and merged. The aggregate is mergeable, so the result is the same.
async fn read<K: MergeableSink>(
    store: &Store,
    window: &DayWindow,
    slices: u32,
    mut day: K,
) -> Result<K, StoreError> {
    if slices <= 1 || store.counts_itself() {
        store.scan_window(window, &mut day).await?;
        return Ok(day);
    }
    let slices = window.slices(slices);
    let of = slices.len();
    let tasks: Vec<_> = slices
        .into_iter()
        .map(|slice| {
            let store = store.clone();
            let mut part = day.part(of);
            tokio::spawn(async move { store.scan_window(&slice, &mut part).await.map(|()| part) })
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

/// The report of a day that could not be done.
pub(super) fn failed(date: Date, error: String, duration_ms: u64) -> DayReport {
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
        reason: None,
        spilled_bytes: 0,
        hours: HourCounts::default(),
    }
}

/// One log line per day.
pub(super) fn log(day: &DayReport) {
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
