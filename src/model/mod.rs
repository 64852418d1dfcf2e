//! The model: what the job computes, as pure data and logic.
//!
//! Days and the zones they are cut in ([`DayRange`], [`DayWindow`]), the aggregator
//! that turns a day's raw events into rollup rows ([`DayAggregate`]: pure and
//! mergeable), the metadata summary (its canonical JSON: [`canonical_json`]), the difference between fresh and
//! stored rows ([`diff`]), the run report ([`RunReport`]) and the records of the run
//! history ([`RunRecord`]).
//!
//! This module is the bottom layer: it imports nothing else of the crate and does no
//! I/O. Storage reads events into its sinks and writes its rows; the job runner
//! drives it; the faces present what it returns.

mod aggregate;
mod days;
mod diff;
mod flat_json;
pub mod hll;
mod memory;
mod meta;
mod report;
mod runs;
mod spill;
mod summary;
mod telemetry_report;

pub use self::aggregate::{
    CountedEvents, DayAggregate, DayRollup, EventSink, MAX_EVENT_NAME_BYTES, MergeableSink,
    RollupRow, SkipCounts, SourceEvent,
};
pub use self::days::{DateError, DayRange, DayWindow, day_number, parse_date};
pub use self::diff::{DayChanges, diff};
pub use self::meta::{MAX_DEPTH, canonical_json};
pub use self::report::{ChangedDays, DayReport, DayStatus, RunReport, Totals};
pub use self::runs::{
    FailedDay, JOB_NAME, MAX_RUNS_LISTED, NewRun, RunRecord, RunStatus, RunSummary,
    SUMMARY_ERROR_CHARS, SUMMARY_FAILED_DAYS, Trigger,
};
pub use self::spill::{MemoryLimit, Scratch, SpillError, SpillSpace};
pub use self::summary::{DROPPED_KEYS, MAX_KEYS};
pub use self::telemetry_report::{
    EventReport, Grouping, MergedMeta, PeriodReport, ReportBuilder, RollupFold, RollupRef,
    StoredRollup, TelemetryReport, Total, periods, split_by_periods,
};

/// Hash maps keyed by event data. foldhash is several times faster than the
/// standard SipHash and, seeded per process, still resists crafted collisions.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// The keys of those maps: names, user ids and values are mostly short, and kept
/// inline (up to 24 bytes) they are compared without a second memory access.
type CompactString = compact_str::CompactString;
