//! The xfer wire format (version 3): the connection preamble and the control
//! frames, as pure encode/decode over byte buffers and any `Read`/`Write`.
//!
//! This module owns the byte layout described in docs/PROTOCOL.md. It must
//! never open sockets or files, read a clock, or allocate based on a length
//! it has not checked against a cap first. Every decoder is total: malformed
//! input yields a [`ProtocolError`], never a panic.

mod chunks;
mod frame;
mod preamble;

pub use chunks::{ChunkReader, ChunkWriter, DATA_FRAME, FLAG_STREAM, MAX_DATA_CHUNK};
pub use frame::{
    Accept, Ack, AckStatus, ErrorFrame, FLAG_CHECKSUM, FLAG_COMPRESSED, FLAG_DIR, FLAG_HARDLINK,
    FLAG_OWNER, FLAG_PATH, FLAG_SYMLINK, FLAG_XATTRS, Frame, FrameType, KNOWN_FLAGS,
    MAX_CONTROL_FRAME, MAX_LINK_LEN, MAX_MESSAGE_LEN, MAX_NAME_LEN, MAX_OWNER_NAME, MAX_PAKE_LEN,
    MAX_PATH_LEN, MAX_XATTRS, Offer, Owner, Reason, Refuse, Trailer, Xattr, offer_digest,
    parse_retry_hint, read_frame, read_frame_capped, retry_hint, write_frame,
};
pub use preamble::{CAP_ZSTD, MAGIC, PREAMBLE_LEN, Preamble, Transport, VERSION, read_preamble};

/// Length of a SHA-256 digest on the wire.
pub const DIGEST_LEN: usize = 32;

/// A SHA-256 digest as carried in frames.
pub type Digest = [u8; DIGEST_LEN];

/// Why bytes from a peer could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("peer is not speaking the xfer protocol (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("peer speaks xfer protocol version {theirs}, this xfer speaks version {ours}")]
    VersionMismatch { theirs: u16, ours: u16 },
    #[error("peer asked for transport {0}, which this xfer does not support")]
    UnsupportedTransport(u8),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("frame of {len} bytes exceeds the {cap}-byte limit")]
    FrameTooLarge { len: u32, cap: u32 },
    #[error("malformed {what} frame: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
    #[error("expected {expected} frame, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("connection closed by peer")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Lowercase hex of a digest (or any bytes), as printed to users and in JSON.
pub fn hex(digest: &[u8]) -> String {
    // By table, not `write!` per byte: it names every partial file on the
    // receiver (`write!` per byte took about 4 % of its CPU on small files).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * digest.len());
    for b in digest {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The one read loop: fills `buf` from `reader` until it is full or the
/// reader ends, retrying interrupted reads. Returns how much it filled, and
/// the error that stopped it early if one did (an end is not an error
/// here: `filled < buf.len()` with `Ok` says the reader ended).
pub fn read_full<R: std::io::Read + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
) -> (usize, std::io::Result<()>) {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Err(e)),
        }
    }
    (filled, Ok(()))
}

/// Reads exactly `buf.len()` bytes, telling a clean close before the first
/// byte (`Closed`) apart from a truncation mid-way (an `UnexpectedEof` I/O
/// error), so callers can word the two differently.
pub fn read_exact_or_closed<R: std::io::Read + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), ProtocolError> {
    match read_full(reader, buf) {
        (_, Err(e)) => Err(ProtocolError::Io(e)),
        (n, Ok(())) if n == buf.len() => Ok(()),
        (0, Ok(())) => Err(ProtocolError::Closed),
        (_, Ok(())) => Err(ProtocolError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a frame",
        ))),
    }
}
