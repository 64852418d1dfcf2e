//! Percentiles of numbers: each row's `p50`, `p90`, `p99` against the exact
//! percentile of the raw numbers (sorted, the contract's rank), its `meta_sketches`
//! decoded by a reader of the protobuf written here and compared bin by bin with the
//! numbers' own bins, a week's merged percentiles against all its numbers, rows
//! without sketches named by the report, and Datadog's Python library reading and
//! merging the stored sketches.

use std::collections::BTreeMap;

use serde_json::Value;
use veris_jobs::model::DayRange;
use veris_jobs::model::ddsketch::DdSketch;
use veris_jobs::report::{Grouping, ReportRequest, telemetry_report};
use veris_jobs::store::NewEvent;

use crate::common::{Kind, TestDb, range_options};
use crate::on_both_databases;

on_both_databases!(
    every_row_s_percentiles_are_within_one_percent_and_its_sketches_hold_its_numbers,
    a_week_merges_its_days_sketches_and_names_the_days_without_them,
);

/// The week the tests write: Monday 2024-01-01 to Sunday 2024-01-07.
const DAYS: [&str; 7] = [
    "2024-01-01",
    "2024-01-02",
    "2024-01-03",
    "2024-01-04",
    "2024-01-05",
    "2024-01-06",
    "2024-01-07",
];

/// A xorshift generator: the same numbers on every run.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A number written: (day, event, key, number).
type Number = (String, String, String, f64);

/// A number key whose name JSON escapes (the stores write the sketches' keys
/// as JSON text).
const ESCAPED_KEY: &str = "say \"hi\"\\ \u{1}";

/// The week's events: (day, event, key, number) for every number written, and the
/// events themselves. Keys: `ms` (positive, five decades), `delta` (negatives,
/// zeros, repeats), `huge` (around 1e300), `tiny` (around 1e-300, some negative),
/// `once` (a single number a day), [`ESCAPED_KEY`] and `plan` (text, no numbers).
fn week() -> (Vec<Number>, Vec<NewEvent>) {
    let mut rng = Numbers(0x5eed_cafe_f00d);
    let mut numbers = Vec::new();
    let mut events = Vec::new();
    for day in DAYS {
        for i in 0..240u32 {
            let event = if rng.below(3) == 0 {
                "purchase"
            } else {
                "page_view"
            };
            let mut meta = serde_json::Map::new();
            let mut put = |key: &str, x: f64, meta: &mut serde_json::Map<String, Value>| {
                meta.insert(key.into(), serde_json::json!(x));
                numbers.push((day.to_owned(), event.to_owned(), key.to_owned(), x));
            };
            put("ms", 0.5 * 10f64.powf(5.0 * rng.unit()), &mut meta);
            let delta = match rng.below(4) {
                0 => 0.0,
                1 => -3.25,
                2 => -(rng.below(1000) as f64),
                _ => rng.unit() * 50.0,
            };
            put("delta", delta, &mut meta);
            if rng.below(4) == 0 {
                put("huge", 1e300 * (1.0 + 100.0 * rng.unit()), &mut meta);
            }
            if rng.below(4) == 0 {
                let sign = if rng.below(2) == 0 { -1.0 } else { 1.0 };
                put("tiny", sign * 1e-300 * (1.0 + 1e6 * rng.unit()), &mut meta);
            }
            if i % 5 == 0 {
                put(ESCAPED_KEY, 1.0 + rng.below(300) as f64, &mut meta);
            }
            if i == 7 {
                put("once", 42.4242, &mut meta);
            }
            meta.insert(
                "plan".into(),
                Value::from(["free", "pro"][rng.below(2) as usize]),
            );
            events.push(NewEvent {
                event: Some(event.to_owned()),
                user_id: Some(format!("u{}", rng.below(50))),
                created_at: format!("{day}T{:02}:{:02}:00Z", i % 24, i % 60)
                    .parse()
                    .unwrap(),
                meta: Some(Value::Object(meta).to_string()),
            });
        }
    }
    (numbers, events)
}

/// The exact percentile: the number at 0-based rank floor(q * (n - 1)) of `sorted`,
/// for q = numerator / denominator.
fn exact(sorted: &[f64], numerator: usize, denominator: usize) -> f64 {
    sorted[(sorted.len() - 1) * numerator / denominator]
}

const QUANTILES: [(&str, usize, usize); 3] = [("p50", 1, 2), ("p90", 9, 10), ("p99", 99, 100)];

fn assert_within_one_percent(what: &str, estimate: f64, exact: f64) {
    let bound = 0.01 * exact.abs() * (1.0 + 1e-9);
    assert!(
        (estimate - exact).abs() <= bound,
        "{what}: {estimate} is not within 1% of {exact}"
    );
}

/// Every number of each (day, event, key), sorted.
fn sorted_by_row(numbers: &[Number]) -> BTreeMap<(String, String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for (day, event, key, x) in numbers {
        out.entry((day.clone(), event.clone(), key.clone()))
            .or_default()
            .push(*x);
    }
    for numbers in out.values_mut() {
        numbers.sort_by(f64::total_cmp);
    }
    out
}

/// (date, event, meta, meta_sketches) of every row.
async fn rows(db: &TestDb) -> Vec<(String, String, Value, Option<Value>)> {
    let dates = db
        .strings(
            "SELECT date || '|' || event FROM telemetry_daily ORDER BY date, event",
            None,
        )
        .await;
    let metas = db
        .strings(
            "SELECT CAST(meta AS text) FROM telemetry_daily ORDER BY date, event",
            None,
        )
        .await;
    let sketches = db
        .strings(
            "SELECT coalesce(CAST(meta_sketches AS text), 'null') FROM telemetry_daily \
             ORDER BY date, event",
            None,
        )
        .await;
    dates
        .into_iter()
        .zip(metas)
        .zip(sketches)
        .map(|((key, meta), sketches)| {
            let (date, event) = key.split_once('|').unwrap();
            let sketches: Value = serde_json::from_str(&sketches).unwrap();
            (
                date.to_owned(),
                event.to_owned(),
                serde_json::from_str(&meta).unwrap(),
                (!sketches.is_null()).then_some(sketches),
            )
        })
        .collect()
}

async fn every_row_s_percentiles_are_within_one_percent_and_its_sketches_hold_its_numbers(
    db: TestDb,
) {
    let (numbers, events) = week();
    db.insert(&events).await;
    let report = db.run(&range_options(DAYS[0], DAYS[6])).await;
    assert!(report.ok, "{report:?}");
    let expected = sorted_by_row(&numbers);
    let stored = rows(&db).await;
    assert_eq!(stored.len(), 14);
    let mut keys_checked = 0;
    for (date, event, meta, sketches) in &stored {
        let sketches = sketches
            .as_ref()
            .expect("every row written now has sketches");
        let numeric: Vec<&String> = expected
            .keys()
            .filter(|(d, e, _)| d == date && e == event)
            .map(|(_, _, key)| key)
            .collect();
        // Only keys with numbers have sketches: `plan` has none.
        let mut sketch_keys: Vec<&String> = sketches.as_object().unwrap().keys().collect();
        sketch_keys.sort();
        assert_eq!(sketch_keys, numeric, "{date} {event}");
        assert!(meta["plan"].get("p50").is_none());
        for key in numeric {
            let sorted = &expected[&(date.clone(), event.clone(), key.clone())];
            let stats = &meta[key.as_str()];
            assert_eq!(stats["n"].as_u64().unwrap(), sorted.len() as u64);
            assert_eq!(stats["min"].as_f64().unwrap(), sorted[0]);
            assert_eq!(stats["max"].as_f64().unwrap(), *sorted.last().unwrap());
            for (name, numerator, denominator) in QUANTILES {
                assert_within_one_percent(
                    &format!("{date} {event} {key} {name}"),
                    stats[name].as_f64().unwrap(),
                    exact(sorted, numerator, denominator),
                );
            }
            // The stored bytes, read by this file's own protobuf reader, hold each
            // number in its bin: (gamma^(k-1), gamma^k] by magnitude.
            let text = sketches[key.as_str()].as_str().unwrap();
            let decoded = decode::sketch(&base64_decode(text));
            assert_eq!(
                decoded.gamma.to_bits(),
                ((1.0 + 0.01) / (1.0 - 0.01f64)).to_bits()
            );
            assert_eq!(decoded.index_offset, 0.0);
            assert_eq!(decoded.interpolation, 0);
            let (positive, negative, zeros) = bins_of(sorted);
            assert_eq!(
                decoded.positive, positive,
                "{date} {event} {key}: positive bins"
            );
            assert_eq!(
                decoded.negative, negative,
                "{date} {event} {key}: negative bins"
            );
            assert_eq!(decoded.zero_count, zeros, "{date} {event} {key}: zeros");
            // A round trip through the crate gives the same bytes.
            assert_eq!(DdSketch::from_base64(text).unwrap().to_base64(), text);
            keys_checked += 1;
        }
    }
    assert!(keys_checked >= 14 * 4, "{keys_checked} keys checked");

    // A re-run leaves every row as it was.
    let again = db.run(&range_options(DAYS[0], DAYS[6])).await;
    assert_eq!(again.totals.unchanged, 14, "{again:?}");
    assert_eq!(rows(&db).await, stored);
}

/// The bins of `numbers` as the contract describes them, computed here with natural
/// logarithms: key k holds magnitudes in (gamma^(k-1), gamma^k].
fn bins_of(numbers: &[f64]) -> (BTreeMap<i32, f64>, BTreeMap<i32, f64>, f64) {
    let gamma = (1.0 + 0.01) / (1.0 - 0.01f64);
    let (mut positive, mut negative, mut zeros) = (BTreeMap::new(), BTreeMap::new(), 0.0);
    for &x in numbers {
        if x == 0.0 {
            zeros += 1.0;
            continue;
        }
        let k = (x.abs().ln() / gamma.ln()).ceil() as i32;
        let side = if x > 0.0 {
            &mut positive
        } else {
            &mut negative
        };
        *side.entry(k).or_insert(0.0) += 1.0;
    }
    (positive, negative, zeros)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|&b| b != b'=') {
        let value = ALPHABET.iter().position(|&a| a == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    out
}

/// A reader of the `DDSketch` message of `ddsketch.proto`, from the protobuf wire
/// format: what another implementation would see in the stored bytes.
mod decode {
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    pub struct Sketch {
        pub gamma: f64,
        pub index_offset: f64,
        pub interpolation: u64,
        pub positive: BTreeMap<i32, f64>,
        pub negative: BTreeMap<i32, f64>,
        pub zero_count: f64,
    }

    enum Field<'a> {
        Varint(u64),
        Fixed64(u64),
        Bytes(&'a [u8]),
    }

    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut n = 0;
        for shift in (0..64).step_by(7) {
            let byte = bytes[0];
            *bytes = &bytes[1..];
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return n;
            }
        }
        panic!("varint over 64 bits")
    }

    fn fields(mut bytes: &[u8]) -> Vec<(u64, Field<'_>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let tag = varint(&mut bytes);
            let field = match tag & 7 {
                0 => Field::Varint(varint(&mut bytes)),
                1 => {
                    let (eight, rest) = bytes.split_at(8);
                    bytes = rest;
                    Field::Fixed64(u64::from_le_bytes(eight.try_into().unwrap()))
                }
                2 => {
                    let len = varint(&mut bytes) as usize;
                    let (inside, rest) = bytes.split_at(len);
                    bytes = rest;
                    Field::Bytes(inside)
                }
                wire => panic!("wire type {wire} is not in ddsketch.proto"),
            };
            out.push((tag >> 3, field));
        }
        out
    }

    fn zigzag(n: u64) -> i32 {
        ((n >> 1) as i64 ^ -((n & 1) as i64)) as i32
    }

    fn store(bytes: &[u8]) -> BTreeMap<i32, f64> {
        let mut counts = Vec::new();
        let mut offset = 0;
        let mut sparse = BTreeMap::new();
        for (number, field) in fields(bytes) {
            match (number, field) {
                (1, Field::Bytes(entry)) => {
                    let (mut key, mut count) = (0, 0.0);
                    for (n, f) in fields(entry) {
                        match (n, f) {
                            (1, Field::Varint(k)) => key = zigzag(k),
                            (2, Field::Fixed64(c)) => count = f64::from_bits(c),
                            _ => panic!("unexpected field in a binCounts entry"),
                        }
                    }
                    *sparse.entry(key).or_insert(0.0) += count;
                }
                (2, Field::Bytes(packed)) => counts.extend(
                    packed
                        .chunks(8)
                        .map(|c| f64::from_bits(u64::from_le_bytes(c.try_into().unwrap()))),
                ),
                (2, Field::Fixed64(c)) => counts.push(f64::from_bits(c)),
                (3, Field::Varint(n)) => offset = zigzag(n),
                _ => panic!("unexpected field in a Store"),
            }
        }
        for (at, count) in counts.into_iter().enumerate() {
            if count != 0.0 {
                *sparse.entry(offset + at as i32).or_insert(0.0) += count;
            }
        }
        sparse
    }

    pub fn sketch(bytes: &[u8]) -> Sketch {
        let mut out = Sketch::default();
        for (number, field) in fields(bytes) {
            match (number, field) {
                (1, Field::Bytes(mapping)) => {
                    for (n, f) in fields(mapping) {
                        match (n, f) {
                            (1, Field::Fixed64(g)) => out.gamma = f64::from_bits(g),
                            (2, Field::Fixed64(o)) => out.index_offset = f64::from_bits(o),
                            (3, Field::Varint(i)) => out.interpolation = i,
                            _ => panic!("unexpected field in an IndexMapping"),
                        }
                    }
                }
                (2, Field::Bytes(positive)) => out.positive = store(positive),
                (3, Field::Bytes(negative)) => out.negative = store(negative),
                (4, Field::Fixed64(zeros)) => out.zero_count = f64::from_bits(zeros),
                _ => panic!("unexpected field in a DDSketch"),
            }
        }
        out
    }
}

async fn a_week_merges_its_days_sketches_and_names_the_days_without_them(db: TestDb) {
    let (numbers, events) = week();
    db.insert(&events).await;
    assert!(db.run(&range_options(DAYS[0], DAYS[6])).await.ok);
    let range = DayRange::new(DAYS[0].parse().unwrap(), DAYS[6].parse().unwrap()).unwrap();
    let request = ReportRequest {
        range,
        by: Grouping::Week,
        events: Vec::new(),
        top_k: 20,
        timezone: jiff::tz::TimeZone::UTC,
    };
    let report = telemetry_report(&db.store, &request).await.unwrap();
    assert_eq!(report.periods.len(), 1);
    let week = &report.periods[0];
    assert!(week.missing_meta_sketches.is_empty());
    for event in &week.events {
        let meta = event.meta.to_value().unwrap();
        for key in ["ms", "delta", "huge", "tiny", "once", ESCAPED_KEY] {
            let mut all: Vec<f64> = numbers
                .iter()
                .filter(|(_, e, k, _)| *e == event.event && k == key)
                .map(|(_, _, _, x)| *x)
                .collect();
            all.sort_by(f64::total_cmp);
            for (name, numerator, denominator) in QUANTILES {
                assert_within_one_percent(
                    &format!("week {} {key} {name}", event.event),
                    meta[key][name].as_f64().unwrap(),
                    exact(&all, numerator, denominator),
                );
            }
        }
    }

    // A day written before sketches were kept: its period says so and gives no
    // percentiles that would miss its numbers, until the day is run again.
    db.execute("UPDATE telemetry_daily SET meta_sketches = NULL WHERE date = '2024-01-03'")
        .await;
    let report = telemetry_report(&db.store, &request).await.unwrap();
    let week = &report.periods[0];
    assert_eq!(week.missing_meta_sketches, vec!["2024-01-03".to_owned()]);
    let json = serde_json::to_value(week).unwrap();
    assert_eq!(
        json["missingMetaSketches"],
        serde_json::json!(["2024-01-03"])
    );
    for event in &week.events {
        let meta = event.meta.to_value().unwrap();
        assert!(meta["ms"].get("p50").is_none(), "{meta}");
        assert!(meta["ms"].get("sum").is_some(), "{meta}");
    }
    let rerun = db.run(&range_options("2024-01-03", "2024-01-03")).await;
    assert_eq!(
        rerun.totals.updated, 2,
        "a row whose sketches differ is updated: {rerun:?}"
    );
    let report = telemetry_report(&db.store, &request).await.unwrap();
    assert!(report.periods[0].missing_meta_sketches.is_empty());

    // Sketches that are not an object of base64 texts are unreadable, not an error.
    db.execute(r#"UPDATE telemetry_daily SET meta_sketches = '["x"]' WHERE date = '2024-01-02'"#)
        .await;
    db.execute(
        r#"UPDATE telemetry_daily SET meta_sketches = '{"ms": 5}' WHERE date = '2024-01-05'"#,
    )
    .await;
    let report = telemetry_report(&db.store, &request).await.unwrap();
    assert_eq!(
        report.periods[0].missing_meta_sketches,
        vec!["2024-01-02".to_owned(), "2024-01-05".to_owned()]
    );
}

/// What Python's `ddsketch` prints for sketches given on stdin, one base64 text a
/// line: each decoded from its protobuf, all merged into a sketch of the library's
/// own (which it allows only for a gamma bit for bit its own), then p50, p90, p99.
const PYTHON_MERGE: &str = r#"
import json, sys, base64
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto, pb
merged = DDSketch(relative_accuracy=0.01)
for line in sys.stdin.read().split():
    message = pb.DDSketch()
    message.ParseFromString(base64.b64decode(line))
    merged.merge(DDSketchProto.from_proto(message))
print(json.dumps([merged.count] + [merged.get_quantile_value(q) for q in (0.5, 0.9, 0.99)]))
"#;

/// Python's `ddsketch` on `sketches`, or `None` when it is not installed outside CI.
fn python_merge(sketches: &[&str]) -> Option<Vec<f64>> {
    let out = crate::common::run_with_input(
        "python3",
        &["-c", PYTHON_MERGE],
        sketches.join("\n").as_bytes(),
        "the ddsketch interop test",
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No module named") && std::env::var("CI").as_deref() != Ok("true") {
            crate::common::skipping(
                "the ddsketch interop test passes without running: pip install ddsketch protobuf",
            );
            return None;
        }
        panic!("python's ddsketch failed: {stderr}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_s_ddsketch_reads_and_merges_the_stored_sketches() {
    let db = TestDb::new(Kind::Sqlite).await.unwrap();
    let (numbers, events) = week();
    db.insert(&events).await;
    assert!(db.run(&range_options(DAYS[0], DAYS[6])).await.ok);
    let rows = rows(&db).await;
    for event in ["page_view", "purchase"] {
        for key in ["ms", "delta", "tiny"] {
            let texts: Vec<&str> = rows
                .iter()
                .filter(|(_, e, _, _)| e == event)
                .map(|(_, _, _, sketches)| sketches.as_ref().unwrap()[key].as_str().unwrap())
                .collect();
            assert_eq!(texts.len(), 7);
            let Some(merged) = python_merge(&texts) else {
                return;
            };
            let mut all: Vec<f64> = numbers
                .iter()
                .filter(|(_, e, k, _)| e == event && k == key)
                .map(|(_, _, _, x)| *x)
                .collect();
            all.sort_by(f64::total_cmp);
            assert_eq!(merged[0], all.len() as f64, "{event} {key}: count");
            for (at, (name, numerator, denominator)) in QUANTILES.into_iter().enumerate() {
                assert_within_one_percent(
                    &format!("python, week of {event} {key} {name}"),
                    merged[at + 1],
                    exact(&all, numerator, denominator),
                );
            }
        }
    }
}
