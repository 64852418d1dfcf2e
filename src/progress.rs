//! The progress bar of a multi-day run on a terminal, and the log writer that
//! keeps log lines from tearing it.
//!
//! [`TerminalProgress`] draws days done of the total, events per second and the
//! time left on stderr. [`LogWriter`] is where `tracing` writes: while a bar is
//! showing, it clears the bar, writes the line, and draws the bar again below it.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model::DayReport;
use crate::telemetry_daily::Progress;

/// The bar showing now, if any, for log lines to step around.
static SHOWING: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn showing() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    // A poisoned lock only means a thread panicked while logging; the bar is still valid.
    SHOWING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A progress bar for a run, drawn only when asked for and stderr is a terminal,
/// and only for runs of more than one day.
#[derive(Debug)]
pub struct TerminalProgress {
    wanted: bool,
    bar: Option<ProgressBar>,
    started: Instant,
    events_read: u64,
}

impl TerminalProgress {
    /// `wanted`: the caller's choice (the command line: stdout is a terminal and the
    /// report is not JSON).
    pub fn new(wanted: bool) -> Self {
        Self {
            wanted,
            bar: None,
            started: Instant::now(),
            events_read: 0,
        }
    }

    /// Removes the bar, so that what follows starts on a clean line.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            showing().take();
            bar.finish_and_clear();
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for TerminalProgress {
    fn started(&mut self, days_total: usize) {
        self.started = Instant::now();
        let target = ProgressDrawTarget::stderr();
        if !self.wanted || days_total < 2 || target.is_hidden() {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(days_total as u64), target);
        // The template is a constant, checked by the tests: it cannot fail to parse.
        let style = ProgressStyle::with_template(BAR_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message("starting");
        // Keeps the elapsed time moving while a big day is read.
        bar.enable_steady_tick(Duration::from_millis(250));
        *showing() = Some(bar.clone());
        self.bar = Some(bar);
    }

    fn day_done(&mut self, day: &DayReport) {
        self.events_read += day.events_read;
        let Some(bar) = &self.bar else { return };
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.events_read as f64 / seconds) as u64;
        bar.set_message(format!(
            "{} events, {}/s",
            HumanCount(self.events_read),
            HumanCount(rate)
        ));
        bar.inc(1);
    }
}

/// Short enough for an 80-column terminal.
const BAR_TEMPLATE: &str = "[{bar:20}] {pos}/{len} days  {msg}  {elapsed} elapsed, ~{eta} left";

/// The writer `tracing` logs to: stderr, around the progress bar if one is showing.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing hands over each line whole, so a line is never split by a redraw.
        let bar = showing().clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_template_parses() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}
