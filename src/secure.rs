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
use crate::protocol::Transport;

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

    /// Encrypts `body` from `plain` into `cipher` (of the same length) under
    /// record number `n`, and its tag into `tag`: the cipher's one pass over
    /// the bytes is their copy into the outgoing buffer.
    fn seal_into(
        &self,
        n: u64,
        aad: &[u8],
        plain: &[u8],
        cipher: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), ()> {
        self.0
            .seal_out_of_place_scatter(
                nonce(n),
                aws_lc_rs::aead::Aad::from(aad),
                plain,
                cipher,
                &[],
                tag,
            )
            .map_err(drop)
    }

    /// Decrypts `body` into `plain` (of the same length) if `tag`
    /// authenticates it (and `aad`) under record number `n`. On failure
    /// `plain` holds garbage and must not be used.
    fn open_into(
        &self,
        n: u64,
        aad: &[u8],
        body: &[u8],
        tag: &[u8; TAG_LEN],
        plain: &mut [u8],
    ) -> Result<(), ()> {
        self.0
            .open_separate_gather(nonce(n), aws_lc_rs::aead::Aad::from(aad), body, tag, plain)
            .map_err(drop)
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

/// Bytes of one whole record on the wire: header, largest body, tag.
const RECORD_WIRE_MAX: usize = HEADER_LEN + RECORD_MAX + TAG_LEN;
/// Whole records gathered into one socket write, and read at most in one
/// socket read: 8 records, about 512 KiB, so a 1 GiB transfer takes about
/// 2,000 system calls on each side rather than 16,000 (docs/PERFORMANCE.md,
/// "Copies").
const RECORDS_PER_IO: usize = 8;
/// Size of each direction's buffer.
const IO_BUFFER: usize = RECORDS_PER_IO * RECORD_WIRE_MAX;

/// A link whose bytes travel as AES-256-GCM records: a big-endian u32
/// length (authenticated as associated data), the ciphertext, the tag.
///
/// Writes are gathered into records of up to [`RECORD_MAX`] bytes, and
/// records into one socket write of up to [`RECORDS_PER_IO`], sent before
/// any read that would wait, like [`link::Buffered`]. Each byte is copied
/// as few times as it can be: a write of a whole record or more is sealed
/// straight from the caller's buffer into the outgoing buffer (the cipher's
/// pass is the copy), and a read of a whole record or more is opened
/// straight from the incoming buffer into the caller's. Only small writes
/// and reads (frames) go through a record opened or gathered in place.
pub struct Encrypted<S: Link> {
    inner: S,
    keys: Keys,
    sent: u64,
    received: u64,
    /// Sealed records waiting to be sent, `out[..out_len]`, perhaps
    /// followed by one open record being gathered: its header's place at
    /// `open_at`, its plaintext from there to `out_len`. A record is only
    /// started with room for a whole one behind it.
    out: Vec<u8>,
    out_len: usize,
    open_at: Option<usize>,
    /// Bytes read and not yet opened, `input[head..tail]`; before them, a
    /// record opened in place whose plaintext `input[pos..len]` is unread.
    input: Vec<u8>,
    head: usize,
    tail: usize,
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
            out_len: 0,
            open_at: None,
            input: Vec::new(),
            head: 0,
            tail: 0,
            pos: 0,
            len: 0,
            broken: None,
        }
    }

    /// The next record's number, spent.
    fn next_sent(&mut self) -> io::Result<u64> {
        let n = self.sent;
        self.sent = n
            .checked_add(1)
            .ok_or_else(|| io::Error::other("record counter exhausted"))?;
        Ok(n)
    }

    /// Room for one more whole record in the outgoing buffer, sending what
    /// is sealed first if there is not.
    fn make_room(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            self.out = vec![0; IO_BUFFER];
        }
        if self.out_len + RECORD_WIRE_MAX > self.out.len() {
            self.send_sealed()?;
        }
        Ok(())
    }

    /// Seals the open record in place, if there is one with bytes in it.
    fn seal_open(&mut self) -> io::Result<()> {
        let Some(at) = self.open_at else {
            return Ok(());
        };
        if self.out_len == at + HEADER_LEN {
            // Nothing was written into it: no empty record is sent.
            self.out_len = at;
            self.open_at = None;
            return Ok(());
        }
        let n = self.next_sent()?;
        let body_len = self.out_len - at - HEADER_LEN;
        let (header, rest) = self.out[at..].split_at_mut(HEADER_LEN);
        BigEndian::write_u32(header, (body_len + TAG_LEN) as u32);
        let (body, tail) = rest.split_at_mut(body_len);
        let tag = self
            .keys
            .seal
            .seal(n, header, body)
            .map_err(|()| io::Error::other("cannot encrypt a record"))?;
        tail[..TAG_LEN].copy_from_slice(&tag);
        self.out_len += TAG_LEN;
        self.open_at = None;
        Ok(())
    }

    /// Seals `data` (at most a record) from the caller's buffer straight
    /// into the outgoing buffer, behind what is sealed.
    fn seal_from(&mut self, data: &[u8]) -> io::Result<()> {
        debug_assert!(self.open_at.is_none() && data.len() <= RECORD_MAX);
        let n = self.next_sent()?;
        let at = self.out_len;
        let (header, rest) = self.out[at..].split_at_mut(HEADER_LEN);
        BigEndian::write_u32(header, (data.len() + TAG_LEN) as u32);
        let (body, tail) = rest.split_at_mut(data.len());
        self.keys
            .seal
            .seal_into(n, header, data, body, &mut tail[..TAG_LEN])
            .map_err(|()| io::Error::other("cannot encrypt a record"))?;
        self.out_len = at + HEADER_LEN + data.len() + TAG_LEN;
        Ok(())
    }

    /// Sends every sealed record in one write. Callers seal the open
    /// record first: records only start once the buffer has room for one.
    fn send_sealed(&mut self) -> io::Result<()> {
        debug_assert!(self.open_at.is_none());
        if self.out_len == 0 {
            return Ok(());
        }
        let sent = self.inner.write_all(&self.out[..self.out_len]);
        if let Err(e) = &sent {
            self.broken = Some(e.kind());
        }
        sent?;
        self.out_len = 0;
        Ok(())
    }

    /// Whether `input[head..tail]` starts with a whole record; checks its
    /// length as soon as the header is in.
    fn whole_record(&self) -> io::Result<Option<usize>> {
        if self.tail - self.head < HEADER_LEN {
            return Ok(None);
        }
        let len = BigEndian::read_u32(&self.input[self.head..]) as usize;
        if !(TAG_LEN..=RECORD_MAX + TAG_LEN).contains(&len) {
            return Err(forged("an encrypted record has an impossible length"));
        }
        Ok((self.tail - self.head >= HEADER_LEN + len).then_some(len))
    }

    /// Opens the whole record of length `len` at `head`, into `to` (exactly
    /// its body's length) or, with `None`, in place; moves `head` past it.
    fn open_record(&mut self, len: usize, to: Option<&mut [u8]>) -> io::Result<()> {
        let at = self.head;
        let body_len = len - TAG_LEN;
        let (header, rest) = self.input[at..].split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(body_len);
        let tag: &[u8; TAG_LEN] = (&tag[..TAG_LEN]).try_into().expect("a whole tag");
        let opened = match to {
            Some(to) => self
                .keys
                .open
                .open_into(self.received, header, body, tag, to),
            None => self.keys.open.open(self.received, header, body, tag),
        };
        opened.map_err(|()| {
            forged("an encrypted record failed authentication (altered, replayed or out of order)")
        })?;
        self.received += 1;
        self.head = at + HEADER_LEN + len;
        Ok(())
    }

    /// Waits for more bytes from the peer (sending first what it may wait
    /// for). `false` at a clean end of stream between records.
    fn fill(&mut self) -> io::Result<bool> {
        if self.input.is_empty() {
            self.input = vec![0; IO_BUFFER];
        }
        if self.head == self.tail {
            (self.head, self.tail) = (0, 0);
        } else if self.input.len() - self.head < RECORD_WIRE_MAX {
            // Less than a record from the end: the partial record moves to
            // the front (less than one record's bytes, once per buffer).
            self.input.copy_within(self.head..self.tail, 0);
            (self.head, self.tail) = (0, self.tail - self.head);
        }
        let unsent = link::flush_before_wait(self.broken, || self.flush())?;
        let got = self.inner.read(&mut self.input[self.tail..]);
        let n = link::last_words(unsent, got, |n| *n == 0)?;
        if n == 0 {
            return if self.head == self.tail {
                Ok(false)
            } else {
                Err(cut_short())
            };
        }
        self.tail += n;
        Ok(true)
    }
}

impl<S: Link> Read for Encrypted<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos < self.len {
            let n = buf.len().min(self.len - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        let mut done = 0;
        loop {
            let Some(len) = self.whole_record()? else {
                if done > 0 {
                    // Never wait while holding bytes the caller could have.
                    return Ok(done);
                }
                if !self.fill()? {
                    return Ok(0);
                }
                continue;
            };
            let body_len = len - TAG_LEN;
            let left = &mut buf[done..];
            if body_len <= left.len() {
                // The caller has room for the whole body: open it there.
                self.open_record(len, Some(&mut left[..body_len]))?;
                done += body_len;
                if done == buf.len() {
                    return Ok(done);
                }
            } else if done > 0 {
                return Ok(done);
            } else {
                // A small read: open in place and hand out a part.
                let at = self.head + HEADER_LEN;
                self.open_record(len, None)?;
                let n = buf.len();
                buf.copy_from_slice(&self.input[at..at + n]);
                (self.pos, self.len) = (at + n, at + body_len);
                return Ok(n);
            }
        }
    }
}

impl<S: Link> Write for Encrypted<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        link::still_writable(self.broken)?;
        if self.open_at.is_none() && data.len() >= RECORD_MAX {
            // Whole records, sealed from the caller's buffer as long as
            // there is room for them.
            let mut n = 0;
            while data.len() - n >= RECORD_MAX {
                self.make_room()?;
                self.seal_from(&data[n..n + RECORD_MAX])?;
                n += RECORD_MAX;
                if self.out_len + RECORD_WIRE_MAX > self.out.len() {
                    break;
                }
            }
            return Ok(n);
        }
        let at = match self.open_at {
            Some(at) => at,
            None => {
                self.make_room()?;
                let at = self.out_len;
                self.out_len += HEADER_LEN;
                self.open_at = Some(at);
                at
            }
        };
        let n = data.len().min(at + HEADER_LEN + RECORD_MAX - self.out_len);
        self.out[self.out_len..self.out_len + n].copy_from_slice(&data[..n]);
        self.out_len += n;
        if self.out_len == at + HEADER_LEN + RECORD_MAX {
            self.seal_open()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        link::still_writable(self.broken)?;
        self.seal_open()?;
        self.send_sealed()?;
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

    fn input_within(&self, wait: std::time::Duration) -> bool {
        self.pos < self.len || self.head < self.tail || self.inner.input_within(wait)
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

    /// An in-memory one-way pipe as a link, which counts the writes and
    /// reads that reach it and hands out at most `piece` bytes a read (a
    /// slow network).
    struct Pipe {
        wire: io::Cursor<Vec<u8>>,
        writes: usize,
        reads: usize,
        piece: usize,
    }
    impl Pipe {
        fn new(wire: Vec<u8>) -> Pipe {
            Pipe {
                wire: io::Cursor::new(wire),
                writes: 0,
                reads: 0,
                piece: usize::MAX,
            }
        }
    }
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = buf.len().min(self.piece);
            self.wire.read(&mut buf[..n])
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.wire.get_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Link for Pipe {}

    /// What a sender puts on the wire for `messages`, each flushed.
    fn wire(messages: &[&[u8]]) -> Vec<u8> {
        sealed(messages, true)
    }

    /// What a sender puts on the wire for `writes`, flushed after each
    /// (`flush_each`) or once at the end.
    fn sealed(writes: &[&[u8]], flush_each: bool) -> Vec<u8> {
        let (ours, _) = keys_pair();
        let mut tx = Encrypted::new(Pipe::new(Vec::new()), ours);
        for w in writes {
            tx.write_all(w).unwrap();
            if flush_each {
                tx.flush().unwrap();
            }
        }
        tx.flush().unwrap();
        tx.inner.wire.get_ref().clone()
    }

    fn read_all(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let (_, theirs) = keys_pair();
        let mut rx = Encrypted::new(Pipe::new(bytes), theirs);
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
        // Records are gathered before they are sent: the failure shows in
        // the write that sends them, or in the flush.
        let err = tx
            .write_all(&vec![7u8; 3 * RECORD_MAX])
            .and_then(|()| tx.flush())
            .unwrap_err();
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
        let mut tx = Encrypted::new(Pipe::new(Vec::new()), theirs);
        tx.write_all(b"reflect me").unwrap();
        tx.flush().unwrap();
        let (_, receiver) = keys_pair();
        let mut rx = Encrypted::new(Pipe::new(tx.inner.wire.get_ref().clone()), receiver);
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

    /// The plaintext length of each record on `wire`, in order.
    fn record_lengths(wire: &[u8]) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let len = BigEndian::read_u32(&wire[at..]) as usize;
            lens.push(len - TAG_LEN);
            at += HEADER_LEN + len;
        }
        assert_eq!(at, wire.len(), "the wire ends with a whole record");
        lens
    }

    /// Sealing straight from the caller's buffer must not move a record
    /// boundary: bytes written are gathered into records of RECORD_MAX,
    /// whatever the sizes of the writes, and a flush closes a short one.
    #[test]
    fn records_are_cut_where_the_protocol_says_whatever_the_writes() {
        let big = vec![1u8; 3 * RECORD_MAX + 5];
        assert_eq!(
            record_lengths(&sealed(&[b"hello", &big, b"tail"], false)),
            [RECORD_MAX, RECORD_MAX, RECORD_MAX, 14]
        );
        assert_eq!(
            record_lengths(&sealed(&[&big[..2 * RECORD_MAX], b"x"], false)),
            [RECORD_MAX, RECORD_MAX, 1]
        );
        assert_eq!(
            record_lengths(&wire(&[b"hello", &big, b"tail"])),
            [5, RECORD_MAX, RECORD_MAX, RECORD_MAX, 5, 4]
        );
        assert_eq!(record_lengths(&wire(&[b"", b"a", b""])), [1]);
        // Many whole records: more than one buffer's worth.
        let many = vec![2u8; (2 * RECORDS_PER_IO + 1) * RECORD_MAX];
        assert_eq!(
            record_lengths(&sealed(&[b"x", &many], false)),
            [vec![RECORD_MAX; 2 * RECORDS_PER_IO + 1], vec![1]].concat()
        );
    }

    /// Bulk data crosses the link in writes and reads of several records
    /// each (the system calls that would cost), not a record at a time.
    #[test]
    fn bulk_data_moves_in_few_large_writes_and_reads() {
        let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let (ours, theirs) = keys_pair();
        let mut link = Pipe::new(Vec::new());
        let mut tx = Encrypted::new(&mut link, ours);
        for chunk in data.chunks(1024 * 1024) {
            tx.write_all(chunk).unwrap();
        }
        tx.flush().unwrap();
        drop(tx);
        let records = data.len().div_ceil(RECORD_MAX);
        assert_eq!(link.writes, records.div_ceil(RECORDS_PER_IO));
        link.wire.set_position(0);
        let mut rx = Encrypted::new(&mut link, theirs);
        let mut got = vec![0u8; data.len()];
        let mut filled = 0;
        while filled < got.len() {
            let want = (got.len() - filled).min(1024 * 1024);
            filled += rx.read(&mut got[filled..filled + want]).unwrap();
        }
        assert_eq!(rx.read(&mut [0u8; 16]).unwrap(), 0);
        drop(rx);
        assert!(got == data, "the bytes read back differ");
        // One read per buffer's worth, plus the one that finds the end.
        assert!(
            link.reads <= records.div_ceil(RECORDS_PER_IO - 1) + 1,
            "{} reads",
            link.reads
        );
    }

    proptest::proptest! {
        /// Reads of any sizes over a link that delivers any pieces give
        /// back exactly what was written, across record boundaries.
        #[test]
        fn any_reads_over_any_pieces_give_back_the_same(
            sizes in proptest::collection::vec(1usize..200_000, 1..6),
            reads in proptest::collection::vec(1usize..150_000, 1..20),
            piece in 1usize..100_000,
        ) {
            let parts: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(k, &n)| vec![k as u8; n]).collect();
            let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            let (_, theirs) = keys_pair();
            let mut link = Pipe { piece, ..Pipe::new(wire(&slices)) };
            let mut rx = Encrypted::new(&mut link, theirs);
            let mut got = Vec::new();
            let mut k = 0;
            loop {
                let mut buf = vec![0u8; reads[k % reads.len()]];
                k += 1;
                let n = rx.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            proptest::prop_assert!(got == parts.concat());
        }
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
