//! The sending side: offer entries, stream each accepted file while
//! hashing it, and succeed only when the receiver confirms the same SHA-256.
//!
//! One loop, [`drive`], runs every session (a tree, one file, standard
//! input, the benchmark) over any [`Link`] and any [`Entries`]; the rules
//! it follows are [`session::sender::Sender`]'s. It must never report
//! success without an ACK whose digest equals the one computed here, and
//! every count and message says what crossed the wire.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::compress::CompressWriter;
use crate::config::{Endpoint, SendConfig};
use crate::exit_codes::{ExitCode, Failure, is_timeout};
use crate::link::{self, Link};
use crate::names::{escape_for_terminal, shown};
use crate::output::{Progress, Reporter, rate};
use crate::pipeline::{CopyError, copy_hashed, copy_hashed_to_end};
use crate::protocol::{
    self, AckStatus, ChunkWriter, Digest, FLAG_COMPRESSED, FLAG_DIR, FLAG_HARDLINK, FLAG_PATH,
    FLAG_STREAM, FLAG_SYMLINK, Frame, Offer, Reason, Trailer, hex,
};
use crate::retry::{retrying, worth_retrying};
use crate::secure::{Role, Secret};
use crate::session::allow_for_local_work;
use crate::session::sender::{Answer, Offered, Sender};
use crate::signals;
use crate::source::{Identity, Kind, Opener, Plan};
use anyhow::Context as _;

/// A file the receiver verified and kept (or already had).
#[derive(Debug, Clone)]
pub struct Sent {
    pub name: Vec<u8>,
    /// The file's size: what is now verified at the receiver.
    pub size: u64,
    /// Bytes of it that crossed the wire in this session (not a resumed
    /// prefix the receiver already held, nothing for an unchanged file).
    pub bytes: u64,
    /// Where this session's data started (a resume), else 0.
    pub resumed_at: u64,
    pub sha256: Digest,
    pub seconds: f64,
    /// The receiver already had it: nothing was sent.
    pub skipped: bool,
    /// A symbolic or hard link, not a file of its own.
    pub link: bool,
    /// With `--compress`: the bytes of compressed blocks that carried
    /// `bytes` of data.
    pub compressed: Option<u64>,
}

/// What a session sends: entries offered in order, each opened when its
/// turn comes (so a tree holds few files open at once).
pub trait Entries {
    fn count(&self) -> usize;
    /// Entry `index`, ready to offer: the offer, and for a file or a stream
    /// where its data comes from and how to name that in messages. An error
    /// fails this entry only; the session goes on.
    fn open(&mut self, index: usize) -> anyhow::Result<Opened>;
    /// Entry `index`'s name, for a failure before it could be offered.
    fn name(&self, index: usize) -> Vec<u8>;
    /// Bytes of entry `index` for the progress bar when it cannot be opened.
    fn size_hint(&self, index: usize) -> u64;
    /// Removes entry `index`'s file if it is still exactly as `read`
    /// (`--remove-source-files`); `Ok(Err(why))` when it is kept.
    fn remove(
        &mut self,
        _index: usize,
        _read: &Identity,
    ) -> std::io::Result<Result<(), &'static str>> {
        Ok(Err("it is not a file on disk"))
    }
}

/// An entry ready to offer.
pub struct Opened {
    pub offer: Offer,
    /// The data of a file or stream; `None` for a directory.
    pub source: Option<(Box<dyn Source>, String)>,
    /// A file's identity when it was opened, checked again once it was
    /// read.
    pub identity: Option<Identity>,
}

/// How [`drive`] runs.
pub struct Options {
    pub resume: bool,
    pub idle_timeout: Duration,
    /// Say each entry's failure as it happens (several entries); with one,
    /// its failure is the command's one error line.
    pub report_each: bool,
    /// `--remove-source-files`: a file the receiver verified and keeps is
    /// removed here, if it is still exactly the file that was read.
    pub remove_source_files: bool,
}

/// Runs one session over `stream` after the handshake: offers every entry,
/// sends what is accepted, reads every verdict, then says END. The error is
/// for the session (the link or the protocol broke); each entry's own
/// outcome is in `totals`.
pub fn drive<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    entries: &mut dyn Entries,
    options: &Options,
    reporter: &Reporter,
    progress: &Progress,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let mut run = Run {
        rules: Sender::new(entries.count()),
        count: entries.count(),
        stream,
        peer,
        options,
        reporter,
        progress,
        totals,
        offered: VecDeque::new(),
        unacked: VecDeque::new(),
        done_before: 0,
        deadline: options.idle_timeout,
    };
    loop {
        run.fill_window(entries)?;
        if run.rules.done() {
            break;
        }
        let answer = run.next_answer()?;
        // New offers go ahead of this answer's data, so the receiver can
        // answer them while it still has that data to write.
        run.fill_window(entries)?;
        run.act_on(answer, entries)?;
    }
    // Everything is settled, each file verified or failed; a lost END
    // changes nothing.
    let end = Frame::End {
        failed: run.totals.unoffered,
        message: run.totals.first_unoffered.clone().unwrap_or_default(),
    };
    let _ = link::send_last_frame(run.stream, &end, peer);
    Ok(())
}

/// One sending session in progress: the rules, the link, and the entries
/// offered or sent and not yet answered.
struct Run<'a, S: Link + ?Sized> {
    rules: Sender,
    count: usize,
    stream: &'a mut S,
    peer: &'a str,
    options: &'a Options,
    reporter: &'a Reporter,
    progress: &'a Progress,
    totals: &'a mut Totals,
    /// Offered and awaiting an answer, oldest first.
    offered: VecDeque<Opened>,
    /// Sent and awaiting a verdict, oldest first.
    unacked: VecDeque<(Offer, InFlight)>,
    /// Bytes of the entries settled so far, for the progress bar.
    done_before: u64,
    /// The deadline set on the link now.
    deadline: Duration,
}

impl<S: Link + ?Sized> Run<'_, S> {
    /// Offers entries while the window has room, so no entry waits a
    /// round trip.
    fn fill_window(&mut self, entries: &mut dyn Entries) -> anyhow::Result<()> {
        while let Some(index) = self.rules.next_to_offer() {
            let opened = match entries.open(index) {
                Ok(opened) => opened,
                Err(e) => {
                    self.totals.not_offered(&e);
                    self.fail(&entries.name(index), e);
                    self.done_before += entries.size_hint(index);
                    continue;
                }
            };
            let what = match (&opened.source, opened.offer.flags) {
                (None, _) => Offered::Dir,
                (Some(_), flags) if flags & FLAG_STREAM != 0 => Offered::Stream,
                (Some(_), _) => Offered::File {
                    size: opened.offer.size,
                },
            };
            link::send_frame(self.stream, &Frame::Offer(opened.offer.clone()), self.peer)?;
            self.rules.offered(index, what);
            self.offered.push_back(opened);
        }
        Ok(())
    }

    /// Waits for the receiver's next answer or verdict, as the rules read
    /// it; an answer they forbid ends the session.
    fn next_answer(&mut self) -> anyhow::Result<Answer> {
        // The receiver may read back a partial file or hash its own copy
        // before it answers, and fsyncs a file before its verdict: allow
        // for that local work on its side.
        let idle = self.options.idle_timeout;
        let wait = self
            .offered
            .front()
            .map(|o| allow_for_local_work(idle, o.offer.size))
            .into_iter()
            .chain(
                self.unacked
                    .front()
                    .map(|(_, f)| allow_for_local_work(idle, f.size)),
            )
            .max()
            .unwrap_or(idle);
        self.set_deadline(wait)?;
        let frame = link::expect_frame(self.stream, self.peer, "the receiver's answers")?;
        self.rules.on_frame(frame).map_err(|violation| {
            link::send_error(self.stream, Reason::Protocol, &violation.0);
            Failure::new(ExitCode::Network, format!("{}: {violation}", self.peer)).into()
        })
    }

    /// A syscall per change, not per frame.
    fn set_deadline(&mut self, wait: Duration) -> anyhow::Result<()> {
        if wait != self.deadline {
            link::set_deadline(self.stream, wait, self.peer)?;
            self.deadline = wait;
        }
        Ok(())
    }

    /// `--remove-source-files`, once the receiver has verified, made
    /// durable and kept entry `index`: removes it here if it is still
    /// exactly what was read (`read`: `None` if it changed while read).
    fn remove_source(
        &mut self,
        entries: &mut dyn Entries,
        index: usize,
        name: &[u8],
        read: Option<&Identity>,
    ) {
        let outcome = match read {
            None => Ok(Err("it changed while it was read")),
            Some(read) => entries.remove(index, read),
        };
        let shown = escape_for_terminal(name);
        match outcome {
            Ok(Ok(())) => {
                self.totals.removed += 1;
                self.reporter
                    .info(|| format!("removed '{shown}' here (--remove-source-files)"));
                self.reporter.event("source-removed", || {
                    crate::names::with_name(name, json!({}))
                });
            }
            Ok(Err(why)) => self.kept(name, why),
            Err(e) => {
                let why = crate::exit_codes::io_reason(&e);
                crate::output::warning_line(&format!(
                    "cannot remove '{shown}' (--remove-source-files): {why}"
                ));
                self.reporter.event("source-kept", || {
                    crate::names::with_name(
                        name,
                        json!({ "reason": format!("cannot remove it: {why}") }),
                    )
                });
            }
        }
    }

    /// A source `--remove-source-files` leaves, and why.
    fn kept(&self, name: &[u8], why: &str) {
        let shown = escape_for_terminal(name);
        crate::output::warning_line(&format!(
            "kept '{shown}' here despite --remove-source-files: {why}"
        ));
        self.reporter.event("source-kept", || {
            crate::names::with_name(name, json!({ "reason": why }))
        });
    }

    fn fail(&mut self, name: &[u8], e: anyhow::Error) {
        if self.options.report_each {
            report_failure(self.reporter, &e);
        }
        self.totals.record_failure(name, e, self.reporter);
    }

    fn act_on(&mut self, answer: Answer, entries: &mut dyn Entries) -> anyhow::Result<()> {
        if let Answer::PeerAborted(e) = &answer {
            return Err(link::peer_aborted(e, self.peer));
        }
        if let Answer::Verdict { .. } = answer {
            let (offer, in_flight) = self
                .unacked
                .pop_front()
                .expect("the rules track each file sent");
            let (index, read) = (in_flight.index, in_flight.read);
            let changed = in_flight.changed;
            match judge(&answer, in_flight, &offer, self.peer) {
                // Like GNU tar's "file changed as we read it": the copy is
                // verified as read, but may be no version the file ever
                // had, so this is no success.
                Ok(_) if changed => {
                    let name = escape_for_terminal(&offer.name);
                    let e = Failure::new(
                        ExitCode::LocalFile,
                        format!(
                            "'{name}' changed while it was read: the receiver kept and verified \
                             what was read, which may mix old and new content; send it again"
                        ),
                    );
                    self.fail(&offer.name, e.into());
                }
                Ok(sent) => {
                    self.totals.record_sent(sent, self.reporter);
                    if self.options.remove_source_files {
                        self.remove_source(entries, index, &offer.name, read.as_ref());
                    }
                }
                Err(e) => self.fail(&offer.name, e),
            }
            return Ok(());
        }
        let Opened {
            offer,
            source,
            identity,
        } = self
            .offered
            .pop_front()
            .expect("the rules track each offer");
        if let (
            Answer::Send { index, .. }
            | Answer::DirMade { index }
            | Answer::Unchanged { index, .. }
            | Answer::Refused { index, .. },
            true,
        ) = (&answer, self.count > 1)
        {
            let message = format!("[{}/{}] {}", index + 1, self.count, shown(&offer.name));
            self.progress.set_message(&message);
        }
        match (answer, source) {
            (Answer::DirMade { .. }, _) => self.totals.directories += 1,
            (Answer::Refused { refuse, .. }, source) => {
                let what = if source.is_none() { "directory " } else { "" };
                let e = Failure::new(
                    ExitCode::for_peer_reason(refuse.reason),
                    format!(
                        "{} refused {what}'{}': {}",
                        self.peer,
                        escape_for_terminal(&offer.name),
                        crate::names::escape_peer_message(&refuse.message)
                    ),
                )
                .into();
                self.fail(&offer.name, e);
            }
            (Answer::Unchanged { message, .. }, _) => {
                self.reporter.event("file-skipped", || {
                    crate::names::with_name(
                        &offer.name,
                        json!({ "reason": "unchanged", "message": message }),
                    )
                });
                if self.options.remove_source_files {
                    // Only a copy the receiver wrote and verified lets the
                    // source go: an unchanged one was judged by size and
                    // time, or (--checksum) may be this very file, seen
                    // through a shared disk.
                    self.kept(
                        &offer.name,
                        "the receiver already had it, and only a copy it wrote and verified in this session lets the source go",
                    );
                }
                let sent = Sent {
                    name: offer.name.clone(),
                    size: offer.size,
                    bytes: 0,
                    resumed_at: 0,
                    sha256: offer.sha256.unwrap_or([0; 32]),
                    seconds: 0.0,
                    skipped: true,
                    link: offer.is_link(),
                    compressed: None,
                };
                self.totals.record_sent(sent, self.reporter);
            }
            (
                Answer::Send {
                    index,
                    offset,
                    prefix,
                },
                Some((source, source_name)),
            ) => self.send_file(
                index,
                &offer,
                (offset, prefix),
                (source, &source_name),
                identity,
            )?,
            (answer, _) => unreachable!("the rules never ask this: {answer:?}"),
        }
        self.done_before += offer.size;
        self.progress.set(self.done_before);
        Ok(())
    }

    /// Sends an accepted file: START where the data begins (after the
    /// receiver's prefix, if it is really the start of this file), the
    /// data and the TRAILER; its verdict comes later.
    fn send_file(
        &mut self,
        index: usize,
        offer: &Offer,
        (offset, prefix): (u64, Digest),
        (mut source, source_name): (Box<dyn Source>, &str),
        before: Option<Identity>,
    ) -> anyhow::Result<()> {
        let cannot_read =
            |e: std::io::Error| Failure::local(format!("cannot read '{source_name}'"), &e);
        let resumed = if offset > 0 && self.options.resume {
            prefix_matches(&mut *source, offset, &prefix).map_err(cannot_read)?
        } else {
            None
        };
        let (start, hasher) = match resumed {
            Some(hasher) => (offset, hasher),
            None => {
                if offset > 0 {
                    source.seek_to(0).map_err(cannot_read)?;
                }
                (0, Sha256::new())
            }
        };
        link::send_frame(self.stream, &Frame::Start { offset: start }, self.peer)?;
        if start > 0 {
            self.reporter.info(|| {
                format!(
                    "resuming '{}' at {} of {}",
                    escape_for_terminal(&offer.name),
                    crate::units::human_bytes(start),
                    crate::units::human_bytes(offer.size)
                )
            });
        }
        self.set_deadline(self.options.idle_timeout)?;
        let base = self.done_before;
        let progress = self.progress;
        let mut in_flight = send_data(
            self.stream,
            self.peer,
            &mut *source,
            (source_name, before),
            offer,
            start,
            hasher,
            &|n| progress.set(base + n),
            self.reporter,
        )?;
        in_flight.index = index;
        if in_flight.changed {
            // Said now; the file fails once its verdict is in.
            self.reporter.event("file-changed", || {
                crate::names::with_name(&offer.name, json!({}))
            });
        }
        self.rules.data_sent(index);
        self.unacked.push_back((offer.clone(), in_flight));
        Ok(())
    }
}

/// The handshake, then [`drive`]: a whole session over `stream`.
pub fn over_link<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    secret: &Secret,
    entries: &mut dyn Entries,
    options: &Options,
    reporter: &Reporter,
) -> anyhow::Result<Totals> {
    let keys = crate::handshake::exchange(stream, peer, secret, Role::Sender)?.keys;
    let stream = &mut crate::handshake::secured(stream, keys);
    let mut totals = Totals::default();
    let progress = reporter.progress("", None);
    drive(
        stream,
        peer,
        entries,
        options,
        reporter,
        &progress,
        &mut totals,
    )?;
    Ok(totals)
}

/// A file whose data and TRAILER are sent and whose ACK is awaited.
struct InFlight {
    /// The entry, and its identity once read (`None`: it changed while
    /// read, or is no file on disk), for `--remove-source-files`.
    index: usize,
    read: Option<Identity>,
    /// It changed while it was read: what arrived may mix old and new.
    changed: bool,
    size: u64,
    /// Where this session's data started.
    start: u64,
    digest: Digest,
    started: Instant,
    /// With COMPRESSED: the bytes of blocks that carried the data.
    compressed: Option<u64>,
}

/// Sends a file's data from `start` and its TRAILER, which says whether
/// the file changed while it was read (its identity `before` the read
/// against its identity after).
#[allow(clippy::too_many_arguments)]
fn send_data<S, R>(
    stream: &mut S,
    peer: &str,
    source: &mut R,
    (source_name, before): (&str, Option<Identity>),
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
    reporter.event("file-start", || {
        crate::names::with_name(
            &offer.name,
            json!({ "size": (!streamed).then_some(offer.size), "offset": start }),
        )
    });
    let started = Instant::now();
    let done = AtomicU64::new(start);
    let on_progress = |n| {
        done.store(start + n, Ordering::Relaxed);
        on_bytes(start + n);
    };
    stream.floor(true);
    // With COMPRESSED the bytes that would cross the wire go through the
    // block encoder first (then the records seal them): the digest still
    // covers the file's own bytes.
    let compressed = offer.flags & FLAG_COMPRESSED != 0;
    let level = crate::compress::DEFAULT_LEVEL;
    let mut wire = None;
    let copied = if streamed {
        let mut framed = ChunkWriter::new(&mut *stream);
        let done = if compressed {
            let mut blocks = CompressWriter::new(&mut framed, level);
            copy_hashed_to_end(source, &mut blocks, hasher, &on_progress).and_then(|done| {
                wire = Some(blocks.finish().map_err(CopyError::Sink)?.1.wire);
                Ok(done)
            })
        } else {
            copy_hashed_to_end(source, &mut framed, hasher, &on_progress)
        };
        done.and_then(|done| {
            framed.finish().map_err(CopyError::Sink)?;
            Ok(done)
        })
    } else if compressed {
        let mut blocks = CompressWriter::new(&mut *stream, level);
        copy_hashed(
            source,
            &mut blocks,
            offer.size - start,
            hasher,
            &on_progress,
        )
        .and_then(|digest| {
            wire = Some(blocks.finish().map_err(CopyError::Sink)?.1.wire);
            Ok((offer.size, digest))
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
    stream.floor(false);
    let (size, digest) = match copied {
        Ok(d) => d,
        Err(CopyError::Source(e)) => {
            link::send_error(
                stream,
                Reason::LocalIo,
                &format!("sender cannot read '{shown}'"),
            );
            return Err(Failure::local(format!("cannot read '{source_name}'"), &e).into());
        }
        Err(CopyError::Sink(e)) => {
            // The receiver may have said why it stopped reading.
            if !is_timeout(&e)
                && let Ok(Frame::Error(fe)) = protocol::read_frame(stream)
            {
                return Err(link::peer_aborted(&fe, peer));
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

    // The snapshot taken when the file was listed and opened, checked
    // again now that it was read: a file written meanwhile may have sent a
    // mix of old and new content, verified as sent. The receiver hears it
    // in the trailer, so both sides report it.
    let after = source.identity();
    let changed =
        matches!((before, after), (Some(b), Some(a)) if changed_while_read(offer, &b, &a));
    let read = after.filter(|_| before.is_some() && !changed);
    link::send_frame(
        stream,
        &Frame::Trailer(Trailer {
            size,
            sha256: digest,
            offer_sha256: protocol::offer_digest(offer),
            changed,
        }),
        peer,
    )?;
    Ok(InFlight {
        index: 0,
        read,
        changed,
        size,
        start,
        digest,
        started,
        compressed: wire,
    })
}

/// The receiver's ACK for a file in flight: success only with status ok and
/// the digest we computed.
fn judge(answer: &Answer, in_flight: InFlight, offer: &Offer, peer: &str) -> anyhow::Result<Sent> {
    let Answer::Verdict { ack, .. } = answer else {
        unreachable!("judged only on a verdict");
    };
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
                    crate::names::escape_peer_message(&ack.message)
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
                ExitCode::for_peer_reason(ack.reason),
                format!(
                    "{peer} could not keep '{shown}': {}",
                    crate::names::escape_peer_message(&ack.message)
                ),
            )
            .into());
        }
    }
    Ok(Sent {
        name: offer.name.clone(),
        size: in_flight.size,
        bytes: in_flight.size - in_flight.start,
        resumed_at: in_flight.start,
        sha256: digest,
        seconds: in_flight.started.elapsed().as_secs_f64(),
        skipped: false,
        link: offer.is_link(),
        compressed: in_flight.compressed,
    })
}

/// Where the data comes from: anything readable; files can also go back
/// to an offset, which resuming needs.
pub trait Source: Read + Send {
    /// Positions the next read at `offset`; `Ok(false)` when this source
    /// cannot (a pipe), so resuming is not possible.
    fn seek_to(&mut self, offset: u64) -> std::io::Result<bool>;

    /// The file's identity now, for a source that is a file.
    fn identity(&self) -> Option<Identity> {
        None
    }
}

impl Source for File {
    fn seek_to(&mut self, offset: u64) -> std::io::Result<bool> {
        std::io::Seek::seek(self, std::io::SeekFrom::Start(offset)).map(|_| true)
    }

    fn identity(&self) -> Option<Identity> {
        rustix::fs::fstat(self).ok().map(|st| Identity::of(&st))
    }
}

/// Whether a file changed while it was read: its identity when the read
/// began (`before`) and when it ended (`after`) differ in size, mtime or
/// ctime, or the end no longer matches the size and mtime offered.
pub fn changed_while_read(offer: &Offer, before: &Identity, after: &Identity) -> bool {
    before.size != after.size
        || before.mtime != after.mtime
        || before.ctime != after.ctime
        || after.size != offer.size
        || after.mtime != (offer.mtime_secs, offer.mtime_nanos)
}

/// Bytes in memory: a session with no file behind it (tests, generated
/// data).
impl Source for std::io::Cursor<Vec<u8>> {
    fn seek_to(&mut self, offset: u64) -> std::io::Result<bool> {
        self.set_position(offset);
        Ok(true)
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

/// `xfer send FILE HOST:PORT`.
pub fn run(config: &SendConfig) -> anyhow::Result<()> {
    let reporter = Reporter::new(config.quiet, config.json);
    if let Some(limits) = config.pace.describe() {
        reporter.info(|| format!("each session: {limits}"));
    }
    let started = Instant::now();
    let sessions = std::sync::atomic::AtomicUsize::new(0);
    let door = match &config.target {
        Endpoint::Connect(target) => match &config.secret {
            Some(secret) => Ok(Door::Connect {
                target,
                secret: secret.clone(),
            }),
            // A person is about to type the code: first make sure the
            // receiver is there, so a wrong address or a receiver not yet
            // started is said at once, not after the code was typed.
            None => crate::prompt::terminal("the receiver's").and_then(|tty| {
                retrying(config.retries, &reporter, worth_retrying, || {
                    probe(config, target)
                })?;
                let secret = crate::prompt::ask_for_code(tty, "xfer recv")?;
                Ok(Door::Connect { target, secret })
            }),
        },
        Endpoint::Listen { bind, port } => listen(config, *bind, *port, &reporter, &sessions),
    };
    // Digests for --checksum, taken before connecting and kept across
    // retries: hashing is never charged to the receiver's deadlines.
    let mut checksums = Checksums::new(config.checksum);
    let result = door.and_then(|mut door| {
        // Standard input cannot be read twice.
        let retries = if config.stdin() { 0 } else { config.retries };
        retrying(retries, &reporter, worth_retrying, || {
            if config.stdin() {
                send_stdin(config, &mut door, &reporter)
            } else {
                send_paths(config, &mut door, &reporter, &mut checksums)
            }
        })
    });
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(totals) => totals.finish(&reporter, seconds),
        Err(e) => {
            let code = ExitCode::for_error(&e);
            // After a signal, what broke broke because of it: say so, not
            // the broken pipe it caused.
            let error = if code == ExitCode::Interrupted {
                "interrupted".to_string()
            } else {
                format!("{e:#}")
            };
            reporter.event(
                "summary",
                || json!({ "ok": false, "exit_code": code.code(), "error": error, "seconds": seconds }),
            );
            Err(e)
        }
    }
}

/// Connects to the target (within `--connect-timeout`), watched for
/// signals, with `deadline` on every read and write; the peer as shown.
fn connect(
    config: &SendConfig,
    target: &crate::net::PeerAddress,
    deadline: Duration,
) -> anyhow::Result<(std::net::TcpStream, signals::Watch, String)> {
    let peer = target.to_string();
    let stream = crate::net::connect(target, config.connect_timeout)?;
    let watch = signals::watch_socket(&stream);
    crate::net::prepare(&stream, deadline)
        .map_err(|e| Failure::network(format!("cannot set up the connection to {peer}"), &e))?;
    Ok((stream, watch, peer))
}

/// Checks that a receiver is listening at the target: connect, read its
/// preamble, close without a word (a receiver passes over such a probe: it
/// is no failed handshake and costs no guess).
fn probe(config: &SendConfig, target: &crate::net::PeerAddress) -> anyhow::Result<()> {
    let (mut stream, _watch, peer) = connect(config, target, config.connect_timeout)?;
    let mut preamble = [0u8; protocol::PREAMBLE_LEN];
    protocol::read_exact_or_closed(&mut stream, &mut preamble)
        .map_err(|e| link::describe(e, &peer).context("checking that the receiver is there"))?;
    Ok(())
}

/// What a session achieved, file by file.
#[derive(Default)]
pub struct Totals {
    sent: Vec<Sent>,
    directories: usize,
    failures: Vec<(Vec<u8>, anyhow::Error)>,
    /// Entries passed over on this side (devices, FIFOs, sockets).
    passed_over: usize,
    /// Entries that failed here before they could be offered (missing,
    /// unreadable, replaced), which END tells the receiver, and the first
    /// one's reason.
    unoffered: u32,
    first_unoffered: Option<String>,
    /// Sources removed after the receiver kept them (`--remove-source-files`).
    removed: usize,
}

impl Totals {
    fn record_sent(&mut self, sent: Sent, reporter: &Reporter) {
        if !sent.skipped {
            reporter.event("file-done", || {
                let mut fields = json!({ "bytes": sent.size, "sent": sent.bytes,
                    "offset": sent.resumed_at, "sha256": hex(&sent.sha256), "seconds": sent.seconds });
                if let Some(wire) = sent.compressed {
                    fields["compressed"] = json!(wire);
                }
                crate::names::with_name(&sent.name, fields)
            });
        }
        self.sent.push(sent);
    }

    /// The one file of a one-file session, or why it did not arrive.
    pub fn only_sent(self) -> anyhow::Result<Sent> {
        match (
            self.sent.into_iter().next(),
            self.failures.into_iter().next(),
        ) {
            (_, Some((_, e))) => Err(e),
            (Some(sent), None) => Ok(sent),
            (None, None) => Err(anyhow::anyhow!("the session sent nothing")),
        }
    }

    /// An entry that failed here and is never offered: the receiver hears
    /// of it in END.
    fn not_offered(&mut self, e: &anyhow::Error) {
        self.unoffered = self.unoffered.saturating_add(1);
        self.first_unoffered.get_or_insert_with(|| format!("{e:#}"));
    }

    fn record_failure(&mut self, name: &[u8], e: anyhow::Error, reporter: &Reporter) {
        let code = ExitCode::for_error(&e).code();
        reporter.event("file-failed", || {
            crate::names::with_name(
                name,
                json!({ "error": format!("{e:#}"), "exit_code": code }),
            )
        });
        self.failures.push((name.to_vec(), e));
    }

    /// Says how it went and turns it into the exit status: 0 when every
    /// entry arrived (or was already there), 8 when only some did, else
    /// the first failure's own code.
    fn finish(self, reporter: &Reporter, seconds: f64) -> anyhow::Result<()> {
        let bytes: u64 = self.sent.iter().map(|s| s.bytes).sum();
        let wire: u64 = self
            .sent
            .iter()
            .map(|s| s.compressed.unwrap_or(s.bytes))
            .sum();
        let skipped = self.sent.iter().filter(|s| s.skipped).count();
        let links = self.sent.iter().filter(|s| s.link).count();
        let failures: Vec<_> = self
            .failures
            .iter()
            .map(|(name, e)| crate::names::with_name(name, json!({ "error": format!("{e:#}"), "exit_code": ExitCode::for_error(e).code() })))
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
            "ok": outcome.is_ok(), "exit_code": code, "files": self.sent.len() - links,
            "links": links, "directories": self.directories, "skipped": skipped, "unchanged": skipped,
            "passed_over": self.passed_over, "removed": self.removed, "failed": failures.len(),
            "bytes": bytes, "wire_bytes": wire, "seconds": seconds, "failures": failures,
        });
        if let [one] = self.sent.as_slice() {
            crate::names::put_json_name(&mut summary, "name", &one.name);
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
            [one] if self.directories == 0 && failures.is_empty() && one.resumed_at > 0 => {
                reporter.info(|| format!(
                    "sent '{}' ({}; the receiver held the first {}, {} crossed the wire, {}), verified by the receiver: sha256 {}",
                    escape_for_terminal(&one.name),
                    crate::units::human_bytes(one.size),
                    crate::units::human_bytes(one.resumed_at),
                    crate::units::human_bytes(one.bytes),
                    rate(one.bytes, one.seconds),
                    hex(&one.sha256)
                ));
            }
            [one] if self.directories == 0 && failures.is_empty() => {
                reporter.info(|| format!(
                    "sent '{}' ({}, {}), verified by the receiver: sha256 {}",
                    escape_for_terminal(&one.name),
                    crate::units::human_bytes(one.size),
                    rate(one.bytes, one.seconds),
                    hex(&one.sha256)
                ));
            }
            [] if self.directories == 0 && !failures.is_empty() => {}
            _ => reporter.info(|| format!(
                "sent {} file(s){} and {} director{} ({}, {}), each verified by the receiver; {} unchanged, {} failed{}",
                self.sent.iter().filter(|s| !s.skipped && !s.link).count(),
                match self.sent.iter().filter(|s| !s.skipped && s.link).count() {
                    0 => String::new(),
                    made => format!(", {made} link(s)"),
                },
                self.directories,
                if self.directories == 1 { "y" } else { "ies" },
                crate::units::human_bytes(bytes),
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

/// How each attempt's connection comes about.
enum Door<'a> {
    /// Connect to the receiver at `target`.
    Connect {
        target: &'a crate::net::PeerAddress,
        secret: Secret,
    },
    /// Wait for the receiver to connect (`--listen`): the same front door
    /// as a receiving server's, so strangers cannot keep it out.
    Listen(Box<crate::gate::Gate<'a>>),
}

/// `send --listen`: listens, says what to type on the other machine, and
/// makes up a code unless one was given.
fn listen<'a>(
    config: &SendConfig,
    bind: Option<std::net::IpAddr>,
    port: u16,
    reporter: &'a Reporter,
    sessions: &'a std::sync::atomic::AtomicUsize,
) -> anyhow::Result<Door<'a>> {
    let listener = crate::net::listen(bind, port)?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let (secret, code) = match &config.secret {
        Some(secret) => (secret.clone(), None),
        None => {
            let code =
                crate::secure::generate_code().context("cannot make a code from random bytes")?;
            (Secret::Code(code.clone()), Some(code))
        }
    };
    reporter.info(|| format!("waiting for the receiver on {local}"));
    if let Some(code) = &code
        && !config.json
    {
        crate::gate::show_code(code, "the receiver");
    }
    reporter.info(|| {
        crate::gate::other_side(
            "xfer recv{how} --dir DIR --connect {addr}",
            &secret,
            bind,
            local.port(),
        )
    });
    reporter.event(
        "listening",
        || json!({ "address": local.to_string(), "port": local.port(), "code": code }),
    );
    let settings = crate::gate::Settings {
        limits: crate::admission::Limits {
            max_handshakes: 1024,
            max_per_source: 64,
            penalties: Some(crate::admission::Penalties::default()),
            guess_budget: crate::gate::guess_budget_for(&secret),
        },
        timeout: config.connect_timeout,
        max_sessions: 1,
        ends_on_failure: secret == Secret::Insecure,
        one_shot: true,
        role: Role::Sender,
    };
    crate::gate::raise_open_files();
    let gate = crate::gate::Gate::new(listener, secret, settings, reporter, sessions)
        .map_err(|e| Failure::network("cannot watch the listening socket", &e))?;
    Ok(Door::Listen(Box::new(gate)))
}

/// Opens the next attempt's session (connects, or waits for the receiver),
/// shakes hands and reports it; the stream is ready for offers.
/// `--connect-timeout` covers the connection and the whole handshake, as
/// OpenSSH's ConnectTimeout does: a peer that trickles bytes cannot hold a
/// sender before it has proved it knows the secret.
fn open_session(
    config: &SendConfig,
    door: &mut Door<'_>,
    reporter: &Reporter,
) -> anyhow::Result<(Box<dyn Link>, signals::Watch, String, bool)> {
    let (target, secret) = match door {
        Door::Connect { target, secret } => (*target, &*secret),
        Door::Listen(gate) => {
            let opened = match gate.next_opened() {
                crate::gate::Next::Session(opened) => *opened,
                crate::gate::Next::Stopped => {
                    return Err(Failure::new(ExitCode::Interrupted, "interrupted").into());
                }
                crate::gate::Next::Failed(e) => return Err(e),
            };
            let crate::gate::Opened {
                stream,
                peer,
                keys,
                peer_capabilities,
                unsent,
                ..
            } = opened;
            let watch = signals::watch_socket(&stream);
            crate::net::prepare(&stream, config.idle_timeout).map_err(|e| {
                Failure::network(format!("cannot set up the connection from {peer}"), &e)
            })?;
            reporter.event("connected", || json!({ "peer": peer }));
            let mut stream = link::Buffered::new(crate::pace::Paced::new(stream, config.pace));
            std::io::Write::write_all(&mut stream, &unsent)
                .map_err(|e| Failure::network(format!("cannot talk to {peer}"), &e))?;
            let decompresses = peer_capabilities & crate::protocol::CAP_ZSTD != 0;
            return Ok((
                crate::handshake::secured(stream, keys),
                watch,
                peer,
                decompresses,
            ));
        }
    };
    let until = Instant::now() + config.connect_timeout;
    let (stream, watch, peer) = connect(config, target, config.idle_timeout)?;
    reporter.event("connected", || json!({ "peer": peer }));
    // Small files and frames go out together, a few syscalls per file;
    // --bwlimit paces what crosses the wire, under the records.
    let mut stream = link::Buffered::new(crate::pace::Paced::new(stream, config.pace));
    let settled = {
        let mut bounded = link::WithDeadline::new(&mut stream, until);
        crate::handshake::exchange(&mut bounded, &peer, secret, Role::Sender)
    }
    .map_err(|e| handshake_deadline(e, &peer, config.connect_timeout))?;
    link::set_deadline(&mut stream, config.idle_timeout, &peer)?;
    let decompresses = settled.peer_capabilities & crate::protocol::CAP_ZSTD != 0;
    Ok((
        crate::handshake::secured(stream, settled.keys),
        watch,
        peer,
        decompresses,
    ))
}

/// A handshake that ran out of `--connect-timeout` says so.
fn handshake_deadline(e: anyhow::Error, peer: &str, limit: Duration) -> anyhow::Error {
    if ExitCode::for_error(&e) == ExitCode::Timeout {
        e.context(format!(
            "{peer} did not complete the handshake within --connect-timeout ({})",
            humantime(limit)
        ))
    } else {
        e
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Standard input as the one entry of a session: a stream.
struct StdinEntry {
    name: Vec<u8>,
    /// `--compress`, and the receiver takes it.
    compress: bool,
}

impl Entries for StdinEntry {
    fn count(&self) -> usize {
        1
    }

    fn open(&mut self, _index: usize) -> anyhow::Result<Opened> {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Opened {
            offer: Offer {
                flags: FLAG_STREAM | if self.compress { FLAG_COMPRESSED } else { 0 },
                size: 0,
                mode: 0o100644,
                mtime_secs: now.as_secs() as i64,
                mtime_nanos: now.subsec_nanos(),
                name: self.name.clone(),
                ..Offer::default()
            },
            source: Some((Box::new(std::io::stdin()), "standard input".into())),
            identity: None,
        })
    }

    fn name(&self, _index: usize) -> Vec<u8> {
        self.name.clone()
    }

    fn size_hint(&self, _index: usize) -> u64 {
        0
    }
}

/// `xfer send - HOST:PORT --name NAME`: standard input as one stream.
fn send_stdin(
    config: &SendConfig,
    door: &mut Door<'_>,
    reporter: &Reporter,
) -> anyhow::Result<Totals> {
    let name = config.name.clone().unwrap_or_default();
    let (mut stream, _watch, peer, receiver_decompresses) = open_session(config, door, reporter)?;
    reporter.info(|| {
        format!(
            "sending '{}' from standard input to {peer}",
            escape_for_terminal(&name)
        )
    });
    let progress = reporter.progress(&name, None);
    let mut totals = Totals::default();
    let options = Options {
        resume: false,
        idle_timeout: config.idle_timeout,
        report_each: false,
        remove_source_files: false,
    };
    drive(
        &mut stream,
        &peer,
        &mut StdinEntry {
            name: name.into_bytes(),
            compress: config.compress && receiver_decompresses,
        },
        &options,
        reporter,
        &progress,
        &mut totals,
    )?;
    Ok(totals)
}

/// `--checksum` digests, taken before connecting and kept across retries,
/// each valid while its file keeps the identity it was hashed at.
struct Checksums {
    enabled: bool,
    known: HashMap<(u64, u64), (Identity, Digest)>,
}

impl Checksums {
    fn new(enabled: bool) -> Self {
        Checksums {
            enabled,
            known: HashMap::new(),
        }
    }

    /// Hashes every file of `plan` not hashed yet. A file that cannot be
    /// opened here fails again, with its reason, when its turn comes.
    fn prepare(&mut self, plan: &Plan, reporter: &Reporter) {
        if !self.enabled {
            return;
        }
        let mut opener = Opener::default();
        let mut announced = false;
        for (index, entry) in plan.entries.iter().enumerate() {
            if entry.kind != Kind::File || self.current(&entry.id).is_some() {
                continue;
            }
            if !announced {
                reporter.info(|| "computing SHA-256 digests for --checksum before connecting");
                announced = true;
            }
            if let Ok((file, id)) = opener.open_file(plan, index) {
                let _ = self.digest(&file, &id, &plan.shown(index));
            }
            if signals::interrupted() {
                return;
            }
        }
    }

    fn current(&self, id: &Identity) -> Option<Digest> {
        match self.known.get(&(id.dev, id.ino)) {
            Some((then, digest)) if then == id => Some(*digest),
            _ => None,
        }
    }

    /// The digest of `file` as it is now (`id`): known, or hashed now (a
    /// file that changed since it was hashed).
    fn digest(&mut self, file: &File, id: &Identity, shown: &str) -> anyhow::Result<Digest> {
        if let Some(digest) = self.current(id) {
            return Ok(digest);
        }
        let digest = hash_file(file, shown)?;
        self.known.insert((id.dev, id.ino), (*id, digest));
        Ok(digest)
    }
}

/// The walked paths of the command line as a session's entries.
struct PathEntries<'a> {
    plan: &'a Plan,
    opener: Opener,
    /// A tree or several paths: offered as paths.
    as_paths: bool,
    checksums: &'a mut Checksums,
    /// Owner and group names.
    namer: crate::owners::Namer,
    /// `--xattrs`.
    xattrs: bool,
    /// `--compress`, and the receiver takes it.
    compress: bool,
}

impl Entries for PathEntries<'_> {
    fn remove(
        &mut self,
        index: usize,
        read: &Identity,
    ) -> std::io::Result<Result<(), &'static str>> {
        self.opener.remove_file(self.plan, index, read)
    }

    fn count(&self) -> usize {
        self.plan.entries.len()
    }

    fn open(&mut self, index: usize) -> anyhow::Result<Opened> {
        let entry = &self.plan.entries[index];
        let mut offer = Offer {
            flags: if self.as_paths { FLAG_PATH } else { 0 },
            mode: entry.id.mode,
            mtime_secs: entry.id.mtime.0,
            mtime_nanos: entry.id.mtime.1,
            name: entry.name.clone(),
            owner: Some(self.namer.owner(entry.id.uid, entry.id.gid)),
            ..Offer::default()
        };
        let shown = self.plan.shown(index);
        let xattrs_of =
            |fd: &dyn std::os::fd::AsFd| -> anyhow::Result<Vec<crate::protocol::Xattr>> {
                crate::xattrs::read(fd.as_fd()).map_err(|e| {
                    Failure::new(ExitCode::LocalFile, format!("'{shown}': {e}")).into()
                })
            };
        // A link travels as its offer alone: no data, the target in the
        // offer, acknowledged like a file once it is made.
        let link = |flag: u32, target: Vec<u8>, mut offer: Offer| Opened {
            offer: {
                offer.flags |= flag | FLAG_PATH;
                offer.link = Some(target);
                offer
            },
            source: Some((Box::new(std::io::Cursor::new(Vec::new())), shown.clone())),
            identity: None,
        };
        match entry.kind {
            Kind::Dir => {
                offer.flags |= FLAG_DIR;
                if self.xattrs {
                    let dir = self
                        .opener
                        .dir(self.plan, index)
                        .map_err(|e| Failure::local(format!("cannot open '{shown}'"), &e.into()))?;
                    offer.xattrs = Some(xattrs_of(dir)?);
                }
                return Ok(Opened {
                    offer,
                    source: None,
                    identity: None,
                });
            }
            Kind::Symlink => {
                let target = self.plan.read_link(&mut self.opener, index)?;
                return Ok(link(FLAG_SYMLINK, target, offer));
            }
            Kind::HardLink(first) => {
                let target = self.plan.entries[first].name.clone();
                return Ok(link(FLAG_HARDLINK, target, offer));
            }
            Kind::File => {}
        }
        let (file, id) = self.opener.open_file(self.plan, index)?;
        // Read-ahead hint for disks; not worth a system call for a small file.
        if id.size >= 1 << 20 {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        }
        if self.checksums.enabled {
            offer.sha256 = Some(self.checksums.digest(&file, &id, &shown)?);
        }
        if self.xattrs {
            offer.xattrs = Some(xattrs_of(&file)?);
        }
        if self.compress && id.size > 0 {
            offer.flags |= FLAG_COMPRESSED;
        }
        offer.size = id.size;
        offer.mode = id.mode;
        (offer.mtime_secs, offer.mtime_nanos) = id.mtime;
        Ok(Opened {
            offer,
            source: Some((Box::new(file), shown)),
            identity: Some(id),
        })
    }

    fn name(&self, index: usize) -> Vec<u8> {
        self.plan.entries[index].name.clone()
    }

    fn size_hint(&self, index: usize) -> u64 {
        self.plan.entries[index].id.size
    }
}

/// `xfer send PATH... HOST:PORT`: every file and directory in one session.
fn send_paths(
    config: &SendConfig,
    door: &mut Door<'_>,
    reporter: &Reporter,
    checksums: &mut Checksums,
) -> anyhow::Result<Totals> {
    let mut plan = Plan::of(&config.paths, config.name.as_deref(), config.safe_links);
    let mut totals = Totals {
        passed_over: plan.passed_over.len(),
        ..Totals::default()
    };
    for (name, reason) in &plan.passed_over {
        reporter.info(|| format!("passing over '{}': {reason}", escape_for_terminal(name)));
        reporter.event("file-skipped", || {
            crate::names::with_name(name, json!({ "reason": reason }))
        });
    }
    // One plain file goes as before; a tree or several paths as paths.
    let as_paths = plan.entries.len() > 1 || plan.entries.iter().any(|e| e.kind == Kind::Dir);
    let report_each = plan.entries.len() + plan.unreadable.len() > 1;
    for (name, e) in std::mem::take(&mut plan.unreadable) {
        if report_each {
            report_failure(reporter, &e);
        }
        totals.not_offered(&e);
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
    checksums.prepare(&plan, reporter);
    if signals::interrupted() {
        return Err(Failure::new(ExitCode::Interrupted, "interrupted").into());
    }

    let (mut stream, _watch, peer, receiver_decompresses) = open_session(config, door, reporter)?;
    let files = plan.entries.iter().filter(|e| e.kind == Kind::File).count();
    reporter.info(|| {
        if as_paths {
            format!(
                "sending {files} file(s) in {} entries ({}) to {peer}",
                plan.entries.len() + totals.failures.len(),
                crate::units::human_bytes(total_bytes)
            )
        } else {
            format!(
                "sending '{}' ({}) to {peer}",
                escape_for_terminal(&plan.entries[0].name),
                crate::units::human_bytes(total_bytes)
            )
        }
    });
    let label: &[u8] = if as_paths { b"" } else { &plan.entries[0].name };
    let progress = reporter.progress(label, Some(total_bytes));
    let options = Options {
        resume: config.resume,
        idle_timeout: config.idle_timeout,
        report_each,
        remove_source_files: config.remove_source_files,
    };
    let mut entries = PathEntries {
        plan: &plan,
        opener: Opener::default(),
        as_paths,
        checksums,
        namer: crate::owners::Namer::default(),
        xattrs: config.xattrs,
        compress: config.compress && receiver_decompresses,
    };
    drive(
        &mut stream,
        &peer,
        &mut entries,
        &options,
        reporter,
        &progress,
        &mut totals,
    )?;
    Ok(totals)
}

/// One entry's failure in a session of several, said as it happens.
fn report_failure(reporter: &Reporter, e: &anyhow::Error) {
    if !reporter.json || !reporter.quiet {
        crate::output::print_error(e);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(size: u64, mtime: i64, ctime: i64) -> Identity {
        Identity {
            dev: 1,
            ino: 2,
            size,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime: (mtime, 0),
            ctime: (ctime, 0),
        }
    }

    #[test]
    fn a_file_written_while_it_was_read_is_noticed() {
        let offer = Offer {
            flags: 0,
            size: 10,
            mode: 0o100644,
            mtime_secs: 100,
            mtime_nanos: 0,
            name: "log".into(),
            sha256: None,
            ..Default::default()
        };
        let still = identity(10, 100, 100);
        assert!(!changed_while_read(&offer, &still, &still));
        assert!(changed_while_read(&offer, &still, &identity(12, 101, 101)));
        // Same size and mtime, but written (ctime moves even when mtime is
        // set back, as `touch -r` would).
        assert!(changed_while_read(&offer, &still, &identity(10, 100, 105)));
        // Changed between the offer and the start of the read.
        let grown = identity(11, 100, 100);
        assert!(changed_while_read(&offer, &grown, &grown));
    }
}
