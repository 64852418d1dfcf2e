//! The built-in schedule of `serve`: a cron expression evaluated in the job's zone.
//!
//! [`Schedule`] parses the expression (croner: the usual five fields, six with
//! seconds first, seven with a year last, or a nickname such as `@daily`) and finds the next tick, daylight-saving changes included: a time
//! that a clock skips runs when the clock jumps past it, and a time that a clock
//! repeats runs once. [`run_on_schedule`] starts a run at each tick, and skips (and logs) a tick
//! that finds the previous scheduled run still going, so runs never stack up.

use std::cmp::Ordering;
use std::future::Future;
use std::str::FromStr as _;

use croner::errors::CronError;
use croner::{CivilDate, CivilDateTime, CivilTime, CronDateTime, Resolution, Weekday};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, ZonedDateTime};

use crate::launcher::Launcher;

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    expression: String,
    zone: TimeZone,
}

impl Schedule {
    /// Parses `expression`, to be evaluated in `zone`.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong with the expression.
    pub fn parse(expression: &str, zone: TimeZone) -> Result<Self, String> {
        let cron = croner::Cron::from_str(expression).map_err(|error| {
            format!(
                "'{}' is not a cron expression ({error}); expected five fields \
                 (minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\"), \
                 six with seconds first, seven with a year last, or a nickname such as @daily",
                expression.escape_debug()
            )
        })?;
        let schedule = Self {
            cron,
            expression: expression.trim().to_owned(),
            zone,
        };
        // An expression such as "0 0 31 2 *" parses but never fires.
        if schedule.next_after(Timestamp::now()).is_none() {
            return Err(format!(
                "'{}' never comes round",
                schedule.expression.escape_debug()
            ));
        }
        Ok(schedule)
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first tick strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = Zoned(after.to_zoned_datetime(self.zone.clone()));
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|next| next.0.timestamp())
    }
}

/// Runs the job at every tick of `schedule` until `shutdown` completes. Each run
/// covers the default range with `--changed`, on a task `launcher` tracks, so a
/// shutdown waits for it. A tick that finds the previous scheduled run still going
/// is skipped and logged.
pub async fn run_on_schedule(
    launcher: Launcher,
    schedule: Schedule,
    shutdown: impl Future<Output = ()>,
) {
    run_job_on_schedule(launcher, schedule, shutdown, Launcher::launch_scheduled).await;
}

/// Starts a run with `start` at every tick of `schedule` until `shutdown` completes,
/// skipping (and logging) a tick that finds the previous run `start` made still going.
pub async fn run_job_on_schedule<T: Send + 'static>(
    launcher: Launcher,
    schedule: Schedule,
    shutdown: impl Future<Output = ()>,
    start: impl Fn(&Launcher) -> tokio::task::JoinHandle<T>,
) {
    tokio::pin!(shutdown);
    // The run logs and counts its own outcome; only whether it is still going matters here.
    let mut previous: Option<tokio::task::JoinHandle<T>> = None;
    let mut after = Timestamp::now();
    loop {
        let Some(tick) = schedule.next_after(after) else {
            tracing::warn!(
                schedule = schedule.expression(),
                "the schedule has no further ticks"
            );
            return;
        };
        tracing::debug!(%tick, "next scheduled run");
        tokio::select! {
            () = &mut shutdown => return,
            () = sleep_until(tick) => {}
        }
        // Ticks the process slept through (a suspended machine) are not made up one by
        // one: this tick runs, and the next is the first after now.
        after = tick.max(Timestamp::now());
        if previous.as_ref().is_some_and(|run| !run.is_finished()) {
            tracing::warn!(
                %tick,
                schedule = schedule.expression(),
                "scheduled run skipped: the previous scheduled run is still going"
            );
            launcher.metrics().tick_skipped();
            continue;
        }
        tracing::info!(%tick, schedule = schedule.expression(), "scheduled run starting");
        previous = Some(start(&launcher));
    }
}

/// The shortest interval `--today-every` takes: a refresh of a big day takes seconds.
pub const MIN_TODAY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Rolls up today so far every `every` until `shutdown` completes, the first time
/// one interval after the start. A tick that finds the previous refresh still going
/// is skipped and logged, as the schedule's are.
pub async fn refresh_today_every(
    launcher: Launcher,
    every: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut previous: Option<tokio::task::JoinHandle<_>> = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        if previous.as_ref().is_some_and(|run| !run.is_finished()) {
            tracing::warn!("refresh of today skipped: the previous refresh is still going");
            launcher.metrics().tick_skipped();
            continue;
        }
        tracing::info!("refreshing today so far");
        previous = Some(launcher.launch_today());
    }
}

/// Sleeps until the wall clock reaches `at`. The monotonic timer does not follow
/// changes to the wall clock, so the time left is checked again on waking.
async fn sleep_until(at: Timestamp) {
    loop {
        let left = at.duration_since(Timestamp::now());
        if left <= SignedDuration::ZERO {
            return;
        }
        // Re-checked at least every minute, in case the wall clock was set.
        let nap = left.min(SignedDuration::from_secs(60));
        tokio::time::sleep(nap.unsigned_abs()).await;
    }
}

/// jiff's zoned datetime as croner sees it (croner's own jiff support is for an
/// older jiff).
#[derive(Debug, Clone)]
struct Zoned(ZonedDateTime);

impl CronDateTime for Zoned {
    fn to_civil(&self) -> CivilDateTime {
        civil(self.0.datetime())
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(
            self.0
                .weekday()
                .to_sunday_zero_offset()
                .unsigned_abs()
                .into(),
        )
    }

    fn resolve_civil(&self, civil: CivilDateTime) -> Result<Resolution<Self>, CronError> {
        let year = i16::try_from(civil.year()).map_err(|_| CronError::InvalidDate)?;
        let part = |n: u32| i8::try_from(n).map_err(|_| CronError::InvalidDate);
        let datetime = DateTime::new(
            year,
            part(civil.month())?,
            part(civil.day())?,
            part(civil.hour())?,
            part(civil.minute())?,
            part(civil.second())?,
            0,
        )
        .map_err(|_| CronError::InvalidDate)?;
        let ambiguous = self.0.time_zone().to_ambiguous_zoned_datetime(datetime);
        let invalid = |_| CronError::InvalidTime;
        Ok(match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => {
                Resolution::Single(Zoned(ambiguous.unambiguous().map_err(invalid)?))
            }
            AmbiguousOffset::Fold { .. } => Resolution::Ambiguous(
                Zoned(ambiguous.clone().earlier().map_err(invalid)?),
                Zoned(ambiguous.later().map_err(invalid)?),
            ),
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
            .map(Zoned)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

fn civil(datetime: DateTime) -> CivilDateTime {
    // jiff keeps every part in range, which is all that `unchecked` asks.
    let n = |part: i8| u32::from(part.unsigned_abs());
    CivilDateTime::new(
        CivilDate::from_parts_unchecked(
            i32::from(datetime.year()),
            n(datetime.month()),
            n(datetime.day()),
        ),
        CivilTime::from_parts_unchecked(
            n(datetime.hour()),
            n(datetime.minute()),
            n(datetime.second()),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a valid instant")
    }

    fn schedule(expression: &str, zone: &str) -> Schedule {
        Schedule::parse(expression, TimeZone::get(zone).expect("a known zone"))
            .expect("a valid expression")
    }

    #[test]
    fn daily_ticks_fall_at_local_time() {
        let s = schedule("0 2 * * *", "Europe/Berlin");
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(at("2024-01-10T12:00:00Z")),
            Some(at("2024-01-11T01:00:00Z"))
        );
        // In summer it is 00:00 UTC.
        assert_eq!(
            s.next_after(at("2024-07-10T12:00:00Z")),
            Some(at("2024-07-11T00:00:00Z"))
        );
    }

    #[test]
    fn the_next_tick_is_strictly_later() {
        let s = schedule("0 2 * * *", "UTC");
        assert_eq!(
            s.next_after(at("2024-01-10T02:00:00Z")),
            Some(at("2024-01-11T02:00:00Z"))
        );
    }

    #[test]
    fn a_seconds_field_is_optional() {
        let s = schedule("*/5 * * * * *", "UTC");
        assert_eq!(
            s.next_after(at("2024-01-10T12:00:01Z")),
            Some(at("2024-01-10T12:00:05Z"))
        );
    }

    #[test]
    fn days_of_week_count_from_sunday() {
        // 2024-01-10 is a Wednesday; 1 is Monday.
        let s = schedule("30 6 * * 1", "UTC");
        assert_eq!(
            s.next_after(at("2024-01-10T00:00:00Z")),
            Some(at("2024-01-15T06:30:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes_neither_add_nor_drop_a_repeated_hour() {
        // Berlin's clocks go back from 03:00 to 02:00 on 2024-10-27: 02:30 happens
        // twice but runs once.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let first = s.next_after(at("2024-10-26T12:00:00Z")).unwrap();
        assert_eq!(first, at("2024-10-27T00:30:00Z"));
        assert_eq!(s.next_after(first), Some(at("2024-10-28T01:30:00Z")));
    }

    #[test]
    fn a_time_the_clock_skips_runs_when_it_jumps() {
        // Berlin's clocks jump from 02:00 to 03:00 on 2024-03-31: 02:30 runs at 03:00.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let first = s.next_after(at("2024-03-30T12:00:00Z")).unwrap();
        assert_eq!(first, at("2024-03-31T01:00:00Z"));
        assert_eq!(s.next_after(first), Some(at("2024-04-01T00:30:00Z")));
    }

    #[test]
    fn nicknames_last_days_and_a_year_field_are_read() {
        let cases = [
            ("@daily", "2024-01-10T12:00:00Z", "2024-01-11T00:00:00Z"),
            ("@hourly", "2024-01-10T12:00:00Z", "2024-01-10T13:00:00Z"),
            // L: the last day of the month.
            ("0 2 L * *", "2024-02-10T00:00:00Z", "2024-02-29T02:00:00Z"),
            // 5#2: the second Friday; 1W: the weekday nearest the 1st (2024-06-01 is
            // a Saturday, so Monday the 3rd).
            (
                "0 2 * * 5#2",
                "2024-01-01T00:00:00Z",
                "2024-01-12T02:00:00Z",
            ),
            ("0 2 1W * *", "2024-05-31T12:00:00Z", "2024-06-03T02:00:00Z"),
            // Seven fields: seconds first, a year last.
            (
                "0 30 2 * * * 2030",
                "2024-01-10T00:00:00Z",
                "2030-01-01T02:30:00Z",
            ),
        ];
        for (expression, after, next) in cases {
            let s = schedule(expression, "UTC");
            assert_eq!(s.next_after(at(after)), Some(at(next)), "{expression}");
        }
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        let zone = TimeZone::UTC;
        for bad in ["", "every day", "61 * * * *", "0 2 * *", "0 0 31 2 *"] {
            let error = Schedule::parse(bad, zone.clone()).unwrap_err();
            assert!(error.contains(bad.trim()), "{error}");
        }
    }
}
