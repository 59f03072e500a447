//! The receiver's session rules, with no I/O: which frame may come when,
//! the window of accepted offers, what a START may say, what a TRAILER must
//! match, and what END or a closed connection mean for the session's
//! verdict.
//!
//! The I/O loop in `recv` feeds it what arrived ([`Receiver::on_frame`],
//! [`Receiver::on_closed`]) and what the destination made of an offer or of
//! the data, and does what the returned [`Next`] says. The one promise this
//! type keeps: it never ends a session as complete while an accepted entry
//! is not settled.

use std::collections::VecDeque;

use crate::protocol::{
    Digest, ErrorFrame, FLAG_COMPRESSED, FLAG_DIR, FLAG_HARDLINK, FLAG_STREAM, FLAG_SYMLINK, Frame,
    KNOWN_FLAGS, Offer, Reason, Trailer, offer_digest,
};

/// Accepted files a sender may have outstanding before it sends their data.
/// Each holds an open partial file, so this bounds a session's descriptors
/// (the reference sender keeps at most 32 unanswered).
pub const MAX_PENDING: usize = 64;

/// What a session may ask of the receiver.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Most entries one session may offer.
    pub max_entries: u64,
    /// `-o` or `--stdout`: exactly one file per session.
    pub one_file: bool,
    /// This side offered compressed data in its preamble.
    pub compression: bool,
}

/// An offer the receiver accepted: data must follow after a START.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The offer's place in the session, from 0.
    pub id: u64,
    pub name: Vec<u8>,
    pub size: u64,
    pub stream: bool,
    /// Bytes held from an earlier attempt, offered for resuming.
    pub held: u64,
    /// The SHA-256 of the OFFER payload, which the TRAILER must repeat.
    pub offer_digest: Digest,
}

/// What the destination made of an offer that [`Next::Judge`] handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// ACCEPT sent, holding `held` bytes from an earlier attempt.
    Accepted { held: u64 },
    /// Settled without data: a directory made, or the file already there.
    Done,
    /// REFUSE sent; the session goes on.
    Refused,
}

/// What the receiver decides about a file's data and its TRAILER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Size, offer and digest match: commit the file, then ACK.
    Keep,
    /// The data arrived, but not as the offer said it would: ACK a
    /// mismatch and discard.
    OfferChanged,
    /// The data's SHA-256 is not the sender's: ACK a mismatch and discard.
    DigestMismatch,
}

/// What the I/O loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read the next frame (or the peer's close).
    Read,
    /// Check the offer against the destination and answer it (ACCEPT,
    /// REFUSE or SKIP), then report with [`Receiver::judged`].
    Judge { id: u64, offer: Box<Offer> },
    /// Answer the offer with REFUSE; the session goes on.
    Refuse {
        id: u64,
        name: Vec<u8>,
        reason: Reason,
        message: String,
    },
    /// Receive `file`'s data from byte `start`, then the TRAILER, and
    /// report with [`Receiver::trailer`].
    Receive { file: Accepted, start: u64 },
    /// The peer broke the rules: send ERROR with `reason` and end the
    /// session as failed.
    Violation { reason: Reason, message: String },
    /// The peer ended the session with an ERROR of its own.
    PeerAborted(ErrorFrame),
    /// The session is over; [`Ending`] says whether it is complete.
    Over(Ending),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The peer said END (rather than just closing).
    pub said_end: bool,
    /// Offers seen, in all.
    pub offered: u64,
    /// Accepted entries whose data never arrived, or never finished.
    pub unfinished: Vec<Accepted>,
    /// Entries that failed on the sender and were never offered, as its
    /// END says: how many, and why the first did.
    pub sender_failed: Option<(u32, String)>,
}

impl Ending {
    /// Every accepted entry was settled, and the session was not empty
    /// without saying so.
    pub fn complete(&self) -> bool {
        self.unfinished.is_empty() && (self.said_end || self.offered > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a frame between entries.
    Between,
    /// An offer was handed out to be judged.
    Judging {
        id: u64,
    },
    /// A file's data and TRAILER are being received.
    Receiving,
    /// The TRAILER arrived; the file is being committed.
    Committing,
    Over,
}

/// One session's rules on the receiving side.
#[derive(Debug)]
pub struct Receiver {
    rules: Rules,
    phase: Phase,
    offered: u64,
    /// The offer being judged, kept until [`Receiver::judged`].
    judging: Option<Offer>,
    /// Accepted files awaiting their START, oldest first.
    pending: VecDeque<Accepted>,
    /// The file whose data is arriving or being committed.
    current: Option<Accepted>,
}

impl Receiver {
    pub fn new(rules: Rules) -> Self {
        Receiver {
            rules,
            phase: Phase::Between,
            offered: 0,
            judging: None,
            pending: VecDeque::new(),
            current: None,
        }
    }

    /// Accepted entries not yet settled, oldest first.
    pub fn unsettled(&self) -> impl Iterator<Item = &Accepted> {
        self.current.iter().chain(self.pending.iter())
    }

    /// A frame arrived between entries.
    pub fn on_frame(&mut self, frame: Frame) -> Next {
        if self.phase != Phase::Between {
            return self.violation(
                Reason::Protocol,
                format!("a {} frame arrived out of turn", frame.name()),
            );
        }
        match frame {
            Frame::Offer(offer) => self.on_offer(offer),
            Frame::Start { offset } => self.on_start(offset),
            Frame::End { failed, message } => {
                let mut next = self.end(true);
                if let Next::Over(ending) = &mut next {
                    ending.sender_failed = (failed > 0).then_some((failed, message));
                }
                if let Next::Over(ending) = &next
                    && !ending.unfinished.is_empty()
                {
                    return Next::Violation {
                        reason: Reason::Protocol,
                        message: format!(
                            "END with {} accepted file(s) never sent, the first '{}'",
                            ending.unfinished.len(),
                            crate::names::shown(&ending.unfinished[0].name)
                        ),
                    };
                }
                next
            }
            Frame::Error(e) => {
                self.phase = Phase::Over;
                Next::PeerAborted(e)
            }
            other => self.violation(
                Reason::Protocol,
                format!("expected OFFER, START or END frame, got {}", other.name()),
            ),
        }
    }

    /// The peer closed the connection cleanly between frames.
    pub fn on_closed(&mut self) -> Next {
        self.end(false)
    }

    fn end(&mut self, said_end: bool) -> Next {
        self.phase = Phase::Over;
        Next::Over(Ending {
            said_end,
            offered: self.offered,
            unfinished: self.unsettled().cloned().collect(),
            sender_failed: None,
        })
    }

    fn violation(&mut self, reason: Reason, message: String) -> Next {
        self.phase = Phase::Over;
        Next::Violation { reason, message }
    }

    fn on_offer(&mut self, offer: Offer) -> Next {
        self.offered += 1;
        let id = self.offered - 1;
        if self.offered > self.rules.max_entries {
            let message = format!(
                "more than {} entries in one session (the receiver's --max-entries)",
                self.rules.max_entries
            );
            return self.violation(Reason::TooLarge, message);
        }
        if self.pending.len() >= MAX_PENDING {
            return self.violation(
                Reason::Protocol,
                format!("more than {MAX_PENDING} offers awaiting data"),
            );
        }
        let streamed = offer.flags & FLAG_STREAM != 0;
        let is_dir = offer.flags & FLAG_DIR != 0;
        let is_link = offer.flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0;
        let compressed = offer.flags & FLAG_COMPRESSED != 0;
        let kinds = [
            streamed,
            is_dir,
            offer.flags & FLAG_SYMLINK != 0,
            offer.flags & FLAG_HARDLINK != 0,
        ];
        if offer.flags & !KNOWN_FLAGS != 0
            || kinds.iter().filter(|k| **k).count() > 1
            || (streamed && offer.size != 0)
            || ((is_dir || is_link) && (offer.size != 0 || compressed))
            || (compressed && !self.rules.compression)
        {
            return Next::Refuse {
                id,
                name: offer.name.clone(),
                reason: Reason::Unsupported,
                message: format!(
                    "offer of '{}' uses feature flags 0x{:x} (size {}) this receiver does not support",
                    crate::names::shown(&offer.name),
                    offer.flags,
                    offer.size
                ),
            };
        }
        if self.rules.one_file && is_link {
            // `-o PATH` or `--stdout` asked for a file: a link there would
            // make whoever reads "the file" read what it points at.
            return Next::Refuse {
                id,
                name: offer.name.clone(),
                reason: Reason::Unsupported,
                message: "this receiver takes exactly one file (it runs with -o or --stdout), and this offer is a link; send a file, or use a receiver with --dir".into(),
            };
        }
        if self.rules.one_file && id > 0 {
            return Next::Refuse {
                id,
                name: offer.name.clone(),
                reason: Reason::Unsupported,
                message: "this receiver takes exactly one file (it runs with -o or --stdout); send one file, or use a receiver with --dir".into(),
            };
        }
        self.phase = Phase::Judging { id };
        self.judging = Some(offer.clone());
        Next::Judge {
            id,
            offer: Box::new(offer),
        }
    }

    /// What the destination made of offer `id`.
    pub fn judged(&mut self, id: u64, judged: Judged) -> Next {
        let offer = match (self.phase, self.judging.take()) {
            (Phase::Judging { id: judging }, Some(offer)) if judging == id => offer,
            _ => panic!("judged offer {id}, which was not handed out to be judged"),
        };
        self.phase = Phase::Between;
        if let Judged::Accepted { held } = judged {
            self.pending.push_back(Accepted {
                id,
                size: offer.size,
                stream: offer.flags & FLAG_STREAM != 0,
                held,
                offer_digest: offer_digest(&offer),
                name: offer.name,
            });
        }
        Next::Read
    }

    fn on_start(&mut self, offset: u64) -> Next {
        let Some(file) = self.pending.pop_front() else {
            return self.violation(Reason::Protocol, "START without an accepted offer".into());
        };
        let fits = offset == 0 || (offset == file.held && !file.stream);
        // Taken out of the window either way: it is the one now failing.
        self.current = Some(file.clone());
        if !fits {
            return self.violation(
                Reason::Protocol,
                format!(
                    "START at {offset} for '{}', which holds {} bytes (START must be 0 or the offset held)",
                    crate::names::shown(&file.name),
                    file.held
                ),
            );
        }
        self.phase = Phase::Receiving;
        Next::Receive {
            file,
            start: offset,
        }
    }

    /// The current file's data ended (`size` bytes with SHA-256 `digest` in
    /// all, counting a resumed prefix) and its TRAILER arrived.
    pub fn trailer(
        &mut self,
        size: u64,
        digest: &Digest,
        trailer: &Trailer,
    ) -> Result<Verdict, Next> {
        let file = match (self.phase, &self.current) {
            (Phase::Receiving, Some(file)) => file,
            _ => panic!("a trailer while no file is being received"),
        };
        if trailer.size != size || (!file.stream && size != file.size) {
            let message = format!(
                "trailer says {} bytes but {size} arrived for '{}'",
                trailer.size,
                crate::names::shown(&file.name)
            );
            return Err(self.violation(Reason::Protocol, message));
        }
        self.phase = Phase::Committing;
        Ok(if trailer.offer_sha256 != file.offer_digest {
            Verdict::OfferChanged
        } else if trailer.sha256 != *digest {
            Verdict::DigestMismatch
        } else {
            Verdict::Keep
        })
    }

    /// The session is over (a violation, END, a close): nothing more may be
    /// settled or read.
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// The current file's data failed in a way that leaves the session in
    /// step (a write to the disk or stdout failed after the data arrived is
    /// not one of them: those end the session). Used after a verdict too:
    /// the file is settled, kept or not.
    pub fn settled(&mut self) -> Next {
        match self.phase {
            Phase::Committing | Phase::Receiving => {}
            _ => panic!("settled while no file is being received"),
        }
        self.current = None;
        self.phase = Phase::Between;
        Next::Read
    }

    /// The session ended while a file was open (a broken link, a violation
    /// found by the I/O loop): what was accepted and not settled.
    pub fn abandon(&mut self) -> Ending {
        match self.end(false) {
            Next::Over(ending) => ending,
            _ => unreachable!("end always gives Over"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str, size: u64) -> Offer {
        Offer {
            flags: 0,
            size,
            mode: 0o100644,
            mtime_secs: 0,
            mtime_nanos: 0,
            name: name.into(),
            ..Default::default()
        }
    }

    fn rules() -> Rules {
        Rules {
            max_entries: 1000,
            one_file: false,
            compression: true,
        }
    }

    fn accept(r: &mut Receiver, name: &str, size: u64, held: u64) -> u64 {
        match r.on_frame(Frame::Offer(offer(name, size))) {
            Next::Judge { id, .. } => {
                assert_eq!(r.judged(id, Judged::Accepted { held }), Next::Read);
                id
            }
            other => panic!("{other:?}"),
        }
    }

    fn trailer_for(name: &str, size: u64, digest: Digest) -> Trailer {
        Trailer {
            size,
            sha256: digest,
            offer_sha256: offer_digest(&offer(name, size)),
            changed: false,
        }
    }

    /// Issue 11, bug 1: OFFER, ACCEPT, then a close (or END) was a success
    /// with no file.
    #[test]
    fn an_accepted_file_never_sent_is_never_a_success() {
        let mut r = Receiver::new(rules());
        accept(&mut r, "exact.bin", 10, 0);
        match r.on_closed() {
            Next::Over(ending) => {
                assert!(!ending.complete());
                assert_eq!(ending.unfinished[0].name, b"exact.bin");
            }
            other => panic!("{other:?}"),
        }
        let mut r = Receiver::new(rules());
        accept(&mut r, "exact.bin", 10, 0);
        assert!(matches!(r.on_frame(Frame::end()), Next::Violation { .. }));
    }

    #[test]
    fn a_whole_session_with_every_file_kept_is_complete() {
        let mut r = Receiver::new(rules());
        accept(&mut r, "a", 3, 0);
        accept(&mut r, "b", 4, 2);
        let Next::Receive { file, start } = r.on_frame(Frame::Start { offset: 0 }) else {
            panic!()
        };
        assert_eq!((file.name.as_slice(), start), (&b"a"[..], 0));
        assert_eq!(
            r.trailer(3, &[1; 32], &trailer_for("a", 3, [1; 32])),
            Ok(Verdict::Keep)
        );
        assert_eq!(r.settled(), Next::Read);
        let Next::Receive { start, .. } = r.on_frame(Frame::Start { offset: 2 }) else {
            panic!()
        };
        assert_eq!(start, 2);
        assert_eq!(
            r.trailer(4, &[2; 32], &trailer_for("b", 4, [3; 32])),
            Ok(Verdict::DigestMismatch)
        );
        r.settled();
        let Next::Over(ending) = r.on_frame(Frame::end()) else {
            panic!()
        };
        assert!(ending.complete());
    }

    #[test]
    fn start_must_be_zero_or_the_offset_held_and_follow_an_accept() {
        let mut r = Receiver::new(rules());
        assert!(matches!(
            r.on_frame(Frame::Start { offset: 0 }),
            Next::Violation { .. }
        ));
        let mut r = Receiver::new(rules());
        accept(&mut r, "a", 10, 4);
        assert!(matches!(
            r.on_frame(Frame::Start { offset: 5 }),
            Next::Violation { .. }
        ));
        // The file that broke the rules is reported as unfinished.
        assert_eq!(r.abandon().unfinished.len(), 1);
    }

    #[test]
    fn a_trailer_that_disagrees_with_the_data_or_the_offer_is_caught() {
        let mut r = Receiver::new(rules());
        accept(&mut r, "a", 3, 0);
        r.on_frame(Frame::Start { offset: 0 });
        assert!(
            r.trailer(2, &[1; 32], &trailer_for("a", 2, [1; 32]))
                .is_err()
        );
        let mut r = Receiver::new(rules());
        accept(&mut r, "a", 3, 0);
        r.on_frame(Frame::Start { offset: 0 });
        let mut t = trailer_for("a", 3, [1; 32]);
        t.offer_sha256[0] ^= 1;
        assert_eq!(r.trailer(3, &[1; 32], &t), Ok(Verdict::OfferChanged));
    }

    #[test]
    fn one_file_receivers_refuse_a_second_offer_and_limits_hold() {
        let mut r = Receiver::new(Rules {
            max_entries: 2,
            one_file: true,
            compression: true,
        });
        accept(&mut r, "a", 1, 0);
        assert!(matches!(
            r.on_frame(Frame::Offer(offer("b", 1))),
            Next::Refuse { .. }
        ));
        assert!(matches!(
            r.on_frame(Frame::Offer(offer("c", 1))),
            Next::Violation {
                reason: Reason::TooLarge,
                ..
            }
        ));
        let mut r = Receiver::new(rules());
        for i in 0..MAX_PENDING {
            accept(&mut r, &format!("f{i}"), 1, 0);
        }
        assert!(matches!(
            r.on_frame(Frame::Offer(offer("x", 1))),
            Next::Violation { .. }
        ));
    }

    #[test]
    fn a_stream_is_never_resumed_and_frames_out_of_turn_end_the_session() {
        let mut r = Receiver::new(rules());
        let mut s = offer("s", 0);
        s.flags = FLAG_STREAM;
        let Next::Judge { id, .. } = r.on_frame(Frame::Offer(s)) else {
            panic!()
        };
        r.judged(id, Judged::Accepted { held: 0 });
        assert!(matches!(
            r.on_frame(Frame::Start { offset: 7 }),
            Next::Violation { .. }
        ));
        let mut r = Receiver::new(rules());
        assert!(matches!(
            r.on_frame(Frame::Skip {
                message: String::new()
            }),
            Next::Violation { .. }
        ));
    }
}
