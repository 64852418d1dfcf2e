//! PostgreSQL's connection pool under callers that hang up and databases that do not
//! answer: a connection cut off half way never serves another query, and a request
//! meets a silent database with a prompt 503.

use std::time::{Duration, Instant};

use sqlx::Connection as _;
use veris_jobs::model::DayStatus;
use veris_jobs::store::Database;
use veris_jobs::telemetry_daily::{self, RunOptions};

use crate::common::{Kind, TestDb, event, range_options};
use crate::http::{SECRET, TestServer};

/// Whether a `COPY` of the source is streaming in `database` now.
async fn copy_is_streaming(admin: &mut sqlx::PgConnection, database: &str) -> bool {
    let streaming: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY (SELECT event%'",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .expect("pg_stat_activity");
    streaming > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_cut_off_during_its_copy_leaves_every_pooled_connection_sound() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    db.insert(&[
        event("view", Some("a"), "2024-01-01T10:00:00Z", None),
        event("click", Some("b"), "2024-01-01T11:00:00Z", None),
    ])
    .await;
    // A day big enough that its COPY streams for a while.
    db.execute(
        "INSERT INTO telemetry_events (event, user_id, created_at, meta) \
         SELECT 'e' || (i % 50), 'u' || i, '2024-01-02T00:00:00Z'::timestamptz + i * interval '100 ms', \
         jsonb_build_object('k', 'v' || (i % 7)) FROM generate_series(1, 600000) AS i",
    )
    .await;
    let written = db.run(&range_options("2024-01-01", "2024-01-01")).await;
    assert_eq!(written.days[0].inserted, 2);
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();

    // Callers that hang up while their dry run's COPY streams: the run is dropped.
    for _ in 0..3 {
        let dry_run = RunOptions {
            dry_run: true,
            ..range_options("2024-01-02", "2024-01-02")
        };
        let run = telemetry_daily::run(&db.store, &dry_run);
        tokio::pin!(run);
        let streaming = async {
            while !copy_is_streaming(&mut admin, &database).await {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::select! {
            _ = &mut run => panic!("the day was read before it could be cut off"),
            () = streaming => {}
        }
    }

    // Every pooled connection answers its own query, not the end of another's.
    let Database::Postgres(pg) = db.store.database() else {
        unreachable!()
    };
    for _ in 0..32 {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_daily")
            .fetch_one(pg.pool())
            .await
            .expect("a pooled connection answers");
        assert_eq!(rows, 2);
    }

    // Every later run, on whatever pooled connection, sees the day as it is.
    for _ in 0..12 {
        let report = db.run(&range_options("2024-01-01", "2024-01-01")).await;
        let day = &report.days[0];
        assert_eq!(day.status, DayStatus::Written, "{day:?}");
        assert_eq!((day.inserted, day.unchanged), (0, 2), "{day:?}");
    }
    let recorded = db
        .strings("SELECT status FROM job_runs ORDER BY id", None)
        .await;
    assert_eq!(recorded, vec!["ok".to_owned(); 13], "every run is recorded");
}

#[tokio::test]
async fn a_run_request_meets_a_silent_database_with_a_prompt_503() {
    // A "database" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("postgres://u@{}/db", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let server = TestServer::spawn_app(&url, 366).await;
    let asked = Instant::now();
    let answer = server
        .client
        .post(server.url("/api/jobs/telemetry-daily"))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let waited = asked.elapsed();
    assert_eq!(answer.status().as_u16(), 503);
    // The pool alone would wait its 10 s for a connection.
    assert!(waited < Duration::from_secs(8), "answered after {waited:?}");
    server.stop().await;
}
