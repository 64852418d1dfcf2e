//! What the service shows and what it holds on to: no password in any message, no
//! address in what HTTP callers or the run history see, no range past its cap, no
//! lock table filled by a backfill, no answer held for a client that never reads.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use veris_jobs::config::CronSecret;
use veris_jobs::http::AppState;
use veris_jobs::store::Database;
use veris_jobs::telemetry_daily::{LOCKED_AT_ONCE, RunOptions};

use crate::cli::{stderr, veris};
use crate::common::{Kind, TestDb, event, range_options};
use crate::http::{SECRET, TestServer};

const PASSWORD: &str = "hunter2-pass";

#[tokio::test]
async fn passwords_in_a_query_string_or_unencoded_never_reach_a_message() {
    // Nothing listens on port 9: every command fails to connect and says so.
    for url in [
        format!("postgres://alice@127.0.0.1:9/veris?password={PASSWORD}"),
        format!("postgres://alice:{PASSWORD}/x@127.0.0.1:9/veris"),
        format!("postgres://alice:{PASSWORD}?x@127.0.0.1:9/veris"),
        format!("postgres://alice:{PASSWORD}#x@127.0.0.1:9/veris"),
    ] {
        for args in [&["runs"][..], &["telemetry-daily", "--date", "2024-01-01"]] {
            let output = veris(&url, args);
            assert_ne!(output.status.code(), Some(0));
            let message = stderr(&output);
            assert!(!message.contains("hunter2"), "{url}: {message}");
            assert!(!message.is_empty());
        }
    }
}

#[tokio::test]
async fn a_clickhouse_password_is_neither_printed_nor_stored_in_the_run_history() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let source = format!("clickhouse://reader@127.0.0.1:9/analytics?password={PASSWORD}");
    let output = veris(
        &db.url,
        &[
            "telemetry-daily",
            "--date",
            "2024-01-01",
            "--source-url",
            &source,
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    let stored = db
        .strings("SELECT report FROM job_runs", None)
        .await
        .join("\n");
    assert!(
        stored.contains("cannot reach the source of events"),
        "{stored}"
    );
    for secret in ["hunter2", "127.0.0.1:9", "reader@", "analytics"] {
        assert!(
            !stored.contains(secret),
            "{secret} in the history: {stored}"
        );
    }
    let listed = veris(&db.url, &["runs", "--json"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("hunter2"));
}

#[tokio::test]
async fn a_503_names_no_host_user_or_database() {
    let url = format!("postgres://alice@127.0.0.1:9/secretdb?password={PASSWORD}");
    let server = TestServer::spawn_app(&url, 366).await;
    for path in [
        "/api/jobs/telemetry-daily",
        "/api/jobs/runs",
        "/api/telemetry/report",
    ] {
        let answer = server
            .authed(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body = answer.text().await.unwrap();
        for detail in ["hunter2", "alice", "127.0.0.1", "secretdb"] {
            assert!(!body.contains(detail), "{path} names {detail}: {body}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn ranges_to_the_last_date_count_every_day_and_are_refused() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let server = TestServer::spawn_app(&db.url, 366).await;
    for (path, days) in [
        (
            "/api/telemetry/report?startDate=1970-01-01&endDate=9999-12-31&by=day",
            "2932897",
        ),
        (
            "/api/jobs/telemetry-daily?startDate=1000-01-01&endDate=9999-12-31&dryRun=true",
            "3287182",
        ),
    ] {
        let answer = server
            .authed(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "range_too_long", "{body}");
        let message = body["error"]["message"].as_str().unwrap().replace(',', "");
        assert!(message.contains(days), "{path}: {message}");
    }
    server.stop().await;

    // The command line has no cap, but a range ending past the last day that can be
    // cut is refused before anything is done.
    let started = std::time::Instant::now();
    let output = veris(
        &db.url,
        &[
            "telemetry-daily",
            "--start-date",
            "1970-01-01",
            "--end-date",
            "9999-12-31",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("9999-12-31"),
        "{}",
        stderr(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backfill_holds_no_more_than_a_batch_of_day_locks_at_once() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    db.insert(&[
        event("e", Some("u"), "2023-01-01T10:00:00Z", None),
        event("e", Some("u"), "2023-12-31T10:00:00Z", None),
    ])
    .await;
    let Database::Postgres(pg) = db.store.database() else {
        unreachable!()
    };
    let watcher = pg.pool().clone();
    let done = Arc::new(AtomicBool::new(false));
    let watching = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut most = 0i64;
            while !done.load(Ordering::Relaxed) {
                let held: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .fetch_one(&watcher)
                .await;
                most = most.max(held.unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        }
    });
    let report = db.run(&range_options("2023-01-01", "2023-12-31")).await;
    done.store(true, Ordering::Relaxed);
    let most = watching.await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.days.len(), 365);
    assert_eq!(report.totals.rows, 2);
    assert!(most > 0, "the watcher saw the run hold its days");
    assert!(
        most <= 31,
        "{most} day locks held at once (at most {LOCKED_AT_ONCE})"
    );
}

#[tokio::test]
async fn a_read_only_secret_equal_to_the_cron_secret_or_a_non_ascii_secret_is_refused() {
    for (cron, read) in [
        (SECRET, Some(SECRET)),
        ("ééééééééééééééééééééé", None),
        ("0123456789abcdef\u{7}x", None),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("CRON_SECRET", cron)
            .env("DATABASE_URL", "sqlite:///nonexistent/never-opened.db")
            .env_remove("READ_SECRET");
        if let Some(read) = read {
            command.env("READ_SECRET", read);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{cron:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!message.contains(cron), "{message}");
        assert!(message.contains("SECRET"), "{message}");
    }
}

#[tokio::test]
async fn answers_are_not_cached_and_a_long_uri_gets_a_json_414() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let server = TestServer::spawn_app(&db.url, 366).await;
    for path in [
        "/api/jobs/runs",
        "/api/telemetry/report",
        "/metrics",
        "/healthz",
    ] {
        let answer = server
            .authed(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        assert_eq!(answer.headers()["cache-control"], "no-store", "{path}");
    }
    let refused = server
        .authed(reqwest::Method::GET, "/api/jobs/telemetry-daily")
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let long = format!("/api/telemetry/report?event={}", "x".repeat(9000));
    let answer = server
        .authed(reqwest::Method::GET, &long)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::URI_TOO_LONG);
    let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "uri_too_long");
    server.stop().await;
}

#[tokio::test]
async fn an_event_filter_holding_a_nul_is_an_ordinary_report_on_postgres() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let server = TestServer::spawn_app(&db.url, 366).await;
    let answer = server
        .authed(
            reqwest::Method::GET,
            "/api/telemetry/report?startDate=2024-01-01&event=%00",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["periods"][0]["events"], serde_json::json!([]));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_answer_is_cut_off() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    // A year of rollups with long summaries: an answer of tens of megabytes, more
    // than the sockets' buffers hold.
    let meta = format!(
        r#"{{"{}":{{"n":1,"values":{{"v":1}},"other":0}}}}"#,
        "k".repeat(900)
    );
    db.execute(&format!(
        "WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 365), \
         e(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM e WHERE j < 59) \
         INSERT INTO telemetry_daily (date, event, count, unique_users, meta, updated_at) \
         SELECT date('2024-01-01', '+' || i || ' days'), 'event_' || j, 1, 1, '{meta}', '' \
         FROM d, e"
    ))
    .await;
    let state = AppState::new(
        db.store.clone(),
        RunOptions::default(),
        366,
        CronSecret::new(SECRET).unwrap(),
    )
    .with_write_timeout(Duration::from_millis(500));
    let server = TestServer::start_with(state).await;
    let path = "/api/telemetry/report?startDate=2024-01-01&endDate=2024-12-31";
    let whole = server
        .authed(reqwest::Method::GET, path)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n\r\n"
    )
    .unwrap();
    // Read nothing until the server has given up, then whatever it sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // On a thread of its own: the server runs on this test's runtime.
    let received = tokio::task::spawn_blocking(move || {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        received
    })
    .await
    .unwrap();
    let head = String::from_utf8_lossy(&received[..received.len().min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        received.len() < whole,
        "{} of {whole} bytes: the whole answer waited for the client",
        received.len()
    );
    server.stop().await;
}

crate::on_both_databases!(a_day_that_fails_after_its_read_reports_the_events_it_read);

async fn a_day_that_fails_after_its_read_reports_the_events_it_read(db: TestDb) {
    db.insert(&[
        event("e", Some("u"), "2024-02-01T10:00:00Z", None),
        event("e", Some("v"), "2024-02-01T11:00:00Z", None),
        event("f", None, "2024-02-01T12:00:00Z", None),
    ])
    .await;
    // The day's write is refused by the database.
    match db.kind {
        Kind::Sqlite => {
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON telemetry_daily \
                 BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
            )
            .await;
        }
        Kind::Postgres => {
            db.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$; \
                 CREATE TRIGGER refuse BEFORE INSERT ON telemetry_daily \
                 FOR EACH ROW EXECUTE FUNCTION refuse()",
            )
            .await;
        }
    }
    let report = db.run(&range_options("2024-02-01", "2024-02-01")).await;
    let day = &report.days[0];
    assert_eq!(day.status, veris_jobs::model::DayStatus::Failed, "{day:?}");
    assert!(
        day.error
            .as_deref()
            .unwrap_or_default()
            .contains("refused by a trigger"),
        "{day:?}"
    );
    assert_eq!(day.events_read, 3, "{day:?}");
}

#[tokio::test]
async fn demo_leaves_no_write_ahead_log_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("veris.db");
    let output = veris(&format!("sqlite://{}", db.display()), &["demo"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let wal = dir.path().join("veris.db-wal");
    let left = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(left, 0, "{} bytes of write-ahead log left", left);
}
