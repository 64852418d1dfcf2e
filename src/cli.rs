//! The command line: `migrate`, `telemetry-daily`, `runs`, `serve` and `demo`.
//!
//! Parses arguments with clap, calls the library (one function a command), prints
//! what it returned, and turns the outcome into the contract's exit status (0 all
//! days ok, 1 a day failed, 2 bad usage or configuration).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::{Application, Connect, ServeSettings, Settings};
use crate::config::{
    CronSecret, GlobalArgs, JobArgs, LogFormat, MIN_SECRET_LEN, RangeArgs, Secret, ServeArgs,
};
use crate::error::Error;
use crate::model::{DayRange, MAX_RUNS_LISTED, RunRecord, RunReport};
use crate::progress::TerminalProgress;
use crate::report::{
    DEFAULT_REPORT_DAYS, Grouping, MAX_HOUR_REPORT_DAYS, ReportRequest, telemetry_report,
};
use crate::telemetry_daily::RunOptions;
use crate::telemetry_purge::PurgeOptions;

/// Background jobs of the Veris application.
#[derive(Debug, Parser)]
#[command(name = "veris-jobs", version, about)]
pub struct Cli {
    #[command(
        flatten,
        next_help_heading = "Global options (before or after the command)"
    )]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the source table (when absent) and the rollup table; safe to repeat.
    Migrate,
    /// Roll raw events up into one row per (day, event).
    TelemetryDaily(TelemetryDailyArgs),
    /// Delete raw events of old days whose rollups already hold them, and nothing else.
    TelemetryPurge(TelemetryPurgeArgs),
    /// List recent runs from the run history (job_runs).
    Runs(RunsArgs),
    /// Serve the job over HTTP (needs CRON_SECRET in the environment).
    Serve(ServeArgs),
    /// Fill the database with a few days of sample events and run the job over them.
    Demo(DemoArgs),
    /// Read the rollups back: counts, unique users and metadata by day, week or month.
    Report(ReportArgs),
}

/// Flags of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub range: RangeArgs,

    /// How the days are grouped: hour (local hours in --timezone, at most 31 days), day,
    /// week (ISO, Monday to Sunday), month, or range (the whole range as one period).
    #[arg(long, default_value = "day")]
    pub by: Grouping,

    /// Report this event (repeat for more); all events when not given.
    #[arg(long = "event", value_name = "NAME")]
    pub events: Vec<String>,

    /// Print the report as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Print the report as CSV.
    #[arg(long)]
    pub csv: bool,

    /// IANA time zone of the default range (the 30 days ending yesterday).
    #[arg(long, env = "TELEMETRY_TIMEZONE", default_value = "UTC", value_parser = crate::config::parse_timezone)]
    pub timezone: jiff::tz::TimeZone,

    /// Top values kept per metadata key.
    #[arg(long, env = "TELEMETRY_META_TOP_K", default_value_t = 20, allow_negative_numbers = true, value_parser = crate::config::parse_top_k)]
    pub meta_top_k: usize,
}

/// Flags of `telemetry-daily`.
#[derive(Debug, Args)]
pub struct TelemetryDailyArgs {
    #[command(flatten)]
    pub range: RangeArgs,

    /// Read and aggregate, write nothing, report what would change.
    #[arg(long)]
    pub dry_run: bool,

    /// Overwrite rollups even where the source now holds fewer events.
    #[arg(long)]
    pub force: bool,

    /// Also redo earlier days that received source rows since the last successful
    /// --changed run (found by the source's id, which must grow with insertion order).
    #[arg(long)]
    pub changed: bool,

    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub job: JobArgs,
}

/// Flags of `telemetry-purge` (the job's, but for `--lookback-days`, which it has no
/// use for).
#[derive(Debug, Args)]
#[command(mut_arg("lookback_days", |arg| arg.hide(true)))]
pub struct TelemetryPurgeArgs {
    /// Days of raw events to keep, ending yesterday; older days are purged once
    /// their rollups hold them. Required: there is no default.
    #[arg(long, env = "TELEMETRY_KEEP_DAYS", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_days: Option<u32>,

    /// Check and count, delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Rows deleted per transaction.
    #[arg(long, default_value_t = crate::telemetry_purge::DEFAULT_BATCH_SIZE, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub job: JobArgs,
}

/// Flags of `runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// How many runs, newest first (at most 100).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS_LISTED as i64))]
    pub limit: u32,

    /// Show this one run, with its whole report.
    #[arg(long, conflicts_with = "limit", allow_negative_numbers = true)]
    pub id: Option<i64>,

    /// Only the runs of this job (telemetry-daily, telemetry-purge).
    #[arg(long, conflicts_with = "id")]
    pub job: Option<crate::jobs::Job>,

    /// Print the runs as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `demo`: the job's, but for `--lookback-days` (the demo's days are fixed).
#[derive(Debug, Args)]
#[command(mut_arg("lookback_days", |arg| arg.hide(true)))]
pub struct DemoArgs {
    /// Print the run report as JSON instead of the demo's summary.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub job: JobArgs,
}

impl Cli {
    /// Parses the process arguments. Bad usage prints one line naming the problem
    /// and gives exit status 2; `--help` and `--version` print and give 0.
    ///
    /// # Errors
    ///
    /// The exit status to leave with when the program should not go on.
    pub fn parse_args() -> Result<Self, ExitCode> {
        Self::try_parse().map_err(|error| {
            use clap::error::ErrorKind;
            match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = error.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    eprintln!("{}", usage_line(&error));
                    ExitCode::from(2)
                }
            }
        })
    }
}

/// Bad usage in one line: the problem (blaming the environment variable when the value
/// came from there), clap's tip or allowed values when it has them, and where to look.
fn usage_line(error: &clap::Error) -> String {
    use clap::CommandFactory as _;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let rendered = error.render().to_string();
    let mut line = rendered
        .lines()
        .next()
        .unwrap_or("error: bad usage")
        .to_owned();
    if matches!(
        error.kind(),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let commands: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|command| command.get_name().to_owned())
            .collect();
        return format!(
            "error: a command is needed: {} (see veris-jobs --help)",
            commands.join(", ")
        );
    }
    // A value that came from the environment is blamed on its variable, not on a flag
    // the command line never gave.
    if let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) && let Some(long) = arg.split_whitespace().next()
        && !std::env::args().any(|given| given == long || given.starts_with(&format!("{long}=")))
        && let Some(env) = env_of(&Cli::command(), long.trim_start_matches("--"))
    {
        line = line.replace(
            &format!("'{value}' for '{arg}'"),
            &format!("'{value}' for {env} (from the environment)"),
        );
    }
    for extra in rendered.lines().map(str::trim) {
        if extra.starts_with("[possible values:") || extra.starts_with("tip:") {
            line = format!("{line}; {extra}");
        }
    }
    format!("{line} (see veris-jobs --help)")
}

/// The environment variable of the flag `--long`, in `command` or its subcommands.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

/// Sets up `tracing` on stderr in the chosen format. `RUST_LOG` filters; without
/// it `serve` logs at `info` (a line per request and per day), the other commands
/// only warnings and errors, since their report says the rest.
pub fn init_logging(cli: &Cli) {
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cli.global.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the parsed command.
///
/// # Errors
///
/// [`Error`], whose [`Error::exit_code`] gives the exit status.
pub async fn execute(cli: Cli) -> Result<ExitCode, Error> {
    let Cli { global, command } = cli;
    match command {
        Command::Migrate => migrate(&global).await,
        Command::TelemetryDaily(args) => telemetry_daily(&global, args).await,
        Command::TelemetryPurge(args) => telemetry_purge(&global, args).await,
        Command::Runs(args) => runs(&global, args).await,
        Command::Serve(args) => serve(&global, args).await,
        Command::Demo(args) => demo(&global, args).await,
        Command::Report(args) => report(&global, args).await,
    }
}

async fn report(global: &GlobalArgs, args: ReportArgs) -> Result<ExitCode, Error> {
    let range = match args.range.range(&args.timezone)? {
        Some(range) => range,
        None => {
            DayRange::ending_today(jiff::Timestamp::now(), &args.timezone, DEFAULT_REPORT_DAYS)?
        }
    };
    if args.by == Grouping::Hour && range.len_days() > MAX_HOUR_REPORT_DAYS {
        return Err(Error::Usage(format!(
            "--by hour covers at most {MAX_HOUR_REPORT_DAYS} days; the range {range} has {}",
            range.len_days()
        )));
    }
    let named = args.events.clone();
    let request = ReportRequest {
        range,
        by: args.by,
        events: args.events,
        top_k: args.meta_top_k,
        timezone: args.timezone.clone(),
    };
    let app = application(global, RunOptions::default(), Connect::Read).await?;
    let report = telemetry_report(app.store(), &request).await?;
    if args.json {
        write_stdout(&format!("{}\n", to_json(&report)));
    } else if args.csv {
        write_stdout(&report.to_csv());
    } else {
        write_stdout(&report.to_table());
        // An event named that has no rows reads as zeros: say so.
        let seen: std::collections::BTreeSet<&str> = report
            .periods
            .iter()
            .flat_map(|period| period.events.iter().map(|event| event.event.as_str()))
            .collect();
        let missing: Vec<&str> = named
            .iter()
            .map(String::as_str)
            .filter(|name| !seen.contains(name))
            .collect();
        if !missing.is_empty() {
            write_stdout(&format!(
                "no rollup rows for {} from {} to {}: check the name, or roll those days up\n",
                missing.join(", "),
                report.start_date,
                report.end_date
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The application for a command: `global`'s database and source, `job`'s settings
/// for its runs, connected as `connect` says.
async fn application(
    global: &GlobalArgs,
    job: RunOptions,
    connect: Connect,
) -> Result<Application, Error> {
    let settings = Settings {
        database_url: global.database_url.clone(),
        source_table: global.source_table.clone(),
        source_url: global.source_url.clone(),
        job,
        max_http_runs: crate::launcher::DEFAULT_REQUESTED_RUNS,
    };
    Application::build(settings, connect).await
}

async fn migrate(global: &GlobalArgs) -> Result<ExitCode, Error> {
    let app = application(global, RunOptions::default(), Connect::Write).await?;
    let store = app.store();
    store.migrate().await?;
    store.close().await;
    if store.has_external_source() {
        write_stdout(&format!(
            "migrated: rollup table {} and run history are ready (events are read from {} at the source URL)\n",
            crate::store::ROLLUP_TABLE,
            global.source_table
        ));
    } else {
        write_stdout(&format!(
            "migrated: source table {} and rollup table {} are ready\n",
            global.source_table,
            crate::store::ROLLUP_TABLE
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn telemetry_daily(global: &GlobalArgs, args: TelemetryDailyArgs) -> Result<ExitCode, Error> {
    let range = args.range.range(&args.job.timezone)?;
    // Only `migrate` (and `demo`) make a database: a run on a file that is not there
    // says so rather than creating an empty one.
    let app = application(global, args.job.run_options(), Connect::Read).await?;
    let launcher = app.launcher();
    let options = RunOptions {
        range,
        dry_run: args.dry_run,
        force: args.force,
        changed: args.changed,
        ..launcher.job().clone()
    };
    let mut progress = TerminalProgress::new(!args.json && std::io::stdout().is_terminal());
    let report = launcher.run_here(&options, &mut progress).await?;
    launcher.store().close().await;
    progress.finish();
    print_report(&report, args.json);
    Ok(exit_code(&report))
}

async fn telemetry_purge(global: &GlobalArgs, args: TelemetryPurgeArgs) -> Result<ExitCode, Error> {
    let Some(keep_days) = args.keep_days else {
        return Err(crate::telemetry_purge::PurgeError::KeepDaysRequired.into());
    };
    let app = application(global, args.job.run_options(), Connect::Read).await?;
    let launcher = app.launcher();
    let options = PurgeOptions {
        keep_days,
        dry_run: args.dry_run,
        batch_size: args.batch_size,
        trigger: crate::model::Trigger::Cli,
        job: launcher.job().clone(),
    };
    let report = launcher.purge_here(&options).await?;
    launcher.store().close().await;
    if args.json {
        write_stdout(&format!("{}\n", to_json(&report)));
    } else {
        write_stdout(&report.to_table());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn runs(global: &GlobalArgs, args: RunsArgs) -> Result<ExitCode, Error> {
    let app = application(global, RunOptions::default(), Connect::Read).await?;
    let store = app.store();
    if let Some(id) = args.id {
        let run = store
            .run(id)
            .await?
            .ok_or_else(|| Error::Usage(format!("--id {id}: no such run in job_runs")))?;
        match (&run.report, args.json) {
            (_, true) => write_stdout(&format!("{}\n", to_json(&run))),
            (Some(report), false) => {
                write_stdout(&runs_table(std::slice::from_ref(&run)));
                match serde_json::from_value::<RunReport>(report.clone()) {
                    Ok(report) => write_stdout(&format!("\n{}", report.to_table())),
                    Err(_) => write_stdout(&format!("\n{}\n", to_json(report))),
                }
            }
            (None, false) => write_stdout(&runs_table(std::slice::from_ref(&run))),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let runs = store
        .recent_runs_of(args.limit, args.job.map(|job| job.name()))
        .await?;
    if args.json {
        write_stdout(&format!("{}\n", to_json(&runs)));
    } else {
        write_stdout(&runs_table(&runs));
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value)
        .expect("run records and reports hold only strings, numbers and JSON values")
}

async fn serve(global: &GlobalArgs, args: ServeArgs) -> Result<ExitCode, Error> {
    let settings = ServeSettings {
        bind: args.bind,
        max_range_days: args.max_range_days,
        schedule: args.schedule,
        today_every: args.today_every,
        purge_schedule: args.purge_schedule,
        keep_days: args.keep_days,
        secret: cron_secret()?,
        read_secret: read_secret()?,
    };
    if let Some(read) = &settings.read_secret
        && read.same_as(&settings.secret)
    {
        return Err(Error::Usage(
            "READ_SECRET equals CRON_SECRET, so the read-only secret would start runs; \
             give READ_SECRET a value of its own"
                .into(),
        ));
    }
    let app = Application::build(
        Settings {
            database_url: global.database_url.clone(),
            source_table: global.source_table.clone(),
            source_url: global.source_url.clone(),
            job: args.job.run_options(),
            max_http_runs: args.max_http_runs as usize,
        },
        Connect::Lazy,
    )
    .await?;
    app.serve(settings)
        .await?
        .run_until_stopped(shutdown_signal())
        .await;
    Ok(ExitCode::SUCCESS)
}

async fn demo(global: &GlobalArgs, args: DemoArgs) -> Result<ExitCode, Error> {
    if global.source_url.is_some() {
        return Err(Error::Usage(
            "demo writes its sample events into the database and reads them from there; \
             run it without --source-url (TELEMETRY_SOURCE_URL)"
                .into(),
        ));
    }
    let app = application(global, args.job.run_options(), Connect::Write).await?;
    let launcher = app.launcher();
    let outcome = crate::demo::run(launcher, &global.source_table).await?;
    launcher.store().close().await;
    if args.json {
        write_stdout(&format!("{}\n", to_json(&outcome.report)));
    } else {
        write_stdout(&outcome.to_text());
    }
    Ok(exit_code(&outcome.report))
}

/// The read-only secret from `READ_SECRET`, if set.
fn read_secret() -> Result<Option<Secret>, Error> {
    match std::env::var("READ_SECRET") {
        Ok(value) => Secret::read(&value).map(Some).map_err(Error::Usage),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Error::Usage("READ_SECRET is not valid UTF-8".into()))
        }
    }
}

/// The endpoint's secret from `CRON_SECRET` (never from a flag, so it stays out of
/// process listings and shell history).
fn cron_secret() -> Result<CronSecret, Error> {
    let value = std::env::var("CRON_SECRET").map_err(|_| {
        Error::Usage(format!(
            "CRON_SECRET is not set: serve needs a bearer secret of at least {MIN_SECRET_LEN} characters in the environment"
        ))
    })?;
    CronSecret::new(&value).map_err(Error::Usage)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received: finishing runs under way");
}

/// The run history as a readable table.
fn runs_table(runs: &[RunRecord]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:>5}  {:<15}  {:<8}  {:<9}  {:<24}  {:<24}  {:>9}\n",
        "id", "job", "trigger", "status", "started (UTC)", "range", "days"
    );
    for run in runs {
        let range = if run.start_date == run.end_date {
            run.start_date.clone()
        } else {
            format!("{} .. {}", run.start_date, run.end_date)
        };
        let days = format!("{}/{}", run.days_done, run.days_total);
        let _ = writeln!(
            out,
            "{:>5}  {:<15}  {:<8}  {:<9}  {:<24}  {:<24}  {:>9}",
            run.id, run.job, run.trigger, run.status, run.started_at, range, days
        );
    }
    if runs.is_empty() {
        out.push_str("(no runs recorded yet)\n");
    }
    out
}

/// Prints the report as a table, or as JSON with `json`.
fn print_report(report: &RunReport, json: bool) {
    if json {
        write_stdout(&format!("{}\n", to_json(report)));
    } else {
        write_stdout(&report.to_table());
    }
}

/// Writes to stdout, ignoring a closed pipe (`veris-jobs … | head` is fine).
fn write_stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// 0 when every day is ok, 1 when any failed.
fn exit_code(report: &RunReport) -> ExitCode {
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
