//! The benchmark's ClickHouse side: the two-shard cluster of the tests
//! (`tests/clickhouse/cluster.sh`), its data kept under the target folder so that a
//! day is loaded once, and the split of the job's time between the shards, read from
//! each server's `system.query_log`.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::generator::{Generator, Shape};

/// The README's sorting key: a day's events of one name lie together.
const SORTING_KEY: &str = "event, created_at, id";

/// The cluster, started for this process (its watchdog stops the servers when the
/// benchmark exits; the data stays).
pub struct Cluster {
    pub http: [u16; 2],
    client: reqwest::Client,
}

impl Cluster {
    pub fn start(dir: &Path) -> Self {
        // All six are held until all are chosen: a port released at once can be
        // handed out again by the next bind.
        let listeners: Vec<TcpListener> = (0..6)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("a bound port").port())
            .collect();
        drop(listeners);
        let status = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clickhouse/cluster.sh"
        ))
        .env("CLICKHOUSE_KEEP_DATA", "1")
        .arg("start")
        .arg(dir)
        .args(ports.iter().map(u16::to_string))
        .arg(std::process::id().to_string())
        .status()
        .expect("run tests/clickhouse/cluster.sh (is clickhouse-server installed?)");
        assert!(status.success(), "the ClickHouse cluster did not start");
        Self {
            http: [ports[0], ports[3]],
            client: reqwest::Client::new(),
        }
    }

    /// One statement on one server (0 or 1); its answer.
    pub async fn sql(&self, server: usize, sql: String) -> String {
        let response = self
            .client
            .post(format!(
                "http://127.0.0.1:{}/?insert_distributed_sync=1",
                self.http[server]
            ))
            .body(sql)
            .send()
            .await
            .expect("ClickHouse answers");
        let status = response.status();
        let text = response.text().await.expect("an answer");
        assert!(status.is_success(), "{status} {text}");
        text
    }

    pub async fn version(&self) -> String {
        self.sql(0, "SELECT version()".into())
            .await
            .trim()
            .to_owned()
    }

    /// Database `db` on both servers with the README's tables, holding `days` of the
    /// generator's events (the PostgreSQL database of the same name holds the same
    /// ones), loaded unless they are there already.
    pub async fn load(&self, db: &str, days: &[(jiff::civil::Date, u64)], shape: Shape) {
        let expected: u64 = days.iter().map(|(_, n)| n).sum();
        let mut sorted_as_the_readme = true;
        for server in 0..2 {
            let found = self
                .sql(
                    server,
                    format!(
                        "SELECT count() FROM system.tables WHERE database = '{db}' \
                         AND name = 'telemetry_events_local' AND sorting_key = '{SORTING_KEY}'"
                    ),
                )
                .await;
            sorted_as_the_readme &= found.trim() == "1";
        }
        if sorted_as_the_readme {
            let have = self
                .sql(0, format!("SELECT count() FROM {db}.telemetry_events"))
                .await;
            if have.trim().parse::<u64>().ok() == Some(expected) {
                return;
            }
        }
        eprintln!("loading {expected} events into ClickHouse (once; later runs reuse them)…");
        let started = std::time::Instant::now();
        for server in 0..2 {
            self.sql(server, format!("DROP DATABASE IF EXISTS {db}"))
                .await;
            self.sql(server, format!("CREATE DATABASE {db}")).await;
            self.sql(
                server,
                format!(
                    "CREATE TABLE {db}.telemetry_events_local (event String, user_id Nullable(String), \
                     created_at DateTime('UTC'), meta String, id UInt64) \
                     ENGINE = MergeTree PARTITION BY toYYYYMMDD(created_at) ORDER BY ({SORTING_KEY})"
                ),
            )
            .await;
            self.sql(
                server,
                format!(
                    "CREATE TABLE {db}.telemetry_events AS {db}.telemetry_events_local \
                     ENGINE = Distributed(veris_test_cluster, {db}, telemetry_events_local, \
                     cityHash64(ifNull(user_id, '')))"
                ),
            )
            .await;
        }
        let mut generator = Generator::with_shape(shape);
        let mut id = 0u64;
        for &(date, events) in days {
            let mut left = events;
            while left > 0 {
                let n = left.min(250_000);
                let mut body = format!(
                    "INSERT INTO {db}.telemetry_events (event, user_id, created_at, meta, id) FORMAT TabSeparated\n"
                );
                // Generated values hold no tab, newline or backslash. The column
                // keeps whole seconds, which never moves an event to another day.
                generator.day(date, n, |row| {
                    id += 1;
                    let _ = writeln!(
                        body,
                        "{}\t{}\t{}\t{}\t{id}",
                        row.event,
                        row.user_id.unwrap_or("\\N"),
                        row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                        row.meta
                    );
                });
                self.sql(0, body).await;
                left -= n;
            }
        }
        for server in 0..2 {
            self.sql(
                server,
                format!("OPTIMIZE TABLE {db}.telemetry_events_local FINAL"),
            )
            .await;
        }
        eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    }

    /// The job's queries since `since` (a UNIX second) as each server logged them:
    /// the job's own on server 1, and the parts each shard ran for them, by step.
    pub async fn split(&self, since: i64) -> String {
        for server in 0..2 {
            self.sql(server, "SYSTEM FLUSH LOGS".into()).await;
        }
        let step = "multiIf(position(query, 'uniqExactIf') > 0, '1. names: events, distinct users, registers', \
             position(query, 'groupUniqArray') > 0, '2. explicit sketches', \
             position(query, 'arrayJoin') > 0, '3. metadata', \
             position(query, 'DISTINCT') > 0, '0. names of the day', 'other')";
        let ids = self
            .sql(
                0,
                format!(
                    "SELECT query_id FROM system.query_log WHERE type = 2 AND is_initial_query \
                     AND http_user_agent LIKE 'veris-jobs/%' AND query_start_time >= toDateTime({since}) \
                     FORMAT TSV"
                ),
            )
            .await;
        let ids: Vec<String> = ids.lines().map(|id| format!("'{id}'")).collect();
        assert!(!ids.is_empty(), "the job's queries are in the query log");
        let ids = ids.join(", ");
        let mut table = String::from(
            "| step | the job's query, server 1 | shard 1 | shard 2 | rows read, shard 1 / 2 | result rows |\n|---|---:|---:|---:|---:|---:|\n",
        );
        let initial = self
            .sql(
                0,
                format!(
                    "SELECT {step} AS step, sum(query_duration_ms), sum(result_rows) FROM system.query_log \
                     WHERE type = 2 AND query_id IN ({ids}) GROUP BY step ORDER BY step FORMAT TSV"
                ),
            )
            .await;
        let mut shards = Vec::new();
        for server in 0..2 {
            shards.push(
                self.sql(
                    server,
                    format!(
                        "SELECT {step} AS step, sum(query_duration_ms), sum(read_rows) FROM system.query_log \
                         WHERE type = 2 AND NOT is_initial_query AND initial_query_id IN ({ids}) \
                         GROUP BY step FORMAT TSV"
                    ),
                )
                .await,
            );
        }
        let shard = |server: usize, step: &str| -> (u64, u64) {
            shards[server]
                .lines()
                .map(|l| l.split('\t').collect::<Vec<_>>())
                .find(|f| f[0] == step)
                .map_or((0, 0), |f| {
                    (f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0))
                })
        };
        let mut totals = [0u64; 3];
        for line in initial.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let (ms, result_rows) = (fields[1].parse::<u64>().unwrap_or(0), fields[2]);
            let (one, two) = (shard(0, fields[0]), shard(1, fields[0]));
            totals[0] += ms;
            totals[1] += one.0;
            totals[2] += two.0;
            let _ = writeln!(
                table,
                "| {} | {ms} ms | {} ms | {} ms | {} / {} | {result_rows} |",
                fields[0], one.0, two.0, one.1, two.1
            );
        }
        let _ = writeln!(
            table,
            "| all | {} ms | {} ms | {} ms | | |",
            totals[0], totals[1], totals[2]
        );
        table
    }
}
