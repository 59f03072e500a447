//! Who may send, and what the network sees: the authenticated, encrypted
//! transport.
//!
//! Both ends share a secret: a short code that a person reads off the
//! receiver, or a 256-bit key from a key file. Neither is ever sent. The
//! two ends run SPAKE2 keyed by it, so an eavesdropper learns nothing it
//! could test guesses against offline, and an active attacker gets one
//! guess per connection. HKDF over the SPAKE2 key and the transcript gives
//! a fresh key per direction and per connection, plus two confirmation
//! values each side must show before any frame is trusted. After that,
//! every byte travels in AES-256-GCM records with a counter nonce, so a
//! record that is altered, dropped, replayed or moved fails to open.
//!
//! This module knows nothing of files; it sees frames only during the
//! handshake and bytes after it.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use byteorder::{BigEndian, ByteOrder};
use hkdf::Hkdf;
use sha2::{Digest as _, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;

#[cfg(test)]
use crate::exit_codes::is_forged;
use crate::exit_codes::{ExitCode, Failure, Forged};
use crate::link::{self, Link};
use crate::protocol::{ProtocolError, Transport};

/// Length of a key in a key file, and of each derived key.
pub const KEY_LEN: usize = 32;
/// Most plaintext bytes in one record.
pub const RECORD_MAX: usize = 64 * 1024;
/// Bytes of the authentication tag closing each record.
pub const TAG_LEN: usize = 16;
/// Bytes of a record's length header.
const HEADER_LEN: usize = 4;
/// Characters of a generated code (5 bits each, so 40 bits), shown in two
/// groups of four.
const CODE_CHARS: usize = 8;
/// Crockford's base 32: digits and letters without i, l, o and u, which
/// are too easily misread.
const CODE_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// What authenticates a connection.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Plaintext, no authentication: both ends said `--insecure`.
    Insecure,
    /// A code typed by a person.
    Code(String),
    /// A key from a key file.
    Key([u8; KEY_LEN]),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never printed, not even in debug output.
        f.write_str(match self {
            Secret::Insecure => "Insecure",
            Secret::Code(_) => "Code(..)",
            Secret::Key(_) => "Key(..)",
        })
    }
}

impl Secret {
    /// The transport this secret asks for in the preamble.
    pub fn transport(&self) -> Transport {
        match self {
            Secret::Insecure => Transport::Plain,
            Secret::Code(_) => Transport::Code,
            Secret::Key(_) => Transport::Key,
        }
    }
}

/// Which end of the exchange we are; the sender is SPAKE2's side A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

impl Role {
    pub fn other(self) -> Role {
        match self {
            Role::Sender => Role::Receiver,
            Role::Receiver => Role::Sender,
        }
    }
}

/// Fills `buf` from the operating system's random number generator.
fn random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}

/// A new random code such as `7f3k-q9wd`.
pub fn generate_code() -> io::Result<String> {
    let mut bytes = [0u8; CODE_CHARS];
    random(&mut bytes)?;
    let mut code = String::with_capacity(CODE_CHARS + 1);
    for (i, b) in bytes.iter().enumerate() {
        if i == CODE_CHARS / 2 {
            code.push('-');
        }
        code.push(CODE_ALPHABET[usize::from(b & 31)] as char);
    }
    Ok(code)
}

/// The form of a code both ends feed to SPAKE2: lower case, without the
/// dashes and spaces people add or drop when typing it, and read as
/// Crockford's base 32 defines it: `o` is `0`, `i` and `l` are `1` (a
/// generated code never holds those letters; a chosen one that does means
/// the same with the digits).
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        })
        .collect()
}

/// Characters in a generated code; a chosen code shorter than this is
/// weaker than the default and refused.
pub const CODE_LEN: usize = CODE_CHARS;

/// A new random 256-bit key, in the key-file format (hex and a newline).
pub fn generate_key() -> io::Result<String> {
    let mut key = [0u8; KEY_LEN];
    random(&mut key)?;
    Ok(format!("{}\n", crate::protocol::hex(&key)))
}

/// Parses a key file's text: 64 hex digits, surrounding white space allowed.
pub fn parse_key(text: &str) -> Result<[u8; KEY_LEN], &'static str> {
    let hex = text.trim();
    if hex.len() != 2 * KEY_LEN {
        return Err("a key file holds 64 hex digits (make one with `xfer keygen`)");
    }
    let mut key = [0u8; KEY_LEN];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).map_err(|_| "not hex")?;
        key[i] = u8::from_str_radix(digits, 16)
            .map_err(|_| "a key file holds 64 hex digits (make one with `xfer keygen`)")?;
    }
    Ok(key)
}

/// Reads a key file. The second value is a warning to show when the file
/// can be read by other users.
pub fn read_key_file(path: &Path) -> anyhow::Result<([u8; KEY_LEN], Option<String>)> {
    use std::os::unix::fs::PermissionsExt;
    let shown = crate::names::escape_path(path);
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::local(format!("cannot read key file '{shown}'"), &e))?;
    let meta = file
        .metadata()
        .map_err(|e| Failure::local(format!("cannot read key file '{shown}'"), &e))?;
    // Bounded: a key file is 65 bytes; never read a huge file by mistake.
    let mut text = String::new();
    file.take(1024)
        .read_to_string(&mut text)
        .map_err(|e| Failure::local(format!("cannot read key file '{shown}'"), &e))?;
    let key = parse_key(&text)
        .map_err(|why| Failure::new(ExitCode::Usage, format!("key file '{shown}': {why}")))?;
    let warning = (meta.permissions().mode() & 0o077 != 0).then(|| {
        format!("key file '{shown}' can be read by other users; run: chmod 600 '{shown}'")
    });
    Ok((key, warning))
}

/// AES-256-GCM under one key, sealing and opening records in place.
///
/// The implementation is aws-lc-rs (AWS-LC, the default provider of
/// rustls): on this machine it seals at 12 GB/s on one core against 8 GB/s
/// for ring and 3 GB/s for RustCrypto's `aes-gcm`; docs/PERFORMANCE.md has
/// the figures, in place and in a whole transfer. The bytes on the wire are
/// the same whichever implementation seals them.
struct Cipher(aws_lc_rs::aead::LessSafeKey);

impl Cipher {
    fn new(key: &[u8; KEY_LEN]) -> Cipher {
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, key)
            .expect("a 32-byte AES-256 key");
        Cipher(aws_lc_rs::aead::LessSafeKey::new(unbound))
    }

    /// Encrypts `body` in place under record number `n` with `aad`
    /// authenticated; the tag.
    fn seal(&self, n: u64, aad: &[u8], body: &mut [u8]) -> Result<[u8; TAG_LEN], ()> {
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(n), aws_lc_rs::aead::Aad::from(aad), body)
            .map_err(drop)?;
        Ok(tag.as_ref().try_into().expect("a 16-byte tag"))
    }

    /// Decrypts `body` in place if `tag` authenticates it (and `aad`) under
    /// record number `n`.
    fn open(&self, n: u64, aad: &[u8], body: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), ()> {
        self.0
            .open_in_place_separate_tag(nonce(n), aws_lc_rs::aead::Aad::from(aad), tag, body)
            .map(drop)
            .map_err(drop)
    }
}

/// The keys of one connection, one per direction.
pub struct Keys {
    seal: Cipher,
    open: Cipher,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never printed, not even in debug output.
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Keys from raw bytes: `seal` for what we send, `open` for what we
    /// read. Sessions get theirs from [`authenticate`]; this is for tests
    /// and the fuzz targets.
    pub fn from_raw(seal: [u8; KEY_LEN], open: [u8; KEY_LEN]) -> Self {
        Keys {
            seal: Cipher::new(&seal),
            open: Cipher::new(&open),
        }
    }
}

/// What HKDF derives from the SPAKE2 key, each under its own label.
struct Derived {
    sender_to_receiver: [u8; KEY_LEN],
    receiver_to_sender: [u8; KEY_LEN],
    sender_confirm: [u8; KEY_LEN],
    receiver_confirm: [u8; KEY_LEN],
}

fn derive(shared: &[u8], transcript: &[u8; 32]) -> Derived {
    let hk = Hkdf::<Sha256>::new(Some(transcript), shared);
    let expand = |label: &[u8]| {
        let mut out = [0u8; KEY_LEN];
        hk.expand(label, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    };
    Derived {
        sender_to_receiver: expand(b"xfer v1 key sender to receiver"),
        receiver_to_sender: expand(b"xfer v1 key receiver to sender"),
        sender_confirm: expand(b"xfer v1 confirm sender"),
        receiver_confirm: expand(b"xfer v1 confirm receiver"),
    }
}

/// One side's SPAKE2 exchange, with no I/O: start it, send
/// [`Pake::message`], then [`Pake::finish`] with the peer's message.
pub struct Pake {
    state: Spake2<Ed25519Group>,
    ours: Vec<u8>,
    role: Role,
}

impl Pake {
    /// Starts with fresh randomness from the operating system.
    pub fn start(role: Role, secret: &Secret) -> Pake {
        Self::start_with_rng(role, secret, rand_core::OsRng)
    }

    /// Starts with the randomness `rng` gives: tests inject a seeded one to
    /// make a whole encrypted session repeatable byte for byte.
    pub fn start_with_rng(
        role: Role,
        secret: &Secret,
        rng: impl rand_core::CryptoRng + rand_core::RngCore,
    ) -> Pake {
        let code;
        let password = match secret {
            Secret::Code(c) => {
                code = normalize_code(c);
                Password::new(code.as_bytes())
            }
            Secret::Key(k) => Password::new(k),
            Secret::Insecure => unreachable!("plaintext sessions do not authenticate"),
        };
        let (a, b) = (
            Identity::new(b"xfer sender"),
            Identity::new(b"xfer receiver"),
        );
        let (state, ours) = match role {
            Role::Sender => Spake2::<Ed25519Group>::start_a_with_rng(&password, &a, &b, rng),
            Role::Receiver => Spake2::<Ed25519Group>::start_b_with_rng(&password, &a, &b, rng),
        };
        Pake { state, ours, role }
    }

    /// Our SPAKE2 message, for the PAKE frame.
    pub fn message(&self) -> &[u8] {
        &self.ours
    }

    /// Finishes with the peer's message: keys and confirmation values from
    /// HKDF over the SPAKE2 key, salted with the transcript of both
    /// preambles (`[sender's, receiver's]`) and both messages. `None` for a
    /// message that is malformed (wrong length, side or point).
    pub fn finish(self, theirs: &[u8], preambles: [&[u8]; 2]) -> Option<Agreed> {
        let shared = self.state.finish(theirs).ok()?;
        let (sender_msg, receiver_msg) = match self.role {
            Role::Sender => (&self.ours[..], theirs),
            Role::Receiver => (theirs, &self.ours[..]),
        };
        let mut transcript = Sha256::new();
        for part in [preambles[0], preambles[1], sender_msg, receiver_msg] {
            transcript.update((part.len() as u32).to_be_bytes());
            transcript.update(part);
        }
        let d = derive(&shared, &transcript.finalize().into());
        Some(match self.role {
            Role::Sender => Agreed {
                keys: Keys::from_raw(d.sender_to_receiver, d.receiver_to_sender),
                ours: d.sender_confirm,
                theirs: d.receiver_confirm,
            },
            Role::Receiver => Agreed {
                keys: Keys::from_raw(d.receiver_to_sender, d.sender_to_receiver),
                ours: d.receiver_confirm,
                theirs: d.sender_confirm,
            },
        })
    }
}

/// What both ends agree on when SPAKE2 finishes: this connection's keys,
/// and the confirmation values each must show before the other trusts it.
pub struct Agreed {
    keys: Keys,
    ours: [u8; KEY_LEN],
    theirs: [u8; KEY_LEN],
}

impl Agreed {
    /// Our confirmation value, for the CONFIRM frame.
    pub fn confirmation(&self) -> [u8; KEY_LEN] {
        self.ours
    }

    /// Whether the peer's CONFIRM shows it derived the same keys (compared
    /// in constant time).
    pub fn confirms(&self, mac: &[u8; KEY_LEN]) -> bool {
        bool::from(mac.ct_eq(&self.theirs))
    }

    pub fn into_keys(self) -> Keys {
        self.keys
    }
}

fn forged(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Forged::new(why))
}

/// The connection ended inside a record. A peer that was killed and an
/// attacker cutting the connection look the same here; either way nothing
/// of the record is used, so it counts as a connection lost (and a resume
/// continues from what was verified), not as tampering.
fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection ended inside an encrypted record",
    )
}

/// The nonce of record number `n`: four zero bytes, then `n` big-endian.
/// Each direction has its own key, so the two counters never collide.
fn nonce(n: u64) -> aws_lc_rs::aead::Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    aws_lc_rs::aead::Nonce::assume_unique_for_key(bytes)
}

/// A link whose bytes travel as AES-256-GCM records: a big-endian u32
/// length (authenticated as associated data), the ciphertext, the tag.
/// Writes are gathered into records of up to [`RECORD_MAX`] bytes and sent
/// before any read that would wait, like [`link::Buffered`].
pub struct Encrypted<S: Link> {
    inner: S,
    keys: Keys,
    sent: u64,
    received: u64,
    /// Plaintext waiting to be sealed.
    out: Vec<u8>,
    /// The last record read, opened in place; `pos..len` is unread.
    record: Vec<u8>,
    pos: usize,
    len: usize,
    /// A write failed: the link is dead for writing (a sealed record may be
    /// half sent and its nonce is spent, so nothing may be sealed or sent
    /// again), and reads no longer try to send first (see `Buffered`).
    broken: Option<io::ErrorKind>,
}

impl<S: Link> Encrypted<S> {
    /// The link beneath the records.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn new(inner: S, keys: Keys) -> Self {
        Encrypted {
            inner,
            keys,
            sent: 0,
            received: 0,
            out: Vec::new(),
            record: Vec::new(),
            pos: 0,
            len: 0,
            broken: None,
        }
    }

    /// Seals what was written into one record and passes it on.
    fn seal(&mut self) -> io::Result<()> {
        if self.out.len() <= HEADER_LEN {
            return Ok(());
        }
        let len = self.out.len() - HEADER_LEN + TAG_LEN;
        let (header, body) = self.out.split_at_mut(HEADER_LEN);
        BigEndian::write_u32(header, len as u32);
        let n = self.sent;
        self.sent = n
            .checked_add(1)
            .ok_or_else(|| io::Error::other("record counter exhausted"))?;
        let tag = self
            .keys
            .seal
            .seal(n, header, body)
            .map_err(|()| io::Error::other("cannot encrypt a record"))?;
        self.out.extend_from_slice(&tag);
        // One write for the whole record: a large one passes the buffered
        // link below in one system call.
        let sent = self.inner.write_all(&self.out);
        if let Err(e) = &sent {
            self.broken = Some(e.kind());
        }
        sent?;
        self.out.clear();
        self.out.extend_from_slice(&[0; HEADER_LEN]);
        Ok(())
    }

    /// Reads and opens the next record. `false` at a clean end of stream
    /// between records.
    fn open_next(&mut self) -> io::Result<bool> {
        let mut header = [0u8; 4];
        match crate::protocol::read_exact_or_closed(&mut self.inner, &mut header) {
            Ok(()) => {}
            Err(ProtocolError::Closed) => return Ok(false),
            Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(cut_short());
            }
            Err(ProtocolError::Io(e)) => return Err(e),
            Err(other) => return Err(io::Error::other(other.to_string())),
        }
        let len = BigEndian::read_u32(&header) as usize;
        if !(TAG_LEN..=RECORD_MAX + TAG_LEN).contains(&len) {
            return Err(forged("an encrypted record has an impossible length"));
        }
        self.record.resize(len, 0);
        self.inner.read_exact(&mut self.record).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                cut_short()
            } else {
                e
            }
        })?;
        let (body, tag) = self.record.split_at_mut(len - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("split at the tag");
        self.keys
            .open
            .open(self.received, &header, body, tag)
            .map_err(|()| {
                forged(
                    "an encrypted record failed authentication (altered, replayed or out of order)",
                )
            })?;
        self.received += 1;
        self.pos = 0;
        self.len = len - TAG_LEN;
        Ok(true)
    }
}

impl<S: Link> Read for Encrypted<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            // About to wait on the peer: first send what it may wait for.
            let unsent = link::flush_before_wait(self.broken, || self.flush())?;
            if !link::last_words(unsent, self.open_next(), |more| !more)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.record[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: Link> Write for Encrypted<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        link::still_writable(self.broken)?;
        if self.out.is_empty() {
            self.out.reserve_exact(HEADER_LEN + RECORD_MAX + TAG_LEN);
            self.out.extend_from_slice(&[0; HEADER_LEN]);
        }
        let n = data.len().min(HEADER_LEN + RECORD_MAX - self.out.len());
        self.out.extend_from_slice(&data[..n]);
        if self.out.len() == HEADER_LEN + RECORD_MAX {
            self.seal()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        link::still_writable(self.broken)?;
        self.seal()?;
        let flushed = self.inner.flush();
        if let Err(e) = &flushed {
            self.broken = Some(e.kind());
        }
        flushed
    }
}

impl<S: Link> Drop for Encrypted<S> {
    /// Like `BufWriter`: what was written goes out, if it still can (never
    /// after a failed write).
    fn drop(&mut self) {
        if self.broken.is_none() {
            let _ = self.flush();
        }
    }
}

impl<S: Link> Link for Encrypted<S> {
    fn set_deadline(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        self.inner.set_deadline(timeout)
    }

    fn input_ready(&self) -> bool {
        self.pos < self.len || self.inner.input_ready()
    }

    fn floor(&mut self, armed: bool) {
        self.inner.floor(armed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_pair() -> (Keys, Keys) {
        let d = derive(b"shared secret from spake2", &[9; 32]);
        (
            Keys {
                seal: Cipher::new(&d.sender_to_receiver),
                open: Cipher::new(&d.receiver_to_sender),
            },
            Keys {
                seal: Cipher::new(&d.receiver_to_sender),
                open: Cipher::new(&d.sender_to_receiver),
            },
        )
    }

    /// An in-memory one-way pipe as a link.
    struct Pipe(io::Cursor<Vec<u8>>);
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.get_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Link for Pipe {}

    /// What a sender puts on the wire for `messages`, each flushed.
    fn wire(messages: &[&[u8]]) -> Vec<u8> {
        let (ours, _) = keys_pair();
        let mut tx = Encrypted::new(Pipe(io::Cursor::new(Vec::new())), ours);
        for m in messages {
            tx.write_all(m).unwrap();
            tx.flush().unwrap();
        }
        tx.inner.0.get_ref().clone()
    }

    fn read_all(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let (_, theirs) = keys_pair();
        let mut rx = Encrypted::new(Pipe(io::Cursor::new(bytes)), theirs);
        let mut got = Vec::new();
        rx.read_to_end(&mut got)?;
        Ok(got)
    }

    /// A link that takes `accept` bytes, fails one write with a timeout (a
    /// stalled peer), then takes everything again (the peer woke up).
    struct Stalls {
        wire: Vec<u8>,
        accept: usize,
        failed: bool,
    }
    impl Read for Stalls {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }
    impl Write for Stalls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.failed && self.wire.len() + buf.len() > self.accept {
                let n = self.accept - self.wire.len();
                if n == 0 {
                    self.failed = true;
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "stalled"));
                }
                self.wire.extend_from_slice(&buf[..n]);
                return Ok(n);
            }
            self.wire.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Link for Stalls {}

    /// Issue 11, bug 2: after a write timed out, dropping the link sealed
    /// the half-sent record again under the next nonce and sent it, so a
    /// receiver that woke up read garbage and reported tampering (exit 4)
    /// for what was a stall, and the sender waited a second timeout.
    #[test]
    fn after_a_failed_write_nothing_more_is_sealed_or_sent() {
        let (ours, _) = keys_pair();
        let mut link = Stalls {
            wire: Vec::new(),
            accept: 1000,
            failed: false,
        };
        let mut tx = Encrypted::new(&mut link, ours);
        let err = tx.write_all(&vec![7u8; 3 * RECORD_MAX]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            tx.write(b"more").unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert!(tx.flush().is_err());
        drop(tx);
        assert_eq!(link.wire.len(), 1000, "nothing may follow the failed write");
    }

    #[test]
    fn records_round_trip_and_hide_the_plaintext() {
        let big = vec![0xab; RECORD_MAX + 10];
        let bytes = wire(&[b"hello", &big, b""]);
        assert!(!bytes.windows(5).any(|w| w == b"hello"));
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(read_all(bytes).unwrap(), want);
    }

    #[test]
    fn a_cut_between_records_is_a_clean_end() {
        let bytes = wire(&[b"one", b"two"]);
        let first = wire(&[b"one"]).len();
        assert_eq!(read_all(bytes[..first].to_vec()).unwrap(), b"one");
    }

    #[test]
    fn any_flipped_bit_fails_to_open() {
        let bytes = wire(&[b"first record", b"second record"]);
        let second = wire(&[b"first record"]).len();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let err = read_all(bad).unwrap_err();
            // A changed length may instead leave the record short of bytes.
            let in_a_length = i < 4 || (second..second + 4).contains(&i);
            assert!(
                is_forged(&err) || (in_a_length && err.kind() == io::ErrorKind::UnexpectedEof),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn replayed_reordered_and_truncated_records_fail() {
        let one = wire(&[b"one"]);
        let both = wire(&[b"one", b"two"]);
        let second = both[one.len()..].to_vec();
        // Replay: the first record twice.
        let replayed = [one.clone(), one.clone()].concat();
        assert!(is_forged(&read_all(replayed).unwrap_err()));
        // Reorder: the second record first.
        let reordered = [second, one.clone()].concat();
        assert!(is_forged(&read_all(reordered).unwrap_err()));
        // Cut inside a record: nothing of it is used; a connection lost.
        for cut in 1..one.len() {
            let err = read_all(one[..cut].to_vec()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        // An impossible length is refused before anything is allocated.
        assert!(is_forged(
            &read_all(vec![0xff, 0xff, 0xff, 0xff]).unwrap_err()
        ));
    }

    #[test]
    fn the_other_direction_cannot_be_reflected_back() {
        // A record sealed by the receiver does not open as one from the sender.
        let (_, theirs) = keys_pair();
        let mut tx = Encrypted::new(Pipe(io::Cursor::new(Vec::new())), theirs);
        tx.write_all(b"reflect me").unwrap();
        tx.flush().unwrap();
        let (_, receiver) = keys_pair();
        let mut rx = Encrypted::new(
            Pipe(io::Cursor::new(tx.inner.0.get_ref().clone())),
            receiver,
        );
        assert!(is_forged(&rx.read_to_end(&mut Vec::new()).unwrap_err()));
    }

    #[test]
    fn codes_are_random_and_typing_slips_do_not_matter() {
        let a = generate_code().unwrap();
        let b = generate_code().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), CODE_CHARS + 1);
        assert_eq!(
            normalize_code(&a.to_uppercase().replace('-', " ")),
            normalize_code(&a)
        );
        // Crockford's reading: O is 0, I and L are 1.
        assert_eq!(normalize_code("7F3K-QOIL"), normalize_code("7f3k-q011"));
    }

    #[test]
    fn key_files_parse_strictly() {
        let text = generate_key().unwrap();
        assert_eq!(text.len(), 65);
        let key = parse_key(&text).unwrap();
        assert_eq!(crate::protocol::hex(&key), text.trim());
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"zz".repeat(32)).is_err());
        assert!(parse_key(&"é".repeat(32)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_open_or_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let result = read_all(bytes);
            proptest::prop_assert!(result.is_err() || result.unwrap().is_empty());
        }

        #[test]
        fn any_split_of_writes_reads_back_the_same(parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 0..8)) {
            let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            proptest::prop_assert_eq!(read_all(wire(&slices)).unwrap(), parts.concat());
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let s = format!("{:?}", Secret::Code("7f3k-q9wd".into()));
        assert!(!s.contains("7f3k"));
    }
}
