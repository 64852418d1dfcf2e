//! Raw events as sources hand them over, and the sinks that take them: the port
//! between the sources (storage) and the engine that aggregates (`rollup`).

use std::collections::BTreeMap;

use super::hll::Sketch;

/// One raw event as a source hands it over, borrowed from the source's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceEvent<'a> {
    /// The event name; null or empty events are skipped.
    pub event: Option<&'a str>,
    /// The user; null or empty means anonymous.
    pub user_id: Option<&'a str>,
    /// The metadata as JSON text.
    pub meta: Option<&'a str>,
    /// The local hour of its day it happened in, counted from the day's first hour
    /// (0 to 24: a 25-hour day has 25); `None` when the source does not tell.
    pub hour: Option<u8>,
}

/// Events of one name that a source counted itself (a database that aggregates on
/// its own side): how many, their distinct users exactly, and those users' sketch.
/// Their metadata follows through [`EventSink::push_meta`].
#[derive(Debug, Clone, Copy)]
pub struct CountedEvents<'a> {
    /// The event name; null or empty events are skipped.
    pub event: Option<&'a str>,
    /// How many events.
    pub events: u64,
    /// Their distinct non-empty user ids.
    pub unique_users: u64,
    /// Those users, as a sketch.
    pub sketch: &'a Sketch,
}

/// Whatever receives a day's events from a source: one at a time, or counted by the
/// source ([`EventSink::push_counted`] then [`EventSink::push_meta`]).
pub trait EventSink {
    /// Takes one event.
    fn push(&mut self, event: SourceEvent<'_>);

    /// Takes events the source counted itself.
    fn push_counted(&mut self, counted: CountedEvents<'_>);

    /// Takes the metadata `meta` of `times` events named `event`, already taken by
    /// [`EventSink::push_counted`]: it is summarised `times` times. Metadata of a
    /// name that was not taken, or is skipped, is ignored.
    fn push_meta(&mut self, event: &str, meta: Option<&str>, times: u64);

    /// Takes `times` events met in the window's read whose `created_at` is no
    /// instant in any form the source allows: read, skipped whole.
    fn push_invalid_created_at(&mut self, times: u64);
}

/// A sink that can be split: parts filled with different events (on other threads,
/// say) and merged back hold what one sink given all the events would. A source may
/// use this to aggregate on several cores.
pub trait MergeableSink: EventSink + Send + 'static {
    /// An empty sink with this one's settings, to be filled alongside `of - 1`
    /// others and merged back: its share of any memory limit is `1/of`.
    fn part(&self, of: usize) -> Self;

    /// Folds in `other`, filled with other events of the same window.
    fn merge(&mut self, other: Self);

    /// Whether this sink has outgrown its memory and written part of itself to
    /// disk: a day that big is work enough to spread over the cores.
    fn spilled(&self) -> bool;

    /// Keeps only `1/of` of this sink's share of any memory limit from now on (and
    /// spills at once if it holds more): it is to be filled alongside `of - 1`
    /// parts made by [`MergeableSink::part`] with the same `of`.
    fn share_with(&mut self, of: usize);
}

/// The longest event name kept, in bytes. Longer names cannot be a real event's
/// name, and PostgreSQL could not index them in the rollup's primary key.
pub const MAX_EVENT_NAME_BYTES: usize = 1024;

/// Events that were skipped whole or had their metadata left out, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipCounts {
    /// Events with a null or empty name, skipped whole.
    pub missing_event: u64,
    /// Events whose name is longer than [`MAX_EVENT_NAME_BYTES`], skipped whole.
    pub invalid_event: u64,
    /// Events whose `meta` is not valid JSON: counted, metadata left out.
    pub invalid_meta: u64,
    /// Events whose `meta` is valid JSON but not an object: counted, metadata left out.
    pub non_object_meta: u64,
    /// Events whose `created_at` is in none of the source's forms (SQLite's text),
    /// skipped whole.
    pub invalid_created_at: u64,
}

impl SkipCounts {
    /// All skips together.
    pub fn total(&self) -> u64 {
        self.whole_events() + self.invalid_meta + self.non_object_meta
    }

    /// Events skipped whole, which count towards no row.
    pub fn whole_events(&self) -> u64 {
        self.missing_event + self.invalid_event + self.invalid_created_at
    }

    /// The non-zero counts by reason name, as the run report lists them.
    pub fn by_reason(&self) -> BTreeMap<&'static str, u64> {
        [
            ("missing_event", self.missing_event),
            ("invalid_event", self.invalid_event),
            ("invalid_meta", self.invalid_meta),
            ("non_object_meta", self.non_object_meta),
            ("invalid_created_at", self.invalid_created_at),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &SkipCounts) {
        self.missing_event += other.missing_event;
        self.invalid_event += other.invalid_event;
        self.invalid_meta += other.invalid_meta;
        self.non_object_meta += other.non_object_meta;
        self.invalid_created_at += other.invalid_created_at;
    }
}
