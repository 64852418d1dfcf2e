//! The crate's only writer of raw events: `demo`'s sample, the tests' and the
//! benchmark's events; and the demo's bookkeeping, which source rows it wrote, so
//! that it can replace them and refuse to touch anything else.

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::json;
use sqlx::AssertSqlSafe;

use super::error::query_error;
use super::sqlite::sqlite_timestamp;
use super::{PgStore, SqliteStore, Store, StoreError, TableName, rows};
use crate::model::DayRange;

/// A raw event to write into the source table.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event: Option<String>,
    pub user_id: Option<String>,
    pub created_at: Timestamp,
    /// JSON text; on SQLite it may be anything, on PostgreSQL it must be valid JSON.
    pub meta: Option<String>,
}

/// The events a previous `demo` wrote, so that it can start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSample {
    pub first_id: i64,
    pub last_id: i64,
    pub start_date: Date,
    pub end_date: Date,
}

/// Events are written this many to a statement.
const INSERT_BATCH: usize = 10_000;

const REPLACING: &str = "replacing the demo sample";

fn inserting(source: &TableName) -> String {
    format!("inserting events into {source}")
}

fn counting(source: &TableName) -> String {
    format!("counting the events in {source}")
}

/// The sample that `ids`, written for `range`, make.
fn sample_of(ids: &[i64], range: &DayRange) -> DemoSample {
    DemoSample {
        first_id: ids.iter().copied().min().unwrap_or(0),
        last_id: ids.iter().copied().max().unwrap_or(-1),
        start_date: range.start(),
        end_date: range.end(),
    }
}

/// The ids a sample spans, `(0, -1)` (none) without one.
fn id_span(sample: Option<&DemoSample>) -> (i64, i64) {
    sample.map_or((0, -1), |s| (s.first_id, s.last_id))
}

fn demo_sample_row<'r, R>(row: &'r R) -> Result<DemoSample, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DemoSample {
        first_id: row.try_get(0)?,
        last_id: row.try_get(1)?,
        start_date: rows::date_column(row, 2)?,
        end_date: rows::date_column(row, 3)?,
    })
}

/// A backend's statements for the demo's bookkeeping; `{source}` stands for the
/// quoted source table.
struct DemoSql {
    /// Begins a writing transaction.
    begin: &'static str,
    /// The demo's record.
    sample: &'static str,
    /// Source events with ids outside $1..=$2.
    count_foreign: &'static str,
    /// Deletes the source events with ids in $1..=$2.
    delete_events: &'static str,
    /// Deletes the rollup rows of the days $1..=$2.
    delete_rollups: &'static str,
    /// Replaces the demo's record with (first id, last id, start, end).
    record: [&'static str; 2],
}

impl Store {
    /// Writes raw events into the source table in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is written then.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        dispatch!(self, db => {
            let sql = db.demo_sql();
            let action = inserting(&db.source);
            let mut tx = db
                .pool
                .begin_with(sql.begin)
                .await
                .map_err(query_error(&action))?;
            db.insert_events_in(&mut tx, events).await?;
            tx.commit().await.map_err(query_error(&action))
        })
    }

    /// The sample the demo last wrote, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when it cannot be read.
    pub async fn demo_sample(&self) -> Result<Option<DemoSample>, StoreError> {
        dispatch!(self, db => {
            let sql = db.demo_sql();
                    sqlx::query(sql.sample)
                .fetch_optional(&db.pool)
                .await
                .and_then(|row| row.as_ref().map(demo_sample_row).transpose())
                .map_err(query_error("reading the demo sample"))
        })
    }

    /// How many source events lie outside `sample` (all of them without one).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when they cannot be counted.
    pub async fn count_foreign_events(
        &self,
        sample: Option<&DemoSample>,
    ) -> Result<i64, StoreError> {
        dispatch!(self, db => {
            let sql = db.demo_sql();
                    let (first, last) = id_span(sample);
            sqlx::query_scalar(AssertSqlSafe(
                sql.count_foreign.replace("{source}", &db.source.quoted()),
            ))
            .bind(first)
            .bind(last)
            .fetch_one(&db.pool)
            .await
            .map_err(query_error(&counting(&db.source)))
        })
    }

    /// In one transaction: removes the `previous` demo sample's events and rollup
    /// rows, writes `events` and records them as the new sample of `range`.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing changes then.
    pub async fn replace_demo_sample(
        &self,
        previous: Option<&DemoSample>,
        events: &[NewEvent],
        range: &DayRange,
    ) -> Result<DemoSample, StoreError> {
        dispatch!(self, db => {
            let sql = db.demo_sql();
                    let mut tx = db
                .pool
                .begin_with(sql.begin)
                .await
                .map_err(query_error(REPLACING))?;
            if let Some(old) = previous {
                sqlx::query(AssertSqlSafe(
                    sql.delete_events.replace("{source}", &db.source.quoted()),
                ))
                .bind(old.first_id)
                .bind(old.last_id)
                .execute(&mut *tx)
                .await
                .map_err(query_error(REPLACING))?;
                sqlx::query(sql.delete_rollups)
                    .bind(old.start_date.to_string())
                    .bind(old.end_date.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error(REPLACING))?;
            }
            let sample = sample_of(&db.insert_events_in(&mut tx, events).await?, range);
            let [clear, record] = sql.record;
            sqlx::query(clear)
                .execute(&mut *tx)
                .await
                .map_err(query_error(REPLACING))?;
            sqlx::query(record)
                .bind(sample.first_id)
                .bind(sample.last_id)
                .bind(sample.start_date.to_string())
                .bind(sample.end_date.to_string())
                .execute(&mut *tx)
                .await
                .map_err(query_error(REPLACING))?;
            tx.commit().await.map_err(query_error(REPLACING))?;
            Ok(sample)
        })
    }
}

impl PgStore {
    /// Inserts `events` in batches, returning the ids given to them.
    async fn insert_events_in(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "INSERT INTO {} (event, user_id, created_at, meta) \
             SELECT e, u, c::timestamptz, m::jsonb \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(e, u, c, m) \
             RETURNING id",
            self.source.quoted()
        );
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(INSERT_BATCH) {
            let names: Vec<Option<&str>> = chunk.iter().map(|e| e.event.as_deref()).collect();
            let users: Vec<Option<&str>> = chunk.iter().map(|e| e.user_id.as_deref()).collect();
            let times: Vec<String> = chunk.iter().map(|e| e.created_at.to_string()).collect();
            let metas: Vec<Option<&str>> = chunk.iter().map(|e| e.meta.as_deref()).collect();
            let batch: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
                .bind(&names)
                .bind(&users)
                .bind(&times)
                .bind(&metas)
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error(&inserting(&self.source)))?;
            ids.extend(batch);
        }
        Ok(ids)
    }
}

/// PostgreSQL's statements.
const PG_DEMO: DemoSql = DemoSql {
    begin: "BEGIN",
    sample: "SELECT first_id, last_id, start_date::text, end_date::text FROM veris_demo_sample LIMIT 1",
    count_foreign: "SELECT count(*) FROM {source} WHERE NOT (id BETWEEN $1 AND $2)",
    delete_events: "DELETE FROM {source} WHERE id BETWEEN $1 AND $2",
    delete_rollups: concat!(
        "DELETE FROM ",
        rollup_table!(),
        " WHERE date BETWEEN $1::date AND $2::date"
    ),
    record: [
        "DELETE FROM veris_demo_sample",
        "INSERT INTO veris_demo_sample (first_id, last_id, start_date, end_date) \
             VALUES ($1, $2, $3::date, $4::date)",
    ],
};

impl PgStore {
    fn demo_sql(&self) -> &'static DemoSql {
        &PG_DEMO
    }
}

impl SqliteStore {
    /// Inserts `events` in batches (each passed as one JSON array), returning the
    /// ids given to them.
    async fn insert_events_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        events: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "INSERT INTO {} (event, user_id, created_at, meta) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1) \
             RETURNING id",
            self.source.quoted()
        );
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(INSERT_BATCH) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|e| json!([e.event, e.user_id, sqlite_timestamp(e.created_at), e.meta]))
                .collect();
            let batch: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
                .bind(serde_json::Value::Array(rows).to_string())
                .fetch_all(&mut *conn)
                .await
                .map_err(query_error(&inserting(&self.source)))?;
            ids.extend(batch);
        }
        Ok(ids)
    }
}

/// SQLite's statements.
const SQLITE_DEMO: DemoSql = DemoSql {
    begin: "BEGIN IMMEDIATE",
    sample: "SELECT first_id, last_id, start_date, end_date FROM veris_demo_sample LIMIT 1",
    count_foreign: "SELECT count(*) FROM {source} WHERE NOT (id BETWEEN ?1 AND ?2)",
    delete_events: "DELETE FROM {source} WHERE id BETWEEN ?1 AND ?2",
    delete_rollups: concat!(
        "DELETE FROM ",
        rollup_table!(),
        " WHERE date BETWEEN ?1 AND ?2"
    ),
    record: [
        "DELETE FROM veris_demo_sample",
        "INSERT INTO veris_demo_sample (first_id, last_id, start_date, end_date) \
             VALUES (?1, ?2, ?3, ?4)",
    ],
};

impl SqliteStore {
    fn demo_sql(&self) -> &'static DemoSql {
        &SQLITE_DEMO
    }
}
