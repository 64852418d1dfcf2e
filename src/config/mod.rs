//! Settings from flags and environment, validated once at the edge.
//!
//! Each setting of the contract's configuration table is a clap argument with its
//! environment variable and default. Values are parsed into checked types here
//! (time zone, table name, durations, dates), so the rest of the crate never
//! re-checks them and a bad value is refused with a message naming the flag.

mod secret;

use std::time::Duration;

use clap::{Args, ValueEnum};
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::model::{DateError, DayRange, parse_date};
use crate::store::TableName;
use crate::telemetry_daily::RunOptions;

pub use self::secret::{CronSecret, MIN_SECRET_LEN, Secret};

/// Settings every command shares.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Database URL: postgres://… or sqlite://FILE (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://veris.db",
        global = true,
        // `--help` would print the environment's value, password included.
        hide_env_values = true
    )]
    pub database_url: String,

    /// Table holding the raw events (`name` or `schema.name`).
    #[arg(
        long,
        env = "TELEMETRY_SOURCE_TABLE",
        default_value = "telemetry_events",
        value_parser = parse_table_name,
        global = true
    )]
    pub source_table: TableName,

    /// Where raw events are read, when not from the database:
    /// `clickhouse://[user[:password]@]host[:port]/database` (`clickhouses://` for HTTPS).
    /// Rollups, locks and run history stay in the database.
    #[arg(
        long,
        env = "TELEMETRY_SOURCE_URL",
        global = true,
        hide_env_values = true
    )]
    pub source_url: Option<String>,

    /// Log format; filter with RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// `--meta-top-k`: at least one value a key.
///
/// # Errors
///
/// A message for 0 or anything but a whole number.
pub fn parse_top_k(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("0 would keep no value of any key; give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "'{value}' is not a whole number of values (1 or more)"
        )),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of the `telemetry-daily` job.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// IANA time zone that days are cut in.
    #[arg(long, env = "TELEMETRY_TIMEZONE", default_value = "UTC", value_parser = parse_timezone)]
    pub timezone: TimeZone,

    /// Top values kept per metadata key.
    #[arg(long, env = "TELEMETRY_META_TOP_K", default_value_t = crate::telemetry_daily::DEFAULT_META_TOP_K, allow_negative_numbers = true, value_parser = crate::config::parse_top_k)]
    pub meta_top_k: usize,

    /// How long a run waits for a day another run holds (e.g. 60s, 5m, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// Days the default range covers, ending yesterday.
    #[arg(
        long,
        env = "TELEMETRY_LOOKBACK_DAYS",
        default_value_t = 1,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=36_600)
    )]
    pub lookback_days: u32,

    /// Memory a day's aggregation may hold before it spills to disk (e.g. 256MiB, 1GiB).
    #[arg(long, env = "TELEMETRY_MEMORY_LIMIT", default_value = "256MiB", value_parser = parse_bytes)]
    pub memory_limit: usize,

    /// Directory the aggregation spills to past the memory limit [default: $TMPDIR, or
    /// the system's temporary directory].
    #[arg(long)]
    pub spill_dir: Option<std::path::PathBuf>,

    /// Runs the history keeps in job_runs; older ones are deleted as runs end.
    #[arg(
        long,
        env = "TELEMETRY_KEEP_RUNS",
        default_value_t = crate::telemetry_daily::DEFAULT_KEEP_RUNS,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub keep_runs: u32,

    /// Time slices each day is read in, concurrently over as many connections.
    #[arg(
        long,
        env = "TELEMETRY_READ_SLICES",
        default_value_t = 1,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub read_slices: u32,
}

impl JobArgs {
    /// The run options these settings give: the default range, written, from the
    /// command line; a face sets the range, dry run and trigger of each run.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            timezone: self.timezone.clone(),
            meta_top_k: self.meta_top_k,
            lock_timeout: self.lock_timeout,
            lookback_days: self.lookback_days,
            read_slices: self.read_slices,
            memory_limit: self.memory_limit,
            spill_dir: self.spill_dir.clone(),
            keep_runs: self.keep_runs,
            ..RunOptions::default()
        }
    }
}

/// Settings of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:3000")]
    pub bind: std::net::SocketAddr,

    /// Longest range, in days, that one HTTP request may ask for.
    #[arg(
        long,
        env = "TELEMETRY_MAX_RANGE_DAYS",
        default_value_t = 366,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_range_days: u32,

    /// Runs that requests may have going at once; one more is answered 429.
    #[arg(
        long,
        env = "TELEMETRY_MAX_HTTP_RUNS",
        default_value_t = crate::launcher::DEFAULT_REQUESTED_RUNS as u32,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub max_http_runs: u32,

    /// Run the job on this cron schedule, in --timezone: five fields ("0 2 * * *"),
    /// six with seconds first, seven with a year last, or @daily, @hourly, …. Each run covers the default range, plus earlier
    /// days that changed (as --changed).
    #[arg(long, env = "TELEMETRY_SCHEDULE")]
    pub schedule: Option<String>,

    /// Also roll up today so far at this interval (e.g. 10m; at least 1m), as runs of
    /// the schedule; off unless given.
    #[arg(long, env = "TELEMETRY_TODAY_EVERY", value_parser = parse_today_every)]
    pub today_every: Option<Duration>,

    /// Run telemetry-purge on this cron schedule, in --timezone (as --schedule);
    /// needs --keep-days.
    #[arg(long, env = "TELEMETRY_PURGE_SCHEDULE", requires = "keep_days")]
    pub purge_schedule: Option<String>,

    /// Days of raw events telemetry-purge keeps, ending yesterday: for the purge
    /// schedule, and for purge requests that do not say.
    #[arg(long, env = "TELEMETRY_KEEP_DAYS", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_days: Option<u32>,

    #[command(flatten)]
    pub job: JobArgs,
}

/// The days a command names on its command line.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// One day, YYYY-MM-DD (short for --start-date D --end-date D).
    #[arg(long, value_parser = parse_date_arg, conflicts_with_all = ["start_date", "end_date"])]
    pub date: Option<Date>,

    /// Today so far, in --timezone (short for --date with today's date).
    #[arg(long, conflicts_with_all = ["date", "start_date", "end_date"])]
    pub today: bool,

    /// First day of the range, YYYY-MM-DD (alone: that one day).
    #[arg(long, value_parser = parse_date_arg)]
    pub start_date: Option<Date>,

    /// Last day of the range, inclusive; needs --start-date.
    #[arg(long, value_parser = parse_date_arg)]
    pub end_date: Option<Date>,
}

impl RangeArgs {
    /// The range asked for, or `None` for the default range; today is the date in
    /// `zone` now.
    ///
    /// # Errors
    ///
    /// [`DateError`] for an end without a start or an end before the start.
    pub fn range(&self, zone: &TimeZone) -> Result<Option<DayRange>, DateError> {
        if self.today {
            let today = jiff::Timestamp::now()
                .to_zoned_datetime(zone.clone())
                .date();
            return Ok(Some(DayRange::single(today)));
        }
        match self.date {
            Some(date) => Ok(Some(DayRange::single(date))),
            None => DayRange::from_bounds(self.start_date, self.end_date),
        }
    }
}

/// Parses an IANA time zone name.
///
/// # Errors
///
/// A message saying the name is not a known zone.
pub fn parse_timezone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name)
        .map_err(|_| format!("'{name}' is not an IANA time zone name (e.g. UTC, Europe/Berlin)"))
}

fn parse_table_name(value: &str) -> Result<TableName, String> {
    TableName::parse(value)
}

fn parse_date_arg(value: &str) -> Result<Date, String> {
    parse_date("date", value).map_err(|error| match error {
        crate::model::DateError::NoSuchDay { reason, .. } => {
            format!("'{value}' is not a day of the calendar ({reason})")
        }
        _ => format!("'{value}' is not a date in the form YYYY-MM-DD"),
    })
}

/// Parses a duration such as `60s`, `5m`, `1h 30m` or `500ms`.
///
/// # Errors
///
/// A message when the text is not a non-negative duration.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("'{value}' is not a duration such as 60s, 5m or 500ms");
    let signed: jiff::SignedDuration = value.parse().map_err(|_| bad())?;
    Duration::try_from(signed).map_err(|_| bad())
}

/// Parses `--today-every`: a duration of at least a minute.
///
/// # Errors
///
/// A message when the text is not a duration, or is under a minute.
pub fn parse_today_every(value: &str) -> Result<Duration, String> {
    let every = parse_duration(value)?;
    if every < crate::schedule::MIN_TODAY_EVERY {
        return Err(format!(
            "'{value}' is too often: today is refreshed at most once a minute (e.g. 1m, 10m)"
        ));
    }
    Ok(every)
}

/// Parses an amount of memory such as `256MiB`, `1GiB`, `512MB` or `65536` (bytes).
///
/// # Errors
///
/// A message when the text is not such an amount, or is under 1 MiB (too little to
/// aggregate anything in).
pub fn parse_bytes(value: &str) -> Result<usize, String> {
    const UNITS: [(&str, u64); 8] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("kB", 1_000),
        ("B", 1),
    ];
    let bad = || format!("'{value}' is not an amount of memory such as 256MiB, 1GiB or 512MB");
    let text = value.trim();
    let (number, unit) = UNITS
        .iter()
        .find_map(|(name, size)| text.strip_suffix(name).map(|n| (n.trim(), *size)))
        .unwrap_or((text, 1));
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(bad)?;
    if bytes < 1 << 20 {
        return Err(format!(
            "'{value}' is under 1MiB, too little to aggregate a day in"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_friendly_form() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn amounts_of_memory_parse_with_their_units() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
        assert_eq!(parse_bytes("2097152"), Ok(2 << 20));
        for bad in ["", "lots", "-1MiB", "1.5GiB", "10KiB", "256mib"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_must_be_iana_names() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("Mars/Olympus_Mons").is_err());
    }
}
