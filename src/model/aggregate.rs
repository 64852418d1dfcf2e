//! The aggregator: a day's source events in, rollup rows out.
//!
//! [`DayAggregate`] is pure and mergeable: events can be pushed in any order and
//! split across any number of aggregates, and merging those gives exactly what one
//! pass over all of them gives. Memory grows with the distinct (event, user) and
//! (event, key, value) pairs, never with the number of events.

use std::collections::BTreeMap;

use super::meta::{MetaSummary, ParsedMeta, parse_meta};
use super::{CompactString, FastMap, FastSet};

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

/// A sink that can be split: parts filled with different events (on other threads,
/// say) and merged back hold what one sink given all the events would. A source may
/// use this to aggregate on several cores.
pub trait MergeableSink: EventSink + Default + Send + 'static {
    /// Folds in `other`, filled with other events of the same window.
    fn merge(&mut self, other: Self);
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
    /// Distinct users of a group among the first [`BIT_GROUPS`], counted as their
    /// bits in [`UserIds`] are first set.
    unique: u64,
    /// Distinct users of a later group, as numbers from the aggregate's [`UserIds`].
    users: FastSet<u32>,
    meta: MetaSummary,
}

/// Groups whose users are tracked by a bit on each user rather than a set per group.
/// Most days have fewer event names than this, and then the distinct-user check costs
/// no memory access beyond the user lookup itself.
const BIT_GROUPS: u32 = 64;

/// Each distinct user id of the day, stored once and numbered, with a bit for each
/// of the first [`BIT_GROUPS`] groups the user has been seen in.
#[derive(Debug, Default)]
struct UserIds {
    ids: FastMap<CompactString, UserEntry>,
}

#[derive(Debug, Clone, Copy)]
struct UserEntry {
    id: u32,
    groups: u64,
}

impl UserIds {
    /// Notes that `user` did an event of `group`. Returns the user's number and, for
    /// a group below [`BIT_GROUPS`], whether this is the user's first event in it.
    fn see(&mut self, user: &str, group: u32) -> (u32, bool) {
        let bit = if group < BIT_GROUPS { 1u64 << group } else { 0 };
        if let Some(entry) = self.ids.get_mut(user) {
            let first = entry.groups & bit == 0 && bit != 0;
            entry.groups |= bit;
            return (entry.id, first);
        }
        // A day would need over 4 billion distinct users, and far more memory than
        // any machine has, before this could wrap.
        let id = self.ids.len() as u32;
        self.ids.insert(user.into(), UserEntry { id, groups: bit });
        (id, bit != 0)
    }
}

/// The running aggregate of (part of) one day's events.
#[derive(Debug, Default)]
pub struct DayAggregate {
    /// Groups by event name, numbered in the order they were first seen.
    index: FastMap<CompactString, u32>,
    groups: Vec<(CompactString, EventGroup)>,
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

    /// The number of the group of events named `name`, made if new.
    fn group(&mut self, name: &str) -> u32 {
        if let Some(&group) = self.index.get(name) {
            return group;
        }
        // Event names are capped in length and a day cannot hold 4 billion of them
        // in memory, so the count fits.
        let group = self.groups.len() as u32;
        self.index.insert(name.into(), group);
        self.groups.push((name.into(), EventGroup::default()));
        group
    }

    /// Counts `user` among the distinct users of `group`.
    fn add_user(&mut self, group: u32, user: &str) {
        let (id, first) = self.users.see(user, group);
        let target = &mut self.groups[group as usize].1;
        if group < BIT_GROUPS {
            target.unique += u64::from(first);
        } else {
            target.users.insert(id);
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
                unique_users: saturating_i64(group.unique + group.users.len() as u64),
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

impl MergeableSink for DayAggregate {
    /// Folds `other`, an aggregate of other events of the same day, into this one.
    fn merge(&mut self, other: DayAggregate) {
        self.events_read += other.events_read;
        self.skipped.add(&other.skipped);
        let groups: Vec<u32> = other
            .groups
            .iter()
            .map(|(name, _)| self.group(name))
            .collect();
        let mut names = vec![""; other.users.ids.len()];
        for (user, entry) in &other.users.ids {
            names[entry.id as usize] = user;
            let mut bits = entry.groups;
            while bits != 0 {
                let theirs = bits.trailing_zeros();
                bits &= bits - 1;
                self.add_user(groups[theirs as usize], user);
            }
        }
        for (theirs, (_, group)) in other.groups.into_iter().enumerate() {
            let mine = groups[theirs];
            for id in &group.users {
                self.add_user(mine, names[*id as usize]);
            }
            let target = &mut self.groups[mine as usize].1;
            target.count += group.count;
            target.meta.merge(group.meta);
        }
    }
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
        let group = self.group(name);
        self.groups[group as usize].1.count += 1;
        if let Some(user) = event.user_id.filter(|u| !u.is_empty()) {
            self.add_user(group, user);
        }
        let group = &mut self.groups[group as usize].1;
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

    #[test]
    fn unique_users_are_exact_beyond_the_groups_tracked_by_bits() {
        let names: Vec<String> = (0..150).map(|i| format!("e{i:03}")).collect();
        let (mut whole, mut first) = (DayAggregate::new(), DayAggregate::new());
        for (i, name) in names.iter().enumerate() {
            // Event i has users u0..u(i % 5), each twice.
            for u in 0..=(i % 5) {
                let user = format!("u{u}");
                first.push(event(Some(name), Some(&user), None));
                whole.push(event(Some(name), Some(&user), None));
                whole.push(event(Some(name), Some(&user), None));
            }
        }
        // The other half numbers the groups in the opposite order.
        let mut reversed = DayAggregate::new();
        for (i, name) in names.iter().enumerate().rev() {
            for u in 0..=(i % 5) {
                reversed.push(event(Some(name), Some(&format!("u{u}")), None));
            }
        }
        first.merge(reversed);
        let whole = whole.finish(20);
        for (i, row) in whole.rows.iter().enumerate() {
            assert_eq!(row.unique_users, (i % 5) as i64 + 1, "{}", row.event);
        }
        assert_eq!(first.finish(20), whole);
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
            // Up to 104 names: more than the groups tracked by user bits.
            prop::option::weighted(0.95, prop_oneof!["[a-d]{0,1}", "x[0-9]{2}"]),
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
