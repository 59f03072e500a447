//! Whole sessions against the session machines (src/session/drill.rs):
//! the first byte picks the receiver or the sender, the rest are the
//! peer's frames and the I/O layer's outcomes. Properties: the receiver
//! never ends a session as complete with an accepted entry unsettled; the
//! sender never passes on an answer the protocol forbids. Every 2^20 runs
//! (and with XFER_FUZZ_REPORT set, every run) it prints which transitions
//! were reached so far.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use xfer::session::drill::{Coverage, receiver_session, sender_session};

static SEEN: Mutex<(u64, Option<Coverage>)> = Mutex::new((0, None));

fuzz_target!(|data: &[u8]| {
    let mut coverage = Coverage::default();
    match data.split_first() {
        Some((pick, rest)) if pick % 2 == 0 => receiver_session(rest, &mut coverage),
        Some((_, rest)) => sender_session(rest, &mut coverage),
        None => return,
    }
    let mut seen = SEEN.lock().unwrap();
    seen.0 += 1;
    let runs = seen.0;
    let total = seen.1.get_or_insert_with(Coverage::default);
    total.merge(&coverage);
    if runs.is_power_of_two() && runs >= 1 << 20 || std::env::var_os("XFER_FUZZ_REPORT").is_some() {
        eprintln!("session transitions after {runs} runs:");
        for (transition, count) in &total.transitions {
            eprintln!("  {transition}: {count}");
        }
    }
});
