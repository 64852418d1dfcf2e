//! The endpoint: the real server on a free loopback port, called with a real client.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use veris_jobs::app::{Application, Connect, ServeSettings, Settings};
use veris_jobs::config::CronSecret;
use veris_jobs::http::AppState;
use veris_jobs::model::DayRange;
use veris_jobs::store::{Database, Store, TableName};
use veris_jobs::telemetry_daily::RunOptions;

use crate::common::{Kind, TestDb, event};

pub const SECRET: &str = "test-secret-0123456789";

/// A server on 127.0.0.1:0 for one test; dropping it does not stop it, `stop` does.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(store: Store, max_range_days: u32) -> Self {
        Self::start_with(AppState::new(
            store,
            RunOptions::default(),
            max_range_days,
            CronSecret::new(SECRET).unwrap(),
        ))
        .await
    }

    /// The application over the database at `database_url`, wired and served as
    /// `veris-jobs serve` does it (`Application::build`, then `serve`), on a free
    /// loopback port, with the job's defaults and `max_range_days`.
    pub async fn spawn_app(database_url: &str, max_range_days: u32) -> Self {
        let settings = Settings {
            database_url: database_url.to_owned(),
            source_table: TableName::parse("telemetry_events").unwrap(),
            source_url: None,
            job: RunOptions::default(),
            max_http_runs: veris_jobs::launcher::DEFAULT_REQUESTED_RUNS,
        };
        let server = Application::build(settings, Connect::Lazy)
            .await
            .expect("the application builds")
            .serve(ServeSettings {
                bind: "127.0.0.1:0".parse().unwrap(),
                max_range_days,
                schedule: None,
                today_every: None,
                purge_schedule: None,
                keep_days: None,
                secret: CronSecret::new(SECRET).unwrap(),
                read_secret: None,
            })
            .await
            .expect("the server binds");
        let address = server.address();
        Self::serving(address, |stop| tokio::spawn(server.run_until_stopped(stop)))
    }

    /// A server of `state`, whose secret must be [`SECRET`].
    pub async fn start_with(state: AppState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        Self::serving(address, |stop| {
            tokio::spawn(veris_jobs::http::serve(listener, state, stop))
        })
    }

    /// A server at `address`, started by `start` with the future that stops it.
    fn serving(
        address: std::net::SocketAddr,
        start: impl FnOnce(
            std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        ) -> tokio::task::JoinHandle<()>,
    ) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let task = start(Box::pin(async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{address}"),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            shutdown: Some(tx),
            task,
        }
    }

    /// The server's `host:port`, for raw TCP clients.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the right token.
    pub fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(SECRET)
    }

    pub async fn post_json(&self, body: &str) -> (StatusCode, Value) {
        let response = self
            .authed(reqwest::Method::POST, JOB)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (
            status,
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    /// Signals shutdown and waits until the server (and its runs) have finished.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

pub const JOB: &str = "/api/jobs/telemetry-daily";

/// A client of the binary's server on `port`, and its base URL, once it answers
/// (within 20 s).
async fn server_on(port: u16) -> (reqwest::Client, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the server came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (client, base)
}

async fn body(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status.as_u16(), expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

crate::on_both_databases!(
    every_status_of_the_contract_table,
    a_run_over_http_writes_the_same_rows_as_the_command_line,
    concurrent_posts_over_the_same_days_get_200_409_or_429_and_leave_the_table_right,
    a_day_held_by_any_other_run_is_answered_409_at_once,
    a_client_that_disconnects_does_not_cancel_the_run,
    shutdown_waits_for_runs_under_way_to_finish,
    metrics_count_the_runs_of_the_process_in_prometheus_format,
);

async fn every_status_of_the_contract_table(db: TestDb) {
    db.insert(&[event("view", Some("u"), "2024-01-01T10:00:00Z", None)])
        .await;
    let server = TestServer::spawn_app(&db.url, 31).await;
    use reqwest::Method;

    // 200, GET (default range) and POST, trailing slash served as it is.
    let (status, report) = body(server.authed(Method::GET, JOB).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["job"], "telemetry-daily");
    let (status, report) = body(
        server
            .authed(
                Method::GET,
                &format!("{JOB}/?startDate=2024-01-01&dryRun=true"),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            report["dryRun"].clone(),
            report["days"][0]["inserted"].clone()
        ),
        (Value::Bool(true), 1.into())
    );
    assert!(
        db.rollups().await.is_empty(),
        "a dry run over HTTP writes nothing"
    );
    let (status, report) = server
        .post_json(r#"{"startDate":"2024-01-01","endDate":"2024-01-01"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["days"][0]["status"], "written");
    let empty = server.authed(Method::POST, JOB).send().await.unwrap();
    assert_eq!(
        empty.status(),
        StatusCode::OK,
        "an empty body means the default range"
    );

    // 400s.
    for (query, code) in [
        ("startDate=2024-1-1", "invalid_date"),
        ("startDate=2024-01-05&endDate=2024-01-01", "invalid_range"),
        ("endDate=2024-01-01", "invalid_range"),
        ("startDate=2024-01-01&endDate=2024-03-01", "range_too_long"),
        ("dryRun=maybe", "invalid_dry_run"),
        ("when=today", "unknown_field"),
    ] {
        let (status, error) = body(
            server
                .authed(Method::GET, &format!("{JOB}?{query}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &error, 400, code);
    }
    for (json, code) in [
        (r#"{"startDate":"2024-01-01""#, "invalid_json"),
        (
            r#"{"startDate":"2024-01-01","verbose":true}"#,
            "unknown_field",
        ),
        (r#"{"dryRun":"yes"}"#, "invalid_dry_run"),
        (r#"{"startDate":"01/01/2024"}"#, "invalid_date"),
    ] {
        let (status, error) = server.post_json(json).await;
        assert_error(status, &error, 400, code);
    }

    // 401 with WWW-Authenticate.
    let response = server.client.get(server.url(JOB)).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, error) = body(response).await;
    assert_error(status, &error, 401, "unauthorized");

    // 405.
    let head = server.authed(Method::HEAD, JOB).send().await.unwrap();
    assert_eq!(
        head.status().as_u16(),
        405,
        "a HEAD probe does not start a run"
    );
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let (status, error) = body(server.authed(method, JOB).send().await.unwrap()).await;
        assert_error(status, &error, 405, "method_not_allowed");
    }

    // 413 and 415.
    let big = format!(
        r#"{{"startDate":"2024-01-01","pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    let (status, error) = server.post_json(&big).await;
    assert_error(status, &error, 413, "payload_too_large");
    let (status, error) = body(
        server
            .authed(Method::POST, JOB)
            .header("content-type", "text/plain")
            .body("startDate=2024-01-01")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &error, 415, "unsupported_media_type");

    // 404 for other paths, and /healthz without a token.
    let (status, error) = body(
        server
            .client
            .get(server.url("/api/jobs/other"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &error, 404, "not_found");
    let (status, health) = body(
        server
            .client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    // 500: the run finished and a day failed; the body is the report.
    let broken = db
        .second_store(&TableName::parse("no_such_table").unwrap())
        .await;
    let failing = TestServer::start(broken, 31).await;
    let (status, report) = failing.post_json(r#"{"startDate":"2024-01-01"}"#).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        (report["ok"].clone(), report["days"][0]["status"].clone()),
        (Value::Bool(false), "failed".into())
    );
    failing.stop().await;

    // 409 is covered by its own case; 503 needs the database to go away.
    if db.kind == Kind::Postgres {
        let name = db.url.rsplit('/').next().unwrap().to_owned();
        let admin = Store::connect(
            &crate::common::server_url(),
            &crate::common::default_table(),
        )
        .await
        .unwrap();
        let Database::Postgres(admin) = admin.database() else {
            unreachable!()
        };
        for sql in [
            format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(admin.pool())
                .await
                .unwrap();
        }
        let (status, error) = server.post_json(r#"{"startDate":"2024-01-01"}"#).await;
        assert_error(status, &error, 503, "database_unavailable");
        // Reads say so as soon as the database is found not to answer, not after
        // the pool's 10 s acquire timeout.
        for path in [
            "/api/jobs/runs",
            "/api/jobs/runs/1",
            "/api/telemetry/report",
        ] {
            let asked = std::time::Instant::now();
            let (status, error) = body(
                server
                    .authed(reqwest::Method::GET, path)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_error(status, &error, 503, "database_unavailable");
            assert!(
                asked.elapsed() < Duration::from_secs(6),
                "{path}: {:?}",
                asked.elapsed()
            );
        }
        let (status, error) = body(
            server
                .client
                .get(server.url("/healthz"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &error, 503, "database_unavailable");
        let sql = format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(admin.pool())
            .await
            .unwrap();
    }
    server.stop().await;
}

async fn a_run_over_http_writes_the_same_rows_as_the_command_line(db: TestDb) {
    let mut events = Vec::new();
    for i in 0..500 {
        let meta = format!(
            r#"{{"plan":"p{}","amount":{}.25,"ok":{}}}"#,
            i % 4,
            i % 9,
            i % 2 == 0
        );
        let at = format!("2024-02-{:02}T{:02}:30:00Z", 1 + i % 3, i % 24);
        events.push(event(
            ["view", "click", "buy"][(i / 3) % 3],
            Some(&format!("u{}", i % 23)),
            &at,
            Some(&meta),
        ));
    }
    db.insert(&events).await;
    let server = TestServer::spawn_app(&db.url, 366).await;
    let (status, _) = server
        .post_json(r#"{"startDate":"2024-02-01","endDate":"2024-02-03"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let without_time = |rows: Vec<crate::common::StoredRow>| -> Vec<_> {
        rows.into_iter()
            .map(|(d, e, c, u, m, _)| (d, e, c, u, m))
            .collect()
    };
    let over_http = without_time(db.rollups().await);
    assert_eq!(over_http.len(), 9);

    db.execute("DELETE FROM telemetry_daily").await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", &db.url)
        .args([
            "telemetry-daily",
            "--start-date",
            "2024-02-01",
            "--end-date",
            "2024-02-03",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(without_time(db.rollups().await), over_http);
    server.stop().await;
}

async fn concurrent_posts_over_the_same_days_get_200_409_or_429_and_leave_the_table_right(
    db: TestDb,
) {
    let mut events = Vec::new();
    for i in 0..3000 {
        let at = format!("2024-03-{:02}T{:02}:00:00Z", 1 + i % 10, i % 24);
        events.push(event(
            ["a", "b"][(i / 10) % 2],
            Some(&format!("u{}", i % 50)),
            &at,
            Some(r#"{"k":"v"}"#),
        ));
    }
    db.insert(&events).await;
    let server = std::sync::Arc::new(TestServer::spawn_app(&db.url, 366).await);
    let mut calls = Vec::new();
    for _ in 0..6 {
        let server = server.clone();
        let body = r#"{"startDate":"2024-03-01","endDate":"2024-03-10"}"#;
        calls.push(tokio::spawn(async move { server.post_json(body).await }));
    }
    let mut statuses = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        if status == StatusCode::CONFLICT {
            assert_eq!(body["error"]["code"], "day_busy");
        }
        // Six at once is more than the four runs requests may have going.
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "too_many_runs");
        }
        statuses.push(status.as_u16());
    }
    assert!(
        statuses.iter().all(|s| [200, 409, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");

    let (status, check) = server
        .post_json(r#"{"startDate":"2024-03-01","endDate":"2024-03-10","dryRun":true}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["totals"]["rows"], 20);
    assert_eq!(
        check["totals"]["unchanged"], 20,
        "the table is exactly right: {check}"
    );
    let Ok(server) = std::sync::Arc::try_unwrap(server) else {
        panic!("server still shared")
    };
    server.stop().await;
}

async fn a_day_held_by_any_other_run_is_answered_409_at_once(db: TestDb) {
    let other = db.second_store(&crate::common::default_table()).await;
    let day = "2024-04-02".parse().unwrap();
    let locks = other.lock_days(&[day], Duration::ZERO).await.unwrap();
    let server = TestServer::spawn_app(&db.url, 366).await;
    let started = Instant::now();
    let (status, error) = server
        .post_json(r#"{"startDate":"2024-04-01","endDate":"2024-04-03"}"#)
        .await;
    // Answered while the lock is still held (it is released below), and not after
    // the 60 s a command waits: a margin no loaded machine comes near.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered at once, not after waiting for the lock"
    );
    assert_error(status, &error, 409, "day_busy");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2024-04-02")
    );
    // A dry run takes no days, so it goes ahead.
    let (status, _) = server
        .post_json(r#"{"startDate":"2024-04-02","dryRun":true}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    locks.release().await;
    let (status, _) = server
        .post_json(r#"{"startDate":"2024-04-01","endDate":"2024-04-03"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn every_bad_token_shape_is_refused_with_401() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = TestServer::spawn_app(&db.url, 366).await;
    let truncated = &SECRET[..SECRET.len() - 1];
    let extra = format!("{SECRET}x");
    let shapes = [
        Some("Bearer wrong-secret-0123456789".to_owned()),
        Some(format!("Bearer {truncated}")),
        Some(format!("Bearer {extra}")),
        Some(format!("Basic {SECRET}")),
        Some(SECRET.to_owned()),
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        None,
    ];
    for shape in shapes {
        let mut request = server.client.get(server.url(JOB));
        if let Some(value) = &shape {
            request = request.header("authorization", value.as_str());
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
        let (status, error) = body(response).await;
        assert_error(status, &error, 401, "unauthorized");
        assert!(
            !error.to_string().contains(SECRET),
            "the secret is never echoed"
        );
    }
    assert!(db.rollups().await.is_empty(), "no run started");
    server.stop().await;
}

/// A day's worth of events on each of `days` days from 2024-01-01, so that a run
/// over them takes a noticeable time.
pub async fn fill_days(db: &TestDb, days: u32) -> DayRange {
    let start: jiff::civil::Date = "2024-01-01".parse().unwrap();
    let range = DayRange::new(
        start,
        start
            .checked_add(jiff::Span::new().days(i64::from(days) - 1))
            .unwrap(),
    )
    .unwrap();
    let events: Vec<_> = range
        .days()
        .flat_map(|d| {
            (0..20).map(move |i| {
                event(
                    "view",
                    Some(&format!("u{i}")),
                    &format!("{d}T{:02}:00:00Z", i % 24),
                    Some(r#"{"p":"/"}"#),
                )
            })
        })
        .collect();
    db.insert(&events).await;
    range
}

async fn a_client_that_disconnects_does_not_cancel_the_run(db: TestDb) {
    let range = fill_days(&db, 300).await;
    let server = TestServer::spawn_app(&db.url, 366).await;
    let body = format!(
        r#"{{"startDate":"{}","endDate":"{}"}}"#,
        range.start(),
        range.end()
    );
    let hung_up = server
        .authed(reqwest::Method::POST, JOB)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_millis(30))
        .send()
        .await;
    assert!(
        hung_up.is_err_and(|e| e.is_timeout()),
        "the client gave up before the run ended"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.rollups().await.len() < 300 {
        assert!(Instant::now() < deadline, "the run went on to the end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

async fn shutdown_waits_for_runs_under_way_to_finish(db: TestDb) {
    let range = fill_days(&db, 300).await;
    let server = TestServer::spawn_app(&db.url, 366).await;
    let base = server.base.clone();
    let request = server
        .authed(reqwest::Method::POST, JOB)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"startDate":"{}","endDate":"{}"}}"#,
            range.start(),
            range.end()
        ));
    let call = tokio::spawn(request.send());
    // Shutdown starts once the run is recorded under way with days still to do (by
    // its own record, not after a guess at how long it takes to start).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let under_way = db
            .strings(
                "SELECT CAST(days_done AS text) FROM job_runs \
                 WHERE status = 'running' AND days_done < days_total",
                None,
            )
            .await;
        if !under_way.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the run started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.stop().await;
    assert_eq!(
        db.rollups().await.len(),
        300,
        "every day was finished before the server stopped"
    );
    let response = call
        .await
        .unwrap()
        .expect("the caller still got its answer");
    assert_eq!(response.status(), StatusCode::OK);
    let refused = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "no new requests after shutdown");
}

#[tokio::test]
async fn the_binary_refuses_a_missing_or_short_secret_and_never_logs_the_secret() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let bin = env!("CARGO_BIN_EXE_veris-jobs");
    for secret in [None, Some("too-short")] {
        let mut command = std::process::Command::new(bin);
        command
            .env("DATABASE_URL", &db.url)
            .env_remove("CRON_SECRET")
            .args(["serve", "--bind", "127.0.0.1:0"]);
        if let Some(s) = secret {
            command.env("CRON_SECRET", s);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2));
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains("CRON_SECRET"), "{message}");
        assert!(!message.contains("too-short"), "{message}");
    }

    // Start the real binary on a free port, with debug logs, and talk to it.
    let port = crate::common::free_port();
    db.insert(&[event("view", Some("u"), "2024-01-01T10:00:00Z", None)])
        .await;
    let child = tokio::process::Command::new(bin)
        .env("DATABASE_URL", &db.url)
        .env("CRON_SECRET", SECRET)
        .env("RUST_LOG", "trace")
        .env("LOG_FORMAT", "json")
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (client, base) = server_on(port).await;
    let ok = client
        .post(format!("{base}{JOB}"))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(r#"{"startDate":"2024-01-01"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(!ok.text().await.unwrap().contains(SECRET));
    for token in [format!("{SECRET}x"), SECRET[..8].to_owned()] {
        let denied = client
            .get(format!("{base}{JOB}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    }

    // SIGTERM: stop accepting, finish, exit 0.
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains(&format!("\"dashboard\":\"http://127.0.0.1:{port}/\"")),
        "the start-up line names the dashboard: {logs}"
    );
    assert!(
        logs.contains("\"status\":200") && logs.contains("\"status\":401"),
        "one line per request: {logs}"
    );
    assert!(
        logs.contains("2024-01-01"),
        "the requested dates are logged: {logs}"
    );
    assert!(!logs.contains(SECRET), "the secret never appears in a log");
    assert!(
        !logs.contains(&SECRET[..8]),
        "nor any part of a presented token"
    );
}

async fn metrics_count_the_runs_of_the_process_in_prometheus_format(db: TestDb) {
    db.insert(&[
        event("view", Some("u"), "2024-01-01T10:00:00Z", Some("[1]")),
        event("view", Some("v"), "2024-01-02T10:00:00Z", None),
    ])
    .await;
    let server = TestServer::spawn_app(&db.url, 366).await;
    let (status, _) = server
        .post_json(r#"{"startDate":"2024-01-01","endDate":"2024-01-02"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post_json(r#"{"startDate":"2024-01-01","dryRun":true}"#)
        .await;
    assert_eq!(status, StatusCode::OK);

    let anonymous = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let response = server
        .authed(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for line in [
        "veris_runs_total{job=\"telemetry-daily\",trigger=\"http\",outcome=\"ok\"} 2",
        "veris_day_outcomes_total{status=\"written\"} 2",
        "veris_day_outcomes_total{status=\"dry_run\"} 1",
        "veris_events_read_total 2",
        "veris_events_skipped_total{reason=\"non_object_meta\"} 1",
        "veris_rows_written_total{kind=\"inserted\"} 2",
        "veris_run_duration_seconds_count 2",
        "veris_run_duration_seconds_bucket{le=\"+Inf\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    let last: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("veris_last_success_timestamp_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(last > 1.7e9, "the last successful run's time: {last}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok(),
            "every sample has a number: {line}"
        );
    }
    promtool_accepts(&text);
    server.stop().await;
}

/// Prometheus' own linter, `promtool check metrics`, finds nothing to say about
/// `text` (names, units, types, help). Without promtool the check is skipped, but
/// under `CI=true`, whose `.ci/run` installs it.
fn promtool_accepts(text: &str) {
    let Some(output) = crate::common::run_with_input(
        "promtool",
        &["check", "metrics"],
        text.as_bytes(),
        "the lint of /metrics",
    ) else {
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

/// SQLite's "the database cannot be reached": a file the server can no longer open,
/// its permissions taken away while the server runs. The server's pooled
/// connections keep the file they opened, so only a fresh open finds out; and root
/// ignores file permissions, so under root the server runs as `nobody`.
#[tokio::test]
async fn an_unreadable_sqlite_file_answers_503_until_it_is_readable_again() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = dir.path().join("veris.db");
    let url = format!("sqlite://{}", file.display());
    let port = crate::common::free_port();
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
        command
            .env("DATABASE_URL", &url)
            .env("CRON_SECRET", SECRET)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            command.uid(65534).gid(65534);
        }
        command
    };
    assert!(command(&["migrate"]).status().unwrap().success());
    let mut server = command(&["serve", "--bind", &format!("127.0.0.1:{port}")])
        .spawn()
        .unwrap();
    let (client, base) = server_on(port).await;
    let ask = async |path: &str| {
        let post = client
            .post(format!("{base}{path}"))
            .bearer_auth(SECRET)
            .header("content-type", "application/json")
            .body(r#"{"startDate":"2024-01-01"}"#);
        let get = client.get(format!("{base}{path}"));
        let request = if path == JOB { post } else { get };
        body(request.send().await.unwrap()).await
    };
    let dry_run = format!("{JOB}?dryRun=true&startDate=2024-01-01");
    let dry_run = || async {
        body(
            client
                .get(format!("{base}{dry_run}"))
                .bearer_auth(SECRET)
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    assert_eq!(ask(JOB).await.0, StatusCode::OK);
    assert_eq!(ask("/healthz").await.0, StatusCode::OK);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (status, error) = ask(JOB).await;
    assert_error(status, &error, 503, "database_unavailable");
    let (status, error) = dry_run().await;
    assert_error(status, &error, 503, "database_unavailable");
    let (status, error) = ask("/healthz").await;
    assert_error(status, &error, 503, "database_unavailable");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(ask(JOB).await.0, StatusCode::OK);
    assert_eq!(dry_run().await.0, StatusCode::OK);
    assert_eq!(ask("/healthz").await.0, StatusCode::OK);
    server.kill().unwrap();
    server.wait().unwrap();
}
