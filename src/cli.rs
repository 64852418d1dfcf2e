//! The command line: `migrate`, `telemetry-daily` and `demo`.
//!
//! Parses arguments with clap, calls the library, prints the report, and turns the
//! outcome into the contract's exit status (0 all days ok, 1 a day failed, 2 bad
//! usage or configuration).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{GlobalArgs, JobArgs, LogFormat, RangeArgs, ServeArgs};
use crate::error::Error;
use crate::http::{self, AppState, CronSecret, JOB_PATH, MIN_SECRET_LEN};
use crate::progress::TerminalProgress;
use crate::schedule::Schedule;
use crate::store::{RunHistory as _, RunRecord, Store};
use crate::telemetry_daily::{self, RunReport};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Background jobs of the Veris application.
#[derive(Debug, Parser)]
#[command(name = "veris-jobs", version, about)]
pub struct Cli {
    #[command(flatten)]
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
    /// List recent runs from the run history (job_runs).
    Runs(RunsArgs),
    /// Serve the job over HTTP (needs CRON_SECRET in the environment).
    Serve(ServeArgs),
    /// Fill the database with a few days of sample events and run the job over them.
    Demo(DemoArgs),
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

/// Flags of `runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,

    /// Print the runs as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
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
                    let rendered = error.render().to_string();
                    let first = rendered.lines().next().unwrap_or("error: bad usage");
                    eprintln!("{first} (see veris-jobs --help)");
                    ExitCode::from(2)
                }
            }
        })
    }
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
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    // Checked before connecting, so a missing secret or a bad schedule is reported as such.
    let (secret, schedule) = match &cli.command {
        Command::Serve(args) => (Some(cron_secret()?), parse_schedule(args)?),
        _ => (None, None),
    };
    let store = match &cli.command {
        // A server starts even while its database is down, and answers 503 until it is up.
        Command::Serve(_) => {
            Store::connect_lazy(&cli.global.database_url, &cli.global.source_table).await?
        }
        _ => Store::connect(&cli.global.database_url, &cli.global.source_table).await?,
    };
    match cli.command {
        Command::Migrate => {
            store.migrate().await?;
            write_stdout(&format!(
                "migrated: source table {} and rollup table telemetry_daily are ready\n",
                cli.global.source_table
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::TelemetryDaily(args) => {
            let range = args.range.range()?;
            let mut options = args.job.run_options(range, args.dry_run, args.force);
            options.changed = args.changed;
            let mut progress = TerminalProgress::new(!args.json && std::io::stdout().is_terminal());
            let report =
                telemetry_daily::run_with_progress(&store, &options, &mut progress).await?;
            progress.finish();
            print_report(&report, args.json);
            Ok(exit_code(&report))
        }
        Command::Runs(args) => {
            let runs = store.recent_runs(args.limit).await?;
            if args.json {
                // Run records hold only strings, numbers and reports: serializing cannot fail.
                write_stdout(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&runs).unwrap_or_default()
                ));
            } else {
                write_stdout(&runs_table(&runs));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let options = args.job.run_options(None, false, false);
            let secret = secret.ok_or_else(|| Error::Usage("CRON_SECRET is not set".into()))?;
            let state = AppState::new(store, options, args.max_range_days, secret);
            let listener = TcpListener::bind(args.bind).await.map_err(|e| {
                Error::Usage(format!("--bind {}: cannot listen there: {e}", args.bind))
            })?;
            let address = listener.local_addr().unwrap_or(args.bind);
            tracing::info!(%address, "serving {JOB_PATH} and /healthz");
            // One signal stops both the schedule and the server.
            let stop = CancellationToken::new();
            let scheduler = schedule.map(|schedule| {
                tracing::info!(
                    schedule = schedule.expression(),
                    timezone = args.job.timezone.iana_name().unwrap_or("UTC"),
                    "running telemetry-daily on schedule"
                );
                tokio::spawn(crate::schedule::run_on_schedule(
                    state.clone(),
                    schedule,
                    stop.clone().cancelled_owned(),
                ))
            });
            let stop_on_signal = stop.clone();
            let served = http::serve(listener, state, async move {
                shutdown_signal().await;
                stop_on_signal.cancel();
            })
            .await;
            stop.cancel();
            if let Some(scheduler) = scheduler {
                let _ = scheduler.await;
            }
            served.map_err(|e| Error::Usage(format!("serving on {address}: {e}")))?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let report = crate::demo::run(&store, &cli.global.source_table, &args.job).await?;
            Ok(exit_code(&report))
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

fn parse_schedule(args: &ServeArgs) -> Result<Option<Schedule>, Error> {
    args.schedule
        .as_deref()
        .map(|expression| {
            Schedule::parse(expression, args.job.timezone.clone())
                .map_err(|e| Error::Usage(format!("--schedule: {e}")))
        })
        .transpose()
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
        "{:>5}  {:<8}  {:<9}  {:<24}  {:<23}  {:>9}\n",
        "id", "trigger", "status", "started (UTC)", "range", "days"
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
            "{:>5}  {:<8}  {:<9}  {:<24}  {:<23}  {:>9}",
            run.id, run.trigger, run.status, run.started_at, range, days
        );
    }
    if runs.is_empty() {
        out.push_str("(no runs recorded yet)\n");
    }
    out
}

/// Prints the report as a table, or as JSON with `json`.
pub fn print_report(report: &RunReport, json: bool) {
    if json {
        // A report holds only strings and numbers, so serializing cannot fail.
        let text = serde_json::to_string_pretty(report).unwrap_or_default();
        write_stdout(&format!("{text}\n"));
    } else {
        write_stdout(&report.to_table());
    }
}

/// Writes to stdout, ignoring a closed pipe (`veris-jobs … | head` is fine).
pub fn write_stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// 0 when every day is ok, 1 when any failed.
pub fn exit_code(report: &RunReport) -> ExitCode {
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
