//! Input a careless or hostile writer of raw events can produce: `created_at` text in
//! SQLite's own form or in none at all, NUL characters and invalid UTF-8, huge values.
//! None of it may fail a day or land in a wrong one.

use veris_jobs::store::Database;

use serde_json::Value;

use crate::common::{Kind, TestDb, event, range_options};

/// Inserts raw SQLite rows `(event, user_id, created_at, meta)` as they are.
async fn insert_sqlite_rows(db: &TestDb, rows: &[(&str, Option<&str>, &str, Option<&str>)]) {
    let Database::Sqlite(sqlite) = db.store.database() else {
        panic!("a SQLite database");
    };
    for (event, user, at, meta) in rows {
        sqlx::query(
            "INSERT INTO telemetry_events (event, user_id, created_at, meta) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(event)
        .bind(user)
        .bind(at)
        .bind(meta)
        .execute(sqlite.pool())
        .await
        .expect("insert a raw row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_timestamps_in_every_allowed_form_land_in_their_day() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    insert_sqlite_rows(
        &db,
        &[
            // SQLite's own form, what CURRENT_TIMESTAMP writes: UTC.
            ("e", Some("a"), "2024-03-10 05:00:00", None),
            ("e", Some("b"), "2024-03-10 23:59:59.999", None),
            // RFC 3339 with offsets: 2024-03-09T20:00Z and 2024-03-10T03:00Z.
            ("e", Some("c"), "2024-03-10T01:00:00+05:00", None),
            ("e", Some("d"), "2024-03-09T22:00:00-05:00", None),
            // The UTC form, and the same without a zone.
            ("e", Some("e"), "2024-03-10T12:00:00.000Z", None),
            ("e", Some("f"), "2024-03-10T12:00:00", None),
            // Text that is no instant, met by the day whose UTC range it sorts in.
            ("e", Some("g"), "2024-03-10Tjunk", None),
            ("e", Some("h"), "2024-03-09T99:00:00Z", None),
        ],
    )
    .await;
    let report = db.run(&range_options("2024-03-09", "2024-03-11")).await;
    assert!(report.ok, "{report:?}");
    let by_day: Vec<(u64, Option<u64>)> = report
        .days
        .iter()
        .map(|d| (d.events_read, d.skipped.get("invalid_created_at").copied()))
        .collect();
    // 03-09: c, and "…T99:00:00Z"; 03-10: a, b, d, e, f, and "…Tjunk".
    assert_eq!(by_day, [(2, Some(1)), (6, Some(1)), (0, None)]);
    let rows = db.rollups().await;
    let counts: Vec<(&str, i64, i64)> = rows.iter().map(|r| (r.0.as_str(), r.2, r.3)).collect();
    assert_eq!(counts, [("2024-03-09", 1, 1), ("2024-03-10", 5, 5)]);

    // Cut in New York (EST until 07:00Z on 03-10): 2024-03-10 05:00Z is midnight there.
    let options = veris_jobs::telemetry_daily::RunOptions {
        timezone: jiff::tz::TimeZone::get("America/New_York").unwrap(),
        dry_run: true,
        ..range_options("2024-03-09", "2024-03-10")
    };
    let report = db.run(&options).await;
    let read: Vec<u64> = report
        .days
        .iter()
        .map(|d| d.events_read - d.skipped.get("invalid_created_at").copied().unwrap_or(0))
        .collect();
    // 03-09 (EST): c (15:00), d (22:00); 03-10: a (00:00), b (19:59 EDT), e, f (08:00 EDT).
    assert_eq!(read, [2, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_in_other_forms_are_read_through_their_partial_index() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    let Database::Sqlite(sqlite) = db.store.database() else {
        panic!("a SQLite database");
    };
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT event FROM telemetry_events \
         WHERE created_at >= '2024-03-09' AND created_at < '2024-03-13' \
         AND substr(created_at, -1) <> 'Z'",
    )
    .fetch_all(sqlite.pool())
    .await
    .expect("a query plan");
    let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
    let plan = plan.join("; ");
    assert!(
        plan.contains("telemetry_events_created_at_zoned_idx"),
        "the band's query plan: {plan}"
    );
}

crate::on_both_databases!(
    a_nul_character_in_a_name_or_a_value_fails_no_day_and_reads_alike_everywhere,
    values_over_1024_bytes_are_counted_but_never_kept,
);

async fn a_nul_character_in_a_name_or_a_value_fails_no_day_and_reads_alike_everywhere(db: TestDb) {
    let meta = r#"{"k":"v\u0000w","\u0000key":1}"#;
    if db.kind == Kind::Sqlite {
        // Only SQLite's text holds a raw NUL.
        db.insert(&[
            event("json_nul", Some("u"), "2024-04-01T10:00:00Z", Some(meta)),
            event("nul\0name", Some("u"), "2024-04-01T10:00:00Z", None),
        ])
        .await;
    } else {
        // A `json` column keeps the escape as written, where `jsonb` refuses it.
        db.execute(
            "ALTER TABLE telemetry_events ALTER COLUMN meta TYPE json USING meta::text::json",
        )
        .await;
        db.execute(&format!(
            "INSERT INTO telemetry_events (event, user_id, created_at, meta) \
             VALUES ('json_nul', 'u', '2024-04-01T10:00:00Z', '{meta}')"
        ))
        .await;
    }
    let report = db.run(&range_options("2024-04-01", "2024-04-01")).await;
    assert!(report.ok, "{report:?}");
    let rows = db.rollups().await;
    let json_nul = rows.iter().find(|r| r.1 == "json_nul").expect("the row");
    let meta: Value = serde_json::from_str(&json_nul.4).unwrap();
    assert_eq!(
        meta,
        serde_json::json!({
            "k": {"n": 1, "values": {"v\u{FFFD}w": 1}, "other": 0},
            "\u{FFFD}key": {"n": 1, "sum": 1, "min": 1, "max": 1, "p50": 1, "p90": 1, "p99": 1},
        })
    );
    if db.kind == Kind::Sqlite {
        assert!(rows.iter().any(|r| r.1 == "nul\u{FFFD}name"), "{rows:?}");
    }
}

async fn values_over_1024_bytes_are_counted_but_never_kept(db: TestDb) {
    let longest_kept = "k".repeat(1024);
    let too_long = |c: &str| c.repeat(1025);
    let nested_too_long = format!(r#"{{"v":{{"a":"{}"}}}}"#, "n".repeat(1020));
    let metas = [
        format!(r#"{{"v":"{longest_kept}"}}"#),
        format!(r#"{{"v":"{}"}}"#, too_long("a")),
        format!(r#"{{"v":"{}"}}"#, too_long("b")),
        nested_too_long,
        r#"{"v":"short"}"#.to_owned(),
    ];
    let events: Vec<_> = metas
        .iter()
        .map(|meta| event("e", Some("u"), "2024-04-02T10:00:00Z", Some(meta)))
        .collect();
    db.insert(&events).await;
    let report = db.run(&range_options("2024-04-02", "2024-04-02")).await;
    assert!(report.ok, "{report:?}");
    let rows = db.rollups().await;
    let meta: Value = serde_json::from_str(&rows[0].4).unwrap();
    let mut values = serde_json::Map::new();
    values.insert(longest_kept, 1.into());
    values.insert("short".into(), 1.into());
    assert_eq!(
        meta,
        serde_json::json!({"v": {"n": 5, "values": values, "other": 3}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_user_ids_that_are_not_utf8_count_by_their_bytes() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    db.execute(
        "INSERT INTO telemetry_events (event, user_id, created_at) VALUES \
         ('e', CAST(X'61ff' AS TEXT), '2024-04-03T10:00:00Z'), \
         ('e', CAST(X'61fe' AS TEXT), '2024-04-03T10:00:00Z'), \
         ('e', CAST(X'61fe' AS TEXT), '2024-04-03T11:00:00Z'), \
         ('e', 'a' || char(65533), '2024-04-03T10:00:00Z'), \
         ('e', CAST(X'6100' AS TEXT), '2024-04-03T10:00:00Z'), \
         (CAST(X'62ff' AS TEXT), 'u', '2024-04-03T10:00:00Z')",
    )
    .await;
    let report = db.run(&range_options("2024-04-03", "2024-04-03")).await;
    assert!(report.ok, "{report:?}");
    let rows = db.rollups().await;
    let found: Vec<(&str, i64, i64)> = rows.iter().map(|r| (r.1.as_str(), r.2, r.3)).collect();
    // a\xff, a\xfe, a U+FFFD and a NUL are four users; the name is read leniently.
    assert_eq!(found, [("b\u{FFFD}", 1, 1), ("e", 5, 4)]);
}

/// The peak resident memory (`VmHWM`) of the running process `pid`, in bytes.
fn peak_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_value_costs_about_its_row_not_a_copy_per_table() {
    let db = TestDb::new(Kind::Sqlite).await.expect("sqlite");
    // A 50 MB string value, and a few ordinary events.
    db.execute(
        "INSERT INTO telemetry_events (event, user_id, created_at, meta) VALUES \
         ('e', 'u', '2024-04-05T10:00:00Z', '{\"k\":\"' || hex(randomblob(25000000)) || '\"}')",
    )
    .await;
    db.insert(&[event(
        "e",
        Some("v"),
        "2024-04-05T11:00:00Z",
        Some(r#"{"k":"small"}"#),
    )])
    .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", &db.url)
        .args([
            "telemetry-daily",
            "--date",
            "2024-04-05",
            "--memory-limit",
            "16MiB",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_memory(pid).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["days"][0]["rows"], 1);
    // The limit, the row as SQLite and the batch hold it (50 MB each, a few times),
    // and the process itself: nowhere near one more copy per table that kept it.
    let allowance: u64 = 16 * 1024 * 1024 + 4 * 50_000_000 + 64 * 1024 * 1024;
    eprintln!("peak {peak} bytes");
    assert!(peak > 0, "the peak was read");
    assert!(peak < allowance, "peak {peak} bytes, allowance {allowance}");
    let rows = db.rollups().await;
    let meta: Value = serde_json::from_str(&rows[0].4).unwrap();
    assert_eq!(meta["k"]["other"], 1, "{meta}");
}
