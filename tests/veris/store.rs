//! Migrations and the source table, on both databases.

use veris_jobs::store::{Store, TableName};

use crate::common::{Kind, TestDb, event, range_options};

crate::on_both_databases!(
    migrate_is_safe_to_repeat_and_leaves_an_existing_source_table_as_it_is,
    a_schema_qualified_source_table_is_read,
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

    let (has_tenant, has_index): (bool, bool) = match &db.store {
        Store::Postgres(s) => sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'app_events' AND column_name = 'tenant'), \
                    EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'app_events' AND indexname LIKE '%created_at%')",
        )
        .fetch_one(s.pool())
        .await
        .unwrap(),
        Store::Sqlite(s) => sqlx::query_as(
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
