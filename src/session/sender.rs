//! The sender's session rules, with no I/O: which entry to offer next (a
//! window of offers ahead of the data, so a tree of small files pays no
//! round trip per file), how to read each answer from the receiver, which
//! answers the protocol forbids, and when the session is done.
//!
//! The I/O loop in `send` asks [`Sender::next_to_offer`], sends the OFFER
//! and reports it with [`Sender::offered`], feeds every frame that arrives
//! to [`Sender::on_frame`], and reports each file's data as sent with
//! [`Sender::data_sent`]. The one promise this type keeps: an answer that
//! would make the sender claim what did not happen (a SKIP for a stream, a
//! resume offset for a directory or past the end of a file, an ACK for no
//! file) is a violation, never a success.

use std::collections::VecDeque;

use crate::protocol::{Ack, Digest, ErrorFrame, Frame, Refuse};

/// Entries a sender keeps offered but not yet answered: enough to hide the
/// round trips behind data, few enough to bound the files both sides hold
/// open. (64 was measured too: no faster on 10,000 small files.)
pub const WINDOW: usize = 32;

/// Files sent and awaiting their ACK past which no more are offered (those
/// already offered are still sent): two of the reference receiver's
/// batches of 256, so new offers and data go out while one batch is being
/// made durable and the next fills (with 256, a receiver committing one
/// batch behind the session would wait for the sender, who waited for it).
pub const MAX_UNACKED: usize = 16 * WINDOW;

/// What was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    File { size: u64 },
    Stream,
    Dir,
}

/// The receiver's answer, for the entry it belongs to (its index in the
/// session's list of entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send the file's data; with `offset > 0` the receiver holds that much
    /// and its SHA-256 is `prefix`: resume only if our file starts so.
    Send {
        index: usize,
        offset: u64,
        prefix: Digest,
    },
    /// The directory exists now.
    DirMade {
        index: usize,
    },
    /// The receiver already has this very file.
    Unchanged {
        index: usize,
        message: String,
    },
    Refused {
        index: usize,
        refuse: Refuse,
    },
    /// The verdict on a file whose data was sent.
    Verdict {
        index: usize,
        ack: Ack,
    },
    /// The receiver ended the session with an ERROR.
    PeerAborted(ErrorFrame),
}

/// An answer the protocol forbids: the session ends, as a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// One session's rules on the sending side, over entries `0..count`.
#[derive(Debug)]
pub struct Sender {
    count: usize,
    next: usize,
    /// Offered and not yet answered, oldest first.
    offered: VecDeque<(usize, Offered)>,
    /// Data sent, verdict not yet received, oldest first.
    unacked: VecDeque<usize>,
    /// Offering: from when half the window is free until it is full.
    refilling: bool,
}

impl Sender {
    pub fn new(count: usize) -> Self {
        Sender {
            count,
            next: 0,
            offered: VecDeque::new(),
            unacked: VecDeque::new(),
            refilling: true,
        }
    }

    /// The next entry to offer while the window has room; the caller
    /// offers it (then [`Sender::offered`]) or finds it failed locally.
    ///
    /// Offers go out in groups: once half the window has been answered it
    /// is filled again. A receiver then finds several offers together
    /// ahead of the data it is still to receive, and can send all their
    /// answers at once before it turns to that data, so the sender works
    /// on the next files while the receiver writes these (one offer at a
    /// time would cost an answer flushed per file, or answers held back
    /// until the receiver ran dry).
    pub fn next_to_offer(&mut self) -> Option<usize> {
        if self.offered.len() >= WINDOW {
            self.refilling = false;
        } else if self.offered.len() <= WINDOW / 2 {
            self.refilling = true;
        }
        if self.next < self.count && self.refilling && self.unacked.len() < MAX_UNACKED {
            self.next += 1;
            Some(self.next - 1)
        } else {
            None
        }
    }

    /// The OFFER of entry `index` went out.
    pub fn offered(&mut self, index: usize, what: Offered) {
        self.offered.push_back((index, what));
    }

    /// Entry `index`'s data and TRAILER went out; its verdict follows.
    pub fn data_sent(&mut self, index: usize) {
        self.unacked.push_back(index);
    }

    /// Every entry was offered and every answer and verdict arrived.
    pub fn done(&self) -> bool {
        self.next == self.count && self.offered.is_empty() && self.unacked.is_empty()
    }

    /// The next frame to arrive may be a verdict on sent data (so the wait
    /// should allow for the receiver's fsync).
    pub fn awaiting_verdict(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// Reads one frame from the receiver.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Answer, Violation> {
        match frame {
            Frame::Ack(ack) => match self.unacked.pop_front() {
                Some(index) => Ok(Answer::Verdict { index, ack }),
                None => Err(Violation("an ACK arrived with no file awaiting one".into())),
            },
            Frame::Error(e) => Ok(Answer::PeerAborted(e)),
            Frame::Accept(_) | Frame::Refuse(_) | Frame::Skip { .. } => {
                let Some((index, what)) = self.offered.pop_front() else {
                    return Err(Violation(format!(
                        "{} arrived with no offer awaiting an answer",
                        frame.name()
                    )));
                };
                answer(index, what, frame)
            }
            other => Err(Violation(format!(
                "expected ACCEPT, REFUSE, SKIP or ACK frame, got {}",
                other.name()
            ))),
        }
    }
}

fn answer(index: usize, what: Offered, frame: Frame) -> Result<Answer, Violation> {
    match (what, frame) {
        (_, Frame::Refuse(refuse)) => Ok(Answer::Refused { index, refuse }),
        (Offered::Dir, Frame::Accept(a)) if a.offset == 0 => Ok(Answer::DirMade { index }),
        (Offered::Dir, Frame::Accept(a)) => Err(Violation(format!(
            "the receiver answered a directory with a resume offset ({})",
            a.offset
        ))),
        (Offered::Stream, Frame::Accept(a)) if a.offset > 0 => Err(Violation(format!(
            "the receiver offered to resume a stream at byte {}; streams are never resumed",
            a.offset
        ))),
        (Offered::File { size }, Frame::Accept(a)) if a.offset > size => Err(Violation(format!(
            "the receiver offered to resume at byte {} of {size}",
            a.offset
        ))),
        (_, Frame::Accept(a)) => Ok(Answer::Send {
            index,
            offset: a.offset,
            prefix: a.prefix_sha256,
        }),
        (Offered::File { .. }, Frame::Skip { message }) => Ok(Answer::Unchanged { index, message }),
        (Offered::Stream, Frame::Skip { .. }) => Err(Violation(
            "the receiver answered SKIP to a stream, which is never skipped; nothing was sent"
                .into(),
        )),
        (Offered::Dir, Frame::Skip { .. }) => Err(Violation(
            "the receiver answered SKIP to a directory, which is never skipped".into(),
        )),
        (_, other) => unreachable!("only answers reach here, not {}", other.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Accept, AckStatus, Reason};

    fn accept(offset: u64) -> Frame {
        Frame::Accept(Accept {
            offset,
            prefix_sha256: [0; 32],
        })
    }

    fn ack() -> Frame {
        Frame::Ack(Ack {
            status: AckStatus::Ok,
            sha256: [0; 32],
            reason: Reason::Other(0),
            message: String::new(),
        })
    }

    #[test]
    fn the_window_bounds_offers_and_answers_go_to_the_oldest() {
        let mut s = Sender::new(100);
        let mut offered = 0;
        while let Some(i) = s.next_to_offer() {
            s.offered(i, Offered::File { size: 1 });
            offered += 1;
        }
        assert_eq!(offered, WINDOW);
        assert!(matches!(
            s.on_frame(accept(0)),
            Ok(Answer::Send { index: 0, .. })
        ));
        s.data_sent(0);
        assert!(s.awaiting_verdict());
        assert!(matches!(
            s.on_frame(accept(0)),
            Ok(Answer::Send { index: 1, .. })
        ));
        assert!(matches!(
            s.on_frame(ack()),
            Ok(Answer::Verdict { index: 0, .. })
        ));
        // Two answered of 32: no new offer until half the window is free.
        assert_eq!(s.next_to_offer(), None);
        for i in 2..WINDOW / 2 {
            assert!(matches!(
                s.on_frame(accept(0)),
                Ok(Answer::Send { index, .. }) if index == i
            ));
            s.data_sent(i);
        }
        // Then the window fills again, in one group.
        let group: Vec<usize> = std::iter::from_fn(|| {
            let i = s.next_to_offer()?;
            s.offered(i, Offered::File { size: 1 });
            Some(i)
        })
        .collect();
        assert_eq!(group, (WINDOW..WINDOW + WINDOW / 2).collect::<Vec<_>>());
        assert!(!s.done());
    }

    /// Issue 11, bug 6: a SKIP for a stream made the sender exit 0 without
    /// reading its input.
    #[test]
    fn a_skip_for_a_stream_or_a_directory_is_a_violation() {
        let mut s = Sender::new(1);
        let i = s.next_to_offer().unwrap();
        s.offered(i, Offered::Stream);
        assert!(
            s.on_frame(Frame::Skip {
                message: "x".into()
            })
            .is_err()
        );
        let mut s = Sender::new(1);
        let i = s.next_to_offer().unwrap();
        s.offered(i, Offered::Dir);
        assert!(
            s.on_frame(Frame::Skip {
                message: "x".into()
            })
            .is_err()
        );
    }

    /// Issue 11, bug 8: a DIR answered with a resume offset was reported as
    /// "expected ACCEPT or REFUSE frame, got ACCEPT".
    #[test]
    fn resume_offsets_are_checked_against_what_was_offered() {
        let mut s = Sender::new(3);
        for what in [Offered::Dir, Offered::Stream, Offered::File { size: 5 }] {
            let i = s.next_to_offer().unwrap();
            s.offered(i, what);
        }
        let dir = s.on_frame(accept(3)).unwrap_err();
        assert!(dir.0.contains("directory with a resume offset"), "{dir}");
        assert!(s.on_frame(accept(1)).is_err());
        assert!(s.on_frame(accept(6)).is_err());
    }

    #[test]
    fn answers_and_acks_with_nothing_outstanding_are_violations() {
        let mut s = Sender::new(1);
        assert!(s.on_frame(ack()).is_err());
        assert!(s.on_frame(accept(0)).is_err());
        assert!(s.on_frame(Frame::end()).is_err());
        let i = s.next_to_offer().unwrap();
        s.offered(i, Offered::File { size: 5 });
        assert!(matches!(
            s.on_frame(accept(5)),
            Ok(Answer::Send { offset: 5, .. })
        ));
        s.data_sent(i);
        assert!(matches!(s.on_frame(ack()), Ok(Answer::Verdict { .. })));
        assert!(s.done());
    }
}
