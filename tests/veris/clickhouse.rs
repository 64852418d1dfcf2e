//! ClickHouse as the source: the same events loaded into a two-shard ClickHouse
//! cluster (Debian's 18.16, started by `tests/clickhouse/cluster.sh`) and into
//! PostgreSQL or SQLite roll up to the same bytes, sketches included.
//!
//! Without `clickhouse-server` these tests say so and pass, except under `CI=true`,
//! where they fail.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use veris_jobs::model::{DayStatus, RunReport};
use veris_jobs::store::{ClickHouseSource, Database, NewEvent, Store, TableName};
use veris_jobs::telemetry_daily::{self, RunOptions};

use crate::common::{Kind, TestDb, default_table, range_options};

/// The two servers, started once for the whole test binary and stopped by the
/// script's watchdog when the binary exits.
struct Cluster {
    http: [u16; 2],
}

/// The cluster, or `None` (with a line saying why) when ClickHouse is not installed
/// and this is not CI.
fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clickhouse/cluster.sh");
            let installed = Command::new("sh")
                .args([
                    "-c",
                    "command -v clickhouse-server || test -x /usr/bin/clickhouse-server",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if !installed {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true and clickhouse-server is not installed (.ci/run installs it)"
                );
                crate::common::skipping(
                    "the ClickHouse tests pass without running: clickhouse-server is not installed \
                     (apt-get install clickhouse-server), or set CI=true to make this a failure",
                );
                return None;
            }
            let dir = std::env::temp_dir().join(format!("veris-clickhouse-{}", std::process::id()));
            let ports = crate::common::free_ports::<6>();
            let status = Command::new(&script)
                .arg("start")
                .arg(&dir)
                .args(ports.iter().map(u16::to_string))
                .arg(std::process::id().to_string())
                .status()
                .expect("run tests/clickhouse/cluster.sh");
            assert!(status.success(), "the ClickHouse cluster did not start");
            Some(Cluster {
                http: [ports[0], ports[3]],
            })
        })
        .as_ref()
}

/// A database of the test's own on both servers: `telemetry_events_local` on each
/// and `telemetry_events`, a `Distributed` table over both, sharded by user.
struct ChDb {
    cluster: &'static Cluster,
    name: String,
    client: reqwest::Client,
}

impl ChDb {
    async fn new(cluster: &'static Cluster) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "veris_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let db = Self {
            cluster,
            name,
            client: reqwest::Client::new(),
        };
        for server in 0..2 {
            let n = &db.name;
            db.sql(server, &format!("CREATE DATABASE {n}")).await;
            db.sql(
                server,
                &format!(
                    "CREATE TABLE {n}.telemetry_events_local (event String, user_id Nullable(String), \
                     created_at DateTime('UTC'), meta String, id UInt64) \
                     ENGINE = MergeTree PARTITION BY toYYYYMMDD(created_at) ORDER BY (event, created_at, id)"
                ),
            )
            .await;
            db.sql(
                server,
                &format!(
                    "CREATE TABLE {n}.telemetry_events AS {n}.telemetry_events_local \
                     ENGINE = Distributed(veris_test_cluster, {n}, telemetry_events_local, \
                     cityHash64(ifNull(user_id, '')))"
                ),
            )
            .await;
        }
        db
    }

    /// One statement on one server; its answer.
    async fn sql(&self, server: usize, sql: &str) -> String {
        let response = self
            .client
            .post(format!(
                "http://127.0.0.1:{}/?insert_distributed_sync=1",
                self.cluster.http[server]
            ))
            .body(sql.to_owned())
            .send()
            .await
            .expect("ClickHouse answers");
        let status = response.status();
        let text = response.text().await.expect("an answer");
        assert!(status.is_success(), "{sql}: {status} {text}");
        text
    }

    /// The events, through the distributed table (synchronously, so that they are
    /// on their shards when this returns), with ids from `first_id`.
    async fn insert(&self, events: &[NewEvent], first_id: u64) {
        self.insert_into(0, "telemetry_events", events, first_id)
            .await;
    }

    /// The events into `table` on `server`.
    async fn insert_into(&self, server: usize, table: &str, events: &[NewEvent], first_id: u64) {
        for (chunk_at, chunk) in events.chunks(20_000).enumerate() {
            let mut body = format!(
                "INSERT INTO {}.{table} (event, user_id, created_at, meta, id) FORMAT TabSeparated\n",
                self.name
            );
            for (i, e) in chunk.iter().enumerate() {
                let id = first_id + (chunk_at * 20_000 + i) as u64;
                let user = e.user_id.as_deref().map_or("\\N".to_owned(), tsv);
                let _ = writeln!(
                    body,
                    "{}\t{user}\t{}\t{}\t{id}",
                    tsv(e.event.as_deref().unwrap_or("")),
                    e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    tsv(e.meta.as_deref().unwrap_or(""))
                );
            }
            self.sql(server, &body).await;
        }
    }

    fn url(&self) -> String {
        format!(
            "clickhouse://127.0.0.1:{}/{}",
            self.cluster.http[0], self.name
        )
    }

    fn source(&self) -> ClickHouseSource {
        ClickHouseSource::new(&self.url(), &default_table()).expect("a valid URL")
    }
}

/// A value for TabSeparated input.
fn tsv(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

/// Events meant to reach every path: a name with thousands of users (a sketch of
/// registers) and names with a few (explicit sketches) or none, names that are
/// missing or too long, and metadata of every kind: flat objects the cluster cuts
/// into pairs, and escapes, spaces, nesting, duplicate keys, commas and colons inside
/// strings, exponents, non-objects
/// and (when `invalid_json`) text that is not JSON, which the job reads whole.
/// With `features`, a third of the events are of that many more names.
fn events(seed: u64, count: usize, invalid_json: bool, features: u32) -> Vec<NewEvent> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let long_name = "x".repeat(1100);
    let names = [
        "page_view",
        "page_view",
        "page_view",
        "click",
        "purchase",
        "signup",
        "",
        "ünïcode event",
        "it's \\ here",
        long_name.as_str(),
    ];
    let mut metas: Vec<&str> = vec![
        r#"{"plan":"pro","n":12,"ok":true,"gone":null}"#,
        r#"{"plan":"free","amount":12.50,"ok":false}"#,
        r#"{"v":-0,"w":0.1,"x":-7}"#,
        r#"{"path":"/p/1"}"#,
        r#"{"path":"/p/2","plan":"team"}"#,
        r#"{}"#,
        r#"{ "plan" : "pro" }"#,
        r#"{"path":"/a\"b","e":"\u00e9"}"#,
        r#"{"city":"Zürich"}"#,
        r#"{"a":{"b":[1,2],"a":null},"plan":"free"}"#,
        r#"{"plan":"first","plan":"last"}"#,
        r#"{"tags":"a,b","at":"12:30","k:ey":1,"x,y":2}"#,
        r#"{"plan":"pro","n":12,"plan":"free"}"#,
        r#"{"big":1.5e10,"small":-2E-3}"#,
        r#"{"id":123456789012345678901}"#,
        r#"[1,2]"#,
        r#""hello""#,
        r#"null"#,
        r#"42"#,
    ];
    if invalid_json {
        metas.extend([
            r#"{"plan": }"#,
            "{broken",
            r#"{"a":1}x"#,
            "{\"tab\":\"a\tb\"}",
        ]);
    }
    let start = Timestamp::from_second(1_704_067_200).expect("2024-01-01"); // 2024-01-01T00:00:00Z
    (0..count)
        .map(|_| {
            let feature;
            let name = if features > 0 && rng.random_range(0..3) == 0 {
                feature = format!("feature-{}", rng.random_range(0..features));
                feature.as_str()
            } else {
                names[rng.random_range(0..names.len())]
            };
            let users = match name {
                "page_view" => 40_000,
                "click" => 300,
                _ => 40,
            };
            let user = match rng.random_range(0..10) {
                0 => None,
                1 if name != "signup" => Some(String::new()),
                _ if name == "signup" => None,
                _ => Some(format!("user-{}", rng.random_range(0..users))),
            };
            let meta = match rng.random_range(0..6) {
                0 => None,
                1 => Some(format!(
                    r#"{{"path":"/p/{}","n":{}}}"#,
                    rng.random_range(0..50),
                    rng.random_range(0..1000)
                )),
                // A value of its own each time, as a trace id: enough of them to
                // make a run with a small memory limit spill.
                2 => Some(format!(
                    r#"{{"trace":"t-{}","plan":"pro"}}"#,
                    rng.random::<u64>()
                )),
                _ => Some(metas[rng.random_range(0..metas.len())].to_owned()),
            };
            // Three days and a little more, in whole seconds (DateTime's precision).
            let at = start
                + jiff::SignedDuration::from_secs(
                    rng.random_range(-6 * 3600..3 * 86_400 + 6 * 3600),
                );
            NewEvent {
                event: Some(name.to_owned()),
                user_id: user,
                created_at: at,
                meta,
            }
        })
        .collect()
}

/// Every rollup row as stored, the users' sketch as hex, and the numbers' sketches.
async fn stored(db: &TestDb) -> Vec<(String, String, i64, i64, String, String, String)> {
    match db.store.database() {
        Database::Postgres(pg) => sqlx::query_as(
            "SELECT date::text, event, count, unique_users, meta::text, encode(users_hll, 'hex'), \
             meta_sketches::text FROM telemetry_daily ORDER BY date, event",
        )
        .fetch_all(pg.pool())
        .await
        .expect("rollups"),
        Database::Sqlite(lite) => sqlx::query_as(
            "SELECT date, event, count, unique_users, meta, lower(hex(users_hll)), meta_sketches \
             FROM telemetry_daily ORDER BY date, event",
        )
        .fetch_all(lite.pool())
        .await
        .expect("rollups"),
    }
}

/// What a run read, day by day: (date, events read, skipped by reason).
fn reads(report: &RunReport) -> Vec<(String, u64, String)> {
    report
        .days
        .iter()
        .map(|d| (d.date.clone(), d.events_read, format!("{:?}", d.skipped)))
        .collect()
}

fn options(zone: &str) -> RunOptions {
    RunOptions {
        timezone: TimeZone::get(zone).expect("a zone"),
        ..range_options("2023-12-31", "2024-01-04")
    }
}

/// Loads `events` into `database`'s own source table and into a fresh ClickHouse
/// database; runs the job from each in every zone, and compares the rows.
/// Every hour row of `db` as one text, its sketch in hex.
async fn hours(db: &TestDb) -> Vec<String> {
    let sql = match db.kind {
        Kind::Postgres => {
            "SELECT hour::text || ' ' || event || ' ' || count || ' ' || unique_users \
             || ' ' || encode(users_hll, 'hex') FROM telemetry_hourly ORDER BY hour, event"
        }
        Kind::Sqlite => {
            "SELECT hour || ' ' || event || ' ' || count || ' ' || unique_users \
             || ' ' || lower(hex(users_hll)) FROM telemetry_hourly ORDER BY hour, event"
        }
    };
    db.strings(sql, None).await
}

async fn compare(kind: Kind, events: &[NewEvent]) {
    let Some(cluster) = cluster() else { return };
    let Some(direct) = TestDb::new(kind).await else {
        return;
    };
    let Some(via_clickhouse) = TestDb::new(kind).await else {
        return;
    };
    direct.insert(events).await;
    let ch = ChDb::new(cluster).await;
    ch.insert(events, 1).await;
    let from_clickhouse = via_clickhouse.store.clone().with_source(ch.source());
    for zone in ["UTC", "America/New_York", "Asia/Kathmandu"] {
        // Each zone afresh: days cut again in another zone would be kept by the
        // retention guard.
        for db in [&direct, &via_clickhouse] {
            db.execute("DELETE FROM telemetry_daily").await;
            db.execute("DELETE FROM telemetry_hourly").await;
        }
        let expected = direct.run(&options(zone)).await;
        let got = telemetry_daily::run(&from_clickhouse, &options(zone))
            .await
            .expect("run starts");
        assert!(
            got.ok,
            "{zone}: {:?}",
            got.days
                .iter()
                .filter_map(|d| d.error.as_ref())
                .collect::<Vec<_>>()
        );
        assert_eq!(reads(&got), reads(&expected), "{zone}: what was read");
        let (want, have) = (stored(&direct).await, stored(&via_clickhouse).await);
        assert!(
            want.iter()
                .any(|r| r.5.starts_with("13") || r.5.starts_with("14")),
            "a sketch of registers"
        );
        assert!(
            want.iter().any(|r| r.5.starts_with("12") && r.3 > 1),
            "an explicit sketch"
        );
        assert_eq!(have.len(), want.len(), "{zone}: rows");
        for (h, w) in have.iter().zip(&want) {
            assert_eq!(h, w, "{zone}");
        }
        // The hours too, counted hour by hour on the cluster.
        let (want, have) = (hours(&direct).await, hours(&via_clickhouse).await);
        assert!(!want.is_empty(), "{zone}: hours were written");
        assert_eq!(have, want, "{zone}: hours");
    }
    // The counted events and weighted metadata spill as single events do, and
    // the rows stay the same.
    let spilling = RunOptions {
        // Below what the command line allows, to spill on a test's few thousand
        // distinct values.
        memory_limit: 16 << 10,
        ..options("Asia/Kathmandu")
    };
    via_clickhouse.execute("DELETE FROM telemetry_daily").await;
    let got = telemetry_daily::run(&from_clickhouse, &spilling)
        .await
        .expect("run starts");
    assert!(got.ok);
    assert!(
        got.days.iter().any(|d| d.spilled_bytes > 0),
        "a day spilled: {:?}",
        got.days
    );
    assert_eq!(
        stored(&via_clickhouse).await,
        stored(&direct).await,
        "after a spill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_roll_up_to_the_same_bytes_as_from_postgresql() {
    compare(Kind::Postgres, &events(1, 60_000, false, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_roll_up_to_the_same_bytes_as_from_sqlite_invalid_json_included() {
    compare(Kind::Sqlite, &events(2, 60_000, true, 0)).await;
}

/// Names coded in a byte up to the last codes (a day of about 210 names), and more
/// names than codes, which the steps group by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_of_many_names_roll_up_to_the_same_bytes_coded_or_not() {
    compare(Kind::Postgres, &events(4, 60_000, false, 200)).await;
    compare(Kind::Postgres, &events(5, 60_000, false, 400)).await;
}

/// A name that arrives after step 0 has read the day's names, before step 1 counts
/// them: step 1 meets a name without a code, and the day is read again by names, so
/// the late event is counted like any other. The source is a view of one server's
/// table that sleeps a millisecond a row as it reads, so that the event can be
/// inserted while step 0 reads, after it chose the parts it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_comes_after_the_names_were_read_is_counted_by_reading_the_day_again() {
    let Some(cluster) = cluster() else { return };
    let Some(direct) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let Some(via_clickhouse) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let ch = ChDb::new(cluster).await;
    let early: Vec<NewEvent> = events(6, 3_000, false, 0)
        .into_iter()
        .filter(|e| e.created_at.strftime("%F").to_string() == "2024-01-02")
        .collect();
    let late = NewEvent {
        event: Some("late_name".to_owned()),
        user_id: Some("user-late".to_owned()),
        created_at: "2024-01-02T12:00:00Z".parse().expect("a time"),
        meta: Some(r#"{"plan":"late"}"#.to_owned()),
    };
    ch.insert_into(0, "telemetry_events_local", &early, 1).await;
    let view = format!("slow_{}", ch.name);
    ch.sql(
        0,
        &format!(
            "CREATE VIEW {n}.{view} AS SELECT * FROM {n}.telemetry_events_local \
             WHERE sleepEachRow(0.001) = 0",
            n = ch.name
        ),
    )
    .await;
    let source = ClickHouseSource::new(&ch.url(), &TableName::parse(&view).expect("a name"))
        .expect("a valid URL");
    let store = via_clickhouse.store.clone().with_source(source);
    let options = range_options("2024-01-02", "2024-01-02");
    let job = tokio::spawn({
        let options = options.clone();
        async move { telemetry_daily::run(&store, &options).await }
    });
    // Step 0, the job's first query on the view, has started reading.
    let step_0 = format!(
        "SELECT count() FROM system.processes WHERE position(query, 'SELECT DISTINCT') = 1 \
         AND position(query, '{view}') > 0 AND read_rows > 0"
    );
    let started = std::time::Instant::now();
    while ch.sql(0, &step_0).await.trim() == "0" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "step 0 never read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ch.insert_into(
        0,
        "telemetry_events_local",
        std::slice::from_ref(&late),
        1_000_000,
    )
    .await;
    let got = job.await.expect("the job's task").expect("run starts");
    assert!(got.ok, "{:?}", got.days);

    // Step 0 did not see the name, step 1 did: step 1 ran with codes, then by names.
    ch.sql(0, "SYSTEM FLUSH LOGS").await;
    let logged = |sql: &str| {
        format!(
            "SELECT {sql} FROM system.query_log WHERE type = 2 AND is_initial_query \
             AND position(http_user_agent, 'veris-jobs/') = 1 AND position(query, '{view}') > 0"
        )
    };
    let step_0_names = ch
        .sql(
            0,
            &logged("groupArrayIf(result_rows, position(query, 'SELECT DISTINCT') = 1)"),
        )
        .await;
    let step_1 = ch
        .sql(
            0,
            &logged(
                "countIf(position(query, 'uniqExactIf') > 0 AND position(query, 'transform(') > 0), \
                 countIf(position(query, 'uniqExactIf') > 0 AND position(query, 'transform(') = 0)",
            ),
        )
        .await;
    // Step 0 cuts names one byte past the limit, which leaves these apart.
    let names_before = early
        .iter()
        .map(|e| e.event.as_deref().unwrap_or(""))
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(
        step_0_names.trim(),
        format!("[{names_before}]"),
        "step 0's names"
    );
    // The day's step 1 with codes, then by names; then each of its 24 hours by names.
    assert_eq!(step_1.trim(), "1\t25", "step 1 with codes, then by names");

    let mut all = early;
    all.push(late);
    direct.insert(&all).await;
    direct.run(&options).await;
    let (want, have) = (stored(&direct).await, stored(&via_clickhouse).await);
    assert!(
        want.iter().any(|r| r.1 == "late_name" && r.2 == 1),
        "the late event has its row"
    );
    assert_eq!(have, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_the_retention_guard_and_changed_work_from_clickhouse() {
    let Some(cluster) = cluster() else { return };
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let ch = ChDb::new(cluster).await;
    let all = events(3, 6_000, false, 0);
    ch.insert(&all, 1).await;
    let store = db.store.clone().with_source(ch.source());
    let days = range_options("2024-01-01", "2024-01-03");

    let dry = telemetry_daily::run(
        &store,
        &RunOptions {
            dry_run: true,
            ..days.clone()
        },
    )
    .await
    .expect("run");
    assert!(
        dry.ok
            && dry
                .days
                .iter()
                .all(|d| d.status == DayStatus::DryRun && d.inserted > 0)
    );
    assert!(stored(&db).await.is_empty(), "a dry run writes nothing");

    let written = telemetry_daily::run(&store, &days).await.expect("run");
    assert!(written.ok);
    let before = stored(&db).await;

    // 2024-01-02's events purged from both shards: the rollups stay, unless forced.
    for server in 0..2 {
        ch.sql(
            server,
            &format!(
                "ALTER TABLE {}.telemetry_events_local DROP PARTITION 20240102",
                ch.name
            ),
        )
        .await;
    }
    let kept = telemetry_daily::run(&store, &days).await.expect("run");
    let day2 = &kept.days[1];
    assert_eq!(day2.status, DayStatus::Kept, "{day2:?}");
    assert_eq!(stored(&db).await, before, "the guard keeps the rollups");
    let forced = telemetry_daily::run(
        &store,
        &RunOptions {
            force: true,
            ..days.clone()
        },
    )
    .await
    .expect("run");
    assert_eq!(
        forced.days[1].deleted,
        before.iter().filter(|r| r.0 == "2024-01-02").count() as u64
    );

    // A late event of 2024-01-01, with a higher id: --changed finds and redoes the day.
    let baseline = telemetry_daily::run(
        &store,
        &RunOptions {
            changed: true,
            ..range_options("2024-01-03", "2024-01-03")
        },
    )
    .await
    .expect("run");
    assert!(baseline.ok);
    let late = NewEvent {
        event: Some("late_event".into()),
        user_id: Some("late-user".into()),
        created_at: "2024-01-01T12:00:00Z".parse().unwrap(),
        meta: Some(r#"{"plan":"pro"}"#.into()),
    };
    ch.insert(&[late], 1_000_000).await;
    let changed = telemetry_daily::run(
        &store,
        &RunOptions {
            changed: true,
            ..range_options("2024-01-03", "2024-01-03")
        },
    )
    .await
    .expect("run");
    let redone: Vec<&str> = changed.days.iter().map(|d| d.date.as_str()).collect();
    assert_eq!(redone, ["2024-01-01", "2024-01-03"]);
    let late_row = stored(&db)
        .await
        .into_iter()
        .find(|r| r.1 == "late_event")
        .expect("the late row");
    assert_eq!(
        (late_row.0.as_str(), late_row.2, late_row.3),
        ("2024-01-01", 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_refuses_or_is_gone_fails_the_days_with_its_words() {
    let Some(cluster) = cluster() else { return };
    let Some(db) = TestDb::new(Kind::Sqlite).await else {
        return;
    };
    let ch = ChDb::new(cluster).await;
    let day = range_options("2024-01-01", "2024-01-01");
    let table = TableName::parse("telemetry_events").unwrap();
    let cases = [
        (
            format!(
                "clickhouse://reader:wrong@127.0.0.1:{}/{}",
                cluster.http[0], ch.name
            ),
            "ClickHouse answered 401",
        ),
        (
            format!(
                "clickhouse://127.0.0.1:{}/no_such_database",
                cluster.http[0]
            ),
            "no_such_database",
        ),
        (
            format!(
                "clickhouse://127.0.0.1:{}/{}",
                crate::common::free_port(),
                ch.name
            ),
            "cannot reach the source of events",
        ),
    ];
    for (url, says) in cases {
        let store = db
            .store
            .clone()
            .with_source(ClickHouseSource::new(&url, &table).unwrap());
        let report = telemetry_daily::run(&store, &day)
            .await
            .expect("the run starts");
        let error = report.days[0].error.as_deref().unwrap_or("");
        assert!(!report.ok && error.contains(says), "{url}: {error}");
        assert!(
            !error.contains("wrong"),
            "the password stays out of messages: {error}"
        );
    }
    // The right password reads.
    let url = format!(
        "clickhouse://reader:reader-secret@127.0.0.1:{}/{}",
        cluster.http[0], ch.name
    );
    let store: Store = db
        .store
        .clone()
        .with_source(ClickHouseSource::new(&url, &table).unwrap());
    assert!(telemetry_daily::run(&store, &day).await.expect("run").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reads_clickhouse_and_writes_sqlite() {
    let Some(cluster) = cluster() else { return };
    let ch = ChDb::new(cluster).await;
    ch.insert(&events(4, 2_000, false, 0), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("rollups.db").display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .env_clear()
            .env("DATABASE_URL", &database)
            .env("TELEMETRY_SOURCE_URL", ch.url())
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let migrated = run(&["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(
        String::from_utf8_lossy(&migrated.stdout)
            .contains("events are read from telemetry_events at the source URL")
    );
    let out = run(&[
        "telemetry-daily",
        "--start-date",
        "2024-01-01",
        "--end-date",
        "2024-01-02",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["ok"], true);
    assert!(report["totals"]["rows"].as_u64().unwrap() > 0, "{report}");
    // The rollup database holds no copy of the source table.
    let lite = Store::connect(&database, &default_table()).await.unwrap();
    let Database::Sqlite(lite) = lite.database() else {
        unreachable!()
    };
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(lite.pool())
            .await
            .unwrap();
    assert!(
        !tables.contains(&"telemetry_events".to_owned()),
        "{tables:?}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env_clear()
        .env("DATABASE_URL", &database)
        .args([
            "--source-url",
            "clickhouse://user:hunter2@host",
            "telemetry-daily",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TELEMETRY_SOURCE_URL") && stderr.contains("names no database"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let demo = run(&["demo"]);
    assert_eq!(demo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&demo.stderr).contains("without --source-url"));
}
