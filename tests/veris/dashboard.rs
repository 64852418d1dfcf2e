//! The dashboard in a real browser: headless Chromium driven through chromedriver,
//! over the demo's data, at 1280 and at 375 pixels wide. A failing test leaves a
//! screenshot in `target/dashboard-failures/`.

use std::future::Future;
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use veris_jobs::config::{CronSecret, Secret};
use veris_jobs::http::AppState;
use veris_jobs::store::{Store, TableName};
use veris_jobs::telemetry_daily::RunOptions;

use crate::http::{SECRET, TestServer};

const READER: &str = "dashboard-reader-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and a browser session at `width` pixels; `None` when they are not
/// installed outside CI (under `CI=true` that fails instead).
struct Browser {
    driver: tokio::process::Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(width: u32) -> Option<Self> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and {CHROMIUM} or {CHROMEDRIVER} is missing (Debian's chromium, chromium-driver)"
            );
            crate::common::skipping(&format!(
                "the browser tests pass without running: {CHROMIUM} or {CHROMEDRIVER} is not installed"
            ));
            return None;
        }
        let port = crate::common::free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut chrome = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                format!("--window-size={},900", width.max(500)),
                format!("--user-data-dir={}", profile.path().display()),
            ]
        });
        // A window is at least 500 pixels wide: a phone's width is emulated.
        if width < 500 {
            chrome["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": 812, "pixelRatio": 2}});
        }
        let capabilities = json!({
            "goog:chromeOptions": chrome,
            "goog:loggingPrefs": {"browser": "ALL"}
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("chromedriver did not start a session: {error}"),
            }
        };
        Some(Self {
            driver,
            client,
            _profile: profile,
        })
    }

    /// The browser's console messages since the last call, as (level, text).
    async fn console(&self) -> Vec<(String, String)> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("the browser log");
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_owned(),
                            e["message"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_for(&self, script: &str, what: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.client.execute(script, vec![]).await.unwrap();
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "waited 15 s for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

/// chromedriver's log of the page's console (`goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// Runs `test`; if it fails, saves a screenshot named `name` before failing.
async fn with_screenshot<F: Future<Output = ()>>(browser: &Browser, name: &str, test: F) {
    use futures_util::FutureExt as _;
    if let Err(panic) = std::panic::AssertUnwindSafe(test).catch_unwind().await {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../dashboard-failures");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(png) = browser.client.screenshot().await {
            let path = dir.join(format!("{name}.png"));
            let _ = std::fs::write(&path, png);
            eprintln!("screenshot of the failure: {}", path.display());
        }
        std::panic::resume_unwind(panic);
    }
}

/// A SQLite file filled by `veris-jobs demo`, and a server over it.
async fn demo_server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());
    let demo = crate::cli::veris(&url, &["demo"]);
    assert_eq!(demo.status.code(), Some(0), "{}", crate::cli::stderr(&demo));
    let store = Store::connect(&url, &TableName::parse("telemetry_events").unwrap())
        .await
        .unwrap();
    (dir, server(store).await)
}

async fn server(store: Store) -> TestServer {
    let state = AppState::new(
        store,
        RunOptions::default(),
        366,
        CronSecret::new(SECRET).unwrap(),
    )
    .with_read_secret(Secret::read(READER).unwrap());
    TestServer::start_with(state).await
}

/// The labels of the events chart's legend.
async fn legend(client: &Client) -> Value {
    client
        .execute("return [...document.querySelectorAll('#events-chart .u-legend .u-label')].map(l => l.textContent)", vec![])
        .await
        .unwrap()
}

/// The day before `now`'s in UTC, the zone the job cuts days in by default.
fn utc_yesterday(now: jiff::Timestamp) -> jiff::civil::Date {
    now.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .yesterday()
        .unwrap()
}

async fn sign_in(browser: &Browser, secret: &str) {
    let input = browser
        .client
        .wait()
        .for_element(Locator::Id("secret"))
        .await
        .unwrap();
    input.send_keys(secret).await.unwrap();
    browser
        .client
        .find(Locator::Css("#sign-in-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn the_demo_in_the_browser(width: u32) {
    let Some(browser) = Browser::start(width).await else {
        return;
    };
    let (_dir, server) = demo_server().await;
    let name = format!("demo-{width}px");
    with_screenshot(&browser, &name, async {
        let c = &browser.client;
        c.goto(&server.url("/")).await.unwrap();
        browser.wait_for("return !document.getElementById('sign-in').hidden", "the sign-in form").await;
        let viewport = c.execute("return window.innerWidth", vec![]).await.unwrap();
        assert_eq!(viewport, width, "the page is {viewport} pixels wide");
        // What the first load moved over the wire.
        let bytes = browser
            .wait_for(
                "const all = performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'));\
                 return all.every(e => e.responseEnd > 0) ? all.reduce((s, e) => s + e.transferSize, 0) : null;",
                "the first load",
            )
            .await;
        assert!(bytes.as_f64().unwrap() < 150_000.0, "first load moved {bytes} bytes");

        // A wrong secret: the 401 state, and the form again.
        sign_in(&browser, "wrong-secret-0123456789").await;
        let status = browser
            .wait_for("const s = document.getElementById('status'); return !s.hidden && s.textContent.includes('401') && s.textContent", "the 401 state")
            .await;
        assert!(status.as_str().unwrap().contains("refused"), "{status}");
        assert_eq!(c.execute("return document.getElementById('sign-in').hidden", vec![]).await.unwrap(), false);
        assert_eq!(c.execute("return sessionStorage.length", vec![]).await.unwrap(), 0, "a refused secret is not kept");

        // The right one: the charts draw the demo's events, the runs list the demo's run.
        sign_in(&browser, READER).await;
        browser.wait_for("return document.body.dataset.loaded", "the data").await;
        let legend = legend(c).await;
        for event in ["page_view", "click", "search", "sign_up", "purchase", "other"] {
            assert!(legend.to_string().contains(event), "{event} in {legend}");
        }
        assert_eq!(c.execute("return document.querySelectorAll('#events-chart canvas, #users-chart canvas').length", vec![]).await.unwrap(), 2);
        let table: Value = c
            .execute("return [...document.querySelectorAll('#events-table tbody th')].map(t => t.textContent)", vec![])
            .await
            .unwrap();
        assert_eq!(table[0], "page_view", "{table}");
        // The drawn numbers are the report's: each row's count and unique users
        // against the same range's report fetched here.
        let loaded = c.execute("return document.body.dataset.loaded", vec![]).await.unwrap();
        let (start, end) = loaded.as_str().unwrap().split('/').next().unwrap().split_once("..").unwrap();
        let report: Value = server
            .client
            .get(server.url(&format!("/api/telemetry/report?startDate={start}&endDate={end}&by=range")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).unwrap())
            .unwrap();
        let drawn: Value = c
            .execute(
                "return [...document.querySelectorAll('#events-table tbody tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent, r.cells[3].textContent])",
                vec![],
            )
            .await
            .unwrap();
        let number = |text: &Value| text.as_str().unwrap().replace(',', "").parse::<u64>().unwrap();
        let period = &report["periods"][0];
        let events = period["events"].as_array().unwrap();
        assert_eq!(drawn.as_array().unwrap().len(), events.len() + 1, "{drawn}");
        for (row, event) in drawn.as_array().unwrap().iter().zip(events) {
            assert_eq!(row[0], event["event"], "{drawn}");
            assert_eq!(number(&row[1]), event["count"].as_u64().unwrap(), "{drawn}");
            assert_eq!(number(&row[2]), event["uniqueUsers"].as_u64().unwrap(), "{drawn}");
        }
        let total = drawn.as_array().unwrap().last().unwrap();
        assert_eq!(number(&total[1]), period["total"]["count"].as_u64().unwrap());
        // Nothing is wider than the screen, at 375 pixels too.
        let overflow = c
            .execute("return document.documentElement.scrollWidth - window.innerWidth", vec![])
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap() <= 0, "{overflow} pixels wider than the window");
        // From the keyboard: Tab reaches the range, the grouping and the event.
        let mut reached = Vec::new();
        c.execute("document.activeElement.blur(); window.focus()", vec![]).await.unwrap();
        for _ in 0..40 {
            c.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
            let id = c.execute("return document.activeElement.id", vec![]).await.unwrap();
            reached.push(id.as_str().unwrap_or_default().to_owned());
        }
        for id in ["range", "by", "event"] {
            assert!(reached.iter().any(|r| r == id), "Tab never reached #{id}: {reached:?}");
        }
        // The secret goes only in the Authorization header: in no address the page
        // loaded, no cookie, no local storage.
        let kept = c
            .execute("return Object.keys(sessionStorage).map(k => sessionStorage.getItem(k))", vec![])
            .await
            .unwrap();
        assert_eq!(kept, serde_json::json!([READER]), "the secret is kept in sessionStorage");
        let leaked = c
            .execute(
                "const s = sessionStorage.getItem(Object.keys(sessionStorage)[0]); \
                 return (performance.getEntriesByType('resource').some(e => e.name.includes(s)) || location.href.includes(s) || document.cookie.includes(s) || localStorage.length > 0)",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(leaked, false, "the secret left the Authorization header");
        let runs: Value = c
            .execute("return [...document.querySelectorAll('#runs tbody tr')].map(r => r.textContent)", vec![])
            .await
            .unwrap();
        assert!(runs[0].as_str().unwrap().contains("cli") && runs[0].as_str().unwrap().contains("ok"), "{runs}");
        assert!(runs[0].as_str().unwrap().contains("telemetry-daily"), "the run's job: {runs}");
        // A region that scrolls (the tables, at 375 pixels) can be reached from the
        // keyboard and says what it holds (axe-core's scrollable-region-focusable).
        let unreachable = c
            .execute("return [...document.querySelectorAll('.scroll')].filter(e => e.tabIndex !== 0 || !e.getAttribute('aria-labelledby')).length", vec![])
            .await
            .unwrap();
        assert_eq!(unreachable, 0, "scrolling regions out of the keyboard's reach");
        let bars = c.execute("return document.querySelectorAll('#metadata .bar').length", vec![]).await.unwrap();
        assert!(bars.as_u64().unwrap() > 3, "metadata bars: {bars}");
        // The chosen event's number keys show their percentiles.
        let numbers: Value = c
            .execute("return [...document.querySelectorAll('#metadata p')].map(p => p.textContent).filter(t => t.startsWith('sum '))", vec![])
            .await
            .unwrap();
        assert!(
            numbers.as_array().is_some_and(|n| !n.is_empty())
                && numbers.as_array().unwrap().iter().all(|t| {
                    let t = t.as_str().unwrap();
                    t.contains(" · p50 ") && t.contains(" · p90 ") && t.contains(" · p99 ")
                }),
            "number keys with their percentiles: {numbers}"
        );
        assert_eq!(c.execute("return location.href.includes('secret') || document.cookie.length > 0", vec![]).await.unwrap(), false);

        // Another range and another grouping redraw the charts.
        let before = c.execute("return document.body.dataset.loaded", vec![]).await.unwrap();
        c.find(Locator::Id("by")).await.unwrap().select_by_value("week").await.unwrap();
        browser
            .wait_for(&format!("return document.body.dataset.loaded !== {before} && document.body.dataset.loaded.endsWith('/week')"), "the weekly charts")
            .await;
        let started = Instant::now();
        c.find(Locator::Id("range")).await.unwrap().select_by_value("90").await.unwrap();
        let loaded = browser
            .wait_for("const l = document.body.dataset.loaded; const [a, b] = l.split('/')[0].split('..'); return (Date.parse(b) - Date.parse(a)) / 864e5 === 89 && l", "90 days")
            .await;
        // Waited for, not timed against a bound: a loaded 2-core machine varies.
        let took = started.elapsed();
        eprintln!("{width}px: 90 days drawn in {took:?} ({loaded})");
        let points = c.execute("return document.querySelectorAll('#events-chart canvas').length", vec![]).await.unwrap();
        assert_eq!(points, 1);

        // Nothing went wrong in the console on the way (the refused secret's 401 aside).
        let errors: Vec<_> = browser
            .console()
            .await
            .into_iter()
            .filter(|(level, text)| level == "SEVERE" && !text.contains("401"))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:?}");

        // The README's picture: 7 days by day, the demo's three among them.
        if width == 1280
            && let Ok(path) = std::env::var("VERIS_DASHBOARD_SCREENSHOT")
        {
            c.find(Locator::Id("by")).await.unwrap().select_by_value("day").await.unwrap();
            c.find(Locator::Id("range")).await.unwrap().select_by_value("7").await.unwrap();
            browser
                .wait_for("const l = document.body.dataset.loaded; const [a, b] = l.split('/')[0].split('..'); return (Date.parse(b) - Date.parse(a)) / 864e5 === 6 && l.endsWith('/day')", "7 days by day")
                .await;
            std::fs::write(&path, c.screenshot().await.unwrap()).unwrap();
        }
    })
    .await;
    server.stop().await;
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_the_demo_at_1280_pixels() {
    the_demo_in_the_browser(1280).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_the_demo_at_375_pixels() {
    the_demo_in_the_browser(375).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn today_by_hour_is_drawn_as_so_far_not_as_a_fall() {
    let Some(browser) = Browser::start(1280).await else {
        return;
    };
    let db = crate::common::TestDb::new(crate::common::Kind::Sqlite)
        .await
        .unwrap();
    let now = jiff::Timestamp::now();
    let yesterday = utc_yesterday(now);
    let events: Vec<_> = (0..30)
        .map(|i| {
            let at = format!("{yesterday}T{:02}:10:00Z", i % 24);
            crate::common::event("view", Some(&format!("u{i}")), &at, None)
        })
        .chain(std::iter::once(crate::common::event(
            "view",
            Some("now"),
            &now.to_string(),
            None,
        )))
        .collect();
    db.insert(&events).await;
    let today = now
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    assert!(
        db.run(&crate::common::range_options(
            &yesterday.to_string(),
            &today
        ))
        .await
        .ok
    );
    let server = server(db.store.clone()).await;
    with_screenshot(&browser, "today-by-hour", async {
        let c = &browser.client;
        c.goto(&server.url("/")).await.unwrap();
        sign_in(&browser, READER).await;
        browser
            .wait_for("return document.body.dataset.loaded", "the data")
            .await;
        c.find(Locator::Id("range"))
            .await
            .unwrap()
            .select_by_value("48h")
            .await
            .unwrap();
        browser
            .wait_for(
                "const l = document.body.dataset.loaded; return l.endsWith('/hour') && l",
                "the last 48 hours",
            )
            .await;
        let note = browser
            .wait_for(
                "const n = document.getElementById('so-far'); return !n.hidden && n.textContent",
                "the note",
            )
            .await;
        assert!(note.as_str().unwrap().contains("so far, as of"), "{note}");
        let legend = legend(c).await;
        assert!(legend.to_string().contains("all events so far"), "{legend}");
        let caption: Value = c
            .execute(
                "return document.getElementById('events-caption').textContent",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            caption.as_str().unwrap().contains("so far, as of"),
            "{caption}"
        );
        assert_eq!(
            c.execute("return document.getElementById('by').disabled", vec![])
                .await
                .unwrap(),
            true,
            "the hours fix the grouping"
        );
    })
    .await;
    server.stop().await;
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_says_when_there_is_no_data_or_no_database() {
    let Some(browser) = Browser::start(1280).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("empty.db").display());
    let empty = Store::connect(&url, &TableName::parse("telemetry_events").unwrap())
        .await
        .unwrap();
    empty.migrate().await.unwrap();
    let empty = server(empty).await;
    // A database that refuses every connection.
    let down = Store::connect_lazy(
        &format!(
            "postgres://postgres@127.0.0.1:{}/none",
            crate::common::free_port()
        ),
        &TableName::parse("telemetry_events").unwrap(),
    )
    .await
    .unwrap();
    let down = server(down).await;
    with_screenshot(&browser, "states", async {
        let c = &browser.client;
        c.goto(&empty.url("/")).await.unwrap();
        sign_in(&browser, READER).await;
        let status = browser
            .wait_for("const s = document.getElementById('status'); return !s.hidden && s.textContent.includes('No rollups') && s.textContent", "the empty state")
            .await;
        assert!(status.as_str().unwrap().contains("veris-jobs"), "{status}");
        // Another server is another origin, with storage of its own: sign in there too.
        c.goto(&down.url("/")).await.unwrap();
        sign_in(&browser, READER).await;
        let status = browser
            .wait_for("const s = document.getElementById('status'); return !s.hidden && s.textContent.includes('503') && s.textContent", "the 503 state")
            .await;
        assert!(status.as_str().unwrap().contains("database"), "{status}");
    })
    .await;
    empty.stop().await;
    down.stop().await;
    browser.stop().await;
}

#[tokio::test]
async fn the_page_is_served_with_security_headers_and_compressed() {
    let (_dir, server) = demo_server().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut total = 0;
    for path in [
        "/",
        "/assets/dashboard.js",
        "/assets/dashboard.css",
        "/assets/uPlot.iife.min.js",
        "/assets/uPlot.min.css",
    ] {
        let response = client
            .get(server.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let headers = response.headers().clone();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["content-encoding"], "gzip", "{path}");
        total += response.bytes().await.unwrap().len();
    }
    assert!(
        total < 150_000,
        "the page and its assets: {total} bytes compressed"
    );
    let missing = client
        .get(server.url("/assets/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let plain = client.get(server.url("/")).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(plain.text().await.unwrap().contains("<title>veris-jobs"));
    server.stop().await;
}

/// Twelve events: the charts draw the ten biggest by count and the other two as
/// "other", and the table lists all twelve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_events_are_drawn_as_the_top_ten_and_other() {
    let Some(browser) = Browser::start(1280).await else {
        return;
    };
    let db = crate::common::TestDb::new(crate::common::Kind::Sqlite)
        .await
        .unwrap();
    // Yesterday: event ev01 has 120 events, ev02 110, … ev12 10.
    let yesterday = utc_yesterday(jiff::Timestamp::now());
    let events: Vec<veris_jobs::store::NewEvent> = (1..=12)
        .flat_map(|i| {
            (0..(13 - i) * 10).map(move |n| veris_jobs::store::NewEvent {
                event: Some(format!("ev{i:02}")),
                user_id: Some(format!("u{n}")),
                created_at: format!("{yesterday}T12:00:00Z").parse().unwrap(),
                meta: None,
            })
        })
        .collect();
    db.insert(&events).await;
    let report = db.run(&RunOptions::default()).await;
    assert!(report.ok && report.totals.rows == 12, "{report:?}");
    let server = server(db.store.clone()).await;
    with_screenshot(&browser, "twelve", async {
        let c = &browser.client;
        c.goto(&server.url("/")).await.unwrap();
        sign_in(&browser, READER).await;
        browser
            .wait_for("return document.body.dataset.loaded", "the data")
            .await;
        let legend = legend(c).await;
        let mut expected: Vec<String> = (1..=10).map(|i| format!("ev{i:02}")).collect();
        expected.push("other".into());
        let drawn: Vec<String> = legend
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .filter(|l| !l.is_empty() && l != "Time" && l != "Date")
            .collect();
        assert_eq!(drawn, expected, "{legend}");
        let rows = c
            .execute(
                "return document.querySelectorAll('#events-table tbody th').length",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(rows, 13, "twelve events and the total");
    })
    .await;
    server.stop().await;
    browser.stop().await;
}
