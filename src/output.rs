//! What the user sees: one-line messages on stderr, a progress bar on
//! stderr for people, and one JSON object per line on stdout for scripts.
//!
//! This module only presents; it never decides outcomes. A closed stdout is
//! not an error here: a script that stopped reading should not fail a
//! transfer that succeeded.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::names::escape_for_terminal;

/// How much to say, from `--quiet` and `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporter {
    pub quiet: bool,
    pub json: bool,
    /// Whether progress bars may be drawn at all.
    pub bars: bool,
    /// JSON events go to stderr because stdout carries the data.
    pub events_to_stderr: bool,
}

impl Reporter {
    pub fn new(quiet: bool, json: bool) -> Self {
        Reporter {
            quiet,
            json,
            bars: true,
            events_to_stderr: false,
        }
    }

    /// The same reporter, writing JSON events to stderr (stdout is data).
    pub fn with_events_on_stderr(self) -> Self {
        Reporter {
            events_to_stderr: true,
            ..self
        }
    }

    /// The same reporter, with progress bars allowed or not.
    pub fn with_progress(self, bars: bool) -> Self {
        Reporter { bars, ..self }
    }

    /// A line for people, on stderr, unless `--quiet`.
    /// (The message is built only when it will be shown: a receiver of many
    /// small files would otherwise spend its time formatting.)
    pub fn info<M: AsRef<str>>(&self, message: impl FnOnce() -> M) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "xfer: {}", message().as_ref());
        }
    }

    /// One JSON event on stdout with `--json`, with its `time`; `fields`
    /// must be an object.
    /// `fields` is built only with `--json`.
    pub fn event(&self, name: &str, fields: impl FnOnce() -> Value) {
        if !self.json {
            return;
        }
        // Every event says when, in UTC (RFC 3339, milliseconds), so a
        // log kept night after night can be read back in order.
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut obj = json!({ "event": name, "time": time });
        if let (Some(o), Value::Object(extra)) = (obj.as_object_mut(), fields()) {
            o.extend(extra);
        }
        if self.events_to_stderr {
            let _ = writeln!(std::io::stderr().lock(), "{obj}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{obj}");
            let _ = out.flush();
        }
    }

    /// A progress bar for `total` bytes of `name` (a byte counter when the
    /// total is unknown), drawn only for a person watching a terminal.
    pub fn progress(&self, name: impl AsRef<[u8]>, total: Option<u64>) -> Progress {
        let visible = self.bars && !self.quiet && std::io::stderr().is_terminal();
        if !visible {
            // Nothing to draw, so no bar at all: this runs once per file,
            // and even a hidden indicatif bar builds its state and parses
            // a default style (7.6 % of a receiver's CPU for 10,000 small
            // files, by perf).
            return Progress {
                bar: None,
                estimating: std::sync::atomic::AtomicBool::new(true),
            };
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        // No estimate before the first byte: "eta 0s" at 0 B said nothing.
        let template = if total.is_some() {
            "{msg:.bold} [{bar:30}] {binary_bytes}/{binary_total_bytes} {decimal_bytes_per_sec}"
        } else {
            "{msg:.bold} {spinner} {binary_bytes} {decimal_bytes_per_sec}"
        };
        bar.set_style(style(template));
        bar.set_message(escape_for_terminal(name));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar: Some(bar),
            estimating: std::sync::atomic::AtomicBool::new(total.is_none()),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the template is valid")
        .progress_chars("=> ")
}

/// A live progress bar, or none when nobody watches; cleared when dropped.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The estimate is shown (or there is none to show: no total).
    estimating: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub fn set(&self, done: u64) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(done);
        if done > 0
            && !self
                .estimating
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            bar.set_style(style(
                "{msg:.bold} [{bar:30}] {binary_bytes}/{binary_total_bytes} {decimal_bytes_per_sec} eta {eta}",
            ));
        }
    }

    /// What the bar is about now (the current file); escaped here.
    pub fn set_message(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(escape_for_terminal(message));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The one way xfer says an error: one line on stderr, `xfer: error: `
/// and the message (an error's whole context chain, with `{:#}`).
pub fn error_line(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "xfer: error: {message}");
}

/// [`error_line`] for an error and its context chain.
pub fn print_error(e: &anyhow::Error) {
    error_line(&format!("{e:#}"));
}

/// A line for people outside a session's reporter (at start-up).
pub fn info_line(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "xfer: {message}");
}

/// The one way xfer warns: one line on stderr, shown even with `--quiet`
/// (a warning is about something the user should fix).
pub fn warning_line(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "xfer: warning: {message}");
}

/// `123.4 MB/s` from a byte count and a duration: decimal units, as
/// network tools report rates, and the same units as the progress bar;
/// small rates in kB/s or B/s rather than `0.0 MB/s`.
pub fn rate(bytes: u64, seconds: f64) -> String {
    if seconds <= 0.0 || bytes == 0 {
        return "- B/s".to_string();
    }
    let per_second = bytes as f64 / seconds;
    match per_second {
        r if r >= 1e9 => format!("{:.2} GB/s", r / 1e9),
        r if r >= 1e6 => format!("{:.1} MB/s", r / 1e6),
        r if r >= 1e3 => format!("{:.1} kB/s", r / 1e3),
        r => format!("{r:.0} B/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::rate;

    /// Issue 16: tiny files showed `0.0 MB/s`, and the bar and the last
    /// line used different units.
    #[test]
    fn rates_read_well_at_every_scale() {
        assert_eq!(rate(2_500_000_000, 1.0), "2.50 GB/s");
        assert_eq!(rate(350_300_000, 1.0), "350.3 MB/s");
        assert_eq!(rate(4096, 0.002), "2.0 MB/s");
        assert_eq!(rate(100, 0.5), "200 B/s");
        assert_eq!(rate(1500, 1.0), "1.5 kB/s");
        assert_eq!(rate(0, 0.0), "- B/s");
    }
}
