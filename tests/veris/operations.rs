//! Operating veris-jobs: `--changed`, the built-in schedule and the progress bar.

use std::process::Stdio;
use std::time::{Duration, Instant};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::Value;
use veris_jobs::model::ChangedDays;
use veris_jobs::telemetry_daily::RunOptions;

use crate::cli::{stderr, veris};
use crate::common::{Kind, TestDb, default_table, event, range_options};
use crate::http::SECRET;

crate::on_both_databases!(
    changed_redoes_earlier_days_that_received_rows_since_the_last_changed_run,
    the_schedule_runs_the_job_and_skips_ticks_while_its_previous_run_is_going,
    migrate_adds_the_watermark_column_to_an_older_run_history,
);

fn changed_options(start: &str, end: &str) -> RunOptions {
    RunOptions {
        changed: true,
        ..range_options(start, end)
    }
}

fn dates(report_days: &[veris_jobs::model::DayReport]) -> Vec<&str> {
    report_days.iter().map(|d| d.date.as_str()).collect()
}

async fn changed_redoes_earlier_days_that_received_rows_since_the_last_changed_run(db: TestDb) {
    db.insert(&[
        event("view", Some("a"), "2024-05-01T10:00:00Z", None),
        event("view", Some("a"), "2024-05-02T10:00:00Z", None),
        event("view", Some("a"), "2024-05-10T10:00:00Z", None),
    ])
    .await;
    // The first --changed run has nothing to compare with: it does its range and
    // records the watermark.
    let first = db.run(&changed_options("2024-05-10", "2024-05-10")).await;
    let watermark = db.store.id_watermark().await.unwrap().unwrap();
    assert_eq!(
        first.changed,
        Some(ChangedDays {
            since_id: None,
            through_id: watermark,
            earlier_days: vec![],
        })
    );
    assert_eq!(dates(&first.days), ["2024-05-10"]);

    // Late events: two for earlier days, one for a day after the next range.
    db.insert(&[
        event("view", Some("late"), "2024-05-02T23:59:59Z", None),
        event("view", Some("late"), "2024-05-10T12:00:00Z", None),
        event("view", Some("late"), "2024-05-20T10:00:00Z", None),
    ])
    .await;
    let preview = db
        .run(&RunOptions {
            dry_run: true,
            ..changed_options("2024-05-11", "2024-05-11")
        })
        .await;
    assert_eq!(
        dates(&preview.days),
        ["2024-05-02", "2024-05-10", "2024-05-11"]
    );
    assert_eq!(
        db.store.last_watermark("telemetry-daily").await.unwrap(),
        Some(watermark),
        "a dry run records no watermark"
    );

    // The command line's flag, with the report as JSON.
    let output = veris(
        &db.url,
        &[
            "telemetry-daily",
            "--date",
            "2024-05-11",
            "--changed",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["changed"]["sinceId"], watermark);
    assert_eq!(
        report["changed"]["earlierDays"],
        serde_json::json!(["2024-05-02", "2024-05-10"])
    );
    assert_eq!(report["startDate"], "2024-05-11", "the range is as asked");
    let statuses: Vec<&str> = report["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["written", "written", "written"]);
    let counts: Vec<(String, i64)> = db
        .rollups()
        .await
        .into_iter()
        .map(|row| (row.0, row.2))
        .collect();
    assert_eq!(
        counts,
        [("2024-05-02".to_owned(), 2), ("2024-05-10".to_owned(), 2)],
        "the late events are in; 2024-05-01 had none, 2024-05-20 waits for its own run"
    );
    let recorded = &db.store.recent_runs(1).await.unwrap()[0];
    assert_eq!(recorded.days_total, 3);
    assert_eq!(
        recorded.source_watermark,
        db.store.id_watermark().await.unwrap()
    );

    // Nothing new since: only the range.
    let quiet = db.run(&changed_options("2024-05-11", "2024-05-11")).await;
    assert_eq!(dates(&quiet.days), ["2024-05-11"]);
    let table = veris(
        &db.url,
        &["telemetry-daily", "--date", "2024-05-11", "--changed"],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("changed: no earlier day received events"),
        "{text}"
    );

    // Days are cut in the run's zone: 18:45 UTC is already the next day in Kolkata.
    db.insert(&[event("view", Some("k"), "2024-04-02T18:45:00Z", None)])
        .await;
    let kolkata = db
        .run(&RunOptions {
            timezone: TimeZone::get("Asia/Kolkata").unwrap(),
            ..changed_options("2024-05-11", "2024-05-11")
        })
        .await;
    let earlier = &kolkata.changed.as_ref().unwrap().earlier_days;
    assert!(earlier.contains(&"2024-04-03".to_owned()), "{earlier:?}");
    assert!(kolkata.ok);
    let rollups = db.rollups().await;
    assert!(
        rollups
            .iter()
            .any(|row| row.0 == "2024-04-03" && row.2 == 1),
        "{rollups:?} {kolkata:?}"
    );
}

async fn migrate_adds_the_watermark_column_to_an_older_run_history(db: TestDb) {
    db.execute("ALTER TABLE job_runs DROP COLUMN source_watermark")
        .await;
    db.store.migrate().await.expect("migrate again");
    db.insert(&[event("view", None, "2024-06-01T10:00:00Z", None)])
        .await;
    let report = db.run(&changed_options("2024-06-01", "2024-06-01")).await;
    assert!(report.ok);
    assert_eq!(
        db.store.last_watermark("telemetry-daily").await.unwrap(),
        db.store.id_watermark().await.unwrap()
    );
}

fn yesterday_utc() -> Date {
    jiff::Timestamp::now()
        .to_zoned_datetime(TimeZone::UTC)
        .date()
        .yesterday()
        .unwrap()
}

async fn the_schedule_runs_the_job_and_skips_ticks_while_its_previous_run_is_going(db: TestDb) {
    let yesterday = yesterday_utc();
    db.insert(&[event(
        "view",
        Some("u"),
        &format!("{yesterday}T12:00:00Z"),
        None,
    )])
    .await;
    // Another run holds yesterday, so the first scheduled run waits for it.
    let other = db.second_store(&default_table()).await;
    let held = other
        .lock_days(&[yesterday], Duration::ZERO)
        .await
        .expect("the test takes the day");

    let port = crate::common::free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", &db.url)
        .env("CRON_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .env_remove("TELEMETRY_TIMEZONE")
        .env_remove("TELEMETRY_LOOKBACK_DAYS")
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        // Every second.
        .args(["--schedule", "* * * * * *", "--lock-timeout", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let metrics = || async {
        let response = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .bearer_auth(SECRET)
            .send()
            .await;
        match response {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let skipped_ticks = |text: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix("veris_schedule_ticks_skipped_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while skipped_ticks(&metrics().await) == 0 {
        assert!(
            Instant::now() < deadline,
            "a tick is skipped while the first scheduled run waits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.release().await;

    let scheduled_ok = loop {
        let runs = db.store.recent_runs(100).await.unwrap();
        if let Some(run) = runs
            .into_iter()
            .find(|r| r.trigger == "schedule" && r.status == "ok")
        {
            break run;
        }
        assert!(Instant::now() < deadline, "a scheduled run finishes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(scheduled_ok.start_date, yesterday.to_string());
    assert!(
        scheduled_ok.source_watermark.is_some(),
        "scheduled runs use --changed"
    );
    let rollups = db.rollups().await;
    assert_eq!(rollups.len(), 1);
    assert_eq!(
        (rollups[0].0.as_str(), rollups[0].2),
        (&*yesterday.to_string(), 1)
    );
    let text = metrics().await;
    assert!(
        text.contains(r#"veris_runs_total{job="telemetry-daily",trigger="schedule",outcome="ok"}"#),
        "{text}"
    );

    // SIGTERM stops the schedule and the server; exit 0.
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the server stops")
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("scheduled run starting"), "{logs}");
    assert!(
        logs.contains("scheduled run skipped: the previous scheduled run is still going"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_bad_schedule_is_refused_at_start_naming_the_problem() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    for (flag, env) in [(Some("every day"), None), (None, Some("61 * * * *"))] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
        command
            .env("DATABASE_URL", &db.url)
            .env("CRON_SECRET", SECRET)
            .env_remove("TELEMETRY_SCHEDULE")
            .args(["serve", "--bind", "127.0.0.1:0"]);
        if let Some(expression) = flag {
            command.args(["--schedule", expression]);
        }
        if let Some(expression) = env {
            command.env("TELEMETRY_SCHEDULE", expression);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2));
        let message = stderr(&output);
        let expression = flag.or(env).unwrap();
        assert!(
            message.contains("--schedule") && message.contains(expression),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }
}

/// Runs `veris-jobs ARGS` on a pseudo-terminal (with `script`), returning all it drew.
fn on_terminal(database_url: &str, args: &str) -> String {
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_veris-jobs"));
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .env("COLUMNS", "100")
        .output()
        .expect("script(1) from util-linux runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_multi_day_run_on_a_terminal_shows_a_bar_that_log_lines_do_not_tear() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    db.insert(&[
        event("view", Some("u"), "2024-07-01T10:00:00Z", None),
        event("view", Some("v"), "2024-07-03T10:00:00Z", None),
    ])
    .await;
    let range = "--start-date 2024-07-01 --end-date 2024-07-03";
    let drawn = on_terminal(&db.url, &format!("telemetry-daily {range}"));
    assert!(drawn.contains("3/3 days"), "{drawn}");
    assert!(drawn.contains("2 events"), "{drawn}");
    assert!(
        drawn.contains("total       ok"),
        "the report follows: {drawn}"
    );
    // Each log line is written on a cleared line, never into the bar.
    let log_lines: Vec<&str> = drawn
        .split('\n')
        .filter(|line| line.contains("day done"))
        .collect();
    assert_eq!(log_lines.len(), 3, "{drawn}");
    for line in log_lines {
        let written = line.rsplit("\x1b[2K").next().unwrap_or(line);
        assert!(
            written.contains("day done") && !written.contains(" days "),
            "a torn line: {line:?}"
        );
    }

    // No bar with --json, none for a single day, none when stdout is not a terminal.
    let json = on_terminal(&db.url, &format!("telemetry-daily {range} --json"));
    assert!(!json.contains(" days "), "{json}");
    let single = on_terminal(&db.url, "telemetry-daily --date 2024-07-01");
    assert!(!single.contains(" days "), "{single}");
    let piped = veris(
        &db.url,
        &[
            "telemetry-daily",
            "--start-date",
            "2024-07-01",
            "--end-date",
            "2024-07-03",
        ],
    );
    assert!(!String::from_utf8_lossy(&piped.stdout).contains(" days "));
    assert!(!stderr(&piped).contains(" days "));
}
