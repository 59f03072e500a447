//! Whole sessions played against the session machines from a string of
//! choices, for the fuzzer (`fuzz/fuzz_targets/session.rs`) and the
//! property tests. Each byte picks what the peer sends next or what the
//! I/O layer made of an offer or of a file's data, so every input is a
//! well-formed or malformed session, not raw bytes that rarely get past the
//! first OFFER. The properties checked (a panic when broken):
//!
//! - receiver: a session never ends as complete while an entry it
//!   accepted is not settled (kept, or failed and counted);
//! - sender: a verdict is only ever for a file whose data was sent, an
//!   unchanged answer only for a file, and a resume offset never past the
//!   end of what was offered.
//!
//! Which states and transitions were reached is counted in [`Coverage`].

use std::collections::BTreeSet;

use super::receiver::{Judged, Next, Receiver, Rules, Verdict};
use super::sender::{Answer, Offered, Sender};
use crate::protocol::{
    Accept, Ack, AckStatus, ErrorFrame, FLAG_COMPRESSED, FLAG_DIR, FLAG_HARDLINK, FLAG_PATH,
    FLAG_STREAM, FLAG_SYMLINK, Frame, Offer, Reason, Refuse, Trailer, offer_digest,
};

/// How often each transition was taken, by name (`from -> to`).
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    pub transitions: std::collections::BTreeMap<String, u64>,
}

impl Coverage {
    fn saw(&mut self, from: &str, to: &str) {
        *self
            .transitions
            .entry(format!("{from} -> {to}"))
            .or_default() += 1;
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &Coverage) {
        for (k, v) in &other.transitions {
            *self.transitions.entry(k.clone()).or_default() += v;
        }
    }
}

/// Reads choices from the input, then zeros.
struct Choices<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.byte()) | (u64::from(self.byte()) << 8)
    }

    fn left(&self) -> bool {
        self.at < self.bytes.len()
    }
}

fn offer(c: &mut Choices, name: u64) -> Offer {
    let kind = c.byte();
    let flags = match kind % 9 {
        0 | 1 => 0,
        2 => FLAG_PATH,
        3 => FLAG_DIR | FLAG_PATH,
        4 => FLAG_STREAM,
        5 => FLAG_SYMLINK | FLAG_PATH,
        6 => FLAG_HARDLINK | FLAG_PATH,
        7 => FLAG_COMPRESSED,
        _ => u32::from(c.byte()) | (u32::from(c.byte()) << 8),
    };
    let no_data = FLAG_DIR | FLAG_STREAM | FLAG_SYMLINK | FLAG_HARDLINK;
    let size = if flags & no_data != 0 && !kind.is_multiple_of(7) {
        0
    } else {
        c.u64()
    };
    Offer {
        flags,
        size,
        mode: 0o100644,
        mtime_secs: 0,
        mtime_nanos: 0,
        name: format!("f{name}").into_bytes(),
        link: (flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0).then(|| b"f0".to_vec()),
        ..Offer::default()
    }
}

fn next_name(next: &Next) -> &'static str {
    match next {
        Next::Read => "read",
        Next::Judge { .. } => "judge",
        Next::Refuse { .. } => "refuse",
        Next::Receive { .. } => "receive",
        Next::Violation { .. } => "violation",
        Next::PeerAborted(_) => "peer-aborted",
        Next::Over(e) if e.complete() => "over-complete",
        Next::Over(_) => "over-incomplete",
    }
}

/// Plays one receiver session from `input`; panics if the machine claims a
/// complete session with an accepted entry unsettled.
pub fn receiver_session(input: &[u8], coverage: &mut Coverage) {
    let mut c = Choices {
        bytes: input,
        at: 0,
    };
    let rules = Rules {
        max_entries: u64::from(c.byte() % 40) + 1,
        one_file: c.byte().is_multiple_of(4),
        compression: c.byte().is_multiple_of(2),
    };
    let mut r = Receiver::new(rules);
    let mut accepted = BTreeSet::new();
    let mut settled = BTreeSet::new();
    let mut offers = 0u64;
    let mut next = Next::Read;
    // Bounded: every step reads at least one choice, and past the input
    // the peer closes.
    for _ in 0..input.len() * 2 + 8 {
        let from = next_name(&next);
        next = match next {
            Next::Read if !c.left() => r.on_closed(),
            Next::Read => {
                let frame = match c.byte() % 10 {
                    0..=3 => {
                        offers += 1;
                        Frame::Offer(offer(&mut c, offers))
                    }
                    4 | 5 => {
                        let offset = match c.byte() % 3 {
                            0 => 0,
                            1 => r.unsettled().next().map_or(0, |a| a.held),
                            _ => c.u64(),
                        };
                        Frame::Start { offset }
                    }
                    6 => Frame::end(),
                    7 => {
                        let closed = r.on_closed();
                        coverage.saw(from, next_name(&closed));
                        check(&closed, &accepted, &settled);
                        return;
                    }
                    8 => Frame::Error(ErrorFrame {
                        reason: Reason::from_code(u16::from(c.byte())),
                        message: String::new(),
                    }),
                    _ => Frame::Accept(Accept {
                        offset: 0,
                        prefix_sha256: [0; 32],
                    }),
                };
                r.on_frame(frame)
            }
            Next::Judge { id, offer } => {
                let judged = match c.byte() % 4 {
                    0 | 1 => {
                        let held = if offer.flags & FLAG_STREAM == 0 {
                            c.u64().min(offer.size)
                        } else {
                            0
                        };
                        accepted.insert(id);
                        Judged::Accepted { held }
                    }
                    2 => Judged::Done,
                    _ => Judged::Refused,
                };
                r.judged(id, judged)
            }
            Next::Refuse { .. } => Next::Read,
            Next::Receive { file, start: _ } => {
                let good = Trailer {
                    size: file.size,
                    sha256: [1; 32],
                    offer_sha256: file.offer_digest,
                    changed: false,
                };
                match c.byte() % 6 {
                    // The link broke mid-file: the session ends.
                    0 => {
                        let ending = r.abandon();
                        assert!(!ending.unfinished.is_empty(), "the open file is unfinished");
                        coverage.saw(from, "abandoned");
                        return;
                    }
                    pick => {
                        let (size, digest, trailer) = match pick {
                            1 => (file.size, [1; 32], good),
                            2 => (file.size, [2; 32], good),
                            3 => (
                                file.size,
                                [1; 32],
                                Trailer {
                                    offer_sha256: offer_digest(&Offer {
                                        name: "changed".into(),
                                        ..offer(&mut c, 0)
                                    }),
                                    ..good
                                },
                            ),
                            4 => (
                                file.size,
                                [1; 32],
                                Trailer {
                                    size: file.size.wrapping_add(1),
                                    ..good
                                },
                            ),
                            _ => (file.size, [1; 32], good),
                        };
                        match r.trailer(size, &digest, &trailer) {
                            Ok(verdict) => {
                                coverage.saw("trailer", verdict_name(verdict));
                                settled.insert(file.id);
                                r.settled()
                            }
                            Err(next) => next,
                        }
                    }
                }
            }
            end @ (Next::Violation { .. } | Next::PeerAborted(_) | Next::Over(_)) => {
                coverage.saw(from, next_name(&end));
                check(&end, &accepted, &settled);
                return;
            }
        };
        coverage.saw(from, next_name(&next));
    }
    panic!("a session of {} choices did not end", input.len());
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Keep => "keep",
        Verdict::OfferChanged => "offer-changed",
        Verdict::DigestMismatch => "digest-mismatch",
    }
}

fn check(end: &Next, accepted: &BTreeSet<u64>, settled: &BTreeSet<u64>) {
    if let Next::Over(ending) = end {
        if ending.complete() {
            let open: Vec<_> = accepted.difference(settled).collect();
            assert!(
                open.is_empty(),
                "complete with accepted entries unsettled: {open:?}"
            );
        } else {
            assert!(
                !ending.unfinished.is_empty() || ending.offered == 0,
                "incomplete for no reason"
            );
        }
    }
}

/// Plays one sender session from `input`; panics if the machine passes on
/// an answer the protocol forbids.
pub fn sender_session(input: &[u8], coverage: &mut Coverage) {
    let mut c = Choices {
        bytes: input,
        at: 0,
    };
    let count = usize::from(c.byte() % 80);
    let mut s = Sender::new(count);
    let mut what = std::collections::HashMap::new();
    let mut sent = BTreeSet::new();
    while c.left() {
        while let Some(i) = s.next_to_offer() {
            if c.byte().is_multiple_of(16) {
                coverage.saw("offer", "failed-locally");
                continue;
            }
            let offered = match c.byte() % 3 {
                0 => Offered::Dir,
                1 => Offered::Stream,
                _ => Offered::File { size: c.u64() },
            };
            what.insert(i, offered);
            s.offered(i, offered);
        }
        if s.done() {
            coverage.saw("answers", "done");
            return;
        }
        let frame = match c.byte() % 7 {
            0 | 1 => Frame::Accept(Accept {
                offset: match c.byte() % 2 {
                    0 => 0,
                    _ => c.u64(),
                },
                prefix_sha256: [0; 32],
            }),
            2 => Frame::Refuse(Refuse {
                reason: Reason::Exists,
                message: String::new(),
            }),
            3 => Frame::Skip {
                message: String::new(),
            },
            4 | 5 => Frame::Ack(Ack {
                status: AckStatus::Ok,
                sha256: [0; 32],
                reason: Reason::Other(0),
                message: String::new(),
            }),
            _ => Frame::end(),
        };
        match s.on_frame(frame) {
            Err(_) => {
                coverage.saw("answers", "violation");
                return;
            }
            Ok(answer) => {
                let to = match &answer {
                    Answer::Send { index, offset, .. } => {
                        match what[index] {
                            Offered::Dir => panic!("asked to send a directory"),
                            Offered::Stream => assert_eq!(*offset, 0, "a stream resumed"),
                            Offered::File { size } => assert!(*offset <= size, "past the end"),
                        }
                        if !c.byte().is_multiple_of(8) {
                            s.data_sent(*index);
                            sent.insert(*index);
                        }
                        "send"
                    }
                    Answer::DirMade { index } => {
                        assert_eq!(what[index], Offered::Dir);
                        "dir-made"
                    }
                    Answer::Unchanged { index, .. } => {
                        assert!(
                            matches!(what[index], Offered::File { .. }),
                            "skipped a non-file"
                        );
                        "unchanged"
                    }
                    Answer::Refused { .. } => "refused",
                    Answer::Verdict { index, .. } => {
                        assert!(sent.remove(index), "a verdict for a file never sent");
                        "verdict"
                    }
                    Answer::PeerAborted(_) => "peer-aborted",
                };
                coverage.saw("answers", to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn receiver_sessions_never_end_complete_with_an_entry_unsettled(
            input in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            receiver_session(&input, &mut Coverage::default());
        }

        #[test]
        fn sender_sessions_never_pass_on_a_forbidden_answer(
            input in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            sender_session(&input, &mut Coverage::default());
        }
    }
}
