//! Rollup rows: as the engine makes them ([`RollupRow`]) and as a store reads them
//! back ([`RollupRef`], [`StoredRollup`]) for whatever folds them ([`RollupFold`]).

use jiff::Timestamp;
use jiff::civil::Date;

/// One row of `telemetry_daily` for a given day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    /// The event name.
    pub event: String,
    /// Every event of that name on that day.
    pub count: i64,
    /// Distinct non-empty user ids among them.
    pub unique_users: i64,
    /// The metadata summary as canonical JSON text.
    pub meta: String,
    /// Each numeric key's DDSketch, as a JSON object of base64 texts; `None` in a
    /// stored row written before they were kept.
    pub meta_sketches: Option<String>,
    /// The distinct users as a sketch in the `hll` extension's format; `None` in a
    /// stored row written before sketches were kept.
    pub users_hll: Option<Vec<u8>>,
    /// Whether the day had not ended when its events were read (today so far).
    pub partial: bool,
}

/// One stored rollup row, borrowed from the database's answer as a store reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupRef<'a> {
    pub date: Date,
    pub event: &'a str,
    pub count: i64,
    pub unique_users: i64,
    /// The metadata summary as stored (`jsonb`'s text on PostgreSQL).
    pub meta: &'a str,
    /// The numeric keys' sketches as stored; `None` before they were kept.
    pub meta_sketches: Option<&'a str>,
    pub users_hll: Option<&'a [u8]>,
    /// Whether the day had not ended when it was read.
    pub partial: bool,
    /// When the row was last written, RFC 3339 in UTC with milliseconds.
    pub updated_at: &'a str,
}

/// What takes rollup rows one at a time as a store reads them, ordered by date.
pub trait RollupFold: Send + 'static {
    fn add(&mut self, row: RollupRef<'_>);
}

/// One stored rollup row, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRollup {
    pub date: Date,
    pub event: String,
    pub count: i64,
    pub unique_users: i64,
    /// The metadata summary as stored (`jsonb`'s text on PostgreSQL).
    pub meta: String,
    pub meta_sketches: Option<String>,
    pub users_hll: Option<Vec<u8>>,
}

/// One row of `telemetry_hourly`: one local hour of a day, for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    /// The instant the local hour begins.
    pub hour: Timestamp,
    /// The event name.
    pub event: String,
    /// Every event of that name in that hour.
    pub count: i64,
    /// Distinct non-empty user ids among them.
    pub unique_users: i64,
    /// The distinct users as a sketch in the `hll` extension's format.
    pub users_hll: Vec<u8>,
}

impl HourRow {
    /// The hour row of `row`, an hour's aggregate of one event, at `hour`.
    pub fn of(hour: Timestamp, row: RollupRow) -> Self {
        Self {
            hour,
            event: row.event,
            count: row.count,
            unique_users: row.unique_users,
            users_hll: row.users_hll.unwrap_or_default(),
        }
    }
}

/// One stored hour row, borrowed from the database's answer as a store reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourRef<'a> {
    /// The instant the local hour begins.
    pub hour: Timestamp,
    pub event: &'a str,
    pub count: i64,
    pub unique_users: i64,
    pub users_hll: &'a [u8],
    /// When the row was last written, RFC 3339 in UTC with milliseconds.
    pub updated_at: &'a str,
}

/// What takes hour rows one at a time as a store reads them, ordered by hour.
pub trait HourFold: Send + 'static {
    fn add(&mut self, row: HourRef<'_>);
}
