//! Migrations and the source table, on both databases.

use veris_jobs::store::{Database, PgStore, READS_AT_ONCE, TableName};

use crate::common::{Kind, TestDb, default_table, event, range_options};

crate::on_both_databases!(
    migrate_is_safe_to_repeat_and_leaves_an_existing_source_table_as_it_is,
    a_schema_qualified_source_table_is_read,
    every_fraction_digit_count_lands_in_its_own_day_in_every_zone,
    table_names_differing_in_case_follow_the_database_and_migrate_repeats,
);

async fn migrate_is_safe_to_repeat_and_leaves_an_existing_source_table_as_it_is(db: TestDb) {
    let custom = match db.kind {
        Kind::Postgres => {
            "CREATE TABLE app_events (id bigserial PRIMARY KEY, event text, user_id text, \
                           created_at timestamptz NOT NULL, meta jsonb, tenant text)"
        }
        Kind::Sqlite => {
            "CREATE TABLE app_events (id integer PRIMARY KEY, event text, user_id text, \
                         created_at text, meta text, tenant text)"
        }
    };
    db.execute(custom).await;
    let table = TableName::parse("app_events").unwrap();
    let store = db.second_store(&table).await;
    store.migrate().await.expect("first migrate");
    store.migrate().await.expect("second migrate");
    db.store
        .migrate()
        .await
        .expect("migrate with the default table again");

    let (has_tenant, has_index): (bool, bool) = match db.store.database() {
        Database::Postgres(s) => sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'app_events' AND column_name = 'tenant'), \
                    EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'app_events' AND indexname LIKE '%created_at%')",
        )
        .fetch_one(s.pool())
        .await
        .unwrap(),
        Database::Sqlite(s) => sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('app_events') WHERE name = 'tenant'), \
                    EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = 'app_events')",
        )
        .fetch_one(s.pool())
        .await
        .unwrap(),
    };
    assert!(has_tenant, "the existing table keeps its columns");
    assert!(!has_index, "no index is added to an existing table");

    store
        .insert_events(&[event("e", None, "2024-01-01T00:00:00Z", None)])
        .await
        .unwrap();
    let report =
        veris_jobs::telemetry_daily::run(&store, &range_options("2024-01-01", "2024-01-01"))
            .await
            .unwrap();
    assert_eq!(report.totals.rows, 1);
}

/// PostgreSQL keeps quoted names apart by case; SQLite's names are one table
/// whatever the case, and `migrate` under the other case finds it.
async fn table_names_differing_in_case_follow_the_database_and_migrate_repeats(db: TestDb) {
    let upper = db.second_store(&TableName::parse("Events").unwrap()).await;
    let lower = db.second_store(&TableName::parse("events").unwrap()).await;
    upper.migrate().await.expect("migrate Events");
    lower.migrate().await.expect("migrate events after Events");
    upper.migrate().await.expect("migrate Events again");
    upper
        .insert_events(&[event("e", Some("u"), "2024-01-01T00:00:00Z", None)])
        .await
        .unwrap();
    let report =
        veris_jobs::telemetry_daily::run(&lower, &range_options("2024-01-01", "2024-01-01"))
            .await
            .unwrap();
    let expected = match db.kind {
        Kind::Postgres => 0,
        Kind::Sqlite => 1,
    };
    assert_eq!(report.totals.events_read, expected, "{report:?}");
}

async fn a_schema_qualified_source_table_is_read(db: TestDb) {
    let name = match db.kind {
        Kind::Postgres => {
            db.execute("CREATE SCHEMA app").await;
            "app.events"
        }
        Kind::Sqlite => "main.events",
    };
    let table = TableName::parse(name).unwrap();
    let store = db.second_store(&table).await;
    store
        .migrate()
        .await
        .expect("migrate creates the qualified table");
    store
        .insert_events(&[event("e", Some("u"), "2024-01-01T00:00:00Z", None)])
        .await
        .unwrap();
    let report =
        veris_jobs::telemetry_daily::run(&store, &range_options("2024-01-01", "2024-01-01"))
            .await
            .unwrap();
    assert_eq!(report.totals.events_read, 1);
    assert_eq!(db.rollups().await.len(), 1);
}

/// `created_at` text of `at` with `digits` fractional digits (0: none), as an
/// application might have stored it.
fn with_digits(at: jiff::Timestamp, digits: u32) -> String {
    let whole = at.strftime("%Y-%m-%dT%H:%M:%S");
    if digits == 0 {
        return format!("{whole}Z");
    }
    let nanos = format!("{:09}", at.subsec_nanosecond());
    format!("{whole}.{}Z", &nanos[..digits as usize])
}

async fn every_fraction_digit_count_lands_in_its_own_day_in_every_zone(db: TestDb) {
    use jiff::{SignedDuration, tz::TimeZone};
    use veris_jobs::model::DayWindow;
    use veris_jobs::rollup::DayAggregate;

    // PostgreSQL keeps microseconds; SQLite keeps the text as it was written.
    let max_digits = if db.kind == Kind::Postgres { 6 } else { 9 };
    let zones = [
        "UTC",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
    ];
    let day: jiff::civil::Date = "2024-03-10".parse().unwrap(); // New York springs forward
    let mut expected = Vec::new();
    for (z, zone) in zones.iter().enumerate() {
        let tz = TimeZone::get(zone).unwrap();
        let window = DayWindow::new(day, &tz).unwrap();
        for (edge, bound, before, after) in [
            ("start", window.start, day.yesterday().unwrap(), day),
            ("end", window.end, day, day.tomorrow().unwrap()),
        ] {
            for digits in 0..=max_digits {
                let step = SignedDuration::from_nanos(10i64.pow(9 - digits));
                for (when, at, date) in [
                    ("before", bound - step, before),
                    ("at", bound, after),
                    ("after", bound + step, after),
                ] {
                    let name = format!("z{z}_{edge}_{when}_{digits}");
                    let created_at = with_digits(at, digits);
                    db.execute(&format!(
                        "INSERT INTO telemetry_events (event, user_id, created_at, meta) \
                         VALUES ('{name}', 'u', '{created_at}', NULL)"
                    ))
                    .await;
                    expected.push((z, name, date));
                }
            }
        }
    }
    for (z, zone) in zones.iter().enumerate() {
        let tz = TimeZone::get(zone).unwrap();
        let mut landed = std::collections::BTreeMap::new();
        for date in [day.yesterday().unwrap(), day, day.tomorrow().unwrap()] {
            let window = DayWindow::new(date, &tz).unwrap();
            let mut whole = DayAggregate::new();
            db.store.scan_window(&window, &mut whole).await.unwrap();
            let rows = whole.finish(20).unwrap().rows;
            // The same day read in slices places every event once too.
            let mut sliced = DayAggregate::new();
            for slice in window.slices(7) {
                db.store.scan_window(&slice, &mut sliced).await.unwrap();
            }
            assert_eq!(
                sliced.finish(20).unwrap().rows,
                rows,
                "{zone} {date} in slices"
            );
            for row in rows {
                assert_eq!(row.count, 1, "{} counted once", row.event);
                if row.event.starts_with(&format!("z{z}_")) {
                    let name = row.event.clone();
                    assert!(
                        landed.insert(row.event, date).is_none(),
                        "{name} in two days"
                    );
                }
            }
        }
        for (_, name, date) in expected.iter().filter(|(ez, _, _)| *ez == z) {
            assert_eq!(landed.get(name), Some(date), "{zone}: {name}");
        }
    }
}

/// Over TLS this driver takes about 90 ms a handshake: the connections a report's
/// parts read on are opened while the server is checked, not one after another.
#[tokio::test]
async fn connecting_opens_a_pooled_connection_for_each_query_run_at_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = PgStore::connect(&db.url, &default_table()).await.unwrap();
    assert_eq!(store.pool().size() as usize, READS_AT_ONCE);
    store.pool().close().await;
}

/// The users' sketches are stored as they are: a full sketch whose registers are
/// mostly empty, which PostgreSQL's default compression would shrink, is kept whole
/// in the day's row and in the hour's (compression gains next to nothing on most
/// sketches and costs the write its time).
#[tokio::test]
async fn postgres_stores_the_users_sketches_uncompressed() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    // 10,000 users in one hour: more than 8,192 of the 32,768 registers filled, so
    // full (20,483 bytes), and most of them still empty.
    let events: Vec<_> = (0..10_000)
        .map(|n| {
            event(
                "e",
                Some(&format!("user-{n}")),
                "2024-01-01T05:00:00Z",
                None,
            )
        })
        .collect();
    db.insert(&events).await;
    let report = db.run(&range_options("2024-01-01", "2024-01-01")).await;
    assert!(report.ok, "{report:?}");
    let Database::Postgres(pg) = db.store.database() else {
        unreachable!()
    };
    for table in ["telemetry_daily", "telemetry_hourly"] {
        let (length, compression): (i32, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(
            format!("SELECT length(users_hll), pg_column_compression(users_hll) FROM {table}"),
        ))
        .fetch_one(pg.pool())
        .await
        .unwrap();
        assert_eq!(length, 20_483, "{table}: a full sketch");
        assert_eq!(
            compression, None,
            "{table}: the sketch is stored uncompressed"
        );
    }
}
