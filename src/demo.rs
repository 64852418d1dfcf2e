//! `veris-jobs demo`: a few days of realistic sample events, rolled up.
//!
//! The sample covers the three days ending yesterday: several event names with
//! skewed frequencies, signed-in and anonymous users, metadata with strings,
//! numbers, booleans and a nested object, and a few malformed events. The demo
//! remembers which events it wrote, replaces them when run again, and refuses to
//! touch a source that holds events it did not write.

use std::fmt::Write as _;

use jiff::tz::TimeZone;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::error::Error;
use crate::launcher::Launcher;
use crate::model::{DayRange, DayWindow, RollupRow, RunReport};
use crate::store::{NewEvent, TableName};

/// Days the sample covers, ending yesterday.
const SAMPLE_DAYS: u32 = 3;

/// What the demo did: the events it wrote, the run over them, and the last day's rows.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The source table written to.
    pub source: TableName,
    /// How many sample events were written.
    pub events_written: usize,
    /// The days they cover.
    pub range: DayRange,
    /// The run of `telemetry-daily` over those days.
    pub report: RunReport,
    /// The rollup rows of the last day, biggest first.
    pub last_day: Vec<RollupRow>,
}

impl DemoOutcome {
    /// What the demo did, as a terminal shows it.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "demo: wrote {} sample events over {} .. {} into {}\n\n",
            self.events_written,
            self.range.start(),
            self.range.end(),
            self.source
        );
        out.push_str(&self.report.to_table());
        let _ = writeln!(out, "\ntelemetry_daily on {}:", self.range.end());
        let _ = writeln!(out, "{:<12} {:>6} {:>6}  meta", "event", "count", "users");
        for row in &self.last_day {
            let meta = glimpse(&row.meta, 90);
            let _ = writeln!(
                out,
                "{:<12} {:>6} {:>6}  {meta}",
                row.event, row.count, row.unique_users
            );
        }
        let _ = writeln!(
            out,
            "\nNext (from a checkout, `cargo run --release --` in place of `veris-jobs`):\n\
             - a dry run over the same days:\n    \
             veris-jobs telemetry-daily --start-date {start} --end-date {end} --dry-run\n\
             - the rollups read back, by day:\n    \
             veris-jobs report --start-date {start} --end-date {end}\n\
             - the dashboard, served with a secret of 16 characters or more:\n    \
             export CRON_SECRET=$(openssl rand -hex 16); echo $CRON_SECRET\n    \
             veris-jobs serve\n  \
             then open http://127.0.0.1:3000/ and enter the secret.",
            start = self.range.start(),
            end = self.range.end()
        );
        out
    }
}

/// Runs the demo: sample events over the days ending yesterday in the launcher's zone,
/// and the job over them.
///
/// # Errors
///
/// [`Error::Usage`] when the source holds events the demo did not write;
/// [`Error::Store`] or [`Error::Run`] when the database fails.
pub async fn run(launcher: &Launcher, source: &TableName) -> Result<DemoOutcome, Error> {
    let store = launcher.store();
    store.migrate().await?;
    let previous = store.demo_sample().await?;
    let foreign = store.count_foreign_events(previous.as_ref()).await?;
    if foreign > 0 {
        return Err(Error::Usage(format!(
            "the source table {source} holds {foreign} events that demo did not write; \
             demo will not mix sample events into them (point --database-url at another database)"
        )));
    }
    let zone = &launcher.job().timezone;
    let range = DayRange::ending_yesterday(jiff::Timestamp::now(), zone, SAMPLE_DAYS)?;
    let events = sample_events(&range, zone, store.keeps_invalid_json())?;
    store
        .replace_demo_sample(previous.as_ref(), &events, &range)
        .await?;

    let options = crate::telemetry_daily::RunOptions {
        range: Some(range),
        ..launcher.job().clone()
    };
    let report = launcher.run_here(&options, &mut ()).await?;
    let mut last_day = store.load_day(range.end()).await?;
    last_day.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.event.cmp(&b.event)));
    Ok(DemoOutcome {
        source: source.clone(),
        events_written: events.len(),
        range,
        report,
        last_day,
    })
}

fn glimpse(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max_chars).collect();
    format!("{cut}…")
}

/// The sample: the same for the same range and zone, run after run.
fn sample_events(
    range: &DayRange,
    zone: &TimeZone,
    invalid_json: bool,
) -> Result<Vec<NewEvent>, Error> {
    let mut rng = SmallRng::seed_from_u64(0x7665_7269_7321);
    let mut events = Vec::new();
    for date in range.days() {
        let window = DayWindow::new(date, zone)?;
        let seconds = window.end.as_second() - window.start.as_second();
        let per_day = rng.random_range(1_800..2_600);
        for _ in 0..per_day {
            let at = window.start + jiff::SignedDuration::from_secs(rng.random_range(0..seconds));
            events.push(sample_event(&mut rng, at));
        }
        for bad in malformed_events(invalid_json) {
            let at = window.start + jiff::SignedDuration::from_secs(rng.random_range(0..seconds));
            events.push(NewEvent {
                created_at: at,
                ..bad
            });
        }
    }
    Ok(events)
}

const PATHS: [&str; 8] = [
    "/",
    "/pricing",
    "/docs",
    "/blog",
    "/docs/install",
    "/signup",
    "/login",
    "/changelog",
];
const BROWSERS: [&str; 4] = ["chrome", "safari", "firefox", "edge"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// Picks from `items` with weights falling off like 1/rank.
fn skewed<'a>(rng: &mut SmallRng, items: &[&'a str]) -> &'a str {
    let total: f64 = (1..=items.len()).map(|r| 1.0 / r as f64).sum();
    let mut pick = rng.random::<f64>() * total;
    for (rank, item) in items.iter().enumerate() {
        pick -= 1.0 / (rank + 1) as f64;
        if pick <= 0.0 {
            return item;
        }
    }
    items[items.len() - 1]
}

fn sample_event(rng: &mut SmallRng, at: jiff::Timestamp) -> NewEvent {
    let names = ["page_view", "click", "search", "sign_up", "purchase"];
    let name = skewed(rng, &names);
    // A few hundred users, the first ones far more active; a fifth anonymous.
    let user = if rng.random_bool(0.2) {
        None
    } else {
        let n = (rng.random::<f64>().powi(3) * 300.0) as u32;
        Some(format!("user_{n}"))
    };
    let meta = match name {
        "page_view" => json!({
            "path": skewed(rng, &PATHS),
            "browser": skewed(rng, &BROWSERS),
            "duration_ms": rng.random_range(40..4_000),
        }),
        "click" => {
            json!({"path": skewed(rng, &PATHS), "element": skewed(rng, &["cta", "nav", "footer", "card"])})
        }
        "search" => {
            json!({"query": skewed(rng, &["rollups", "pricing", "sso", "export", "api"]), "results": rng.random_range(0..50)})
        }
        "sign_up" => json!({
            "plan": skewed(rng, &PLANS),
            "newsletter": rng.random_bool(0.4),
            "referrer": if rng.random_bool(0.5) { json!(null) } else { json!(skewed(rng, &["google", "github", "friend"])) },
        }),
        _ => json!({
            "plan": skewed(rng, &PLANS),
            "amount": purchase_amount(rng),
            "coupon": rng.random_bool(0.1),
            "cart": {"items": rng.random_range(1..4), "currency": "EUR"},
        }),
    };
    NewEvent {
        event: Some(name.to_owned()),
        user_id: user,
        created_at: at,
        meta: Some(meta.to_string()),
    }
}

fn purchase_amount(rng: &mut SmallRng) -> f64 {
    let base = [9.0, 29.0, 99.0][rng.random_range(0..3)];
    if rng.random_bool(0.3) {
        base + 0.5
    } else {
        base
    }
}

/// A handful of bad events per day: nameless ones, metadata that is not an object,
/// and (where the database can hold it) metadata that is not JSON at all.
fn malformed_events(invalid_json: bool) -> Vec<NewEvent> {
    let event = |name: &str, meta: Option<&str>| NewEvent {
        event: Some(name.to_owned()),
        user_id: Some("user_7".to_owned()),
        created_at: jiff::Timestamp::UNIX_EPOCH,
        meta: meta.map(str::to_owned),
    };
    let mut bad = vec![
        event("", Some(r#"{"path":"/"}"#)),
        event("click", Some(r#"["not","an","object"]"#)),
        event("page_view", Some(r#""just a string""#)),
        event("page_view", Some("null")),
    ];
    if invalid_json {
        bad.push(event("click", Some(r#"{"path": "/pricing""#)));
    }
    bad
}
