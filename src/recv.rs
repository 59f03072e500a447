//! The receiving side: listen, accept, and serve each session over any
//! [`Link`], writing files only through [`destination`].
//!
//! Everything read from the network is hostile until checked: lengths are
//! bounded by the protocol decoder, names by the destination rules, sizes by
//! free space, and every read has a deadline. This module must never create
//! a file under its final name except by committing a verified partial file.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::compress::DecompressReader;
use crate::config::{Limits, RecvConfig};
use crate::destination::{self, Prepared, Target};
use crate::exit_codes::{ExitCode, Failure};
use crate::gate::Next as Gate;
use crate::link::{self, Link};
use crate::names::{escape_for_terminal, shown};
use crate::output::{Reporter, rate};
use crate::pipeline::{CopyError, copy_hashed, copy_hashed_to_end};
use crate::protocol::{
    self, Accept, Ack, AckStatus, ChunkReader, Digest, FLAG_COMPRESSED, FLAG_DIR, FLAG_PATH,
    FLAG_STREAM, FLAG_SYMLINK, Frame, Offer, Reason, Refuse, hex,
};
use crate::secure::{Role, Secret};
use crate::session::allow_for_local_work;
use crate::session::receiver::{Accepted, Ending, Judged, Next, Receiver, Rules, Verdict};
use crate::signals;
use std::os::unix::ffi::OsStrExt;

/// What the receiver allows, from the command line.
#[derive(Debug, Clone)]
pub struct Policy {
    pub target: Target,
    pub overwrite: bool,
    /// Keep replaced files aside (`--backup`).
    pub backups: Option<destination::Backups>,
    /// What a sender must know to be served.
    pub secret: Secret,
    pub limits: Limits,
    /// Deadline for the peer's preamble and first offer after connecting.
    pub handshake_timeout: std::time::Duration,
    /// Deadline for every read and write after that.
    pub idle_timeout: std::time::Duration,
    /// `--exec`: run after each file is in place.
    pub hook: Option<crate::hook::Hook>,
    /// Which names are taken (`--portable-names`).
    pub names: crate::names::Policy,
    /// `--numeric-ids`, `--safe-links`.
    pub keep: destination::Keep,
    /// Most files in one batch of a group commit: see [`batch_files_for`].
    pub batch_files: usize,
}

impl Policy {
    /// With `-o` or `--stdout` the receiver takes exactly one file per session.
    fn one_file(&self) -> bool {
        matches!(self.target, Target::Output(_) | Target::Stdout)
    }
}

/// One file that arrived, was verified and is in place.
#[derive(Debug, Clone)]
pub struct Received {
    pub name: Vec<u8>,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: Digest,
    pub seconds: f64,
    /// Already there (quick check or checksum): nothing was transferred.
    pub skipped: bool,
    /// A directory entry, not a file.
    pub is_dir: bool,
    /// A symbolic or hard link, not a file of its own.
    pub link: bool,
}

/// Serves one session: handshake, then offers until END. Returns the files
/// received, or the first failure. A refused or unverified file does not end
/// the session (the stream is still in step); a broken stream does.
/// Every entry that failed is added to `failures` (name, error, exit code)
/// for the session's summary. `on_authenticated` is called once the peer
/// has shown it knows the secret (or none is needed), so a caller can tell
/// a stranger apart from a sender whose transfer failed, and count
/// handshakes in progress.
pub fn serve<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    policy: &Policy,
    reporter: &Reporter,
    failures: &mut Vec<serde_json::Value>,
    on_authenticated: &mut dyn FnMut(),
) -> anyhow::Result<Vec<Received>> {
    // One deadline for the whole opening, however the peer trickles it.
    let until = Instant::now() + policy.handshake_timeout;
    let keys = {
        let mut bounded = link::WithDeadline::new(stream, until);
        crate::handshake::exchange(&mut bounded, peer, &policy.secret, Role::Receiver)?.keys
    };
    on_authenticated();
    let mut link = crate::handshake::secured(stream, keys);
    serve_session(&mut link, peer, policy, reporter, failures, until)
}

/// The session after the handshake: offers until END. The rules (which
/// frame may come when, START offsets, the trailer, what END and a close
/// mean) are [`session::receiver::Receiver`]'s; this loop does the I/O.
fn serve_session<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    policy: &Policy,
    reporter: &Reporter,
    failures: &mut Vec<serde_json::Value>,
    until: Instant,
) -> anyhow::Result<Vec<Received>> {
    let mut run = Run {
        rules: Receiver::new(Rules {
            max_entries: policy.limits.max_entries,
            one_file: policy.one_file(),
            compression: true,
        }),
        stream,
        peer,
        policy,
        reporter,
        failures,
        destination: destination::Destination::new(policy.target.clone(), policy.overwrite)
            .with_backups(policy.backups)
            .with_policy(policy.names, policy.keep),
        pending: std::collections::VecDeque::new(),
        received: Vec::new(),
        directories: Vec::new(),
        failure: None,
        failed: 0,
        deadline: policy.idle_timeout,
        hooks: crate::hook::Hooks::start(policy.hook.as_ref(), reporter),
        batch: Batch::new(policy.batch_files),
        answered: false,
    };
    let mut next = run.first_offer(until);
    let result: anyhow::Result<()> = loop {
        next = match next {
            Ok(Next::Read) => run.read(),
            Ok(Next::Judge { id, offer }) => run.judge(id, &offer),
            Ok(Next::Refuse {
                name,
                reason,
                message,
                ..
            }) => {
                let e = refuse(run.stream, peer, reason, message);
                run.entry_failed(&name, e);
                Ok(Next::Read)
            }
            Ok(Next::Receive { file, start }) => run.receive(&file, start),
            Ok(Next::Violation { reason, message }) => {
                link::send_error(run.stream, reason, &message);
                let code = ExitCode::for_peer_reason(reason);
                break Err(Failure::new(code, format!("{peer}: {message}")).into());
            }
            Ok(Next::PeerAborted(e)) => break Err(link::peer_aborted(&e, peer)),
            Ok(Next::Over(ending)) => {
                run.ended(&ending);
                break Ok(());
            }
            Err(e) => break Err(e),
        };
    };
    run.finish(result)
}

/// One receiving session in progress: the rules, the link, the
/// destination, and what became of each entry so far.
struct Run<'a, S: Link + ?Sized> {
    rules: Receiver,
    stream: &'a mut S,
    peer: &'a str,
    policy: &'a Policy,
    reporter: &'a Reporter,
    /// Every entry that failed, for the summary.
    failures: &'a mut Vec<serde_json::Value>,
    destination: destination::Destination,
    /// Accepted files, in offer order, with where their data goes.
    pending: std::collections::VecDeque<Pending>,
    received: Vec<Received>,
    /// Directory entries get their mode and mtime once their files are in.
    directories: Vec<(PathBuf, Offer)>,
    /// The first entry that failed, and how many did.
    failure: Option<anyhow::Error>,
    failed: usize,
    /// The deadline set on the link now.
    deadline: std::time::Duration,
    /// `--exec`, run for each file in place, one at a time.
    hooks: crate::hook::Hooks,
    /// Verified files whose ACKs wait for the batch to be durable.
    batch: Batch,
    /// Answers were written since the link last had to send: they go out
    /// before the next file's data is received (see `receive`).
    answered: bool,
}

impl<S: Link + ?Sized> Run<'_, S> {
    /// The first frame, still within the opening's deadline however slowly
    /// it trickles in.
    fn first_offer(&mut self, until: Instant) -> anyhow::Result<Next> {
        let cap = self.policy.limits.max_frame;
        let mut bounded = link::WithDeadline::new(self.stream, until);
        match link::next_frame_capped(&mut bounded, self.peer, "an offer", cap) {
            Ok(Some(frame)) => {
                link::set_deadline(self.stream, self.policy.idle_timeout, self.peer)?;
                Ok(self.rules.on_frame(frame))
            }
            Ok(None) => Err(Failure::new(
                ExitCode::Network,
                format!(
                    "{} closed the connection before offering anything",
                    self.peer
                ),
            )
            .into()),
            Err(e) => Err(self.read_failed(e)),
        }
    }

    /// The next frame between entries.
    fn read(&mut self) -> anyhow::Result<Next> {
        // A file accepted for resuming: the sender hashes the prefix we
        // hold before its START; allow for that local work.
        let idle = self.policy.idle_timeout;
        let wait = match self.pending.front() {
            Some(p) if p.held > 0 => allow_for_local_work(idle, p.held),
            _ => idle,
        };
        if wait != self.deadline {
            link::set_deadline(self.stream, wait, self.peer)?;
            self.deadline = wait;
        }
        // About to wait for the sender, who may be waiting for the ACKs of
        // the batch: flush it first, unless more is here or on its way. A
        // sender not held back by its window sends the next file at once,
        // so a moment's wait for it (the answers gathered so far sent
        // first) makes for fewer, larger batches: one flush of the file
        // system for up to BATCH_FILES files instead of one for every few.
        if !self.batch.is_empty() && !self.stream.input_within(Duration::ZERO) {
            link::send_now(self.stream, self.peer)?;
            if !self.stream.input_within(BATCH_GRACE) {
                self.flush()?;
            }
        }
        let cap = self.policy.limits.max_frame;
        match link::next_frame_capped(self.stream, self.peer, "an offer or END", cap) {
            Ok(Some(frame)) => Ok(self.rules.on_frame(frame)),
            Ok(None) => Ok(self.rules.on_closed()),
            // A file that already failed says more than the stall after it.
            Err(e) => Err(self.failure.take().unwrap_or(self.read_failed(e))),
        }
    }

    /// A read that failed: a record that did not open (the first one too)
    /// makes the sender hear why.
    fn read_failed(&mut self, e: anyhow::Error) -> anyhow::Error {
        if ExitCode::for_error(&e) == ExitCode::Integrity {
            link::send_error(self.stream, Reason::Integrity, &format!("{e:#}"));
        }
        e
    }

    fn entry_failed(&mut self, name: &[u8], e: anyhow::Error) {
        note_failure(self.reporter, self.failures, name, &e);
        self.failed += 1;
        self.failure.get_or_insert(e);
    }

    /// Checks an offer against the destination and answers it.
    fn judge(&mut self, id: u64, offer: &Offer) -> anyhow::Result<Next> {
        self.answered = true;
        let answer = answer_offer(
            self.stream,
            self.peer,
            offer,
            self.policy,
            &mut self.destination,
            self.reporter,
        );
        let judged = match answer {
            Ok(Answer::Pending(p)) => {
                let held = p.held;
                self.pending.push_back(*p);
                Judged::Accepted { held }
            }
            Ok(Answer::Done(file)) => {
                if file.is_dir {
                    self.directories.push((file.path.clone(), offer.clone()));
                }
                self.received.push(file);
                Judged::Done
            }
            Ok(Answer::Refused(e)) => {
                self.entry_failed(&offer.name, e);
                Judged::Refused
            }
            Err(e) => {
                note_failure(self.reporter, self.failures, &offer.name, &e);
                return Err(e);
            }
        };
        Ok(self.rules.judged(id, judged))
    }

    /// Receives the data of the oldest accepted file.
    fn receive(&mut self, file: &Accepted, start: u64) -> anyhow::Result<Next> {
        // The answers to the offers read since the last send go out before
        // this file's data: the sender works on those files while this
        // one is written. Offers come in groups (see the sender's
        // window), so this costs a send per group, not per file.
        if std::mem::take(&mut self.answered) {
            link::send_now(self.stream, self.peer)?;
        }
        let next_file = self
            .pending
            .pop_front()
            .expect("the rules hand out accepted files in order");
        debug_assert_eq!(next_file.offer.name, file.name);
        let max_size = self.policy.limits.max_size;
        let got = receive_pending(
            self.stream,
            self.peer,
            next_file,
            start,
            max_size,
            self.reporter,
            (&mut self.rules, &mut self.batch),
        );
        self.record_flushed();
        match got {
            Ok(Some(outcome)) => self.record(&file.name, outcome),
            // Verified; its ACK waits for its batch.
            Ok(None) => {}
            Err(e) => {
                // A file that joined the batch before the session failed
                // is told with the batch (see `finish`), not twice.
                if !self.batch.holds(&file.name) {
                    note_failure(self.reporter, self.failures, &file.name, &e);
                }
                // A violation (a trailer's size that is not what arrived)
                // has already ended the rules' session.
                if !self.rules.is_over() {
                    self.rules.settled();
                }
                return Err(e);
            }
        }
        Ok(self.rules.settled())
    }

    /// What became of one file once its ACK was sent.
    fn record(&mut self, name: &[u8], outcome: anyhow::Result<Received>) {
        match outcome {
            Ok(received) => {
                // The facts are built only for a hook (the small-file path
                // is hot).
                if self.hooks.active() && received.path.as_os_str() != "-" {
                    self.hooks.arrived(crate::hook::Arrived {
                        path: received.path.clone(),
                        name: received.name.clone(),
                        size: received.bytes,
                        sha256: hex(&received.sha256),
                        peer: self.peer.to_string(),
                    });
                }
                self.received.push(received)
            }
            Err(e) => self.entry_failed(name, e),
        }
    }

    /// Records what the batch's last flush made of its files.
    fn record_flushed(&mut self) {
        for (name, outcome) in std::mem::take(&mut self.batch.done) {
            self.record(&name, outcome);
        }
    }

    /// Flushes the batch (see [`Batch`]) and records its files.
    fn flush(&mut self) -> anyhow::Result<()> {
        let flushed = self.batch.flush(self.stream, self.peer, self.reporter);
        self.record_flushed();
        flushed
    }

    /// END or a close: accepted files that never came are failures, and
    /// so are the entries the sender says it could not send.
    fn ended(&mut self, ending: &Ending) {
        if let Some((failed, message)) = &ending.sender_failed {
            let e = Failure::new(
                ExitCode::LocalFile,
                format!(
                    "{} could not send {failed} entr{} of its own (the first: {})",
                    self.peer,
                    if *failed == 1 { "y" } else { "ies" },
                    crate::names::escape_peer_message(message)
                ),
            );
            self.entry_failed(b"", e.into());
        }
        let how = if ending.said_end {
            "ended the session"
        } else {
            "closed the connection"
        };
        for file in &ending.unfinished {
            let e = Failure::new(
                ExitCode::Network,
                format!(
                    "{} {how} before sending '{}', which was accepted",
                    self.peer,
                    shown(&file.name)
                ),
            );
            self.entry_failed(&file.name, e.into());
        }
    }

    /// The session's verdict, after setting the directories' modes and
    /// times: its own failure, or partial (8) when some files failed and
    /// others arrived, or the one failure, or every file received.
    fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<Vec<Received>> {
        // The last batch: kept and acknowledged if the session ended well;
        // after a failure it stays as complete partial files, which the
        // next attempt finds whole (the sender has no ACK for them either),
        // and each is listed as not received, as is each file of a batch
        // that was being committed.
        let result = result.and_then(|()| self.flush());
        if result.is_err() {
            // A batch being committed when the session failed puts no
            // more files in place; those it did are received (and said,
            // and their hooks run), though the sender has no ACK for them
            // and counts them as not sent: the next attempt finds them
            // unchanged. The same goes for files whose ACK could not be
            // sent.
            for placed in self.batch.unacknowledged() {
                let name = placed.offer.name.clone();
                if let Some(Ok(_)) = &placed.result {
                    self.reporter.info(|| {
                        format!(
                            "'{}' is in place, but the session ended before its ACK was sent",
                            shown(&name)
                        )
                    });
                }
                let outcome = placed.said(self.reporter);
                self.record(&name, outcome);
            }
            for waiting in std::mem::take(&mut self.batch.waiting) {
                let e = Failure::new(
                    ExitCode::Network,
                    format!(
                        "'{}' arrived verified, but the session ended before it was made \
                         durable; it waits as a partial file that the next attempt completes",
                        shown(&waiting.offer.name)
                    ),
                )
                .into();
                note_failure(self.reporter, self.failures, &waiting.offer.name, &e);
            }
        }
        // Accepted files the session ended without are failures too, listed
        // in the summary: a broken session is never silent about what it lost.
        if result.is_err() {
            for file in self.rules.abandon().unfinished {
                let e = Failure::new(
                    ExitCode::Network,
                    format!(
                        "'{}' was accepted but not received: the session ended",
                        shown(&file.name)
                    ),
                )
                .into();
                note_failure(self.reporter, self.failures, &file.name, &e);
            }
        }
        // Deepest first, so setting a parent's mtime comes after its children.
        self.directories
            .sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, offer) in &self.directories {
            if let Err(e) = self.destination.finish_directory(offer) {
                self.reporter.info(|| {
                    format!(
                        "cannot set the mode and time of '{}': {}",
                        crate::names::escape_path(path),
                        crate::exit_codes::io_reason(&e)
                    )
                });
            }
        }
        // The hooks still queued run before the session's verdict.
        let hooks = self.hooks.finish();
        result?;
        let done = self.received.iter().filter(|f| !f.is_dir).count();
        let failed = self.failed;
        if self.failure.is_none() && hooks.failed > 0 {
            return Err(Failure::new(
                ExitCode::Hook,
                format!(
                    "every file arrived verified, but --exec failed for {} of {}",
                    hooks.failed, hooks.ran
                ),
            )
            .into());
        }
        match self.failure {
            Some(e) if done > 0 => Err(anyhow::Error::new(Failure::new(
                ExitCode::Partial,
                format!(
                    "{failed} file(s) failed, {done} arrived verified; the first failure: {e:#}"
                ),
            ))),
            Some(e) => Err(e),
            None => Ok(self.received),
        }
    }
}

fn note_failure(
    reporter: &Reporter,
    failures: &mut Vec<serde_json::Value>,
    name: &[u8],
    e: &anyhow::Error,
) {
    let failure = crate::names::with_name(
        name,
        json!({ "error": format!("{e:#}"), "exit_code": ExitCode::for_error(e).code() }),
    );
    reporter.event("file-failed", || failure.clone());
    failures.push(failure);
}

/// Declines an offer: a REFUSE frame to the peer, and our own error with the
/// receiver's exit code for that reason.
fn refuse<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    reason: Reason,
    message: String,
) -> anyhow::Error {
    refuse_as(stream, peer, reason, message, false)
}

/// [`refuse`], for a refusal that may be for want of room (`disk_full`):
/// tell it.
fn refuse_as<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    reason: Reason,
    message: String,
    disk_full: bool,
) -> anyhow::Error {
    let _ = link::send_frame(
        stream,
        &Frame::Refuse(Refuse {
            reason,
            message: message.clone(),
        }),
        peer,
    );
    let code = ExitCode::for_own_refusal(reason, disk_full);
    Failure::new(code, message).into()
}

/// A stream went past `--max-size`.
#[derive(Debug, thiserror::Error)]
#[error("the stream is larger than this receiver takes")]
struct OverLimit;

/// A reader that fails once it has yielded `left` bytes and has more.
struct AtMost<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for AtMost<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                OverLimit,
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A directory entry: it exists now; the sender sends nothing for it.
fn directory_made<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    offer: &Offer,
    path: PathBuf,
    reporter: &Reporter,
) -> anyhow::Result<Received> {
    link::send_frame(
        stream,
        &Frame::Accept(Accept {
            offset: 0,
            prefix_sha256: [0; 32],
        }),
        peer,
    )?;
    reporter.event("file-done", || {
        crate::names::with_path(
            &path,
            crate::names::with_name(&offer.name, json!({ "kind": "directory", "bytes": 0 })),
        )
    });
    Ok(Received {
        name: offer.name.clone(),
        path,
        bytes: 0,
        sha256: [0; 32],
        seconds: 0.0,
        skipped: false,
        is_dir: true,
        link: false,
    })
}

/// The destination already holds the offered file: say so, send nothing.
fn skip_unchanged<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    offer: &Offer,
    path: PathBuf,
    reporter: &Reporter,
) -> anyhow::Result<Received> {
    let how = if offer.sha256.is_some() {
        "same SHA-256"
    } else {
        "same size and modification time"
    };
    link::send_frame(
        stream,
        &Frame::Skip {
            message: format!("unchanged ({how})"),
        },
        peer,
    )?;
    reporter.info(|| {
        format!(
            "'{}' is unchanged ({how}); nothing to receive",
            crate::names::escape_path(&path)
        )
    });
    reporter.event("file-skipped", || {
        crate::names::with_path(
            &path,
            crate::names::with_name(&offer.name, json!({ "reason": "unchanged" })),
        )
    });
    Ok(Received {
        name: offer.name.clone(),
        path,
        bytes: 0,
        sha256: offer.sha256.unwrap_or([0; 32]),
        seconds: 0.0,
        skipped: true,
        is_dir: false,
        link: offer.is_link(),
    })
}

/// Where one file's bytes go: a partial file committed once verified, or
/// straight to stdout (where a mismatch can only be reported).
enum Output {
    File(destination::PartialFile),
    /// A symbolic or hard link: no data, made once the trailer checks out.
    Link(destination::PendingLink),
    Stdout,
}

/// Answers a file that failed verification (ACK status 1, with our own
/// digest) and drops what was written; says what became of the data.
fn discard_mismatch<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    output: Output,
    digest: protocol::Digest,
    told: &str,
) -> anyhow::Result<&'static str> {
    link::send_frame(
        stream,
        &Frame::Ack(Ack {
            status: AckStatus::DigestMismatch,
            sha256: digest,
            reason: Reason::Other(0),
            message: told.into(),
        }),
        peer,
    )?;
    Ok(match output {
        Output::File(p) => {
            p.discard();
            "nothing was kept"
        }
        Output::Link(_) => "the link was not made",
        Output::Stdout => "the data written to stdout is corrupt and must be discarded",
    })
}

/// What [`copy_failed`] needs to say about a file's data that stopped.
struct CutShort<'a> {
    peer: &'a str,
    shown: &'a str,
    /// The file's size; `None` for a stream.
    size: Option<u64>,
    /// Bytes of it written when it stopped.
    got: u64,
    max_size: Option<u64>,
    name: &'a [u8],
}

/// A file's data that stopped before its end: tells the sender why where
/// it should hear it (ERROR), drops a partial file that cannot be resumed,
/// and says what happened, with the exit code it deserves.
fn copy_failed<S: Link + ?Sized>(
    stream: &mut S,
    output: Output,
    e: CopyError,
    c: &CutShort,
) -> anyhow::Error {
    let (peer, shown, got, max_size) = (c.peer, c.shown, c.got, c.max_size);
    match e {
        CopyError::Source(e) if crate::exit_codes::is_forged(&e) => {
            link::send_error(stream, Reason::Integrity, &e.to_string());
            let what = match output {
                Output::Stdout => {
                    "the data already written to standard output must be discarded".to_string()
                }
                Output::File(_) | Output::Link(_) => format!("'{shown}' was not completed"),
            };
            Failure::new(ExitCode::Integrity, format!("{peer}: {e}; {what}")).into()
        }
        CopyError::Source(e) if e.get_ref().is_some_and(|i| i.is::<OverLimit>()) => {
            let message = format!(
                "the stream '{shown}' went past this receiver's --max-size ({})",
                crate::units::human_bytes(max_size.unwrap_or(u64::MAX))
            );
            link::send_error(stream, Reason::TooLarge, &message);
            let what = match output {
                Output::Stdout => "; the data written to standard output must be discarded",
                Output::File(_) | Output::Link(_) => "",
            };
            Failure::new(ExitCode::Refused, format!("{peer}: {message}{what}")).into()
        }
        CopyError::Source(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            link::send_error(stream, Reason::Protocol, &e.to_string());
            Failure::new(ExitCode::Network, format!("{peer}: {e}")).into()
        }
        CopyError::Source(e) => {
            let of = c.size.map(|size| format!(" of {size}")).unwrap_or_default();
            Failure::network(
                format!("connection to {peer} lost after {got}{of} bytes of '{shown}'"),
                &e,
            )
            .into()
        }
        CopyError::Sink(e) => {
            let (failure, told) = match &output {
                Output::Stdout if e.kind() == std::io::ErrorKind::BrokenPipe => (
                    Failure::new(
                        ExitCode::LocalFile,
                        format!(
                            "the reader of standard output closed it before the end of '{shown}'; the transfer was abandoned"
                        ),
                    ),
                    "the receiver's output was closed".to_string(),
                ),
                Output::Stdout => (
                    Failure::local("cannot write to stdout", &e),
                    format!(
                        "receiver cannot write its output: {}",
                        crate::exit_codes::io_reason(&e)
                    ),
                ),
                Output::Link(l) => (
                    Failure::local(format!("cannot make '{}'", l.final_path().display()), &e),
                    format!("receiver cannot make '{}'", crate::names::shown(c.name)),
                ),
                Output::File(p) => (
                    Failure::local(format!("cannot write '{}'", p.temp_path().display()), &e),
                    format!(
                        "receiver cannot store '{}': {}",
                        crate::names::shown(c.name),
                        crate::exit_codes::io_reason(&e)
                    ),
                ),
            };
            link::send_error(stream, Reason::LocalIo, &told);
            // A partial that cannot be written to cannot be resumed either.
            if let Output::File(p) = output {
                p.discard();
            }
            failure.into()
        }
    }
}

/// An accepted file whose data has not arrived yet (the sender may offer
/// several files before sending the first one's data).
struct Pending {
    offer: Offer,
    output: Output,
    /// Bytes held from an earlier attempt, and their hash state.
    held: u64,
    held_hasher: Option<Sha256>,
}

/// How an offer was answered.
enum Answer {
    /// ACCEPT sent: data follows after a START.
    Pending(Box<Pending>),
    /// Settled without data: a directory made, or the file already there.
    Done(Received),
    /// REFUSE sent; the session goes on.
    Refused(anyhow::Error),
}

/// Judges one OFFER and answers it (ACCEPT, REFUSE or SKIP). The error is
/// for the session: the connection or the protocol failed.
fn answer_offer<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    offer: &Offer,
    policy: &Policy,
    destination: &mut destination::Destination,
    reporter: &Reporter,
) -> anyhow::Result<Answer> {
    let shown = crate::names::Shown(&offer.name);
    if let Some(max) = policy.limits.max_size.filter(|max| offer.size > *max) {
        let message = format!(
            "'{shown}' is {}, more than this receiver takes (--max-size {})",
            crate::units::human_bytes(offer.size),
            crate::units::human_bytes(max)
        );
        return Ok(Answer::Refused(refuse(
            stream,
            peer,
            Reason::TooLarge,
            message,
        )));
    }
    let mut output = match &policy.target {
        Target::Stdout if offer.flags & (FLAG_DIR | FLAG_PATH) != 0 => {
            let message =
                "this receiver takes exactly one file (it runs with -o or --stdout), and this offer is one of several entries or a directory; send one file, or use a receiver with --dir".to_string();
            return Ok(Answer::Refused(refuse(
                stream,
                peer,
                Reason::Unsupported,
                message,
            )));
        }
        Target::Stdout => match crate::names::validate_name(&offer.name, policy.names) {
            Ok(()) => Output::Stdout,
            Err(e) => {
                let message = format!("refused name '{shown}': {e}");
                return Ok(Answer::Refused(refuse(
                    stream,
                    peer,
                    Reason::BadName,
                    message,
                )));
            }
        },
        _ => match destination.prepare(offer) {
            Ok(Prepared::Receive(p)) => Output::File(p),
            Ok(Prepared::Link(l)) => Output::Link(l),
            Ok(Prepared::Unchanged(path)) => {
                return skip_unchanged(stream, peer, offer, path, reporter).map(Answer::Done);
            }
            Ok(Prepared::Directory(path)) => {
                return directory_made(stream, peer, offer, path, reporter).map(Answer::Done);
            }
            Err(r) => {
                // Refused for want of room: a full disk here, as when it
                // fills while writing.
                return Ok(Answer::Refused(refuse_as(
                    stream,
                    peer,
                    r.reason,
                    r.message,
                    r.disk_full,
                )));
            }
        },
    };

    // What an earlier, interrupted attempt left: offered for resuming.
    let (held, held_hasher) = match &mut output {
        Output::File(p) if p.held() > 0 => match p.held_hasher() {
            Ok(h) => (p.held(), Some(h)),
            Err(e) => {
                let message = format!(
                    "cannot read the partial data of '{shown}': {}",
                    crate::exit_codes::io_reason(&e)
                );
                return Ok(Answer::Refused(refuse(
                    stream,
                    peer,
                    Reason::LocalIo,
                    message,
                )));
            }
        },
        _ => (0, None),
    };
    link::send_frame(
        stream,
        &Frame::Accept(Accept {
            offset: held,
            prefix_sha256: held_hasher
                .clone()
                .map(|h| h.finalize().into())
                .unwrap_or([0; 32]),
        }),
        peer,
    )?;
    Ok(Answer::Pending(Box::new(Pending {
        offer: offer.clone(),
        output,
        held,
        held_hasher,
    })))
}

/// Receives an accepted file's data after its START: `start` is where the
/// sender begins, the bytes held (resume) or 0 (start over).
fn receive_pending<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    pending: Pending,
    start: u64,
    max_size: Option<u64>,
    reporter: &Reporter,
    (rules, batch): (&mut Receiver, &mut Batch),
) -> anyhow::Result<Option<anyhow::Result<Received>>> {
    let Pending {
        offer,
        mut output,
        held,
        held_hasher,
    } = pending;
    let offer = &offer;
    let shown = crate::names::Shown(&offer.name);
    let streamed = offer.flags & FLAG_STREAM != 0;
    // The rules allow only 0 (start over) or the offset held.
    let hasher = match (held_hasher, start) {
        (Some(h), s) if s > 0 && s == held => h,
        _ => Sha256::new(),
    };
    if let Output::File(p) = &mut output
        && let Err(e) = p.restart_at(start)
    {
        let failure = Failure::local(format!("cannot write '{}'", p.temp_path().display()), &e);
        link::send_error(stream, Reason::LocalIo, "receiver cannot prepare its file");
        return Err(failure.into());
    }

    let size_text = || {
        if streamed {
            "a stream".to_string()
        } else if start > 0 {
            format!(
                "{}, resuming at {}",
                crate::units::human_bytes(offer.size),
                crate::units::human_bytes(start)
            )
        } else {
            crate::units::human_bytes(offer.size)
        }
    };
    // A person watching a big file or a stream sees what is coming before
    // its bar; a log gets one line per file, when it arrived.
    if reporter.bars && (streamed || offer.size >= 1 << 20) {
        reporter.info(|| format!("receiving '{shown}' ({}) from {peer}", size_text()));
    }
    let shown_path = || match &output {
        Output::File(p) => p.final_path().display().to_string(),
        Output::Link(l) => l.final_path().display().to_string(),
        Output::Stdout => "-".to_string(),
    };
    reporter.event(
        "file-start",
        || crate::names::with_name(&offer.name, json!({ "path": shown_path(), "size": (!streamed).then_some(offer.size), "offset": start })),
    );

    let started = Instant::now();
    let progress = reporter.progress(&offer.name, (!streamed).then_some(offer.size));
    let done = AtomicU64::new(start);
    let on_progress = |n| {
        done.store(start + n, Ordering::Relaxed);
        progress.set(start + n);
    };
    stream.floor(true);
    let copied = {
        let mut stdout;
        let mut file_writer;
        let mut nothing = std::io::sink();
        let sink: &mut (dyn std::io::Write + Send) = match &mut output {
            Output::File(p) => {
                file_writer = p.writer();
                &mut file_writer
            }
            // The rules let no data through for a link (size 0).
            Output::Link(_) => &mut nothing,
            Output::Stdout => {
                stdout = std::io::stdout();
                &mut stdout
            }
        };
        // COMPRESSED data is decoded block by block before it is hashed
        // and written; the bound on a stream counts the decoded bytes.
        let compressed = offer.flags & FLAG_COMPRESSED != 0;
        if streamed {
            let mut chunks = ChunkReader::new(&mut *stream);
            let mut blocks;
            let wire: &mut (dyn std::io::Read + Send) = if compressed {
                blocks = DecompressReader::new(&mut chunks);
                &mut blocks
            } else {
                &mut chunks
            };
            copy_hashed_to_end(
                &mut AtMost {
                    inner: wire,
                    left: max_size.unwrap_or(u64::MAX),
                },
                sink,
                hasher,
                &on_progress,
            )
        } else if compressed {
            let mut blocks = DecompressReader::new(&mut *stream);
            copy_hashed(&mut blocks, sink, offer.size - start, hasher, &on_progress).and_then(
                |digest| {
                    // The last block must end with the file: more in it
                    // would be read as the frames that follow.
                    if !blocks.at_block_boundary() {
                        return Err(CopyError::Source(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "compressed data: the last block runs past the end of the file",
                        )));
                    }
                    Ok((offer.size, digest))
                },
            )
        } else {
            copy_hashed(&mut *stream, sink, offer.size - start, hasher, &on_progress)
                .map(|digest| (offer.size, digest))
        }
        .and_then(|done| {
            // Data on stdout must really leave before we call it received.
            sink.flush().map_err(CopyError::Sink)?;
            Ok(done)
        })
    };
    stream.floor(false);
    drop(progress);
    let (size, digest) = match copied {
        Ok(d) => d,
        Err(e) => {
            let context = CutShort {
                peer,
                shown: &shown.to_string(),
                size: (!streamed).then_some(offer.size),
                got: done.load(Ordering::Relaxed),
                max_size,
                name: &offer.name,
            };
            return Err(copy_failed(stream, output, e, &context));
        }
    };

    settle(
        stream,
        peer,
        (rules, batch),
        offer,
        output,
        (size, digest),
        (started, start),
        reporter,
    )
}

/// Partial files of earlier attempts at a file now in place, removed: said
/// once per file and as one event each.
fn report_stale(reporter: &Reporter, committed: &destination::Committed) {
    if committed.stale.is_empty() {
        return;
    }
    let shown_path = crate::names::escape_path(&committed.path);
    reporter.info(|| {
        format!(
            "removed {} partial file(s) that earlier attempts at '{shown_path}' left",
            committed.stale.len()
        )
    });
    for name in &committed.stale {
        let partial = committed.path.with_file_name(name);
        reporter.event("partial-removed", || {
            crate::names::with_path(
                &partial,
                json!({ "for": committed.path.display().to_string() }),
            )
        });
    }
}

/// After a file's data: reads its TRAILER, asks the rules for the
/// verdict, and keeps the file (fsync, rename, ACK ok) or discards it (ACK
/// mismatch); says what became of it.
#[allow(clippy::too_many_arguments)]
fn settle<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    (rules, batch): (&mut Receiver, &mut Batch),
    offer: &Offer,
    output: Output,
    (size, digest): (u64, Digest),
    (started, start): (Instant, u64),
    reporter: &Reporter,
) -> anyhow::Result<Option<anyhow::Result<Received>>> {
    let shown = crate::names::Shown(&offer.name);
    let trailer = match link::expect_frame(stream, peer, "the trailer")? {
        Frame::Trailer(t) => t,
        Frame::Error(e) => return Err(link::peer_aborted(&e, peer)),
        other => {
            link::send_error(stream, Reason::Protocol, "expected TRAILER");
            return Err(link::unexpected(&other, "TRAILER", peer));
        }
    };
    let verdict = rules.trailer(size, &digest, &trailer);
    // A verified resumable file joins the batch: its ACK waits until the
    // batch is durable (group commit). Anything else answers now, after
    // the batch's ACKs, which go first: ACKs keep the order of the data.
    let output = match (&verdict, output) {
        (Ok(Verdict::Keep), Output::File(partial)) if partial.resumable() => {
            return match partial.seal(offer, size) {
                Ok(sealed) => {
                    batch.add(Waiting {
                        sealed,
                        offer: offer.clone(),
                        digest,
                        size,
                        start,
                        started,
                        changed: trailer.changed,
                    });
                    if batch.full() {
                        batch.hand_off(stream, peer, reporter)?;
                    }
                    Ok(None)
                }
                Err(r) => {
                    batch.flush(stream, peer, reporter)?;
                    not_kept(stream, peer, digest, r).map(Some)
                }
            };
        }
        (_, output) => {
            batch.flush(stream, peer, reporter)?;
            output
        }
    };
    match verdict {
        Ok(Verdict::Keep) => {}
        Ok(Verdict::OfferChanged) => {
            // The name, size, mode and times the data arrived under must be
            // the ones offered: in plaintext nothing else would notice a
            // change in transit (a flipped bit in the mode, say).
            let fate = discard_mismatch(
                stream,
                peer,
                output,
                digest,
                "the offer (name, size, mode, times) changed in transit; the data was discarded",
            )?;
            return Ok(Some(Err(Failure::new(
                ExitCode::Integrity,
                format!("the offer of '{shown}' changed in transit; {fate}"),
            )
            .into())));
        }
        Ok(Verdict::DigestMismatch) => {
            let fate = discard_mismatch(
                stream,
                peer,
                output,
                digest,
                "SHA-256 mismatch; the data was discarded",
            )?;
            return Ok(Some(Err(Failure::new(
                ExitCode::Integrity,
                format!(
                    "SHA-256 mismatch for '{shown}': sender says {}, received data hashes to {}; {fate}",
                    hex(&trailer.sha256),
                    hex(&digest)
                ),
            )
            .into())));
        }
        Err(Next::Violation { reason, message }) => {
            link::send_error(stream, reason, &message);
            return Err(Failure::new(ExitCode::Network, format!("{peer}: {message}")).into());
        }
        Err(other) => unreachable!("a trailer is kept, discarded or a violation: {other:?}"),
    }

    let committed = match output {
        Output::Stdout => Ok(None),
        Output::File(partial) => partial.commit(offer, size).map(Some),
        Output::Link(pending) => pending.commit().map(Some),
    };
    let path = match committed {
        Ok(None) => PathBuf::from("-"),
        Ok(Some(committed)) => {
            report_stale(reporter, &committed);
            committed.path
        }
        Err(r) => return not_kept(stream, peer, digest, r).map(Some),
    };
    kept(
        stream,
        peer,
        offer,
        &path,
        (size, digest),
        (started, start),
        trailer.changed,
        reporter,
    )
    .map(Some)
}

/// Verified files waiting for their batch to be made durable (a group
/// commit): a tree of small files costs one flush a batch instead of an
/// fsync of each file and of its directory, and each ACK still means the
/// file is durable under its final name. The batch is flushed before the
/// receiver waits for the sender (who may be waiting for these ACKs),
/// before it sends any other ACK, and when the session ends well. When it
/// holds [`BATCH_FILES`] files or [`BATCH_BYTES`] it is committed, on a
/// thread of its own where flushing waits on a disk (the batch before it
/// acknowledged first), while the session receives the next. If the
/// session fails first, its files stay behind as complete resumable
/// partial files: the next attempt finds all of each already there and
/// sends nothing. (A batch already committing then is put in place without
/// its ACKs: the next attempt finds those files unchanged.)
#[derive(Default)]
struct Batch {
    /// Most files in it (see [`batch_files_for`]).
    max_files: usize,
    waiting: Vec<Waiting>,
    bytes: u64,
    /// What flushing made of each file: its name and outcome, for the
    /// session to record.
    done: Vec<(Vec<u8>, anyhow::Result<Received>)>,
    /// The batch before, being made durable on a thread of its own.
    committing: Option<std::thread::JoinHandle<Commit>>,
    /// Set when the session has failed: a committing batch puts no more
    /// files in place.
    abort: Arc<AtomicBool>,
    /// Files of a committed batch whose ACK could not be sent, for the
    /// session's summary.
    unacknowledged: Vec<Placed>,
    /// The last commit's flushes waited on a device, so the next full
    /// batch is committed behind the session (see [`COMMIT_BEHIND`]).
    behind: bool,
}

/// Most files in one batch: half of what a sender keeps awaiting their ACK
/// (`session::sender::MAX_UNACKED`), so one batch can fill while the one
/// before is committed. 256 rather than 128 took a 10,000-file tree to a
/// journaled ext4 from 0.67 s to 0.59 s (half the flushes). Each file
/// costs an open descriptor until its batch is durable, so a session holds
/// up to 512 (the receiver runs with its soft limit on open files raised
/// to the hard one: see `gate::raise_open_files`).
pub const BATCH_FILES: usize = 256;

/// The batch size for sessions that may run `sessions` at once in a
/// process allowed `open_files` descriptors: [`BATCH_FILES`] unless that
/// many would not fit. A session holds a descriptor for each file of two
/// batches (one committing, one filling) and of up to 64 accepted files,
/// and a few more; on a server with a low limit and many sessions,
/// batches shrink (to 16 at least) rather than a file failing to open.
pub fn batch_files_for(open_files: u64, sessions: usize) -> usize {
    let each = open_files.saturating_sub(64) / sessions.max(1) as u64;
    let batch = each.saturating_sub(96) / 2;
    (batch as usize).clamp(16, BATCH_FILES)
}
/// Most bytes in one batch (more would make one flush wait long).
const BATCH_BYTES: u64 = 64 << 20;
/// How long a receiver holding a batch waits for the sender's next frame
/// before it flushes the batch and sends its ACKs: short next to a flush
/// (about a millisecond on ext4) and to any deadline, long next to the
/// sender's time per small file (tens of microseconds). Waiting for more
/// cut the flushes of 10,000 small files from 610 to 158.
const BATCH_GRACE: Duration = Duration::from_millis(2);
/// A full batch is committed on a thread of its own while the session
/// receives the next when the last commit's two flushes took at least
/// this long: a disk, where a 10,000-file tree to a journaled ext4 went
/// from 0.58 s to 0.53 s (medians of 5; senders keep up to two batches
/// awaiting their ACKs, so the next batch can arrive meanwhile). Where
/// flushing costs next to nothing (tmpfs: microseconds) the thread only
/// costs: 0.33 s against 0.35 s, so it commits in line there.
const COMMIT_BEHIND: Duration = Duration::from_millis(1);

/// One verified file of a [`Batch`].
struct Waiting {
    sealed: destination::Sealed,
    offer: Offer,
    digest: Digest,
    size: u64,
    start: u64,
    started: Instant,
    changed: bool,
}

impl Batch {
    fn new(max_files: usize) -> Batch {
        let mut batch = Batch::default();
        batch.max_files = max_files;
        batch
    }

    fn add(&mut self, waiting: Waiting) {
        self.bytes += waiting.size - waiting.start;
        self.waiting.push(waiting);
    }

    fn full(&self) -> bool {
        self.waiting.len() >= self.max_files || self.bytes >= BATCH_BYTES
    }

    /// Nothing waits for its ACK, here or on the committing thread.
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.committing.is_none()
    }

    /// Makes the batch durable, and the one committing before it, and
    /// sends all their ACKs in order. The error is the session's: an ACK
    /// could not be sent.
    fn flush<S: Link + ?Sized>(
        &mut self,
        stream: &mut S,
        peer: &str,
        reporter: &Reporter,
    ) -> anyhow::Result<()> {
        self.acknowledge_committed(stream, peer, reporter)?;
        if !self.waiting.is_empty() {
            let waiting = self.take();
            self.commit_here(waiting, stream, peer, reporter)?;
        }
        link::send_now(stream, peer)
    }

    /// A full batch: where flushing waits on a device, acknowledges the
    /// batch committing before it (waiting for it if need be) and commits
    /// this one on a thread of its own while the session goes on
    /// receiving the next; elsewhere, flushes it here.
    fn hand_off<S: Link + ?Sized>(
        &mut self,
        stream: &mut S,
        peer: &str,
        reporter: &Reporter,
    ) -> anyhow::Result<()> {
        if !(self.behind || commits_behind_always()) {
            return self.flush(stream, peer, reporter);
        }
        if self.acknowledge_committed(stream, peer, reporter)? {
            link::send_now(stream, peer)?;
        }
        // The batch goes to the thread through a slot it can be taken back
        // from: a process out of threads commits it here instead.
        let slot = Arc::new(Mutex::new(Some(self.take())));
        let (theirs, abort) = (Arc::clone(&slot), Arc::clone(&self.abort));
        let spawned = std::thread::Builder::new()
            .name("xfer-commit".into())
            .spawn(move || commit(take_slot(&theirs), &abort));
        match spawned {
            Ok(handle) => self.committing = Some(handle),
            Err(_) => {
                self.commit_here(take_slot(&slot), stream, peer, reporter)?;
                link::send_now(stream, peer)?;
            }
        }
        Ok(())
    }

    /// Commits `waiting` on this thread and acknowledges its files.
    fn commit_here<S: Link + ?Sized>(
        &mut self,
        waiting: Vec<Waiting>,
        stream: &mut S,
        peer: &str,
        reporter: &Reporter,
    ) -> anyhow::Result<()> {
        let done = commit(waiting, &self.abort);
        self.behind = done.flushing >= COMMIT_BEHIND;
        self.acknowledge(done.placed, stream, peer, reporter)
    }

    /// Acknowledges the batch committing on its own thread, if there is
    /// one (waiting for it if need be); says whether there was.
    fn acknowledge_committed<S: Link + ?Sized>(
        &mut self,
        stream: &mut S,
        peer: &str,
        reporter: &Reporter,
    ) -> anyhow::Result<bool> {
        match self.committed() {
            Some(placed) => self
                .acknowledge(placed, stream, peer, reporter)
                .map(|()| true),
            None => Ok(false),
        }
    }

    fn take(&mut self) -> Vec<Waiting> {
        self.bytes = 0;
        std::mem::take(&mut self.waiting)
    }

    /// What the batch committing on its own thread made of its files,
    /// once it is done.
    fn committed(&mut self) -> Option<Vec<Placed>> {
        let handle = self.committing.take()?;
        let done = handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        self.behind = done.flushing >= COMMIT_BEHIND;
        Some(done.placed)
    }

    /// Sends the ACK of each file of a committed batch, in order, and
    /// notes what became of it.
    fn acknowledge<S: Link + ?Sized>(
        &mut self,
        placed: Vec<Placed>,
        stream: &mut S,
        peer: &str,
        reporter: &Reporter,
    ) -> anyhow::Result<()> {
        let mut placed = placed.into_iter();
        while let Some(p) = placed.next() {
            let sent = match &p.result {
                Some(Ok(_)) => ack_ok(stream, peer, p.digest),
                Some(Err(r)) => ack_failed(stream, peer, p.digest, r),
                // Only a failed session leaves files behind, and it
                // acknowledges nothing after that.
                None => Err(anyhow::anyhow!(
                    "a batch was left behind while acknowledging it"
                )),
            };
            if let Err(e) = sent {
                // These files are for the session's summary to tell.
                self.unacknowledged.push(p);
                self.unacknowledged.extend(placed);
                return Err(e);
            }
            let name = p.offer.name.clone();
            self.done.push((name, p.said(reporter)));
        }
        Ok(())
    }

    /// After the session failed: the files of the batch being committed
    /// (which puts no more in place) and those whose ACK could not be
    /// sent.
    fn unacknowledged(&mut self) -> Vec<Placed> {
        self.abort.store(true, Ordering::SeqCst);
        let mut left = std::mem::take(&mut self.unacknowledged);
        left.extend(self.committed().unwrap_or_default());
        left
    }

    /// Whether `name` waits in this batch (its fate is the batch's to
    /// tell).
    fn holds(&self, name: &[u8]) -> bool {
        self.waiting.iter().any(|w| w.offer.name == name)
    }
}

impl Drop for Batch {
    /// A session never ends with a batch still being committed.
    fn drop(&mut self) {
        if let Some(handle) = self.committing.take() {
            let _ = handle.join();
        }
    }
}

/// A file of a committed batch: in place, or why not, or (`None`) left
/// as a complete partial file because the session ended first.
struct Placed {
    offer: Offer,
    digest: Digest,
    size: u64,
    start: u64,
    started: Instant,
    changed: bool,
    result: Option<Result<destination::Committed, destination::Refusal>>,
}

impl Placed {
    /// What became of the file, said.
    fn said(self, reporter: &Reporter) -> anyhow::Result<Received> {
        match self.result {
            Some(Ok(committed)) => {
                report_stale(reporter, &committed);
                said_kept(
                    &self.offer,
                    &committed.path,
                    (self.size, self.digest),
                    (self.started, self.start),
                    self.changed,
                    reporter,
                )
            }
            Some(Err(r)) => Err(own_refusal(r)),
            None => Err(Failure::new(
                ExitCode::Network,
                format!(
                    "'{}' arrived verified, but the session ended before it was put in \
                     place; it waits as a partial file that the next attempt completes",
                    shown(&self.offer.name)
                ),
            )
            .into()),
        }
    }
}

/// Debug builds only: `XFER_TEST_COMMIT_BEHIND=1` commits every full
/// batch on a thread of its own, whatever flushing costs, so the tests
/// (on whatever file system holds their temporary directories) cover
/// that path. Release builds never look at it.
#[cfg(debug_assertions)]
fn commits_behind_always() -> bool {
    std::env::var_os("XFER_TEST_COMMIT_BEHIND").is_some_and(|v| v == "1")
}

#[cfg(not(debug_assertions))]
fn commits_behind_always() -> bool {
    false
}

/// The batch a committing thread was handed.
fn take_slot(slot: &Mutex<Option<Vec<Waiting>>>) -> Vec<Waiting> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or_default()
}

/// What committing a batch made of its files, and how long its flushes
/// took.
struct Commit {
    placed: Vec<Placed>,
    flushing: Duration,
}

/// Makes a batch durable: its data (one `syncfs` for each file system),
/// then each file's owner, attributes, mode, time and final name, then
/// those (one `syncfs` again). No link, no messages: it may run on a
/// thread of its own.
fn commit(waiting: Vec<Waiting>, abort: &AtomicBool) -> Commit {
    let t0 = Instant::now();
    let synced = destination::make_durable(waiting.iter().map(|w| w.sealed.dir()));
    let mut flushing = t0.elapsed();
    let mut placed = Vec::with_capacity(waiting.len());
    for w in waiting {
        let Waiting {
            sealed,
            offer,
            digest,
            size,
            start,
            started,
            changed,
        } = w;
        let result = match &synced {
            // The session ended meanwhile: what is not in place yet stays
            // a complete partial file (dropped as it is), which the next
            // attempt completes and acknowledges.
            Ok(()) if abort.load(Ordering::SeqCst) => None,
            Ok(()) => Some(sealed.place(&offer, size)),
            Err(e) => Some(Err(destination::Refusal {
                reason: Reason::LocalIo,
                message: format!(
                    "cannot flush data for '{}': {}",
                    crate::names::escape_path(sealed.final_path()),
                    crate::exit_codes::io_reason(e)
                ),
                disk_full: e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()),
            })),
        };
        placed.push(Placed {
            offer,
            digest,
            size,
            start,
            started,
            changed,
            result,
        });
    }
    // The renames are durable only once their directories are.
    let t1 = Instant::now();
    let renamed = destination::make_durable(
        placed
            .iter()
            .filter_map(|p| p.result.as_ref()?.as_ref().ok())
            .map(|c| c.dir()),
    );
    flushing += t1.elapsed();
    if let Err(e) = renamed {
        for p in &mut placed {
            if let Some(Ok(committed)) = &p.result {
                p.result = Some(Err(destination::Refusal {
                    reason: Reason::LocalIo,
                    message: format!(
                        "cannot flush the directory of '{}': {}",
                        crate::names::escape_path(&committed.path),
                        crate::exit_codes::io_reason(&e)
                    ),
                    disk_full: false,
                }));
            }
        }
    }
    Commit { placed, flushing }
}

/// A verified file that could not be kept: ACK status 2 with why, and the
/// failure with our exit code for it.
fn not_kept<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    digest: Digest,
    r: destination::Refusal,
) -> anyhow::Result<anyhow::Result<Received>> {
    ack_failed(stream, peer, digest, &r)?;
    Ok(Err(own_refusal(r)))
}

/// ACK status 2 for a verified file that could not be kept.
fn ack_failed<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    digest: Digest,
    r: &destination::Refusal,
) -> anyhow::Result<()> {
    link::send_frame(
        stream,
        &Frame::Ack(Ack {
            status: AckStatus::Failed,
            sha256: digest,
            reason: r.reason,
            message: r.message.clone(),
        }),
        peer,
    )
}

/// Our refusal to keep a file, with our exit code for it.
fn own_refusal(r: destination::Refusal) -> anyhow::Error {
    let code = ExitCode::for_own_refusal(r.reason, r.disk_full);
    Failure::new(code, r.message).into()
}

/// ACK ok: the file is durable under its final name.
fn ack_ok<S: Link + ?Sized>(stream: &mut S, peer: &str, digest: Digest) -> anyhow::Result<()> {
    link::send_frame(
        stream,
        &Frame::Ack(Ack {
            status: AckStatus::Ok,
            sha256: digest,
            reason: Reason::Other(0),
            message: String::new(),
        }),
        peer,
    )
    .context("the file is in place, but the sender may not know")
}

/// A file (or link) durable under its final name `path`: ACK ok, and said.
#[allow(clippy::too_many_arguments)]
fn kept<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    offer: &Offer,
    path: &std::path::Path,
    (size, digest): (u64, Digest),
    (started, start): (Instant, u64),
    changed: bool,
    reporter: &Reporter,
) -> anyhow::Result<anyhow::Result<Received>> {
    ack_ok(stream, peer, digest)?;
    Ok(said_kept(
        offer,
        path,
        (size, digest),
        (started, start),
        changed,
        reporter,
    ))
}

/// Says that a file (or link) is durable under its final name `path`:
/// what it is, or the failure of a file that changed while it was read.
fn said_kept(
    offer: &Offer,
    path: &std::path::Path,
    (size, digest): (u64, Digest),
    (started, start): (Instant, u64),
    changed: bool,
    reporter: &Reporter,
) -> anyhow::Result<Received> {
    let shown = crate::names::Shown(&offer.name);
    let path = path.to_path_buf();
    let seconds = started.elapsed().as_secs_f64();
    let kind = match (&offer.link, offer.flags & FLAG_SYMLINK != 0) {
        (Some(_), true) => "symlink",
        (Some(_), false) => "hardlink",
        (None, _) => "file",
    };
    reporter.info(|| {
        let shown_path = escape_for_terminal(path.as_os_str().as_bytes());
        match &offer.link {
            Some(target) if kind == "symlink" => {
                format!(
                    "made '{shown_path}', a symbolic link to '{}'",
                    crate::names::Shown(target)
                )
            }
            Some(target) => format!(
                "made '{shown_path}', a hard link to '{}'",
                crate::names::Shown(target)
            ),
            None => format!(
                "received {} ({}, {}), sha256 {}…",
                if path.as_os_str() == "-" {
                    format!("'{shown}' on standard output")
                } else {
                    format!("'{shown_path}'")
                },
                if start > 0 {
                    format!(
                        "{}, resumed at {}",
                        crate::units::human_bytes(size),
                        crate::units::human_bytes(start)
                    )
                } else {
                    crate::units::human_bytes(size)
                },
                // The rate of what crossed the wire, not of the whole file.
                rate(size - start, seconds),
                // Enough to compare by eye; JSON carries the whole digest.
                &hex(&digest)[..16]
            ),
        }
    });
    reporter.event("file-done", || {
        let mut fields = json!({ "kind": kind, "bytes": size, "received": size - start,
                                 "offset": start, "sha256": hex(&digest), "seconds": seconds });
        if let Some(target) = &offer.link {
            crate::names::put_json_name(&mut fields, "target", target);
        }
        crate::names::with_path(&path, crate::names::with_name(&offer.name, fields))
    });
    if changed {
        // Kept, as GNU tar keeps it, but no success: it may be no version
        // the file ever had.
        reporter.event("file-changed", || {
            crate::names::with_path(&path, crate::names::with_name(&offer.name, json!({})))
        });
        return Err(Failure::new(
            ExitCode::LocalFile,
            format!(
                "'{shown}' changed on the sender while it was read: kept what was read, which \
                 may mix old and new content; send it again"
            ),
        )
        .into());
    }
    Ok(Received {
        name: offer.name.clone(),
        path,
        bytes: size,
        sha256: digest,
        seconds,
        skipped: false,
        is_dir: false,
        link: offer.is_link(),
    })
}

/// One of a server's `--max-connections` sessions, given back when dropped.
struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `xfer recv`: listen, then serve one session, or with `--keep-running`
/// many at once (each on its own thread, up to `--max-connections`) until
/// interrupted.
pub fn run(config: &RecvConfig) -> anyhow::Result<()> {
    // Concurrent sessions would draw over each other's bars; a server is
    // watched through its log and JSON events instead.
    let mut reporter = Reporter::new(config.quiet, config.json).with_progress(!config.keep_running);
    if config.target == Target::Stdout {
        reporter = reporter.with_events_on_stderr();
    }
    if let Some((target, retries)) = &config.connect {
        return connect_to_sender(config, target, *retries, &reporter);
    }
    let listener = crate::net::listen(config.bind, config.port)?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    // Without a key file or --insecure, senders need a code: a new one
    // for each run unless the user chose one.
    let secret = match &config.secret {
        Some(secret) => secret.clone(),
        None => Secret::Code(
            crate::secure::generate_code().context("cannot make a code from random bytes")?,
        ),
    };
    let code = match (&config.secret, &secret) {
        (None, Secret::Code(code)) => Some(code.clone()),
        _ => None,
    };
    reporter.info(|| {
        format!(
            "listening on {local}{}",
            if config.bind.is_none() && local.is_ipv6() {
                " (IPv6 and IPv4)"
            } else {
                ""
            }
        )
    });
    if let Some(code) = &code
        && !config.json
    {
        crate::gate::show_code(code, "the sender");
    }
    reporter.info(|| {
        crate::gate::other_side(
            "xfer send{how} FILE {addr}",
            &secret,
            config.bind,
            local.port(),
        )
    });
    if let Some(limits) = config.pace.describe() {
        reporter.info(|| format!("each session: {limits}"));
    }
    reap_partials(config, &reporter);
    reporter.event(
        "listening",
        || json!({ "address": local.to_string(), "port": local.port(), "code": code }),
    );
    // Handshakes hold a socket each: allow as many as the system lets us.
    let open_files = crate::gate::raise_open_files();
    let reserve = 64 + 8 * config.max_connections as u64;
    let max_handshakes =
        (config.max_handshakes as u64).min(open_files.saturating_sub(reserve).max(1)) as usize;
    let settings = crate::gate::Settings {
        limits: crate::admission::Limits {
            max_handshakes,
            max_per_source: config.max_per_source,
            penalties: config.penalties,
            guess_budget: crate::gate::guess_budget_for(&secret),
        },
        timeout: config.connect_timeout,
        max_sessions: if config.keep_running {
            config.max_connections
        } else {
            1
        },
        ends_on_failure: !config.keep_running && secret == Secret::Insecure,
        one_shot: !config.keep_running,
        role: Role::Receiver,
    };
    let active = AtomicUsize::new(0);
    let mut gate = crate::gate::Gate::new(listener, secret.clone(), settings, &reporter, &active)
        .map_err(|e| Failure::network("cannot watch the listening socket", &e))?;
    if !config.keep_running {
        // One session: strangers and wrong guesses are turned away, and the
        // receiver goes on waiting for the sender who knows the secret.
        return match gate.next_opened() {
            Gate::Session(opened) => {
                // Nobody else gets in now.
                drop(gate);
                serve_opened(*opened, config, &secret, &reporter)
            }
            Gate::Stopped => Err(Failure::new(ExitCode::Interrupted, "interrupted").into()),
            Gate::Failed(e) => Err(e),
        };
    }

    std::thread::scope(|scope| {
        // While serving, old partial files are reaped every hour.
        let reporter_ref = &reporter;
        let _ = std::thread::Builder::new()
            .name("xfer-reaper".into())
            .spawn_scoped(scope, move || {
                while signals::sleep_unless_interrupted(std::time::Duration::from_secs(3600)) {
                    reap_partials(config, reporter_ref);
                }
            });
        loop {
            let opened = match gate.next_opened() {
                Gate::Session(opened) => opened,
                Gate::Stopped => break,
                Gate::Failed(e) => {
                    crate::output::print_error(&e);
                    break;
                }
            };
            active.fetch_add(1, Ordering::SeqCst);
            let (active, reporter, secret) = (&active, &reporter, &secret);
            let peer = opened.peer.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("xfer-session {peer}"))
                .spawn_scoped(scope, move || {
                    // The slot is given back however the session ends,
                    // a panic included: no session can leave the server
                    // a connection short for good.
                    let _slot = Slot(active);
                    // One failing or hostile session ends only itself.
                    if let Err(e) = serve_opened(*opened, config, secret, reporter) {
                        crate::output::print_error(&e);
                    }
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::SeqCst);
                crate::output::print_error(
                    &anyhow::Error::new(e).context("cannot start a session thread"),
                );
            }
        }
        drop(gate);
    });
    // A requested stop is not an error: the server says so plainly.
    reporter.info(|| "stopped");
    Err(crate::exit_codes::Stopped.into())
}

/// `recv --connect HOST:PORT`: connects to a sender that listens (`send
/// --listen`), shakes hands as the receiver and serves its one session,
/// connecting again after a network failure or timeout (`--retries`), so
/// an interrupted transfer resumes.
fn connect_to_sender(
    config: &RecvConfig,
    target: &crate::net::PeerAddress,
    retries: u32,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    reap_partials(config, reporter);
    if let Some(limits) = config.pace.describe() {
        reporter.info(|| format!("each session: {limits}"));
    }
    let secret = match &config.secret {
        Some(secret) => secret.clone(),
        None => {
            let tty = crate::prompt::terminal("the sender's")?;
            crate::prompt::ask_for_code(tty, "xfer send --listen")?
        }
    };
    let peer = target.to_string();
    let attempt = || -> anyhow::Result<()> {
        let mut stream = crate::net::connect(target, config.connect_timeout)?;
        let until = Instant::now() + config.connect_timeout;
        let keys = {
            let _watch = signals::watch_socket(&stream);
            let mut bounded = link::WithDeadline::new(&mut stream, until);
            crate::handshake::exchange(&mut bounded, &peer, &secret, Role::Receiver)?.keys
        };
        let opened = crate::gate::Opened {
            stream,
            peer: peer.clone(),
            keys,
            peer_capabilities: 0,
            unsent: Vec::new(),
            deadline: until,
        };
        serve_opened(opened, config, &secret, reporter)
    };
    // A network failure or a timeout: connect again, and resume.
    let worth = |e: &anyhow::Error| {
        !signals::interrupted()
            && matches!(
                ExitCode::for_error(e),
                ExitCode::Network | ExitCode::Timeout
            )
    };
    crate::retry::retrying(retries, reporter, worth, attempt)
}

/// Removes the partial files nothing has written for `--partial-max-age`
/// (below `--dir`, or beside `-o`), saying which.
fn reap_partials(config: &RecvConfig, reporter: &Reporter) {
    let (root, recursive) = match &config.target {
        Target::Dir(dir) => (dir.clone(), true),
        Target::Output(path) => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => (p.to_path_buf(), false),
            _ => (PathBuf::from("."), false),
        },
        Target::Stdout => return,
    };
    for (path, age) in destination::reap_partials(&root, config.partial_max_age, recursive) {
        let shown = crate::names::escape_path(&path);
        let days = age.as_secs() / 86_400;
        reporter.info(|| {
            format!(
                "removed '{shown}', a partial file untouched for {days} day(s) (--partial-max-age)"
            )
        });
        reporter.event("partial-removed", || {
            crate::names::with_path(
                &path,
                json!({ "reason": "older than --partial-max-age", "age_seconds": age.as_secs() }),
            )
        });
    }
}

/// Serves the session of a connection the gate let in.
fn serve_opened(
    opened: crate::gate::Opened,
    config: &RecvConfig,
    secret: &Secret,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    let crate::gate::Opened {
        mut stream,
        peer,
        keys,
        unsent,
        deadline,
        ..
    } = opened;
    let peer = peer.as_str();
    let _watch = signals::watch_socket(&stream);
    let policy = Policy {
        target: config.target.clone(),
        overwrite: config.overwrite,
        backups: config.backups,
        secret: secret.clone(),
        limits: config.limits,
        handshake_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        hook: config.hook.clone(),
        names: config.names,
        keep: config.keep,
        batch_files: batch_files_for(
            crate::gate::raise_open_files(),
            if config.keep_running {
                config.max_connections
            } else {
                1
            },
        ),
    };
    crate::net::prepare(&stream, config.idle_timeout)
        .map_err(|e| Failure::network(format!("cannot set up the connection from {peer}"), &e))?;
    if let Some(rate) = config.pace.bwlimit {
        // Reading slowly is how a receiver limits the sender, but the kernel
        // would first take in megabytes at full speed: keep its buffer to
        // about a tenth of a second's worth.
        crate::net::limit_receive_buffer(&stream, rate / 10);
    }
    reporter.event("connected", || json!({ "peer": peer }));
    let started = Instant::now();
    let mut failures = Vec::new();
    let result = std::io::Write::write_all(&mut stream, &unsent)
        .map_err(|e| Failure::network(format!("cannot talk to {peer}"), &e).into())
        .and_then(|()| {
            let paced = crate::pace::Paced::new(&mut stream, config.pace);
            let mut buffered = link::Buffered::new(paced);
            let mut link = crate::handshake::secured(&mut buffered, keys);
            serve_session(&mut link, peer, &policy, reporter, &mut failures, deadline)
        });
    let seconds = started.elapsed().as_secs_f64();
    if result.is_err() {
        close_gently(&mut stream, std::time::Duration::from_secs(1));
    }
    if let Ok(files) = &result {
        session_total(reporter, peer, files, seconds);
    }
    summarize(reporter, peer, &result, &failures, seconds);
    result.map(drop)
}

/// Closes after a failure so the peer still gets our last frame (usually an
/// ERROR saying why): closing with its unread data in our buffer would make
/// the kernel reset the connection and may drop what we sent last. So: send
/// FIN after our data, then read and discard what the peer still sends, for
/// at most `within`.
fn close_gently(stream: &mut TcpStream, within: std::time::Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + within;
    let _ = stream.set_read_timeout(Some(within.min(std::time::Duration::from_millis(200))));
    let mut sink = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        match std::io::Read::read(stream, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A session of several entries ends with one line that sums it up.
fn session_total(reporter: &Reporter, peer: &str, files: &[Received], seconds: f64) {
    if files.len() < 2 {
        return;
    }
    let directories = files.iter().filter(|f| f.is_dir).count();
    let unchanged = files.iter().filter(|f| f.skipped).count();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    reporter.info(|| {
        format!(
            "from {peer}: {} file(s){} and {directories} director{} ({}, {}), each verified; {unchanged} unchanged",
            files.iter().filter(|f| !f.is_dir && !f.link && !f.skipped).count(),
            match files.iter().filter(|f| f.link && !f.skipped).count() {
                0 => String::new(),
                made => format!(", {made} link(s)"),
            },
            if directories == 1 { "y" } else { "ies" },
            crate::units::human_bytes(bytes),
            rate(bytes, seconds)
        )
    });
}

/// The last JSON event of a session, success or not.
fn summarize(
    reporter: &Reporter,
    peer: &str,
    result: &anyhow::Result<Vec<Received>>,
    failures: &[serde_json::Value],
    seconds: f64,
) {
    match result {
        Ok(files) => {
            let bytes: u64 = files.iter().map(|f| f.bytes).sum();
            let skipped = files.iter().filter(|f| f.skipped).count();
            let directories = files.iter().filter(|f| f.is_dir).count();
            let links = files.iter().filter(|f| f.link).count();
            let mut fields = json!({
                "ok": true, "exit_code": 0, "peer": peer, "files": files.len() - directories - links,
                "links": links, "directories": directories, "skipped": skipped, "unchanged": skipped,
                "bytes": bytes, "seconds": seconds, "failed": 0, "failures": [],
            });
            if let [one] = files.as_slice() {
                crate::names::put_json_name(&mut fields, "name", &one.name);
                crate::names::put_json_path(&mut fields, "path", &one.path);
                if !one.skipped {
                    fields["sha256"] = json!(hex(&one.sha256));
                }
            }
            reporter.event("summary", || fields);
        }
        Err(e) => {
            let code = ExitCode::for_error(e);
            reporter.event(
                "summary",
                || json!({ "ok": false, "exit_code": code.code(), "peer": peer, "error": format!("{e:#}"),
                           "seconds": seconds, "failed": failures.len(), "failures": failures }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiver sends held ACKs before it waits for the sender, who
    /// may be waiting for them: a batch still committing on its thread
    /// holds ACKs too, even when no file waits in the next batch.
    #[test]
    fn a_batch_committing_behind_still_holds_acks() {
        let mut batch = Batch::new(BATCH_FILES);
        batch.committing = Some(std::thread::spawn(|| Commit {
            placed: Vec::new(),
            flushing: Duration::from_millis(5),
        }));
        assert!(batch.waiting.is_empty());
        assert!(!batch.is_empty());
        assert!(batch.committed().is_some_and(|placed| placed.is_empty()));
        // Its flushes waited (5 ms): the next full batch commits behind too.
        assert!(batch.behind);
        assert!(batch.is_empty());
    }

    /// A link whose writes fail after the first `0` of them.
    struct FailAfter(usize);

    impl std::io::Read for FailAfter {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
    }

    impl std::io::Write for FailAfter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.0 -= 1;
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Link for FailAfter {}

    /// An ACK that cannot be sent ends the session, but no file of the
    /// batch goes unaccounted for: those acknowledged are done, the rest
    /// are left for the session's summary (a review found them dropped).
    #[test]
    fn a_failed_ack_leaves_every_file_of_the_batch_accounted_for() {
        let placed: Vec<Placed> = (0..5u8)
            .map(|i| Placed {
                offer: Offer {
                    name: vec![b'a' + i],
                    ..Default::default()
                },
                digest: [0; 32],
                size: 0,
                start: 0,
                started: Instant::now(),
                changed: false,
                result: Some(Err(destination::Refusal {
                    reason: Reason::LocalIo,
                    message: "x".into(),
                    disk_full: false,
                })),
            })
            .collect();
        let mut batch = Batch::new(BATCH_FILES);
        batch.committing = Some(std::thread::spawn(move || Commit {
            placed,
            flushing: Duration::ZERO,
        }));
        let reporter = Reporter::new(true, false);
        assert!(batch.flush(&mut FailAfter(2), "peer", &reporter).is_err());
        let left = batch.unacknowledged();
        let names: Vec<Vec<u8>> = (batch.done.iter().map(|(name, _)| name.clone()))
            .chain(left.into_iter().map(|p| p.offer.name))
            .collect();
        assert_eq!(names, [b"a", b"b", b"c", b"d", b"e"].map(|n| n.to_vec()));
    }

    /// Batches fit the descriptors a server may hold for all its sessions.
    #[test]
    fn batches_shrink_to_fit_the_open_files_limit() {
        assert_eq!(batch_files_for(1 << 20, 64), BATCH_FILES);
        assert_eq!(batch_files_for(1 << 20, 1), BATCH_FILES);
        // This VM's hard limit (20,000) and the default 64 sessions:
        // 311 descriptors each, two batches of 107 and 64 accepted files.
        assert_eq!(batch_files_for(20_000, 64), 107);
        assert!(2 * batch_files_for(20_000, 64) + 96 <= (20_000 - 64) / 64);
        assert_eq!(batch_files_for(1024, 64), 16);
        assert_eq!(batch_files_for(0, 0), 16);
    }
}
