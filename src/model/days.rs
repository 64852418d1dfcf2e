//! Days and ranges of days, cut in an IANA time zone.
//!
//! A day is `[00:00, 24:00)` local time in the configured zone, so it lasts 23 or
//! 25 hours on daylight-saving days. This module turns dates into the instants that
//! bound them; it knows nothing of databases.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// Why a date or a range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// The text is not a `YYYY-MM-DD` calendar date.
    #[error("{field}: '{value}' is not a date in the form YYYY-MM-DD")]
    Malformed { field: &'static str, value: String },
    /// The text has the form of a date, but the calendar has no such day.
    #[error("{field}: '{value}' is not a day of the calendar ({reason})")]
    NoSuchDay {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// The end of the range comes before its start.
    #[error("the end date {end} is before the start date {start}")]
    EndBeforeStart { start: Date, end: Date },
    /// An end date was given without a start date.
    #[error("--end-date needs --start-date")]
    EndWithoutStart,
    /// The date lies outside the span of time the job can represent.
    #[error(
        "{date} is out of the supported range of dates: a day must begin and end between \
         -9999-01-02 and 9999-12-30 (UTC)"
    )]
    OutOfRange { date: Date },
    /// A day of the range has not begun yet in the zone.
    #[error(
        "{date} has not begun yet in {zone} (today there is {today}); a day can be rolled up from its first instant"
    )]
    NotBegun {
        date: Date,
        today: Date,
        zone: String,
    },
}

/// Parses a strict `YYYY-MM-DD` date; `field` names the flag or field in the error.
///
/// # Errors
///
/// [`DateError::Malformed`] when `value` is not exactly a calendar date.
pub fn parse_date(field: &'static str, value: &str) -> Result<Date, DateError> {
    let malformed = || DateError::Malformed {
        field,
        value: value.to_owned(),
    };
    let bytes = value.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape_ok {
        return Err(malformed());
    }
    let number = |range: std::ops::Range<usize>| value[range].parse::<i16>().unwrap_or(0);
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let no_such_day = |reason: String| DateError::NoSuchDay {
        field,
        value: value.to_owned(),
        reason,
    };
    if !(1..=12).contains(&month) {
        return Err(no_such_day(format!("there is no month {month}")));
    }
    let first = Date::new(year, month as i8, 1).map_err(|_| malformed())?;
    let days = first.days_in_month();
    if day < 1 || day > i16::from(days) {
        let name = first.strftime("%B %Y");
        return Err(no_such_day(format!("{name} has {days} days")));
    }
    Date::new(year, month as i8, day as i8).map_err(|_| malformed())
}

/// An inclusive range of calendar dates, `start..=end`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    start: Date,
    end: Date,
}

impl DayRange {
    /// The range `start..=end`.
    ///
    /// # Errors
    ///
    /// [`DateError::EndBeforeStart`] when `end < start`.
    pub fn new(start: Date, end: Date) -> Result<Self, DateError> {
        if end < start {
            return Err(DateError::EndBeforeStart { start, end });
        }
        Ok(Self { start, end })
    }

    /// The one-day range holding `date`.
    pub fn single(date: Date) -> Self {
        Self {
            start: date,
            end: date,
        }
    }

    /// The range from optional start and end dates as the command line and the
    /// endpoint take them: neither means `None` (the default range); a start alone
    /// means that one day; an end alone is an error.
    ///
    /// # Errors
    ///
    /// [`DateError::EndWithoutStart`] or [`DateError::EndBeforeStart`].
    pub fn from_bounds(start: Option<Date>, end: Option<Date>) -> Result<Option<Self>, DateError> {
        match (start, end) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(DateError::EndWithoutStart),
            (Some(start), None) => Ok(Some(Self::single(start))),
            (Some(start), Some(end)) => Self::new(start, end).map(Some),
        }
    }

    /// The `lookback_days` days ending yesterday, as seen at `now` in `tz`.
    ///
    /// # Errors
    ///
    /// [`DateError::OutOfRange`] only at the limits of the calendar.
    pub fn ending_yesterday(
        now: Timestamp,
        tz: &TimeZone,
        lookback_days: u32,
    ) -> Result<Self, DateError> {
        let today = now.to_zoned_datetime(tz.clone()).date();
        let end = today
            .yesterday()
            .map_err(|_| DateError::OutOfRange { date: today })?;
        let back = i64::from(lookback_days.max(1) - 1);
        let start = end
            .checked_sub(jiff::Span::new().days(back))
            .map_err(|_| DateError::OutOfRange { date: end })?;
        Self::new(start, end)
    }

    /// Refuses a range holding a day that has not begun yet in `tz` at `now`.
    ///
    /// # Errors
    ///
    /// [`DateError::NotBegun`] naming the range's last day.
    pub fn check_begun(&self, now: Timestamp, tz: &TimeZone) -> Result<(), DateError> {
        let today = now.to_zoned_datetime(tz.clone()).date();
        if self.end <= today {
            return Ok(());
        }
        Err(DateError::NotBegun {
            date: self.end,
            today,
            zone: tz.iana_name().unwrap_or("UTC").to_owned(),
        })
    }

    /// The `days` days ending today, as seen at `now` in `tz`.
    ///
    /// # Errors
    ///
    /// [`DateError::OutOfRange`] only at the limits of the calendar.
    pub fn ending_today(now: Timestamp, tz: &TimeZone, days: u32) -> Result<Self, DateError> {
        let today = now.to_zoned_datetime(tz.clone()).date();
        let back = i64::from(days.max(1) - 1);
        let start = today
            .checked_sub(jiff::Span::new().days(back))
            .map_err(|_| DateError::OutOfRange { date: today })?;
        Self::new(start, today)
    }

    /// The first day of the range.
    pub fn start(&self) -> Date {
        self.start
    }

    /// The last day of the range (inclusive).
    pub fn end(&self) -> Date {
        self.end
    }

    /// How many days the range holds.
    pub fn len_days(&self) -> i64 {
        day_number(self.end) - day_number(self.start) + 1
    }

    /// The days of the range in order.
    pub fn days(&self) -> impl Iterator<Item = Date> + use<> {
        let end = self.end;
        std::iter::successors(Some(self.start), move |d| {
            d.tomorrow().ok().filter(|next| *next <= end)
        })
    }
}

impl fmt::Display for DayRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{} to {}", self.start, self.end)
        }
    }
}

/// The instants bounding one local day: events with `start <= created_at < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    /// The calendar date in the configured zone.
    pub date: Date,
    /// The first instant of the day.
    pub start: Timestamp,
    /// The first instant of the next day.
    pub end: Timestamp,
    /// The first instant of the whole day, which its hours are counted from (the
    /// window's own start, unless it is a slice of the day).
    pub day_start: Timestamp,
}

impl DayWindow {
    /// The window of `date` in `tz`.
    ///
    /// # Errors
    ///
    /// [`DateError::OutOfRange`] at the limits of the calendar.
    pub fn new(date: Date, tz: &TimeZone) -> Result<Self, DateError> {
        let out_of_range = || DateError::OutOfRange { date };
        let next = date.tomorrow().map_err(|_| out_of_range())?;
        let start = date
            .to_zoned_datetime(tz.clone())
            .map_err(|_| out_of_range())?;
        let end = next
            .to_zoned_datetime(tz.clone())
            .map_err(|_| out_of_range())?;
        Ok(Self {
            date,
            start: start.timestamp(),
            end: end.timestamp(),
            day_start: start.timestamp(),
        })
    }

    /// The window cut into `n` consecutive slices of (nearly) equal length that
    /// together cover it exactly, each with the same `date`. Inner bounds fall on
    /// whole seconds, so that a database comparing times as text at a resolution of
    /// seconds places each event in exactly one slice; a window shorter than `n`
    /// seconds gives fewer slices.
    pub fn slices(&self, n: u32) -> Vec<DayWindow> {
        let n = i64::from(n.max(1));
        let (start, end) = (self.start.as_second(), self.end.as_second());
        let length = end - start;
        let mut bounds = vec![self.start];
        for i in 1..n {
            let second = start + length * i / n;
            // Every such second lies between `start` and `end`, so it is a valid
            // timestamp; a window shorter than `n` seconds repeats some, dropped here.
            if let Ok(bound) = Timestamp::from_second(second)
                && bound > *bounds.last().unwrap_or(&self.start)
                && bound < self.end
            {
                bounds.push(bound);
            }
        }
        bounds.push(self.end);
        bounds
            .windows(2)
            .map(|pair| DayWindow {
                date: self.date,
                start: pair[0],
                end: pair[1],
                day_start: self.day_start,
            })
            .collect()
    }

    /// How long the day lasts: 24 hours, or 23 or 25 on daylight-saving days.
    pub fn hours(&self) -> i64 {
        (self.end.as_second() - self.start.as_second()) / 3600
    }

    /// The day's local hours, each as a window of its own (the same `date` and
    /// `day_start`): whole hours after the day's first instant, the last cut at its
    /// end.
    pub fn local_hours(&self) -> Vec<DayWindow> {
        let mut hours = Vec::new();
        let mut start = self.day_start;
        while start < self.end {
            let end = start
                .checked_add(jiff::SignedDuration::from_hours(1))
                .map_or(self.end, |end| end.min(self.end));
            hours.push(DayWindow {
                date: self.date,
                start,
                end,
                day_start: self.day_start,
            });
            start = end;
        }
        hours
    }

    /// The local hour of the day `at` falls in, counted from its first (0 to 24);
    /// `None` outside the day.
    pub fn hour_of(&self, at: Timestamp) -> Option<u8> {
        let seconds = at.as_second() - self.day_start.as_second();
        u8::try_from(seconds.div_euclid(3600))
            .ok()
            .filter(|&h| h < 25)
    }
}

/// Days since 1970-01-01 (negative before): a distinct number for every date jiff
/// can hold (-9999-01-01 to 9999-12-31), used to count ranges and for lock keys.
///
/// Plain calendar arithmetic (Howard Hinnant's `days_from_civil`), so that it is
/// total: a date whose midnight no timestamp can hold (9999-12-31) still counts.
pub fn day_number(date: Date) -> i64 {
    let (year, month, day) = (
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn parse_date_accepts_only_the_strict_form() {
        assert_eq!(parse_date("--date", "2024-02-29"), Ok(date(2024, 2, 29)));
        for bad in [
            "2024-2-29",
            "2023-02-29",
            "20240229",
            "2024-02-29T00:00",
            " 2024-02-29",
            "",
        ] {
            assert!(
                parse_date("--date", bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn range_is_inclusive_and_ordered() {
        let range = DayRange::new(date(2024, 2, 28), date(2024, 3, 1)).unwrap();
        let days: Vec<_> = range.days().collect();
        assert_eq!(
            days,
            vec![date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1)]
        );
        assert_eq!(range.len_days(), 3);
        assert!(DayRange::new(date(2024, 3, 1), date(2024, 2, 28)).is_err());
    }

    #[test]
    fn bounds_follow_the_contract() {
        let d = date(2024, 1, 1);
        assert_eq!(DayRange::from_bounds(None, None), Ok(None));
        assert_eq!(
            DayRange::from_bounds(Some(d), None),
            Ok(Some(DayRange::single(d)))
        );
        assert_eq!(
            DayRange::from_bounds(None, Some(d)),
            Err(DateError::EndWithoutStart)
        );
    }

    #[test]
    fn daylight_saving_days_last_23_and_25_hours() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(DayWindow::new(date(2024, 3, 31), &tz).unwrap().hours(), 23);
        assert_eq!(DayWindow::new(date(2024, 10, 27), &tz).unwrap().hours(), 25);
        assert_eq!(DayWindow::new(date(2024, 6, 1), &tz).unwrap().hours(), 24);
    }

    #[test]
    fn default_range_ends_yesterday_in_the_zone() {
        // 2024-01-15 03:00 UTC is still 2024-01-14 in New York.
        let now: Timestamp = "2024-01-15T03:00:00Z".parse().unwrap();
        let ny = TimeZone::get("America/New_York").unwrap();
        let range = DayRange::ending_yesterday(now, &ny, 1).unwrap();
        assert_eq!(
            (range.start(), range.end()),
            (date(2024, 1, 13), date(2024, 1, 13))
        );
        let utc = DayRange::ending_yesterday(now, &TimeZone::UTC, 3).unwrap();
        assert_eq!(
            (utc.start(), utc.end()),
            (date(2024, 1, 12), date(2024, 1, 14))
        );
    }

    #[test]
    fn slices_cover_the_window_exactly() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let window = DayWindow::new(date(2024, 10, 27), &tz).unwrap();
        for n in [1, 2, 3, 7] {
            let slices = window.slices(n);
            assert_eq!(slices.len(), n as usize);
            assert_eq!(slices[0].start, window.start);
            assert_eq!(slices[slices.len() - 1].end, window.end);
            for pair in slices.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "no gap, no overlap");
                assert!(pair[0].start < pair[0].end);
                assert_eq!(pair[0].end.subsec_nanosecond(), 0, "whole seconds");
            }
        }
    }

    #[test]
    fn day_numbers_count_from_the_epoch() {
        assert_eq!(day_number(date(1970, 1, 1)), 0);
        assert_eq!(day_number(date(1969, 12, 31)), -1);
        assert_eq!(day_number(date(2024, 1, 1)), 19_723);
        assert_eq!(day_number(date(2000, 3, 1)), 11_017);
        // Past the last instant jiff can hold, dates still count, and apart.
        assert_eq!(day_number(date(9999, 12, 31)), 2_932_896);
        assert_eq!(day_number(date(-9999, 1, 1)), -4_371_587);
    }

    #[test]
    fn day_numbers_agree_with_jiff_wherever_a_midnight_exists() {
        let epoch = date(1970, 1, 1);
        for d in [
            date(1, 1, 1),
            date(1600, 2, 29),
            date(1900, 3, 1),
            date(2100, 12, 31),
        ] {
            let days = d
                .since((jiff::Unit::Day, epoch))
                .expect("a span")
                .get_days();
            assert_eq!(day_number(d), i64::from(days), "{d}");
        }
    }

    #[test]
    fn a_range_to_the_last_date_counts_every_day() {
        let range = DayRange::new(date(1000, 1, 1), date(9999, 12, 31)).expect("a range");
        assert_eq!(range.len_days(), 3_287_182);
        let range = DayRange::new(date(1970, 1, 1), date(9999, 12, 31)).expect("a range");
        assert_eq!(range.len_days(), 2_932_897);
    }
}
