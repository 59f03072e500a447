//! The exit codes xfer promises to scripts, and how an error maps onto one.
//!
//! The numbers are a public contract (README, `--help`): never renumber.

use std::fmt;
use std::io;

use crate::protocol::{ProtocolError, Reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success,
    Internal,
    Usage,
    Network,
    Integrity,
    Refused,
    LocalFile,
    Timeout,
    Partial,
    Auth,
    /// Every file arrived verified, but the receiver's `--exec` hook failed.
    Hook,
    Interrupted,
}

impl ExitCode {
    pub const ALL: [ExitCode; 12] = [
        ExitCode::Success,
        ExitCode::Internal,
        ExitCode::Usage,
        ExitCode::Network,
        ExitCode::Integrity,
        ExitCode::Refused,
        ExitCode::LocalFile,
        ExitCode::Timeout,
        ExitCode::Partial,
        ExitCode::Auth,
        ExitCode::Hook,
        ExitCode::Interrupted,
    ];

    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Internal => 1,
            ExitCode::Usage => 2,
            ExitCode::Network => 3,
            ExitCode::Integrity => 4,
            ExitCode::Refused => 5,
            ExitCode::LocalFile => 6,
            ExitCode::Timeout => 7,
            ExitCode::Partial => 8,
            ExitCode::Auth => 9,
            ExitCode::Hook => 10,
            ExitCode::Interrupted => 130,
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Success => "success: the receiver verified the SHA-256",
            ExitCode::Internal => "unexpected internal error",
            ExitCode::Usage => "usage error: bad flag or argument",
            ExitCode::Network => "network: cannot connect, connection lost, or protocol error",
            ExitCode::Integrity => {
                "integrity: SHA-256 mismatch or tampered data; the data was not kept"
            }
            ExitCode::Refused => {
                "refused by the receiver: file exists, bad name, too large, no room on its disk, busy"
            }
            ExitCode::LocalFile => {
                "local file error: not found, permission, disk full (the receiver's own code when its disk cannot hold a file)"
            }
            ExitCode::Timeout => "timeout: the peer stalled or did not answer in time",
            ExitCode::Partial => "partial: some files failed, the others arrived verified",
            ExitCode::Auth => {
                "authentication: wrong or missing code or key, or only one end is --insecure"
            }
            ExitCode::Hook => {
                "receiver only: every file arrived verified, but its --exec command failed for some"
            }
            ExitCode::Interrupted => "interrupted (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT)",
        }
    }

    /// Our code for a failure the peer reported with `reason` (a REFUSE,
    /// an ACK that failed, an ERROR).
    pub fn for_peer_reason(reason: Reason) -> ExitCode {
        match reason {
            Reason::Exists
            | Reason::BadName
            | Reason::TooLarge
            | Reason::Unsupported
            | Reason::LocalIo
            | Reason::Busy => ExitCode::Refused,
            Reason::Timeout => ExitCode::Timeout,
            Reason::Auth => ExitCode::Auth,
            Reason::Integrity => ExitCode::Integrity,
            Reason::Protocol | Reason::Interrupted | Reason::Other(_) => ExitCode::Network,
        }
    }

    /// Our code for an entry this receiver refused or could not keep with
    /// `reason`: its own disk or permissions (`LocalIo`), or a full disk,
    /// are a local file error here, whatever the sender is told.
    pub fn for_own_refusal(reason: Reason, disk_full: bool) -> ExitCode {
        match reason {
            _ if disk_full => ExitCode::LocalFile,
            Reason::LocalIo => ExitCode::LocalFile,
            other => ExitCode::for_peer_reason(other),
        }
    }

    /// The table shown in `--help` and mirrored in the README.
    pub fn table() -> String {
        let mut s = String::from("Exit codes:\n");
        for c in Self::ALL {
            s.push_str(&format!("  {:>3}  {}\n", c.code(), c.meaning()));
        }
        s
    }

    /// Picks the code for an error: after a signal, always `Interrupted`;
    /// else the first [`Failure`] in its chain wins; otherwise protocol and
    /// timeout errors are recognised by type.
    pub fn for_error(err: &anyhow::Error) -> ExitCode {
        // Whatever broke after a signal broke because of it.
        if interrupted() {
            return ExitCode::Interrupted;
        }
        for cause in err.chain() {
            if let Some(f) = cause.downcast_ref::<Failure>() {
                return f.code;
            }
            if let Some(p) = cause.downcast_ref::<ProtocolError>() {
                return match p {
                    ProtocolError::Io(e) if is_forged(e) => ExitCode::Integrity,
                    ProtocolError::Io(e) if is_timeout(e) => ExitCode::Timeout,
                    _ => ExitCode::Network,
                };
            }
            if let Some(e) = cause.downcast_ref::<io::Error>() {
                if is_forged(e) {
                    return ExitCode::Integrity;
                }
                if is_timeout(e) {
                    return ExitCode::Timeout;
                }
            }
        }
        ExitCode::Internal
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// A record that failed to open: altered, replayed, reordered, cut short or
/// of an impossible length. Carried inside an `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Forged(&'static str);

impl Forged {
    pub fn new(why: &'static str) -> Self {
        Forged(why)
    }
}

/// Whether `e` is an encrypted record that failed to open (the data was
/// tampered with), as opposed to a connection lost.
pub fn is_forged(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Forged>())
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once SIGINT, SIGTERM, SIGHUP or SIGQUIT has arrived: from then on
/// every error is the interruption's (exit 130).
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Records the interruption (the signal watcher calls this).
pub fn mark_interrupted() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A server stopped on request (SIGTERM, Ctrl-C): exit 130 as for any
/// interruption, but said as a plain "stopped" line, not an error.
#[derive(Debug, thiserror::Error)]
#[error("stopped")]
pub struct Stopped;

/// A socket read or write deadline passing shows up as one of these kinds.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An error whose exit code is already known where it happens.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
    /// The same attempt may well succeed later (a busy receiver), so
    /// `--retries` applies whatever the code.
    pub transient: bool,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            transient: false,
        }
    }

    /// The same failure, marked worth trying again later.
    pub fn transient(self) -> Self {
        Failure {
            transient: true,
            ..self
        }
    }

    /// A local file problem: `what` names the file and the action.
    pub fn local(what: impl fmt::Display, err: &io::Error) -> Self {
        Failure::new(ExitCode::LocalFile, format!("{what}: {}", io_reason(err)))
    }

    /// A network problem; deadlines become timeouts, and an encrypted
    /// record that failed to open is an integrity failure.
    pub fn network(what: impl fmt::Display, err: &io::Error) -> Self {
        if is_forged(err) {
            return Failure::new(ExitCode::Integrity, format!("{what}: {err}"));
        }
        let code = if is_timeout(err) {
            ExitCode::Timeout
        } else {
            ExitCode::Network
        };
        let reason = if is_timeout(err) {
            // A deadline of our own (--min-speed) says which.
            match err.get_ref() {
                Some(why) => format!("timed out: {why}"),
                None => "timed out".to_string(),
            }
        } else {
            io_reason(err)
        };
        Failure::new(code, format!("{what}: {reason}"))
    }
}

/// The OS's words for an I/O error, without the "(os error N)" suffix.
pub fn io_reason(err: &io::Error) -> String {
    let s = err.to_string();
    let s = match s.find(" (os error") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_documented_ones() {
        let got: Vec<i32> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130]);
    }

    /// The README's table says what `--help` says, code for code.
    #[test]
    fn the_readme_table_matches_the_help_table() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap();
        let section = &readme[readme.find("## Exit codes").unwrap()..];
        for c in ExitCode::ALL {
            let row = format!("| {} | {} |", c.code(), c.meaning());
            assert!(section.contains(&row), "README lacks the row {row}");
        }
    }

    #[test]
    fn table_lists_every_code() {
        let t = ExitCode::table();
        for c in ExitCode::ALL {
            assert!(t.contains(&format!("{:>3}  ", c.code())), "{c}");
        }
    }

    #[test]
    fn failure_in_the_chain_decides() {
        let err =
            anyhow::Error::new(Failure::new(ExitCode::Refused, "exists")).context("sending 'a'");
        assert_eq!(ExitCode::for_error(&err), ExitCode::Refused);
    }

    #[test]
    fn timeouts_and_protocol_errors_are_recognised() {
        let t = anyhow::Error::new(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(ExitCode::for_error(&t), ExitCode::Timeout);
        let p = anyhow::Error::new(ProtocolError::UnknownFrameType(9));
        assert_eq!(ExitCode::for_error(&p), ExitCode::Network);
        let other = anyhow::anyhow!("something odd");
        assert_eq!(ExitCode::for_error(&other), ExitCode::Internal);
    }

    #[test]
    fn io_reason_reads_like_a_sentence() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&e), "no such file or directory");
    }
}
