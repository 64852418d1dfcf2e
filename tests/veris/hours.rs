//! `telemetry_hourly`: one row per (local hour, event), written with its day, on both
//! databases. Expectations come from jiff's zone rules applied to each event's
//! instant, not from the job's own arithmetic.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use veris_jobs::model::DayStatus;
use veris_jobs::store::Database;
use veris_jobs::telemetry_daily::RunOptions;

use crate::common::{Kind, TestDb, event, range_options};

crate::on_both_databases!(
    hours_are_the_local_clock_hours_on_both_daylight_saving_days_and_at_half_hours,
    hours_follow_every_rule_of_days,
    today_is_written_partial_and_a_later_run_makes_a_partial_day_whole,
    the_report_by_hour_gives_each_local_hour_and_marks_the_hour_so_far,
    a_days_rows_and_its_hours_carry_one_updated_at,
);

/// Every stored hour row: (hour as UTC RFC 3339, event) → (count, unique users).
async fn hour_rows(db: &TestDb) -> BTreeMap<(String, String), (i64, i64)> {
    let rows: Vec<(String, String, i64, i64)> = match db.store.database() {
        Database::Postgres(s) => sqlx::query_as(
            "SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             event, count, unique_users FROM telemetry_hourly",
        )
        .fetch_all(s.pool())
        .await
        .unwrap(),
        Database::Sqlite(s) => {
            sqlx::query_as("SELECT hour, event, count, unique_users FROM telemetry_hourly")
                .fetch_all(s.pool())
                .await
                .unwrap()
        }
    };
    rows.into_iter()
        .map(|(hour, event, count, users)| ((hour, event), (count, users)))
        .collect()
}

/// The instant the local hour holding `at` begins in `zone`: the zoned time cut to
/// its hour, keeping its offset (so the two passes of a repeated hour stay apart).
fn local_hour_start(at: Timestamp, zone: &TimeZone) -> String {
    let zoned = at.to_zoned_datetime(zone.clone());
    let into_hour = i64::from(zoned.minute()) * 60 + i64::from(zoned.second());
    let into_hour = SignedDuration::from_secs(into_hour)
        + SignedDuration::from_nanos(i64::from(zoned.subsec_nanosecond()));
    at.checked_sub(into_hour).unwrap().to_string()
}

/// (instant, event, user) triples rolled up by local hour, as the contract says.
fn expected(
    events: &[(&str, &str, &str)],
    zone: &TimeZone,
) -> BTreeMap<(String, String), (i64, i64)> {
    let mut groups: BTreeMap<(String, String), (i64, std::collections::BTreeSet<String>)> =
        BTreeMap::new();
    for (at, name, user) in events {
        let hour = local_hour_start(at.parse().unwrap(), zone);
        let group = groups.entry((hour, (*name).to_owned())).or_default();
        group.0 += 1;
        group.1.insert((*user).to_owned());
    }
    groups
        .into_iter()
        .map(|(key, (count, users))| (key, (count, users.len() as i64)))
        .collect()
}

async fn hours_are_the_local_clock_hours_on_both_daylight_saving_days_and_at_half_hours(
    db: TestDb,
) {
    let new_york = TimeZone::get("America/New_York").unwrap();
    // 2024-03-10 (23 hours: 02:00 is skipped) and 2024-11-03 (25 hours: 01:00 twice).
    let spring = [
        ("2024-03-10T05:00:00Z", "view", "a"), // 00:00 EST
        ("2024-03-10T05:59:59Z", "view", "b"), // 00:59 EST
        ("2024-03-10T06:30:00Z", "view", "a"), // 01:30 EST
        ("2024-03-10T07:00:00Z", "view", "a"), // 03:00 EDT, the hour after 01:00
        ("2024-03-10T07:10:00Z", "click", "c"),
        ("2024-03-11T03:59:59Z", "view", "d"), // 23:59 EDT, the last hour
    ];
    let autumn = [
        ("2024-11-03T04:00:00Z", "view", "a"), // 00:00 EDT
        ("2024-11-03T05:15:00Z", "view", "a"), // 01:15 EDT, the first pass
        ("2024-11-03T06:15:00Z", "view", "b"), // 01:15 EST, the second pass
        ("2024-11-03T06:45:00Z", "view", "b"),
        ("2024-11-04T04:59:00Z", "view", "c"), // 23:59 EST
    ];
    let kolkata_events = [
        ("2024-05-01T18:30:00Z", "view", "a"), // 00:00 IST on 05-02
        ("2024-05-01T19:29:59Z", "view", "b"), // 00:59 IST
        ("2024-05-01T19:30:00Z", "view", "b"), // 01:00 IST
        ("2024-05-02T18:29:00Z", "view", "c"), // 23:59 IST
    ];
    let all: Vec<_> = spring
        .iter()
        .chain(&autumn)
        .chain(&kolkata_events)
        .map(|(at, name, user)| event(name, Some(user), at, None))
        .collect();
    db.insert(&all).await;
    for (start, end) in [("2024-03-10", "2024-03-10"), ("2024-11-03", "2024-11-03")] {
        let report = db
            .run(&RunOptions {
                timezone: new_york.clone(),
                ..range_options(start, end)
            })
            .await;
        assert!(report.ok, "{report:?}");
    }
    let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
    let report = db
        .run(&RunOptions {
            timezone: kolkata.clone(),
            ..range_options("2024-05-02", "2024-05-02")
        })
        .await;
    assert!(report.ok, "{report:?}");

    let mut want = expected(&spring, &new_york);
    want.extend(expected(&autumn, &new_york));
    want.extend(expected(&kolkata_events, &kolkata));
    let got = hour_rows(&db).await;
    assert_eq!(got, want);
    // The repeated hour is two rows, an hour apart; Kolkata's hours begin at :30 UTC.
    assert!(got.contains_key(&("2024-11-03T05:00:00Z".into(), "view".into())));
    assert!(got.contains_key(&("2024-11-03T06:00:00Z".into(), "view".into())));
    assert!(got.contains_key(&("2024-05-01T18:30:00Z".into(), "view".into())));
    assert!(got.contains_key(&("2024-05-01T19:30:00Z".into(), "view".into())));
}

/// Every hour row as one text, its `updated_at` and sketch included.
async fn stamps(db: &TestDb) -> Vec<String> {
    let sql = match db.kind {
        Kind::Postgres => {
            "SELECT hour::text || event || updated_at::text || encode(users_hll, 'hex') \
             FROM telemetry_hourly ORDER BY 1"
        }
        Kind::Sqlite => {
            "SELECT hour || event || updated_at || hex(users_hll) FROM telemetry_hourly ORDER BY 1"
        }
    };
    db.strings(sql, None).await
}

async fn hours_follow_every_rule_of_days(db: TestDb) {
    db.insert(&[
        event("view", Some("a"), "2024-06-01T10:05:00Z", None),
        event("view", Some("b"), "2024-06-01T10:55:00Z", None),
        event("view", Some("a"), "2024-06-01T11:00:00Z", None),
        event("click", None, "2024-06-01T23:59:59Z", None),
    ])
    .await;
    let day = range_options("2024-06-01", "2024-06-01");

    // A dry run writes no hour and counts them apart.
    let dry = db
        .run(&RunOptions {
            dry_run: true,
            ..day.clone()
        })
        .await;
    assert_eq!(dry.days[0].hours.inserted, 3);
    assert_eq!(dry.totals.hours.inserted, 3);
    assert!(hour_rows(&db).await.is_empty());

    let first = db.run(&day).await;
    assert_eq!(first.days[0].hours.inserted, 3);
    let written = hour_rows(&db).await;
    assert_eq!(
        written.get(&("2024-06-01T10:00:00Z".into(), "view".into())),
        Some(&(2, 2))
    );
    assert_eq!(
        written.get(&("2024-06-01T23:00:00Z".into(), "click".into())),
        Some(&(1, 0))
    );
    let before = stamps(&db).await;

    // Re-run: byte-identical, nothing rewritten.
    let again = db.run(&day).await;
    assert_eq!(again.days[0].hours.unchanged, 3);
    assert_eq!(stamps(&db).await, before);

    // Events gone from an hour: its rows go with them, in the day's transaction.
    db.execute(
        "DELETE FROM telemetry_events WHERE event = 'view' AND user_id = 'a' AND id = (SELECT min(id) FROM telemetry_events)",
    )
    .await;
    // The retention guard keeps the day (and its hours) while events are missing...
    let kept = db.run(&day).await;
    assert_eq!(kept.days[0].status, DayStatus::Kept);
    assert_eq!(kept.days[0].hours.unchanged, 3);
    assert_eq!(stamps(&db).await, before);
    // ...until forced.
    let forced = db
        .run(&RunOptions {
            force: true,
            ..day.clone()
        })
        .await;
    assert_eq!(forced.days[0].hours.updated, 1);
    let after = hour_rows(&db).await;
    assert_eq!(
        after.get(&("2024-06-01T10:00:00Z".into(), "view".into())),
        Some(&(1, 1))
    );
    db.execute("DELETE FROM telemetry_events WHERE event = 'click'")
        .await;
    let gone = db.run(&RunOptions { force: true, ..day }).await;
    assert_eq!(gone.days[0].hours.deleted, 1);
    assert!(
        !hour_rows(&db)
            .await
            .contains_key(&("2024-06-01T23:00:00Z".into(), "click".into()))
    );
}

/// The `partial` flag of every stored row of `date`.
async fn partial_flags(db: &TestDb, date: &str) -> Vec<String> {
    let sql = match db.kind {
        Kind::Postgres => {
            "SELECT event || '=' || partial::text FROM telemetry_daily WHERE date = $1::date ORDER BY event"
        }
        Kind::Sqlite => {
            "SELECT event || '=' || CASE partial WHEN 1 THEN 'true' ELSE 'false' END FROM telemetry_daily WHERE date = $1 ORDER BY event"
        }
    };
    db.strings(sql, Some(date)).await
}

async fn today_is_written_partial_and_a_later_run_makes_a_partial_day_whole(db: TestDb) {
    let now = Timestamp::now();
    let today = now.to_zoned_datetime(TimeZone::UTC).date();
    let yesterday = today.yesterday().unwrap();
    db.insert(&[
        event("view", Some("a"), &now.to_string(), None),
        event("view", Some("b"), &format!("{yesterday}T12:00:00Z"), None),
    ])
    .await;

    // Today, so far: written, marked partial.
    let report = db
        .run(&range_options(&today.to_string(), &today.to_string()))
        .await;
    assert!(report.ok, "{report:?}");
    assert_eq!(partial_flags(&db, &today.to_string()).await, ["view=true"]);

    // A day written while partial is made whole by a run after its end: `updated`.
    let day = range_options(&yesterday.to_string(), &yesterday.to_string());
    db.run(&day).await;
    assert_eq!(
        partial_flags(&db, &yesterday.to_string()).await,
        ["view=false"]
    );
    let mark = match db.kind {
        Kind::Postgres => "UPDATE telemetry_daily SET partial = true",
        Kind::Sqlite => "UPDATE telemetry_daily SET partial = 1",
    };
    db.execute(&format!("{mark} WHERE event = 'view'")).await;
    let whole = db.run(&day).await;
    assert_eq!((whole.days[0].updated, whole.days[0].unchanged), (1, 0));
    assert_eq!(
        partial_flags(&db, &yesterday.to_string()).await,
        ["view=false"]
    );

    // A day that has not begun is refused before anything is read.
    let tomorrow = today.tomorrow().unwrap().to_string();
    let refused = veris_jobs::telemetry_daily::run(&db.store, &range_options(&tomorrow, &tomorrow))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("has not begun"), "{refused}");
}

#[tokio::test]
async fn the_command_line_and_the_endpoint_take_today_and_refuse_a_day_not_begun() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let today = Timestamp::now().to_zoned_datetime(TimeZone::UTC).date();
    let tomorrow = today.tomorrow().unwrap().to_string();

    let output = crate::cli::veris(&db.url, &["telemetry-daily", "--today", "--json"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        crate::cli::stderr(&output)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["startDate"], today.to_string());

    let output = crate::cli::veris(&db.url, &["telemetry-daily", "--date", &tomorrow]);
    assert_eq!(output.status.code(), Some(2));
    assert!(crate::cli::stderr(&output).contains("has not begun"));

    let server = crate::http::TestServer::spawn_app(&db.url, 366).await;
    let (status, body) = server
        .post_json(&format!(r#"{{"startDate":"{tomorrow}"}}"#))
        .await;
    assert_eq!(status.as_u16(), 400);
    assert_eq!(body["error"]["code"], "future_date", "{body}");
    server.stop().await;
}

async fn the_report_by_hour_gives_each_local_hour_and_marks_the_hour_so_far(db: TestDb) {
    use veris_jobs::report::{Grouping, ReportRequest, telemetry_report};

    let new_york = TimeZone::get("America/New_York").unwrap();
    let autumn = [
        ("2024-11-03T04:10:00Z", "view", "a"), // 00:10 EDT
        ("2024-11-03T05:15:00Z", "view", "a"), // 01:15 EDT
        ("2024-11-03T05:20:00Z", "click", "b"),
        ("2024-11-03T06:15:00Z", "view", "b"), // 01:15 EST
        ("2024-11-03T06:45:00Z", "view", "c"),
    ];
    let events: Vec<_> = autumn
        .iter()
        .map(|(at, name, user)| event(name, Some(user), at, None))
        .collect();
    db.insert(&events).await;
    let day = RunOptions {
        timezone: new_york.clone(),
        ..range_options("2024-11-03", "2024-11-03")
    };
    assert!(db.run(&day).await.ok);
    let request = ReportRequest {
        range: veris_jobs::model::DayRange::single("2024-11-03".parse().unwrap()),
        by: Grouping::Hour,
        events: Vec::new(),
        top_k: 20,
        timezone: new_york.clone(),
    };
    let report = telemetry_report(&db.store, &request).await.unwrap();
    assert_eq!(report.periods.len(), 25);
    let summary: Vec<(&str, i64, Option<u64>)> = report
        .periods
        .iter()
        .filter(|p| p.total.count > 0)
        .map(|p| (p.start.as_str(), p.total.count, p.total.unique_users))
        .collect();
    assert_eq!(
        summary,
        [
            ("2024-11-03T00:00:00-04:00", 1, Some(1)),
            ("2024-11-03T01:00:00-04:00", 2, Some(2)),
            ("2024-11-03T01:00:00-05:00", 2, Some(2)),
        ]
    );
    let second_pass = &report.periods[2];
    assert_eq!(second_pass.end, "2024-11-03T02:00:00-05:00");
    assert_eq!(second_pass.events[0].event, "view");
    assert_eq!(second_pass.events[0].unique_users, Some(2));
    assert!(second_pass.events[0].unique_users_exact);
    assert!(report.periods.iter().all(|p| !p.partial), "a whole day");

    // Today so far: the hour of the run, and its day, are marked with when.
    let now = Timestamp::now();
    let today = now.to_zoned_datetime(TimeZone::UTC).date();
    db.insert(&[event("view", Some("z"), &now.to_string(), None)])
        .await;
    assert!(
        db.run(&range_options(&today.to_string(), &today.to_string()))
            .await
            .ok
    );
    let today_range = veris_jobs::model::DayRange::single(today);
    let by_hour = telemetry_report(
        &db.store,
        &ReportRequest {
            range: today_range,
            timezone: TimeZone::UTC,
            ..request.clone()
        },
    )
    .await
    .unwrap();
    let now_hour = by_hour
        .periods
        .iter()
        .find(|p| p.total.count > 0)
        .expect("the hour of the event");
    assert!(now_hour.partial, "{now_hour:?}");
    let as_of: Timestamp = now_hour.as_of.as_deref().unwrap().parse().unwrap();
    assert!(as_of >= now, "{as_of} {now}");
    let by_day = telemetry_report(
        &db.store,
        &ReportRequest {
            range: today_range,
            by: Grouping::Day,
            timezone: TimeZone::UTC,
            ..request
        },
    )
    .await
    .unwrap();
    assert!(by_day.periods[0].partial);
    assert!(by_day.periods[0].as_of.is_some());
}

#[tokio::test]
async fn the_endpoint_reports_by_hour_for_at_most_31_days() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let server = crate::http::TestServer::spawn_app(&db.url, 366).await;
    let get = |path: String| {
        let server = &server;
        async move {
            let answer = server
                .authed(reqwest::Method::GET, &path)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            (status, body)
        }
    };
    let (status, body) =
        get("/api/telemetry/report?startDate=2024-01-01&endDate=2024-01-02&by=hour".into()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["by"], "hour");
    assert_eq!(body["periods"].as_array().unwrap().len(), 48);
    assert_eq!(body["periods"][1]["start"], "2024-01-01T01:00:00+00:00");
    assert_eq!(body["periods"][1]["end"], "2024-01-01T02:00:00+00:00");
    let (status, body) =
        get("/api/telemetry/report?startDate=2024-01-01&endDate=2024-02-01&by=hour".into()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "range_too_long", "{body}");
    server.stop().await;

    let output = crate::cli::veris(
        &db.url,
        &[
            "report",
            "--start-date",
            "2024-01-01",
            "--end-date",
            "2024-03-01",
            "--by",
            "hour",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(crate::cli::stderr(&output).contains("at most 31 days"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn today_is_refreshed_at_its_interval_and_a_tick_during_a_refresh_is_skipped() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let now = Timestamp::now();
    let today = now.to_zoned_datetime(TimeZone::UTC).date();
    db.insert(&[event("view", Some("a"), &now.to_string(), None)])
        .await;
    let launcher = veris_jobs::launcher::Launcher::new(db.store.clone(), RunOptions::default());
    // Today is held by another run for a while: the first refresh waits for it, and
    // the ticks meanwhile are skipped.
    let held = db
        .store
        .lock_days(&[today], std::time::Duration::ZERO)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let refresher = tokio::spawn(veris_jobs::schedule::refresh_today_every(
        launcher.clone(),
        std::time::Duration::from_millis(100),
        async move {
            let _ = stopped.await;
        },
    ));
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    held.release().await;
    // Refreshes go on once the day is free.
    let mut runs = Vec::new();
    for _ in 0..100 {
        runs = db
            .strings(
                "SELECT trigger || ' ' || start_date || ' ' || status FROM job_runs ORDER BY id",
                None,
            )
            .await;
        if runs.iter().filter(|r| r.ends_with(" ok")).count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    refresher.await.unwrap();
    launcher.wait().await;
    let done: Vec<&String> = runs.iter().filter(|r| r.ends_with(" ok")).collect();
    assert!(done.len() >= 2, "{runs:?}");
    for run in &done {
        assert_eq!(run.as_str(), format!("schedule {today} ok"));
    }
    let metrics = launcher.metrics().render();
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("veris_schedule_ticks_skipped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(skipped >= 1, "{metrics}");
    assert!(
        veris_jobs::config::parse_today_every("30s").is_err(),
        "at least a minute"
    );
    assert!(veris_jobs::config::parse_today_every("10m").is_ok());
}

/// A day is written at one instant: its rows and its hours' rows, across every
/// statement of the write, carry the same `updated_at`.
async fn a_days_rows_and_its_hours_carry_one_updated_at(db: TestDb) {
    // Many events and users in every hour, so that the write takes statements a
    // while apart.
    let events: Vec<_> = (0..20_000)
        .map(|n| {
            let at = format!("2024-05-01T{:02}:{:02}:00Z", (n / 20) % 24, n % 60);
            event(&format!("e{}", n % 20), Some(&format!("u{n}")), &at, None)
        })
        .collect();
    db.insert(&events).await;
    let report = db.run(&range_options("2024-05-01", "2024-05-01")).await;
    assert!(report.ok, "{report:?}");
    let sql = "SELECT count(DISTINCT t), count(*) FROM \
               (SELECT updated_at AS t FROM telemetry_daily \
                UNION ALL SELECT updated_at FROM telemetry_hourly) AS rows";
    let (instants, rows): (i64, i64) = match db.store.database() {
        Database::Postgres(s) => sqlx::query_as(sql).fetch_one(s.pool()).await.unwrap(),
        Database::Sqlite(s) => sqlx::query_as(sql).fetch_one(s.pool()).await.unwrap(),
    };
    assert_eq!(rows, 20 + 20 * 24, "the day's rows and its hours'");
    assert_eq!(instants, 1, "one updated_at for all of them");
}
