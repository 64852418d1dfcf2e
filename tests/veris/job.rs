//! The job's behaviour, on both databases, case by case as the contract states it.

use std::time::Duration;

use jiff::tz::TimeZone;
use serde_json::{Value, json};
use veris_jobs::model::{DayRange, DayStatus};
use veris_jobs::store::StoreError;
use veris_jobs::telemetry_daily::{self, RunError, RunOptions};

use crate::common::{Kind, TestDb, event, range_options};

crate::on_both_databases!(
    days_are_cut_in_the_configured_zone_including_daylight_saving_days,
    the_default_range_is_yesterday_in_the_zone,
    ranges_are_inclusive_at_both_ends,
    a_day_is_made_equal_to_its_aggregate_and_no_other_day_is_touched,
    rerunning_a_range_leaves_rows_byte_identical,
    count_and_unique_users_are_exact_with_anonymous_users_left_out,
    the_metadata_summary_follows_the_contract,
    numbers_are_read_correctly_rounded_and_written_alike_on_both_databases,
    bad_events_are_counted_by_reason_and_never_abort_the_run,
    the_retention_guard_keeps_rollups_unless_forced,
    the_retention_guard_keeps_a_day_that_lost_some_of_its_events,
    a_dry_run_writes_nothing_and_reports_what_would_change,
    a_run_waits_for_days_another_run_holds_then_fails_clearly,
    concurrent_overlapping_runs_end_equal_to_a_clean_run,
    a_big_day_read_in_parts_equals_one_aggregate_of_its_events,
    a_reader_sees_the_old_day_or_the_new_day_never_a_mix,
    counts_users_and_metadata_equal_a_naive_aggregate_of_shuffled_random_events,
);

fn count_of(rows: &[crate::common::StoredRow], date: &str, name: &str) -> Option<i64> {
    rows.iter()
        .find(|r| r.0 == date && r.1 == name)
        .map(|r| r.2)
}

async fn days_are_cut_in_the_configured_zone_including_daylight_saving_days(db: TestDb) {
    // Berlin springs forward on 2024-03-31 (23 h) and falls back on 2024-10-27 (25 h).
    db.insert(&[
        event("e", None, "2024-03-30T22:59:59Z", None), // 03-30 23:59:59 CET
        event("e", None, "2024-03-30T23:00:00Z", None), // 03-31 00:00 CET: first instant
        event("e", None, "2024-03-31T21:59:59Z", None), // 03-31 23:59:59 CEST: last second
        event("e", None, "2024-03-31T22:00:00Z", None), // 04-01 00:00 CEST
        event("e", None, "2024-10-26T22:00:00Z", None), // 10-27 00:00 CEST
        event("e", None, "2024-10-27T00:30:00Z", None), // 10-27 02:30 CEST (first pass)
        event("e", None, "2024-10-27T01:30:00Z", None), // 10-27 02:30 CET (second pass)
        event("e", None, "2024-10-27T22:59:59Z", None), // 10-27 23:59:59 CET
        event("e", None, "2024-10-27T23:00:00Z", None), // 10-28 00:00 CET
    ])
    .await;
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    for (start, end) in [("2024-03-30", "2024-04-01"), ("2024-10-27", "2024-10-28")] {
        let options = RunOptions {
            timezone: berlin.clone(),
            ..range_options(start, end)
        };
        let report = db.run(&options).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.timezone, "Europe/Berlin");
    }
    let rows = db.rollups().await;
    assert_eq!(count_of(&rows, "2024-03-30", "e"), Some(1));
    assert_eq!(count_of(&rows, "2024-03-31", "e"), Some(2));
    assert_eq!(count_of(&rows, "2024-04-01", "e"), Some(1));
    assert_eq!(count_of(&rows, "2024-10-27", "e"), Some(4));
    assert_eq!(count_of(&rows, "2024-10-28", "e"), Some(1));

    // The same events cut in UTC fall on other days.
    let utc = db.run(&range_options("2024-03-31", "2024-03-31")).await;
    assert_eq!(utc.days[0].events_read, 2);
}

async fn the_default_range_is_yesterday_in_the_zone(db: TestDb) {
    let tz = TimeZone::get("Pacific/Kiritimati").unwrap(); // UTC+14: far from UTC's days
    let today = jiff::Timestamp::now().to_zoned_datetime(tz.clone()).date();
    let yesterday = today.yesterday().unwrap();
    let at = |date: jiff::civil::Date, hour: i8| {
        date.at(hour, 0, 0, 0)
            .to_zoned_datetime(tz.clone())
            .unwrap()
            .timestamp()
            .to_string()
    };
    db.insert(&[
        event("seen", None, &at(yesterday, 0), None),
        event("seen", None, &at(yesterday, 23), None),
        event("too_new", None, &at(today, 0), None),
        event(
            "too_old",
            None,
            &at(yesterday.yesterday().unwrap(), 23),
            None,
        ),
    ])
    .await;
    let options = RunOptions {
        timezone: tz,
        ..RunOptions::default()
    };
    let report = db.run(&options).await;
    assert_eq!(report.start_date, yesterday.to_string());
    assert_eq!(report.end_date, yesterday.to_string());
    let rows = db.rollups().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(count_of(&rows, &yesterday.to_string(), "seen"), Some(2));
}

async fn ranges_are_inclusive_at_both_ends(db: TestDb) {
    for day in [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ] {
        db.insert(&[event("e", None, &format!("{day}T12:00:00Z"), None)])
            .await;
    }
    let report = db.run(&range_options("2024-01-02", "2024-01-04")).await;
    let dates: Vec<&str> = report.days.iter().map(|d| d.date.as_str()).collect();
    assert_eq!(dates, ["2024-01-02", "2024-01-03", "2024-01-04"]);
    let stored: Vec<String> = db.rollups().await.into_iter().map(|r| r.0).collect();
    assert_eq!(stored, ["2024-01-02", "2024-01-03", "2024-01-04"]);
}

async fn a_day_is_made_equal_to_its_aggregate_and_no_other_day_is_touched(db: TestDb) {
    db.insert(&[
        event("stays", Some("u1"), "2024-01-01T10:00:00Z", None),
        event("grows", Some("u1"), "2024-01-01T10:00:00Z", None),
        event("goes", Some("u1"), "2024-01-01T10:00:00Z", None),
        event("other_day", Some("u1"), "2024-01-02T10:00:00Z", None),
    ])
    .await;
    db.run(&range_options("2024-01-01", "2024-01-02")).await;
    let before = db.rollups().await;

    db.execute("DELETE FROM telemetry_events WHERE event = 'goes'")
        .await;
    db.insert(&[
        event("grows", Some("u2"), "2024-01-01T11:00:00Z", None),
        event("arrives", None, "2024-01-01T12:00:00Z", None),
        event("other_day", Some("u2"), "2024-01-02T11:00:00Z", None),
    ])
    .await;
    let options = RunOptions {
        force: true, // "goes" leaving lowers the day's total below its stored count
        ..range_options("2024-01-01", "2024-01-01")
    };
    let report = db.run(&options).await;
    let day = &report.days[0];
    assert_eq!(day.status, DayStatus::Written);
    assert_eq!(
        (day.inserted, day.updated, day.deleted, day.unchanged),
        (1, 1, 1, 1)
    );
    assert_eq!(day.rows, 3);

    let after = db.rollups().await;
    let names: Vec<(&str, &str, i64)> = after
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2))
        .collect();
    assert_eq!(
        names,
        [
            ("2024-01-01", "arrives", 1),
            ("2024-01-01", "grows", 2),
            ("2024-01-01", "stays", 1),
            ("2024-01-02", "other_day", 1),
        ]
    );
    let untouched =
        |rows: &[crate::common::StoredRow], name: &str| rows.iter().find(|r| r.1 == name).cloned();
    assert_eq!(
        untouched(&after, "other_day"),
        untouched(&before, "other_day")
    );
    assert_eq!(
        untouched(&after, "stays"),
        untouched(&before, "stays"),
        "unchanged rows are not rewritten"
    );
}

async fn rerunning_a_range_leaves_rows_byte_identical(db: TestDb) {
    let mut events = Vec::new();
    for i in 0..300 {
        let plan = ["free", "pro", "team"][i % 3];
        let meta = json!({
            "plan": plan,
            "amount": (i as f64) * 0.1 + 0.05,
            "ok": i % 2 == 0,
            "nested": {"b": i % 4, "a": [1, 2]},
        });
        let user = format!("u{}", i % 17);
        let name = ["view", "click"][i % 2];
        let at = format!("2024-02-{:02}T{:02}:{:02}:00Z", 1 + i % 3, i % 24, i % 60);
        events.push(event(name, Some(&user), &at, Some(&meta.to_string())));
    }
    db.insert(&events).await;
    let options = range_options("2024-02-01", "2024-02-03");
    let first = db.run(&options).await;
    assert_eq!(first.totals.inserted, 6);
    let before = db.rollups().await;

    let second = db.run(&options).await;
    assert_eq!(second.totals.unchanged, 6);
    assert_eq!(
        (
            second.totals.inserted,
            second.totals.updated,
            second.totals.deleted
        ),
        (0, 0, 0)
    );
    assert_eq!(
        db.rollups().await,
        before,
        "rows, metadata text and updated_at stay byte-identical"
    );

    // Split differently (day by day, in reverse order), the rows are the same.
    for day in ["2024-02-03", "2024-02-02", "2024-02-01"] {
        let report = db.run(&range_options(day, day)).await;
        assert_eq!(report.totals.unchanged, 2);
    }
    assert_eq!(db.rollups().await, before);
}

async fn count_and_unique_users_are_exact_with_anonymous_users_left_out(db: TestDb) {
    let mut events = Vec::new();
    for i in 0..1000 {
        let user = match i % 10 {
            0 => None,
            1 => Some(String::new()),
            _ => Some(format!("user-{}", i % 250)),
        };
        events.push(event("view", user.as_deref(), "2024-03-01T08:00:00Z", None));
    }
    db.insert(&events).await;
    db.run(&range_options("2024-03-01", "2024-03-01")).await;
    let rows = db.rollups().await;
    assert_eq!((rows[0].2, rows[0].3), (1000, 200));
}

async fn the_metadata_summary_follows_the_contract(db: TestDb) {
    let metas = [
        r#"{"plan":"pro","amount":9,"path":"/","flag":true}"#,
        r#"{"plan":"pro","amount":99.5,"path":"/pricing","flag":false}"#,
        r#"{"plan":"free","amount":null,"path":"/docs","cart":{"z":1,"a":[2,3]}}"#,
        r#"{"plan":"free","amount":"n/a","path":"/"}"#,
        r#"{"plan":"team","path":"/blog"}"#,
        r#"null"#,
    ];
    let events: Vec<_> = metas
        .iter()
        .map(|m| event("purchase", Some("u"), "2024-04-01T09:00:00Z", Some(m)))
        .collect();
    db.insert(&events).await;
    let options = RunOptions {
        meta_top_k: 2,
        ..range_options("2024-04-01", "2024-04-01")
    };
    db.run(&options).await;
    let mut meta: Value = serde_json::from_str(&db.rollups().await[0].4).unwrap();
    // The numbers 9 and 99.5: ranks floor(q * 1) are all 0.
    let mut expected = json!({
        "amount": {"n": 3, "sum": 108.5, "min": 9, "max": 99.5, "values": {"n/a": 1}, "other": 0,
                   "p50": 9, "p90": 9, "p99": 9},
    });
    crate::common::check_and_strip_percentiles(&mut meta, &mut expected, "amount");
    assert_eq!(
        meta,
        json!({
            "amount": {"n": 3, "sum": 108.5, "min": 9, "max": 99.5, "values": {"n/a": 1}, "other": 0},
            "cart": {"n": 1, "values": {"{\"a\":[2,3],\"z\":1}": 1}, "other": 0},
            "flag": {"n": 2, "values": {"false": 1, "true": 1}, "other": 0},
            "path": {"n": 5, "values": {"/": 2, "/blog": 1}, "other": 2},
            "plan": {"n": 5, "values": {"free": 2, "pro": 2}, "other": 1},
        })
    );
}

async fn numbers_are_read_correctly_rounded_and_written_alike_on_both_databases(db: TestDb) {
    // PostgreSQL's jsonb rewrites 1.2345e29 as 123450000000000000000000000000 and keeps
    // 10.0 as it is; SQLite keeps the text. Both must give the same bytes.
    let metas = [
        r#"{"n":1.2345e29,"x":[1e1,2.50]}"#,
        r#"{"n":0.1,"x":[10.0,2.5]}"#,
        r#"{"n":0.2}"#,
    ];
    let events: Vec<_> = metas
        .iter()
        .map(|m| event("e", None, "2024-04-01T09:00:00Z", Some(m)))
        .collect();
    db.insert(&events).await;
    db.run(&range_options("2024-04-01", "2024-04-01")).await;
    let stored = &db.rollups().await[0].4;
    // Percentiles have tests of their own: 0.1 and 1.2345e29 are further apart than a
    // sketch's 2,048 bins reach, so its lowest bins are folded together.
    let mut summary: Value = serde_json::from_str(stored).unwrap();
    for p in ["p50", "p90", "p99"] {
        summary["n"]
            .as_object_mut()
            .unwrap()
            .remove(p)
            .expect("a percentile");
    }
    assert_eq!(
        veris_jobs::model::canonical_json(&summary.to_string()),
        r#"{"n":{"max":1.2345e+29,"min":0.1,"n":3,"sum":1.2345e+29},"x":{"n":2,"other":0,"values":{"[10,2.5]":2}}}"#
    );
    let rerun = db.run(&range_options("2024-04-01", "2024-04-01")).await;
    assert_eq!(
        rerun.days[0].unchanged, 1,
        "the stored text reads back as equal"
    );
}

async fn bad_events_are_counted_by_reason_and_never_abort_the_run(db: TestDb) {
    let mut events = vec![
        event("", Some("u"), "2024-05-01T01:00:00Z", Some(r#"{"a":1}"#)),
        event("ok", Some("u"), "2024-05-01T01:00:00Z", Some(r#"[1,2]"#)),
        event("ok", Some("u"), "2024-05-01T01:00:00Z", Some(r#""text""#)),
        event("ok", Some("u"), "2024-05-01T01:00:00Z", Some(r#"{"a":1}"#)),
    ];
    if db.kind == Kind::Sqlite {
        // Only SQLite can hold a missing name and text that is not JSON.
        events.push(veris_jobs::store::NewEvent {
            event: None,
            ..event("x", None, "2024-05-01T01:00:00Z", None)
        });
        events.push(event("ok", None, "2024-05-01T01:00:00Z", Some("{broken")));
    }
    db.insert(&events).await;
    let report = db.run(&range_options("2024-05-01", "2024-05-01")).await;
    assert!(report.ok);
    let day = &report.days[0];
    let (missing, invalid) = if db.kind == Kind::Sqlite {
        (2, 1)
    } else {
        (1, 0)
    };
    assert_eq!(day.events_read, events.len() as u64);
    assert_eq!(day.skipped.get("missing_event").copied(), Some(missing));
    assert_eq!(day.skipped.get("non_object_meta").copied(), Some(2));
    assert_eq!(
        day.skipped.get("invalid_meta").copied(),
        (invalid > 0).then_some(invalid)
    );
    assert_eq!(day.events_skipped, missing + 2 + invalid);
    let rows = db.rollups().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].2,
        3 + invalid as i64,
        "bad metadata still counts the event"
    );
    let meta: Value = serde_json::from_str(&rows[0].4).unwrap();
    assert_eq!(
        meta,
        json!({"a": {"n": 1, "sum": 1, "min": 1, "max": 1, "p50": 1, "p90": 1, "p99": 1}})
    );
}

/// 2024-06-01 with two views (users a and b) and a click, rolled up: its options
/// and rows.
async fn a_rolled_up_day_of_three_events(
    db: &TestDb,
) -> (RunOptions, Vec<crate::common::StoredRow>) {
    db.insert(&[
        event("view", Some("a"), "2024-06-01T10:00:00Z", None),
        event("view", Some("b"), "2024-06-01T11:00:00Z", None),
        event("click", Some("a"), "2024-06-01T12:00:00Z", None),
    ])
    .await;
    let options = range_options("2024-06-01", "2024-06-01");
    db.run(&options).await;
    (options, db.rollups().await)
}

async fn the_retention_guard_keeps_rollups_unless_forced(db: TestDb) {
    let (options, kept_rows) = a_rolled_up_day_of_three_events(&db).await;

    db.execute("DELETE FROM telemetry_events").await; // raw data purged
    for dry_run in [false, true] {
        let report = db
            .run(&RunOptions {
                dry_run,
                ..options.clone()
            })
            .await;
        let day = &report.days[0];
        assert_eq!(day.status, DayStatus::Kept, "dry_run={dry_run}");
        assert!(report.ok);
        assert_eq!((day.rows, day.deleted, day.unchanged), (2, 0, 2));
        assert!(day.error.as_deref().unwrap().contains("--force"));
        assert_eq!(db.rollups().await, kept_rows);
    }

    let report = db
        .run(&RunOptions {
            force: true,
            ..options
        })
        .await;
    assert_eq!(report.days[0].status, DayStatus::Written);
    assert_eq!(report.days[0].deleted, 2);
    assert!(db.rollups().await.is_empty());
}

/// One event of three purged: the day still has events, fewer than its rollups count.
async fn the_retention_guard_keeps_a_day_that_lost_some_of_its_events(db: TestDb) {
    let (options, kept_rows) = a_rolled_up_day_of_three_events(&db).await;
    db.execute("DELETE FROM telemetry_events WHERE user_id = 'b'")
        .await;

    let report = db.run(&options).await;
    let day = &report.days[0];
    assert_eq!(day.status, DayStatus::Kept, "{day:?}");
    assert_eq!((day.inserted, day.updated, day.deleted), (0, 0, 0));
    assert!(
        day.error.as_deref().unwrap().contains("holds 2 events")
            && day.error.as_deref().unwrap().contains("count 3"),
        "{:?}",
        day.error
    );
    assert_eq!(db.rollups().await, kept_rows);

    let report = db
        .run(&RunOptions {
            force: true,
            ..options
        })
        .await;
    assert_eq!(report.days[0].status, DayStatus::Written);
    assert_eq!(report.days[0].updated, 1, "view now counts 1");
    assert_ne!(db.rollups().await, kept_rows);
}

async fn a_dry_run_writes_nothing_and_reports_what_would_change(db: TestDb) {
    db.insert(&[
        event("view", None, "2024-07-01T10:00:00Z", None),
        event("click", None, "2024-07-01T10:00:00Z", None),
    ])
    .await;
    let dry = RunOptions {
        dry_run: true,
        ..range_options("2024-07-01", "2024-07-01")
    };
    let report = db.run(&dry).await;
    assert!(report.dry_run);
    assert_eq!(report.days[0].status, DayStatus::DryRun);
    assert_eq!((report.days[0].inserted, report.days[0].rows), (2, 2));
    assert!(db.rollups().await.is_empty(), "a dry run inserts nothing");

    db.run(&range_options("2024-07-01", "2024-07-01")).await;
    let written = db.rollups().await;
    db.insert(&[
        event("view", None, "2024-07-01T11:00:00Z", None),
        event("scroll", None, "2024-07-01T11:00:00Z", None),
    ])
    .await;
    let report = db.run(&dry).await;
    let day = &report.days[0];
    assert_eq!(
        (day.inserted, day.updated, day.deleted, day.unchanged),
        (1, 1, 0, 1)
    );
    assert_eq!(db.rollups().await, written, "a dry run updates nothing");
}

async fn a_run_waits_for_days_another_run_holds_then_fails_clearly(db: TestDb) {
    db.insert(&[event("e", None, "2024-08-02T10:00:00Z", None)])
        .await;
    let other = db.second_store(&crate::common::default_table()).await;
    let held = DayRange::new("2024-08-02".parse().unwrap(), "2024-08-03".parse().unwrap()).unwrap();
    let locks = other
        .lock_days(&held.days().collect::<Vec<_>>(), Duration::ZERO)
        .await
        .expect("first run takes its days");

    let options = RunOptions {
        lock_timeout: Duration::from_millis(300),
        ..range_options("2024-08-01", "2024-08-02")
    };
    let started = std::time::Instant::now();
    let error = telemetry_daily::run(&db.store, &options)
        .await
        .expect_err("day 2 is held");
    assert!(started.elapsed() >= Duration::from_millis(300));
    match &error {
        RunError::Store(StoreError::DayBusy { date, .. }) => {
            assert_eq!(date.to_string(), "2024-08-02")
        }
        other => panic!("expected DayBusy, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("2024-08-02 is held by another run"),
        "{error}"
    );
    assert!(db.rollups().await.is_empty(), "nothing was written");

    // A run that waits long enough goes ahead once the other run lets go.
    let waiting = RunOptions {
        lock_timeout: Duration::from_secs(30),
        ..options
    };
    let store = db.store.clone();
    let run = tokio::spawn(async move { telemetry_daily::run(&store, &waiting).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "the second run waits");
    locks.release().await;
    let report = run.await.unwrap().expect("runs once the days are free");
    assert!(report.ok);
    assert_eq!(db.rollups().await.len(), 1);
}

async fn concurrent_overlapping_runs_end_equal_to_a_clean_run(db: TestDb) {
    let mut events = Vec::new();
    for i in 0..2000 {
        let at = format!("2024-09-{:02}T{:02}:00:00Z", 1 + i % 6, i % 24);
        let meta = json!({"n": i % 7, "s": format!("v{}", i % 5)}).to_string();
        events.push(event(
            ["a", "b", "c"][(i / 6) % 3],
            Some(&format!("u{}", i % 40)),
            &at,
            Some(&meta),
        ));
    }
    db.insert(&events).await;
    let ranges = [
        ("2024-09-01", "2024-09-04"),
        ("2024-09-03", "2024-09-06"),
        ("2024-09-02", "2024-09-05"),
    ];
    let mut runs = Vec::new();
    for (start, end) in ranges {
        let store = db.second_store(&crate::common::default_table()).await;
        let options = range_options(start, end);
        runs.push(tokio::spawn(async move {
            telemetry_daily::run(&store, &options).await
        }));
    }
    for run in runs {
        let report = run.await.unwrap().expect("each run gets its days in time");
        assert!(report.ok);
    }
    let concurrent = db.rollups().await;
    let clean = db.run(&range_options("2024-09-01", "2024-09-06")).await;
    assert_eq!(clean.totals.unchanged, 18, "a clean run changes nothing");
    assert_eq!(db.rollups().await, concurrent);
}

async fn a_big_day_read_in_parts_equals_one_aggregate_of_its_events(db: TestDb) {
    use std::collections::BTreeMap;
    use veris_jobs::model::hll::Sketch;

    // Enough rows for many batches on every reading thread, more event names than
    // users carry bits for, and users shared between names.
    let mut events = Vec::new();
    for i in 0u64..30_000 {
        let name = format!("e{:02}", (i * 7919) % 90);
        let user = (i % 11 != 0).then(|| format!("user-{}", (i * 104_729) % 2_500));
        let plan = ["free", "pro", "team"][(i % 3) as usize];
        let meta = json!({
            "plan": plan,
            "path": format!("/p/{}", i % 37),
            "ms": (i % 1000) as f64 * 0.5,
        })
        .to_string();
        let at = format!(
            "2024-09-01T{:02}:{:02}:{:02}Z",
            i % 24,
            i % 60,
            (i / 60) % 60
        );
        events.push(event(&name, user.as_deref(), &at, Some(&meta)));
    }
    db.insert(&events).await;
    // Read in four time slices, each on a connection and a thread of its own.
    let report = db
        .run(&RunOptions {
            read_slices: 4,
            ..range_options("2024-09-01", "2024-09-01")
        })
        .await;
    assert!(report.ok);
    assert_eq!(report.totals.events_read, 30_000);

    // Every column from the events alone: the contract's summary counted naively,
    // the users' sketch from the set of each name's users.
    let mut naive: BTreeMap<String, NaiveGroup> = BTreeMap::new();
    for e in &events {
        let group = naive.entry(e.event.clone().unwrap()).or_default();
        group.count += 1;
        group.users.extend(e.user_id.clone());
        let Ok(Value::Object(entries)) = serde_json::from_str(e.meta.as_deref().unwrap()) else {
            unreachable!("an object")
        };
        group.add(entries);
    }
    let stored = db
        .store
        .load_day("2024-09-01".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.len(), 90);
    for row in stored {
        let group = &naive[&row.event];
        assert_eq!(row.count, group.count, "{}", row.event);
        assert_eq!(row.unique_users, group.users.len() as i64, "{}", row.event);
        let mut sketch = Sketch::new();
        group.users.iter().for_each(|u| sketch.add_user(u));
        assert_eq!(row.users_hll, Some(sketch.to_bytes()), "{}", row.event);
        let mut meta = numbers_as_doubles(serde_json::from_str(&row.meta).unwrap());
        let mut expected = group.summary(20);
        crate::common::check_and_strip_percentiles(&mut meta, &mut expected, &row.event);
        assert_eq!(meta, expected, "{}", row.event);
        let sketches: Value = serde_json::from_str(row.meta_sketches.as_deref().unwrap()).unwrap();
        assert_eq!(
            sketches.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["ms"]
        );
    }
}

/// Readers see a day whole, as it was before its rewrite or as it is after, never
/// part of each: a day's rows commit at once.
async fn a_reader_sees_the_old_day_or_the_new_day_never_a_mix(db: TestDb) {
    use veris_jobs::store::Database;

    // 20,000 names, so that the day's write transaction stays open long enough to be
    // read during it.
    let events: Vec<_> = (0..20_000)
        .map(|i| event(&format!("e{i:05}"), Some("u"), "2024-09-01T10:00:00Z", None))
        .collect();
    db.insert(&events).await;
    let options = range_options("2024-09-01", "2024-09-01");
    db.run(&options).await;
    let old = db.rollups().await;
    // Every row changes (another event for every name) and 1,000 names are new.
    let more: Vec<_> = (0..21_000)
        .map(|i| event(&format!("e{i:05}"), Some("w"), "2024-09-01T11:00:00Z", None))
        .collect();
    db.insert(&more).await;

    // The day's write transaction, seen from outside: PostgreSQL lists a transaction
    // that has written, busy with the rollup tables (named by its backend and start);
    // SQLite refuses its write lock (`BEGIN IMMEDIATE`) at once.
    let sqlite_probe = (db.kind == Kind::Sqlite).then(|| {
        let probe = rusqlite::Connection::open(db.url.trim_start_matches("sqlite://")).unwrap();
        probe.busy_timeout(Duration::ZERO).unwrap();
        probe
    });
    let writing = async || -> Option<String> {
        match (db.store.database(), &sqlite_probe) {
            (Database::Postgres(pg), _) => sqlx::query_scalar(
                "SELECT pid::text || ' ' || xact_start::text FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND backend_xid IS NOT NULL \
                 AND (query LIKE '%telemetry_daily%' OR query LIKE '%telemetry_hourly%')",
            )
            .fetch_optional(pg.pool())
            .await
            .unwrap(),
            (_, Some(probe)) => match probe.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    probe.execute_batch("ROLLBACK").unwrap();
                    None
                }
                Err(_) => Some("the write lock".to_owned()),
            },
            (_, None) => unreachable!("a SQLite test has its probe"),
        }
    };

    // The day's rows and the sum of their counts, in one quick read, so that many
    // reads fall inside the write however fast it is; every eighth read also takes
    // every row whole.
    let totals = async || -> (i64, i64) {
        match (db.store.database(), &sqlite_probe) {
            (Database::Postgres(pg), _) => sqlx::query_as(
                "SELECT count(*), coalesce(sum(count), 0)::int8 FROM telemetry_daily",
            )
            .fetch_one(pg.pool())
            .await
            .unwrap(),
            (_, Some(probe)) => probe
                .query_row(
                    "SELECT count(*), coalesce(sum(count), 0) FROM telemetry_daily",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .unwrap(),
            (_, None) => unreachable!("a SQLite test has its probe"),
        }
    };
    let totals_of = |rows: &[crate::common::StoredRow]| {
        (rows.len() as i64, rows.iter().map(|row| row.2).sum::<i64>())
    };

    let store = db.store.clone();
    let run = tokio::spawn(async move { telemetry_daily::run(&store, &options).await });
    let (mut snapshots, mut quick) = (Vec::new(), Vec::new());
    let mut during_the_write = 0;
    while !run.is_finished() {
        let before = writing().await;
        let read = totals().await;
        // The same transaction open before and after the read: the read fell inside
        // it.
        if before.is_some() && writing().await == before {
            during_the_write += 1;
        }
        quick.push(read);
        if quick.len() % 8 == 1 {
            snapshots.push(db.rollups().await);
        }
    }
    assert!(run.await.unwrap().expect("the run starts").ok);
    let new = db.rollups().await;
    assert_eq!((old.len(), new.len()), (20_000, 21_000));
    assert!(
        during_the_write > 0,
        "no read fell inside the write transaction ({} reads)",
        quick.len()
    );
    for read in &quick {
        assert!(
            *read == totals_of(&old) || *read == totals_of(&new),
            "a reader saw {} rows counting {} events, neither the old day {:?} nor the new {:?}",
            read.0,
            read.1,
            totals_of(&old),
            totals_of(&new)
        );
    }
    for snapshot in &snapshots {
        assert!(
            *snapshot == old || *snapshot == new,
            "a reader saw {} rows, {} of them as after the run",
            snapshot.len(),
            snapshot.iter().filter(|row| new.contains(row)).count()
        );
    }
}

/// Every rollup column and the report's skipped reasons against a naive aggregate
/// written here from the contract alone (a day is local midnight to midnight in the
/// zone; a null or empty name is no row; a null or empty user is nobody; the metadata
/// summary as the contract's section on it states), over random events around a
/// daylight-saving change, inserted in random order, read in one stream and in three
/// time slices.
async fn counts_users_and_metadata_equal_a_naive_aggregate_of_shuffled_random_events(db: TestDb) {
    use rand::seq::SliceRandom as _;
    use rand::{Rng as _, SeedableRng as _};
    use std::collections::BTreeMap;

    let zone = TimeZone::get("America/New_York").unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(20_240_310);
    // New York springs forward on 2024-03-10: a 23-hour day among 24-hour ones.
    let start = jiff::Timestamp::from_second(1_709_960_400).unwrap(); // 2024-03-09T05:00Z, midnight there
    let events: Vec<_> = (0..3_000)
        .map(|_| {
            let name = match rng.random_range(0..10) {
                // PostgreSQL's event column is not null.
                0 if db.kind == Kind::Sqlite => None,
                0 | 1 => Some(String::new()),
                n => Some(format!("e{}", n % 4)),
            };
            let user = match rng.random_range(0..6) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(format!("u{}", rng.random_range(0..200))),
            };
            let at =
                start + jiff::SignedDuration::from_secs(rng.random_range(0..3 * 86_400 - 3_600));
            veris_jobs::store::NewEvent {
                event: name,
                user_id: user,
                created_at: at,
                meta: random_meta(&mut rng, db.kind),
            }
        })
        .collect();
    let mut events = events;
    events.shuffle(&mut rng);
    db.insert(&events).await;

    let mut expected: BTreeMap<(String, String), NaiveGroup> = BTreeMap::new();
    let mut expected_skipped: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for e in &events {
        let date = e
            .created_at
            .to_zoned_datetime(zone.clone())
            .date()
            .to_string();
        let skipped = expected_skipped.entry(date.clone()).or_default();
        let Some(name) = e.event.as_deref().filter(|n| !n.is_empty()) else {
            *skipped.entry("missing_event".into()).or_default() += 1;
            continue;
        };
        let group = expected.entry((date, name.to_owned())).or_default();
        group.count += 1;
        if let Some(user) = e.user_id.as_deref().filter(|u| !u.is_empty()) {
            group.users.insert(user.to_owned());
        }
        match e.meta.as_deref().map(serde_json::from_str::<Value>) {
            None | Some(Ok(Value::Null)) => {}
            Some(Ok(Value::Object(entries))) => group.add(entries),
            Some(Ok(_)) => *skipped.entry("non_object_meta".into()).or_default() += 1,
            Some(Err(_)) => *skipped.entry("invalid_meta".into()).or_default() += 1,
        }
    }
    let expected: Vec<(String, String, i64, i64, Value)> = expected
        .into_iter()
        .map(|((date, name), group)| {
            let users = group.users.len() as i64;
            (date, name, group.count, users, group.summary(20))
        })
        .collect();
    assert_eq!(expected.len(), 12, "three days of four names");
    assert!(
        expected
            .iter()
            .any(|row| row.4.get("$dropped_keys").is_some()),
        "some row has over 100 keys"
    );

    for read_slices in [1, 3] {
        db.execute("DELETE FROM telemetry_daily").await;
        let report = db
            .run(&RunOptions {
                timezone: zone.clone(),
                read_slices,
                ..range_options("2024-03-09", "2024-03-11")
            })
            .await;
        assert!(report.ok, "{report:?}");
        let skipped: BTreeMap<String, BTreeMap<String, u64>> = report
            .days
            .iter()
            .map(|day| (day.date.clone(), day.skipped.clone()))
            .collect();
        assert_eq!(skipped, expected_skipped, "--read-slices {read_slices}");
        let stored: Vec<(String, String, i64, i64, Value)> = db
            .rollups()
            .await
            .into_iter()
            .map(|(date, name, count, users, meta, _)| {
                let meta = serde_json::from_str(&meta).expect("a stored summary is JSON");
                (date, name, count, users, numbers_as_doubles(meta))
            })
            .collect();
        for (stored, expected) in stored.iter().zip(&expected) {
            let (mut stored, mut expected) = (stored.clone(), expected.clone());
            let context = format!("{} {} --read-slices {read_slices}", expected.0, expected.1);
            crate::common::check_and_strip_percentiles(&mut stored.4, &mut expected.4, &context);
            assert_eq!(stored, expected, "--read-slices {read_slices}");
        }
        assert_eq!(stored.len(), expected.len());
    }
}

/// A random `meta`: absent, JSON `null`, not an object, not JSON (SQLite keeps any
/// text; PostgreSQL's column takes JSON only), or an object drawn from keys with
/// strings, booleans, numbers (small quarters, and multiples of 2^971 up to the
/// largest double, whose sums pass it), nested values, nulls, repeated keys, and
/// sometimes over 100 keys.
fn random_meta(rng: &mut rand::rngs::SmallRng, kind: Kind) -> Option<String> {
    use rand::Rng as _;
    let plans: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    let big = [
        "1.3393857589828342e300", // 2^997
        "-1.3393857589828342e300",
        "1.0715086071862673e301", // 2^1000
        "1.7976931348623157e308", // the largest double
        "-1.7976931348623157e308",
    ];
    match rng.random_range(0..20) {
        0 => return None,
        1 => return Some("null".into()),
        2 => return Some("[1,2]".into()),
        3 => return Some(r#""a string""#.into()),
        4 if kind == Kind::Sqlite => return Some("not json".into()),
        5 if kind == Kind::Sqlite => return Some(r#"{"a":1"#.into()),
        _ => {}
    }
    let mut entries: Vec<String> = Vec::new();
    if rng.random_bool(0.7) {
        let plan = &plans[rng
            .random_range(0..plans.len())
            .min(rng.random_range(0..plans.len()))];
        entries.push(format!(r#""plan":"{plan}""#));
    }
    if rng.random_bool(0.6) {
        let quarters = rng.random_range(-4_000_000i64..4_000_000);
        entries.push(format!(r#""amount":{}"#, quarters as f64 / 4.0));
    }
    if rng.random_bool(0.3) {
        entries.push(format!(r#""big":{}"#, big[rng.random_range(0..big.len())]));
    }
    let mixed = match rng.random_range(0..7) {
        0 => "2.5".to_owned(),
        1 => "true".to_owned(),
        2 => "false".to_owned(),
        3 => r#""é\u00e9""#.to_owned(),
        4 => r#"{"b":1.0,"a":[true,null,{"d":[],"c":1e1}]}"#.to_owned(),
        5 => "[[[[[[{\"x\":1}]]]]]]".to_owned(),
        _ => "null".to_owned(),
    };
    entries.push(format!(r#""mixed":{mixed}"#));
    if rng.random_bool(0.1) {
        // A repeated key: the last value counts.
        entries.push(r#""twice":"first""#.into());
        entries.push(r#""twice":"second""#.into());
    }
    if rng.random_bool(0.05) {
        for k in 0..rng.random_range(90..130) {
            entries.push(format!(r#""k{k:03}":{k}"#));
        }
    }
    Some(format!("{{{}}}", entries.join(",")))
}

/// One (day, event) group as the contract describes it, counted naively.
#[derive(Default)]
struct NaiveGroup {
    count: i64,
    users: std::collections::BTreeSet<String>,
    keys: std::collections::BTreeMap<String, NaiveKey>,
}

#[derive(Default)]
struct NaiveKey {
    n: u64,
    values: std::collections::BTreeMap<String, u64>,
    /// Numbers as integer multiples of a quarter (`amount`, `mixed`) or of 2^971
    /// (`big`), summed exactly in integers.
    units: Option<(i128, f64)>,
    min: f64,
    max: f64,
    numbers: Vec<f64>,
}

impl NaiveGroup {
    fn add(&mut self, entries: serde_json::Map<String, Value>) {
        for (key, value) in entries {
            let stats = self.keys.entry(key).or_default();
            match value {
                Value::Null => continue,
                Value::Bool(b) => *stats.values.entry(b.to_string()).or_default() += 1,
                Value::String(s) => *stats.values.entry(s).or_default() += 1,
                Value::Number(x) => {
                    let x = x.as_f64().expect("a double");
                    let unit = if x.abs() >= 1e100 {
                        2f64.powi(971)
                    } else {
                        0.25
                    };
                    let units = (x / unit) as i128;
                    assert_eq!(units as f64 * unit, x, "{x} is a multiple of {unit}");
                    if stats.units.is_none() {
                        (stats.min, stats.max) = (x, x);
                    }
                    let (sum, _) = stats.units.get_or_insert((0, unit));
                    *sum += units;
                    stats.min = stats.min.min(x);
                    stats.max = stats.max.max(x);
                    stats.numbers.push(x);
                }
                nested => {
                    *stats
                        .values
                        .entry(canonical(nested).to_string())
                        .or_default() += 1
                }
            }
            stats.n += 1;
        }
    }

    /// The summary: keys ranked by `n` (ties by key), the first 100 kept, each
    /// with its top `top_k` values (ties by value), `other`, and its numbers.
    fn summary(&self, top_k: usize) -> Value {
        let mut keys: Vec<(&String, &NaiveKey)> =
            self.keys.iter().filter(|(_, stats)| stats.n > 0).collect();
        keys.sort_by(|a, b| b.1.n.cmp(&a.1.n).then_with(|| a.0.cmp(b.0)));
        let dropped = keys.len().saturating_sub(100);
        let mut out = serde_json::Map::new();
        for (key, stats) in keys.into_iter().take(100) {
            let mut part = serde_json::Map::new();
            part.insert("n".into(), json!(stats.n));
            if !stats.values.is_empty() {
                let mut ranked: Vec<(&String, &u64)> = stats.values.iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                let total: u64 = stats.values.values().sum();
                let top: serde_json::Map<String, Value> = ranked
                    .iter()
                    .take(top_k)
                    .map(|(v, c)| ((*v).clone(), json!(**c)))
                    .collect();
                let kept: u64 = ranked.iter().take(top_k).map(|(_, c)| **c).sum();
                part.insert("values".into(), Value::Object(top));
                part.insert("other".into(), json!(total - kept));
            }
            if let Some((units, unit)) = stats.units {
                // `as` rounds to nearest, ties to even; past the largest double the
                // product is infinite, which the summary writes as `null`.
                let sum = units as f64 * unit;
                part.insert(
                    "sum".into(),
                    serde_json::Number::from_f64(sum).map_or(Value::Null, Value::Number),
                );
                part.insert("min".into(), json!(stats.min));
                part.insert("max".into(), json!(stats.max));
                for (name, exact) in crate::common::exact_percentiles(&stats.numbers) {
                    part.insert(name.into(), json!(exact));
                }
            }
            out.insert(key.clone(), Value::Object(part));
        }
        if dropped > 0 {
            out.insert("$dropped_keys".into(), json!(dropped));
        }
        numbers_as_doubles(Value::Object(out))
    }
}

/// A nested value's canonical text: keys sorted (`serde_json::Map` sorts them),
/// integral numbers written as integers.
fn canonical(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() <= 2f64.powi(53) => json!(x as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        Value::Object(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, canonical(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Every number as a double, so that `10` and `10.0` compare equal: this test is
/// about values; the text form of numbers has tests of its own.
fn numbers_as_doubles(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().expect("a double")),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_doubles).collect()),
        Value::Object(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, numbers_as_doubles(v)))
                .collect(),
        ),
        other => other,
    }
}
