//! Faults, crashes, concurrency and hostile input: nothing is lost or corrupted.
//! `docs/RELIABILITY.md` lists each fault, the test that tries it and what it saw.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use veris_jobs::model::{DayStatus, MAX_EVENT_NAME_BYTES};
use veris_jobs::store::{Database, NewEvent};

use crate::cli::{stderr, veris};
use crate::common::{Kind, StoredRow, TestDb, event, range_options};

crate::on_both_databases!(
    hostile_events_land_under_a_reason_or_in_the_summary,
    kill_9_at_20_moments_leaves_every_day_old_or_new,
    kill_9_inside_the_days_write_transaction_leaves_the_day_as_it_was,
    a_concurrency_soak_ends_with_every_day_right,
);

async fn hostile_events_land_under_a_reason_or_in_the_summary(db: TestDb) {
    let at = "2024-05-05T12:00:00Z";
    let deep = format!(r#"{{"deep":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let big_string = format!(r#"{{"big":"{}"}}"#, "x".repeat(1 << 20));
    let long_name = "n".repeat(100 * 1024);
    let mut events = vec![
        event("deep", None, at, Some(&deep)),
        event("big", None, at, Some(&big_string)),
        event(
            "numbers",
            None,
            at,
            Some(r#"{"wide":123456789012345678901234567890,"tiny":-1e-300}"#),
        ),
        event("numbers", None, at, Some(r#"{"huge":1e400}"#)),
        event("dup", None, at, Some(r#"{"k":1,"k":"last"}"#)),
        event(&long_name, None, at, None),
        event(
            "unicode",
            Some("üser-😀"),
            at,
            Some(r#"{"ключ":"значение","emoji":"😀"}"#),
        ),
    ];
    if db.kind == Kind::Sqlite {
        events.push(event("nan", None, at, Some(r#"{"x":NaN}"#)));
        events.push(event("inf", None, at, Some("Infinity")));
    }
    db.insert(&events).await;
    if db.kind == Kind::Sqlite {
        // Text that is not UTF-8, as only SQLite can hold it.
        db.execute(
            "INSERT INTO telemetry_events (event, user_id, created_at, meta) VALUES \
             (CAST(X'76696577ff' AS TEXT), CAST(X'c3' AS TEXT), '2024-05-05T12:00:00.000Z', CAST(X'7b2261223a2280ff227d' AS TEXT))",
        )
        .await;
    }

    let started = Instant::now();
    let report = db.run(&range_options("2024-05-05", "2024-05-05")).await;
    eprintln!("hostile events rolled up in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "no stall");
    let day = &report.days[0];
    assert_eq!(day.status, DayStatus::Written, "{day:?}");
    let reason = |r: &str| day.skipped.get(r).copied().unwrap_or(0);
    assert_eq!(
        reason("invalid_event"),
        1,
        "the 100 KB name is skipped whole"
    );
    // Too deep for the parser, and (on PostgreSQL, as 1e400 comes back as a 401-digit
    // number) beyond f64: the metadata is left out, the event still counts.
    let invalid = if db.kind == Kind::Sqlite { 4 } else { 2 };
    assert_eq!(reason("invalid_meta"), invalid, "{:?}", day.skipped);
    assert_eq!(reason("non_object_meta"), 0);

    let rows: BTreeMap<String, StoredRow> = db
        .rollups()
        .await
        .into_iter()
        .map(|r| (r.1.clone(), r))
        .collect();
    assert!(!rows.keys().any(|k| k.len() > MAX_EVENT_NAME_BYTES));
    assert_eq!(rows["deep"].2, 1);
    assert_eq!(rows["deep"].4, "{}");
    // Counted, never kept: a value over 1,024 bytes.
    let big: Value = serde_json::from_str(&rows["big"].4).unwrap();
    assert_eq!(
        big,
        serde_json::json!({"big": {"n": 1, "values": {}, "other": 1}})
    );
    let numbers: Value = serde_json::from_str(&rows["numbers"].4).unwrap();
    assert_eq!(numbers["wide"]["sum"].as_f64(), Some(1.2345678901234568e29));
    assert_eq!(numbers["tiny"]["min"].as_f64(), Some(-1e-300));
    let dup: Value = serde_json::from_str(&rows["dup"].4).unwrap();
    assert_eq!(dup["k"]["values"]["last"], 1, "the last duplicate key wins");
    assert!(dup["k"].get("sum").is_none());
    let unicode: Value = serde_json::from_str(&rows["unicode"].4).unwrap();
    assert_eq!(unicode["ключ"]["values"]["значение"], 1);
    assert_eq!(rows["unicode"].3, 1);
    if db.kind == Kind::Sqlite {
        assert!(
            rows.contains_key("view\u{fffd}"),
            "text that is not UTF-8 is read leniently"
        );
    }

    // A re-run is byte-identical, hostile rows included.
    let before = db.rollups().await;
    let again = db.run(&range_options("2024-05-05", "2024-05-05")).await;
    assert_eq!(again.days[0].unchanged, again.days[0].rows);
    assert_eq!(db.rollups().await, before);
}

/// Events on `days` days from 2024-06-01, `per_day` each, with a `round` in their
/// metadata so that every round changes every day's aggregate.
fn round_events(days: u32, per_day: u32, round: u32) -> Vec<NewEvent> {
    let mut events = Vec::new();
    for day in 1..=days {
        for i in 0..per_day {
            let at = format!("2024-06-{day:02}T{:02}:{:02}:00Z", i % 24, i % 60);
            let meta = format!(r#"{{"round":{round},"path":"/p{}"}}"#, i % 7);
            events.push(event(
                ["view", "click"][(i % 2) as usize],
                Some(&format!("u{}", i % 31)),
                &at,
                Some(&meta),
            ));
        }
    }
    events
}

fn by_date(rows: &[StoredRow]) -> BTreeMap<String, Vec<(String, i64, i64, String)>> {
    let mut days: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for (date, event, count, users, meta, _) in rows {
        days.entry(date.clone())
            .or_default()
            .push((event.clone(), *count, *users, meta.clone()));
    }
    days
}

async fn kill_9_at_20_moments_leaves_every_day_old_or_new(db: TestDb) {
    const DAYS: u32 = 20;
    let range = [
        "telemetry-daily",
        "--start-date",
        "2024-06-01",
        "--end-date",
        "2024-06-20",
        "--force",
    ];
    db.insert(&round_events(DAYS, 150, 0)).await;
    let output = veris(&db.url, &range);
    assert!(output.status.success(), "{}", stderr(&output));

    let mut states_seen = std::collections::BTreeSet::new();
    let mut kills_mid_run = 0;
    for moment in 0..20u32 {
        let old = by_date(&db.rollups().await);
        db.insert(&round_events(DAYS, 150, moment + 1)).await;
        let last_run = db
            .store
            .recent_runs(1)
            .await
            .unwrap()
            .first()
            .map_or(0, |r| r.id);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .env("DATABASE_URL", &db.url)
            .args(range)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at spread-out points, found from the run's own progress in job_runs
        // (so that a slow machine moves the kills along with the run): at once, or
        // once `moment` days are committed, then a moment more to land inside a day.
        if moment > 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let progress = db.store.recent_runs(1).await.unwrap();
                let reached = progress.first().is_some_and(|r| {
                    r.id > last_run && (r.days_done >= i64::from(moment) || r.status != "running")
                });
                if reached || child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(u64::from(moment % 4))).await;
        }
        let _ = child.kill(); // SIGKILL (a run that already ended is simply reaped)
        child.wait().unwrap();
        let after_kill = by_date(&db.rollups().await);
        // The killed run, if it had recorded itself and not ended.
        let killed = db
            .store
            .recent_runs(1)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id > last_run && r.status == "running")
            .map(|r| r.id);

        let output = veris(&db.url, &range);
        assert!(
            output.status.success(),
            "the re-run completes: {}",
            stderr(&output)
        );
        let new = by_date(&db.rollups().await);
        // Every date of either state, so that a day wiped by the kill is seen too.
        let dates: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let mut written = 0;
        for date in dates {
            let rows = after_kill.get(date);
            if rows == new.get(date) {
                written += 1;
            } else {
                assert_eq!(
                    rows,
                    old.get(date),
                    "moment {moment}: {date} is neither old nor new"
                );
            }
        }
        assert_eq!(new.len(), DAYS as usize);
        states_seen.insert(written);
        if let Some(id) = killed {
            let record = db
                .store
                .run(id)
                .await
                .unwrap()
                .expect("the killed run's record");
            assert_eq!(record.status, "abandoned", "moment {moment}: run {id}");
            kills_mid_run += 1;
        }

        // The repaired range equals a clean run from scratch.
        db.execute("DELETE FROM telemetry_daily").await;
        assert!(veris(&db.url, &range).status.success());
        assert_eq!(by_date(&db.rollups().await), new, "moment {moment}");
    }
    eprintln!("days already written when killed: {states_seen:?}");
    assert!(
        states_seen.len() >= 3,
        "kills landed at several points of the run: {states_seen:?}"
    );
    assert!(
        kills_mid_run >= 3,
        "runs killed while running: {kills_mid_run}"
    );
}

async fn a_concurrency_soak_ends_with_every_day_right(db: TestDb) {
    db.insert(&round_events(10, 100, 0)).await;
    let server = crate::http::TestServer::spawn_app(&db.url, 366).await;
    let server = std::sync::Arc::new(server);
    let ranges = [
        ("01", "05"),
        ("03", "08"),
        ("06", "10"),
        ("01", "10"),
        ("04", "06"),
    ];
    let writer_store = db.second_store(&crate::common::default_table()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut round = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer_store
                    .insert_events(&round_events(10, 3, round))
                    .await
                    .unwrap();
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let mut calls = Vec::new();
    // When each command-line run was launched, and its range.
    let mut launched = Vec::new();
    for (i, (start, end)) in ranges.iter().cycle().take(10).enumerate() {
        let (start, end) = (format!("2024-06-{start}"), format!("2024-06-{end}"));
        if i % 2 == 0 {
            let url = db.url.clone();
            launched.push((jiff::Timestamp::now(), start.clone(), end.clone()));
            calls.push(tokio::task::spawn_blocking(move || {
                let output = veris(
                    &url,
                    &[
                        "telemetry-daily",
                        "--start-date",
                        &start,
                        "--end-date",
                        &end,
                        "--force",
                        "--lock-timeout",
                        "60s",
                    ],
                );
                output.status.code().unwrap_or(-1) as u16
            }));
        } else {
            let server = server.clone();
            calls.push(tokio::spawn(async move {
                let body = format!(r#"{{"startDate":"{start}","endDate":"{end}"}}"#);
                server.post_json(&body).await.0.as_u16()
            }));
        }
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(120), call)
                .await
                .expect("every call ends")
                .unwrap(),
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(120), "no deadlock");
    // Command-line runs wait and succeed (0); HTTP runs succeed or are turned away
    // (409 for a held day, 429 past the four runs requests may have going).
    assert!(
        outcomes.iter().all(|c| [0, 200, 409, 429].contains(c)),
        "{outcomes:?}"
    );

    // The runs overlapped in this phase itself: a command-line run launched while
    // another run over some of its days was going began only once that run ended
    // (it waited for the days; a run records itself once it holds them).
    let intervals = db
        .strings(
            match db.kind {
                Kind::Postgres => {
                    "SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                     || ' ' || to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                     || ' ' || start_date::text || ' ' || end_date::text FROM job_runs"
                }
                Kind::Sqlite => {
                    "SELECT started_at || ' ' || finished_at || ' ' || start_date || ' ' || end_date \
                     FROM job_runs"
                }
            },
            None,
        )
        .await;
    let runs: Vec<(jiff::Timestamp, jiff::Timestamp, String, String)> = intervals
        .iter()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            (
                parts[0].parse().unwrap(),
                parts[1].parse().unwrap(),
                parts[2].to_owned(),
                parts[3].to_owned(),
            )
        })
        .collect();
    let waited = launched.iter().any(|(at, start, end)| {
        let Some(mine) = runs.iter().find(|r| &r.2 == start && &r.3 == end) else {
            return false;
        };
        runs.iter().any(|other| {
            other.1 > *at && other.1 <= mine.0 && other.2 <= mine.3 && mine.2 <= other.3
        })
    });
    assert!(
        waited,
        "a run waited for another over shared days: launched {launched:?}, recorded {intervals:?}, answers {outcomes:?}"
    );

    // Checked before anything repairs it, with the writer stopped: each day is the
    // aggregate of the writer's rounds 0 to k for some k of its own (rounds only add:
    // round 0 gave each day 50 views and 50 clicks, each later round r 2 views and a
    // click, all with `round: r`).
    let rows = db.rollups().await;
    for (date, events) in by_date(&rows) {
        let count = |name: &str| events.iter().find(|e| e.0 == name).map(|e| e.1).unwrap();
        let k = (count("view") - 50) / 2;
        for (name, per_round, base) in [("view", 2, 50), ("click", 1, 50)] {
            let row = events.iter().find(|e| e.0 == name).unwrap();
            assert_eq!(
                row.1,
                base + per_round * k,
                "{date} {name}: rounds 0 to {k}"
            );
            let meta: serde_json::Value = serde_json::from_str(&row.3).unwrap();
            let rounds = &meta["round"];
            assert_eq!(rounds["n"], row.1, "{date} {name}");
            assert_eq!(rounds["min"], 0, "{date} {name}");
            assert_eq!(rounds["max"], k, "{date} {name}");
            assert_eq!(rounds["sum"], per_round * k * (k + 1) / 2, "{date} {name}");
        }
    }

    // Every day once more, by runs that overlap for certain: the test holds a day, so
    // the command-line runs over it wait and a request for it is turned away. The
    // writer has stopped, so once they end every day must be right as it stands.
    let held_day = "2024-06-05".parse().unwrap();
    let held = db
        .store
        .lock_days(&[held_day], Duration::ZERO)
        .await
        .expect("the test takes a day");
    let last_runs: Vec<_> = [("01", "05"), ("04", "08"), ("05", "10")]
        .into_iter()
        .map(|(start, end)| {
            let url = db.url.clone();
            tokio::task::spawn_blocking(move || {
                let (start, end) = (format!("2024-06-{start}"), format!("2024-06-{end}"));
                veris(
                    &url,
                    &[
                        "telemetry-daily",
                        "--start-date",
                        &start,
                        "--end-date",
                        &end,
                        "--force",
                    ],
                )
                .status
                .code()
            })
        })
        .collect();
    let (status, _) = server
        .post_json(r#"{"startDate":"2024-06-05","endDate":"2024-06-05"}"#)
        .await;
    assert_eq!(
        status.as_u16(),
        409,
        "a request for a held day is turned away"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        last_runs.iter().all(|run| !run.is_finished()),
        "runs over a held day wait for it"
    );
    held.release().await;
    for run in last_runs {
        assert_eq!(run.await.unwrap(), Some(0));
    }

    // Checked before anything repairs it: a dry run finds nothing to change, and the
    // table equals a recomputation from scratch.
    let all = range_options("2024-06-01", "2024-06-10");
    let check = db
        .run(&veris_jobs::telemetry_daily::RunOptions {
            dry_run: true,
            ..all.clone()
        })
        .await;
    assert_eq!(
        (
            check.totals.inserted,
            check.totals.updated,
            check.totals.deleted
        ),
        (0, 0, 0),
        "{check:?}"
    );
    assert_eq!(check.totals.unchanged, check.totals.rows);
    let settled = db.rollups().await;
    db.execute("DELETE FROM telemetry_daily").await;
    db.run(&all).await;
    assert_eq!(by_date(&db.rollups().await), by_date(&settled));
    let Ok(server) = std::sync::Arc::try_unwrap(server) else {
        panic!("server still shared")
    };
    server.stop().await;
}

#[tokio::test]
async fn a_terminated_connection_fails_that_day_and_a_rerun_repairs_it() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    // A big middle day, so that its COPY can be caught in flight.
    let mut events = round_events(3, 50, 0);
    for i in 0..150_000u32 {
        let at = format!("2024-06-02T{:02}:{:02}:{:02}Z", i % 24, i % 60, i % 59);
        events.push(event(
            "bulk",
            Some(&format!("u{}", i % 1000)),
            &at,
            Some(r#"{"k":"v","n":1}"#),
        ));
    }
    db.insert(&events).await;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", &db.url)
        .args([
            "telemetry-daily",
            "--start-date",
            "2024-06-01",
            "--end-date",
            "2024-06-03",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let admin = veris_jobs::store::Store::connect(
        &crate::common::server_url(),
        &crate::common::default_table(),
    )
    .await
    .unwrap();
    let Database::Postgres(admin) = admin.database() else {
        unreachable!()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY%created_at >= ''2024-06-02T%'",
        )
        .bind(&name)
        .fetch_all(admin.pool())
        .await
        .unwrap();
        if killed.contains(&true) {
            break;
        }
        assert!(Instant::now() < deadline, "caught the day's COPY in flight");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["days"][0]["status"], "written");
    assert_eq!(report["days"][1]["status"], "failed");
    let error = report["days"][1]["error"].as_str().unwrap();
    eprintln!("the failed day: {error}");
    assert!(
        error.contains("reading the events of 2024-06-02"),
        "{error}"
    );
    assert_eq!(
        report["days"][2]["status"], "written",
        "the run goes on once the database answers again"
    );
    assert!(
        !db.rollups().await.iter().any(|r| r.0 == "2024-06-02"),
        "the failed day wrote nothing"
    );

    let rerun = veris(
        &db.url,
        &[
            "telemetry-daily",
            "--start-date",
            "2024-06-01",
            "--end-date",
            "2024-06-03",
            "--json",
        ],
    );
    assert_eq!(rerun.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(
        report["days"][1]["inserted"], 3,
        "the re-run repairs the day"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_reported_within_the_connect_timeout() {
    // Nothing listens on port 9 of the loopback: the connection is refused at once.
    let started = Instant::now();
    let output = veris(
        "postgres://postgres@127.0.0.1:9/none",
        &["telemetry-daily", "--date", "2024-01-01"],
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("cannot reach the database postgres://postgres@127.0.0.1:9/none"),
        "{message}"
    );
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

#[tokio::test]
async fn a_sqlite_file_held_by_another_writer_waits_then_fails_clearly() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    db.insert(&[event("view", None, "2024-01-01T10:00:00Z", None)])
        .await;
    // Rolled up already: a day with nothing to change still fails while the
    // database cannot be written (its run cannot even be recorded).
    db.run(&range_options("2024-01-01", "2024-01-01")).await;
    let Database::Sqlite(sqlite) = db.store.database() else {
        unreachable!()
    };
    let mut holder = sqlite.pool().acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = Instant::now();
    let output = veris(
        &db.url,
        &["telemetry-daily", "--date", "2024-01-01", "--json"],
    );
    let waited = started.elapsed();
    // One busy timeout (10 s), not one for the record and another for the day.
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(15),
        "one bounded wait: {waited:?}"
    );
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["days"][0]["status"], "failed");
    let error = report["days"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("the database is busy") && error.contains("locked"),
        "{report}"
    );
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
    drop(holder);
    assert_eq!(
        veris(&db.url, &["telemetry-daily", "--date", "2024-01-01"])
            .status
            .code(),
        Some(0)
    );
}

#[tokio::test]
async fn hostile_configuration_is_refused_before_any_sql() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    for hostile in [
        "events\"; DROP TABLE telemetry_daily; --",
        "events; DELETE FROM telemetry_daily",
        "events/*comment*/",
        "events -- comment",
        "évènements",
        "events\u{200b}",
        "'events'",
        "public.events.x",
    ] {
        let output = veris(&db.url, &["telemetry-daily", "--source-table", hostile]);
        assert_eq!(output.status.code(), Some(2), "{hostile}");
        let by_env = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .env("DATABASE_URL", &db.url)
            .env("TELEMETRY_SOURCE_TABLE", hostile)
            .arg("migrate")
            .output()
            .unwrap();
        assert_eq!(
            by_env.status.code(),
            Some(2),
            "{hostile} from the environment"
        );
        // Blamed on the variable it came from, not on a flag never given.
        assert!(
            stderr(&by_env).contains("TELEMETRY_SOURCE_TABLE (from the environment)"),
            "{}",
            stderr(&by_env)
        );
    }
    let tables: Vec<String> = match db.store.database() {
        Database::Sqlite(s) => {
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .fetch_all(s.pool())
                .await
                .unwrap()
        }
        _ => unreachable!(),
    };
    assert_eq!(
        tables,
        [
            "job_runs",
            "purged_days",
            "telemetry_daily",
            "telemetry_events",
            "telemetry_hourly",
            "veris_demo_sample"
        ]
    );
}

#[test]
fn ten_thousand_hostile_requests_get_only_contract_answers_on_sqlite() {
    ten_thousand_hostile_requests_get_only_contract_answers(Kind::Sqlite);
}

#[test]
fn ten_thousand_hostile_requests_get_only_contract_answers_on_postgres() {
    ten_thousand_hostile_requests_get_only_contract_answers(Kind::Postgres);
}

/// Valid HTTP, hostile content: 10,000 generated requests, each answered the status
/// the contract gives it, with an error code when not a 200.
fn ten_thousand_hostile_requests_get_only_contract_answers(kind: Kind) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = runtime.block_on(TestDb::new(kind)) else {
        return;
    };
    let (server, _db) = runtime.block_on(async {
        db.insert(&[event(
            "view",
            Some("u"),
            "2024-01-02T10:00:00Z",
            Some(r#"{"a":1}"#),
        )])
        .await;
        (crate::http::TestServer::spawn_app(&db.url, 3).await, db)
    });

    let text = prop_oneof![
        Just(String::new()),
        Just("2024-01-01".to_owned()),
        Just("2024-01-03".to_owned()),
        Just("2099-12-31".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        "[0-9-]{0,12}",
        any::<String>(),
        "\\PC{0,40}",
        Just("9".repeat(400)),
    ];
    let key = prop_oneof![
        Just("startDate".to_owned()),
        Just("endDate".to_owned()),
        Just("dryRun".to_owned()),
        "[a-zA-Z]{1,8}",
        any::<String>(),
    ];
    let query = prop::collection::vec((key.clone(), text.clone()), 0..4);
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text.clone().prop_map(Value::from),
    ];
    let json = json_leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    let body = prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..64),
        json.prop_map(|v| v.to_string().into_bytes()),
        (1usize..300).prop_map(|depth| format!(
            "{}{}",
            "[".repeat(depth * 10),
            "]".repeat(depth * 10)
        )
        .into_bytes()),
        Just(
            format!(
                r#"{{"startDate":"2024-01-01","pad":"{}"}}"#,
                "x".repeat(20_000)
            )
            .into_bytes()
        ),
        Just(br#"{"startDate":"2024-01-01","endDate":"2024-01-03","dryRun":true}"#.to_vec()),
    ];
    let method = prop_oneof![
        4 => Just(reqwest::Method::GET),
        4 => Just(reqwest::Method::POST),
        1 => Just(reqwest::Method::PUT),
        1 => Just(reqwest::Method::DELETE),
        1 => Just(reqwest::Method::PATCH),
    ];
    let path = prop_oneof![
        6 => Just(crate::http::JOB.to_owned()),
        2 => Just(format!("{}/", crate::http::JOB)),
        1 => Just("/healthz".to_owned()),
        1 => "/[a-z/]{0,24}",
    ];
    let auth = prop_oneof![
        6 => Just(Some(format!("Bearer {}", crate::http::SECRET))),
        1 => Just(None),
        1 => "[ -~]{0,40}".prop_map(Some),
    ];
    let content_type = prop_oneof![
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(None),
        "[ -~]{0,30}".prop_map(Some),
    ];
    let request = (method, path, query, auth, content_type, body);

    // A failing request's seed is kept (tests run in the package's directory) and
    // replayed first by every later run, as the `proptest!` tests' are.
    let mut runner = TestRunner::new(Config {
        cases: 10_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/tests/http_fuzz.txt",
        ))),
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(BTreeMap::<u16, u32>::new());
    runner
        .run(
            &request,
            |(method, path, query, auth, content_type, body)| {
                let mut url = server.url(&path);
                if !query.is_empty() {
                    let mut encoded = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in &query {
                        encoded.append_pair(k, v);
                    }
                    url = format!("{url}?{}", encoded.finish());
                }
                let (status, answer) = runtime.block_on(async {
                    let mut request = server
                        .client
                        .request(method.clone(), &url)
                        .body(body.clone());
                    if let Some(auth) = &auth
                        && let Ok(value) = reqwest::header::HeaderValue::from_str(auth)
                    {
                        request = request.header("authorization", value);
                    }
                    if let Some(ct) = &content_type
                        && let Ok(value) = reqwest::header::HeaderValue::from_str(ct)
                    {
                        request = request.header("content-type", value);
                    }
                    let response = request.send().await.expect("the server answers");
                    let status = response.status().as_u16();
                    (status, response.bytes().await.unwrap_or_default())
                });
                *seen.lock().unwrap().entry(status).or_default() += 1;
                let sent = Sent {
                    method: &method,
                    path: &path,
                    query: &query,
                    auth: auth
                        .as_deref()
                        .filter(|a| reqwest::header::HeaderValue::from_str(a).is_ok()),
                    content_type: content_type
                        .as_deref()
                        .filter(|c| reqwest::header::HeaderValue::from_str(c).is_ok()),
                    body: &body,
                };
                if let Some(expected) = sent.expected_status() {
                    prop_assert_eq!(
                        status,
                        expected,
                        "{} {} -> {}: {}",
                        method,
                        url,
                        status,
                        String::from_utf8_lossy(&answer)
                    );
                } else {
                    // A random path that happens to name a route the model leaves out.
                    prop_assert!(
                        [200, 400, 401, 404, 405].contains(&status),
                        "{method} {url} -> {status}"
                    );
                }
                if status != 200 {
                    let error: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                    prop_assert!(
                        error["error"]["code"]
                            .as_str()
                            .is_some_and(|c| !c.is_empty()),
                        "{status}: {error}"
                    );
                    prop_assert!(error["error"]["message"].is_string());
                }
                Ok(())
            },
        )
        .unwrap();
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses seen: {seen:?}");
    for status in [200, 400, 401, 404, 405, 413, 415] {
        assert!(
            seen.contains_key(&status),
            "the generator reached {status}: {seen:?}"
        );
    }
    runtime.block_on(server.stop());
}

#[tokio::test]
async fn bad_tokens_and_health_checks_under_load_do_not_disturb_a_run() {
    use futures_util::StreamExt as _;

    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let range = crate::http::fill_days(&db, 300).await;
    let server = std::sync::Arc::new(crate::http::TestServer::spawn_app(&db.url, 366).await);
    let run = {
        let server = server.clone();
        let body = format!(
            r#"{{"startDate":"{}","endDate":"{}"}}"#,
            range.start(),
            range.end()
        );
        tokio::spawn(async move {
            let answer = server.post_json(&body).await;
            (answer, Instant::now())
        })
    };
    let started = Instant::now();
    let latencies: Vec<(u16, Duration, Instant)> = futures_util::stream::iter(0..2_200)
        .map(|i| {
            let server = server.clone();
            async move {
                let sent = Instant::now();
                let request = if i % 11 == 0 {
                    server.client.get(server.url("/healthz"))
                } else {
                    server
                        .client
                        .get(server.url(crate::http::JOB))
                        .bearer_auth(format!("wrong-{i}"))
                };
                let status = request.send().await.unwrap().status().as_u16();
                (status, sent.elapsed(), Instant::now())
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let storm = started.elapsed();
    assert_eq!(latencies.iter().filter(|(s, ..)| *s == 401).count(), 2_000);
    assert_eq!(latencies.iter().filter(|(s, ..)| *s == 200).count(), 200);
    let mut times: Vec<Duration> = latencies.iter().map(|(_, t, _)| *t).collect();
    times.sort_unstable();
    let p99 = times[times.len() * 99 / 100];
    eprintln!(
        "2,200 requests at concurrency 50 in {storm:?}; p50 {:?}, p99 {p99:?}",
        times[times.len() / 2]
    );
    // Answered while the run was going, not queued behind it: health checks too
    // (by the order of events, not a bound on time that a loaded machine may pass).
    let ((status, report), run_ended) = run.await.unwrap();
    let answered_during_run = |wanted: u16| {
        latencies
            .iter()
            .filter(|(s, _, at)| *s == wanted && *at < run_ended)
            .count()
    };
    assert!(
        answered_during_run(200) > 0 && answered_during_run(401) > 0,
        "health checks and refusals answered during the run"
    );
    assert_eq!(status.as_u16(), 200, "{report}");
    assert_eq!(report["totals"]["rows"], 300, "the run was not disturbed");
    assert_eq!(db.rollups().await.len(), 300);
    let Ok(server) = std::sync::Arc::try_unwrap(server) else {
        panic!("server still shared")
    };
    server.stop().await;
}

#[tokio::test]
async fn slow_or_never_finishing_request_bodies_are_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = crate::http::TestServer::start_with(
        app_state(&db).with_body_timeout(Duration::from_millis(500)),
    )
    .await;
    let address = server.address();
    for framing in ["Content-Length: 100\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{framing}\r\n",
            crate::http::JOB,
            crate::http::SECRET
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(if framing.starts_with("Content") {
                b"{"
            } else {
                b"1\r\n{\r\n"
            })
            .await
            .unwrap();
        let started = Instant::now();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    server.stop().await;
}

/// A server's state over `db` with the test secret and default settings.
fn app_state(db: &TestDb) -> veris_jobs::http::AppState {
    let secret = veris_jobs::config::CronSecret::new(crate::http::SECRET).unwrap();
    veris_jobs::http::AppState::new(db.store.clone(), Default::default(), 366, secret)
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_and_do_not_hold_up_a_shutdown() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// How long until the server closes `stream`, reading (and dropping) what it sends.
    async fn closed_after(mut stream: tokio::net::TcpStream) -> Duration {
        let started = Instant::now();
        let mut buffer = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .expect("the server closed the connection within 10 s");
            if matches!(read, Ok(0) | Err(_)) {
                return started.elapsed();
            }
        }
    }

    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let server = crate::http::TestServer::start_with(
        app_state(&db).with_header_timeout(Duration::from_millis(700)),
    )
    .await;
    let address = server.address().to_owned();

    // A head that never ends, and a connection that never sends a byte.
    let mut partial = tokio::net::TcpStream::connect(&address).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .await
        .unwrap();
    let silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    // And a kept-alive connection that sends no second request.
    let mut kept_alive = tokio::net::TcpStream::connect(&address).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let (partial, silent, kept_alive) = tokio::join!(
        closed_after(partial),
        closed_after(silent),
        closed_after(kept_alive)
    );
    for (what, after) in [
        ("a partial head", partial),
        ("a silent connection", silent),
        ("an idle kept-alive connection", kept_alive),
    ] {
        assert!(
            after >= Duration::from_millis(500) && after < Duration::from_secs(5),
            "{what} was closed after {after:?}"
        );
    }

    // A prompt client is still served.
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // A shutdown waits for no slow client longer than the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("the server stopped within 5 s");
    drop(slow);
}

/// A run killed while its day's write transaction is open leaves the day as it
/// was; the next run writes it whole. The open transaction is seen from outside: in
/// PostgreSQL's `pg_stat_activity`, a statement on `telemetry_daily` in a
/// transaction that has written; in SQLite, the write lock held (`BEGIN IMMEDIATE`
/// refused at once) on two probes a few milliseconds apart, longer than the run's
/// own bookkeeping holds it. Kills are spread from that moment to the run's end,
/// and each round adds one event to every one of the day's 20,000 names: a day
/// seen whole has one count on every row, a day half written two.
async fn kill_9_inside_the_days_write_transaction_leaves_the_day_as_it_was(db: TestDb) {
    let round: Vec<NewEvent> = (0..20_000)
        .map(|i| event(&format!("e{i:05}"), Some("u"), "2024-06-01T10:00:00Z", None))
        .collect();
    db.insert(&round).await;
    let day = ["telemetry-daily", "--date", "2024-06-01"];
    assert!(veris(&db.url, &day).status.success());
    let day_count = async || {
        let rows = db.rollups().await;
        assert_eq!(rows.len(), 20_000);
        let counts: BTreeSet<i64> = rows.iter().map(|row| row.2).collect();
        assert_eq!(counts.len(), 1, "a day half written: counts {counts:?}");
        counts.into_iter().next().unwrap()
    };
    assert_eq!(day_count().await, 1);

    let sqlite_probe = match db.kind {
        Kind::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://");
            let probe = rusqlite::Connection::open(path).unwrap();
            probe.busy_timeout(Duration::ZERO).unwrap();
            Some(probe)
        }
        Kind::Postgres => None,
    };
    let write_lock_held =
        |probe: &rusqlite::Connection| match probe.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                probe.execute_batch("ROLLBACK").unwrap();
                false
            }
            Err(error) => {
                assert_eq!(
                    error.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy),
                    "{error}"
                );
                true
            }
        };
    // Starts a run and returns it once its write transaction is seen open, or
    // `None` if it ended first.
    let run_until_inside = async || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .env("DATABASE_URL", &db.url)
            .args(day)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            let inside = match (db.store.database(), &sqlite_probe) {
                (Database::Postgres(pg), _) => sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL \
                     AND query LIKE '%telemetry_daily%')",
                )
                .fetch_one(pg.pool())
                .await
                .unwrap(),
                (_, Some(probe)) => {
                    write_lock_held(probe) && {
                        std::thread::sleep(Duration::from_millis(3));
                        write_lock_held(probe)
                    }
                }
                (_, None) => unreachable!("a SQLite test has its probe"),
            };
            if inside {
                return Some(child);
            }
        }
        child.wait().unwrap();
        None
    };

    // How long a run goes on once its write is seen: the span the kills cover.
    db.insert(&round).await;
    let mut child = run_until_inside().await.expect("the write was seen");
    let seen = Instant::now();
    assert!(child.wait().unwrap().success());
    let span = seen.elapsed();
    let mut rounds = 2;
    assert_eq!(day_count().await, rounds);

    let mut outcomes = Vec::new();
    for kill in 0..8u32 {
        db.insert(&round).await;
        rounds += 1;
        let Some(mut child) = run_until_inside().await else {
            continue;
        };
        std::thread::sleep(span * kill / 8);
        let _ = child.kill();
        child.wait().unwrap();
        let count = day_count().await;
        assert!(
            count == rounds - 1 || count == rounds,
            "{count} events a name after {rounds} rounds"
        );
        outcomes.push(count == rounds);
        if count == rounds - 1 {
            // Left as it was: the next round must see it written first.
            assert!(veris(&db.url, &day).status.success());
        }
    }
    assert!(outcomes.len() >= 4, "kills landed inside: {outcomes:?}");
    assert!(
        outcomes.contains(&false),
        "at least one kill landed before the commit: {outcomes:?}"
    );
    let output = veris(&db.url, &day);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(day_count().await, rounds);
}

/// A request the fuzz test sent, and the status the contract gives it: 404 for a
/// path that is no route, then 401 without the token on a protected route, then 405
/// for another method, then the request's own checks (413 for a body over 16 KiB,
/// 415 for a POST body that is not JSON, 400 for anything malformed or ambiguous),
/// else 200 (the test's server has one event and a range limit of 3 days).
struct Sent<'a> {
    method: &'a reqwest::Method,
    path: &'a str,
    query: &'a [(String, String)],
    auth: Option<&'a str>,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

impl Sent<'_> {
    /// `None` for the few random paths under `/api/` or `/assets/` it does not model.
    fn expected_status(&self) -> Option<u16> {
        use reqwest::Method;
        let job = self.path == crate::http::JOB || self.path == format!("{}/", crate::http::JOB);
        let open = matches!(self.path, "/" | "/healthz");
        if !job && !open && self.path != "/metrics" {
            if self.path.starts_with("/api/") || self.path.starts_with("/assets/") {
                return None;
            }
            return Some(404);
        }
        if !open && self.auth != Some(&format!("Bearer {}", crate::http::SECRET)) {
            return Some(401);
        }
        let allowed = *self.method == Method::GET || (job && *self.method == Method::POST);
        if !allowed {
            return Some(405);
        }
        if !job {
            return Some(200);
        }
        Some(if *self.method == Method::GET {
            self.get_status()
        } else {
            self.post_status()
        })
    }

    fn get_status(&self) -> u16 {
        if !self.body.is_empty() {
            return 400;
        }
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, value) in self.query {
            if !["startDate", "endDate", "dryRun"].contains(&key.as_str())
                || fields.insert(key, value).is_some()
            {
                return 400;
            }
        }
        let dry_run_ok = fields
            .get("dryRun")
            .is_none_or(|v| ["true", "false"].contains(v));
        if dry_run_ok
            && range_ok(
                fields.get("startDate").copied(),
                fields.get("endDate").copied(),
            )
        {
            200
        } else {
            400
        }
    }

    fn post_status(&self) -> u16 {
        if !self.query.is_empty() {
            return 400;
        }
        if self.body.len() > 16 * 1024 {
            return 413;
        }
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return 200;
        }
        let is_json = self.content_type.is_some_and(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
        if !is_json {
            return 415;
        }
        // The generated objects never repeat a key (they are built as maps).
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(self.body) else {
            return 400;
        };
        let known = ["startDate", "endDate", "dryRun"];
        if fields.keys().any(|k| !known.contains(&k.as_str())) {
            return 400;
        }
        let date = |name: &str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(()),
        };
        let dry_run_ok = matches!(
            fields.get("dryRun"),
            None | Some(Value::Null | Value::Bool(_))
        );
        match (date("startDate"), date("endDate")) {
            (Ok(start), Ok(end)) if dry_run_ok && range_ok(start, end) => 200,
            _ => 400,
        }
    }
}

/// Whether `startDate` and `endDate` make a range the test server runs: dates of
/// the form YYYY-MM-DD that exist, no end without a start, the end not before the
/// start, at most 3 days, none of them after today.
fn range_ok(start: Option<&str>, end: Option<&str>) -> bool {
    let date = |text: &str| -> Option<jiff::civil::Date> {
        let shaped = text.len() == 10
            && text.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        shaped.then(|| text.parse().ok()).flatten()
    };
    match (start, end) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(start), end) => {
            let Some(start) = date(start) else {
                return false;
            };
            let end = match end.map(date) {
                None => start,
                Some(Some(end)) => end,
                Some(None) => return false,
            };
            // A day that has not begun (in the server's zone, UTC) is refused.
            let today = jiff::Timestamp::now()
                .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                .date();
            end >= start && end <= today && start.until(end).is_ok_and(|span| span.get_days() < 3)
        }
    }
}
