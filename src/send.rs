//! The sending side: offer a file, stream it while hashing, and succeed only
//! when the receiver confirms the same SHA-256.
//!
//! The session runs over any [`Link`] and any reader, so the same code
//! serves files, the in-process benchmark and tests. It must never report
//! success without an ACK whose digest equals the one computed here.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::config::SendConfig;
use crate::exit_codes::{ExitCode, Failure, is_timeout};
use crate::names::escape_for_terminal;
use crate::output::{Reporter, rate};
use crate::pipeline::{CopyError, copy_hashed, copy_hashed_to_end};
use crate::protocol::{
    self, AckStatus, ChunkWriter, Digest, FLAG_STREAM, Frame, Offer, Reason, Trailer, hex,
};
use crate::session::{self, Link};
use crate::signals;

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
    session::handshake(stream, peer)?;
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
    let _ = session::send_frame(stream, &Frame::End, peer);
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
    let shown = escape_for_terminal(&offer.name);
    session::send_frame(stream, &Frame::Offer(offer.clone()), peer)?;
    let streamed = offer.flags & FLAG_STREAM != 0;
    let (start, hasher) =
        match session::expect_frame(stream, peer, "the receiver's answer to the offer")? {
            Frame::Accept(a) if a.offset == 0 => (0, Sha256::new()),
            Frame::Accept(a) if streamed || a.offset > offer.size => {
                session::send_error(stream, Reason::Protocol, "offset out of range");
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
                        source.seek_to(0).map_err(|e| {
                            Failure::local(format!("cannot read '{source_name}'"), &e)
                        })?;
                        (0, Sha256::new())
                    }
                };
                session::send_frame(stream, &Frame::Start { offset: start }, peer)?;
                (start, hasher)
            }
            Frame::Skip { message } => {
                // The receiver already has this very file.
                reporter.event(
                    "file-skipped",
                    json!({ "name": offer.name, "reason": "unchanged", "message": message }),
                );
                return Ok(Ok(Sent {
                    name: offer.name.clone(),
                    bytes: 0,
                    sha256: offer.sha256.unwrap_or([0; 32]),
                    seconds: 0.0,
                    skipped: true,
                }));
            }
            Frame::Refuse(r) => {
                return Ok(Err(Failure::new(
                    session::code_for_reason(r.reason),
                    format!(
                        "{peer} refused '{shown}': {}",
                        escape_for_terminal(&r.message)
                    ),
                )
                .into()));
            }
            Frame::Error(e) => return Err(session::peer_aborted(&e, peer)),
            other => return Err(session::unexpected(&other, "ACCEPT or REFUSE", peer)),
        };

    if start > 0 {
        reporter.info(format!(
            "resuming '{shown}' at {} of {}",
            crate::destination::human_bytes(start),
            crate::destination::human_bytes(offer.size)
        ));
    }
    reporter.event(
        "file-start",
        json!({ "name": offer.name, "size": (!streamed).then_some(offer.size), "offset": start }),
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
            session::send_error(
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
                    return Err(session::peer_aborted(&fe, peer));
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

    session::send_frame(
        stream,
        &Frame::Trailer(Trailer {
            size,
            sha256: digest,
        }),
        peer,
    )?;
    // Before its verdict the receiver fsyncs the whole file, which on a slow
    // disk takes longer than any sensible idle time; allow for that.
    stream
        .set_deadline(ack_deadline(idle_timeout, size))
        .map_err(|e| Failure::network(format!("cannot set a deadline on {peer}"), &e))?;
    let ack = match session::expect_frame(stream, peer, "the receiver's verdict")? {
        Frame::Ack(ack) => ack,
        Frame::Error(e) => return Err(session::peer_aborted(&e, peer)),
        other => return Err(session::unexpected(&other, "ACK", peer)),
    };
    stream
        .set_deadline(idle_timeout)
        .map_err(|e| Failure::network(format!("cannot set a deadline on {peer}"), &e))?;
    match ack.status {
        AckStatus::Ok if ack.sha256 == digest => {}
        AckStatus::Ok | AckStatus::DigestMismatch => {
            return Ok(Err(Failure::new(
                ExitCode::Integrity,
                format!(
                    "SHA-256 mismatch for '{shown}': sent {}, {peer} received {}; the receiver discarded it",
                    hex(&digest),
                    hex(&ack.sha256)
                ),
            )
            .into()));
        }
        AckStatus::Failed => {
            return Ok(Err(Failure::new(
                session::code_for_reason(ack.reason),
                format!(
                    "{peer} could not keep '{shown}': {}",
                    escape_for_terminal(&ack.message)
                ),
            )
            .into()));
        }
    }
    Ok(Ok(Sent {
        name: offer.name.clone(),
        bytes: size,
        sha256: digest,
        seconds: started.elapsed().as_secs_f64(),
        skipped: false,
    }))
}

/// Offers a directory entry within a session; the receiver creates it.
pub fn offer_directory<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    offer: &Offer,
) -> anyhow::Result<anyhow::Result<()>> {
    session::send_frame(stream, &Frame::Offer(offer.clone()), peer)?;
    match session::expect_frame(stream, peer, "the receiver's answer to the offer")? {
        Frame::Accept(a) if a.offset == 0 => Ok(Ok(())),
        Frame::Refuse(r) => Ok(Err(Failure::new(
            session::code_for_reason(r.reason),
            format!(
                "{peer} refused directory '{}': {}",
                escape_for_terminal(&offer.name),
                escape_for_terminal(&r.message)
            ),
        )
        .into())),
        Frame::Error(e) => Err(session::peer_aborted(&e, peer)),
        other => Err(session::unexpected(&other, "ACCEPT or REFUSE", peer)),
    }
}

/// Network failures and timeouts may pass; everything else will not.
fn worth_retrying(e: &anyhow::Error) -> bool {
    !signals::interrupted()
        && matches!(
            ExitCode::for_error(e),
            ExitCode::Network | ExitCode::Timeout
        )
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
    let mut hasher = Sha256::new();
    let mut left = offset;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        match source.read(&mut buf[..want])? {
            0 => return Ok(None), // our file is shorter now
            n => {
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
        }
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
    let started = Instant::now();
    let mut attempt = 0;
    let result = loop {
        let result = send_file(config, &reporter);
        match &result {
            Err(e) if attempt < config.retries && !config.stdin() && worth_retrying(e) => {
                attempt += 1;
                let delay = backoff(attempt);
                reporter.info(format!(
                    "{e:#}; retrying in {} s (attempt {} of {})",
                    delay.as_secs(),
                    attempt + 1,
                    config.retries + 1
                ));
                reporter.event(
                    "retry",
                    json!({ "attempt": attempt, "delay_seconds": delay.as_secs(), "error": format!("{e:#}") }),
                );
                if !sleep_unless_interrupted(delay) {
                    break result;
                }
            }
            _ => break result,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(sent) if sent.skipped => {
            reporter.info(format!(
                "'{}' is already at the receiver, unchanged; nothing sent",
                escape_for_terminal(&sent.name)
            ));
            reporter.event(
                "summary",
                json!({ "ok": true, "exit_code": 0, "files": 1, "skipped": 1, "name": sent.name,
                        "bytes": 0, "seconds": seconds }),
            );
        }
        Ok(sent) => {
            reporter.info(format!(
                "sent '{}' ({}, {}), verified by the receiver: sha256 {}",
                escape_for_terminal(&sent.name),
                crate::destination::human_bytes(sent.bytes),
                rate(sent.bytes, sent.seconds),
                hex(&sent.sha256)
            ));
            reporter.event(
                "file-done",
                json!({ "name": sent.name, "bytes": sent.bytes, "sha256": hex(&sent.sha256), "seconds": sent.seconds }),
            );
            reporter.event(
                "summary",
                json!({ "ok": true, "exit_code": 0, "files": 1, "name": sent.name, "bytes": sent.bytes,
                        "sha256": hex(&sent.sha256), "seconds": seconds }),
            );
        }
        Err(e) => {
            let code = ExitCode::for_error(e).code();
            reporter.event(
                "file-failed",
                json!({ "name": config.file.display().to_string(), "error": format!("{e:#}"), "exit_code": code }),
            );
            reporter.event(
                "summary",
                json!({ "ok": false, "exit_code": code, "error": format!("{e:#}"), "seconds": seconds }),
            );
        }
    }
    result.map(drop)
}

fn send_file(config: &SendConfig, reporter: &Reporter) -> anyhow::Result<Sent> {
    let (mut source, offer, shown_path): (Box<dyn Source>, Offer, String) = if config.stdin() {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let offer = Offer {
            flags: FLAG_STREAM,
            size: 0,
            mode: 0o100644,
            mtime_secs: now.as_secs() as i64,
            mtime_nanos: now.subsec_nanos(),
            name: config.name.clone(),
            sha256: None,
        };
        (
            Box::new(std::io::stdin()),
            offer,
            "standard input".to_string(),
        )
    } else {
        let (file, offer) = open_file(config)?;
        (
            Box::new(file),
            offer,
            escape_for_terminal(&config.file.display().to_string()),
        )
    };

    let peer = config.target.to_string();
    let mut stream = crate::net::connect(&config.target, config.connect_timeout)?;
    let _watch = signals::watch_socket(&stream);
    crate::net::prepare(&stream, config.idle_timeout)
        .map_err(|e| Failure::network(format!("cannot set up the connection to {peer}"), &e))?;
    reporter.event("connected", json!({ "peer": peer }));
    reporter.info(format!(
        "sending '{}' ({}) to {peer}",
        escape_for_terminal(&offer.name),
        if config.stdin() {
            "from standard input".to_string()
        } else {
            crate::destination::human_bytes(offer.size)
        }
    ));
    send_one(
        &mut stream,
        &peer,
        &mut *source,
        &shown_path,
        &offer,
        config.resume,
        config.idle_timeout,
        reporter,
    )
}

/// Opens a regular file to send and describes it in an offer.
fn open_file(config: &SendConfig) -> anyhow::Result<(File, Offer)> {
    let shown_path = escape_for_terminal(&config.file.display().to_string());
    // Look before opening: opening a FIFO would block until it has a writer.
    match std::fs::metadata(&config.file) {
        Ok(m) if !m.is_file() => {
            return Err(Failure::new(
                ExitCode::LocalFile,
                format!("cannot send '{shown_path}': not a regular file (use '-' for a stream)"),
            )
            .into());
        }
        Ok(_) => {}
        Err(e) => return Err(Failure::local(format!("cannot open '{shown_path}'"), &e).into()),
    }
    let file = File::open(&config.file)
        .map_err(|e| Failure::local(format!("cannot open '{shown_path}'"), &e))?;
    // Read-ahead hint for disks; harmless where it does not apply.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    let meta = file
        .metadata()
        .map_err(|e| Failure::local(format!("cannot read '{shown_path}'"), &e))?;
    if !meta.is_file() {
        return Err(Failure::new(
            ExitCode::LocalFile,
            format!("cannot send '{shown_path}': not a regular file"),
        )
        .into());
    }
    let (mtime_secs, mtime_nanos) = match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            // Before 1970: floor to whole seconds, nanoseconds count up.
            Err(before) => {
                let d = before.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                }
            }
        },
        Err(_) => (0, 0),
    };
    let sha256 = if config.checksum {
        Some(hash_file(&file, &shown_path)?)
    } else {
        None
    };
    let offer = Offer {
        flags: 0,
        size: meta.len(),
        mode: meta.mode(),
        mtime_secs,
        mtime_nanos,
        name: config.name.clone(),
        sha256,
    };
    Ok((file, offer))
}

/// `--checksum`: the whole file's SHA-256 before offering it (the one case
/// where xfer reads a file twice), leaving the file positioned at 0.
fn hash_file(file: &File, shown_path: &str) -> anyhow::Result<Digest> {
    let mut reader = file;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::local(format!("cannot read '{shown_path}'"), &e).into()),
        }
    }
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0))
        .map_err(|e| Failure::local(format!("cannot read '{shown_path}'"), &e))?;
    Ok(hasher.finalize().into())
}
