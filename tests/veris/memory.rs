//! Bounded memory: a day past the memory limit spills to disk and writes the rows a
//! day in memory writes, byte for byte; a spill that fails fails its day.

use std::time::Instant;

use veris_jobs::model::RollupRow;
use veris_jobs::model::hll::Sketch;
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

/// Every column of `day`'s rows but `updated_at` (the summary as stored, the users'
/// sketch, the numbers' sketches, `partial`), by event.
async fn every_column(db: &TestDb, day: &str) -> Vec<RollupRow> {
    let mut rows = db.store.load_day(day.parse().unwrap()).await.unwrap();
    rows.sort_by(|a, b| a.event.cmp(&b.event));
    rows
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
    let with_limit = every_column(db, day).await;

    db.execute("DELETE FROM telemetry_daily").await;
    let whole = db.run(&unlimited(day)).await;
    assert_eq!(whole.days[0].spilled_bytes, 0);
    assert_eq!(every_column(db, day).await, with_limit, "byte for byte");
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
    // Counts, users and their sketch from the events alone: name k holds the events
    // i = k mod 71, each from a device of its own but every tenth, anonymous.
    for row in every_column(&db, "2024-05-02").await {
        let k: usize = row.event[1..].parse().unwrap();
        let users: Vec<String> = (k..40_000)
            .step_by(71)
            .filter(|i| i % 10 != 0)
            .map(|i| format!("device-{i:08}"))
            .collect();
        assert_eq!(row.count, (k..40_000).step_by(71).count() as i64);
        assert_eq!(row.unique_users, users.len() as i64);
        let mut sketch = Sketch::new();
        users.iter().for_each(|u| sketch.add_user(u));
        assert_eq!(row.users_hll, Some(sketch.to_bytes()), "{}", row.event);
    }
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

/// Runs the binary's `telemetry-daily` over `day` at `limit` (none when `None`)
/// and returns its peak resident memory in bytes: `VmHWM` of `/proc/PID/status`, a
/// high-water mark of the process's own image, read until it exits. (`wait4`'s
/// `ru_maxrss` would count the test process it was spawned from.)
fn peak_memory(url: &str, day: &str, limit: Option<&str>, spill_dir: &std::path::Path) -> u64 {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .args(["telemetry-daily", "--date", day, "--force", "--json"])
        .arg("--spill-dir")
        .arg(spill_dir)
        .args(["--memory-limit", limit.unwrap_or("64GiB")])
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        // Read before asking whether it ended: the last reading is of a live process.
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return peak_kib * 1024;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A distinct-users day (every event its own device and trace id) run by the real
/// binary: at `--memory-limit 8MiB` its peak resident memory stays within the
/// memory of the same binary over an empty day plus twice the limit (the limit, and
/// as much again for the reader's buffers, the allocator's slack and the spill's
/// write buffers), where the run without a limit takes well over that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_s_peak_memory_stays_within_the_limit_and_its_allowance() {
    const LIMIT: u64 = 8 << 20;
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    db.insert(&distinct_events("2024-05-02", 150_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.clone();
    let (empty, limited, unlimited) = tokio::task::spawn_blocking(move || {
        (
            peak_memory(&url, "2024-05-01", Some("8MiB"), dir.path()),
            peak_memory(&url, "2024-05-02", Some("8MiB"), dir.path()),
            peak_memory(&url, "2024-05-02", None, dir.path()),
        )
    })
    .await
    .unwrap();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "peak memory: empty day {:.1} MiB, limited {:.1} MiB, unlimited {:.1} MiB",
        mib(empty),
        mib(limited),
        mib(unlimited)
    );
    let allowance = empty + 2 * LIMIT;
    assert!(
        limited <= allowance,
        "at 8 MiB the run peaked at {:.1} MiB, over {:.1} MiB",
        mib(limited),
        mib(allowance)
    );
    assert!(
        unlimited > allowance + LIMIT / 2,
        "without a limit the day needs more ({:.1} MiB): the test can fail",
        mib(unlimited)
    );
}

/// Spill files are unlinked as soon as they are made: while a run spills, its open
/// files in the spill directory have no name there, so `kill -9` leaves nothing
/// behind (the kernel frees them with the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_it_spills_leaves_no_spill_file() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    db.insert(&distinct_events("2024-05-02", 300_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .args([
            "telemetry-daily",
            "--date",
            "2024-05-02",
            "--memory-limit",
            "1MiB",
        ])
        .arg("--spill-dir")
        .arg(dir.path())
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let spill_dir = dir.path().canonicalize().unwrap();
    // The run's open files under the spill directory, and the bytes they hold.
    let spill_files = |pid: u32| -> Vec<(String, u64)> {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        fds.flatten()
            .filter_map(|fd| {
                let target = std::fs::read_link(fd.path()).ok()?;
                let target = target.to_string_lossy().into_owned();
                let size = std::fs::metadata(fd.path()).ok()?.len();
                target
                    .starts_with(&*spill_dir.to_string_lossy())
                    .then_some((target, size))
            })
            .collect()
    };
    let mut seen = Vec::new();
    for _ in 0..6_000 {
        seen = spill_files(child.id());
        if seen.iter().map(|(_, size)| size).sum::<u64>() > 1 << 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it spilled"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!seen.is_empty(), "the run spilled");
    assert!(
        seen.iter()
            .all(|(target, _)| target.ends_with(" (deleted)")),
        "open spill files have no name: {seen:?}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing outlives the process in the spill directory"
    );
}
