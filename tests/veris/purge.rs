//! `telemetry-purge`: raw events of old days deleted only where the rollup is
//! current, on both databases. Expected counts come from the events each test
//! writes, never from the job.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};
use veris_jobs::config::{CronSecret, Secret};
use veris_jobs::http::AppState;
use veris_jobs::model::{KeptReason, PurgeStatus};
use veris_jobs::store::{Database, NewEvent};
use veris_jobs::telemetry_daily::RunOptions;
use veris_jobs::telemetry_purge::{self, PurgeError, PurgeOptions};

use crate::common::{TestDb, range_options};
use crate::http::{SECRET, TestServer};

crate::on_both_databases!(
    a_dry_run_counts_and_a_purge_deletes_only_days_whose_rollup_is_current,
    a_purged_day_keeps_its_rollup_when_telemetry_daily_runs_again,
    a_purge_killed_half_way_is_finished_by_the_next_without_a_new_check,
);

/// Today in UTC, as the purge sees it.
fn today() -> Date {
    Timestamp::now().to_zoned_datetime(TimeZone::UTC).date()
}

fn days_ago(n: i64) -> Date {
    today().checked_sub(n.days()).unwrap()
}

/// `n` events of `date`, spread over its hours, by `users` users.
fn day_events(date: Date, n: usize, users: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event: Some(["view", "click", "buy"][i % 3].to_owned()),
            user_id: Some(format!("user-{}", i % users)),
            created_at: format!("{date}T{:02}:{:02}:{:02}Z", i % 24, (i / 24) % 60, i % 60)
                .parse()
                .unwrap(),
            meta: Some(format!(r#"{{"n":{i}}}"#)),
        })
        .collect()
}

/// Raw events per day, as the database holds them (UTC days).
async fn raw_counts(db: &TestDb) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = match db.store.database() {
        Database::Postgres(s) => sqlx::query_as(
            "SELECT (created_at AT TIME ZONE 'UTC')::date::text, count(*) \
             FROM telemetry_events GROUP BY 1",
        )
        .fetch_all(s.pool())
        .await
        .unwrap(),
        Database::Sqlite(s) => sqlx::query_as(
            "SELECT substr(created_at, 1, 10), count(*) FROM telemetry_events GROUP BY 1",
        )
        .fetch_all(s.pool())
        .await
        .unwrap(),
    };
    rows.into_iter().collect()
}

/// Every rollup row and hour row exactly as stored, sketches and times included.
async fn all_rollups(db: &TestDb) -> Vec<String> {
    let (daily, hourly) = match db.store.database() {
        Database::Postgres(_) => (
            "SELECT concat_ws('|', date, event, count, unique_users, meta::text, \
             encode(users_hll, 'hex'), partial, updated_at) FROM telemetry_daily ORDER BY 1",
            "SELECT concat_ws('|', hour, event, count, unique_users, encode(users_hll, 'hex'), \
             updated_at) FROM telemetry_hourly ORDER BY 1",
        ),
        Database::Sqlite(_) => (
            "SELECT date || '|' || event || '|' || count || '|' || unique_users || '|' || meta \
             || '|' || hex(users_hll) || '|' || partial || '|' || updated_at \
             FROM telemetry_daily ORDER BY 1",
            "SELECT hour || '|' || event || '|' || count || '|' || unique_users || '|' \
             || hex(users_hll) || '|' || updated_at FROM telemetry_hourly ORDER BY 1",
        ),
    };
    let mut rows = db.strings(daily, None).await;
    rows.extend(db.strings(hourly, None).await);
    rows
}

fn keeping(days: u32) -> PurgeOptions {
    PurgeOptions {
        batch_size: 7,
        ..PurgeOptions::keeping(days)
    }
}

async fn roll_up(db: &TestDb, first: Date, last: Date) {
    let report = db
        .run(&range_options(&first.to_string(), &last.to_string()))
        .await;
    assert!(report.ok, "{report:?}");
}

async fn a_dry_run_counts_and_a_purge_deletes_only_days_whose_rollup_is_current(db: TestDb) {
    // Keeping 3 days: days before today - 3 are old.
    let (current, changed, not_rolled_up, partial, recent) = (
        days_ago(10),
        days_ago(9),
        days_ago(8),
        days_ago(7),
        days_ago(2),
    );
    for (date, n) in [(current, 100), (changed, 40), (partial, 30), (recent, 20)] {
        db.insert(&day_events(date, n, 9)).await;
    }
    roll_up(&db, current, recent).await;
    db.insert(&day_events(not_rolled_up, 25, 5)).await;
    // A late event after the rollup: the day's rollup no longer holds every event.
    db.insert(&[NewEvent {
        event: Some("view".into()),
        user_id: Some("late".into()),
        created_at: format!("{changed}T12:00:00Z").parse().unwrap(),
        meta: None,
    }])
    .await;
    let partial_sql = format!("UPDATE telemetry_daily SET partial = true WHERE date = '{partial}'");
    db.execute(&partial_sql).await;
    let rollups_before = all_rollups(&db).await;
    let raw_before = raw_counts(&db).await;

    let dry = telemetry_purge::run(
        &db.store,
        &PurgeOptions {
            dry_run: true,
            ..keeping(3)
        },
    )
    .await
    .unwrap();
    let judged: Vec<(String, PurgeStatus, Option<KeptReason>, u64)> = dry
        .days
        .iter()
        .map(|d| (d.date.clone(), d.status, d.reason, d.events_deleted))
        .collect();
    let want = |status: PurgeStatus| {
        vec![
            (current.to_string(), status, None, 100),
            (
                changed.to_string(),
                PurgeStatus::Kept,
                Some(KeptReason::RollupOutOfDate),
                0,
            ),
            (
                not_rolled_up.to_string(),
                PurgeStatus::Kept,
                Some(KeptReason::NotRolledUp),
                0,
            ),
            (
                partial.to_string(),
                PurgeStatus::Kept,
                Some(KeptReason::Partial),
                0,
            ),
        ]
    };
    assert_eq!(
        judged,
        want(PurgeStatus::WouldPurge),
        "recent days are not listed"
    );
    assert_eq!(dry.before, days_ago(3).to_string());
    assert_eq!(
        raw_counts(&db).await,
        raw_before,
        "a dry run deletes nothing"
    );

    let purge = telemetry_purge::run(&db.store, &keeping(3)).await.unwrap();
    let judged: Vec<_> = purge
        .days
        .iter()
        .map(|d| (d.date.clone(), d.status, d.reason, d.events_deleted))
        .collect();
    assert_eq!(judged, want(PurgeStatus::Purged));
    assert!(purge.ok);
    assert_eq!(purge.totals.events_deleted, 100);
    let mut raw_after = raw_before.clone();
    raw_after.remove(&current.to_string());
    assert_eq!(
        raw_counts(&db).await,
        raw_after,
        "only the current day went"
    );
    assert_eq!(
        all_rollups(&db).await,
        rollups_before,
        "every rollup row is byte-identical"
    );
    // The run is in the history under its job.
    let runs = db
        .store
        .recent_runs_of(10, Some("telemetry-purge"))
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "ok");

    // A second purge finds nothing more to delete on the purged day.
    let again = telemetry_purge::run(&db.store, &keeping(3)).await.unwrap();
    assert!(again.days.iter().all(|d| d.date != current.to_string()));
    assert_eq!(again.totals.events_deleted, 0);
}

async fn a_purged_day_keeps_its_rollup_when_telemetry_daily_runs_again(db: TestDb) {
    let day = days_ago(5);
    db.insert(&day_events(day, 60, 7)).await;
    roll_up(&db, day, day).await;
    let before = all_rollups(&db).await;
    let purge = telemetry_purge::run(&db.store, &keeping(2)).await.unwrap();
    assert_eq!(purge.totals.events_deleted, 60);

    for force in [false, true] {
        let report = db
            .run(&RunOptions {
                force,
                ..range_options(&day.to_string(), &day.to_string())
            })
            .await;
        let json = serde_json::to_value(&report.days[0]).unwrap();
        assert_eq!(json["status"], "kept", "force {force}: {json}");
        assert_eq!(json["reason"], "purged", "force {force}: {json}");
        assert_eq!(all_rollups(&db).await, before, "force {force}");
    }
}

async fn a_purge_killed_half_way_is_finished_by_the_next_without_a_new_check(db: TestDb) {
    let day = days_ago(4);
    let events = day_events(day, 50_000, 3_000);
    for chunk in events.chunks(10_000) {
        db.insert(chunk).await;
    }
    roll_up(&db, day, day).await;
    let before = all_rollups(&db).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", &db.url)
        .env_remove("TELEMETRY_TIMEZONE")
        .args([
            "telemetry-purge",
            "--keep-days",
            "2",
            "--batch-size",
            "1000",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some batches, not all, are committed.
    let deleted_sql = "SELECT CAST(events_deleted AS TEXT) FROM purged_days";
    let started = Instant::now();
    let killed_at = loop {
        let deleted: u64 = db
            .strings(deleted_sql, None)
            .await
            .first()
            .map_or(0, |n| n.parse().unwrap());
        if deleted >= 5_000 {
            child.kill().unwrap();
            child.wait().unwrap();
            break deleted;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the purge never got going"
        );
        assert!(child.try_wait().unwrap().is_none(), "the purge ended first");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // PostgreSQL finishes a statement whose client died: its batch commits (and
    // counts itself) before it notices. Wait for that before counting.
    if matches!(db.store.database(), Database::Postgres(_)) {
        let busy = "SELECT CAST(count(*) AS TEXT) FROM pg_stat_activity \
                    WHERE datname = current_database() AND pid <> pg_backend_pid() \
                    AND state <> 'idle' AND query LIKE '%purged_days%'";
        while db.strings(busy, None).await != ["0"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let left: i64 = raw_counts(&db).await[&day.to_string()];
    assert!(
        left > 0 && left < 50_000,
        "killed half way: {left} of 50,000 left (after {killed_at})"
    );
    assert_eq!(all_rollups(&db).await, before, "the rollup is untouched");
    assert_eq!(
        db.strings(
            "SELECT CAST(finished_at IS NULL AS TEXT) FROM purged_days",
            None
        )
        .await,
        [if matches!(db.store.database(), Database::Postgres(_)) {
            "true"
        } else {
            "1"
        }]
    );

    // Aggregating what is left now would not give the rollup: a check would keep
    // the day. The next purge finishes it instead, without checking.
    let next = telemetry_purge::run(&db.store, &keeping(2)).await.unwrap();
    assert_eq!(next.days.len(), 1, "{next:?}");
    assert_eq!(next.days[0].status, PurgeStatus::Purged);
    assert_eq!(next.days[0].events_deleted, left as u64);
    assert!(!raw_counts(&db).await.contains_key(&day.to_string()));
    assert_eq!(all_rollups(&db).await, before);
    let total: Vec<String> = db
        .strings("SELECT CAST(events_deleted AS TEXT) FROM purged_days", None)
        .await;
    assert_eq!(total, ["50000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_into_a_day_being_purged_wait_under_a_second_and_are_never_deleted() {
    let Some(db) = TestDb::new(crate::common::Kind::Postgres).await else {
        return;
    };
    let day = days_ago(6);
    let events = day_events(day, 50_000, 2_000);
    for chunk in events.chunks(10_000) {
        db.insert(chunk).await;
    }
    roll_up(&db, day, day).await;
    let store = db.store.clone();
    let purge = tokio::spawn(async move {
        telemetry_purge::run(
            &store,
            &PurgeOptions {
                batch_size: 1_000,
                ..PurgeOptions::keeping(2)
            },
        )
        .await
    });
    // Late events of the same day, one insert at a time, from when the deletion
    // starts (one inserted during the check is an event the rollup does not hold:
    // the day would rightly be kept).
    let writer = db.second_store(&crate::common::default_table()).await;
    while db
        .strings("SELECT CAST(count(*) AS TEXT) FROM purged_days", None)
        .await
        != ["1"]
    {
        assert!(!purge.is_finished(), "the purge ended before deleting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut worst = Duration::ZERO;
    let mut late = 0;
    while !purge.is_finished() {
        let started = Instant::now();
        writer
            .insert_events(&[NewEvent {
                event: Some("late".into()),
                user_id: Some(format!("late-{late}")),
                created_at: format!("{day}T23:00:00Z").parse().unwrap(),
                meta: None,
            }])
            .await
            .unwrap();
        worst = worst.max(started.elapsed());
        late += 1;
    }
    let report = purge.await.unwrap().unwrap();
    assert!(late > 0, "the purge was over before any insert");
    assert!(worst < Duration::from_secs(1), "an insert waited {worst:?}");
    let left: i64 = raw_counts(&db).await[&day.to_string()];
    // Every late event stays: the purge deletes only what its check read.
    assert_eq!(left, late, "{report:?}");
    assert_eq!(report.days[0].status, PurgeStatus::Purged);
    assert_eq!(report.days[0].events_deleted, 50_000);
    eprintln!("{late} inserts during the purge, the slowest {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_purges_with_the_cron_secret_only_and_other_jobs_are_404() {
    let db = TestDb::new(crate::common::Kind::Sqlite).await.unwrap();
    let day = days_ago(5);
    db.insert(&day_events(day, 30, 4)).await;
    roll_up(&db, day, day).await;
    const READ: &str = "read-only-secret-of-32-characters!!";
    let server = TestServer::start_with(
        AppState::new(
            db.store.clone(),
            RunOptions::default(),
            366,
            CronSecret::new(SECRET).unwrap(),
        )
        .with_read_secret(Secret::read(READ).unwrap()),
    )
    .await;
    let path = "/api/jobs/telemetry-purge";
    let read_only = server
        .client
        .post(server.url(path))
        .bearer_auth(READ)
        .header("content-type", "application/json")
        .body(serde_json::json!({"keepDays": 2}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(read_only.status(), 401, "READ_SECRET does not purge");
    let missing = server
        .authed(reqwest::Method::POST, path)
        .header("content-type", "application/json")
        .body(serde_json::json!({}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let body = body_of(missing).await;
    assert_eq!(body["error"]["code"], "keep_days_required", "{body}");
    let dry = server
        .authed(
            reqwest::Method::GET,
            &format!("{path}?keepDays=2&dryRun=true"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status(), 200);
    let dry = body_of(dry).await;
    assert_eq!(dry["days"][0]["status"], "would_purge", "{dry}");
    assert_eq!(raw_counts(&db).await[&day.to_string()], 30);
    let done = server
        .authed(reqwest::Method::POST, path)
        .header("content-type", "application/json")
        .body(serde_json::json!({"keepDays": 2, "batchSize": 4}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let done = body_of(done).await;
    assert_eq!(done["job"], "telemetry-purge");
    assert_eq!(done["totals"]["eventsDeleted"], 30, "{done}");
    assert!(!raw_counts(&db).await.contains_key(&day.to_string()));
    let nosuch = server
        .authed(reqwest::Method::POST, "/api/jobs/telemetry-weekly")
        .send()
        .await
        .unwrap();
    assert_eq!(nosuch.status(), 404);
    let runs = body_of(
        server
            .authed(reqwest::Method::GET, "/api/jobs/runs?job=telemetry-purge")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let jobs: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["telemetry-purge"], "{runs}");
    assert_eq!(runs["runs"][0]["summary"]["totals"]["eventsDeleted"], 30);
    let bad_job = server
        .authed(reqwest::Method::GET, "/api/jobs/runs?job=nosuch")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_job.status(), 400);
    server.stop().await;
}

async fn body_of(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn the_command_line_refuses_a_purge_without_keep_days_and_a_clickhouse_source() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("veris.db").display());
    let missing = crate::cli::veris(&url, &["telemetry-purge"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--keep-days"), "{stderr}");
    let migrated = crate::cli::veris(&url, &["migrate"]);
    assert!(migrated.status.success());
    let clickhouse = crate::cli::veris(
        &url,
        &[
            "--source-url",
            "clickhouse://127.0.0.1:9/default?table=events",
            "telemetry-purge",
            "--keep-days",
            "30",
        ],
    );
    let stderr = String::from_utf8_lossy(&clickhouse.stderr);
    assert_eq!(clickhouse.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TTL"), "{stderr}");
}

#[tokio::test]
async fn a_purge_needs_keep_days() {
    let db = TestDb::new(crate::common::Kind::Sqlite).await.unwrap();
    let error = telemetry_purge::run(&db.store, &PurgeOptions::keeping(0))
        .await
        .unwrap_err();
    assert!(matches!(error, PurgeError::KeepDaysRequired), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_purges_on_its_purge_schedule_and_needs_keep_days() {
    use veris_jobs::app::{Application, Connect, ServeSettings, Settings};
    let db = TestDb::new(crate::common::Kind::Sqlite).await.unwrap();
    let day = days_ago(5);
    db.insert(&day_events(day, 40, 4)).await;
    roll_up(&db, day, day).await;
    let build = || async {
        Application::build(
            Settings {
                database_url: db.url.clone(),
                source_table: crate::common::default_table(),
                source_url: None,
                job: RunOptions::default(),
                max_http_runs: 4,
            },
            Connect::Lazy,
        )
        .await
        .unwrap()
    };
    let settings = |keep_days| ServeSettings {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_range_days: 366,
        schedule: None,
        today_every: None,
        // Every second.
        purge_schedule: Some("* * * * * *".to_owned()),
        keep_days,
        secret: CronSecret::new(SECRET).unwrap(),
        read_secret: None,
    };
    let refused = build().await.serve(settings(None)).await.unwrap_err();
    assert!(refused.to_string().contains("--keep-days"), "{refused}");

    let server = build().await.serve(settings(Some(2))).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    while raw_counts(&db).await.contains_key(&day.to_string()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no scheduled purge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    serving.await.unwrap();
    let runs = db
        .store
        .recent_runs_of(10, Some("telemetry-purge"))
        .await
        .unwrap();
    let first = runs.last().expect("the scheduled purge is recorded");
    assert_eq!(
        (first.trigger.as_str(), first.status.as_str()),
        ("schedule", "ok")
    );
}
