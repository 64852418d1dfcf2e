//! Bounded memory: a day past the memory limit spills to disk and writes the rows a
//! day in memory writes, byte for byte; a spill that fails fails its day.

use std::time::Instant;

use veris_jobs::store::NewEvent;
use veris_jobs::telemetry_daily::RunOptions;

use crate::common::{Kind, StoredRow, TestDb, range_options};

#[path = "../../benches/telemetry_daily/generator.rs"]
#[allow(dead_code)]
mod generator;

crate::on_both_databases!(
    a_day_of_distinct_users_and_values_spills_and_writes_the_same_rows,
    the_usual_1m_day_at_16mib_writes_the_rows_of_an_unlimited_run,
);

/// The rows as stored, without `updated_at`.
fn contents(rows: Vec<StoredRow>) -> Vec<(String, String, i64, i64, String)> {
    rows.into_iter()
        .map(|(date, event, count, users, meta, _)| (date, event, count, users, meta))
        .collect()
}

fn limited(day: &str, bytes: usize, dir: &tempfile::TempDir) -> RunOptions {
    RunOptions {
        memory_limit: bytes,
        spill_dir: Some(dir.path().to_owned()),
        ..range_options(day, day)
    }
}

fn unlimited(day: &str) -> RunOptions {
    RunOptions {
        memory_limit: usize::MAX,
        ..range_options(day, day)
    }
}

/// Spills, then checks the rows against an unlimited run's and that the spill
/// directory is left empty.
async fn compare_with_unlimited(db: &TestDb, day: &str, bytes: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let spilled = db.run(&limited(day, bytes, &dir)).await;
    eprintln!(
        "{:?}: the limited run took {:?}",
        db.kind,
        started.elapsed()
    );
    assert!(spilled.ok, "{spilled:?}");
    let spilled_bytes = spilled.days[0].spilled_bytes;
    assert!(spilled_bytes > 0, "the day spilled: {spilled:?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no spill file is left behind"
    );
    let with_limit = contents(db.rollups().await);

    db.execute("DELETE FROM telemetry_daily").await;
    let whole = db.run(&unlimited(day)).await;
    assert_eq!(whole.days[0].spilled_bytes, 0);
    assert_eq!(contents(db.rollups().await), with_limit, "byte for byte");
    assert_eq!(
        (whole.totals.events_read, whole.totals.events_skipped),
        (spilled.totals.events_read, spilled.totals.events_skipped)
    );
    spilled_bytes
}

async fn a_day_of_distinct_users_and_values_spills_and_writes_the_same_rows(db: TestDb) {
    // Every event from another device, with a trace id of its own and one of 150
    // keys, in 71 groups (past the 64 whose users are tracked by bits): the users,
    // the values and the keys all outgrow a 1 MiB limit.
    let events: Vec<NewEvent> = (0..40_000)
        .map(|i| NewEvent {
            event: Some(format!("e{}", i % 71)),
            user_id: (i % 10 != 0).then(|| format!("device-{i:08}")),
            created_at: format!("2024-05-02T{:02}:{:02}:00Z", i % 24, i % 60)
                .parse()
                .unwrap(),
            meta: Some(format!(
                r#"{{"trace":"{i:016x}","k{}":"v{}","plan":"p{}","n":{i}.5}}"#,
                i % 150,
                i % 7,
                i % 3
            )),
        })
        .collect();
    db.insert(&events).await;
    let spilled = compare_with_unlimited(&db, "2024-05-02", 1 << 20).await;
    assert!(spilled > 1_000_000, "{spilled} bytes spilled");
    let rows = contents(db.rollups().await);
    assert_eq!(rows.len(), 71);
    assert!(rows[0].4.contains("$dropped_keys"), "{}", rows[0].4);
}

async fn the_usual_1m_day_at_16mib_writes_the_rows_of_an_unlimited_run(db: TestDb) {
    let date: jiff::civil::Date = "2024-03-12".parse().unwrap();
    let mut events = Vec::with_capacity(1_000_000);
    generator::Generator::with_shape(generator::Shape::Usual).day(date, 1_000_000, |row| {
        events.push(NewEvent {
            event: Some(row.event.to_owned()),
            user_id: row.user_id.map(str::to_owned),
            created_at: row.created_at,
            meta: Some(row.meta.to_owned()),
        })
    });
    db.insert(&events).await;
    drop(events);
    if db.kind == Kind::Postgres {
        db.execute("ANALYZE telemetry_events").await;
    }
    compare_with_unlimited(&db, "2024-03-12", 16 << 20).await;
}

/// Events whose users and trace ids are all different, on `day`.
fn distinct_events(day: &str, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event: Some(format!("e{}", i % 5)),
            user_id: Some(format!("device-{i:08}")),
            created_at: format!("{day}T12:00:00Z").parse().unwrap(),
            meta: Some(format!(r#"{{"trace":"{i:016x}"}}"#)),
        })
        .collect()
}

#[tokio::test]
async fn a_spill_that_fails_fails_its_day_and_writes_nothing_of_it() {
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    db.insert(&distinct_events("2024-05-01", 2_000)).await;
    db.insert(&distinct_events("2024-05-02", 200_000)).await;
    let dir = tempfile::tempdir().unwrap();
    // A small file-size limit on the process (a disk that fills up): the second
    // day's spill files cannot grow past it. SIGXFSZ is ignored so that the write
    // fails with EFBIG rather than killing the process.
    let command = format!(
        "trap '' XFSZ; ulimit -f 128; exec {} telemetry-daily --start-date 2024-05-01 \
         --end-date 2024-05-02 --memory-limit 1MiB --spill-dir {} --json",
        env!("CARGO_BIN_EXE_veris-jobs"),
        dir.path().display()
    );
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        crate::cli::stderr(&output)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let days = report["days"].as_array().unwrap();
    assert_eq!(days[0]["status"], "written", "the first day fits in memory");
    assert_eq!(days[1]["status"], "failed");
    let error = days[1]["error"].as_str().unwrap();
    assert!(
        error.contains("spilling the aggregation to") && error.contains("File too large"),
        "{error}"
    );
    assert!(error.contains("nothing of the day was written"), "{error}");
    let dates: Vec<String> = db.rollups().await.into_iter().map(|r| r.0).collect();
    assert!(dates.iter().all(|d| d == "2024-05-01"), "{dates:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
