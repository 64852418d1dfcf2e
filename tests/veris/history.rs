//! The run history: `job_runs`, `veris-jobs runs` and `GET /api/jobs/runs`.

use serde_json::Value;
use veris_jobs::model::{DayRange, NewRun, Trigger};
use veris_jobs::store::TableName;
use veris_jobs::telemetry_daily::{self, RunOptions};

use crate::cli::veris;
use crate::common::{TestDb, event, range_options};

crate::on_both_databases!(
    runs_are_recorded_with_trigger_status_progress_and_report,
    a_run_that_died_is_marked_abandoned_by_a_later_run_over_its_days,
    runs_are_listed_on_the_command_line_and_over_http,
);

async fn runs_are_recorded_with_trigger_status_progress_and_report(db: TestDb) {
    db.insert(&[event("view", Some("u"), "2024-01-02T10:00:00Z", None)])
        .await;
    let report = db.run(&range_options("2024-01-01", "2024-01-03")).await;
    db.run(&RunOptions {
        dry_run: true,
        ..range_options("2024-01-01", "2024-01-03")
    })
    .await;
    let server = crate::http::TestServer::spawn_app(&db.url, 366).await;
    let (status, _) = server.post_json(r#"{"startDate":"2024-01-02"}"#).await;
    assert_eq!(status.as_u16(), 200);
    let missing = db
        .second_store(&TableName::parse("no_such_table").unwrap())
        .await;
    let failed = telemetry_daily::run(&missing, &range_options("2024-01-05", "2024-01-05"))
        .await
        .unwrap();
    assert!(!failed.ok);

    let runs = db.store.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 3, "the dry run is not recorded: {runs:?}");
    let (last, http, first) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(
        (first.trigger.as_str(), first.status.as_str()),
        ("cli", "ok")
    );
    assert_eq!(
        (first.start_date.as_str(), first.end_date.as_str()),
        ("2024-01-01", "2024-01-03")
    );
    assert_eq!((first.days_done, first.days_total), (3, 3));
    assert_eq!(first.timezone, "UTC");
    assert!(first.finished_at.is_some() && first.started_at.ends_with('Z'));
    assert!(first.report.is_none(), "a listing carries summaries");
    assert_eq!(
        first.summary.as_ref().unwrap(),
        &veris_jobs::model::RunSummary::of(&report)
    );
    let whole = db.store.run(first.id).await.unwrap().unwrap();
    assert_eq!(
        whole.report.as_ref().unwrap(),
        &serde_json::to_value(&report).unwrap()
    );
    assert_eq!(
        (http.trigger.as_str(), http.status.as_str(), http.days_total),
        ("http", "ok", 1)
    );
    assert_eq!(
        (last.status.as_str(), last.days_done, last.days_total),
        ("failed", 0, 1)
    );
    let summary = last.summary.as_ref().unwrap();
    assert_eq!((summary.ok, summary.failed_days_total), (false, 1));
    assert_eq!(summary.failed_days[0].date, "2024-01-05");
    server.stop().await;
}

async fn a_run_that_died_is_marked_abandoned_by_a_later_run_over_its_days(db: TestDb) {
    let day = |d: &str| d.parse::<jiff::civil::Date>().unwrap();
    let died = |start, end| NewRun {
        job: "telemetry-daily".into(),
        trigger: Trigger::Cli,
        range: DayRange::new(day(start), day(end)).unwrap(),
        timezone: "UTC".into(),
        days_total: 5,
        source_watermark: None,
    };
    // Two runs that died without finishing: one over days a new run takes, one not.
    let overlapping = db
        .store
        .start_run(&died("2024-02-01", "2024-02-05"))
        .await
        .unwrap();
    let elsewhere = db
        .store
        .start_run(&died("2024-03-01", "2024-03-01"))
        .await
        .unwrap();
    db.run(&range_options("2024-02-05", "2024-02-06")).await;
    let runs = db.store.recent_runs(10).await.unwrap();
    let status = |id: i64| {
        runs.iter()
            .find(|r| r.id == id)
            .map(|r| r.status.clone())
            .unwrap()
    };
    assert_eq!(status(overlapping), "abandoned");
    assert_eq!(
        status(elsewhere),
        "running",
        "a run over other days may still be alive"
    );
    assert_eq!(runs[0].status, "ok");
}

async fn runs_are_listed_on_the_command_line_and_over_http(db: TestDb) {
    let empty = veris(&db.url, &["runs"]);
    assert!(String::from_utf8_lossy(&empty.stdout).contains("no runs recorded yet"));
    for day in ["2024-04-01", "2024-04-02", "2024-04-03"] {
        assert!(
            veris(&db.url, &["telemetry-daily", "--date", day])
                .status
                .success()
        );
    }
    let table = veris(&db.url, &["runs", "--limit", "2"]);
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.lines().count(), 3, "a header and two runs: {text}");
    assert!(
        text.contains("2024-04-03") && !text.contains("2024-04-01"),
        "{text}"
    );
    let json = veris(&db.url, &["runs", "--json"]);
    let runs: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 3);
    assert_eq!(runs[0]["startDate"], "2024-04-03");
    assert_eq!(runs[0]["daysDone"], 1);

    let server = crate::http::TestServer::spawn_app(&db.url, 366).await;
    let response = server
        .authed(reqwest::Method::GET, "/api/jobs/runs?limit=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["runs"].as_array().unwrap().len(), 1);
    assert_eq!(body["runs"][0]["trigger"], "cli");
    let bad = server
        .authed(reqwest::Method::GET, "/api/jobs/runs?limit=lots")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let anonymous = server
        .client
        .get(server.url("/api/jobs/runs"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    server.stop().await;
}
