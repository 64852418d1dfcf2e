//! What an attacker (or an unlucky operator) must not be able to do: make one request
//! take unbounded memory, block every run through the lock file, write a day two runs
//! hold, hold unbounded connections or runs, have an ambiguous request guessed at,
//! start a server whose secret can never match, or read a password from `--help`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use veris_jobs::config::CronSecret;
use veris_jobs::http::AppState;
use veris_jobs::launcher::Launcher;
use veris_jobs::model::{DayRange, RunReport};
use veris_jobs::store::{Database, Store, StoreError, TableName};
use veris_jobs::telemetry_daily::RunOptions;

use crate::common::{Kind, TestDb, event, range_options};
use crate::http::{JOB, SECRET, TestServer};

crate::on_both_databases!(
    the_runs_listing_is_capped_and_carries_summaries_not_reports,
    the_run_history_keeps_the_newest_runs_and_the_last_watermark,
);

fn state(store: Store) -> AppState {
    AppState::new(
        store,
        RunOptions::default(),
        366,
        CronSecret::new(SECRET).unwrap(),
    )
}

/// A run's report of `days` failed days with long errors: what a big run stores.
fn long_report(days: u32) -> RunReport {
    let mut report: RunReport = serde_json::from_value(serde_json::json!({
        "job": "telemetry-daily", "dryRun": false, "ok": false,
        "startDate": "2024-01-01", "endDate": "2024-12-31", "timezone": "UTC",
        "days": [], "totals": {"eventsRead": 0, "eventsSkipped": 0, "rows": 0,
        "inserted": 0, "updated": 0, "deleted": 0, "unchanged": 0}, "durationMs": 1
    }))
    .unwrap();
    for day in 0..days {
        report.days.push(
            serde_json::from_value(serde_json::json!({
                "date": format!("2024-01-{:02}", day % 28 + 1), "status": "failed",
                "eventsRead": 0, "eventsSkipped": 0, "skipped": {}, "rows": 0, "inserted": 0,
                "updated": 0, "deleted": 0, "unchanged": 0, "durationMs": 1,
                "error": "x".repeat(1_000)
            }))
            .unwrap(),
        );
    }
    report.summarize();
    report
}

async fn the_runs_listing_is_capped_and_carries_summaries_not_reports(db: TestDb) {
    // 120 runs of 366 failed days each: 44 MB of stored reports.
    let report = long_report(366);
    let run = veris_jobs::model::NewRun {
        job: "telemetry-daily".into(),
        trigger: veris_jobs::model::Trigger::Http,
        range: DayRange::new("2024-01-01".parse().unwrap(), "2024-12-31".parse().unwrap()).unwrap(),
        timezone: "UTC".into(),
        days_total: 366,
        source_watermark: None,
    };
    let mut last = 0;
    for _ in 0..120 {
        last = db.store.start_run(&run).await.unwrap();
        db.store.finish_run(last, 0, &report).await.unwrap();
    }
    let server = TestServer::spawn_app(&db.url, 366).await;
    let get = |path: &str| server.authed(reqwest::Method::GET, path).send();

    let listing = get("/api/jobs/runs?limit=100").await.unwrap();
    assert_eq!(listing.status(), StatusCode::OK);
    let bytes = listing.bytes().await.unwrap();
    assert!(bytes.len() < 600_000, "100 runs in {} bytes", bytes.len());
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 100);
    assert!(runs[0].get("report").is_none(), "no report in a listing");
    let summary = &runs[0]["summary"];
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["failedDaysTotal"], 366);
    assert_eq!(summary["failedDays"].as_array().unwrap().len(), 10);
    assert_eq!(
        summary["failedDays"][0]["error"].as_str().unwrap().len(),
        300
    );

    // One run by its id, with the whole report.
    let one: Value = serde_json::from_slice(
        &get(&format!("/api/jobs/runs/{last}"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(one["id"], last);
    assert_eq!(one["report"]["days"].as_array().unwrap().len(), 366);
    for (path, status, code) in [
        ("/api/jobs/runs/999999", 404, "run_not_found"),
        ("/api/jobs/runs/abc", 404, "run_not_found"),
        ("/api/jobs/runs?limit=101", 400, "invalid_limit"),
        ("/api/jobs/runs?limit=1&limit=2", 400, "invalid_query"),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let error: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(error["error"]["code"], code, "{path}");
    }
    // HEAD reads nothing: it is not served as a GET.
    for path in ["/api/jobs/runs", "/metrics", JOB, "/healthz"] {
        let head = server
            .authed(reqwest::Method::HEAD, path)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status().as_u16(), 405, "HEAD {path}");
    }
    // The command line lists the same, and shows one run whole.
    let listed = crate::cli::veris(&db.url, &["runs", "--limit", "100", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 100);
    let whole = crate::cli::veris(&db.url, &["runs", "--id", &last.to_string(), "--json"]);
    let whole: Value = serde_json::from_slice(&whole.stdout).unwrap();
    assert_eq!(whole["report"]["days"].as_array().unwrap().len(), 366);
    let too_many = crate::cli::veris(&db.url, &["runs", "--limit", "101"]);
    assert_eq!(too_many.status.code(), Some(2));
    server.stop().await;
}

async fn the_run_history_keeps_the_newest_runs_and_the_last_watermark(db: TestDb) {
    db.insert(&[event("e", Some("u"), "2024-01-01T10:00:00Z", None)])
        .await;
    // A --changed run records the watermark the next one starts from.
    let changed = RunOptions {
        changed: true,
        keep_runs: 3,
        ..range_options("2024-01-01", "2024-01-01")
    };
    db.run(&changed).await;
    for day in ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"] {
        db.run(&RunOptions {
            keep_runs: 3,
            ..range_options(day, day)
        })
        .await;
    }
    let runs = db.store.recent_runs(100).await.unwrap();
    let starts: Vec<&str> = runs.iter().map(|r| r.start_date.as_str()).collect();
    assert_eq!(
        starts,
        ["2024-01-05", "2024-01-04", "2024-01-03", "2024-01-01"],
        "the newest three, and the run holding the last --changed watermark"
    );
    assert!(runs[3].source_watermark.is_some());
}

#[tokio::test]
async fn the_sqlite_lock_file_is_private_and_a_shared_lock_is_not_a_busy_day() {
    use std::os::unix::fs::PermissionsExt as _;
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let day: jiff::civil::Date = "2024-01-01".parse().unwrap();
    let locks = db.store.lock_days(&[day], Duration::ZERO).await.unwrap();
    let path = format!("{}.veris-lock", db.url.trim_start_matches("sqlite://"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the lock file is its owner's alone");
    locks.release().await;

    // Another program takes a shared lock on the day's byte (as anyone who could read
    // the file could): a run must say it cannot lock, not that the day is busy.
    let offset = veris_jobs::model::day_number(day) + 4_000_000;
    let mut holder = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl, os, sys, time\n\
             fd = os.open({path:?}, os.O_RDONLY)\n\
             fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, {offset})\n\
             print('locked', flush=True)\n\
             time.sleep(30)\n"
        ))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdout = holder.stdout.take().unwrap();
    let mut line = [0u8; 6];
    stdout.read_exact(&mut line).await.unwrap();
    let error = db
        .store
        .lock_days(&[day], Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::LockFile { .. })
            && error
                .to_string()
                .contains("another program holds a shared lock"),
        "{error}"
    );
    // Over HTTP: 503, and the body does not give the server's path away.
    let server = TestServer::start_with(state(db.store.clone())).await;
    let (status, body) = server.post_json(r#"{"startDate":"2024-01-01"}"#).await;
    assert_eq!(status.as_u16(), 503, "{body}");
    assert_eq!(body["error"]["code"], "locks_unavailable");
    assert!(!body.to_string().contains("veris-lock"), "{body}");
    server.stop().await;
    holder.kill().await.unwrap();
}

#[tokio::test]
async fn a_symbolic_link_to_the_database_shares_its_locks_and_a_replaced_lock_file_stops_writes() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let real = db.url.trim_start_matches("sqlite://").to_owned();
    let link = format!("{real}-link.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let through_link = Store::connect(
        &format!("sqlite://{link}"),
        &TableName::parse("telemetry_events").unwrap(),
    )
    .await
    .unwrap();
    let day: jiff::civil::Date = "2024-01-01".parse().unwrap();
    let mut held = db.store.lock_days(&[day], Duration::ZERO).await.unwrap();
    let busy = through_link
        .lock_days(&[day], Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(busy, StoreError::DayBusy { .. }), "{busy}");
    held.verify().await.unwrap();

    // The lock file moved away while held: a second run could lock a new one, so the
    // holder must notice before it writes.
    std::fs::rename(format!("{real}.veris-lock"), format!("{real}.moved")).unwrap();
    let mut second = through_link
        .lock_days(&[day], Duration::ZERO)
        .await
        .unwrap();
    let lost = held.verify().await.unwrap_err();
    assert!(matches!(lost, StoreError::LockLost(_)), "{lost}");
    second.verify().await.unwrap();
}

#[tokio::test]
async fn a_terminated_lock_session_stops_the_run_before_it_writes() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let mut events = Vec::new();
    for day in 1..=3 {
        for i in 0..40_000 {
            events.push(event(
                &format!("e{}", i % 9),
                Some(&format!("u{i}")),
                &format!("2024-06-0{day}T{:02}:00:00Z", i % 24),
                Some(r#"{"plan":"pro"}"#),
            ));
        }
    }
    db.insert(&events).await;
    // Until the lock session is gone, the run cannot read (so cannot finish) a day:
    // a transaction of the test's own holds the source table.
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE telemetry_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let store = db.store.clone();
    let run = tokio::spawn(async move {
        veris_jobs::telemetry_daily::run(&store, &range_options("2024-06-01", "2024-06-03"))
            .await
            .unwrap()
    });
    // The run's lock session, as soon as it holds the days.
    let Database::Postgres(pg) = db.store.database() else {
        unreachable!()
    };
    let started = Instant::now();
    let terminated = loop {
        // This database's run only (other tests run theirs on the same server), once
        // it holds all three days.
        let killed: Option<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             GROUP BY pid HAVING count(*) = 3 LIMIT 1",
        )
        .fetch_optional(pg.pool())
        .await
        .unwrap();
        if killed == Some(true) {
            break true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run took its days"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(terminated);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();
    let report = run.await.unwrap();
    assert!(!report.ok);
    for day in &report.days {
        assert_eq!(day.status.to_string(), "failed", "{day:?}");
        assert!(
            day.error.as_deref().unwrap().contains("lock"),
            "{:?}",
            day.error
        );
    }
    assert!(
        db.rollups().await.is_empty(),
        "nothing written without its locks"
    );
}

/// Reads a raw HTTP answer's status line.
async fn raw_status(address: &str, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn ambiguous_requests_are_refused_not_guessed_at() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    db.insert(&[event("e", Some("u"), "2024-01-01T10:00:00Z", None)])
        .await;
    let server = TestServer::spawn_app(&db.url, 366).await;
    let address = server.address().to_owned();
    let bearer = format!("Authorization: Bearer {SECRET}\r\n");
    let cases = [
        (
            "a key given twice",
            format!(
                "POST {JOB} HTTP/1.1\r\nHost: t\r\n{bearer}Content-Type: application/json\r\n\
                 Content-Length: 47\r\nConnection: close\r\n\r\n\
                 {{\"dryRun\":true,\"startDate\":\"2024-01-01\",\"dryRun\":false}}"
            ),
            "invalid_json",
        ),
        (
            "a POST with a query string",
            format!(
                "POST {JOB}?dryRun=true HTTP/1.1\r\nHost: t\r\n{bearer}\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            "invalid_query",
        ),
        (
            "a GET with a body",
            format!(
                "GET {JOB}?startDate=2024-01-01 HTTP/1.1\r\nHost: t\r\n{bearer}\
                 Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            ),
            "invalid_body",
        ),
        (
            "two Authorization headers",
            format!(
                "GET {JOB}?startDate=2024-01-01 HTTP/1.1\r\nHost: t\r\n{bearer}\
                 Authorization: Bearer wrong-secret-0123456789\r\nConnection: close\r\n\r\n"
            ),
            "invalid_authorization",
        ),
    ];
    for (what, request, code) in cases {
        let answer = raw_status(&address, &request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains(code), "{what}: {answer}");
    }
    assert!(db.rollups().await.is_empty(), "no run wrote anything");
    server.stop().await;
}

#[tokio::test]
async fn runs_past_the_limit_are_answered_429_and_connections_past_the_cap_wait() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    db.insert(&[event("e", Some("u"), "2024-01-01T10:00:00Z", None)])
        .await;
    // The source table locked: a run blocks on reading it until the lock goes.
    let Database::Postgres(pg) = db.store.database() else {
        unreachable!()
    };
    let mut blocker = pg.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE telemetry_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let launcher = Launcher::with_requested_runs(db.store.clone(), RunOptions::default(), 1);
    let state = AppState::with_launcher(launcher, 366, CronSecret::new(SECRET).unwrap())
        .with_max_connections(3)
        .with_header_timeout(Duration::from_secs(30));
    let server = TestServer::start_with(state).await;
    let first = tokio::spawn(
        server
            .authed(reqwest::Method::GET, &format!("{JOB}?startDate=2024-01-01"))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = server
        .authed(reqwest::Method::GET, &format!("{JOB}?startDate=2024-01-02"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status().as_u16(), 429);
    assert!(second.headers().get("retry-after").is_some());
    let error: Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "too_many_runs");

    // Three connections are open (the blocked run's, and two idle ones): a fourth
    // client is not served until one closes.
    let idle = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = reqwest::Client::builder().no_proxy().build().unwrap();
    let late = waiting
        .get(server.url("/healthz"))
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(late.is_err(), "served past the connection cap: {late:?}");
    drop(idle);
    let served = waiting.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(served.status().as_u16(), 200);

    blocker.rollback().await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn health_checks_against_a_silent_database_open_a_bounded_number_of_connections() {
    // A "database" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("postgres://u:p@{}/db", silent.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let store = Store::connect_lazy(&url, &TableName::parse("telemetry_events").unwrap())
        .await
        .unwrap();
    let server = TestServer::start_with(state(store)).await;
    let checks: Vec<_> = (0..40)
        .map(|_| tokio::spawn(server.client.get(server.url("/healthz")).send()))
        .collect();
    for check in checks {
        assert_eq!(check.await.unwrap().unwrap().status().as_u16(), 503);
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    // The pool's eight, and one fresh connection at a time beside them.
    assert!(
        opened <= 8 + 40 / 40 + 8,
        "{opened} connections for 40 health checks"
    );
    assert!(opened < 40, "{opened} connections for 40 health checks");
    server.stop().await;
}

#[tokio::test]
async fn a_secret_with_whitespace_is_refused_at_start_and_help_prints_no_password() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("CRON_SECRET", "0123456789abcdef-secret\n")
        .env("DATABASE_URL", "sqlite:///nonexistent/never-opened.db")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("whitespace"), "{stderr}");
    assert!(!stderr.contains("abcdef-secret"), "{stderr}");

    for args in [
        vec!["--help"],
        vec!["telemetry-daily", "--help"],
        vec!["serve", "--help"],
    ] {
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .args(&args)
            .env(
                "DATABASE_URL",
                "postgres://app:hunter2-password@db.example/veris",
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{args:?}: {text}");
    }
}

#[tokio::test]
async fn a_caller_that_hangs_up_is_logged_and_its_dry_run_stopped() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    db.insert(&[event("e", Some("u"), "2024-01-01T10:00:00Z", None)])
        .await;
    let Database::Postgres(pg) = db.store.database() else {
        unreachable!()
    };
    let mut blocker = pg.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE telemetry_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let port = crate::common::free_port();
    let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("CRON_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The dry run waits for the locked table; its caller gives up.
    let gave_up = client
        .get(format!("{base}{JOB}?startDate=2024-01-01&dryRun=true"))
        .bearer_auth(SECRET)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.rollback().await.unwrap();
    // SIGTERM: the server stops and its log is complete.
    let pid = nix_pid(&server);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let output = server.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("dry run stopped: its caller hung up"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains(r#""message":"request""#) && l.contains(JOB))
        .unwrap_or_else(|| panic!("no request line: {log}"));
    assert!(
        line.contains(r#""status":499"#) && line.contains(r#""caller_gone":true"#),
        "{line}"
    );
    // The line of a caller that hung up still says what it asked for.
    assert!(
        line.contains(r#""range":"2024-01-01""#) && line.contains(r#""dry_run":true"#),
        "{line}"
    );
    assert!(!log.contains(SECRET));
}

fn nix_pid(child: &tokio::process::Child) -> libc::pid_t {
    child.id().expect("the server is running") as libc::pid_t
}
