//! The built binary: exit statuses, messages on stderr, and the `--json` report.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Kind, TestDb, event};

crate::on_both_databases!(
    a_failed_day_is_reported_and_exits_1,
    demo_runs_on_an_empty_database_and_starts_afresh_when_run_again,
    demo_refuses_a_source_holding_events_it_did_not_write,
    bad_usage_exits_2_with_one_line_naming_the_problem,
);

/// Runs `veris-jobs ARGS` against `database_url`, with none of the job's
/// environment variables inherited from the shell.
pub fn veris(database_url: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
    for var in [
        "TELEMETRY_TIMEZONE",
        "TELEMETRY_SOURCE_TABLE",
        "TELEMETRY_META_TOP_K",
        "TELEMETRY_LOOKBACK_DAYS",
        "LOG_FORMAT",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
        .env("DATABASE_URL", database_url)
        .args(args)
        .output()
        .expect("run veris-jobs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn demo_runs_on_an_empty_database_and_starts_afresh_when_run_again(db: TestDb) {
    let url = db.url.clone();
    let first = veris(&url, &["demo"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("sample events"), "{text}");
    assert!(text.contains("written"), "{text}");
    for name in ["page_view", "click", "purchase"] {
        assert!(text.contains(name), "the glimpse shows {name}: {text}");
    }
    assert!(
        text.contains("missing_event"),
        "malformed events are reported: {text}"
    );

    let second = veris(&url, &["demo"]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let totals = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("total"))
            .map(str::to_owned)
    };
    assert_eq!(
        totals(&stdout(&second)).map(|l| l.split_whitespace().nth(2).map(str::to_owned)),
        totals(&text).map(|l| l.split_whitespace().nth(2).map(str::to_owned)),
        "the second demo reads the same number of events, not twice as many"
    );
}

async fn demo_refuses_a_source_holding_events_it_did_not_write(db: TestDb) {
    db.insert(&[event("real", Some("u"), "2024-01-01T00:00:00Z", None)])
        .await;
    let output = veris(&db.url, &["demo"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("1 events that demo did not write"),
        "{message}"
    );
    assert!(db.rollups().await.is_empty(), "nothing was written");
}

#[tokio::test]
async fn telemetry_daily_prints_the_contract_json_report() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let Some(db) = TestDb::new(kind).await else {
            continue;
        };
        db.insert(&[
            event(
                "view",
                Some("a"),
                "2024-01-01T10:00:00Z",
                Some(r#"{"plan":"pro"}"#),
            ),
            event("view", Some("b"), "2024-01-02T10:00:00Z", Some("[1]")),
        ])
        .await;
        let output = veris(
            &db.url,
            &[
                "telemetry-daily",
                "--start-date",
                "2024-01-01",
                "--end-date",
                "2024-01-02",
                "--json",
            ],
        );
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
        assert_eq!(report["job"], "telemetry-daily");
        assert_eq!(report["dryRun"], false);
        assert_eq!(report["ok"], true);
        assert_eq!(report["startDate"], "2024-01-01");
        assert_eq!(report["endDate"], "2024-01-02");
        assert_eq!(report["timezone"], "UTC");
        assert_eq!(report["days"][0]["status"], "written");
        assert_eq!(report["days"][0]["inserted"], 1);
        assert_eq!(report["days"][1]["skipped"]["non_object_meta"], 1);
        assert_eq!(report["days"][1]["eventsSkipped"], 1);
        assert!(report["days"][0]["error"].is_null());
        assert_eq!(report["totals"]["eventsRead"], 2);
        assert_eq!(report["totals"]["rows"], 2);
        assert!(report["durationMs"].is_u64());
        // Every name the contract gives, and no other.
        let keys = |value: &Value| -> Vec<String> {
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&report),
            [
                "days",
                "dryRun",
                "durationMs",
                "endDate",
                "job",
                "ok",
                "startDate",
                "timezone",
                "totals"
            ]
        );
        assert_eq!(
            keys(&report["days"][0]),
            [
                "date",
                "deleted",
                "durationMs",
                "error",
                "eventsRead",
                "eventsSkipped",
                "hours",
                "inserted",
                "rows",
                "skipped",
                "status",
                "unchanged",
                "updated"
            ]
        );
        assert_eq!(
            keys(&report["days"][0]["hours"]),
            ["deleted", "inserted", "unchanged", "updated"]
        );
        assert_eq!(
            keys(&report["totals"]),
            [
                "deleted",
                "eventsRead",
                "eventsSkipped",
                "hours",
                "inserted",
                "rows",
                "unchanged",
                "updated"
            ]
        );
        for name in ["updated", "deleted", "unchanged"] {
            assert_eq!(report["totals"][name], 0, "totals.{name}");
        }
        assert!(report["days"][1]["durationMs"].is_u64());
    }
}

#[tokio::test]
async fn the_readable_table_and_dry_run_write_nothing() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    db.insert(&[event("view", None, "2024-01-01T10:00:00Z", None)])
        .await;
    let output = veris(
        &db.url,
        &["telemetry-daily", "--date", "2024-01-01", "--dry-run"],
    );
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.contains("dry run: nothing written"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("2024-01-01") && l.contains("dry_run")),
        "{text}"
    );
    assert!(db.rollups().await.is_empty());
}

async fn bad_usage_exits_2_with_one_line_naming_the_problem(db: TestDb) {
    let cases: &[(&[&str], &str)] = &[
        (
            &["telemetry-daily", "--end-date", "2024-01-02"],
            "--end-date needs --start-date",
        ),
        (
            &[
                "telemetry-daily",
                "--start-date",
                "2024-01-05",
                "--end-date",
                "2024-01-01",
            ],
            "before the start date",
        ),
        (&["telemetry-daily", "--date", "2024-13-01"], "--date"),
        (&["telemetry-daily", "--date", "yesterday"], "YYYY-MM-DD"),
        (
            &["telemetry-daily", "--timezone", "Mars/Olympus"],
            "--timezone",
        ),
        (
            &[
                "telemetry-daily",
                "--source-table",
                "events; DROP TABLE telemetry_daily",
            ],
            "--source-table",
        ),
        (
            &["telemetry-daily", "--source-table", "ev\"ents"],
            "--source-table",
        ),
        (
            &["telemetry-daily", "--source-table", "events--"],
            "--source-table",
        ),
        (&["telemetry-daily", "--meta-top-k", "lots"], "--meta-top-k"),
        (
            &["telemetry-daily", "--lock-timeout", "soon"],
            "--lock-timeout",
        ),
        (
            &["telemetry-daily", "--lookback-days", "0"],
            "--lookback-days",
        ),
        (
            &[
                "telemetry-daily",
                "--date",
                "2024-01-01",
                "--start-date",
                "2024-01-01",
            ],
            "--date",
        ),
        (&["telemetry-daily", "--no-such-flag"], "--no-such-flag"),
        (&["no-such-command"], "no-such-command"),
    ];
    for (args, expected) in cases {
        let output = veris(&db.url, args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert_eq!(message.trim_end().lines().count(), 1, "{args:?}: {message}");
        assert!(message.contains(expected), "{args:?}: {message}");
    }
    let bad_url = veris("mysql://localhost/x", &["migrate"]);
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(
        stderr(&bad_url).contains("DATABASE_URL"),
        "{}",
        stderr(&bad_url)
    );
    assert!(db.rollups().await.is_empty());
}

async fn a_failed_day_is_reported_and_exits_1(db: TestDb) {
    let output = veris(
        &db.url,
        &[
            "telemetry-daily",
            "--date",
            "2024-01-01",
            "--source-table",
            "missing_table",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["days"][0]["status"], "failed");
    assert!(
        report["days"][0]["error"]
            .as_str()
            .unwrap()
            .contains("missing_table"),
        "{report}"
    );
}

#[tokio::test]
async fn a_day_held_by_another_run_fails_after_the_lock_timeout() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let Some(db) = TestDb::new(kind).await else {
            continue;
        };
        let day: jiff::civil::Date = "2024-01-01".parse().unwrap();
        let locks = db.store.lock_days(&[day], Duration::ZERO).await.unwrap();
        let started = std::time::Instant::now();
        let output = veris(
            &db.url,
            &[
                "telemetry-daily",
                "--date",
                "2024-01-01",
                "--lock-timeout",
                "300ms",
            ],
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(output.status.code(), Some(1), "{kind:?}");
        let message = stderr(&output);
        assert!(
            message.contains("day 2024-01-01 is held by another run"),
            "{message}"
        );
        locks.release().await;
        let output = veris(&db.url, &["telemetry-daily", "--date", "2024-01-01"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
}

#[tokio::test]
async fn migrate_creates_the_tables_and_can_be_repeated_on_sqlite() {
    migrate_creates_the_tables_and_can_be_repeated(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn migrate_creates_the_tables_and_can_be_repeated_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        migrate_creates_the_tables_and_can_be_repeated(db).await;
    }
}

/// On a database nothing has migrated yet.
async fn migrate_creates_the_tables_and_can_be_repeated(db: TestDb) {
    for _ in 0..2 {
        let output = veris(&db.url, &["migrate"]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert!(stdout(&output).contains("telemetry_daily"));
    }
    // Columns in order; the columns of the source's indexes; the rollup's key.
    let (columns, indexed, key): (&str, &str, &str) = match db.kind {
        Kind::Postgres => (
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'telemetry_events'::regclass AND NOT i.indisprimary",
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'telemetry_daily'::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey, a.attnum)",
        ),
        Kind::Sqlite => (
            "SELECT name FROM pragma_table_info($1) ORDER BY cid",
            "SELECT i.name FROM sqlite_master m, pragma_index_info(m.name) i \
             WHERE m.type = 'index' AND m.tbl_name = 'telemetry_events'",
            "SELECT name FROM pragma_table_info('telemetry_daily') WHERE pk > 0 ORDER BY pk",
        ),
    };
    assert_eq!(
        db.strings(columns, Some("telemetry_events")).await,
        ["id", "event", "user_id", "created_at", "meta"]
    );
    assert_eq!(
        db.strings(columns, Some("telemetry_daily")).await,
        [
            "date",
            "event",
            "count",
            "unique_users",
            "meta",
            "updated_at",
            "users_hll",
            "partial",
            "meta_sketches"
        ]
    );
    let job_runs = db.strings(columns, Some("job_runs")).await;
    for column in [
        "id",
        "job",
        "trigger",
        "started_at",
        "finished_at",
        "status",
        "source_watermark",
    ] {
        assert!(job_runs.iter().any(|c| c == column), "job_runs.{column}");
    }
    // SQLite has a second, partial index: of the rows whose created_at is not in the
    // UTC form.
    let expected: &[&str] = match db.kind {
        Kind::Postgres => &["created_at"],
        Kind::Sqlite => &["created_at", "created_at"],
    };
    assert_eq!(
        db.strings(indexed, None).await,
        expected,
        "the source's indexes"
    );
    assert_eq!(
        db.strings(key, None).await,
        ["date", "event"],
        "the rollup's key"
    );
}

#[tokio::test]
async fn commands_that_only_read_create_no_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let url = format!("sqlite://{}", path.display());
    for args in [
        &["telemetry-daily", "--date", "2024-01-15", "--dry-run"][..],
        &["report", "--date", "2024-01-15"],
        &["runs"],
    ] {
        let output = veris(&url, args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("there is no database at")
                && stderr(&output).contains("veris-jobs migrate"),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!path.exists(), "{args:?} created {}", path.display());
        let mut leftovers = std::fs::read_dir(dir.path()).unwrap();
        assert!(leftovers.next().is_none(), "{args:?} left files behind");
    }
    // A run that writes creates it, as before.
    let output = veris(&url, &["migrate"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = veris(
        &url,
        &["telemetry-daily", "--date", "2024-01-15", "--dry-run"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[tokio::test]
async fn bad_values_name_their_flag_and_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["telemetry-daily", "--meta-top-k", "-1"],
            &["--meta-top-k", "'-1'"],
        ),
        (
            &["telemetry-daily", "--meta-top-k", "0"],
            &["--meta-top-k", "0 would keep no value"],
        ),
        (&["report", "--meta-top-k", "0"], &["--meta-top-k"]),
        (
            &["telemetry-daily", "--lookback-days", "-5"],
            &["--lookback-days", "'-5'"],
        ),
        (
            &["--log-format", "xml", "runs"],
            &["--log-format", "[possible values: text, json]"],
        ),
    ];
    for (args, says) in cases {
        let output = veris(&url, args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
        for words in says {
            assert!(
                message.contains(words),
                "{args:?} should say {words}: {message}"
            );
        }
    }
    // A URL the PostgreSQL driver refuses is explained once.
    let output = veris(
        "postgres://postgres@127.0.0.1:5432/postgres?sslmode=bogus",
        &["runs"],
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains("unknown value \"bogus\""), "{message}");
    assert!(!message.contains("error with configuration"), "{message}");
}

#[tokio::test]
async fn a_database_never_migrated_says_to_run_migrate_and_none_is_made() {
    // SQLite: no file, and none is made.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let url = format!("sqlite://{}", path.display());
    let output = veris(&url, &["telemetry-daily", "--date", "2024-01-01"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("run `veris-jobs migrate` first"),
        "{}",
        stderr(&output)
    );
    assert!(!path.exists(), "no empty database is made");

    // PostgreSQL: a database without the tables.
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let output = veris(&db.url, &["telemetry-daily", "--date", "2024-01-01"]);
    assert_ne!(output.status.code(), Some(0));
    let message = stderr(&output);
    assert!(
        message.contains("run `veris-jobs migrate` first"),
        "{message}"
    );
    assert!(
        !message.contains("at line"),
        "PostgreSQL's source line leaked: {message}"
    );
}

#[tokio::test]
async fn healthz_answers_503_until_the_tables_exist() {
    let db = TestDb::sqlite().await;
    let server = crate::http::TestServer::spawn_app(&db.url, 366).await;
    let health = || async {
        let answer = server
            .client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    let (status, body) = health().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("veris-jobs migrate"), "{body}");
    db.store.migrate().await.unwrap();
    assert_eq!(health().await.0, 200);
    server.stop().await;
}

/// Runs the binary with `env` set and none of the job's variables inherited.
fn veris_with_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_veris-jobs"));
    for var in [
        "TELEMETRY_TIMEZONE",
        "DATABASE_URL",
        "LOG_FORMAT",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run veris-jobs")
}

#[test]
fn usage_errors_say_what_to_do_in_one_line() {
    let stderr = |output: &Output| {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    };
    // No command: the commands.
    let none = stderr(&veris_with_env(&[], &[]));
    for command in [
        "migrate",
        "telemetry-daily",
        "telemetry-purge",
        "runs",
        "serve",
        "demo",
        "report",
    ] {
        assert!(none.contains(command), "{none}");
    }
    // A misspelt flag: clap's tip.
    let tip = stderr(&veris_with_env(&[], &["telemetry-daily", "--dryrun"]));
    assert!(tip.contains("'--dry-run'"), "{tip}");
    // A value from the environment: its variable, not the flag.
    let env = stderr(&veris_with_env(
        &[("TELEMETRY_TIMEZONE", "Mars/X")],
        &["telemetry-daily"],
    ));
    assert!(
        env.contains("TELEMETRY_TIMEZONE") && !env.contains("'--timezone"),
        "{env}"
    );
    let flag = stderr(&veris_with_env(
        &[],
        &["telemetry-daily", "--timezone", "Mars/X"],
    ));
    assert!(flag.contains("'--timezone"), "{flag}");
    // A date of the right form that the calendar lacks.
    let day = stderr(&veris_with_env(
        &[],
        &["telemetry-daily", "--date", "2024-02-30"],
    ));
    assert!(day.contains("February 2024 has 29 days"), "{day}");
    // The demo's help does not offer what it ignores, and it prints JSON when asked.
    let help = veris_with_env(&[], &["demo", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.contains("--lookback-days") && help.contains("--json"),
        "{help}"
    );
    assert!(help.contains("Global options"), "{help}");
}

#[test]
fn the_demo_prints_its_run_report_as_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());
    let output = veris(&url, &["demo", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["job"], "telemetry-daily");
    assert_eq!(report["days"].as_array().unwrap().len(), 3);
    // A report of an event with no rows says so rather than printing zeros alone.
    let nosuch = veris(
        &url,
        &["report", "--event", "nosuch", "--event", "page_view"],
    );
    let text = stdout(&nosuch);
    assert!(nosuch.status.success(), "{nosuch:?}");
    assert!(text.contains("no rollup rows for nosuch from "), "{text}");
    assert!(!text.contains("page_view from"), "{text}");
    // The table shows each event's metadata: its top values, its numbers' sums.
    let table = stdout(&veris(
        &url,
        &["report", "--by", "range", "--event", "purchase"],
    ));
    assert!(table.contains("amount: sum "), "{table}");
    assert!(table.contains("coupon: false "), "{table}");
}
