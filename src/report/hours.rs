//! The report by hour: one period per local hour of the range, built from the hour
//! rows (`telemetry_hourly`) as a store reads them, in hour order.
//!
//! A period's `start` and `end` are RFC 3339 instants with the zone's offset (the
//! repeated hour of an autumn day shows twice, with its two offsets). An hour is
//! `partial` when its day was last rolled up before the hour ended, and then carries
//! `asOf`, when that was.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::TelemetryReport;
use super::build::PeriodParts;
use super::periods::Grouping;
use crate::model::{DateError, DayRange, DayWindow, HourFold, HourRef, RollupRef};

/// A report by hour being built.
#[derive(Debug)]
pub struct HourReportBuilder {
    range: DayRange,
    zone: TimeZone,
    /// The local hours of the range, as `[start, end)`.
    cuts: Vec<(Timestamp, Timestamp)>,
    at: usize,
    open: PeriodParts,
    done: Vec<super::PeriodReport>,
}

impl HourReportBuilder {
    /// A report of the local hours of `range` in `zone`.
    ///
    /// # Errors
    ///
    /// [`DateError::OutOfRange`] when a day of the range cannot be cut.
    pub fn new(range: &DayRange, zone: &TimeZone) -> Result<Self, DateError> {
        let mut cuts = Vec::new();
        for date in range.days() {
            let window = DayWindow::new(date, zone)?;
            cuts.extend(
                window
                    .local_hours()
                    .iter()
                    .map(|hour| (hour.start, hour.end)),
            );
        }
        Ok(Self {
            range: *range,
            zone: zone.clone(),
            cuts,
            at: 0,
            open: PeriodParts::default(),
            done: Vec::new(),
        })
    }

    /// The instants the hours span, `[first hour's start, last hour's end)`.
    pub fn span(&self) -> (Timestamp, Timestamp) {
        match (self.cuts.first(), self.cuts.last()) {
            (Some(first), Some(last)) => (first.0, last.1),
            _ => (Timestamp::UNIX_EPOCH, Timestamp::UNIX_EPOCH),
        }
    }

    /// The report of the rows added.
    pub fn finish(mut self) -> TelemetryReport {
        while self.done.len() < self.cuts.len() {
            self.close_period();
        }
        TelemetryReport::of(&self.range, Grouping::Hour, self.done)
    }

    fn label(&self, at: Timestamp) -> String {
        at.to_zoned_datetime(self.zone.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    fn close_period(&mut self) {
        let (start, end) = self.cuts[self.done.len()];
        let parts = std::mem::take(&mut self.open);
        let (start_label, end_label) = (self.label(start), self.label(end));
        let mut period = parts.into_report(start_label, end_label, 0);
        // Rolled up before the hour was over: the hour so far.
        let read_before_end = period
            .as_of
            .as_deref()
            .and_then(|at| at.parse::<Timestamp>().ok())
            .is_some_and(|at| at < end);
        period.mark_partial(read_before_end);
        self.done.push(period);
        self.at = self.done.len();
    }
}

impl HourFold for HourReportBuilder {
    /// Takes the next row; rows must come by hour, ascending. A row outside the
    /// range's hours is left out.
    fn add(&mut self, row: HourRef<'_>) {
        while self.at < self.cuts.len() && row.hour >= self.cuts[self.at].1 {
            self.close_period();
        }
        let Some(&(start, _)) = self.cuts.get(self.at) else {
            return;
        };
        if row.hour < start {
            return;
        }
        let date = row.hour.to_zoned_datetime(self.zone.clone()).date();
        self.open.add(RollupRef {
            date,
            event: row.event,
            count: row.count,
            unique_users: row.unique_users,
            meta: "{}",
            meta_sketches: None,
            users_hll: Some(row.users_hll),
            partial: false,
            updated_at: row.updated_at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hours_of_a_range_are_its_local_clock_hours() {
        let new_york = TimeZone::get("America/New_York").unwrap();
        let spring = DayRange::single("2024-03-10".parse().unwrap());
        let autumn = DayRange::single("2024-11-03".parse().unwrap());
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        assert_eq!(
            HourReportBuilder::new(&spring, &new_york)
                .unwrap()
                .cuts
                .len(),
            23
        );
        let report = HourReportBuilder::new(&autumn, &new_york).unwrap().finish();
        assert_eq!(report.periods.len(), 25);
        let starts: Vec<&str> = report.periods[..3]
            .iter()
            .map(|p| p.start.as_str())
            .collect();
        assert_eq!(
            starts,
            [
                "2024-11-03T00:00:00-04:00",
                "2024-11-03T01:00:00-04:00",
                "2024-11-03T01:00:00-05:00"
            ]
        );
        let india = HourReportBuilder::new(&spring, &kolkata).unwrap();
        assert_eq!(india.span().0.to_string(), "2024-03-09T18:30:00Z");
    }
}
