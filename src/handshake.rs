//! The opening of every connection: both preambles, then (unless both ends
//! said `--insecure`) SPAKE2 and key confirmation, and the link the session
//! then runs over. It sits above both the link and the secure transport, so
//! neither needs the other's insides.
//!
//! [`Opening`] is the exchange as a state machine with no I/O: it says how
//! many bytes it needs next and what to send, so a blocking loop
//! ([`exchange`]) and a non-blocking one can both drive it, and it never
//! reads past the handshake (the first encrypted record follows at once).

use crate::exit_codes::{ExitCode, Failure};
use crate::link::{Link, describe};
use crate::protocol::{
    self, ErrorFrame, Frame, PREAMBLE_LEN, Preamble, ProtocolError, Reason, Transport,
};
use crate::secure::{Agreed, Keys, Pake, Role, Secret};

/// A connection that closed before sending a single byte: a probe (a
/// sender checking that the receiver is there), not a failed handshake. It
/// is carried as the context of the error, so callers can pass over it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("closed before saying anything (a check that this end is there)")]
pub struct Probe;

/// Whether `e` is a [`Probe`].
pub fn is_probe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Probe>().is_some()
}

/// Bytes of a frame header: type and length.
const FRAME_HEADER: usize = 5;

/// The largest frame the opening accepts: its frames are PAKE (at most 66
/// bytes), CONFIRM (32) and ERROR (at most 1,030), so a connection still in
/// its handshake never makes the receiver hold more than this.
pub const MAX_OPENING_FRAME: u32 = 2048;

/// Where the exchange stands.
enum State {
    /// Waiting for the peer's preamble.
    Preamble,
    /// Waiting for the peer's PAKE frame.
    Pake {
        pake: Box<Pake>,
        preambles: [Vec<u8>; 2],
    },
    /// Waiting for the peer's CONFIRM.
    Confirm {
        agreed: Box<Agreed>,
    },
    Done,
}

/// Starts SPAKE2 with injected randomness.
type PakeStart = Box<dyn FnOnce(Role, &Secret) -> Pake + Send>;

/// One side's opening exchange, fed the peer's bytes as they come.
pub struct Opening {
    role: Role,
    secret: Secret,
    peer: String,
    ours: Preamble,
    state: State,
    /// Set once the keys (or plaintext) are agreed.
    result: Option<Option<Keys>>,
    /// What the peer's preamble says it can decode (`CAP_*`).
    peer_capabilities: u8,
    /// Bytes of the unit being read (a preamble, or a frame).
    unit: Vec<u8>,
    /// Bytes waiting to be sent to the peer.
    out: Vec<u8>,
    /// The randomness for SPAKE2, when a test injects it.
    rng: Option<PakeStart>,
    /// Why the exchange failed, once it has.
    failed: Option<Failed>,
}

/// Why an opening failed, as a server counts it against the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// A CONFIRM that did not match: a wrong code or key (a guess).
    WrongCode,
    /// The peer sent ERROR: it stopped for a reason of its own.
    PeerStopped,
    /// An xfer peer of another version, or set up for another transport
    /// (plaintext against a code, a code against a key file): a mistake,
    /// not an attack.
    Mismatch,
    /// Not xfer, a malformed or unexpected frame, or a bad key-exchange
    /// message.
    Garbage,
}

impl Opening {
    /// Starts the exchange; our preamble is the first thing to send.
    pub fn new(role: Role, secret: &Secret, peer: &str) -> Opening {
        let ours = Preamble::ours(secret.transport());
        Opening {
            role,
            secret: secret.clone(),
            peer: peer.to_string(),
            ours,
            state: State::Preamble,
            result: None,
            peer_capabilities: 0,
            unit: Vec::new(),
            out: ours.encode().to_vec(),
            rng: None,
            failed: None,
        }
    }

    /// The same, with SPAKE2's randomness drawn from `rng` (tests only: a
    /// seeded generator makes a whole encrypted session repeatable).
    pub fn with_rng(
        role: Role,
        secret: &Secret,
        peer: &str,
        rng: impl rand_core::CryptoRng + rand_core::RngCore + Send + 'static,
    ) -> Opening {
        let mut opening = Opening::new(role, secret, peer);
        opening.rng = Some(Box::new(move |role, secret: &Secret| {
            Pake::start_with_rng(role, secret, rng)
        }));
        opening
    }

    /// Bytes to send to the peer now (taken: the caller sends them).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The exchange is over: `Some(keys)` for an encrypted link, `Some(None)`
    /// for plaintext.
    pub fn finished(&mut self) -> Option<Option<Keys>> {
        self.result.take()
    }

    /// What the peer's preamble said it can decode (`CAP_*` bits; 0
    /// before it arrived).
    pub fn peer_capabilities(&self) -> u8 {
        self.peer_capabilities
    }

    /// Nothing has come from the peer yet.
    pub fn nothing_heard(&self) -> bool {
        matches!(self.state, State::Preamble) && self.unit.is_empty()
    }

    /// How many more bytes the next step needs (never more than the unit
    /// being read has left, so a caller that reads exactly this never
    /// consumes what follows the handshake).
    pub fn needed(&self) -> usize {
        match self.state {
            State::Done => 0,
            State::Preamble => PREAMBLE_LEN - self.unit.len(),
            _ if self.unit.len() < FRAME_HEADER => FRAME_HEADER - self.unit.len(),
            _ => FRAME_HEADER + self.payload_len() - self.unit.len(),
        }
    }

    fn payload_len(&self) -> usize {
        u32::from_be_bytes(self.unit[1..5].try_into().expect("a frame header")) as usize
    }

    /// What we wait for, for messages.
    pub fn waiting_for(&self) -> &'static str {
        match self.state {
            State::Preamble => "the peer's preamble",
            State::Pake { .. } => "the key exchange",
            State::Confirm { .. } if self.role == Role::Sender => "the receiver's confirmation",
            State::Confirm { .. } => "the sender's confirmation",
            State::Done => "nothing",
        }
    }

    /// Why the exchange failed (after [`Opening::feed`] returned an error,
    /// or the peer went away).
    pub fn failed_as(&self) -> Failed {
        self.failed.unwrap_or(Failed::Garbage)
    }

    /// A sender that sent its CONFIRM and then did not see the receiver's:
    /// the peer has tested one guess of the code against it (SPAKE2 allows
    /// one per connection), whether it then says so or just goes away.
    pub fn confirmed_to_a_stranger(&self) -> bool {
        self.role == Role::Sender && matches!(self.state, State::Confirm { .. })
    }

    /// Takes bytes from the peer (at most [`Opening::needed`]). An error
    /// ends the exchange; what [`Opening::take_output`] then holds (an
    /// ERROR frame saying why) should still be sent.
    pub fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        assert!(bytes.len() <= self.needed(), "fed past the unit being read");
        self.unit.extend_from_slice(bytes);
        if !matches!(self.state, State::Preamble | State::Done) && self.unit.len() == FRAME_HEADER {
            // A whole header: its length is checked before anything waits
            // for the payload (so `needed` never asks for more than
            // [`MAX_OPENING_FRAME`]).
            let len = self.payload_len();
            if len > MAX_OPENING_FRAME as usize {
                return Err(self.malformed(ProtocolError::FrameTooLarge {
                    len: len as u32,
                    cap: MAX_OPENING_FRAME,
                }));
            }
        }
        if self.needed() > 0 {
            return Ok(());
        }
        let unit = std::mem::take(&mut self.unit);
        match std::mem::replace(&mut self.state, State::Done) {
            State::Preamble => self.on_preamble(&unit),
            State::Pake { pake, preambles } => {
                let frame = self.frame(&unit)?;
                self.on_pake(frame, *pake, preambles)
            }
            State::Confirm { agreed } => {
                let frame = self.frame(&unit)?;
                self.on_confirm(frame, *agreed)
            }
            State::Done => unreachable!("needed() is 0 when done"),
        }
    }

    fn frame(&mut self, unit: &[u8]) -> anyhow::Result<Frame> {
        match Frame::decode(unit[0], &unit[FRAME_HEADER..]) {
            Ok(frame) => Ok(frame),
            Err(e) => Err(self.malformed(e)),
        }
    }

    /// A frame that made no sense: the peer hears so, as ERROR reason 6.
    fn malformed(&mut self, e: ProtocolError) -> anyhow::Error {
        self.send_error(Reason::Protocol, &e.to_string());
        describe(e, &self.peer).context(format!("waiting for {}", self.waiting_for()))
    }

    fn send_error(&mut self, reason: Reason, message: &str) {
        let frame = Frame::Error(ErrorFrame {
            reason,
            message: message.to_string(),
        });
        protocol::write_frame(&mut self.out, &frame).expect("writing to memory");
    }

    fn send(&mut self, frame: &Frame) {
        protocol::write_frame(&mut self.out, frame).expect("writing to memory");
    }

    fn on_preamble(&mut self, unit: &[u8]) -> anyhow::Result<()> {
        let peer = self.peer.clone();
        let theirs = protocol::read_preamble(&mut &unit[..]).map_err(|e| describe(e, &peer))?;
        if let Err(e) = theirs.check_compatible() {
            // Another version of xfer: a mistake, not an attack.
            self.failed = Some(Failed::Mismatch);
            return Err(Failure::new(ExitCode::Network, format!("{peer}: {e}")).into());
        }
        self.peer_capabilities = theirs.capabilities;
        let (mine, peers) = (self.ours.transport, theirs.transport);
        if mine != peers {
            self.failed = Some(Failed::Mismatch);
            if self.role == Role::Receiver {
                // For a peer that sends before it reads our preamble.
                let told = transport_mismatch(self.role.other(), peers, mine);
                self.send_error(Reason::Auth, &told);
            }
            return Err(Failure::new(
                ExitCode::Auth,
                format!("{peer}: {}", transport_mismatch(self.role, mine, peers)),
            )
            .into());
        }
        if mine == Transport::Plain {
            self.result = Some(None);
            return Ok(());
        }
        let preambles = match self.role {
            Role::Sender => [self.ours.encode().to_vec(), theirs.encode().to_vec()],
            Role::Receiver => [theirs.encode().to_vec(), self.ours.encode().to_vec()],
        };
        let pake = match self.rng.take() {
            Some(start) => start(self.role, &self.secret),
            None => Pake::start(self.role, &self.secret),
        };
        self.send(&Frame::Pake {
            message: pake.message().to_vec(),
        });
        self.state = State::Pake {
            pake: Box::new(pake),
            preambles,
        };
        Ok(())
    }

    fn on_pake(&mut self, frame: Frame, pake: Pake, preambles: [Vec<u8>; 2]) -> anyhow::Result<()> {
        let theirs = match frame {
            Frame::Pake { message } => message,
            other => return Err(self.unexpected(other, "PAKE")),
        };
        let agreed = pake
            .finish(&theirs, [&preambles[0], &preambles[1]])
            .ok_or_else(|| {
                auth_failure(format!("{}: malformed key-exchange message", self.peer))
            })?;
        if self.role == Role::Sender {
            self.send(&Frame::Confirm {
                mac: agreed.confirmation(),
            });
        }
        self.state = State::Confirm {
            agreed: Box::new(agreed),
        };
        Ok(())
    }

    fn on_confirm(&mut self, frame: Frame, agreed: Agreed) -> anyhow::Result<()> {
        match frame {
            Frame::Confirm { mac } if agreed.confirms(&mac) => {}
            Frame::Confirm { .. } if self.role == Role::Sender => {
                return Err(auth_failure(format!(
                    "{} does not know the code or key: it is not the receiver you meant",
                    self.peer
                )));
            }
            Frame::Confirm { .. } => {
                self.failed = Some(Failed::WrongCode);
                self.send_error(Reason::Auth, "wrong code or key");
                return Err(auth_failure(format!(
                    "{} failed to authenticate: wrong code or key",
                    self.peer
                )));
            }
            other => return Err(self.unexpected(other, "CONFIRM")),
        }
        if self.role == Role::Receiver {
            self.send(&Frame::Confirm {
                mac: agreed.confirmation(),
            });
        }
        self.result = Some(Some(agreed.into_keys()));
        Ok(())
    }

    /// A frame out of place: the peer's ERROR says why it stopped; any
    /// other frame is a protocol error.
    fn unexpected(&mut self, frame: Frame, expected: &'static str) -> anyhow::Error {
        match frame {
            Frame::Error(e) => {
                self.failed = Some(Failed::PeerStopped);
                crate::link::peer_aborted(&e, &self.peer)
            }
            other => crate::link::unexpected(&other, expected, &self.peer),
        }
    }
}

fn auth_failure(message: String) -> anyhow::Error {
    Failure::new(ExitCode::Auth, message).into()
}

/// Runs the opening over a blocking `stream`: sends what [`Opening`] has,
/// reads exactly what it needs, until the keys are agreed (or plaintext).
pub fn exchange<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    secret: &Secret,
    role: Role,
) -> anyhow::Result<Settled> {
    drive(stream, opening(role, secret, peer))
}

/// The opening of a real connection: [`Opening::new`], but in debug
/// builds with SPAKE2's randomness fixed when `XFER_TEST_SPAKE_SEED` is set
/// (see [`recording_seed`]), whether the connection is driven by
/// [`exchange`] or by the gate's event loop.
pub fn opening(role: Role, secret: &Secret, peer: &str) -> Opening {
    #[cfg(debug_assertions)]
    if let Some(seed) = recording_seed() {
        return Opening::with_rng(role, secret, peer, SeededRng::new(seed));
    }
    Opening::new(role, secret, peer)
}

/// Debug builds only: `XFER_TEST_SPAKE_SEED=N` (0–255) makes SPAKE2's
/// randomness repeatable, so fixtures/sessions can hold encrypted sessions
/// captured between the real binaries and the tests can derive their keys
/// again. Release builds never look at it.
#[cfg(debug_assertions)]
fn recording_seed() -> Option<u8> {
    std::env::var("XFER_TEST_SPAKE_SEED").ok()?.parse().ok()
}

/// A repeatable stand-in for the operating system's randomness: SHA-256 of
/// a seed byte and a counter. For tests and recording fixtures only; never
/// used by a release build.
#[doc(hidden)]
pub struct SeededRng {
    seed: u8,
    counter: u64,
}

impl SeededRng {
    pub fn new(seed: u8) -> Self {
        SeededRng { seed, counter: 0 }
    }
}

impl rand_core::RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use sha2::Digest as _;
        for chunk in dest.chunks_mut(32) {
            let mut h = sha2::Sha256::new();
            h.update([self.seed]);
            h.update(self.counter.to_be_bytes());
            self.counter += 1;
            let block: [u8; 32] = h.finalize().into();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for SeededRng {}

/// [`exchange`] with an [`Opening`] made by the caller (one with injected
/// randomness, in tests).
pub fn drive<S: Link + ?Sized>(stream: &mut S, mut opening: Opening) -> anyhow::Result<Settled> {
    let peer = opening.peer.clone();
    let mut buf = [0u8; FRAME_HEADER + MAX_OPENING_FRAME as usize];
    loop {
        let out = opening.take_output();
        if !out.is_empty() {
            stream
                .write_all(&out)
                .and_then(|()| stream.flush())
                .map_err(|e| Failure::network(format!("cannot talk to {peer}"), &e))?;
        }
        if let Some(keys) = opening.finished() {
            return Ok(Settled {
                keys,
                peer_capabilities: opening.peer_capabilities(),
            });
        }
        let need = opening.needed();
        let waiting_for = opening.waiting_for();
        let first = opening.nothing_heard();
        protocol::read_exact_or_closed(stream, &mut buf[..need]).map_err(|e| {
            let silent = first && matches!(e, ProtocolError::Closed);
            let e = describe(e, &peer).context(format!("waiting for {waiting_for}"));
            // Gone before a single byte: someone checking that we are
            // here (a sender at a terminal does, before asking for the
            // code), not a failed handshake.
            if silent { e.context(Probe) } else { e }
        })?;
        if let Err(e) = opening.feed(&buf[..need]) {
            // Best effort: the peer hears why (an ERROR), if it still can.
            let out = opening.take_output();
            let _ = stream.write_all(&out).and_then(|()| stream.flush());
            return Err(e);
        }
    }
}

/// What an opening settled.
pub struct Settled {
    /// `None`: plaintext.
    pub keys: Option<Keys>,
    /// What the peer can decode (`CAP_*` bits of its preamble).
    pub peer_capabilities: u8,
}

/// The link a session runs over after [`exchange`]: encrypted records
/// when it agreed on keys, else the stream itself (plaintext).
pub fn secured<'a, S: Link + 'a>(stream: S, keys: Option<Keys>) -> Box<dyn Link + 'a> {
    match keys {
        Some(keys) => Box::new(crate::secure::Encrypted::new(stream, keys)),
        None => Box::new(stream),
    }
}

/// Why two ends that asked for different transports cannot talk, in the
/// words of the end `role` that asked for `mine`.
fn transport_mismatch(role: Role, mine: Transport, theirs: Transport) -> String {
    let other = match role {
        Role::Sender => "the receiver",
        Role::Receiver => "the sender",
    };
    match (mine, theirs) {
        (_, Transport::Plain) => format!(
            "{other} uses plaintext (--insecure), but this end requires a code or key; \
             plaintext needs --insecure on both ends"
        ),
        (Transport::Plain, _) => format!(
            "{other} requires an authenticated, encrypted connection (a code or --key-file); \
             plaintext needs --insecure on both ends"
        ),
        (Transport::Code, _) => {
            format!(
                "{other} uses a key file (--key-file), not a code: give this end the same key file"
            )
        }
        _ => format!("{other} uses a code, not a key file: drop --key-file and give the code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most any step of the exchange may ask for: a whole control frame.
    const MOST: usize = FRAME_HEADER + MAX_OPENING_FRAME as usize;

    /// Runs both sides' machines against each other in memory, the byte at
    /// `flip` of the side `dir` sends (0: sender, 1: receiver) changed by
    /// `mask`; checks at every step that neither asks for more than a
    /// control frame. Returns each side's outcome (None: still waiting).
    fn run(flip: Option<(usize, usize, u8)>) -> [Option<bool>; 2] {
        let secret = Secret::Code("7f3k-q9wd".into());
        let mut sides = [
            Opening::with_rng(Role::Sender, &secret, "receiver", SeededRng::new(1)),
            Opening::with_rng(Role::Receiver, &secret, "sender", SeededRng::new(2)),
        ];
        let mut wire: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut read = [0usize; 2];
        let mut outcome: [Option<bool>; 2] = [None, None];
        for _ in 0..64 {
            for (i, side) in sides.iter_mut().enumerate() {
                let before = wire[i].len();
                wire[i].extend_from_slice(&side.take_output());
                if let Some((dir, at, mask)) = flip
                    && dir == i
                    && (before..wire[i].len()).contains(&at)
                {
                    wire[i][at] ^= mask;
                }
            }
            for i in 0..2 {
                if outcome[i].is_some() {
                    continue;
                }
                if sides[i].finished().is_some() {
                    outcome[i] = Some(true);
                    continue;
                }
                let need = sides[i].needed();
                assert!(need <= MOST, "side {i} asks for {need} bytes ({flip:?})");
                let from = &wire[1 - i];
                let want = need.min(from.len() - read[i]);
                if want > 0 {
                    if sides[i].feed(&from[read[i]..read[i] + want]).is_err() {
                        outcome[i] = Some(false);
                    }
                    read[i] += want;
                }
            }
        }
        outcome
    }

    #[test]
    fn a_changed_byte_anywhere_in_the_opening_fails_it_and_never_asks_for_more_than_a_frame() {
        assert_eq!(run(None), [Some(true), Some(true)]);
        let lens = {
            // What each side sends in a clean exchange.
            let secret = Secret::Code("x".into());
            let s = Opening::with_rng(Role::Sender, &secret, "r", SeededRng::new(1));
            let preamble = s.out.len();
            // preamble, PAKE (33-byte message), CONFIRM (32-byte MAC).
            preamble + FRAME_HEADER + 33 + FRAME_HEADER + 32
        };
        for dir in 0..2 {
            for at in 0..lens {
                for mask in [0x01, 0x80, 0xff] {
                    // Every byte counts, the capability byte too: the
                    // transcript covers both preambles.
                    let outcome = run(Some((dir, at, mask)));
                    assert_ne!(
                        outcome,
                        [Some(true), Some(true)],
                        "a change at byte {at} of side {dir} went unnoticed"
                    );
                }
            }
        }
    }
}
