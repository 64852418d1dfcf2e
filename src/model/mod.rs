//! The vocabulary every layer shares, as plain data: days and the zones they are cut
//! in ([`DayRange`], [`DayWindow`]), raw events and the sinks that take them
//! ([`SourceEvent`], [`EventSink`]), rollup rows as written and as read back
//! ([`RollupRow`], [`RollupRef`]), the difference between fresh and stored rows
//! ([`diff`]), the canonical form of the JSON they hold ([`canonical_json`]), the
//! metadata summary's format and its exact sums ([`MAX_KEYS`], [`ExactSum`]), the
//! users' sketch ([`hll`]), the numbers' percentiles sketch ([`ddsketch`]), the run report ([`RunReport`]) and the run history's
//! records ([`RunRecord`]).
//!
//! This module is the bottom layer: it imports nothing else of the crate and does no
//! I/O. The engine (`rollup`) computes rows with it, storage reads and writes them,
//! the jobs and the report drive them, the faces present them.

mod days;
pub mod ddsketch;
mod diff;
mod events;
mod exact_sum;
pub mod hll;
mod json;
mod purge_report;
mod rows;
mod run_report;
mod runs;
mod summary_format;
mod text;

pub use self::days::{DateError, DayRange, DayWindow, day_number, parse_date};
pub use self::diff::{DayChanges, HourChanges, diff, diff_hours};
pub use self::events::{
    CountedEvents, EventSink, MAX_EVENT_NAME_BYTES, MergeableSink, SkipCounts, SourceEvent,
};
pub use self::exact_sum::ExactSum;
pub use self::json::{canonical_json, canonical_value, json_number};
pub use self::purge_report::{
    KeptReason, PURGE_JOB_NAME, PurgeDay, PurgeReport, PurgeStatus, PurgeTotals,
};
pub use self::rows::{HourFold, HourRef, HourRow, RollupFold, RollupRef, RollupRow, StoredRollup};
pub use self::run_report::{ChangedDays, DayReport, DayStatus, HourCounts, RunReport, Totals};
pub use self::runs::{
    FailedDay, JOB_NAME, JobReport, JobTotals, MAX_RUNS_LISTED, NewRun, RunRecord, RunStatus,
    RunSummary, SUMMARY_ERROR_CHARS, SUMMARY_FAILED_DAYS, Trigger,
};
pub use self::summary_format::{DROPPED_KEYS, MAX_KEYS, MAX_VALUE_BYTES, key_order, value_order};
pub(crate) use self::text::plain_ascii;

/// Hash maps keyed by event data. foldhash is several times faster than the
/// standard SipHash and, seeded per process, still resists crafted collisions.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// The keys of those maps: names, user ids and values are mostly short, and kept
/// inline (up to 24 bytes) they are compared without a second memory access.
pub(crate) type CompactString = compact_str::CompactString;
