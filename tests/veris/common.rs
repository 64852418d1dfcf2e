//! Helpers shared by the integration tests: a fresh database per test, events to
//! write, and the rollup table read back exactly as stored.

use std::sync::atomic::{AtomicU32, Ordering};

use jiff::Timestamp;
use sqlx::Connection as _;
use veris_jobs::model::{DayRange, RunReport};
use veris_jobs::store::{Database, NewEvent, Store, TableName};
use veris_jobs::telemetry_daily::{self, RunOptions};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// A database of the test's own, dropped when the test ends.
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    pub store: Store,
    guard: Guard,
}

enum Guard {
    Postgres { admin_url: String, name: String },
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

/// The PostgreSQL server the tests use.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL ends in /DATABASE");
    format!("{base}/{name}")
}

fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "veris_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        Timestamp::now().as_nanosecond() % 1_000_000_000
    )
}

/// Says, once per process and where the test harness does not hide it, that a
/// group of tests passes without running.
pub fn skipping(why: &str) {
    use std::io::Write as _;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !said.iter().any(|w| w == why) {
        // Straight to the stream: `eprintln!` is captured for passing tests.
        let _ = writeln!(std::io::stderr(), "note: {why}");
        said.push(why.to_owned());
    }
}

pub fn default_table() -> TableName {
    TableName::parse("telemetry_events").expect("valid name")
}

impl TestDb {
    /// A fresh, migrated database of `kind`, or `None` when PostgreSQL is not
    /// reachable outside CI (under `CI=true` that fails the test instead).
    pub async fn new(kind: Kind) -> Option<Self> {
        let db = match kind {
            Kind::Sqlite => Self::sqlite().await,
            Kind::Postgres => Self::postgres().await?,
        };
        db.store.migrate().await.expect("migrate");
        Some(db)
    }

    /// An empty SQLite file in a temporary directory (not migrated).
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::connect(&url, &default_table())
            .await
            .expect("open sqlite");
        Self {
            kind: Kind::Sqlite,
            url,
            store,
            guard: Guard::Sqlite(dir),
        }
    }

    /// An empty PostgreSQL database (not migrated).
    pub async fn postgres() -> Option<Self> {
        let admin_url = server_url();
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                skipping(&format!(
                    "the PostgreSQL tests pass without running: cannot reach {admin_url} ({error}); \
                     set TEST_DATABASE_URL, or CI=true to make this a failure"
                ));
                return None;
            }
            Err(error) => panic!("CI=true and PostgreSQL is unreachable at {admin_url}: {error}"),
        };
        let name = unique_name();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let store = Store::connect(&url, &default_table())
            .await
            .expect("connect postgres");
        Some(Self {
            kind: Kind::Postgres,
            url,
            store,
            guard: Guard::Postgres { admin_url, name },
        })
    }

    /// A new connection pool to the same database, as a second process would have.
    pub async fn second_store(&self, source: &TableName) -> Store {
        Store::connect(&self.url, source)
            .await
            .expect("second connection")
    }

    /// Writes raw events.
    pub async fn insert(&self, events: &[NewEvent]) {
        self.store
            .insert_events(events)
            .await
            .expect("insert events");
    }

    /// Runs one statement of raw SQL.
    pub async fn execute(&self, sql: &str) {
        match self.store.database() {
            Database::Postgres(s) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(s.pool())
                    .await
                    .expect(sql);
            }
            Database::Sqlite(s) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(s.pool())
                    .await
                    .expect(sql);
            }
        }
    }

    /// Every rollup row exactly as stored: (date, event, count, unique_users, meta, updated_at).
    pub async fn rollups(&self) -> Vec<StoredRow> {
        match self.store.database() {
            Database::Postgres(s) => sqlx::query_as(
                "SELECT date::text, event, count, unique_users, meta::text, updated_at::text \
                 FROM telemetry_daily ORDER BY date, event",
            )
            .fetch_all(s.pool())
            .await
            .expect("read rollups"),
            Database::Sqlite(s) => sqlx::query_as(
                "SELECT date, event, count, unique_users, meta, updated_at \
                 FROM telemetry_daily ORDER BY date, event",
            )
            .fetch_all(s.pool())
            .await
            .expect("read rollups"),
        }
    }

    /// The first column of `sql`'s rows, as text; `$1` is `bind` when given.
    pub async fn strings(&self, sql: &str, bind: Option<&str>) -> Vec<String> {
        match self.store.database() {
            Database::Postgres(s) => {
                let query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()));
                let query = match bind {
                    Some(value) => query.bind(value.to_owned()),
                    None => query,
                };
                query.fetch_all(s.pool()).await.expect(sql)
            }
            Database::Sqlite(s) => {
                let query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()));
                let query = match bind {
                    Some(value) => query.bind(value.to_owned()),
                    None => query,
                };
                query.fetch_all(s.pool()).await.expect(sql)
            }
        }
    }

    /// Runs the job with `options` on this database.
    pub async fn run(&self, options: &RunOptions) -> RunReport {
        telemetry_daily::run(&self.store, options)
            .await
            .expect("run starts")
    }
}

/// `program ARGS` fed `input` on stdin, or `None` (said once) when it cannot start
/// outside CI; under `CI=true`, whose `.ci/run` installs it, that fails the test.
pub fn run_with_input(
    program: &str,
    args: &[&str],
    input: &[u8],
    what: &str,
) -> Option<std::process::Output> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            skipping(&format!(
                "{what} passes without running: {program} does not start ({error})"
            ));
            return None;
        }
        Err(error) => panic!("CI=true and {program} does not start: {error}"),
    };
    child.stdin.take().unwrap().write_all(input).unwrap();
    Some(child.wait_with_output().unwrap())
}

/// Checks each `p50`, `p90` and `p99` in the summary `stored` within 1% of the same
/// field of `expected`, which holds the exact percentile (the contract's rank), then
/// takes them out of both, so that the rest of the two can be compared exactly.
pub fn check_and_strip_percentiles(
    stored: &mut serde_json::Value,
    expected: &mut serde_json::Value,
    context: &str,
) {
    let (Some(stored), Some(expected)) = (stored.as_object_mut(), expected.as_object_mut()) else {
        return;
    };
    for (key, part) in stored.iter_mut() {
        let Some(part) = part.as_object_mut() else {
            continue;
        };
        let mut exact_part = expected.get_mut(key).and_then(|p| p.as_object_mut());
        for name in ["p50", "p90", "p99"] {
            let estimate = part.remove(name).and_then(|v| v.as_f64());
            let exact = exact_part
                .as_mut()
                .and_then(|p| p.remove(name))
                .and_then(|v| v.as_f64());
            match (estimate, exact) {
                (Some(estimate), Some(exact)) => assert!(
                    (estimate - exact).abs() <= 0.01 * exact.abs() * (1.0 + 1e-9),
                    "{context}: {key}.{name} is {estimate}, not within 1% of {exact}"
                ),
                (None, None) => {}
                other => panic!("{context}: {key}.{name} is {other:?} (stored, exact)"),
            }
        }
    }
}

/// The exact percentiles of `numbers`, as a summary holds them: the number at
/// 0-based rank floor(q * (n - 1)) of the sorted numbers, for q = 0.5, 0.9, 0.99.
pub fn exact_percentiles(numbers: &[f64]) -> [(&'static str, f64); 3] {
    let mut sorted = numbers.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at =
        |numerator: usize, denominator: usize| sorted[(sorted.len() - 1) * numerator / denominator];
    [("p50", at(1, 2)), ("p90", at(9, 10)), ("p99", at(99, 100))]
}

/// One stored rollup row: (date, event, count, unique_users, meta, updated_at).
pub type StoredRow = (String, String, i64, i64, String, String);

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Guard::Postgres { admin_url, name } = &self.guard {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop needs its own runtime: the test's may be shutting down.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

/// An event at `at` (RFC 3339), with optional user and metadata.
pub fn event(name: &str, user: Option<&str>, at: &str, meta: Option<&str>) -> NewEvent {
    NewEvent {
        event: Some(name.to_owned()),
        user_id: user.map(str::to_owned),
        created_at: at.parse().expect("valid timestamp"),
        meta: meta.map(str::to_owned),
    }
}

/// Options for the range `start..=end` (YYYY-MM-DD), otherwise the defaults.
pub fn range_options(start: &str, end: &str) -> RunOptions {
    RunOptions {
        range: Some(
            DayRange::new(start.parse().expect("date"), end.parse().expect("date")).expect("range"),
        ),
        ..RunOptions::default()
    }
}

/// Declares each named test case once per database. A case is an
/// `async fn(TestDb)` in the same module.
#[macro_export]
macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(db) = $crate::common::TestDb::new($crate::common::Kind::Postgres).await {
                        super::$case(db).await;
                    }
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = $crate::common::TestDb::new($crate::common::Kind::Sqlite).await.expect("sqlite");
                    super::$case(db).await;
                }
            )*
        }
    };
}

/// `N` distinct loopback ports free now. All are held until all are chosen: a port
/// released at once can be handed out again by the next bind.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("a bound port").port())
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}
