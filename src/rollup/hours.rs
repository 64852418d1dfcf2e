//! A day's events aggregated by local hour as well, from the same single read: the
//! day's aggregate takes every event, and one aggregate per hour takes the events of
//! that hour (names and users only: hour rows carry no metadata summary).
//!
//! Each hour's aggregate is a [`DayAggregate`] of its own, so hours are exact,
//! mergeable and spill just as days do. The day and its hours share one memory
//! budget as they fill (events mostly come in time order, so one or two hours grow
//! at a time): when together they hold more than it, the biggest of them spills.

use jiff::{SignedDuration, Timestamp};

use super::aggregate::{DayAggregate, DayRollup};
use super::spill::{MemoryLimit, SpillError};
use crate::model::{CountedEvents, EventSink, HourRow, MergeableSink, SourceEvent};

/// Most hours a day has (a 25-hour day).
pub const MAX_HOURS: usize = 25;

/// A day's aggregate and its hours'.
#[derive(Debug)]
pub struct DayAndHours {
    day: DayAggregate,
    /// The hours seen so far, by their index in the day.
    hours: Vec<Option<DayAggregate>>,
    /// What the day's and the hours' tables hold together, against the day's budget.
    held: usize,
}

/// A finished day: its rows, and its hour rows sorted by hour and event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayAndHourRollup {
    pub day: DayRollup,
    pub hours: Vec<HourRow>,
}

impl DayAndHours {
    /// An empty aggregate of a day and its hours, within `limit` (none when `None`).
    pub fn new(limit: Option<MemoryLimit>) -> Self {
        let day = match limit {
            Some(limit) => DayAggregate::with_limit(limit),
            None => DayAggregate::new(),
        };
        Self {
            day,
            hours: Vec::new(),
            held: 0,
        }
    }

    /// Every event read, bad ones included.
    pub fn events_read(&self) -> u64 {
        self.day.events_read()
    }

    fn hour(&mut self, index: usize) -> Option<&mut DayAggregate> {
        if index >= MAX_HOURS {
            return None;
        }
        if self.hours.len() <= index {
            self.hours.resize_with(index + 1, || None);
        }
        let day = &self.day;
        // Each hour may take the whole budget; the day and its hours together are
        // kept within it by [`DayAndHours::keep_within_budget`].
        Some(self.hours[index].get_or_insert_with(|| day.part(1)))
    }

    /// Spills the biggest of the day and its hours until together they fit the
    /// day's budget.
    fn keep_within_budget(&mut self) {
        let budget = self.day.budget();
        self.held = self.held_by_all();
        while self.held > budget {
            let biggest = std::iter::once(&mut self.day)
                .chain(self.hours.iter_mut().flatten())
                .max_by_key(|aggregate| aggregate.held_bytes());
            let Some(biggest) = biggest else { return };
            let before = biggest.held_bytes();
            biggest.spill_now();
            if biggest.held_bytes() >= before {
                // Nothing could be spilled (no limit, or a failed spill).
                return;
            }
            self.held = self.held_by_all();
        }
    }

    fn held_by_all(&self) -> usize {
        self.day.held_bytes()
            + self
                .hours
                .iter()
                .flatten()
                .map(DayAggregate::held_bytes)
                .sum::<usize>()
    }

    /// The day's rows and its hours' rows, each hour at `day_start` plus its index in
    /// hours (the local hours of a day are whole hours after its midnight in every
    /// zone whose offsets change by whole hours).
    ///
    /// # Errors
    ///
    /// [`SpillError`] when spilled state cannot be read back.
    pub fn finish(
        self,
        top_k: usize,
        day_start: Timestamp,
    ) -> Result<DayAndHourRollup, SpillError> {
        let day = self.day.finish(top_k)?;
        let mut hours = Vec::new();
        for (index, hour) in self.hours.into_iter().enumerate() {
            let Some(hour) = hour else { continue };
            let offset = SignedDuration::from_hours(index as i64);
            let Ok(start) = day_start.checked_add(offset) else {
                continue;
            };
            hours.extend(
                hour.finish(0)?
                    .rows
                    .into_iter()
                    .map(|row| HourRow::of(start, row)),
            );
        }
        Ok(DayAndHourRollup { day, hours })
    }
}

impl EventSink for DayAndHours {
    fn push(&mut self, event: SourceEvent<'_>) {
        let mut grew = 0isize;
        if let Some(hour) = event.hour.and_then(|h| self.hour(usize::from(h))) {
            let before = hour.held_bytes();
            hour.push(SourceEvent {
                meta: None,
                hour: None,
                ..event
            });
            grew += hour.held_bytes() as isize - before as isize;
        }
        let before = self.day.held_bytes();
        self.day.push(event);
        grew += self.day.held_bytes() as isize - before as isize;
        self.held = self.held.saturating_add_signed(grew);
        if self.held > self.day.budget() {
            self.keep_within_budget();
        }
    }

    fn push_counted(&mut self, counted: CountedEvents<'_>) {
        self.day.push_counted(counted);
    }

    fn push_meta(&mut self, event: &str, meta: Option<&str>, times: u64) {
        self.day.push_meta(event, meta, times);
    }

    fn push_invalid_created_at(&mut self, times: u64) {
        self.day.push_invalid_created_at(times);
    }
}

impl MergeableSink for DayAndHours {
    fn part(&self, of: usize) -> Self {
        Self {
            day: self.day.part(of),
            hours: Vec::new(),
            held: 0,
        }
    }

    fn merge(&mut self, other: Self) {
        self.day.merge(other.day);
        for (index, hour) in other.hours.into_iter().enumerate() {
            let Some(hour) = hour else { continue };
            if self.hours.len() <= index {
                self.hours.resize_with(index + 1, || None);
            }
            match &mut self.hours[index] {
                Some(mine) => mine.merge(hour),
                slot @ None => *slot = Some(hour),
            }
        }
        self.keep_within_budget();
    }

    fn spilled(&self) -> bool {
        self.day.spilled() || self.hours.iter().flatten().any(MergeableSink::spilled)
    }

    fn share_with(&mut self, of: usize) {
        self.day.share_with(of);
        for hour in self.hours.iter_mut().flatten() {
            hour.share_with(of);
        }
        self.keep_within_budget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(name: &'a str, user: &'a str, hour: u8) -> SourceEvent<'a> {
        SourceEvent {
            event: Some(name),
            user_id: Some(user),
            meta: Some(r#"{"k":"v"}"#),
            hour: Some(hour),
        }
    }

    #[test]
    fn each_hour_counts_its_own_events_and_users() {
        let start: Timestamp = "2024-03-10T05:00:00Z".parse().unwrap();
        let mut all = DayAndHours::new(None);
        for e in [
            event("view", "a", 0),
            event("view", "a", 0),
            event("view", "b", 0),
            event("view", "a", 2),
            event("click", "c", 2),
        ] {
            all.push(e);
        }
        let done = all.finish(20, start).unwrap();
        assert_eq!(done.day.rows.len(), 2);
        let hours: Vec<(String, &str, i64, i64)> = done
            .hours
            .iter()
            .map(|h| {
                (
                    h.hour.to_string(),
                    h.event.as_str(),
                    h.count,
                    h.unique_users,
                )
            })
            .collect();
        assert_eq!(
            hours,
            [
                ("2024-03-10T05:00:00Z".to_owned(), "view", 3, 2),
                ("2024-03-10T07:00:00Z".to_owned(), "click", 1, 1),
                ("2024-03-10T07:00:00Z".to_owned(), "view", 1, 1),
            ]
        );
    }

    /// Scratch files in memory.
    #[derive(Debug)]
    struct InMemory;

    impl crate::rollup::SpillSpace for InMemory {
        fn scratch(&self) -> std::io::Result<Box<dyn crate::rollup::Scratch>> {
            Ok(Box::new(std::io::Cursor::new(Vec::new())))
        }

        fn describe(&self) -> String {
            "memory".into()
        }
    }

    #[test]
    fn the_hours_share_one_budget_and_spill_the_biggest_to_keep_it() {
        let start: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let limit = MemoryLimit {
            bytes: 2 << 20,
            space: std::sync::Arc::new(InMemory),
        };
        let mut limited = DayAndHours::new(Some(limit));
        let mut unlimited = DayAndHours::new(None);
        let budget = limited.day.budget();
        let mut spilled_any = false;
        for i in 0..60_000u32 {
            let (user, hour) = (format!("user-{i}"), (i % 24) as u8);
            for all in [&mut limited, &mut unlimited] {
                all.push(event("view", &user, hour));
            }
            assert!(limited.held_by_all() <= budget, "over the budget at {i}");
            spilled_any |= limited.hours.iter().flatten().any(MergeableSink::spilled);
        }
        assert!(spilled_any, "the test's day is big enough to spill");
        assert_eq!(
            limited.finish(20, start).unwrap().hours,
            unlimited.finish(20, start).unwrap().hours
        );
    }

    #[test]
    fn parts_merged_equal_one_pass() {
        let start: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let events: Vec<(String, String, u8)> = (0..500)
            .map(|i| {
                (
                    format!("e{}", i % 3),
                    format!("u{}", i % 37),
                    (i % 24) as u8,
                )
            })
            .collect();
        let mut whole = DayAndHours::new(None);
        let mut left = whole.part(2);
        let mut right = whole.part(2);
        for (i, (name, user, hour)) in events.iter().enumerate() {
            whole.push(event(name, user, *hour));
            let side = if i % 2 == 0 { &mut left } else { &mut right };
            side.push(event(name, user, *hour));
        }
        left.merge(right);
        assert_eq!(
            left.finish(20, start).unwrap(),
            whole.finish(20, start).unwrap()
        );
    }
}
