//! Trying an attempt again after a network failure or a timeout
//! (`--retries`): 1 s, 2 s, 4 s, ... apart, or as long as a busy peer asked,
//! saying why each time. For whichever side connects: `xfer send`, and
//! `xfer recv --connect`.

use std::time::Duration;

use serde_json::json;

use crate::exit_codes::{ExitCode, Failure};
use crate::output::Reporter;
use crate::protocol;
use crate::signals;

/// Network failures, timeouts and a busy receiver may pass; everything
/// else will not.
pub fn worth_retrying(e: &anyhow::Error) -> bool {
    let transient = e
        .chain()
        .any(|c| c.downcast_ref::<Failure>().is_some_and(|f| f.transient));
    !signals::interrupted()
        && (transient
            || matches!(
                ExitCode::for_error(e),
                ExitCode::Network | ExitCode::Timeout
            ))
}

/// The wait a busy receiver asked for, if it did.
fn retry_after(e: &anyhow::Error) -> Option<Duration> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<Failure>())
        .filter(|f| f.transient)
        .find_map(|f| protocol::parse_retry_hint(&f.message))
}

/// 1 s, 2 s, 4 s, ... at most 30 s before attempt `n + 1`.
fn backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.saturating_sub(1).min(5)).min(30))
}

/// Runs `attempt` until it succeeds, fails in a way `worth` does not
/// retry, or `retries` more attempts are used up, waiting 1 s, 2 s, 4 s,
/// ... (or what a busy peer asked) between attempts and saying why.
pub fn retrying<T>(
    retries: u32,
    reporter: &Reporter,
    worth: impl Fn(&anyhow::Error) -> bool,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut tries = 0;
    loop {
        let result = attempt();
        match &result {
            Err(e) if tries < retries && worth(e) => {
                tries += 1;
                // A peer that says when to come back (a penalty) is taken
                // at its word, rather than knocking again too soon.
                let delay = backoff(tries).max(retry_after(e).unwrap_or_default());
                reporter.info(|| {
                    format!(
                        "{e:#}; retrying in {} s (attempt {} of {})",
                        delay.as_secs(),
                        tries + 1,
                        retries + 1
                    )
                });
                reporter.event(
                    "retry",
                    || json!({ "attempt": tries, "delay_seconds": delay.as_secs(), "error": format!("{e:#}") }),
                );
                if !signals::sleep_unless_interrupted(delay) {
                    return result;
                }
            }
            _ => return result,
        }
    }
}
