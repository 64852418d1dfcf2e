//! What `telemetry-purge` asks of storage: the old days that hold events, a day's
//! events counted up to an id, the record of each day's deletion (`purged_days`), and
//! the deletion itself, a batch per transaction.
//!
//! A day's events are the rows its read takes (`scan_window`): on PostgreSQL
//! `created_at` in the window; on SQLite the window's range of the UTC text form, and
//! the rows in other forms whose instant is in the window. Every statement here
//! selects exactly those rows, and only those with `id <= through`: the largest id
//! the check read.

use jiff::Timestamp;
use jiff::civil::Date;
use sqlx::AssertSqlSafe;

use super::error::query_error;
use super::sqlite_time::{self, Placement};
use super::{PgStore, SqliteStore, Store, StoreError};
use crate::model::DayWindow;

/// A day's deletion as `purged_days` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeRecord {
    /// The largest id the day's check read: nothing above it is deleted.
    pub through_id: i64,
    /// Whether the deletion ran to its end.
    pub finished: bool,
    /// Events deleted so far.
    pub events_deleted: u64,
}

/// A day's events up to an id: how many, and the largest id among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayEvents {
    pub count: u64,
    pub max_id: Option<i64>,
}

/// `purged_days`' statements; the same values in the same order on both databases.
struct PurgeSql {
    /// The record of day $1 in zone $2: through_id, finished, events_deleted.
    record: &'static str,
    /// Whether day $1 has a record in any zone.
    any_record: &'static str,
    /// Records the start of day $1 in zone $2 with bound $3 (kept if already there).
    start: &'static str,
    /// Marks day $1 in zone $2 finished.
    finish: &'static str,
    /// Adds $3 deleted events to day $1 in zone $2.
    count: &'static str,
}

const PG_PURGE: PurgeSql = PurgeSql {
    record: "SELECT through_id, finished_at IS NOT NULL, events_deleted FROM purged_days \
             WHERE date = $1::date AND timezone = $2",
    any_record: "SELECT EXISTS (SELECT 1 FROM purged_days WHERE date = $1::date)",
    start: "INSERT INTO purged_days (date, timezone, through_id) VALUES ($1::date, $2, $3) \
            ON CONFLICT (date, timezone) DO NOTHING",
    finish: "UPDATE purged_days SET finished_at = now() WHERE date = $1::date AND timezone = $2",
    count: "UPDATE purged_days SET events_deleted = events_deleted + $3 \
            WHERE date = $1::date AND timezone = $2",
};

const SQLITE_PURGE: PurgeSql = PurgeSql {
    record: "SELECT through_id, finished_at IS NOT NULL, events_deleted FROM purged_days \
             WHERE date = ?1 AND timezone = ?2",
    any_record: "SELECT EXISTS (SELECT 1 FROM purged_days WHERE date = ?1)",
    start: "INSERT INTO purged_days (date, timezone, started_at, through_id) \
            VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?3) \
            ON CONFLICT (date, timezone) DO NOTHING",
    finish: "UPDATE purged_days SET finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE date = ?1 AND timezone = ?2",
    count: "UPDATE purged_days SET events_deleted = events_deleted + ?3 \
            WHERE date = ?1 AND timezone = ?2",
};

impl PgStore {
    fn purge_sql(&self) -> &'static PurgeSql {
        &PG_PURGE
    }
}

impl SqliteStore {
    fn purge_sql(&self) -> &'static PurgeSql {
        &SQLITE_PURGE
    }
}

impl Store {
    /// The record of `date`'s deletion in `timezone`, if one started.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `purged_days` cannot be read.
    pub async fn purge_record(
        &self,
        date: Date,
        timezone: &str,
    ) -> Result<Option<PurgeRecord>, StoreError> {
        dispatch!(self, db => {
            let found: Option<(i64, bool, i64)> = sqlx::query_as(db.purge_sql().record)
                .bind(date.to_string())
                .bind(timezone)
                .fetch_optional(&db.pool)
                .await
                .map_err(query_error("reading purged_days"))?;
            Ok(found.map(|(through_id, finished, deleted)| PurgeRecord {
                through_id,
                finished,
                events_deleted: u64::try_from(deleted).unwrap_or(0),
            }))
        })
    }

    /// Whether a purge has started deleting `date`'s events (in any zone): its
    /// rollup is then the only copy of what went. No `purged_days` table means no.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `purged_days` cannot be read.
    pub async fn is_purged(&self, date: Date) -> Result<bool, StoreError> {
        let found = dispatch!(self, db => {
            sqlx::query_scalar(db.purge_sql().any_record)
                .bind(date.to_string())
                .fetch_one(&db.pool)
                .await
        });
        match found {
            // A database migrated before the purge existed has had no purge.
            Err(error) if super::error::is_missing_table(&error) => Ok(false),
            found => found.map_err(query_error("reading purged_days")),
        }
    }

    /// Records that `date`'s deletion in `timezone` starts, bounded by `through_id`;
    /// a record already there is kept as it is.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `purged_days` cannot be written.
    pub async fn start_purge(
        &self,
        date: Date,
        timezone: &str,
        through_id: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, db => {
            sqlx::query(db.purge_sql().start)
                .bind(date.to_string())
                .bind(timezone)
                .bind(through_id)
                .execute(&db.pool)
                .await
                .map(drop)
                .map_err(query_error("recording the start of a purge in purged_days"))
        })
    }

    /// Records that `date`'s deletion in `timezone` ran to its end.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when `purged_days` cannot be written.
    pub async fn finish_purge(&self, date: Date, timezone: &str) -> Result<(), StoreError> {
        dispatch!(self, db => {
            sqlx::query(db.purge_sql().finish)
                .bind(date.to_string())
                .bind(timezone)
                .execute(&db.pool)
                .await
                .map(drop)
                .map_err(query_error("recording the end of a purge in purged_days"))
        })
    }

    /// The instant of the earliest event at or after `from` and before `before`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read.
    pub async fn first_event_between(
        &self,
        from: Timestamp,
        before: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        dispatch!(self, db => db.first_event_between(from, before).await)
    }

    /// `window`'s events with `id <= through` (all when `None`): how many, and the
    /// largest id.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the source cannot be read, or has no integer `id`.
    pub async fn day_events(
        &self,
        window: &DayWindow,
        through: Option<i64>,
    ) -> Result<DayEvents, StoreError> {
        dispatch!(self, db => db.day_events(window, through.unwrap_or(i64::MAX)).await)
    }

    /// Deletes at most `batch` of `window`'s events with `id <= through` in one
    /// transaction, which also adds them to the day's count in `purged_days`.
    /// Returns how many went: 0 when none are left.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; the batch is then rolled back whole.
    pub async fn delete_batch(
        &self,
        window: &DayWindow,
        timezone: &str,
        through: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        dispatch!(self, db => db.delete_batch(window, timezone, through, batch).await)
    }
}

fn source_action(source: &super::TableName, what: &str) -> String {
    format!("{what} of {source} (telemetry-purge needs an integer id column)")
}

impl PgStore {
    async fn first_event_between(
        &self,
        from: Timestamp,
        before: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let sql = format!(
            "SELECT to_char(min(created_at) AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM {} \
             WHERE created_at >= $1::timestamptz AND created_at < $2::timestamptz",
            self.source.quoted()
        );
        let first: Option<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(from.to_string())
            .bind(before.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(query_error(&source_action(
                &self.source,
                "finding the old days",
            )))?;
        Ok(first.and_then(|at| at.parse().ok()))
    }

    async fn day_events(&self, window: &DayWindow, through: i64) -> Result<DayEvents, StoreError> {
        let sql = format!(
            "SELECT count(*), max(id)::int8 FROM {} WHERE created_at >= $1::timestamptz \
             AND created_at < $2::timestamptz AND id <= $3",
            self.source.quoted()
        );
        let (count, max_id): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(sql))
            .bind(window.start.to_string())
            .bind(window.end.to_string())
            .bind(through)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error(&source_action(
                &self.source,
                "counting a day's events",
            )))?;
        Ok(DayEvents {
            count: u64::try_from(count).unwrap_or(0),
            max_id,
        })
    }

    async fn delete_batch(
        &self,
        window: &DayWindow,
        timezone: &str,
        through: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        // Rows are found through the created_at index and deleted by their place
        // (ctid): the same plan whatever the table's other indexes.
        let sql = format!(
            "WITH gone AS (DELETE FROM {src} WHERE ctid = ANY(ARRAY(\
                SELECT ctid FROM {src} WHERE created_at >= $1::timestamptz \
                AND created_at < $2::timestamptz AND id <= $3 LIMIT $4)) RETURNING 1), \
             counted AS (UPDATE purged_days SET events_deleted = events_deleted + \
                (SELECT count(*) FROM gone) WHERE date = $5::date AND timezone = $6) \
             SELECT count(*) FROM gone",
            src = self.source.quoted()
        );
        let action = source_action(&self.source, "deleting a batch of the events");
        let deleted: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(window.start.to_string())
            .bind(window.end.to_string())
            .bind(through)
            .bind(i64::from(batch))
            .bind(window.date.to_string())
            .bind(timezone)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error(&action))?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }
}

impl SqliteStore {
    async fn first_event_between(
        &self,
        from: Timestamp,
        before: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        // The UTC form sorts in time order, and so does SQLite's own form (UTC too);
        // a form with an offset is within a day of where its text sorts. The
        // earliest text of each kind is a day that holds events; the caller looks
        // in each day from there.
        let (low, _) = sqlite_time::band_bounds(from, before);
        let sql = format!(
            "SELECT min(created_at) FROM {src} WHERE created_at >= ?1 AND created_at < ?2 \
             UNION ALL SELECT min(created_at) FROM {src} \
             WHERE created_at >= ?3 AND created_at < ?2 AND {not_utc}",
            src = self.source.quoted(),
            not_utc = sqlite_time::NOT_UTC_FORM,
        );
        let firsts: Vec<Option<String>> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(super::sqlite::sqlite_bound(from))
            .bind(super::sqlite::sqlite_bound(before))
            .bind(low)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error(&source_action(
                &self.source,
                "finding the old days",
            )))?;
        Ok(firsts
            .into_iter()
            .flatten()
            .filter_map(|text| first_instant(&text))
            .map(|at| at.max(from))
            .filter(|at| *at < before)
            .min())
    }

    async fn day_events(&self, window: &DayWindow, through: i64) -> Result<DayEvents, StoreError> {
        let action = source_action(&self.source, "counting a day's events");
        let (start, end) = (
            super::sqlite::sqlite_bound(window.start),
            super::sqlite::sqlite_bound(window.end),
        );
        // The rows of the UTC range that the read places elsewhere (another form
        // that sorts here) are counted with the band below, as the read does.
        let sql = format!(
            "SELECT count(*), max(id) FROM {} WHERE created_at >= ?1 AND created_at < ?2 \
             AND id <= ?3 AND NOT ({})",
            self.source.quoted(),
            sqlite_time::NOT_UTC_FORM
        );
        let (count, max_id): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&start)
            .bind(&end)
            .bind(through)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error(&action))?;
        let mut events = DayEvents {
            count: u64::try_from(count).unwrap_or(0),
            max_id,
        };
        for (id, _) in self.band_rows(window, through, &action).await? {
            events.count += 1;
            events.max_id = events.max_id.max(Some(id));
        }
        Ok(events)
    }

    /// The rows in a form other than UTC's whose instant is in `window`, with
    /// `id <= through`: id and `created_at`.
    async fn band_rows(
        &self,
        window: &DayWindow,
        through: i64,
        action: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let (low, high) = sqlite_time::band_bounds(window.start, window.end);
        let sql = format!(
            "SELECT id, created_at FROM {} WHERE created_at >= ?1 AND created_at < ?2 \
             AND {} AND id <= ?3",
            self.source.quoted(),
            sqlite_time::NOT_UTC_FORM
        );
        let rows: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(low)
            .bind(high)
            .bind(through)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error(action))?;
        Ok(rows
            .into_iter()
            .filter(|(_, at)| {
                matches!(
                    sqlite_time::place_in_band(Some(at.as_bytes()), window.start, window.end),
                    Placement::Inside(_)
                )
            })
            .collect())
    }

    async fn delete_batch(
        &self,
        window: &DayWindow,
        timezone: &str,
        through: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let action = source_action(&self.source, "deleting a batch of the events");
        let src = self.source.quoted();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_error(&action))?;
        let in_range = format!(
            "DELETE FROM {src} WHERE id IN (SELECT id FROM {src} WHERE created_at >= ?1 \
             AND created_at < ?2 AND id <= ?3 AND NOT ({}) LIMIT ?4)",
            sqlite_time::NOT_UTC_FORM
        );
        let mut deleted = sqlx::query(AssertSqlSafe(in_range))
            .bind(super::sqlite::sqlite_bound(window.start))
            .bind(super::sqlite::sqlite_bound(window.end))
            .bind(through)
            .bind(i64::from(batch))
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?
            .rows_affected();
        if deleted == 0 {
            // The UTC range is done: the rows in other forms go last, by id.
            let ids: Vec<i64> = self
                .band_rows(window, through, &action)
                .await?
                .into_iter()
                .take(batch as usize)
                .map(|(id, _)| id)
                .collect();
            let by_id = format!("DELETE FROM {src} WHERE id = ?1");
            for id in ids {
                deleted += sqlx::query(AssertSqlSafe(by_id.as_str()))
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error(&action))?
                    .rows_affected();
            }
        }
        sqlx::query(SQLITE_PURGE.count)
            .bind(window.date.to_string())
            .bind(timezone)
            .bind(i64::try_from(deleted).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(query_error(&action))?;
        tx.commit().await.map_err(query_error(&action))?;
        Ok(deleted)
    }
}

/// The instant a `created_at` text names, or for text that is none (counted as
/// `invalid_created_at` by its day) the start of the UTC date it begins with.
fn first_instant(text: &str) -> Option<Timestamp> {
    sqlite_time::parse_created_at(text.as_bytes()).or_else(|| {
        let date: Date = text.get(..10)?.parse().ok()?;
        date.to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|zoned| zoned.timestamp())
    })
}
