//! The report for people: a table for the terminal and CSV for spreadsheets, with
//! text from events made harmless for both.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::{Grouping, TelemetryReport};

impl TelemetryReport {
    /// The report as a readable table: a line per event and period, and the period's
    /// total; `~` marks an estimate.
    pub fn to_table(&self) -> String {
        // An hour's start with its offset is 25 characters; a week's span 24.
        let width = if self.by == Grouping::Hour { 25 } else { 24 };
        let mut out = format!(
            "telemetry  {} .. {}  by {}\n{:<width$}  {:<24}  {:>12}  {:>12}\n",
            self.start_date, self.end_date, self.by, "period", "event", "count", "users"
        );
        for period in &self.periods {
            // An hour is named by its start, with its offset; a day by its date.
            let span = if period.start == period.end || self.by == Grouping::Hour {
                period.start.clone()
            } else {
                format!("{} .. {}", period.start, period.end)
            };
            for event in &period.events {
                let _ = writeln!(
                    out,
                    "{span:<width$}  {:<24}  {:>12}  {:>12}",
                    terminal_text(&event.event),
                    event.count,
                    users(event.unique_users, event.unique_users_exact)
                );
                if let Some(meta) = meta_line(&event.meta) {
                    let _ = writeln!(out, "{:<width$}    {}", "", terminal_text(&meta));
                }
            }
            let _ = writeln!(
                out,
                "{span:<width$}  {:<24}  {:>12}  {:>12}",
                "(all events)",
                period.total.count,
                users(period.total.unique_users, period.total.unique_users_exact)
            );
            if let (true, Some(as_of)) = (period.partial, &period.as_of) {
                let _ = writeln!(out, "{span:<width$}  so far, as of {as_of}");
            }
            if !period.missing_sketches.is_empty() {
                let _ = writeln!(
                    out,
                    "{span:<width$}  rows with no usable sketch on {} (run those days again)",
                    period.missing_sketches.join(", ")
                );
            }
        }
        out
    }

    /// The report as CSV: a line per event and period, then one per period for all
    /// events (event empty); `unique_users` empty when unknown.
    pub fn to_csv(&self) -> String {
        let mut out =
            String::from("period_start,period_end,event,count,unique_users,unique_users_exact\n");
        for period in &self.periods {
            let line =
                |out: &mut String, event: &str, count: i64, users: Option<u64>, exact: bool| {
                    let _ = writeln!(
                        out,
                        "{},{},{},{count},{},{exact}",
                        period.start,
                        period.end,
                        csv_field(event),
                        users.map_or_else(String::new, |u| u.to_string())
                    );
                };
            for event in &period.events {
                line(
                    &mut out,
                    &event.event,
                    event.count,
                    event.unique_users,
                    event.unique_users_exact,
                );
            }
            line(
                &mut out,
                "",
                period.total.count,
                period.total.unique_users,
                period.total.unique_users_exact,
            );
        }
        out
    }
}

/// Metadata keys shown under an event in the table (the JSON and CSV have them all).
const TABLE_KEYS: usize = 3;

/// Values shown per key in the table.
const TABLE_VALUES: usize = 3;

/// An event's metadata in one line: its first keys (the summary keeps them most
/// frequent first), each with its top values or its numbers' sum, min, max and
/// percentiles.
fn meta_line(meta: &super::MergedMeta) -> Option<String> {
    let serde_json::Value::Object(keys) = meta.to_value().ok()? else {
        return None;
    };
    let mut keys: Vec<(&String, &serde_json::Value)> = keys
        .iter()
        .filter(|(key, _)| key.as_str() != crate::model::DROPPED_KEYS)
        .collect();
    keys.sort_by_key(|(_, stats)| std::cmp::Reverse(stats["n"].as_u64().unwrap_or(0)));
    let parts: Vec<String> = keys
        .into_iter()
        .take(TABLE_KEYS)
        .map(|(key, stats)| {
            let mut shown = Vec::new();
            if let Some(serde_json::Value::Object(values)) = stats.get("values") {
                let mut values: Vec<(&String, u64)> = values
                    .iter()
                    .map(|(value, count)| (value, count.as_u64().unwrap_or(0)))
                    .collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
                shown.extend(
                    values
                        .into_iter()
                        .take(TABLE_VALUES)
                        .map(|(value, count)| format!("{value} {count}")),
                );
            }
            if let (Some(sum), Some(min), Some(max)) =
                (stats.get("sum"), stats.get("min"), stats.get("max"))
            {
                shown.push(format!("sum {sum}, min {min}, max {max}"));
            }
            // Estimates (within 1%), marked as the table marks estimated users.
            for name in ["p50", "p90", "p99"] {
                if let Some(x) = stats.get(name).and_then(serde_json::Value::as_f64) {
                    shown.push(format!("{name} ~{}", four_digits(x)));
                }
            }
            format!("{key}: {}", shown.join(", "))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `x` to four significant digits, for reading: `29.08`, `0.001235`, `1.235e+29`.
fn four_digits(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if (-4..6).contains(&magnitude) {
        let decimals = usize::try_from(3 - magnitude).unwrap_or(0);
        let text = format!("{x:.decimals$}");
        match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
            false => text,
        }
    } else {
        format!("{x:.3e}")
    }
}

fn users(count: Option<u64>, exact: bool) -> String {
    match (count, exact) {
        (None, _) => "n/a".to_owned(),
        (Some(n), true) => n.to_string(),
        (Some(n), false) => format!("~{n}"),
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break. Text that a
/// spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a
/// carriage return) is prefixed with `'`, the usual way to keep it text.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.into_owned()
    }
}

/// Text for a terminal: control characters (C0, DEL and C1, which can move the
/// cursor, retitle the window or forge lines) written as escapes such as `\x1b`.
pub fn terminal_text(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::super::TelemetryReport;
    use super::super::build::tests::row;
    use super::*;
    use crate::model::DayRange;

    fn range(start: &str, end: &str) -> DayRange {
        DayRange::new(start.parse().unwrap(), end.parse().unwrap()).unwrap()
    }

    #[test]
    fn an_hour_table_keeps_its_columns_and_says_what_is_so_far() {
        let zone = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let day = range("2024-11-03", "2024-11-03");
        let mut report = super::super::HourReportBuilder::new(&day, &zone)
            .unwrap()
            .finish();
        report.periods[1].partial = true;
        report.periods[1].as_of = Some("2024-11-03T05:30:00.000Z".into());
        let table = report.to_table();
        let lines: Vec<&str> = table.lines().collect();
        let count_column = lines[1].find("count").unwrap() + "count".len();
        for line in lines.iter().skip(2).filter(|l| l.contains("(all events)")) {
            assert_eq!(
                line.find(" 0").map(|at| at + 2),
                Some(count_column),
                "{line}"
            );
        }
        assert!(
            table.contains("2024-11-03T01:00:00-04:00  so far, as of 2024-11-03T05:30:00.000Z"),
            "{table}"
        );
    }

    #[test]
    fn text_from_events_cannot_drive_a_terminal_or_a_spreadsheet() {
        assert_eq!(terminal_text("page_view"), "page_view");
        assert_eq!(
            terminal_text("a\x1b]0;owned\x07b\r\nc\u{9b}"),
            "a\\x1b]0;owned\\x07b\\x0d\\x0ac\\x9b"
        );
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for formula in ["+1", "-1", "@SUM(A1)", "\tx"] {
            assert_eq!(csv_field(formula), format!("'{formula}"));
        }
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("page_view"), "page_view");
    }

    #[test]
    fn numbers_show_their_percentiles_to_four_digits_marked_as_estimates() {
        let meta: super::super::MergedMeta = serde_json::from_str(
            r#"{"ms":{"max":99.5,"min":9,"n":3,"p50":29.080339799119507,"p90":0.00123456,"p99":1.2345e29,"sum":108}}"#,
        )
        .unwrap();
        assert_eq!(
            meta_line(&meta).unwrap(),
            "ms: sum 108, min 9, max 99.5, p50 ~29.08, p90 ~0.001235, p99 ~1.234e29"
        );
        assert_eq!(four_digits(1500.0), "1500");
        assert_eq!(four_digits(-2.5), "-2.5");
    }

    #[test]
    fn the_table_puts_each_column_under_its_heading_for_days_and_weeks() {
        let rows = [row("2024-01-02", "view", &["a", "b"], "{}")];
        for (start, end, by) in [
            ("2024-01-01", "2024-01-07", Grouping::Week),
            ("2024-01-02", "2024-01-02", Grouping::Day),
        ] {
            let table = TelemetryReport::from_rows(&range(start, end), by, &rows, 5).to_table();
            let lines: Vec<&str> = table.lines().skip(1).collect();
            let heading = lines[0];
            for line in &lines[1..] {
                assert_eq!(line.len(), heading.len(), "{by}:\n{table}");
                assert_eq!(
                    line.find(['v', '(']),
                    heading.find("event"),
                    "{by}:\n{table}"
                );
            }
        }
    }
}
