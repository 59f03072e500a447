//! The sending side: offer a file, stream it while hashing, and succeed only
//! when the receiver confirms the same SHA-256.
//!
//! The session runs over any [`Link`] and any reader, so the same code
//! serves files, the in-process benchmark and tests. It must never report
//! success without an ACK whose digest equals the one computed here.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::config::SendConfig;
use crate::exit_codes::{ExitCode, Failure, is_timeout};
use crate::link::{self, Link};
use crate::names::escape_for_terminal;
use crate::output::{Reporter, rate};
use crate::pipeline::{CopyError, copy_hashed, copy_hashed_to_end};
use crate::protocol::{
    self, Ack, AckStatus, ChunkWriter, Digest, FLAG_DIR, FLAG_PATH, FLAG_STREAM, Frame, Offer,
    Reason, Trailer, hex,
};
use crate::secure::{Encrypted, Role, Secret};
use crate::signals;
use crate::source::{Identity, Kind, Opener, Plan};

/// A file the receiver verified and kept.
#[derive(Debug, Clone)]
pub struct Sent {
    pub name: String,
    pub bytes: u64,
    pub sha256: Digest,
    pub seconds: f64,
    /// The receiver already had it: nothing was sent.
    pub skipped: bool,
}

/// Runs one session that sends one file: `offer.size` bytes from
/// `source`, or with the stream flag, everything `source` yields until its
/// end. `source_name` names the source in local error messages.
#[allow(clippy::too_many_arguments)]
pub fn send_one<S, R>(
    stream: &mut S,
    peer: &str,
    secret: &Secret,
    source: &mut R,
    source_name: &str,
    offer: &Offer,
    resume: bool,
    idle_timeout: Duration,
    reporter: &Reporter,
) -> anyhow::Result<Sent>
where
    S: Link + ?Sized,
    R: Source + ?Sized,
{
    let keys = link::handshake(stream, peer, secret, Role::Sender)?;
    let stream = &mut link::secured(stream, keys);
    let streamed = offer.flags & FLAG_STREAM != 0;
    let progress = reporter.progress(&offer.name, (!streamed).then_some(offer.size));
    let sent = offer_file(
        stream,
        peer,
        source,
        source_name,
        offer,
        resume,
        idle_timeout,
        &|n| progress.set(n),
        reporter,
    );
    drop(progress);
    let sent = sent??;
    // The file is verified and in place; a lost END changes nothing.
    let _ = link::send_last_frame(stream, &Frame::End, peer);
    Ok(sent)
}

/// Offers one file within a session and sends it if accepted. The outer
/// error means the session cannot go on (the connection, the protocol);
/// the inner one that this file failed while the session stays in step
/// (refused, digest mismatch, not kept). `on_bytes` hears how many bytes of
/// the file are done.
#[allow(clippy::too_many_arguments)]
pub fn offer_file<S, R>(
    stream: &mut S,
    peer: &str,
    source: &mut R,
    source_name: &str,
    offer: &Offer,
    resume: bool,
    idle_timeout: Duration,
    on_bytes: &(dyn Fn(u64) + Sync),
    reporter: &Reporter,
) -> anyhow::Result<anyhow::Result<Sent>>
where
    S: Link + ?Sized,
    R: Source + ?Sized,
{
    link::send_frame(stream, &Frame::Offer(offer.clone()), peer)?;
    let reply = link::expect_frame(stream, peer, "the receiver's answer to the offer")?;
    let (start, hasher) = match answer(
        stream,
        peer,
        source,
        source_name,
        offer,
        resume,
        reply,
        reporter,
    )? {
        Answer::Go { start, hasher } => (start, hasher),
        Answer::Settled(outcome) => return Ok(outcome),
    };
    let in_flight = send_data(
        stream,
        peer,
        source,
        source_name,
        offer,
        start,
        hasher,
        on_bytes,
        reporter,
    )?;
    // Before its verdict the receiver fsyncs the whole file, which on a slow
    // disk takes longer than any sensible idle time; allow for that.
    link::set_deadline(stream, ack_deadline(idle_timeout, in_flight.size), peer)?;
    let verdict = match link::expect_frame(stream, peer, "the receiver's verdict")? {
        Frame::Ack(ack) => judge(&ack, in_flight, offer, peer),
        Frame::Error(e) => return Err(link::peer_aborted(&e, peer)),
        other => return Err(link::unexpected(&other, "ACK", peer)),
    };
    link::set_deadline(stream, idle_timeout, peer)?;
    Ok(verdict)
}

/// The receiver's answer to a file's OFFER, as the sender acts on it.
enum Answer {
    /// Send the data from `start`, continuing `hasher`.
    Go { start: u64, hasher: Sha256 },
    /// Nothing to send: already there, or refused.
    Settled(anyhow::Result<Sent>),
}

/// Acts on the answer to a file's OFFER: on ACCEPT, decides where to start
/// (checking a held prefix against our own file) and sends START.
#[allow(clippy::too_many_arguments)]
fn answer<S, R>(
    stream: &mut S,
    peer: &str,
    source: &mut R,
    source_name: &str,
    offer: &Offer,
    resume: bool,
    reply: Frame,
    reporter: &Reporter,
) -> anyhow::Result<Answer>
where
    S: Link + ?Sized,
    R: Source + ?Sized,
{
    let shown = escape_for_terminal(&offer.name);
    let streamed = offer.flags & FLAG_STREAM != 0;
    let (start, hasher) = match reply {
        Frame::Accept(a) if a.offset == 0 => (0, Sha256::new()),
        Frame::Accept(a) if streamed || a.offset > offer.size => {
            link::send_error(stream, Reason::Protocol, "offset out of range");
            return Err(Failure::new(
                ExitCode::Network,
                format!(
                    "{peer} offered to resume '{shown}' at byte {} of {}",
                    a.offset,
                    if streamed {
                        "a stream".to_string()
                    } else {
                        offer.size.to_string()
                    }
                ),
            )
            .into());
        }
        Frame::Accept(a) => {
            // The receiver holds a prefix from an earlier attempt: continue
            // after it only if it is really the start of this file.
            let resumed = if resume {
                prefix_matches(source, a.offset, &a.prefix_sha256)
                    .map_err(|e| Failure::local(format!("cannot read '{source_name}'"), &e))?
            } else {
                None
            };
            let (start, hasher) = match resumed {
                Some(hasher) => (a.offset, hasher),
                None => {
                    source
                        .seek_to(0)
                        .map_err(|e| Failure::local(format!("cannot read '{source_name}'"), &e))?;
                    (0, Sha256::new())
                }
            };
            (start, hasher)
        }
        Frame::Skip { message } => {
            // The receiver already has this very file.
            reporter.event(
                "file-skipped",
                || json!({ "name": offer.name, "reason": "unchanged", "message": message }),
            );
            return Ok(Answer::Settled(Ok(Sent {
                name: offer.name.clone(),
                bytes: 0,
                sha256: offer.sha256.unwrap_or([0; 32]),
                seconds: 0.0,
                skipped: true,
            })));
        }
        Frame::Refuse(r) => {
            return Ok(Answer::Settled(Err(Failure::new(
                link::code_for_reason(r.reason),
                format!(
                    "{peer} refused '{shown}': {}",
                    escape_for_terminal(&r.message)
                ),
            )
            .into())));
        }
        Frame::Error(e) => return Err(link::peer_aborted(&e, peer)),
        other => return Err(link::unexpected(&other, "ACCEPT or REFUSE", peer)),
    };
    // Every accepted file's data follows a START saying where it begins.
    link::send_frame(stream, &Frame::Start { offset: start }, peer)?;
    if start > 0 {
        reporter.info(|| {
            format!(
                "resuming '{shown}' at {} of {}",
                crate::destination::human_bytes(start),
                crate::destination::human_bytes(offer.size)
            )
        });
    }
    Ok(Answer::Go { start, hasher })
}

/// A file whose data and TRAILER are sent and whose ACK is awaited.
struct InFlight {
    size: u64,
    digest: Digest,
    started: Instant,
}

/// Sends a file's data from `start` and its TRAILER.
#[allow(clippy::too_many_arguments)]
fn send_data<S, R>(
    stream: &mut S,
    peer: &str,
    source: &mut R,
    source_name: &str,
    offer: &Offer,
    start: u64,
    hasher: Sha256,
    on_bytes: &(dyn Fn(u64) + Sync),
    reporter: &Reporter,
) -> anyhow::Result<InFlight>
where
    S: Link + ?Sized,
    R: Source + ?Sized,
{
    let shown = escape_for_terminal(&offer.name);
    let streamed = offer.flags & FLAG_STREAM != 0;
    reporter.event(
        "file-start",
        || json!({ "name": offer.name, "size": (!streamed).then_some(offer.size), "offset": start }),
    );
    let started = Instant::now();
    let done = AtomicU64::new(start);
    let on_progress = |n| {
        done.store(start + n, Ordering::Relaxed);
        on_bytes(start + n);
    };
    let copied = if streamed {
        let mut framed = ChunkWriter::new(&mut *stream);
        copy_hashed_to_end(source, &mut framed, hasher, &on_progress).and_then(|done| {
            framed.finish().map_err(CopyError::Sink)?;
            Ok(done)
        })
    } else {
        copy_hashed(
            source,
            &mut *stream,
            offer.size - start,
            hasher,
            &on_progress,
        )
        .map(|digest| (offer.size, digest))
    };
    let (size, digest) = match copied {
        Ok(d) => d,
        Err(CopyError::Source(e)) => {
            link::send_error(
                stream,
                Reason::LocalIo,
                &format!("sender cannot read '{}'", offer.name),
            );
            return Err(Failure::local(format!("cannot read '{source_name}'"), &e).into());
        }
        Err(CopyError::Sink(e)) => {
            // The receiver may have said why it stopped reading.
            if !is_timeout(&e) {
                if let Ok(Frame::Error(fe)) = protocol::read_frame(stream) {
                    return Err(link::peer_aborted(&fe, peer));
                }
            }
            let sent = done.load(Ordering::Relaxed);
            let of = if streamed {
                String::new()
            } else {
                format!(" of {}", offer.size)
            };
            return Err(Failure::network(
                format!("connection to {peer} lost after {sent}{of} bytes of '{shown}'"),
                &e,
            )
            .into());
        }
    };

    link::send_frame(
        stream,
        &Frame::Trailer(Trailer {
            size,
            sha256: digest,
            offer_sha256: protocol::offer_digest(offer),
        }),
        peer,
    )?;
    Ok(InFlight {
        size,
        digest,
        started,
    })
}

/// The receiver's ACK for a file in flight: success only with status ok and
/// the digest we computed.
fn judge(ack: &Ack, in_flight: InFlight, offer: &Offer, peer: &str) -> anyhow::Result<Sent> {
    let shown = escape_for_terminal(&offer.name);
    let digest = in_flight.digest;
    match ack.status {
        AckStatus::Ok if ack.sha256 == digest => {}
        // The data arrived intact but the offer it belongs to did not.
        AckStatus::DigestMismatch if ack.sha256 == digest => {
            return Err(Failure::new(
                ExitCode::Integrity,
                format!(
                    "{peer} received '{shown}' intact but under a changed offer: {}",
                    escape_for_terminal(&ack.message)
                ),
            )
            .into());
        }
        AckStatus::Ok | AckStatus::DigestMismatch => {
            return Err(Failure::new(
                ExitCode::Integrity,
                format!(
                    "SHA-256 mismatch for '{shown}': sent {}, {peer} received {}; the receiver discarded it",
                    hex(&digest),
                    hex(&ack.sha256)
                ),
            )
            .into());
        }
        AckStatus::Failed => {
            return Err(Failure::new(
                link::code_for_reason(ack.reason),
                format!(
                    "{peer} could not keep '{shown}': {}",
                    escape_for_terminal(&ack.message)
                ),
            )
            .into());
        }
    }
    Ok(Sent {
        name: offer.name.clone(),
        bytes: in_flight.size,
        sha256: digest,
        seconds: in_flight.started.elapsed().as_secs_f64(),
        skipped: false,
    })
}

/// Network failures, timeouts and a busy receiver may pass; everything
/// else will not.
fn worth_retrying(e: &anyhow::Error) -> bool {
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

/// 1 s, 2 s, 4 s, ... at most 30 s before attempt `n + 1`.
fn backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.saturating_sub(1).min(5)).min(30))
}

/// Sleeps for `d` in short steps; false if a signal arrived meanwhile.
fn sleep_unless_interrupted(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if signals::interrupted() {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
        );
    }
    !signals::interrupted()
}

/// Where the data comes from: anything readable; files can also go back
/// to an offset, which resuming needs.
pub trait Source: Read + Send {
    /// Positions the next read at `offset`; `Ok(false)` when this source
    /// cannot (a pipe), so resuming is not possible.
    fn seek_to(&mut self, offset: u64) -> std::io::Result<bool>;
}

impl Source for File {
    fn seek_to(&mut self, offset: u64) -> std::io::Result<bool> {
        std::io::Seek::seek(self, std::io::SeekFrom::Start(offset)).map(|_| true)
    }
}

impl Source for std::io::Stdin {
    fn seek_to(&mut self, _offset: u64) -> std::io::Result<bool> {
        Ok(false)
    }
}

/// Hashes the first `offset` bytes of `source` and compares them with the
/// receiver's digest of what it holds. On a match, returns the hash state,
/// with `source` positioned at `offset`.
fn prefix_matches<R: Source + ?Sized>(
    source: &mut R,
    offset: u64,
    theirs: &Digest,
) -> std::io::Result<Option<Sha256>> {
    if !source.seek_to(0)? {
        return Ok(None);
    }
    let (hasher, read) = crate::pipeline::hash_prefix(source, Some(offset))?;
    if read < offset {
        return Ok(None); // our file is shorter now
    }
    let ours: Digest = hasher.clone().finalize().into();
    Ok((ours == *theirs).then_some(hasher))
}

/// How long to wait for the ACK of `size` bytes: the idle timeout plus one
/// second per 16 MiB, time for an fsync at a slow disk's pace.
pub fn ack_deadline(idle: Duration, size: u64) -> Duration {
    idle + Duration::from_secs(size / (16 << 20))
}

/// `xfer send FILE HOST:PORT`.
pub fn run(config: &SendConfig) -> anyhow::Result<()> {
    let reporter = Reporter::new(config.quiet, config.json);
    let secret = match &config.secret {
        Some(secret) => secret.clone(),
        None => ask_for_code()?,
    };
    let started = Instant::now();
    let mut attempt = 0;
    let result = loop {
        let result = if config.stdin() {
            send_stdin(config, &secret, &reporter)
        } else {
            send_paths(config, &secret, &reporter)
        };
        match &result {
            Err(e) if attempt < config.retries && !config.stdin() && worth_retrying(e) => {
                attempt += 1;
                let delay = backoff(attempt);
                reporter.info(|| {
                    format!(
                        "{e:#}; retrying in {} s (attempt {} of {})",
                        delay.as_secs(),
                        attempt + 1,
                        config.retries + 1
                    )
                });
                reporter.event(
                    "retry",
                    || json!({ "attempt": attempt, "delay_seconds": delay.as_secs(), "error": format!("{e:#}") }),
                );
                if !sleep_unless_interrupted(delay) {
                    break result;
                }
            }
            _ => break result,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(totals) => totals.finish(&reporter, seconds),
        Err(e) => {
            let code = ExitCode::for_error(&e).code();
            reporter.event(
                "summary",
                || json!({ "ok": false, "exit_code": code, "error": format!("{e:#}"), "seconds": seconds }),
            );
            Err(e)
        }
    }
}

/// Reads the receiver's code at the terminal (never from standard input,
/// which may be the data).
fn ask_for_code() -> anyhow::Result<Secret> {
    use std::io::{BufRead, Write};
    let no_terminal = || {
        Failure::new(
            ExitCode::Auth,
            "the receiver's code is needed and there is no terminal to ask at: \
             set XFER_CODE or pass --code, or use --key-file (or --insecure on both ends)",
        )
    };
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| no_terminal())?;
    (&tty)
        .write_all(b"Code shown by xfer recv: ")
        .map_err(|_| no_terminal())?;
    let mut line = String::new();
    std::io::BufReader::new(&tty)
        .take(256)
        .read_line(&mut line)
        .map_err(|_| no_terminal())?;
    if crate::secure::normalize_code(&line).is_empty() {
        return Err(Failure::new(ExitCode::Auth, "no code was typed").into());
    }
    Ok(Secret::Code(line))
}

/// What a session achieved, file by file.
#[derive(Default)]
struct Totals {
    sent: Vec<Sent>,
    directories: usize,
    failures: Vec<(String, anyhow::Error)>,
    /// Entries passed over on this side (symbolic links, devices).
    passed_over: usize,
}

impl Totals {
    fn record_sent(&mut self, sent: Sent, reporter: &Reporter) {
        if !sent.skipped {
            reporter.event(
                "file-done",
                || json!({ "name": sent.name, "bytes": sent.bytes, "sha256": hex(&sent.sha256), "seconds": sent.seconds }),
            );
        }
        self.sent.push(sent);
    }

    fn record_failure(&mut self, name: &str, e: anyhow::Error, reporter: &Reporter) {
        let code = ExitCode::for_error(&e).code();
        reporter.event(
            "file-failed",
            || json!({ "name": name, "error": format!("{e:#}"), "exit_code": code }),
        );
        self.failures.push((name.to_string(), e));
    }

    /// Says how it went and turns it into the exit status: 0 when every
    /// entry arrived (or was already there), 8 when only some did, else
    /// the first failure's own code.
    fn finish(self, reporter: &Reporter, seconds: f64) -> anyhow::Result<()> {
        let bytes: u64 = self.sent.iter().map(|s| s.bytes).sum();
        let skipped = self.sent.iter().filter(|s| s.skipped).count();
        let failures: Vec<_> = self
            .failures
            .iter()
            .map(|(name, e)| json!({ "name": name, "error": format!("{e:#}"), "exit_code": ExitCode::for_error(e).code() }))
            .collect();
        let succeeded = self.sent.len() + self.directories;
        let outcome: anyhow::Result<()> = match self.failures.into_iter().next() {
            None => Ok(()),
            Some((_, e)) if succeeded == 0 => Err(e),
            Some((_, e)) => Err(Failure::new(
                ExitCode::Partial,
                format!(
                    "{} of {} entries failed; the first: {e:#}",
                    failures.len(),
                    failures.len() + succeeded
                ),
            )
            .into()),
        };
        let code = match &outcome {
            Ok(()) => 0,
            Err(e) => ExitCode::for_error(e).code(),
        };
        let mut summary = json!({
            "ok": outcome.is_ok(), "exit_code": code, "files": self.sent.len(),
            "directories": self.directories, "skipped": skipped, "failed": failures.len(),
            "bytes": bytes, "seconds": seconds, "failures": failures,
        });
        if let [one] = self.sent.as_slice() {
            summary["name"] = json!(one.name);
            if !one.skipped {
                summary["sha256"] = json!(hex(&one.sha256));
            }
        }
        match self.sent.as_slice() {
            [one] if self.directories == 0 && failures.is_empty() && one.skipped => {
                reporter.info(|| format!(
                    "'{}' is already at the receiver, unchanged; nothing sent",
                    escape_for_terminal(&one.name)
                ));
            }
            [one] if self.directories == 0 && failures.is_empty() => {
                reporter.info(|| format!(
                    "sent '{}' ({}, {}), verified by the receiver: sha256 {}",
                    escape_for_terminal(&one.name),
                    crate::destination::human_bytes(one.bytes),
                    rate(one.bytes, one.seconds),
                    hex(&one.sha256)
                ));
            }
            [] if self.directories == 0 && !failures.is_empty() => {}
            _ => reporter.info(|| format!(
                "sent {} file(s) and {} director{} ({}, {}), each verified by the receiver; {} unchanged, {} failed{}",
                self.sent.len() - skipped,
                self.directories,
                if self.directories == 1 { "y" } else { "ies" },
                crate::destination::human_bytes(bytes),
                rate(bytes, seconds),
                skipped,
                failures.len(),
                if self.passed_over > 0 {
                    format!(", {} passed over", self.passed_over)
                } else {
                    String::new()
                }
            )),
        }
        reporter.event("summary", || summary);
        outcome
    }
}

/// Connects, shakes hands and reports it; the stream is ready for offers.
fn open_session(
    config: &SendConfig,
    secret: &Secret,
    reporter: &Reporter,
) -> anyhow::Result<(Box<dyn Link>, signals::Watch, String)> {
    let peer = config.target.to_string();
    let stream = crate::net::connect(&config.target, config.connect_timeout)?;
    let watch = signals::watch_socket(&stream);
    crate::net::prepare(&stream, config.idle_timeout)
        .map_err(|e| Failure::network(format!("cannot set up the connection to {peer}"), &e))?;
    reporter.event("connected", || json!({ "peer": peer }));
    // Small files and frames go out together, a few syscalls per file.
    let mut stream = link::Buffered::new(stream);
    let link: Box<dyn Link> = match link::handshake(&mut stream, &peer, secret, Role::Sender)? {
        Some(keys) => Box::new(Encrypted::new(stream, keys)),
        None => Box::new(stream),
    };
    Ok((link, watch, peer))
}

/// `xfer send - HOST:PORT --name NAME`: standard input as one stream.
fn send_stdin(config: &SendConfig, secret: &Secret, reporter: &Reporter) -> anyhow::Result<Totals> {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let name = config.name.clone().unwrap_or_default();
    let offer = Offer {
        flags: FLAG_STREAM,
        size: 0,
        mode: 0o100644,
        mtime_secs: now.as_secs() as i64,
        mtime_nanos: now.subsec_nanos(),
        name: name.clone(),
        sha256: None,
    };
    let (mut stream, _watch, peer) = open_session(config, secret, reporter)?;
    reporter.info(|| {
        format!(
            "sending '{}' from standard input to {peer}",
            escape_for_terminal(&name)
        )
    });
    let progress = reporter.progress(&name, None);
    let outcome = offer_file(
        &mut stream,
        &peer,
        &mut std::io::stdin(),
        "standard input",
        &offer,
        false,
        config.idle_timeout,
        &|n| progress.set(n),
        reporter,
    );
    drop(progress);
    let mut totals = Totals::default();
    match outcome? {
        Ok(sent) => totals.record_sent(sent, reporter),
        Err(e) => totals.record_failure(&name, e, reporter),
    }
    let _ = link::send_last_frame(&mut stream, &Frame::End, &peer);
    Ok(totals)
}

/// `xfer send PATH... HOST:PORT`: every file and directory in one session.
fn send_paths(config: &SendConfig, secret: &Secret, reporter: &Reporter) -> anyhow::Result<Totals> {
    let mut plan = Plan::of(&config.paths, config.name.as_deref());
    let mut totals = Totals {
        passed_over: plan.passed_over.len(),
        ..Totals::default()
    };
    for (name, reason) in &plan.passed_over {
        reporter.info(|| format!("passing over '{}': {reason}", escape_for_terminal(name)));
        reporter.event("file-skipped", || json!({ "name": name, "reason": reason }));
    }
    // One plain file goes as before; a tree or several paths as paths.
    let as_paths = plan.entries.len() > 1 || plan.entries.iter().any(|e| e.kind == Kind::Dir);
    let several = plan.entries.len() + plan.unreadable.len() > 1;
    let report_failure = |e: &anyhow::Error| {
        // With one entry, its failure is the command's one error line.
        if several {
            report_failure(reporter, e);
        }
    };
    for (name, e) in std::mem::take(&mut plan.unreadable) {
        report_failure(&e);
        totals.record_failure(&name, e, reporter);
    }
    if plan.entries.is_empty() {
        return Ok(totals);
    }
    let total_bytes: u64 = plan
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| e.id.size)
        .sum();

    let (mut stream, _watch, peer) = open_session(config, secret, reporter)?;
    let files = plan.entries.iter().filter(|e| e.kind == Kind::File).count();
    let mut opener = Opener::default();
    reporter.info(|| {
        if as_paths {
            format!(
                "sending {files} file(s) in {} entries ({}) to {peer}",
                plan.entries.len(),
                crate::destination::human_bytes(total_bytes)
            )
        } else {
            format!(
                "sending '{}' ({}) to {peer}",
                escape_for_terminal(&plan.entries[0].name),
                crate::destination::human_bytes(total_bytes)
            )
        }
    });
    let progress = reporter.progress("", Some(total_bytes));
    let mut done_before = 0u64;
    // Entries offered and not yet answered, oldest first: their index and,
    // for a file, the open file. Then files sent and awaiting their ACK.
    let mut offered: VecDeque<Offered> = VecDeque::new();
    let mut unacked: VecDeque<(usize, Offer, InFlight)> = VecDeque::new();
    let mut next = 0;
    let count = plan.entries.len();
    let mut deadline = config.idle_timeout;
    loop {
        // Keep the window full, so no entry waits a round trip.
        while next < count && offered.len() < WINDOW && unacked.len() < 4 * WINDOW {
            let entry = &plan.entries[next];
            next += 1;
            let mut offer = Offer {
                flags: if as_paths { FLAG_PATH } else { 0 },
                size: 0,
                mode: entry.id.mode,
                mtime_secs: entry.id.mtime.0,
                mtime_nanos: entry.id.mtime.1,
                name: entry.name.clone(),
                sha256: None,
            };
            let opened = if entry.kind == Kind::Dir {
                offer.flags |= FLAG_DIR;
                None
            } else {
                let shown_path = plan.shown(next - 1);
                match open_file(&mut opener, &plan, next - 1, &shown_path, config.checksum) {
                    Ok((file, id, sha256)) => {
                        offer.size = id.size;
                        offer.mode = id.mode;
                        (offer.mtime_secs, offer.mtime_nanos) = id.mtime;
                        offer.sha256 = sha256;
                        Some((file, shown_path))
                    }
                    Err(e) => {
                        report_failure(&e);
                        totals.record_failure(&entry.name, e, reporter);
                        done_before += entry.id.size;
                        continue;
                    }
                }
            };
            link::send_frame(&mut stream, &Frame::Offer(offer.clone()), &peer)?;
            offered.push_back((next - 1, opened, offer));
        }
        if offered.is_empty() && unacked.is_empty() {
            break;
        }
        // The next frame answers the oldest offer or acknowledges the
        // oldest file sent, whichever the receiver got to first.
        let wait = match unacked.front() {
            Some((_, _, in_flight)) => ack_deadline(config.idle_timeout, in_flight.size),
            None => config.idle_timeout,
        };
        // A syscall per change, not per frame.
        if wait != deadline {
            link::set_deadline(&mut stream, wait, &peer)?;
            deadline = wait;
        }
        let frame = link::expect_frame(&mut stream, &peer, "the receiver's answers")?;
        match frame {
            Frame::Ack(ack) => {
                let Some((_, offer, in_flight)) = unacked.pop_front() else {
                    return Err(link::unexpected(
                        &Frame::Ack(ack),
                        "ACCEPT, REFUSE or SKIP",
                        &peer,
                    ));
                };
                match judge(&ack, in_flight, &offer, &peer) {
                    Ok(sent) => totals.record_sent(sent, reporter),
                    Err(e) => {
                        report_failure(&e);
                        totals.record_failure(&offer.name, e, reporter);
                    }
                }
            }
            Frame::Error(e) => return Err(link::peer_aborted(&e, &peer)),
            reply => {
                let Some((index, opened, offer)) = offered.pop_front() else {
                    return Err(link::unexpected(&reply, "ACK", &peer));
                };
                progress.set_message(&format!("[{}/{count}] {}", index + 1, offer.name));
                let Some((mut file, shown_path)) = opened else {
                    // A directory: ACCEPT means it exists now.
                    match reply {
                        Frame::Accept(a) if a.offset == 0 => totals.directories += 1,
                        Frame::Refuse(r) => {
                            let e = Failure::new(
                                link::code_for_reason(r.reason),
                                format!(
                                    "{peer} refused directory '{}': {}",
                                    escape_for_terminal(&offer.name),
                                    escape_for_terminal(&r.message)
                                ),
                            )
                            .into();
                            report_failure(&e);
                            totals.record_failure(&offer.name, e, reporter);
                        }
                        other => {
                            return Err(link::unexpected(&other, "ACCEPT or REFUSE", &peer));
                        }
                    }
                    continue;
                };
                let size = offer.size;
                match answer(
                    &mut stream,
                    &peer,
                    &mut file,
                    &shown_path,
                    &offer,
                    config.resume,
                    reply,
                    reporter,
                )? {
                    Answer::Settled(Ok(sent)) => totals.record_sent(sent, reporter),
                    Answer::Settled(Err(e)) => {
                        report_failure(&e);
                        totals.record_failure(&offer.name, e, reporter);
                    }
                    Answer::Go { start, hasher } => {
                        if deadline != config.idle_timeout {
                            link::set_deadline(&mut stream, config.idle_timeout, &peer)?;
                            deadline = config.idle_timeout;
                        }
                        let base = done_before;
                        let in_flight = send_data(
                            &mut stream,
                            &peer,
                            &mut file,
                            &shown_path,
                            &offer,
                            start,
                            hasher,
                            &|n| progress.set(base + n),
                            reporter,
                        )?;
                        unacked.push_back((index, offer, in_flight));
                    }
                }
                done_before += size;
                progress.set(done_before);
            }
        }
    }
    drop(progress);
    // Everything is settled, each file verified or failed; a lost END
    // changes nothing.
    let _ = link::send_last_frame(&mut stream, &Frame::End, &peer);
    Ok(totals)
}

/// An entry offered and awaiting its answer: its index in the plan, for a
/// file the open file and its name as shown, and the offer itself.
type Offered = (usize, Option<(File, String)>, Offer);

/// Entries a sender keeps offered but not yet answered: enough to hide the
/// round trips behind data, few enough to bound the files both sides hold
/// open. Files sent and awaiting their ACK may be four times as many, so
/// new offers go out while earlier files are still being verified. (64 was
/// measured too: no faster on 10,000 small files.)
const WINDOW: usize = 32;

/// One file's failure in a session of several, said as it happens.
fn report_failure(reporter: &Reporter, e: &anyhow::Error) {
    if !reporter.json || !reporter.quiet {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr().lock(),
            format!("xfer: error: {e:#}\n").as_bytes(),
        );
    }
}

/// Opens entry `index` of `plan` to send (checked against the walk): the
/// file, its identity now, and with `checksum` its SHA-256.
fn open_file(
    opener: &mut Opener,
    plan: &Plan,
    index: usize,
    shown_path: &str,
    checksum: bool,
) -> anyhow::Result<(File, Identity, Option<Digest>)> {
    let (file, id) = opener.open_file(plan, index)?;
    // Read-ahead hint for disks; not worth a system call for a small file.
    if id.size >= 1 << 20 {
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    }
    let sha256 = if checksum {
        Some(hash_file(&file, shown_path)?)
    } else {
        None
    };
    Ok((file, id, sha256))
}

/// `--checksum`: the whole file's SHA-256 before offering it (the one case
/// where xfer reads a file twice), leaving the file positioned at 0.
fn hash_file(file: &File, shown_path: &str) -> anyhow::Result<Digest> {
    let mut reader = file;
    let (hasher, _) = crate::pipeline::hash_prefix(&mut reader, None)
        .map_err(|e| Failure::local(format!("cannot read '{shown_path}'"), &e))?;
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0))
        .map_err(|e| Failure::local(format!("cannot read '{shown_path}'"), &e))?;
    Ok(hasher.finalize().into())
}
