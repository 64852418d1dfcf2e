//! A realistic day of telemetry with a fixed seed.
//!
//! 50 event names with Zipf-like frequencies; user ids from 300,000 users with
//! Zipf-like activity, 10% anonymous; `meta` objects with 2 to 5 keys drawn from
//! `plan` (5 values), `path` (about 2,000 values, long tail), `browser` (8),
//! `duration_ms` (a number) and `success` (a boolean); about 0.1% odd metas (arrays,
//! strings, a nested object). The day under test holds N events; the days before
//! and after hold N/10 each.
//!
//! The `distinct-users` shape is the worst case for memory: every event comes from a
//! user id of its own (device ids of anonymous visitors), and every `meta` carries a
//! `trace_id` that is different each time, beside `plan` and `path` as above.

use std::fmt::Write as _;

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

pub const SEED: u64 = 20_240_312;
pub const USERS: usize = 300_000;
const PATHS: usize = 2_000;
const PLANS: [&str; 5] = ["free", "pro", "team", "enterprise", "trial"];
const BROWSERS: [&str; 8] = [
    "chrome", "safari", "firefox", "edge", "samsung", "opera", "brave", "other",
];

/// Frequencies falling off as 1/rank^s, sampled by binary search on the CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect();
        Self { cdf }
    }

    fn sample(&self, rng: &mut SmallRng) -> usize {
        let total = self.cdf[self.cdf.len() - 1];
        let u = rng.random::<f64>() * total;
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// One generated event, borrowing the generator's buffers.
pub struct Row<'a> {
    pub event: &'a str,
    pub user_id: Option<&'a str>,
    pub created_at: Timestamp,
    pub meta: &'a str,
}

/// Which day to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// 300,000 users, a few keys of bounded cardinality.
    Usual,
    /// A user and a trace id of its own for every event.
    DistinctUsers,
}

/// The generator: call [`Generator::day`] for each day to fill.
pub struct Generator {
    shape: Shape,
    serial: u64,
    rng: SmallRng,
    names: Vec<String>,
    name_dist: Zipf,
    user_dist: Zipf,
    path_dist: Zipf,
    user: String,
    meta: String,
}

impl Generator {
    pub fn with_shape(shape: Shape) -> Self {
        let mut names: Vec<String> = [
            "page_view",
            "click",
            "search",
            "scroll",
            "sign_in",
            "add_to_cart",
            "purchase",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        while names.len() < 50 {
            names.push(format!("feature_{:02}", names.len()));
        }
        Self {
            shape,
            serial: 0,
            rng: SmallRng::seed_from_u64(SEED),
            names,
            name_dist: Zipf::new(50, 1.1),
            user_dist: Zipf::new(USERS, 1.0),
            path_dist: Zipf::new(PATHS, 1.1),
            user: String::new(),
            meta: String::new(),
        }
    }

    /// Generates `count` events spread over `date` (UTC), handing each to `emit`.
    pub fn day(&mut self, date: Date, count: u64, mut emit: impl FnMut(Row<'_>)) {
        let start = date
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .expect("valid date")
            .timestamp();
        let micros_per_day = 86_400_000_000i64;
        for _ in 0..count {
            let at = start + SignedDuration::from_micros(self.rng.random_range(0..micros_per_day));
            let name = self.name_dist.sample(&mut self.rng);
            let anonymous = self.shape == Shape::Usual && self.rng.random_bool(0.1);
            self.serial += 1;
            if self.shape == Shape::DistinctUsers {
                self.user.clear();
                let _ = write!(self.user, "device-{:016x}", self.rng.random::<u64>());
                self.fill_distinct_meta();
            } else {
                if !anonymous {
                    self.user.clear();
                    let _ = write!(self.user, "user_{}", self.user_dist.sample(&mut self.rng));
                }
                self.fill_meta();
            }
            emit(Row {
                event: &self.names[name],
                user_id: (!anonymous).then_some(self.user.as_str()),
                created_at: at,
                meta: &self.meta,
            });
        }
    }

    /// A trace id of its own, beside two ordinary keys.
    fn fill_distinct_meta(&mut self) {
        self.meta.clear();
        let _ = write!(
            self.meta,
            r#"{{"trace_id":"{:016x}{:08x}","plan":"{}","path":"/p/{}"}}"#,
            self.rng.random::<u64>(),
            self.serial,
            PLANS[self.rng.random_range(0..PLANS.len())],
            self.path_dist.sample(&mut self.rng)
        );
    }

    fn fill_meta(&mut self) {
        self.meta.clear();
        if self.rng.random_bool(0.001) {
            let odd = [
                r#"[1,2,3]"#,
                r#""just a string""#,
                r#"{"nested":{"b":[true,null],"a":1},"plan":"pro"}"#,
            ];
            self.meta.push_str(odd[self.rng.random_range(0..odd.len())]);
            return;
        }
        let mut keys = [0usize, 1, 2, 3, 4];
        let count = self.rng.random_range(2..=5);
        for i in 0..count {
            let j = self.rng.random_range(i..keys.len());
            keys.swap(i, j);
        }
        self.meta.push('{');
        for (n, key) in keys[..count].iter().enumerate() {
            if n > 0 {
                self.meta.push(',');
            }
            let _ = match key {
                0 => write!(
                    self.meta,
                    r#""plan":"{}""#,
                    PLANS[self.rng.random_range(0..PLANS.len())]
                ),
                1 => write!(
                    self.meta,
                    r#""path":"/p/{}""#,
                    self.path_dist.sample(&mut self.rng)
                ),
                2 => write!(
                    self.meta,
                    r#""browser":"{}""#,
                    BROWSERS[self.rng.random_range(0..BROWSERS.len())]
                ),
                3 => write!(
                    self.meta,
                    r#""duration_ms":{}"#,
                    self.rng.random_range(1..10_000)
                ),
                _ => write!(self.meta, r#""success":{}"#, self.rng.random_bool(0.95)),
            };
        }
        self.meta.push('}');
    }
}
