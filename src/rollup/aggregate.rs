//! The aggregator: a day's source events in, rollup rows out.
//!
//! [`DayAggregate`] is pure and mergeable: events can be pushed in any order and
//! split across any number of aggregates, and merging those gives exactly what one
//! pass over all of them gives. Memory grows with the distinct (event, user) and
//! (event, key, value) pairs, never with the number of events.

use std::sync::Arc;

use super::dense_hours::{DenseHours, MAX_HOURS};
use super::memory::{heap_bytes, table_bytes};
use super::meta::{ParsedMeta, parse_meta};
use super::pass_on::PassOn;
use super::spill::{
    KeyRecord, MemoryLimit, SpillError, SpillSpace, Spilled, UserRecord, ValueRecord,
};
use super::summary::{MetaSummary, SummaryTexts};
use crate::model::hll::{Sketch, hash_user};
use crate::model::{
    CompactString, CountedEvents, EventSink, FastMap, FastSet, MAX_EVENT_NAME_BYTES, MergeableSink,
    RollupRow, SkipCounts, SourceEvent,
};

#[derive(Debug, Default)]
struct EventGroup {
    count: u64,
    /// Distinct users of a group among the first [`BIT_GROUPS`], counted as their
    /// bits in [`UserIds`] are first set (until the aggregate spills: then the
    /// partitions count them).
    unique: u64,
    /// Distinct users of a later group, as numbers from the aggregate's [`UserIds`].
    users: FastSet<u32>,
    /// Distinct users counted by the source ([`EventSink::push_counted`]).
    counted_users: u64,
    /// The same users as a sketch: kept whole in memory (it is bounded), also after
    /// the aggregate spills.
    sketch: Sketch,
    /// Hashes of users for [`EventGroup::sketch`] not yet added to it: they go in
    /// [`HASH_BATCH`] at a time, sorted and merged into its list of up to 2,560
    /// hashes in one pass, or into its registers while they are in cache.
    new_hashes: Vec<i64>,
    meta: MetaSummary,
    /// The bit its users carry in [`UserIds`]: the first [`BIT_GROUPS`] groups of
    /// the day's rows have one.
    bit: Option<u8>,
    /// For a group of the day's rows: the groups of its local hours, by the hour's
    /// index in the day ([`NO_GROUP`] where the hour had none of its events yet).
    hours: Vec<u32>,
    /// For a group of one local hour's events: that hour's index in the day, and
    /// the day's group of the same events.
    hour: Option<u8>,
    day: u32,
}

/// Hashes an [`EventGroup`] gathers before adding them to its sketch: few enough
/// that a day's many hour groups hold little (2 KiB each at most).
const HASH_BATCH: usize = 256;

impl EventGroup {
    /// Adds a user's hash to the group's sketch, or to the next batch for it.
    fn add_hash(&mut self, hash: i64) {
        self.new_hashes.push(hash);
        if self.new_hashes.len() >= HASH_BATCH {
            self.add_new_hashes();
        }
    }

    /// Adds the hashes gathered so far to the sketch: before it is read.
    fn add_new_hashes(&mut self) {
        if !self.new_hashes.is_empty() {
            self.sketch.add_hashes(std::mem::take(&mut self.new_hashes));
        }
    }

    /// Adds the events counted in `other`, another part's group of the same events,
    /// and its users' sketch.
    fn add_totals_of(&mut self, other: &mut EventGroup) {
        other.add_new_hashes();
        self.count += other.count;
        self.counted_users += other.counted_users;
        self.sketch.union(&other.sketch);
    }
}

/// What [`DayAggregate::add_user_in_hour`] found.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// The user is new in the day's group (since the last spill).
    in_day: bool,
    /// The user went straight to the spill files, uncounted.
    passed: bool,
}

/// Marks an hour without a group in [`EventGroup::hours`].
const NO_GROUP: u32 = u32::MAX;

/// Groups whose users are tracked by a bit on each user rather than a set per group.
/// Most days have fewer event names than this, and then the distinct-user check costs
/// no memory access beyond the user lookup itself. Only the day's groups get bits:
/// an hour's group holds a set of user numbers, so that an event costs one user
/// lookup for its day and its hour together.
const BIT_GROUPS: usize = 64;

/// Each distinct user id of the day, stored once and numbered, with a bit for each
/// of the first [`BIT_GROUPS`] groups the user has been seen in.
#[derive(Debug, Default)]
struct UserIds {
    ids: FastMap<CompactString, UserEntry>,
    /// The local hours of the users with many events, by day-group bit.
    dense: DenseHours,
}

#[derive(Debug, Clone, Copy)]
struct UserEntry {
    id: u32,
    /// Events with an hour seen of the user, until it reaches
    /// [`DENSE_AFTER`]; from then on [`DENSE`] and the user's index in
    /// [`UserIds::dense`].
    hours: u32,
    groups: u64,
}

/// Events with an hour after which a user's (group, hour) pairs are kept as bits
/// ([`DenseHours`]) rather than in the hours' sets: a few users do most of a day's
/// events, and their bits stay in cache.
#[cfg(not(test))]
const DENSE_AFTER: u32 = 32;
/// Low in unit tests, so that small days have dense users too.
#[cfg(test)]
const DENSE_AFTER: u32 = 4;

/// Marks [`UserEntry::hours`] as an index into [`UserIds::dense`].
const DENSE: u32 = 1 << 31;

impl UserIds {
    /// Notes that `user` did an event of the group whose bit is `bit` (if it has
    /// one), with an hour when `with_hour`. Returns the user's number, for a group with
    /// a bit whether this is the user's first event in it, the bytes the table grew
    /// by, and the user's index in [`UserIds::dense`] once it has one.
    fn see(
        &mut self,
        user: &str,
        bit: Option<u8>,
        with_hour: bool,
    ) -> (u32, bool, usize, Option<usize>) {
        let bit = bit.map_or(0, |bit| 1u64 << bit);
        if let Some(entry) = self.ids.get_mut(user) {
            let first = entry.groups & bit == 0 && bit != 0;
            entry.groups |= bit;
            let mut grew = 0;
            if with_hour && entry.hours < DENSE {
                entry.hours += 1;
                if entry.hours >= DENSE_AFTER {
                    let (index, bytes) = self.dense.add(entry.id);
                    entry.hours = DENSE | index as u32;
                    grew = bytes;
                }
            }
            let dense = (entry.hours & DENSE != 0).then_some((entry.hours & !DENSE) as usize);
            return (entry.id, first, grew, dense);
        }
        // A day would need over 4 billion distinct users, and far more memory than
        // any machine has, before this could wrap.
        let id = self.ids.len() as u32;
        let before = self.ids.capacity();
        let user = CompactString::from(user);
        let heap = heap_bytes(&user);
        let entry = UserEntry {
            id,
            hours: u32::from(with_hour),
            groups: bit,
        };
        self.ids.insert(user, entry);
        let grew = table_bytes::<CompactString, UserEntry>(self.ids.capacity())
            - table_bytes::<CompactString, UserEntry>(before);
        (id, bit != 0, heap + grew, None)
    }

    fn bytes(&self) -> usize {
        table_bytes::<CompactString, UserEntry>(self.ids.capacity())
            + self.ids.keys().map(heap_bytes).sum::<usize>()
            + self.dense.bytes()
    }

    /// Every user id by its number.
    fn names(&self) -> Vec<&str> {
        let mut names = vec![""; self.ids.len()];
        for (user, entry) in &self.ids {
            names[entry.id as usize] = user;
        }
        names
    }
}

/// Of a memory limit, the share the aggregator's tables may hold before they
/// spill. A table that doubles holds its old and new buckets for a moment, and
/// reading back partitions needs tables of its own: a quarter keeps the whole
/// under the limit.
const TABLE_SHARE: usize = 4;

/// The running aggregate of (part of) one day's events.
///
/// Without a [`MemoryLimit`] its tables grow with the day's distinct users and
/// values. With one, they are written out to the limit's spill space whenever they
/// outgrow their share of it, and [`DayAggregate::finish`] reads them back one
/// partition at a time; the rows are the same either way.
#[derive(Debug, Default)]
pub struct DayAggregate {
    /// Groups by event name, numbered in the order they were first seen.
    index: FastMap<CompactString, u32>,
    /// The day's groups and, after them as they come, its hours' groups.
    groups: Vec<(CompactString, EventGroup)>,
    /// The group of each bit of [`UserEntry::groups`].
    bit_groups: Vec<u32>,
    users: UserIds,
    events_read: u64,
    skipped: SkipCounts,
    limit: Option<MemoryLimit>,
    /// The share of the limit this aggregate's tables may hold.
    budget: usize,
    /// What its tables that can spill hold now, as counted by [`super::memory`].
    bytes: usize,
    /// Once it has spilled: the files. The in-memory tables then hold only what came
    /// since the last spill, and the distinct-user counters are no longer used.
    spilled: Option<Box<Spilled>>,
    /// The first spill that failed; the aggregate stops taking events then.
    failure: Option<SpillError>,
    /// Users pushed into the users table since the last spill.
    user_pushes: u64,
    /// Whether users go through the users table or straight to the spill files.
    users_pass: PassOn,
    /// A user was counted without an hour since the last spill. Until one is, every
    /// user of a day's group is also in one of its hours' groups, whose spilled
    /// records count it in the day too: the day's own records are left out.
    hourless: bool,
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
    /// Bytes written to the spill space (0 when the day fitted in memory).
    pub spilled_bytes: u64,
}

impl DayRollup {
    /// Events that had a name, and so count towards some row.
    pub fn named_events(&self) -> u64 {
        self.events_read - self.skipped.whole_events()
    }
}

impl DayAggregate {
    /// An empty aggregate without a memory limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty aggregate that keeps its tables within `limit`, spilling the rest.
    pub fn with_limit(limit: MemoryLimit) -> Self {
        Self {
            budget: (limit.bytes / TABLE_SHARE).max(1),
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// Events pushed so far, bad ones included.
    pub fn events_read(&self) -> u64 {
        self.events_read
    }

    /// Whether nothing at all was pushed into it.
    fn is_empty(&self) -> bool {
        self.events_read == 0
            && self.groups.is_empty()
            && self.spilled.is_none()
            && self.failure.is_none()
    }

    /// The number of the group of events named `name`, made if new.
    fn group(&mut self, name: &str) -> u32 {
        if let Some(&group) = self.index.get(name) {
            return group;
        }
        // Event names are capped in length and a day cannot hold 4 billion of them
        // in memory, so the count fits.
        let group = self.groups.len() as u32;
        let bit = (self.bit_groups.len() < BIT_GROUPS).then(|| {
            self.bit_groups.push(group);
            (self.bit_groups.len() - 1) as u8
        });
        self.index.insert(name.into(), group);
        self.groups.push((
            name.into(),
            EventGroup {
                bit,
                ..EventGroup::default()
            },
        ));
        group
    }

    /// The group of the events of the day's group `group` in the local hour `hour`,
    /// made if new; `None` for an hour past the longest day's.
    fn hour_group(&mut self, group: u32, hour: u8) -> Option<u32> {
        let at = usize::from(hour);
        if at >= MAX_HOURS {
            return None;
        }
        let next = self.groups.len() as u32;
        let (name, day) = &mut self.groups[group as usize];
        if day.hours.len() <= at {
            day.hours.resize(at + 1, NO_GROUP);
        }
        if day.hours[at] != NO_GROUP {
            return Some(day.hours[at]);
        }
        day.hours[at] = next;
        let name = name.clone();
        self.groups.push((
            name,
            EventGroup {
                hour: Some(hour),
                day: group,
                ..EventGroup::default()
            },
        ));
        Some(next)
    }

    /// Counts `user` among the distinct users of `group`; returns whether it is new
    /// there (since the last spill).
    fn add_user(&mut self, group: u32, user: &str) -> bool {
        self.add_user_in_hour(group, None, user).in_day
    }

    /// Counts `user` among the distinct users of `group` and, when given, of the
    /// group of its local hour `(hour's group, hour)`, with one lookup of the user.
    fn add_user_in_hour(&mut self, group: u32, hour: Option<(u32, u8)>, user: &str) -> Counted {
        if self.users_pass.take() {
            // An hour's record counts the user in the day too.
            self.pass_user(hour.map_or(group, |(hour_group, _)| hour_group), user);
            // Whether it is new is for the partitions to say; the sketch may see
            // a user twice.
            return Counted {
                in_day: true,
                passed: true,
            };
        }
        self.user_pushes += 1;
        let bit = self.groups[group as usize].1.bit;
        let (id, first, grew, dense) = self.users.see(user, bit, hour.is_some());
        self.bytes += grew;
        let in_day = self.count_user(group, id, first);
        if let Some((hour_group, hour)) = hour {
            match (dense, bit) {
                (Some(dense), Some(bit)) => self.count_dense(hour_group, hour, bit, id, dense),
                _ => {
                    self.count_user(hour_group, id, false);
                }
            }
        }
        Counted {
            in_day,
            passed: false,
        }
    }

    /// Counts the user numbered `id` in its hour's group `hour_group` by the bit of
    /// its day's group in its hour bitmap; a user made dense late may have been
    /// counted in the hour's set before.
    fn count_dense(&mut self, hour_group: u32, hour: u8, bit: u8, id: u32, dense: usize) {
        if !self.users.dense.set(dense, hour, bit) {
            return;
        }
        let target = &mut self.groups[hour_group as usize].1;
        if !target.users.contains(&id) {
            target.unique += 1;
        }
    }

    /// Counts the user numbered `id` in `group`: by the bit [`UserIds::see`] tested
    /// (`first`) when the group has one, else in its set.
    fn count_user(&mut self, group: u32, id: u32, first: bool) -> bool {
        let target = &mut self.groups[group as usize].1;
        if target.bit.is_some() {
            target.unique += u64::from(first);
            return first;
        }
        let before = target.users.capacity();
        let new = target.users.insert(id);
        self.bytes +=
            table_bytes::<u32, ()>(target.users.capacity()) - table_bytes::<u32, ()>(before);
        new
    }

    /// Adds the users counted in each hour's group since the last spill to its
    /// sketch: an hour's sketch is filled from its users' numbers one hour at a time,
    /// so that its registers stay in cache, rather than event by event.
    fn fold_hour_sketches(
        groups: &mut [(CompactString, EventGroup)],
        bit_groups: &[u32],
        dense: &DenseHours,
        names: &[&str],
    ) {
        let counted = groups
            .iter()
            .any(|(_, group)| group.hour.is_some() && !group.users.is_empty());
        if !counted && dense.is_empty() {
            return;
        }
        let hashes: Vec<i64> = names.iter().map(|name| hash_user(name)).collect();
        // Each hour's users gathered first and added at once: a sketch of up to 2,560
        // users is a sorted list, which one insertion at a time would keep moving.
        let mut dense_users: Vec<Vec<i64>> = vec![Vec::new(); groups.len()];
        dense.for_each(|id, hour, bit| {
            let day = bit_groups[usize::from(bit)] as usize;
            let hour_group = groups[day].1.hours[usize::from(hour)];
            dense_users[hour_group as usize].push(hashes[id as usize]);
        });
        for ((_, group), mut users) in groups.iter_mut().zip(dense_users) {
            if group.hour.is_some() {
                users.extend(group.users.iter().map(|id| hashes[*id as usize]));
            }
            if !users.is_empty() {
                group.sketch.add_hashes(users);
            }
        }
    }

    /// Writes `user` of `group` straight to the spill files.
    fn pass_user(&mut self, group: u32, user: &str) {
        let record = UserRecord {
            group,
            user: user.into(),
        };
        write_passed(
            &mut self.spilled,
            self.limit.as_ref(),
            &mut self.failure,
            |spilled, space| spilled.users.write(space, &record),
        );
    }

    /// What the tables that can spill hold, counted afresh. The groups themselves
    /// and their sketches (at most 32 KiB each) stay in memory: they grow with the
    /// day's event names, that is with its rows.
    fn measure(&self) -> usize {
        let groups: usize = self
            .groups
            .iter()
            .map(|(_, group)| table_bytes::<u32, ()>(group.users.capacity()) + group.meta.bytes())
            .sum();
        groups + self.users.bytes()
    }

    /// Spills the tables if they hold more than their share of the limit.
    fn keep_within_limit(&mut self) {
        if self.bytes > self.budget && self.limit.is_some() && self.failure.is_none() {
            self.spill();
        }
    }

    /// Writes the users and the metadata tables out, and empties them.
    fn spill(&mut self) {
        let Some(limit) = self.limit.clone() else {
            return;
        };
        let spilled = self.spilled.get_or_insert_with(|| Box::new(Spilled::new()));
        let space = &*limit.space;
        // Users by number, for the hours' sketches, the sets of the groups past the
        // bit-tracked ones and the hours' bits.
        let names = self.users.names();
        Self::fold_hour_sketches(
            &mut self.groups,
            &self.bit_groups,
            &self.users.dense,
            &names,
        );
        let mut write = || -> std::io::Result<()> {
            let mut dense = Vec::new();
            self.users
                .dense
                .for_each(|id, hour, bit| dense.push((id, hour, bit)));
            for (id, hour, bit) in dense {
                let day = self.bit_groups[usize::from(bit)] as usize;
                let group = self.groups[day].1.hours[usize::from(hour)];
                let user = CompactString::from(names[id as usize]);
                spilled.users.write(space, &UserRecord { group, user })?;
            }
            for (user, entry) in self.users.ids.iter().filter(|_| self.hourless) {
                let mut bits = entry.groups;
                while bits != 0 {
                    let group = self.bit_groups[bits.trailing_zeros() as usize];
                    bits &= bits - 1;
                    spilled.users.write(
                        space,
                        &UserRecord {
                            group,
                            user: user.clone(),
                        },
                    )?;
                }
            }
            for (group, (_, event_group)) in self.groups.iter_mut().enumerate() {
                let group = group as u32;
                let users_in_hours = event_group.hour.is_none() && !self.hourless;
                for id in event_group.users.iter().filter(|_| !users_in_hours) {
                    let user = CompactString::from(names[*id as usize]);
                    spilled.users.write(space, &UserRecord { group, user })?;
                }
                for (key, mut stats) in event_group.meta.take_keys() {
                    let values = std::mem::take(&mut stats.values);
                    stats.pass.judge(values.values().sum(), values.len() as u64);
                    if stats.pass.is_passing() {
                        event_group.meta.pass_values(key.clone(), stats.pass);
                    }
                    for (value, count) in values {
                        let record = ValueRecord {
                            group,
                            key: key.clone(),
                            value,
                            count,
                        };
                        spilled.values.write(space, &record)?;
                    }
                    spilled
                        .keys
                        .write(space, &KeyRecord { group, key, stats })?;
                }
            }
            Ok(())
        };
        if let Err(source) = write() {
            self.failure = Some(SpillError {
                place: space.describe(),
                source,
            });
        }
        // The sets hold numbers of the users table emptied below, written out or not.
        for (_, group) in &mut self.groups {
            group.users = FastSet::default();
        }
        self.users_pass
            .judge(self.user_pushes, self.users.ids.len() as u64);
        self.user_pushes = 0;
        self.hourless = false;
        self.users = UserIds::default();
        self.bytes = self.measure();
    }

    /// The rollup rows, keeping `top_k` values per metadata key.
    ///
    /// # Errors
    ///
    /// [`SpillError`] when the aggregate spilled and writing or reading its files
    /// failed.
    pub fn finish(self, top_k: usize) -> Result<DayRollup, SpillError> {
        Ok(self.finish_with_hour_rows(top_k)?.0)
    }

    /// The rollup rows as [`DayAggregate::finish`] gives them, and the rows of each
    /// local hour's events by the hour's index in the day, sorted by hour and event.
    ///
    /// # Errors
    ///
    /// As [`DayAggregate::finish`].
    pub(crate) fn finish_with_hour_rows(
        mut self,
        top_k: usize,
    ) -> Result<(DayRollup, Vec<(u8, RollupRow)>), SpillError> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let mut uniques: Option<Vec<u64>> = None;
        let mut metas: Option<Vec<SummaryTexts>> = None;
        let mut spilled_bytes = 0;
        if self.spilled.is_some() {
            self.spill();
            if let Some(failure) = self.failure.take() {
                return Err(failure);
            }
        }
        if let (Some(spilled), Some(limit)) = (self.spilled.take(), self.limit.clone()) {
            spilled_bytes = spilled.written();
            let day_of: Vec<u32> = (0..)
                .zip(&self.groups)
                .map(|(at, (_, group))| if group.hour.is_some() { group.day } else { at })
                .collect();
            let (u, m) = spilled
                .finish(&day_of, top_k, self.budget, &*limit.space)
                .map_err(|source| SpillError {
                    place: limit.space.describe(),
                    source,
                })?;
            uniques = Some(u);
            metas = Some(m);
        }
        let names = self.users.names();
        Self::fold_hour_sketches(
            &mut self.groups,
            &self.bit_groups,
            &self.users.dense,
            &names,
        );
        drop(names);
        let mut rows = Vec::new();
        let mut hour_rows = Vec::new();
        for (at, (event, mut group)) in self.groups.into_iter().enumerate() {
            group.add_new_hashes();
            let summary = match &mut metas {
                Some(metas) => std::mem::take(&mut metas[at]),
                None => group.meta.to_json(top_k),
            };
            let row = RollupRow {
                event: event.into(),
                count: saturating_i64(group.count),
                unique_users: saturating_i64(
                    group.counted_users
                        + match &uniques {
                            Some(uniques) => uniques[at],
                            None => group.unique + group.users.len() as u64,
                        },
                ),
                meta: summary.meta,
                meta_sketches: Some(summary.sketches),
                users_hll: Some(group.sketch.to_bytes()),
                partial: false,
            };
            match group.hour {
                Some(hour) => hour_rows.push((hour, row)),
                None => rows.push(row),
            }
        }
        rows.sort_unstable_by(|a, b| a.event.cmp(&b.event));
        hour_rows.sort_unstable_by(|(h, a), (g, b)| (h, &a.event).cmp(&(g, &b.event)));
        let day = DayRollup {
            rows,
            events_read: self.events_read,
            skipped: self.skipped,
            spilled_bytes,
        };
        Ok((day, hour_rows))
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl MergeableSink for DayAggregate {
    fn part(&self, of: usize) -> Self {
        match &self.limit {
            Some(limit) => {
                let mut part = Self::with_limit(limit.clone());
                part.budget = (self.budget / of.max(1)).max(1);
                part
            }
            None => Self::new(),
        }
    }

    fn spilled(&self) -> bool {
        self.spilled.is_some()
    }

    fn share_with(&mut self, of: usize) {
        self.budget = (self.budget / of.max(1)).max(1);
        self.keep_within_limit();
    }

    /// Folds `other`, an aggregate of other events of the same day, into this one.
    fn merge(&mut self, mut other: DayAggregate) {
        if self.is_empty() {
            // A source's part merged into the empty sink it was given: taken whole,
            // not copied entry by entry, which would hold both for a moment.
            let (limit, budget) = (self.limit.take(), self.budget);
            *self = other;
            if limit.is_some() {
                (self.limit, self.budget) = (limit, budget);
            }
            self.keep_within_limit();
            return;
        }
        self.events_read += other.events_read;
        self.skipped.add(&other.skipped);
        if self.failure.is_none() {
            self.failure = other.failure.take();
        }
        let groups: Vec<u32> = other
            .groups
            .iter()
            .map(|(name, group)| {
                let day = self.group(name);
                match group.hour {
                    Some(hour) => self.hour_group(day, hour).unwrap_or(day),
                    None => day,
                }
            })
            .collect();
        if self.limit.is_none() && other.limit.is_some() {
            self.limit = other.limit.clone();
            self.budget = other.budget;
        }
        if self.spilled.is_some() || other.spilled.is_some() {
            // Everything of both goes to disk, where the partitions count it.
            other.spill();
            self.spill();
            if let Some(theirs) = other.spilled.take() {
                let mine = self.spilled.get_or_insert_with(|| Box::new(Spilled::new()));
                mine.absorb(*theirs, &Arc::new(groups.clone()));
            }
            for (theirs, (_, mut group)) in other.groups.into_iter().enumerate() {
                self.groups[groups[theirs] as usize]
                    .1
                    .add_totals_of(&mut group);
            }
            if self.failure.is_none() {
                self.failure = other.failure.take();
            }
            return;
        }
        // Its day users are added below without their hours, but with them after.
        self.hourless |= other.hourless;
        let names = other.users.names();
        for (user, entry) in &other.users.ids {
            let mut bits = entry.groups;
            while bits != 0 {
                let theirs = other.bit_groups[bits.trailing_zeros() as usize];
                bits &= bits - 1;
                self.add_user(groups[theirs as usize], user);
            }
        }
        // An hour's users go through the hour's day group, which holds their bits.
        let mut hour_users = Vec::new();
        other.users.dense.for_each(|id, hour, bit| {
            let day = other.bit_groups[usize::from(bit)] as usize;
            let theirs = other.groups[day].1.hours[usize::from(hour)];
            hour_users.push((theirs, id));
        });
        for (theirs, (_, group)) in other.groups.iter().enumerate() {
            if group.hour.is_some() {
                hour_users.extend(group.users.iter().map(|id| (theirs as u32, *id)));
            }
        }
        for (theirs, id) in hour_users {
            let group = &other.groups[theirs as usize].1;
            let (mine_day, mine) = (groups[group.day as usize], groups[theirs as usize]);
            let hour = group.hour.unwrap_or_default();
            self.add_user_in_hour(mine_day, Some((mine, hour)), names[id as usize]);
        }
        for (theirs, (_, mut group)) in other.groups.into_iter().enumerate() {
            let mine = groups[theirs];
            if group.hour.is_none() {
                for id in &group.users {
                    self.add_user(mine, names[*id as usize]);
                }
            }
            let target = &mut self.groups[mine as usize].1;
            target.add_totals_of(&mut group);
            target.meta.merge(group.meta);
        }
        self.bytes = self.measure();
        self.keep_within_limit();
    }
}

impl DayAggregate {
    /// Counts `times` events named `event` as read; returns the name, or `None` when
    /// they are skipped whole (counted by reason).
    fn take_events<'n>(&mut self, event: Option<&'n str>, times: u64) -> Option<&'n str> {
        self.events_read += times;
        match event {
            Some(name) if name.len() > MAX_EVENT_NAME_BYTES => {
                self.skipped.invalid_event += times;
                None
            }
            Some(name) if !name.is_empty() => Some(name),
            _ => {
                self.skipped.missing_event += times;
                None
            }
        }
    }

    /// Summarises the metadata of `times` events of `group`.
    fn add_meta(&mut self, group: u32, meta: Option<&str>, times: u64) {
        let Self {
            groups,
            spilled,
            limit,
            failure,
            ..
        } = self;
        let mut pass = |key: &str, value: &str, count: u64| {
            let record = ValueRecord {
                group,
                key: key.into(),
                value: value.into(),
                count,
            };
            write_passed(spilled, limit.as_ref(), failure, |spilled, space| {
                spilled.values.write(space, &record)
            });
        };
        let summary = &mut groups[group as usize].1.meta;
        match parse_meta(meta) {
            ParsedMeta::Absent => {}
            ParsedMeta::Object(entries) => self.bytes += summary.add(&entries, times, &mut pass),
            ParsedMeta::NonObject => self.skipped.non_object_meta += times,
            ParsedMeta::Invalid => self.skipped.invalid_meta += times,
        }
        self.keep_within_limit();
    }
}

/// Writes an entry that a table passes on straight to the spill files with `write`,
/// keeping the first write that fails as the day's failure. Only an aggregate that
/// has spilled passes entries on: before, there is nowhere to write them.
fn write_passed(
    spilled: &mut Option<Box<Spilled>>,
    limit: Option<&MemoryLimit>,
    failure: &mut Option<SpillError>,
    write: impl FnOnce(&mut Spilled, &dyn SpillSpace) -> std::io::Result<()>,
) {
    let (Some(spilled), Some(limit)) = (spilled.as_deref_mut(), limit) else {
        return;
    };
    if let Err(source) = write(spilled, &*limit.space)
        && failure.is_none()
    {
        *failure = Some(SpillError {
            place: limit.space.describe(),
            source,
        });
    }
}

impl EventSink for DayAggregate {
    fn push(&mut self, event: SourceEvent<'_>) {
        let Some(name) = self.take_events(event.event, 1) else {
            return;
        };
        // A spill failed: the day will fail, and nothing more is worth holding.
        if self.failure.is_some() {
            return;
        }
        let group = self.group(name);
        self.groups[group as usize].1.count += 1;
        let hour = event
            .hour
            .and_then(|hour| Some((self.hour_group(group, hour)?, hour)));
        if let Some((hour_group, _)) = hour {
            self.groups[hour_group as usize].1.count += 1;
        }
        if let Some(user) = event.user_id.filter(|u| !u.is_empty()) {
            self.hourless |= hour.is_none();
            let counted = self.add_user_in_hour(group, hour, user);
            if counted.in_day || counted.passed {
                let hash = hash_user(user);
                if counted.in_day {
                    self.groups[group as usize].1.add_hash(hash);
                }
                // Counted users get into their hour's sketch when it is folded; passed
                // ones are not kept to be folded.
                if let Some((hour_group, _)) = hour.filter(|_| counted.passed) {
                    self.groups[hour_group as usize].1.add_hash(hash);
                }
            }
        }
        self.add_meta(group, event.meta, 1);
    }

    fn push_counted(&mut self, counted: CountedEvents<'_>) {
        let Some(name) = self.take_events(counted.event, counted.events) else {
            return;
        };
        let group = self.group(name);
        let group = &mut self.groups[group as usize].1;
        group.count += counted.events;
        group.counted_users += counted.unique_users;
        group.sketch.union(counted.sketch);
    }

    fn push_meta(&mut self, event: &str, meta: Option<&str>, times: u64) {
        if self.failure.is_some() {
            return;
        }
        if let Some(&group) = self.index.get(event) {
            self.add_meta(group, meta, times);
        }
    }

    fn push_invalid_created_at(&mut self, times: u64) {
        self.events_read += times;
        self.skipped.invalid_created_at += times;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DROPPED_KEYS;
    use crate::rollup::{Scratch, SpillSpace};
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
            hour: None,
        }
    }

    #[test]
    fn counts_and_exact_unique_users_ignore_anonymous() {
        let mut agg = DayAggregate::new();
        for user in [Some("u1"), Some("u2"), Some("u1"), None, Some("")] {
            agg.push(event(Some("view"), user, None));
        }
        let day = agg.finish(20).unwrap();
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
        let day = agg.finish(20).unwrap();
        assert_eq!(day.events_read, 6);
        assert_eq!(day.named_events(), 3);
        assert_eq!(
            day.skipped,
            SkipCounts {
                missing_event: 2,
                invalid_event: 1,
                invalid_meta: 1,
                non_object_meta: 1,
                invalid_created_at: 0,
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
        let whole = whole.finish(20).unwrap();
        for (i, row) in whole.rows.iter().enumerate() {
            assert_eq!(row.unique_users, (i % 5) as i64 + 1, "{}", row.event);
        }
        assert_eq!(first.finish(20).unwrap(), whole);
    }

    #[derive(Debug, Clone)]
    struct OwnedEvent {
        event: Option<String>,
        user: Option<String>,
        meta: Option<String>,
        hour: Option<u8>,
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
            prop::option::weighted(0.9, 0u8..25),
        )
            .prop_map(|(event, user, meta, hour)| OwnedEvent {
                event,
                user,
                meta,
                hour,
            })
    }

    fn aggregate(events: &[OwnedEvent]) -> DayAggregate {
        aggregate_within(events, &DayAggregate::new(), 1)
    }

    /// Scratch files in memory: the spill code reads and writes through `std::io`
    /// alone, so a `Cursor` is as real a file to it as any.
    #[derive(Debug, Default)]
    struct MemorySpace {
        files: std::sync::atomic::AtomicUsize,
    }

    impl SpillSpace for MemorySpace {
        fn scratch(&self) -> std::io::Result<Box<dyn Scratch>> {
            self.files
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Box::new(std::io::Cursor::new(Vec::new())))
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    /// A disk that is full.
    #[derive(Debug)]
    struct FullDisk;

    impl SpillSpace for FullDisk {
        fn scratch(&self) -> std::io::Result<Box<dyn Scratch>> {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            ))
        }
        fn describe(&self) -> String {
            "/full".into()
        }
    }

    fn limited(bytes: usize, space: Arc<dyn SpillSpace>) -> DayAggregate {
        DayAggregate::with_limit(MemoryLimit { bytes, space })
    }

    #[test]
    fn a_user_without_an_hour_merged_in_counts_in_its_day_after_a_spill() {
        // A spill leaves out the day's records of users it writes an hour's record
        // for: not of one merged in from events without an hour.
        let template = limited(1 << 30, Arc::new(MemorySpace::default()));
        let (mut mine, mut theirs) = (template.part(1), template.part(1));
        mine.push(SourceEvent {
            hour: Some(3),
            ..event(Some("view"), Some("a"), None)
        });
        theirs.push(event(Some("view"), Some("b"), None));
        mine.merge(theirs);
        mine.spill();
        let day = mine.finish_with_hour_rows(5).unwrap();
        assert!(day.0.spilled_bytes > 0);
        assert_eq!(day.0.rows[0].unique_users, 2, "a and b");
        assert_eq!(day.1.len(), 1);
        assert_eq!(day.1[0].1.unique_users, 1, "a in hour 3");
    }

    fn aggregate_within(events: &[OwnedEvent], template: &DayAggregate, of: usize) -> DayAggregate {
        let mut agg = template.part(of);
        for e in events {
            agg.push(SourceEvent {
                hour: e.hour,
                ..event(e.event.as_deref(), e.user.as_deref(), e.meta.as_deref())
            });
        }
        agg
    }

    /// A day whose users, keys and values are all different: every table grows with
    /// each event.
    fn distinct_events(n: usize) -> Vec<OwnedEvent> {
        (0..n)
            .map(|i| OwnedEvent {
                event: Some(format!("e{}", i % 7)),
                user: Some(format!("device-{i:08}-{}", "x".repeat(i % 40))),
                meta: Some(format!(
                    r#"{{"trace":"t{i:012}","k{}":"v","plan":"p{}","n":{i}}}"#,
                    i % 150,
                    i % 3
                )),
                hour: None,
            })
            .collect()
    }

    #[test]
    fn a_day_past_its_memory_limit_spills_and_gives_the_same_rows() {
        let events = distinct_events(20_000);
        let whole = aggregate(&events).finish(5).unwrap();
        let space = Arc::new(MemorySpace::default());
        let mut spilled = limited(64 * 1024, space.clone());
        for e in &events {
            spilled.push(event(
                e.event.as_deref(),
                e.user.as_deref(),
                e.meta.as_deref(),
            ));
            assert!(
                spilled.bytes <= spilled.budget + 64 * 1024,
                "the tables stay near their share"
            );
        }
        let spilled = spilled.finish(5).unwrap();
        assert!(
            spilled.spilled_bytes > 1_000_000,
            "{} bytes spilled",
            spilled.spilled_bytes
        );
        assert!(space.files.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert_eq!(spilled.rows, whole.rows);
        assert!(
            whole.rows[0].meta.contains(DROPPED_KEYS),
            "over 100 keys: some dropped"
        );
    }

    #[test]
    fn entries_that_do_not_fold_pass_straight_to_disk_and_the_rows_stay_the_same() {
        // Every user and trace id new at first, then a few users and values again
        // and again: the tables that do not pay pass entries on, then count again.
        let mut events: Vec<OwnedEvent> = (0..40_000)
            .map(|i| OwnedEvent {
                event: Some(format!("e{}", i % 7)),
                user: Some(format!("device-{i}")),
                meta: Some(format!(r#"{{"trace":"t{i}","plan":"p{}"}}"#, i % 3)),
                hour: Some((i % 24) as u8),
            })
            .collect();
        events.extend((0..200_000).map(|i| OwnedEvent {
            event: Some(format!("e{}", i % 7)),
            user: Some(format!("regular-{}", i % 50)),
            meta: Some(format!(r#"{{"trace":"t{}","plan":"p{}"}}"#, i % 20, i % 3)),
            hour: Some((i % 24) as u8),
        }));
        let whole = aggregate(&events).finish_with_hour_rows(5).unwrap();
        let mut limited = limited(8 << 20, Arc::new(MemorySpace::default()));
        let (distinct, regular) = events.split_at(40_000);
        let push = |agg: &mut DayAggregate, events: &[OwnedEvent]| {
            for e in events {
                agg.push(SourceEvent {
                    hour: e.hour,
                    ..event(e.event.as_deref(), e.user.as_deref(), e.meta.as_deref())
                });
            }
        };
        push(&mut limited, distinct);
        assert!(
            limited.users_pass.is_passing(),
            "users pass on once they do not fold"
        );
        let trace_passing = limited
            .groups
            .iter()
            .filter(|(_, group)| group.meta.passes("trace"))
            .count();
        assert!(trace_passing > 0, "trace ids pass on once they do not fold");
        push(&mut limited, regular);
        assert!(!limited.users_pass.is_passing(), "users are counted again");
        let (limited, limited_hours) = limited.finish_with_hour_rows(5).unwrap();
        assert!(limited.spilled_bytes > 0);
        assert_eq!(limited.rows, whole.0.rows);
        assert_eq!(limited_hours, whole.1);
    }

    #[test]
    fn a_spill_that_fails_fails_the_day_naming_the_place() {
        let mut agg = limited(1024, Arc::new(FullDisk));
        for e in &distinct_events(2_000) {
            agg.push(event(
                e.event.as_deref(),
                e.user.as_deref(),
                e.meta.as_deref(),
            ));
        }
        let error = agg.finish(5).unwrap_err();
        assert_eq!(error.source.kind(), std::io::ErrorKind::StorageFull);
        assert!(error.to_string().contains("/full"), "{error}");
    }

    proptest! {
        #[test]
        fn split_shuffled_and_merged_equals_one_pass(
            events in prop::collection::vec(arb_event(), 0..200),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            shuffle_seed in any::<u64>(),
            top_k in 0usize..4,
            limit in prop::option::of(1usize..4096),
        ) {
            let (whole, whole_hours) = aggregate(&events).finish_with_hour_rows(top_k).unwrap();

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
            // With a limit, the parts spill as they go (some, all or none of them).
            let template = match limit {
                Some(bytes) => limited(bytes, Arc::new(MemorySpace::default())),
                None => DayAggregate::new(),
            };
            let of = bounds.len() - 1;
            let mut parts = bounds.windows(2).map(|w| aggregate_within(&shuffled[w[0]..w[1]], &template, of));
            let mut merged = parts.next().unwrap_or_default();
            for part in parts.rev() {
                merged.merge(part);
            }
            let (merged, merged_hours) = merged.finish_with_hour_rows(top_k).unwrap();
            prop_assert_eq!(merged.rows, whole.rows);
            prop_assert_eq!(merged_hours, whole_hours);
            prop_assert_eq!((merged.events_read, merged.skipped), (whole.events_read, whole.skipped));
        }
    }
}
