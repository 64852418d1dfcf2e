//! Reading the rollups: `veris-jobs report` and `GET /api/telemetry/report`, on both
//! databases, from the rollups alone; `READ_SECRET` reads and never runs.

use reqwest::StatusCode;
use serde_json::Value;
use veris_jobs::config::{CronSecret, Secret};
use veris_jobs::http::AppState;
use veris_jobs::model::DayRange;
use veris_jobs::report::{Grouping, ReportRequest, telemetry_report};
use veris_jobs::telemetry_daily::RunOptions;

use crate::cli::veris;
use crate::common::{TestDb, event, range_options};
use crate::http::{JOB, SECRET, TestServer};

crate::on_both_databases!(
    the_report_groups_the_rollups_by_day_week_and_month,
    the_report_is_served_to_the_read_secret_which_cannot_run_the_job,
);

const READER: &str = "reader-secret-0123456789";

/// Ten days across a month's end (2024-01-27 to 2024-02-05): users u0..u4 every
/// day, and u<day> on each day too.
async fn fill(db: &TestDb) {
    let mut events = Vec::new();
    for day in 0..10 {
        let date: jiff::civil::Date = "2024-01-27"
            .parse::<jiff::civil::Date>()
            .unwrap()
            .checked_add(jiff::Span::new().days(day))
            .unwrap();
        for user in ["u0", "u1", "u2", "u3", "u4"]
            .into_iter()
            .chain([format!("day{day}").as_str()])
        {
            events.push(event(
                "view",
                Some(user),
                &format!("{date}T10:00:00Z"),
                Some(r#"{"plan":"pro","amount":1.5}"#),
            ));
        }
        events.push(event(
            "click",
            Some("u0"),
            &format!("{date}T11:00:00Z"),
            None,
        ));
    }
    db.insert(&events).await;
    assert!(db.run(&range_options("2024-01-27", "2024-02-05")).await.ok);
}

fn request(start: &str, end: &str, by: Grouping) -> ReportRequest {
    ReportRequest {
        range: DayRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap(),
        by,
        events: Vec::new(),
        top_k: 20,
        timezone: jiff::tz::TimeZone::UTC,
    }
}

async fn the_report_groups_the_rollups_by_day_week_and_month(db: TestDb) {
    fill(&db).await;
    // From the rollups alone: the raw events can go.
    db.execute("DELETE FROM telemetry_events").await;
    let weeks = telemetry_report(
        &db.store,
        &request("2024-01-27", "2024-02-05", Grouping::Week),
    )
    .await
    .unwrap();
    let spans: Vec<(&str, &str)> = weeks
        .periods
        .iter()
        .map(|p| (p.start.as_str(), p.end.as_str()))
        .collect();
    assert_eq!(
        spans,
        [
            ("2024-01-27", "2024-01-28"),
            ("2024-01-29", "2024-02-04"),
            ("2024-02-05", "2024-02-05")
        ]
    );
    let week = &weeks.periods[1];
    let view = &week.events[0];
    assert_eq!((view.event.as_str(), view.count), ("view", 42));
    // u0..u4 and one user a day: 5 + 7, counted once each across the week.
    assert_eq!(
        (view.unique_users, view.unique_users_exact),
        (Some(12), false)
    );
    assert_eq!(view.meta.to_value().unwrap()["plan"]["values"]["pro"], 42);
    assert_eq!(view.meta.to_value().unwrap()["amount"]["sum"], 63);
    assert_eq!((week.total.count, week.total.unique_users), (49, Some(12)));

    let months = telemetry_report(
        &db.store,
        &request("2024-01-27", "2024-02-05", Grouping::Month),
    )
    .await
    .unwrap();
    assert_eq!(months.periods.len(), 2);
    assert_eq!(
        months.periods[0].total.unique_users,
        Some(10),
        "u0..u4 and 5 day users"
    );
    let days = telemetry_report(
        &db.store,
        &request("2024-01-30", "2024-01-30", Grouping::Day),
    )
    .await
    .unwrap();
    let click = days.periods[0]
        .events
        .iter()
        .find(|e| e.event == "click")
        .unwrap();
    assert_eq!(
        (click.unique_users, click.unique_users_exact),
        (Some(1), true)
    );

    // The command line prints the same report.
    let json = veris(
        &db.url,
        &[
            "report",
            "--start-date",
            "2024-01-27",
            "--end-date",
            "2024-02-05",
            "--by",
            "month",
            "--json",
        ],
    );
    assert_eq!(json.status.code(), Some(0), "{}", crate::cli::stderr(&json));
    let printed: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(printed, serde_json::to_value(&months).unwrap());
    // A day written before sketches were kept makes its period's unions unknown.
    db.execute("UPDATE telemetry_daily SET users_hll = NULL WHERE date = '2024-01-30'")
        .await;
    let weeks = telemetry_report(
        &db.store,
        &request("2024-01-29", "2024-02-04", Grouping::Week),
    )
    .await
    .unwrap();
    assert_eq!(weeks.periods[0].total.unique_users, None);
    assert_eq!(weeks.periods[0].missing_sketches, ["2024-01-30"]);

    let csv = veris(&db.url, &["report", "--date", "2024-01-30", "--csv"]);
    let text = String::from_utf8_lossy(&csv.stdout);
    assert!(
        text.starts_with("period_start,period_end,event,count,unique_users,unique_users_exact\n"),
        "{text}"
    );
    assert!(
        text.contains("2024-01-30,2024-01-30,view,6,6,true"),
        "{text}"
    );
    let table = veris(
        &db.url,
        &["report", "--date", "2024-01-30", "--event", "click"],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("click") && !text.contains("view"), "{text}");
    let bad = veris(&db.url, &["report", "--by", "year"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        crate::cli::stderr(&bad).contains("year"),
        "{}",
        crate::cli::stderr(&bad)
    );
}

async fn the_report_is_served_to_the_read_secret_which_cannot_run_the_job(db: TestDb) {
    fill(&db).await;
    let state = AppState::new(
        db.store.clone(),
        RunOptions::default(),
        366,
        CronSecret::new(SECRET).unwrap(),
    )
    .with_read_secret(Secret::read(READER).unwrap());
    let server = TestServer::start_with(state).await;
    let get = |path: &str, secret: &str| {
        server
            .client
            .get(server.url(path))
            .bearer_auth(secret)
            .send()
    };
    let path = "/api/telemetry/report?startDate=2024-01-27&endDate=2024-02-05&by=week&event=view";
    for secret in [READER, SECRET] {
        let response = get(path, secret).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["by"], "week");
        assert_eq!(body["periods"][1]["events"][0]["uniqueUsers"], 12);
        assert_eq!(
            body["periods"][1]["events"].as_array().unwrap().len(),
            1,
            "view only"
        );
    }
    for readable in ["/api/jobs/runs", "/metrics"] {
        assert_eq!(
            get(readable, READER).await.unwrap().status(),
            StatusCode::OK,
            "{readable}"
        );
    }
    let refused = get(&format!("{JOB}?startDate=2024-01-27&dryRun=true"), READER)
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the read secret never runs the job"
    );
    for (query, code) in [
        ("by=year", "invalid_by"),
        ("startDate=2024-01-01&endDate=2025-06-01", "range_too_long"),
        ("startDate=2024-01-01&startDate=2024-01-02", "invalid_query"),
        ("startDate=2024-1-1", "invalid_date"),
        ("from=2024-01-01", "unknown_field"),
    ] {
        let response = get(&format!("/api/telemetry/report?{query}"), READER)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
    }
    assert_eq!(
        get("/api/telemetry/report", "wrong-secret-0123456789")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}
