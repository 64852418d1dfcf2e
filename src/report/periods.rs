//! How a report's range is cut: days, ISO weeks (Monday to Sunday), calendar months,
//! each cut to the range; and a long range cut into runs of whole periods, to be read
//! at once.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::model::DayRange;

/// How the report's periods are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One period a day.
    #[default]
    Day,
    /// ISO weeks, Monday to Sunday.
    Week,
    /// Calendar months.
    Month,
    /// The whole range as one period.
    Range,
    /// Local hours, from `telemetry_hourly` (at most [`MAX_HOUR_REPORT_DAYS`] days).
    Hour,
}

/// The longest range a report by hour covers.
pub const MAX_HOUR_REPORT_DAYS: i64 = 31;

impl FromStr for Grouping {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "day" => Ok(Grouping::Day),
            "week" => Ok(Grouping::Week),
            "month" => Ok(Grouping::Month),
            "range" => Ok(Grouping::Range),
            "hour" => Ok(Grouping::Hour),
            other => Err(format!(
                "'{}' is not a grouping: hour, day, week, month or range",
                other.escape_debug()
            )),
        }
    }
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grouping::Day => "day",
            Grouping::Week => "week",
            Grouping::Month => "month",
            Grouping::Range => "range",
            Grouping::Hour => "hour",
        })
    }
}

/// The periods that `range` is cut into, each as (first day, last day).
pub fn periods(range: &DayRange, by: Grouping) -> Vec<(Date, Date)> {
    let mut out = Vec::new();
    let mut start = range.start();
    loop {
        let natural_end = match by {
            Grouping::Day => start,
            Grouping::Week => {
                let to_sunday = 6 - i64::from(start.weekday().to_monday_zero_offset());
                start
                    .checked_add(jiff::Span::new().days(to_sunday))
                    .unwrap_or(range.end())
            }
            Grouping::Month => start.last_of_month(),
            Grouping::Range | Grouping::Hour => range.end(),
        };
        let end = natural_end.min(range.end());
        out.push((start, end));
        match end.tomorrow() {
            Ok(next) if end < range.end() => start = next,
            _ => return out,
        }
    }
}

/// `range` cut into at most `parts` ranges of whole periods, in order, each about as
/// many periods long, so that each can be read and built on its own and the reports
/// joined with [`TelemetryReport::joined`].
pub fn split_by_periods(range: &DayRange, by: Grouping, parts: usize) -> Vec<DayRange> {
    let cuts = periods(range, by);
    let per_part = cuts.len().div_ceil(parts.max(1));
    cuts.chunks(per_part)
        .filter_map(|chunk| {
            let (first, last) = (chunk.first()?, chunk.last()?);
            // A chunk's days are within `range`, so in order and in bounds.
            DayRange::new(first.0, last.1).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{Weekday, date};

    fn range(start: &str, end: &str) -> DayRange {
        DayRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap()
    }

    #[test]
    fn periods_are_days_iso_weeks_and_months_cut_to_the_range() {
        let r = range("2024-01-03", "2024-02-05");
        assert_eq!(periods(&r, Grouping::Day).len(), 34);
        let weeks = periods(&r, Grouping::Week);
        assert_eq!(
            weeks[0],
            (date(2024, 1, 3), date(2024, 1, 7)),
            "Wednesday to Sunday"
        );
        assert_eq!(weeks[1], (date(2024, 1, 8), date(2024, 1, 14)));
        assert_eq!(weeks.last(), Some(&(date(2024, 2, 5), date(2024, 2, 5))));
        assert!(
            weeks
                .iter()
                .skip(1)
                .all(|(s, _)| s.weekday() == Weekday::Monday)
        );
        assert_eq!(
            periods(&r, Grouping::Month),
            vec![
                (date(2024, 1, 3), date(2024, 1, 31)),
                (date(2024, 2, 1), date(2024, 2, 5))
            ]
        );
        assert_eq!(
            periods(&r, Grouping::Range),
            vec![(date(2024, 1, 3), date(2024, 2, 5))]
        );
    }
}
