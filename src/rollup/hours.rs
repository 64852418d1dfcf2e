//! A day's events aggregated by local hour as well, from the same single read: the
//! day's aggregate keeps a group for each (event, local hour) beside the group of
//! each event (names and users only: hour rows carry no metadata summary).
//!
//! The hours' groups share the day's user table (one lookup of an event's user
//! serves its day and its hour), its memory budget and its spill files, so hours are
//! exact, mergeable and spill just as days do.

use jiff::{SignedDuration, Timestamp};

use super::aggregate::{DayAggregate, DayRollup};
use super::spill::SpillError;
use crate::model::HourRow;

/// A finished day: its rows, and its hour rows sorted by hour and event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayAndHourRollup {
    pub day: DayRollup,
    pub hours: Vec<HourRow>,
}

impl DayAggregate {
    /// The day's rows and its hours' rows, each hour at `day_start` plus its index in
    /// hours (the local hours of a day are whole hours after its midnight in every
    /// zone whose offsets change by whole hours).
    ///
    /// # Errors
    ///
    /// [`SpillError`] when spilled state cannot be read back.
    pub fn finish_with_hours(
        self,
        top_k: usize,
        day_start: Timestamp,
    ) -> Result<DayAndHourRollup, SpillError> {
        let (day, hour_rows) = self.finish_with_hour_rows(top_k)?;
        let hours = hour_rows
            .into_iter()
            .filter_map(|(index, row)| {
                let start = day_start
                    .checked_add(SignedDuration::from_hours(i64::from(index)))
                    .ok()?;
                Some(HourRow::of(start, row))
            })
            .collect();
        Ok(DayAndHourRollup { day, hours })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventSink, MergeableSink, SourceEvent};
    use crate::rollup::MemoryLimit;

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
        let mut all = DayAggregate::new();
        for e in [
            event("view", "a", 0),
            event("view", "a", 0),
            event("view", "b", 0),
            event("view", "a", 2),
            event("click", "c", 2),
        ] {
            all.push(e);
        }
        let done = all.finish_with_hours(20, start).unwrap();
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
    fn hours_spill_with_the_day_and_give_the_same_rows() {
        let start: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let limit = MemoryLimit {
            bytes: 2 << 20,
            space: std::sync::Arc::new(InMemory),
        };
        let mut limited = DayAggregate::with_limit(limit);
        let mut unlimited = DayAggregate::new();
        for i in 0..60_000u32 {
            let (user, hour) = (format!("user-{i}"), (i % 24) as u8);
            // Each user comes back an hour later, so that hours hold users the
            // day has already counted.
            for all in [&mut limited, &mut unlimited] {
                all.push(event("view", &user, hour));
                all.push(event("view", &user, (hour + 1) % 24));
            }
        }
        assert!(limited.spilled(), "the test's day is big enough to spill");
        let (limited, unlimited) = (
            limited.finish_with_hours(20, start).unwrap(),
            unlimited.finish_with_hours(20, start).unwrap(),
        );
        assert_eq!(limited.hours.len(), 24);
        for hour in &unlimited.hours {
            // Users i and i - 1 (mod 24 hours) of each hour: 2 x 2,500.
            assert_eq!((hour.count, hour.unique_users), (5_000, 5_000));
        }
        assert_eq!(limited.hours, unlimited.hours);
        assert_eq!(limited.day.rows, unlimited.day.rows);
    }

    #[test]
    fn users_with_many_events_are_counted_once_per_hour_and_event_in_any_order() {
        // Users 0..9 do hundreds of events each (their hours go to bits), the others
        // a few; events come in no particular order, split over two parts.
        let start: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let events: Vec<(String, String, u8)> = (0..20_000)
            .map(|_| {
                let user = if next(4) == 0 { next(2_000) } else { next(10) };
                let name = format!("e{}", next(5));
                (name, format!("u{user}"), next(24) as u8)
            })
            .collect();
        let mut expected: std::collections::BTreeMap<
            (u8, String),
            std::collections::BTreeSet<&str>,
        > = Default::default();
        let mut counts: std::collections::BTreeMap<(u8, String), i64> = Default::default();
        for (name, user, hour) in &events {
            expected
                .entry((*hour, name.clone()))
                .or_default()
                .insert(user);
            *counts.entry((*hour, name.clone())).or_default() += 1;
        }
        let (whole, mut left, mut right) = (
            DayAggregate::new(),
            DayAggregate::new(),
            DayAggregate::new(),
        );
        let mut whole = whole;
        for (i, (name, user, hour)) in events.iter().enumerate() {
            whole.push(event(name, user, *hour));
            let side = if i % 3 == 0 { &mut left } else { &mut right };
            side.push(event(name, user, *hour));
        }
        left.merge(right);
        let (whole, merged) = (
            whole.finish_with_hours(20, start).unwrap(),
            left.finish_with_hours(20, start).unwrap(),
        );
        let got: Vec<(i64, i64)> = whole
            .hours
            .iter()
            .map(|h| (h.count, h.unique_users))
            .collect();
        let want: Vec<(i64, i64)> = expected
            .iter()
            .map(|(key, users)| (counts[key], users.len() as i64))
            .collect();
        assert_eq!(got, want);
        for hour in &whole.hours {
            let users = &expected[&(
                ((hour.hour.as_second() - start.as_second()) / 3600) as u8,
                hour.event.clone(),
            )];
            let mut sketch = crate::model::hll::Sketch::new();
            for user in users {
                sketch.add_user(user);
            }
            assert_eq!(
                hour.users_hll,
                sketch.to_bytes(),
                "{} {}",
                hour.hour,
                hour.event
            );
        }
        assert_eq!(merged, whole);
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
        let mut whole = DayAggregate::new();
        let mut left = whole.part(2);
        let mut right = whole.part(2);
        for (i, (name, user, hour)) in events.iter().enumerate() {
            whole.push(event(name, user, *hour));
            let side = if i % 2 == 0 { &mut left } else { &mut right };
            side.push(event(name, user, *hour));
        }
        left.merge(right);
        assert_eq!(
            left.finish_with_hours(20, start).unwrap(),
            whole.finish_with_hours(20, start).unwrap()
        );
    }
}
