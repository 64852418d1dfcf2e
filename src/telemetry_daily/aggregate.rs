//! The aggregator: a day's source events in, rollup rows out.
//!
//! [`DayAggregate`] is pure and mergeable: events can be pushed in any order and
//! split across any number of aggregates, and merging those gives exactly what one
//! pass over all of them gives. Memory grows with the distinct (event, user) and
//! (event, key, value) pairs, never with the number of events.

use std::collections::BTreeMap;

use super::meta::{MetaSummary, ParsedMeta, parse_meta};
use super::{FastMap, FastSet};

/// One raw event as a source hands it over, borrowed from the source's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceEvent<'a> {
    /// The event name; null or empty events are skipped.
    pub event: Option<&'a str>,
    /// The user; null or empty means anonymous.
    pub user_id: Option<&'a str>,
    /// The metadata as JSON text.
    pub meta: Option<&'a str>,
}

/// Whatever receives a day's events from a source, one at a time.
pub trait EventSink {
    /// Takes one event.
    fn push(&mut self, event: SourceEvent<'_>);
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
}

impl SkipCounts {
    /// All skips together.
    pub fn total(&self) -> u64 {
        self.missing_event + self.invalid_event + self.invalid_meta + self.non_object_meta
    }

    /// Events skipped whole, which count towards no row.
    pub fn whole_events(&self) -> u64 {
        self.missing_event + self.invalid_event
    }

    /// The non-zero counts by reason name, as the run report lists them.
    pub fn by_reason(&self) -> BTreeMap<&'static str, u64> {
        [
            ("missing_event", self.missing_event),
            ("invalid_event", self.invalid_event),
            ("invalid_meta", self.invalid_meta),
            ("non_object_meta", self.non_object_meta),
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
    }
}

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
}

#[derive(Debug, Default)]
struct EventGroup {
    count: u64,
    /// Distinct users, as numbers from the aggregate's [`UserIds`].
    users: FastSet<u32>,
    meta: MetaSummary,
}

impl EventGroup {
    /// Folds in `other`, whose user numbers `remap` translates into this aggregate's.
    fn merge(&mut self, other: EventGroup, remap: &[u32]) {
        self.count += other.count;
        self.users
            .extend(other.users.into_iter().map(|id| remap[id as usize]));
        self.meta.merge(other.meta);
    }
}

/// Each distinct user id of the day, stored once and numbered, so that the sets of
/// users per event hold 4-byte numbers instead of strings.
#[derive(Debug, Default)]
struct UserIds {
    ids: FastMap<Box<str>, u32>,
}

impl UserIds {
    fn number(&mut self, user: &str) -> u32 {
        if let Some(id) = self.ids.get(user) {
            return *id;
        }
        // A day would need over 4 billion distinct users, and far more memory than
        // any machine has, before this could wrap.
        let id = self.ids.len() as u32;
        self.ids.insert(user.into(), id);
        id
    }
}

/// The running aggregate of (part of) one day's events.
#[derive(Debug, Default)]
pub struct DayAggregate {
    groups: FastMap<Box<str>, EventGroup>,
    users: UserIds,
    events_read: u64,
    skipped: SkipCounts,
}

/// A finished day: its rollup rows sorted by event, and what was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRollup {
    /// One row per event name, sorted by name.
    pub rows: Vec<RollupRow>,
    /// Every source event of the day, bad ones included.
    pub events_read: u64,
    /// Events skipped or stripped of metadata, by reason.
    pub skipped: SkipCounts,
}

impl DayRollup {
    /// Events that had a name, and so count towards some row.
    pub fn named_events(&self) -> u64 {
        self.events_read - self.skipped.whole_events()
    }
}

impl DayAggregate {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events pushed so far, bad ones included.
    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// Folds `other`, an aggregate of other events of the same day, into this one.
    pub fn merge(&mut self, other: DayAggregate) {
        self.events_read += other.events_read;
        self.skipped.add(&other.skipped);
        let mut remap = vec![0u32; other.users.ids.len()];
        for (user, id) in &other.users.ids {
            remap[*id as usize] = self.users.number(user);
        }
        for (name, group) in other.groups {
            match self.groups.get_mut(&name) {
                Some(mine) => mine.merge(group, &remap),
                None => {
                    let mut fresh = EventGroup::default();
                    fresh.merge(group, &remap);
                    self.groups.insert(name, fresh);
                }
            }
        }
    }

    /// The rollup rows, keeping `top_k` values per metadata key.
    pub fn finish(self, top_k: usize) -> DayRollup {
        let mut rows: Vec<RollupRow> = self
            .groups
            .into_iter()
            .map(|(event, group)| RollupRow {
                event: event.into(),
                count: saturating_i64(group.count),
                unique_users: saturating_i64(group.users.len() as u64),
                meta: group.meta.to_json(top_k),
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.event.cmp(&b.event));
        DayRollup {
            rows,
            events_read: self.events_read,
            skipped: self.skipped,
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EventSink for DayAggregate {
    fn push(&mut self, event: SourceEvent<'_>) {
        self.events_read += 1;
        let name = match event.event {
            Some(name) if name.len() > MAX_EVENT_NAME_BYTES => {
                self.skipped.invalid_event += 1;
                return;
            }
            Some(name) if !name.is_empty() => name,
            _ => {
                self.skipped.missing_event += 1;
                return;
            }
        };
        let group = match self.groups.get_mut(name) {
            Some(group) => group,
            None => self.groups.entry(name.into()).or_default(),
        };
        group.count += 1;
        if let Some(user) = event.user_id.filter(|u| !u.is_empty()) {
            group.users.insert(self.users.number(user));
        }
        match parse_meta(event.meta) {
            ParsedMeta::Absent => {}
            ParsedMeta::Object(entries) => group.meta.add(&entries),
            ParsedMeta::NonObject => self.skipped.non_object_meta += 1,
            ParsedMeta::Invalid => self.skipped.invalid_meta += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event<'a>(
        name: Option<&'a str>,
        user: Option<&'a str>,
        meta: Option<&'a str>,
    ) -> SourceEvent<'a> {
        SourceEvent {
            event: name,
            user_id: user,
            meta,
        }
    }

    #[test]
    fn counts_and_exact_unique_users_ignore_anonymous() {
        let mut agg = DayAggregate::new();
        for user in [Some("u1"), Some("u2"), Some("u1"), None, Some("")] {
            agg.push(event(Some("view"), user, None));
        }
        let day = agg.finish(20);
        assert_eq!(day.rows.len(), 1);
        assert_eq!((day.rows[0].count, day.rows[0].unique_users), (5, 2));
        assert_eq!(day.rows[0].meta, "{}");
    }

    #[test]
    fn bad_events_are_counted_by_reason() {
        let mut agg = DayAggregate::new();
        agg.push(event(None, Some("u"), None));
        agg.push(event(Some(""), Some("u"), None));
        agg.push(event(Some("click"), None, Some("{oops")));
        agg.push(event(Some("click"), None, Some("[1]")));
        agg.push(event(Some("click"), None, Some("null")));
        let long_name = "e".repeat(MAX_EVENT_NAME_BYTES + 1);
        agg.push(event(Some(&long_name), None, None));
        let day = agg.finish(20);
        assert_eq!(day.events_read, 6);
        assert_eq!(day.named_events(), 3);
        assert_eq!(
            day.skipped,
            SkipCounts {
                missing_event: 2,
                invalid_event: 1,
                invalid_meta: 1,
                non_object_meta: 1
            }
        );
        assert_eq!(day.rows[0].count, 3);
        assert_eq!(day.rows[0].meta, "{}");
    }

    #[derive(Debug, Clone)]
    struct OwnedEvent {
        event: Option<String>,
        user: Option<String>,
        meta: Option<String>,
    }

    fn arb_meta() -> impl Strategy<Value = Option<String>> {
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            (-1000i64..1000).prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|x| format!("{x:?}")),
            "[a-c]{0,2}".prop_map(|s| format!("\"{s}\"")),
            Just(r#"{"z":1,"a":[true,null]}"#.to_owned()),
        ];
        prop_oneof![
            1 => Just(None),
            1 => Just(Some("not json".to_owned())),
            1 => Just(Some("[1,2]".to_owned())),
            6 => prop::collection::vec(("[k-n]", value), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                Some(format!("{{{}}}", body.join(",")))
            }),
        ]
    }

    fn arb_event() -> impl Strategy<Value = OwnedEvent> {
        (
            prop::option::weighted(0.95, "[a-d]{0,1}"),
            prop::option::weighted(0.8, "u[0-9]{0,1}"),
            arb_meta(),
        )
            .prop_map(|(event, user, meta)| OwnedEvent { event, user, meta })
    }

    fn aggregate(events: &[OwnedEvent]) -> DayAggregate {
        let mut agg = DayAggregate::new();
        for e in events {
            agg.push(event(
                e.event.as_deref(),
                e.user.as_deref(),
                e.meta.as_deref(),
            ));
        }
        agg
    }

    proptest! {
        #[test]
        fn split_shuffled_and_merged_equals_one_pass(
            events in prop::collection::vec(arb_event(), 0..200),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            shuffle_seed in any::<u64>(),
            top_k in 0usize..4,
        ) {
            let whole = aggregate(&events).finish(top_k);

            let mut shuffled = events.clone();
            // A deterministic Fisher-Yates from the seed, so failures reproduce.
            let mut state = shuffle_seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(shuffled.len() + 1)).collect();
            bounds.push(0);
            bounds.push(shuffled.len());
            bounds.sort_unstable();
            let mut parts = bounds.windows(2).map(|w| aggregate(&shuffled[w[0]..w[1]]));
            let mut merged = parts.next().unwrap_or_default();
            for part in parts.rev() {
                merged.merge(part);
            }
            prop_assert_eq!(merged.finish(top_k), whole);
        }
    }
}
