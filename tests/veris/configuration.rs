//! Settings read from the environment of the real binary, their defaults, and flags
//! winning over them. Each run starts from an environment without any of the job's
//! variables, so that the shell's cannot leak in.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan as _};
use serde_json::Value;

const VARIABLES: [&str; 12] = [
    "DATABASE_URL",
    "TELEMETRY_TIMEZONE",
    "TELEMETRY_META_TOP_K",
    "TELEMETRY_LOOKBACK_DAYS",
    "TELEMETRY_MAX_RANGE_DAYS",
    "TELEMETRY_MEMORY_LIMIT",
    "TELEMETRY_SOURCE_TABLE",
    "TELEMETRY_KEEP_DAYS",
    "BIND",
    "TMPDIR",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// `veris-jobs ARGS` in `dir`, with `env` and none of the job's other variables.
fn veris(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
    for var in VARIABLES {
        command.env_remove(var);
    }
    command
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run veris-jobs")
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn days_ago(n: i64) -> String {
    let today = Timestamp::now().to_zoned_datetime(TimeZone::UTC).date();
    today.checked_sub(n.days()).unwrap().to_string()
}

#[test]
fn the_environment_configures_the_binary_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The default database is ./veris.db.
    assert!(veris(dir, &[], &["demo"]).status.success());
    assert!(dir.join("veris.db").exists(), "demo made ./veris.db");

    // TELEMETRY_LOOKBACK_DAYS sets the default range; --lookback-days wins.
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["telemetry-daily", "--dry-run", "--json"];
        args.extend_from_slice(extra);
        json(&veris(dir, env, &args))
    };
    let three = run(&[("TELEMETRY_LOOKBACK_DAYS", "3")], &[]);
    assert_eq!(three["startDate"], days_ago(3).as_str());
    assert_eq!(three["days"].as_array().unwrap().len(), 3);
    let one = run(
        &[("TELEMETRY_LOOKBACK_DAYS", "3")],
        &["--lookback-days", "1"],
    );
    assert_eq!(one["startDate"], days_ago(1).as_str());

    // TELEMETRY_TIMEZONE cuts the days; --timezone wins.
    let tokyo = run(&[("TELEMETRY_TIMEZONE", "Asia/Tokyo")], &[]);
    assert_eq!(tokyo["timezone"], "Asia/Tokyo");
    let utc = run(
        &[("TELEMETRY_TIMEZONE", "Asia/Tokyo")],
        &["--timezone", "UTC"],
    );
    assert_eq!(utc["timezone"], "UTC");

    // TELEMETRY_META_TOP_K keeps that many values per key in the report.
    let range = [
        "report",
        "--by",
        "range",
        "--json",
        "--start-date",
        &days_ago(3),
    ];
    let report = json(&veris(dir, &[("TELEMETRY_META_TOP_K", "1")], &range));
    let browsers = browsers_of_page_views(&report);
    assert_eq!(browsers.as_object().unwrap().len(), 1, "{browsers}");
    let report = json(&veris(
        dir,
        &[("TELEMETRY_META_TOP_K", "1")],
        &[&range[..], &["--meta-top-k", "2"]].concat(),
    ));
    let browsers = browsers_of_page_views(&report);
    assert_eq!(browsers.as_object().unwrap().len(), 2, "{browsers}");

    // TELEMETRY_MEMORY_LIMIT is read: a bad value is blamed on it.
    let bad = veris(
        dir,
        &[("TELEMETRY_MEMORY_LIMIT", "lots")],
        &["telemetry-daily"],
    );
    assert_eq!(bad.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("TELEMETRY_MEMORY_LIMIT (from the environment)"),
        "{said}"
    );

    // A day of 60,000 distinct users spills at TELEMETRY_MEMORY_LIMIT=1MiB, into
    // TMPDIR by default; --memory-limit and --spill-dir win.
    let db = rusqlite::Connection::open(dir.join("veris.db")).unwrap();
    db.execute_batch("BEGIN").unwrap();
    for i in 0..60_000 {
        db.execute(
            "INSERT INTO telemetry_events (event, user_id, created_at, meta) \
             VALUES (?1, ?2, '2024-05-02T12:00:00.000Z', ?3)",
            (
                format!("e{}", i % 5),
                format!("device-{i:08}"),
                format!(r#"{{"trace":"{i:016x}"}}"#),
            ),
        )
        .unwrap();
    }
    db.execute_batch("COMMIT").unwrap();
    let day = [
        "telemetry-daily",
        "--date",
        "2024-05-02",
        "--dry-run",
        "--json",
    ];
    let spilled = |output: &Output| {
        json(output)["days"][0]["spilledBytes"]
            .as_u64()
            .unwrap_or(0)
    };
    let spill_dir = tempfile::tempdir().unwrap();
    let spill_dir = spill_dir.path().to_str().unwrap();
    let limited = [("TELEMETRY_MEMORY_LIMIT", "1MiB"), ("TMPDIR", spill_dir)];
    assert!(
        spilled(&veris(dir, &limited, &day)) > 0,
        "the limit from the environment"
    );
    let unlimited = veris(
        dir,
        &limited,
        &[&day[..], &["--memory-limit", "1GiB"]].concat(),
    );
    assert_eq!(spilled(&unlimited), 0, "--memory-limit wins");
    let gone = "/nonexistent/veris-spill";
    let failed = veris(
        dir,
        &[("TELEMETRY_MEMORY_LIMIT", "1MiB"), ("TMPDIR", gone)],
        &day,
    );
    assert_eq!(failed.status.code(), Some(1), "a failed day");
    let failed: Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(failed["days"][0]["status"], "failed");
    let error = failed["days"][0]["error"].as_str().unwrap();
    assert!(error.contains(gone), "the spill went to TMPDIR: {error}");
    let flagged = veris(
        dir,
        &[("TELEMETRY_MEMORY_LIMIT", "1MiB"), ("TMPDIR", gone)],
        &[&day[..], &["--spill-dir", spill_dir]].concat(),
    );
    assert!(spilled(&flagged) > 0, "--spill-dir wins over TMPDIR");
}

/// The `browser` values the report keeps for `page_view` in its first period.
fn browsers_of_page_views(report: &Value) -> Value {
    let events = report["periods"][0]["events"].as_array().unwrap();
    let page_views = events.iter().find(|e| e["event"] == "page_view").unwrap();
    page_views["meta"]["browser"]["values"].clone()
}

#[tokio::test]
async fn serve_reads_bind_and_the_range_cap_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    assert!(veris(&dir, &[], &["migrate"]).status.success());
    let bind = format!("127.0.0.1:{}", crate::common::free_port());
    let (mut server, base) = serve(
        &dir,
        &[("BIND", bind.as_str()), ("TELEMETRY_MAX_RANGE_DAYS", "2")],
        &[],
        &bind,
    )
    .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // A dry run over `start..=end`: its status and body.
    let dry_run = async |base: &str, start: &str, end: &str| {
        let answer = client
            .get(format!(
                "{base}/api/jobs/telemetry-daily?startDate={start}&endDate={end}&dryRun=true"
            ))
            .bearer_auth(crate::http::SECRET)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        (status, body)
    };
    let (status, body) = dry_run(&base, "2024-01-01", "2024-01-03").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "range_too_long");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{body}"
    );
    server.kill().await.unwrap();

    // Without the variable, the cap is the default 366 days.
    let bind = format!("127.0.0.1:{}", crate::common::free_port());
    let (mut server, base) = serve(&dir, &[], &["--bind", &bind], &bind).await;
    let (status, body) = dry_run(&base, "2023-01-01", "2024-01-02").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 366"),
        "{body}"
    );
    server.kill().await.unwrap();
}

/// `veris-jobs serve ARGS` in `dir` with `env`, CRON_SECRET and none of the job's
/// other variables; waits until it answers at `bind` (it must, or the test fails).
async fn serve(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    bind: &str,
) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
    for var in VARIABLES {
        command.env_remove(var);
    }
    let server = command
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("CRON_SECRET", crate::http::SECRET)
        .arg("serve")
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{bind}");
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            return (server, base);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve does not answer at {bind}");
}

/// Without `--lock-timeout` a run waits for a day another run holds (the default is
/// 60 s, as `--help` says): still waiting when a run with a timeout of one second,
/// launched after it, has given up; and going ahead once the day is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waits_for_a_held_day_by_default() {
    let db = crate::common::TestDb::new(crate::common::Kind::Sqlite)
        .await
        .unwrap();
    let help = veris(Path::new("."), &[], &["telemetry-daily", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 60s]"), "{help}");
    let day = "2024-06-01";
    let held = db
        .store
        .lock_days(&[day.parse().unwrap()], Duration::ZERO)
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .args(["telemetry-daily", "--date", day])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A run launched after it with a timeout of one second gives up first, so the
    // first has waited longer than that (by the order of events, not a guess).
    let url = db.url.clone();
    let short = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .env("DATABASE_URL", &url)
            .env_remove("RUST_LOG")
            .args(["telemetry-daily", "--date", day, "--lock-timeout", "1s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_ne!(short.status.code(), Some(0), "the one-second run gave up");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting for the day"
    );
    held.release().await;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}
