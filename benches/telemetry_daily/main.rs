//! The benchmark of `telemetry-daily` against the database's own floor.
//!
//! ```sh
//! cargo bench --bench telemetry_daily -- --events 10000000 --runs 5
//! ```
//!
//! For each database it loads (once, then reuses) a day of N events with a fixed
//! seed, then alternates, run by run, three contenders over that day:
//!
//! 1. the floor: on PostgreSQL `COPY (SELECT event, user_id, meta …) TO STDOUT
//!    (FORMAT binary)` read to the end; on SQLite a bare scan of the same columns
//!    with a plain SQLite connection;
//! 2. a plain SQL `GROUP BY event` with `count(*)` and `count(DISTINCT user_id)`;
//! 3. the job itself (the release binary, rollups written), with its peak memory.
//!
//! It prints medians, ratios to the floor, events per second, the job's peak resident
//! memory, and the time of a 365-day run over empty days.
//!
//! With `--databases clickhouse` it loads the same day into PostgreSQL and into a
//! two-shard ClickHouse cluster on loopback (`tests/clickhouse/cluster.sh`) and
//! alternates the job on PostgreSQL, a plain `GROUP BY` on the cluster and the job
//! reading the cluster, then prints how one more run's time splits between the job's
//! queries and the shards (from each server's `system.query_log`).

mod clickhouse;
mod generator;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::TryStreamExt as _;
use jiff::civil::Date;
use sqlx::postgres::{PgPool, PgPoolCopyExt as _};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, Row as _};
use veris_jobs::model::DayWindow;
use veris_jobs::store::sqlite::{sqlite_bound, sqlite_timestamp};
use veris_jobs::store::{Database, Store, TableName};

use generator::{Generator, Shape};

#[derive(Debug, Parser)]
struct Args {
    /// Events on the day under test (the days around it get a tenth each).
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// Timed runs per contender (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Which databases: postgres, sqlite, both (those two), clickhouse (as the
    /// source, against the job on PostgreSQL) or all.
    #[arg(long, default_value = "both")]
    databases: String,
    /// The PostgreSQL server; a database `veris_bench_<events>` is created on it.
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Also time the job reading each day in this many concurrent time slices.
    #[arg(long, default_value_t = 1)]
    slices: u32,
    /// The day's shape: `usual` (300,000 users) or `distinct-users` (a user id and a
    /// trace id of its own for every event).
    #[arg(long, default_value = "usual", value_parser = parse_shape)]
    shape: Shape,
    /// The job's --memory-limit (its own default when not given).
    #[arg(long)]
    memory_limit: Option<String>,
    /// Instead of the timings: the accuracy of weekly and monthly unique users, over
    /// 35 days (2024-01-01 to 2024-02-04) of `--events` events each, on PostgreSQL.
    #[arg(long)]
    accuracy: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const DAY: &str = "2024-03-12";

fn parse_shape(value: &str) -> Result<Shape, String> {
    match value {
        "usual" => Ok(Shape::Usual),
        "distinct-users" => Ok(Shape::DistinctUsers),
        other => Err(format!("'{other}' is not a shape: usual or distinct-users")),
    }
}

/// The name the data of `args` is kept under: the usual day's keeps its old name.
fn data_name(args: &Args) -> String {
    match args.shape {
        Shape::Usual => args.events.to_string(),
        Shape::DistinctUsers => format!("distinct_{}", args.events),
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# telemetry-daily benchmark: {} events on {DAY} ({:?} shape), {} runs, memory limit {}",
        args.events,
        args.shape,
        args.runs,
        args.memory_limit.as_deref().unwrap_or("the default")
    );
    println!("# machine: {}", machine());
    runtime.block_on(async {
        if args.accuracy {
            accuracy(&args).await;
            return;
        }
        let all = args.databases == "all";
        if all || args.databases == "both" || args.databases == "postgres" {
            postgres(&args).await;
        }
        if all || args.databases == "both" || args.databases == "sqlite" {
            sqlite(&args).await;
        }
        if all || args.databases == "clickhouse" {
            clickhouse(&args).await;
        }
    });
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn day() -> Date {
    DAY.parse().expect("valid date")
}

fn window() -> DayWindow {
    DayWindow::new(day(), &jiff::tz::TimeZone::UTC).expect("window")
}

/// The three days and their sizes.
fn days(events: u64) -> [(Date, u64); 3] {
    let d = day();
    [
        (d.yesterday().unwrap(), events / 10),
        (d, events),
        (d.tomorrow().unwrap(), events / 10),
    ]
}

// ---------------------------------------------------------------- PostgreSQL

/// The URL of database `name` on the server of `--postgres-url`, with its options
/// (such as `?sslmode=disable`), and whether it existed; it is created if missing.
async fn postgres_database(args: &Args, name: &str) -> (String, bool) {
    let (address, options) = args
        .postgres_url
        .split_once('?')
        .unwrap_or((&args.postgres_url, ""));
    let (base, _) = address.rsplit_once('/').expect("URL ends in /DATABASE");
    let url = if options.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{options}")
    };
    let mut admin = sqlx::PgConnection::connect(&args.postgres_url)
        .await
        .expect("reach PostgreSQL");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    (url, exists)
}

/// The day under test in PostgreSQL (loaded if needed): its URL and pool.
async fn postgres_day(args: &Args) -> (String, PgPool) {
    let (url, _) = postgres_database(args, &format!("veris_bench_{}", data_name(args))).await;
    let store = Store::connect(&url, &TableName::parse("telemetry_events").unwrap())
        .await
        .unwrap();
    let Database::Postgres(pg) = store.database() else {
        unreachable!()
    };
    let pool = pg.pool().clone();
    load_postgres(&store, &pool, args.events, args.shape).await;
    (url, pool)
}

async fn postgres(args: &Args) {
    let (url, pool) = postgres_day(args).await;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("\n## PostgreSQL {version}");

    let target = Target::Postgres {
        pool: pool.clone(),
        url: url.clone(),
    };
    compare(args, &target).await;
    // The rollups the last run wrote, against the database's own count.
    let w = window();
    let rollups: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT event, count, unique_users FROM telemetry_daily WHERE date = $1::date ORDER BY event COLLATE \"C\"",
    )
    .bind(DAY)
    .fetch_all(&pool)
    .await
    .unwrap();
    let counted: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT event, count(*), count(DISTINCT NULLIF(user_id, '')) FROM telemetry_events \
         WHERE created_at >= $1::timestamptz AND created_at < $2::timestamptz \
         AND event <> '' GROUP BY event ORDER BY event COLLATE \"C\"",
    )
    .bind(w.start.to_string())
    .bind(w.end.to_string())
    .fetch_all(&pool)
    .await
    .unwrap();
    check_rollups(&rollups, &counted);
    empty_year(&url).await;
    let sizes: (i64, f64, i32) = sqlx::query_as(
        "SELECT count(*), avg(octet_length(users_hll))::float8, max(octet_length(users_hll)) \
         FROM telemetry_daily WHERE date = $1::date",
    )
    .bind(DAY)
    .fetch_one(&pool)
    .await
    .unwrap();
    print_sketch_sizes(sizes.0, sizes.1, i64::from(sizes.2));
    let metas: (f64, f64) = sqlx::query_as(
        "SELECT avg(octet_length(meta::text))::float8, \
         coalesce(avg(octet_length(meta_sketches::text)), 0)::float8 \
         FROM telemetry_daily WHERE date = $1::date",
    )
    .bind(DAY)
    .fetch_one(&pool)
    .await
    .unwrap();
    print_meta_sizes(sizes.0, metas);
    // sqlx 0.9.0 leaves Nagle's algorithm on, so that each TLS handshake waits for
    // delayed acknowledgements: both figures, for a server elsewhere and one here.
    let urls = [("", url.clone()), (" without TLS", without_tls(&url))];
    year_report(
        &urls,
        args.runs,
        |sql| {
            let pool = pool.clone();
            async move {
                sqlx::raw_sql(AssertSqlSafe(
                    sql.replace("{day}", &format!("'{DAY}'::date"))
                        .replace("{plus}", "+ n")
                        .replace("{series}", "generate_series(-365, -1) AS n"),
                ))
                .execute(&pool)
                .await
                .unwrap();
            }
        },
        async || report_server_floor(&pool, args.runs).await,
    )
    .await;
    tls_cost(&url).await;
}

/// What TLS adds to a short command: `veris-jobs runs --limit 1` over the URL as
/// given (TLS when the server offers it) and with `sslmode=disable`, alternated,
/// medians of 15 (as `benches/tls_cost.sh`, which also times `psql`).
async fn tls_cost(url: &str) {
    let urls = [url.to_owned(), without_tls(url)];
    let mut times = tokio::task::spawn_blocking(move || {
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..15 {
            for (at, url) in urls.iter().enumerate() {
                let started = Instant::now();
                let status = Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
                    .env("DATABASE_URL", url)
                    .args(["runs", "--limit", "1"])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
                times[at].push(started.elapsed());
            }
        }
        times
    })
    .await
    .unwrap();
    let ms = |times: &mut Vec<Duration>| median(times).as_secs_f64() * 1000.0;
    let (tls, plain) = (ms(&mut times[0]), ms(&mut times[1]));
    println!(
        "`veris-jobs runs --limit 1`: {tls:.1} ms over the URL as given, {plain:.1} ms with \
         sslmode=disable: TLS adds {:.1} ms (medians of 15)",
        tls - plain
    );
}

async fn load_postgres(store: &Store, pool: &PgPool, events: u64, shape: Shape) {
    store.migrate().await.unwrap();
    let expected = events + 2 * (events / 10);
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_events")
        .fetch_one(pool)
        .await
        .unwrap();
    if have as u64 == expected {
        return;
    }
    eprintln!("loading {expected} events into PostgreSQL (once; later runs reuse them)…");
    let started = Instant::now();
    sqlx::query("TRUNCATE telemetry_events, telemetry_daily")
        .execute(pool)
        .await
        .unwrap();
    let mut copy = pool
        .copy_in_raw("COPY telemetry_events (event, user_id, created_at, meta) FROM STDIN")
        .await
        .unwrap();
    let mut generator = Generator::with_shape(shape);
    for (date, count) in days(events) {
        let mut left = count;
        while left > 0 {
            let n = left.min(10_000);
            let mut buffer = Vec::with_capacity(n as usize * 160);
            generator.day(date, n, |row| {
                buffer.extend_from_slice(copy_text_line(&row).as_bytes())
            });
            copy.send(buffer).await.unwrap();
            left -= n;
        }
    }
    copy.finish().await.unwrap();
    sqlx::raw_sql("VACUUM ANALYZE telemetry_events")
        .execute(pool)
        .await
        .unwrap();
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
}

/// One line of COPY's text format. Generated values hold no tab, newline or backslash.
fn copy_text_line(row: &generator::Row<'_>) -> String {
    format!(
        "{}\t{}\t{}\t{}\n",
        row.event,
        row.user_id.unwrap_or("\\N"),
        row.created_at,
        row.meta
    )
}

async fn pg_floor(pool: &PgPool) -> u64 {
    let w = window();
    let sql = format!(
        "COPY (SELECT event, user_id, meta FROM telemetry_events \
         WHERE created_at >= '{}'::timestamptz AND created_at < '{}'::timestamptz) TO STDOUT (FORMAT binary)",
        w.start, w.end
    );
    let mut chunks = pool.copy_out_raw(&sql).await.unwrap();
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.try_next().await.unwrap() {
        bytes += chunk.len() as u64;
    }
    bytes
}

async fn pg_group_by(pool: &PgPool) -> u64 {
    let w = window();
    let rows = sqlx::query(
        "SELECT event, count(*), count(DISTINCT user_id) FROM telemetry_events \
         WHERE created_at >= $1::timestamptz AND created_at < $2::timestamptz GROUP BY event",
    )
    .bind(w.start.to_string())
    .bind(w.end.to_string())
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter().map(|r| r.get::<i64, _>(1) as u64).sum()
}

// ---------------------------------------------------------------- SQLite

async fn sqlite(args: &Args) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("veris-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("sqlite-{}.db", data_name(args)));
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url, &TableName::parse("telemetry_events").unwrap())
        .await
        .unwrap();
    let Database::Sqlite(lite) = store.database() else {
        unreachable!()
    };
    load_sqlite(&store, lite.pool(), args.events, args.shape).await;
    // A second pool of its own, as a separate reader would have.
    let options: SqliteConnectOptions = url.parse().unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("\n## SQLite {version}");
    let target = Target::Sqlite {
        pool: pool.clone(),
        url: url.clone(),
        path,
    };
    compare(args, &target).await;
    let w = window();
    let rollups: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT event, count, unique_users FROM telemetry_daily WHERE date = ?1 ORDER BY event",
    )
    .bind(DAY)
    .fetch_all(&pool)
    .await
    .unwrap();
    let counted: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT event, count(*), count(DISTINCT NULLIF(user_id, '')) FROM telemetry_events \
         WHERE created_at >= ?1 AND created_at < ?2 AND event <> '' GROUP BY event ORDER BY event",
    )
    .bind(sqlite_bound(w.start))
    .bind(sqlite_bound(w.end))
    .fetch_all(&pool)
    .await
    .unwrap();
    check_rollups(&rollups, &counted);
    empty_year(&url).await;
    let sizes: (i64, f64, i64) = sqlx::query_as(
        "SELECT count(*), avg(length(users_hll)), max(length(users_hll)) \
         FROM telemetry_daily WHERE date = ?1",
    )
    .bind(DAY)
    .fetch_one(&pool)
    .await
    .unwrap();
    print_sketch_sizes(sizes.0, sizes.1, sizes.2);
    let metas: (f64, f64) = sqlx::query_as(
        "SELECT avg(length(meta)), coalesce(avg(length(meta_sketches)), 0) \
         FROM telemetry_daily WHERE date = ?1",
    )
    .bind(DAY)
    .fetch_one(&pool)
    .await
    .unwrap();
    print_meta_sizes(sizes.0, metas);
    year_report(&[("", url.clone())], args.runs, |sql| {
        let pool = pool.clone();
        async move {
            let sql = sql
                .replace("{day}", &format!("'{DAY}'"))
                .replace("date {plus}", "date(date, n || ' days')")
                .replace("{series}", "(WITH RECURSIVE s(n) AS (SELECT -365 UNION ALL SELECT n + 1 FROM s WHERE n < -1) SELECT n FROM s)");
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            // A year of a deployment's rows has long left the write-ahead log for the
            // database file; read from the log, each page is looked up in its index.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await
                .unwrap();
        }
    }, async || {})
    .await;
}

async fn load_sqlite(store: &Store, pool: &SqlitePool, events: u64, shape: Shape) {
    store.migrate().await.unwrap();
    let expected = events + 2 * (events / 10);
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_events")
        .fetch_one(pool)
        .await
        .unwrap();
    if have as u64 == expected {
        return;
    }
    eprintln!("loading {expected} events into SQLite (once; later runs reuse them)…");
    let started = Instant::now();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("DELETE FROM telemetry_events")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM telemetry_daily")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut generator = Generator::with_shape(shape);
    for (date, count) in days(events) {
        let mut batch = Vec::new();
        let mut left = count;
        while left > 0 {
            let n = left.min(5_000);
            generator.day(date, n, |row| {
                batch.push(serde_json::json!([
                    row.event,
                    row.user_id,
                    sqlite_timestamp(row.created_at),
                    row.meta
                ]));
            });
            sqlx::query(
                "INSERT INTO telemetry_events (event, user_id, created_at, meta) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1)",
            )
            .bind(serde_json::Value::Array(std::mem::take(&mut batch)).to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
            left -= n;
        }
    }
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
}

/// The fastest bare scan there is: a plain read-only SQLite connection stepping
/// through the same columns, touching every byte.
async fn sqlite_floor(path: &std::path::Path) -> u64 {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let w = window();
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags).unwrap();
        let mut statement = conn
            .prepare("SELECT event, user_id, meta FROM telemetry_events WHERE created_at >= ?1 AND created_at < ?2")
            .unwrap();
        let mut rows = statement.query([sqlite_bound(w.start), sqlite_bound(w.end)]).unwrap();
        let mut bytes = 0u64;
        while let Some(row) = rows.next().unwrap() {
            for i in 0..3 {
                if let Ok(Some(b)) = row.get_ref(i).unwrap().as_bytes_or_null() {
                    bytes += b.iter().map(|&b| u64::from(b)).sum::<u64>() & 1;
                    bytes += b.len() as u64;
                }
            }
        }
        bytes
    })
    .await
    .unwrap()
}

async fn sqlite_group_by(pool: &SqlitePool) -> u64 {
    let w = window();
    let rows = sqlx::query(
        "SELECT event, count(*), count(DISTINCT user_id) FROM telemetry_events \
         WHERE created_at >= ?1 AND created_at < ?2 GROUP BY event",
    )
    .bind(sqlite_bound(w.start))
    .bind(sqlite_bound(w.end))
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter().map(|r| r.get::<i64, _>(1) as u64).sum()
}

// ---------------------------------------------------------------- ClickHouse

/// The same day from a two-shard ClickHouse cluster, against the job on PostgreSQL.
async fn clickhouse(args: &Args) {
    let (pg_url, pg_pool) = postgres_day(args).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("veris-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = clickhouse::Cluster::start(&dir.join("clickhouse"));
    let database = format!("veris_bench_{}", data_name(args));
    cluster
        .load(&database, &days(args.events), args.shape)
        .await;
    println!(
        "\n## ClickHouse {} (two shards on this machine), against PostgreSQL",
        cluster.version().await
    );
    // The rollups go to a SQLite file: their side is the same whatever the source.
    let rollups = dir.join(format!("clickhouse-rollups-{}.db", data_name(args)));
    let rollups_url = format!("sqlite://{}", rollups.display());
    let store = Store::connect(&rollups_url, &TableName::parse("telemetry_events").unwrap())
        .await
        .unwrap();
    let source_url = format!("clickhouse://127.0.0.1:{}/{database}", cluster.http[0]);
    let store = store.with_source(
        veris_jobs::store::ClickHouseSource::new(
            &source_url,
            &TableName::parse("telemetry_events").unwrap(),
        )
        .unwrap(),
    );
    store.migrate().await.unwrap();
    let Database::Sqlite(lite) = store.database() else {
        unreachable!()
    };
    let target = Target::ClickHouse {
        pg_pool,
        pg_url,
        rollups: lite.pool().clone(),
        rollups_url: rollups_url.clone(),
        source_url: source_url.clone(),
        cluster,
        database,
    };
    compare(args, &target).await;
    let Target::ClickHouse { cluster, .. } = &target else {
        unreachable!()
    };
    // One more run, with the server the job talks to also reaching its own shard
    // over TCP, so that each shard's part is logged as a query of its own.
    let since = jiff::Timestamp::now().as_second();
    let started = Instant::now();
    let split_url = format!("{source_url}?prefer_localhost_replica=0");
    let url = rollups_url.clone();
    tokio::task::spawn_blocking(move || {
        run_binary(
            &url,
            &[
                "telemetry-daily",
                "--date",
                DAY,
                "--json",
                "--source-url",
                &split_url,
            ],
        )
    })
    .await
    .unwrap();
    let wall = started.elapsed();
    println!(
        "\nOne more run of the job, each shard reached over TCP (prefer_localhost_replica=0): {:.3} s in all. \
         Its queries (the job's own, on server 1, which merges the shards' parts) and the parts each shard ran, \
         from system.query_log:\n",
        wall.as_secs_f64()
    );
    print!("{}", cluster.split(since).await);
}

// ---------------------------------------------------------------- the job and the comparison

/// A database under test and its three contenders.
enum Target {
    Postgres {
        pool: PgPool,
        url: String,
    },
    Sqlite {
        pool: SqlitePool,
        url: String,
        path: std::path::PathBuf,
    },
    /// The source on the cluster, rollups in a SQLite file; the same events in
    /// PostgreSQL for the job's reference time.
    ClickHouse {
        pg_pool: PgPool,
        pg_url: String,
        rollups: SqlitePool,
        rollups_url: String,
        source_url: String,
        cluster: clickhouse::Cluster,
        database: String,
    },
}

impl Target {
    fn names(&self, slices: u32) -> Vec<String> {
        let floor = match self {
            Target::Postgres { .. } => "floor: COPY binary read to the end",
            Target::Sqlite { .. } => "floor: bare scan of the same columns",
            Target::ClickHouse { .. } => {
                return vec![
                    "the job on PostgreSQL (the same events)".to_owned(),
                    "plain SQL GROUP BY event on the cluster".to_owned(),
                    "the job reading the cluster".to_owned(),
                ];
            }
        };
        let mut names = vec![
            floor.to_owned(),
            "plain SQL GROUP BY event".to_owned(),
            "the job (rollups written)".to_owned(),
        ];
        if slices > 1 {
            names.push(format!("the job, {slices} time slices"));
        }
        names
    }

    /// The column the medians are divided by.
    fn baseline(&self) -> &'static str {
        match self {
            Target::ClickHouse { .. } => "ratio to the job on PostgreSQL",
            _ => "ratio to floor",
        }
    }

    /// Runs contender `which`; returns a count of its work (never zero) and records
    /// the job's peak resident memory and bytes spilled in `job`.
    async fn run(&self, which: usize, args: &Args, job: &mut JobFigures) -> u64 {
        match (self, which) {
            (Target::Postgres { pool, .. }, 0) => pg_floor(pool).await,
            (Target::Postgres { pool, .. }, 1) => pg_group_by(pool).await,
            (Target::Sqlite { path, .. }, 0) => sqlite_floor(path).await,
            (Target::Sqlite { pool, .. }, 1) => sqlite_group_by(pool).await,
            (
                Target::ClickHouse {
                    cluster, database, ..
                },
                1,
            ) => clickhouse_group_by(cluster, database).await,
            (_, _) => {
                // Each run writes the day's rollups afresh.
                let (pool, url, source) = match self {
                    Target::Postgres { pool, url } => (pool.into(), url, None),
                    Target::Sqlite { pool, url, .. } => (pool.into(), url, None),
                    Target::ClickHouse {
                        pg_pool, pg_url, ..
                    } if which == 0 => (pg_pool.into(), pg_url, None),
                    Target::ClickHouse {
                        rollups,
                        rollups_url,
                        source_url,
                        ..
                    } => (rollups.into(), rollups_url, Some(source_url.clone())),
                };
                match pool {
                    Rollups::Postgres(pool) => sqlx::query("DELETE FROM telemetry_daily")
                        .execute(pool)
                        .await
                        .map(|_| ()),
                    Rollups::Sqlite(pool) => sqlx::query("DELETE FROM telemetry_daily")
                        .execute(pool)
                        .await
                        .map(|_| ()),
                }
                .unwrap();
                let url = url.clone();
                let slices = if which == 2 { 1 } else { args.slices }.to_string();
                let memory_limit = args.memory_limit.clone();
                let (events, max_rss, spilled) = tokio::task::spawn_blocking(move || {
                    let mut job_args = vec![
                        "telemetry-daily",
                        "--date",
                        DAY,
                        "--json",
                        "--read-slices",
                        &slices,
                    ];
                    if let Some(limit) = &memory_limit {
                        job_args.extend(["--memory-limit", limit]);
                    }
                    if let Some(source) = &source {
                        job_args.extend(["--source-url", source]);
                    }
                    run_binary(&url, &job_args)
                })
                .await
                .unwrap();
                job.rss_kib = job.rss_kib.max(max_rss);
                job.spilled_bytes = job.spilled_bytes.max(spilled);
                events
            }
        }
    }
}

/// Where a contender's rollups are, to clear them before it runs.
enum Rollups<'a> {
    Postgres(&'a PgPool),
    Sqlite(&'a SqlitePool),
}

impl<'a> From<&'a PgPool> for Rollups<'a> {
    fn from(pool: &'a PgPool) -> Self {
        Rollups::Postgres(pool)
    }
}

impl<'a> From<&'a SqlitePool> for Rollups<'a> {
    fn from(pool: &'a SqlitePool) -> Self {
        Rollups::Sqlite(pool)
    }
}

/// The cluster's own `GROUP BY event` over the day, distinct users included.
async fn clickhouse_group_by(cluster: &clickhouse::Cluster, database: &str) -> u64 {
    let w = window();
    let answer = cluster
        .sql(
            0,
            format!(
                "SELECT event, count(), uniqExact(user_id) FROM {database}.telemetry_events \
                 WHERE created_at >= toDateTime({}) AND created_at < toDateTime({}) GROUP BY event FORMAT TSV",
                w.start.as_second(),
                w.end.as_second()
            ),
        )
        .await;
    answer
        .lines()
        .filter_map(|l| l.split('\t').nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The job's peak resident memory (KiB) and bytes spilled, over its runs.
#[derive(Debug, Default)]
struct JobFigures {
    rss_kib: u64,
    spilled_bytes: u64,
}

/// A process's peak resident memory, `VmHWM` of `/proc/PID/status`, read every
/// 5 ms while it runs: the mark only grows, so only the last few milliseconds'
/// growth could be missed.
struct HighWaterMark {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl HighWaterMark {
    fn watch(pid: libc::pid_t) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let kib = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
                    peak = peak.max(kib.unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            }
        });
        Self { stop, thread }
    }

    /// The peak in KiB, once the process has exited.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Runs `veris-jobs ARGS`; returns the events it read, its peak RSS in KiB and the
/// bytes it spilled.
fn run_binary(url: &str, args: &[&str]) -> (u64, u64, u64) {
    // Reaped below by wait4, which also reports the child's peak memory.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start veris-jobs");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let peak = HighWaterMark::watch(pid);
    let mut status = 0;
    // SAFETY: all-zero bytes are a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "veris-jobs failed"
    );
    let peak_kib = peak.stop();
    let report: serde_json::Value =
        serde_json::from_str(&reader.join().unwrap().unwrap()).expect("JSON report");
    let spilled = report["days"].as_array().map_or(0, |days| {
        days.iter().filter_map(|d| d["spilledBytes"].as_u64()).sum()
    });
    (
        report["totals"]["eventsRead"].as_u64().unwrap_or(0),
        // `ru_maxrss` also counts this process's size when the child was started
        // (exec keeps the larger of the two), so it is only an upper bound.
        match peak_kib {
            0 => usage.ru_maxrss as u64, // gone before its first reading
            kib => kib.min(usage.ru_maxrss as u64),
        },
        spilled,
    )
}

async fn compare(args: &Args, target: &Target) {
    let names = target.names(args.slices);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut jobs: Vec<JobFigures> = names.iter().map(|_| JobFigures::default()).collect();
    for run in 0..=args.runs {
        for (i, times) in times.iter_mut().enumerate() {
            let started = Instant::now();
            let work = target.run(i, args, &mut jobs[i]).await;
            let elapsed = started.elapsed();
            assert!(work > 0, "{} did no work", names[i]);
            if run > 0 {
                times.push(elapsed); // run 0 warms the caches
            }
        }
        eprint!(".");
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    println!("| contender | median | {} | events/s |", target.baseline());
    println!("|---|---:|---:|---:|");
    for (name, median) in names.iter().zip(&medians) {
        println!(
            "| {name} | {:.3} s | {:.2}x | {:.0} |",
            median.as_secs_f64(),
            median.as_secs_f64() / medians[0].as_secs_f64(),
            args.events as f64 / median.as_secs_f64()
        );
    }
    println!();
    for (name, job) in names.iter().zip(&jobs).filter(|(_, job)| job.rss_kib > 0) {
        println!(
            "{name}: peak resident memory {:.1} MiB; spilled to disk: {:.1} MiB",
            job.rss_kib as f64 / 1024.0,
            job.spilled_bytes as f64 / (1024.0 * 1024.0)
        );
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2
    }
}

/// The rows the job wrote for the day equal the database's own `GROUP BY`.
fn check_rollups(rollups: &[(String, i64, i64)], counted: &[(String, i64, i64)]) {
    assert_eq!(
        rollups, counted,
        "the rollups differ from the database's own count"
    );
    println!(
        "the day's {} rows equal the database's GROUP BY event (count, distinct users)",
        rollups.len()
    );
}

/// The summaries' bytes a row, and what a year of such days adds to the table.
fn print_meta_sizes(rows: i64, (meta, sketches): (f64, f64)) {
    let year_mb = |bytes: f64| bytes * rows as f64 * 365.0 / 1e6;
    println!(
        "meta on {DAY}: {meta:.0} bytes a row on average ({:.1} MB a year of such days); \
         meta_sketches: {sketches:.0} bytes a row ({:.1} MB a year)",
        year_mb(meta),
        year_mb(sketches)
    );
}

fn print_sketch_sizes(rows: i64, average: f64, largest: i64) {
    println!(
        "users_hll on {DAY}: {rows} rows, {average:.0} bytes a row on average, {largest} at most"
    );
}

/// The 365 days before the day under test filled with copies of its rollup rows
/// (sketches and all), then `veris-jobs report` over that year by week, timed; the
/// copies are removed afterwards. `execute` runs SQL with `{day}`, `{plus}` and
/// `{series}` filled in for the database; `while_copied` runs once the reports are
/// timed, before the copies go.
async fn year_report<F, Fut>(
    urls: &[(&str, String)],
    runs: usize,
    execute: F,
    while_copied: impl AsyncFnOnce(),
) where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // A day after another, as the job writes them.
    let copies = "INSERT INTO telemetry_daily \
         (date, event, count, unique_users, meta, updated_at, users_hll, meta_sketches) \
         SELECT date {plus}, event, count, unique_users, meta, updated_at, users_hll, meta_sketches \
         FROM telemetry_daily, {series} WHERE date = {day} ORDER BY n, event";
    execute(copies.to_owned()).await;
    for (how, url) in urls {
        let url = url.clone();
        let mut times = tokio::task::spawn_blocking(move || {
            (0..=runs)
                .map(|_| {
                    let started = Instant::now();
                    let output = Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
                        .env("DATABASE_URL", &url)
                        .args([
                            "report",
                            "--start-date",
                            "2023-03-13",
                            "--end-date",
                            "2024-03-11",
                            "--by",
                            "week",
                            "--json",
                        ])
                        .output()
                        .unwrap();
                    assert!(
                        output.status.success(),
                        "{}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    started.elapsed()
                })
                .skip(1)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        println!(
            "a 365-day report by week over copies of the day's rows{how} (the command, process start included): {:.0} ms (median of {runs})",
            median(&mut times).as_secs_f64() * 1000.0
        );
    }
    while_copied().await;
    execute("DELETE FROM telemetry_daily WHERE date < {day}".to_owned()).await;
}

/// The PostgreSQL server's own share of the year's report: the columns the report
/// reads, turned into what the server sends (`jsonb` goes out as its text, in the
/// binary protocol too), summed on the server so that nothing is sent. No report can
/// take less of the server's CPU.
async fn report_server_floor(pool: &PgPool, runs: usize) {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..=runs {
        let started = Instant::now();
        sqlx::query(
            "SELECT sum(octet_length(event)), sum(octet_length(meta::text)), \
             sum(octet_length(users_hll)), sum(octet_length(meta_sketches::text)) \
             FROM telemetry_daily WHERE date BETWEEN '2023-03-13' AND '2024-03-11'",
        )
        .execute(pool)
        .await
        .unwrap();
        times.push(started.elapsed());
    }
    times.remove(0);
    println!(
        "the server alone turning that year's rows into what it sends (meta and \
         meta_sketches as jsonb's text): {:.0} ms (median of {runs})",
        median(&mut times).as_secs_f64() * 1000.0
    );
}

/// `url` with TLS turned off, for a server on the same machine.
fn without_tls(url: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}sslmode=disable")
}

/// A 365-day run over days with no events: the per-day overhead.
async fn empty_year(url: &str) {
    let url = url.to_owned();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        let status = Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
            .env("DATABASE_URL", &url)
            .args([
                "telemetry-daily",
                "--start-date",
                "2023-01-01",
                "--end-date",
                "2023-12-31",
                "--json",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    })
    .await
    .unwrap();
    println!("365 empty days: {:.2} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- accuracy of the sketches

/// Weekly and monthly unique users from the report (unions of the rows' sketches)
/// against `count(DISTINCT user_id)` over the raw events.
async fn accuracy(args: &Args) {
    const START: &str = "2024-01-01";
    const END: &str = "2024-02-04";
    let (url, exists) =
        postgres_database(args, &format!("veris_bench_accuracy_{}", args.events)).await;
    let store = if exists {
        Store::connect(&url, &TableName::parse("telemetry_events").unwrap())
            .await
            .unwrap()
    } else {
        let store = Store::connect(&url, &TableName::parse("telemetry_events").unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let Database::Postgres(pg) = store.database() else {
            unreachable!()
        };
        eprintln!("loading 35 days of {} events (once)…", args.events);
        let mut copy = pg
            .pool()
            .copy_in_raw("COPY telemetry_events (event, user_id, created_at, meta) FROM STDIN")
            .await
            .unwrap();
        let mut generator = Generator::with_shape(Shape::Usual);
        let mut date: Date = START.parse().unwrap();
        while date <= END.parse().unwrap() {
            let mut buffer = Vec::new();
            generator.day(date, args.events, |row| {
                buffer.extend_from_slice(copy_text_line(&row).as_bytes())
            });
            copy.send(buffer).await.unwrap();
            date = date.tomorrow().unwrap();
        }
        copy.finish().await.unwrap();
        sqlx::raw_sql("ANALYZE telemetry_events")
            .execute(pg.pool())
            .await
            .unwrap();
        store
    };
    // Rolled up on every run, not only after loading: the job rewrites what an
    // earlier build wrote differently (sketches of other parameters, say).
    let written = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            run_binary(
                &url,
                &[
                    "telemetry-daily",
                    "--start-date",
                    START,
                    "--end-date",
                    END,
                    "--json",
                ],
            )
        }
    })
    .await
    .unwrap();
    eprintln!("rolled up {} events", written.0);
    let Database::Postgres(pg) = store.database() else {
        unreachable!()
    };
    println!(
        "# accuracy of users_hll: 35 days of {} events, 300,000 users",
        args.events
    );
    for (by, bucket) in [
        (
            "week",
            "date_trunc('week', created_at AT TIME ZONE 'UTC')::date",
        ),
        (
            "month",
            "date_trunc('month', created_at AT TIME ZONE 'UTC')::date",
        ),
    ] {
        let exact: Vec<(String, Option<String>, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {bucket}::text, event, count(DISTINCT user_id) FROM telemetry_events \
             GROUP BY GROUPING SETS (({bucket}, event), ({bucket}))"
        )))
        .fetch_all(pg.pool())
        .await
        .unwrap();
        let url = url.clone();
        let report = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_veris-jobs"))
                .env("DATABASE_URL", &url)
                .args([
                    "report",
                    "--start-date",
                    START,
                    "--end-date",
                    END,
                    "--by",
                    by,
                    "--json",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&report.stdout).expect("a JSON report");
        let mut errors = Vec::new();
        for period in report["periods"].as_array().unwrap() {
            // A period's bucket is the week's Monday or the month's first day.
            let start: Date = period["start"].as_str().unwrap().parse().unwrap();
            let key = match by {
                "week" => start
                    .checked_sub(
                        jiff::Span::new().days(i64::from(start.weekday().to_monday_zero_offset())),
                    )
                    .unwrap(),
                _ => start.first_of_month(),
            }
            .to_string();
            let lookup = |event: Option<&str>| {
                exact
                    .iter()
                    .find(|(b, e, _)| b == &key && e.as_deref() == event)
                    .map(|r| r.2)
                    .unwrap()
            };
            let mut measure = |estimate: &serde_json::Value, exact: i64| {
                let estimate = estimate.as_f64().unwrap();
                errors.push((estimate - exact as f64).abs() / exact as f64);
            };
            for event in period["events"].as_array().unwrap() {
                measure(&event["uniqueUsers"], lookup(event["event"].as_str()));
            }
            measure(&period["total"]["uniqueUsers"], lookup(None));
        }
        errors.sort_by(f64::total_cmp);
        let over = errors.iter().filter(|e| **e > 0.02).count();
        println!(
            "by {by}: {} unions (each event and all events, each period); relative error median {:.2}%, 95th percentile {:.2}%, largest {:.2}%; over 2%: {over}",
            errors.len(),
            errors[errors.len() / 2] * 100.0,
            errors[errors.len() * 95 / 100] * 100.0,
            errors[errors.len() - 1] * 100.0,
        );
    }
}
