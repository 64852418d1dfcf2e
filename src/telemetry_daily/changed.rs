//! `--changed`: the days before a run's range that received source rows since the
//! last successful `--changed` run, found by the source's `id` watermark.

use std::collections::BTreeSet;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::model::{ChangedDays, DayRange, JOB_NAME};
use crate::store::{Store, StoreError};

/// What `--changed` adds to a run: the earlier days, and the watermark to record.
pub(super) struct Changed {
    pub(super) since_id: Option<i64>,
    pub(super) through_id: i64,
    pub(super) earlier: Vec<Date>,
}

impl Changed {
    /// Finds the days before `range` that received source rows with ids above the
    /// last recorded watermark. The watermark is read before any day is, so rows
    /// arriving during this run are left for the next one.
    pub(super) async fn find(
        store: &Store,
        range: &DayRange,
        zone: &TimeZone,
    ) -> Result<Self, StoreError> {
        let through_id = store.id_watermark().await?.unwrap_or(0);
        let since_id = store.last_watermark(JOB_NAME).await?;
        let mut earlier = BTreeSet::new();
        match since_id {
            Some(since) if since < through_id => {
                // An hour of UTC can straddle two local days (zones with offsets of :30
                // or :45): both its first and last instant are placed.
                let last_instant = jiff::SignedDuration::from_nanos(3_600_000_000_000 - 1);
                for hour in store.hours_with_ids(since, through_id).await? {
                    for instant in [Some(hour), hour.checked_add(last_instant).ok()]
                        .into_iter()
                        .flatten()
                    {
                        let date = instant.to_zoned_datetime(zone.clone()).date();
                        if date < range.start() {
                            earlier.insert(date);
                        }
                    }
                }
            }
            Some(_) => {}
            None => tracing::info!(
                through_id,
                "--changed: no earlier successful --changed run to compare with; \
                 this run records the watermark the next one starts from"
            ),
        }
        Ok(Self {
            since_id,
            through_id,
            earlier: earlier.into_iter().collect(),
        })
    }

    /// What the run report says of it.
    pub(super) fn to_report(&self) -> ChangedDays {
        ChangedDays {
            since_id: self.since_id,
            through_id: self.through_id,
            earlier_days: self.earlier.iter().map(Date::to_string).collect(),
        }
    }
}
