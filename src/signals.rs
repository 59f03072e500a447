//! Ctrl-C, SIGTERM, SIGHUP and SIGQUIT: stop promptly, through the normal error path, so
//! temporary files are removed and the final name is never touched.
//!
//! A watcher thread sets a flag and shuts down every registered socket,
//! which wakes any blocked accept, read or write with an error; the session
//! code then unwinds and its guards clean up. If the process is still alive
//! after a grace period (or on a second signal), the watcher removes the
//! registered temporary files itself and exits with code 130. This module
//! must never decide what a transfer means; it only interrupts.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::exit_codes::ExitCode;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    sockets: None,
    temps: None,
});

/// How long the normal cleanup path gets before the watcher takes over.
const GRACE: Duration = Duration::from_secs(3);

struct Registry {
    sockets: Option<HashMap<u64, OwnedFd>>,
    temps: Option<HashMap<u64, PathBuf>>,
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub use crate::exit_codes::interrupted;

/// Sleeps for `d` in short steps; false as soon as a signal has arrived
/// (retry back-offs and a server's periodic chores must not hold up a
/// stop).
pub fn sleep_unless_interrupted(d: Duration) -> bool {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        if interrupted() {
            return false;
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(50).min(left));
    }
    !interrupted()
}

/// Starts the watcher thread. Call once, from `main`.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])?;
    std::thread::Builder::new()
        .name("xfer-signals".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return;
            }
            crate::exit_codes::mark_interrupted();
            // At the code prompt nothing is under way: stop at once, on a
            // line of its own (the prompt left the cursor on its line).
            if AT_PROMPT.load(Ordering::SeqCst) {
                let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), b"\n");
                crate::output::error_line("interrupted");
                std::process::exit(ExitCode::Interrupted.code());
            }
            shut_down_sockets();
            // Either the main thread exits within the grace period, or a
            // second signal or the deadline makes us finish the job.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    let _ = tx.send(());
                }
            });
            let _ = rx.recv_timeout(GRACE);
            remove_temps();
            crate::output::error_line("interrupted");
            std::process::exit(ExitCode::Interrupted.code());
        })?;
    Ok(())
}

fn shut_down_sockets() {
    let reg = registry();
    for fd in reg.sockets.iter().flat_map(|m| m.values()) {
        let socket = socket2::SockRef::from(fd);
        // Abandoned, not finished: closing resets the connection, so a peer
        // blocked writing to us fails at once. A plain close could leave it
        // probing a zero window for a minute or more (the kernel keeps the
        // closed socket in FIN-WAIT-2), found by stress/ (SIGTERM to a
        // receiver mid-file made the sender time out after 90 s).
        let _ = socket.set_linger(Some(Duration::ZERO));
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
}

fn remove_temps() {
    let reg = registry();
    for path in reg.temps.iter().flat_map(|m| m.values()) {
        let _ = std::fs::remove_file(path);
    }
}

static AT_PROMPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// While this lives, the process waits at a prompt with nothing under way:
/// a signal ends it at once instead of after the grace period.
pub struct Prompting(());

/// Marks the code prompt (see [`Prompting`]).
pub fn prompting() -> Prompting {
    AT_PROMPT.store(true, Ordering::SeqCst);
    Prompting(())
}

impl Drop for Prompting {
    fn drop(&mut self) {
        AT_PROMPT.store(false, Ordering::SeqCst);
    }
}

/// Keeps something registered with the watcher until dropped.
#[derive(Debug)]
pub struct Watch(u64);

impl Drop for Watch {
    fn drop(&mut self) {
        let mut reg = registry();
        if let Some(m) = reg.sockets.as_mut() {
            m.remove(&self.0);
        }
        if let Some(m) = reg.temps.as_mut() {
            m.remove(&self.0);
        }
    }
}

/// Registers a socket to be shut down on a signal. If the socket cannot be
/// duplicated the registration is skipped: the deadline still bounds it.
pub fn watch_socket(socket: &impl AsFd) -> Watch {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if let Ok(fd) = socket.as_fd().try_clone_to_owned() {
        registry()
            .sockets
            .get_or_insert_with(HashMap::new)
            .insert(id, fd);
        if interrupted() {
            shut_down_sockets();
        }
    }
    Watch(id)
}

/// Registers a temporary file to be removed if the process must be ended
/// before its own guard could run.
pub fn watch_temp(path: &Path) -> Watch {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry()
        .temps
        .get_or_insert_with(HashMap::new)
        .insert(id, path.to_path_buf());
    Watch(id)
}
