//! `recv --exec CMD`: a command run after each file is verified, made
//! durable and renamed into place.
//!
//! The command line is the operator's own and goes to `/bin/sh -c` as
//! written; what arrived reaches it only through environment variables
//! (`XFER_PATH`, `XFER_NAME`, `XFER_SIZE`, `XFER_SHA256`, `XFER_PEER`), so
//! no name a peer chose is ever interpolated into a shell command. Hooks of
//! one session run one at a time, in arrival order, on a thread of their
//! own, so a slow hook never holds up the transfer (or counts against the
//! sender's deadlines); the session waits for its last hooks before it
//! ends. A hook that exits non-zero, is killed by a signal or runs past
//! `--exec-timeout` (then its process group is killed) is a failed hook:
//! logged as a warning and a JSON `exec-failed` event, and the receiver
//! exits 10 unless something worse happened. The file stays in place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::output::Reporter;

/// `--exec` and `--exec-timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub command: OsString,
    pub timeout: Duration,
}

/// What a hook is told about one file.
#[derive(Debug, Clone)]
pub struct Arrived {
    pub path: PathBuf,
    pub name: Vec<u8>,
    pub size: u64,
    pub sha256: String,
    pub peer: String,
}

/// How the hooks of a session went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub ran: usize,
    pub failed: usize,
}

/// The hooks of one session: a queue and the thread that runs it.
pub struct Hooks {
    queue: Option<mpsc::Sender<Arrived>>,
    worker: Option<std::thread::JoinHandle<Tally>>,
}

impl Hooks {
    /// Starts the worker, if there is a hook (else every call is a no-op).
    pub fn start(hook: Option<&Hook>, reporter: &Reporter) -> Hooks {
        let Some(hook) = hook.cloned() else {
            return Hooks {
                queue: None,
                worker: None,
            };
        };
        let reporter = *reporter;
        let (tx, rx) = mpsc::channel::<Arrived>();
        let worker = std::thread::Builder::new()
            .name("xfer-exec".into())
            .spawn(move || {
                let mut tally = Tally::default();
                for arrived in rx {
                    tally.ran += 1;
                    if !run(&hook, &arrived, &reporter) {
                        tally.failed += 1;
                    }
                }
                tally
            })
            .ok();
        Hooks {
            queue: worker.as_ref().map(|_| tx),
            worker,
        }
    }

    /// Whether there is a hook to run (so callers build its facts only then).
    pub fn active(&self) -> bool {
        self.queue.is_some()
    }

    /// A file is in place: its hook runs after those before it.
    pub fn arrived(&self, arrived: Arrived) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(arrived);
        }
    }

    /// Waits for the hooks still queued; how they went.
    pub fn finish(mut self) -> Tally {
        drop(self.queue.take());
        self.worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default()
    }
}

/// Runs the hook for one file; whether it succeeded.
fn run(hook: &Hook, arrived: &Arrived, reporter: &Reporter) -> bool {
    use std::os::unix::process::CommandExt as _;
    let started = Instant::now();
    let shown = crate::names::escape_path(&arrived.path);
    // Its output goes to our stderr: stdout may carry JSON events.
    let to_stderr = || {
        use std::os::fd::AsFd as _;
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    };
    let (stdout, stderr) = (to_stderr(), to_stderr());
    let spawned = Command::new("/bin/sh")
        .arg("-c")
        .arg(&hook.command)
        .env("XFER_PATH", &arrived.path)
        .env(
            "XFER_NAME",
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&arrived.name),
        )
        .env("XFER_SIZE", arrived.size.to_string())
        .env("XFER_SHA256", &arrived.sha256)
        .env("XFER_PEER", &arrived.peer)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group, so a timeout ends everything it started.
        .process_group(0)
        .spawn();
    let outcome = match spawned {
        Err(e) => Err(format!("cannot start /bin/sh: {e}")),
        Ok(mut child) => wait(&mut child, hook.timeout),
    };
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            reporter.event("exec-done", || {
                crate::names::with_path(&arrived.path, json!({ "seconds": seconds }))
            });
            true
        }
        Err(why) => {
            crate::output::warning_line(&format!("--exec for '{shown}' failed: {why}"));
            reporter.event("exec-failed", || {
                crate::names::with_path(&arrived.path, json!({ "error": why, "seconds": seconds }))
            });
            false
        }
    }
}

/// Waits for the hook, at most `timeout` (then kills its process group).
fn wait(child: &mut std::process::Child, timeout: Duration) -> Result<(), String> {
    let until = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                return Err(match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit status {code}"),
                    (_, Some(signal)) => format!("killed by signal {signal}"),
                    _ => status.to_string(),
                });
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
        let out_of_time = Instant::now() >= until;
        if out_of_time || crate::signals::interrupted() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            return Err(if out_of_time {
                format!(
                    "still running after {} s (--exec-timeout); killed",
                    timeout.as_secs_f64()
                )
            } else {
                "interrupted".into()
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
