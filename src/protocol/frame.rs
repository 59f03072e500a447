//! Control frames: a 1-byte type, a big-endian u32 payload length, then the
//! payload. One encode/decode pair per frame, each decoder bounded and total.

use std::io::{Read, Write};

use byteorder::{BigEndian, ByteOrder, WriteBytesExt};
use sha2::{Digest as _, Sha256};

use super::{DIGEST_LEN, Digest, ProtocolError, read_exact_or_closed};

/// Largest control-frame payload accepted, checked before any allocation.
pub const MAX_CONTROL_FRAME: u32 = 64 * 1024;
/// Longest file name a v1 offer may carry (one path component, in bytes).
pub const MAX_NAME_LEN: usize = 255;
/// Longest human-readable message carried in a frame; longer ones are cut.
pub const MAX_MESSAGE_LEN: usize = 1024;

const HEADER_LEN: usize = 5;

/// The frame types of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Offer = 0x01,
    Accept = 0x02,
    Refuse = 0x03,
    Trailer = 0x04,
    Ack = 0x05,
    End = 0x06,
    Error = 0x07,
    Start = 0x09,
    Skip = 0x0a,
    Pake = 0x10,
    Confirm = 0x11,
}

impl FrameType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => FrameType::Offer,
            0x02 => FrameType::Accept,
            0x03 => FrameType::Refuse,
            0x04 => FrameType::Trailer,
            0x05 => FrameType::Ack,
            0x06 => FrameType::End,
            0x07 => FrameType::Error,
            0x09 => FrameType::Start,
            0x0a => FrameType::Skip,
            0x10 => FrameType::Pake,
            0x11 => FrameType::Confirm,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameType::Offer => "OFFER",
            FrameType::Accept => "ACCEPT",
            FrameType::Refuse => "REFUSE",
            FrameType::Trailer => "TRAILER",
            FrameType::Ack => "ACK",
            FrameType::End => "END",
            FrameType::Error => "ERROR",
            FrameType::Start => "START",
            FrameType::Skip => "SKIP",
            FrameType::Pake => "PAKE",
            FrameType::Confirm => "CONFIRM",
        }
    }
}

/// Why a receiver refused or aborted, carried as a u16 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The destination exists and overwriting was not allowed.
    Exists,
    /// The name is not one plain path component.
    BadName,
    /// Not enough free space, or larger than the receiver allows.
    TooLarge,
    /// The offer asks for a feature this receiver does not implement.
    Unsupported,
    /// The receiver could not write the file (permission, disk full, ...).
    LocalIo,
    /// The peer broke the protocol.
    Protocol,
    /// The receiver is busy (too many connections).
    Busy,
    /// A deadline passed.
    Timeout,
    /// The side sending it was interrupted or is shutting down.
    Interrupted,
    /// Authentication failed: wrong code or key, or none where one is
    /// required.
    Auth,
    /// Data failed verification in transit (an encrypted record that did
    /// not open).
    Integrity,
    /// A code this implementation does not know.
    Other(u16),
}

impl Reason {
    pub fn code(self) -> u16 {
        match self {
            Reason::Exists => 1,
            Reason::BadName => 2,
            Reason::TooLarge => 3,
            Reason::Unsupported => 4,
            Reason::LocalIo => 5,
            Reason::Protocol => 6,
            Reason::Busy => 7,
            Reason::Timeout => 8,
            Reason::Interrupted => 9,
            Reason::Auth => 10,
            Reason::Integrity => 11,
            Reason::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            1 => Reason::Exists,
            2 => Reason::BadName,
            3 => Reason::TooLarge,
            4 => Reason::Unsupported,
            5 => Reason::LocalIo,
            6 => Reason::Protocol,
            7 => Reason::Busy,
            8 => Reason::Timeout,
            9 => Reason::Interrupted,
            10 => Reason::Auth,
            11 => Reason::Integrity,
            other => Reason::Other(other),
        }
    }
}

/// Sender -> receiver: one entry is on offer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    /// Feature bits (`FLAG_*`). CHECKSUM, OWNER and XATTRS are not kept
    /// here: the encoder sets them from the fields below.
    pub flags: u32,
    pub size: u64,
    /// Unix mode bits of the source file.
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch, and nanoseconds.
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// The name as bytes (Linux names are bytes, not text), judged by the
    /// receiver, not by the decoder.
    pub name: Vec<u8>,
    /// With [`FLAG_SYMLINK`], the link's target; with [`FLAG_HARDLINK`],
    /// the name of the earlier entry it links to. On the wire right after
    /// the name, present exactly when one of those flags is set.
    pub link: Option<Vec<u8>>,
    /// With `--checksum`: the file's SHA-256, so the receiver can tell an
    /// identical file apart from a changed one of the same size. On the
    /// wire it follows the name, and flag [`FLAG_CHECKSUM`] says so.
    pub sha256: Option<Digest>,
    /// The source's owner and group ([`FLAG_OWNER`]).
    pub owner: Option<Owner>,
    /// Extended attributes ([`FLAG_XATTRS`]).
    pub xattrs: Option<Vec<Xattr>>,
}

impl Offer {
    /// A symbolic or hard link entry.
    pub fn is_link(&self) -> bool {
        self.flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0
    }
}

/// Owner and group of an entry: numbers, and names (empty when the sender
/// has none for the number).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Vec<u8>,
    pub group: Vec<u8>,
}

/// One extended attribute: its full name (`user.comment`) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// OFFER flag: a 32-byte SHA-256 of the whole file follows the name.
pub const FLAG_CHECKSUM: u32 = 0x2;
/// OFFER flag: the entry is a directory (size 0, no data).
pub const FLAG_DIR: u32 = 0x4;
/// OFFER flag: the name is a relative path of components joined by `/`.
pub const FLAG_PATH: u32 = 0x8;
/// OFFER flag: the entry is a symbolic link; its data is the link's target.
pub const FLAG_SYMLINK: u32 = 0x10;
/// OFFER flag: the entry is a hard link to an earlier file entry of the
/// session; its data is that entry's name.
pub const FLAG_HARDLINK: u32 = 0x20;
/// OFFER flag: owner and group follow (after the digest, if any).
pub const FLAG_OWNER: u32 = 0x40;
/// OFFER flag: extended attributes follow (last).
pub const FLAG_XATTRS: u32 = 0x80;
/// OFFER flag: the data travels as compressed blocks (only to a receiver
/// whose preamble offered it).
pub const FLAG_COMPRESSED: u32 = 0x100;
/// Every flag this version defines.
pub const KNOWN_FLAGS: u32 = 0x1ff;
/// Longest relative path an OFFER with [`FLAG_PATH`] may carry, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest symbolic link target, and so the largest SYMLINK or HARDLINK
/// entry (`PATH_MAX` less the NUL on Linux).
pub const MAX_LINK_LEN: u64 = 4095;
/// Longest owner or group name.
pub const MAX_OWNER_NAME: usize = 255;
/// Most extended attributes on one entry.
pub const MAX_XATTRS: usize = 256;

impl Frame {
    /// Reads the fields after an OFFER's name that its flags announce.
    fn with_extras_from(mut self, c: &mut Cursor<'_>) -> Result<Frame, ProtocolError> {
        if let Frame::Offer(o) = &mut self {
            if o.flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0 {
                o.link = Some(c.string_bytes()?.to_vec());
            }
            if o.flags & FLAG_CHECKSUM != 0 {
                o.sha256 = Some(c.digest()?);
            }
            if o.flags & FLAG_OWNER != 0 {
                o.owner = Some(Owner {
                    uid: c.u32()?,
                    gid: c.u32()?,
                    user: c.short_bytes()?.to_vec(),
                    group: c.short_bytes()?.to_vec(),
                });
            }
            if o.flags & FLAG_XATTRS != 0 {
                let count = usize::from(c.u16()?);
                if count > MAX_XATTRS {
                    return Err(c.malformed("too many extended attributes"));
                }
                let mut xattrs = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = c.short_bytes()?;
                    if name.is_empty() {
                        return Err(c.malformed("empty extended attribute name"));
                    }
                    xattrs.push(Xattr {
                        name: name.to_vec(),
                        value: c.string_bytes()?.to_vec(),
                    });
                }
                o.xattrs = Some(xattrs);
            }
            o.flags &= !(FLAG_CHECKSUM | FLAG_OWNER | FLAG_XATTRS);
        }
        Ok(self)
    }
}

/// Receiver -> sender: send the data, starting at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// Bytes the receiver already holds; always 0 in version 1.
    pub offset: u64,
    /// SHA-256 of the bytes the receiver holds (all zero when offset is 0).
    pub prefix_sha256: Digest,
}

/// Receiver -> sender: the offer is declined; no data may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refuse {
    pub reason: Reason,
    pub message: String,
}

/// Sender -> receiver, right after the data: how much was sent and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub size: u64,
    pub sha256: Digest,
    /// SHA-256 of the OFFER's payload as the sender encoded it: the name,
    /// size, mode and times the data belongs to, checked end to end like
    /// the data (see [`offer_digest`]).
    pub offer_sha256: Digest,
    /// The file changed (size, mtime or ctime) while the sender read it:
    /// the data is what was read, which may mix old and new content.
    pub changed: bool,
}

/// The receiver's verdict on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Digest matched and the file is in place under its final name.
    Ok,
    /// The receiver computed a different digest; nothing was kept.
    DigestMismatch,
    /// The data arrived but could not be kept; `reason` says why.
    Failed,
}

/// Receiver -> sender: the verdict, with the receiver's own digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub status: AckStatus,
    pub sha256: Digest,
    pub reason: Reason,
    pub message: String,
}

/// Either side: the session is aborted; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub reason: Reason,
    pub message: String,
}

/// Every control frame of protocol version 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Offer(Offer),
    Accept(Accept),
    Refuse(Refuse),
    Trailer(Trailer),
    Ack(Ack),
    /// Sender -> receiver: no more offers in this session; `failed`
    /// entries failed on the sender (could not be read, listed or opened)
    /// and were never offered, the first for the reason in `message`.
    End {
        failed: u32,
        message: String,
    },
    Error(ErrorFrame),
    /// Sender -> receiver, after an ACCEPT with a non-zero offset: where
    /// the data starts (that offset to resume, or 0 to start over).
    Start {
        offset: u64,
    },
    /// Receiver -> sender, instead of ACCEPT: the destination already holds
    /// this very file (quick check or checksum); no data follows.
    Skip {
        message: String,
    },
    /// Either side, first thing after the preambles of an authenticated
    /// transport: its SPAKE2 message.
    Pake {
        message: Vec<u8>,
    },
    /// Either side, after both PAKE frames: proof that it derived the same
    /// key (the sender's first; the receiver answers only a correct one).
    Confirm {
        mac: Digest,
    },
}

/// Longest SPAKE2 message accepted (Ed25519 messages are 33 bytes).
pub const MAX_PAKE_LEN: usize = 64;

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Offer(_) => FrameType::Offer,
            Frame::Accept(_) => FrameType::Accept,
            Frame::Refuse(_) => FrameType::Refuse,
            Frame::Trailer(_) => FrameType::Trailer,
            Frame::Ack(_) => FrameType::Ack,
            Frame::End { .. } => FrameType::End,
            Frame::Error(_) => FrameType::Error,
            Frame::Start { .. } => FrameType::Start,
            Frame::Skip { .. } => FrameType::Skip,
            Frame::Pake { .. } => FrameType::Pake,
            Frame::Confirm { .. } => FrameType::Confirm,
        }
    }

    pub fn name(&self) -> &'static str {
        self.frame_type().name()
    }

    /// END with nothing failed on the sender's side.
    pub fn end() -> Frame {
        Frame::End {
            failed: 0,
            message: String::new(),
        }
    }

    /// The whole frame, header included, ready for one `write_all`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.frame_type() as u8, 0, 0, 0, 0];
        self.encode_payload(&mut out);
        let len = u32::try_from(out.len() - HEADER_LEN).expect("payloads are far below 4 GiB");
        BigEndian::write_u32(&mut out[1..HEADER_LEN], len);
        out
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        // Writes into a Vec cannot fail.
        match self {
            Frame::Offer(o) => encode_offer(o, out),
            Frame::Accept(a) => {
                out.write_u64::<BigEndian>(a.offset).unwrap();
                out.extend_from_slice(&a.prefix_sha256);
            }
            Frame::Refuse(r) => {
                out.write_u16::<BigEndian>(r.reason.code()).unwrap();
                put_string(out, &r.message, MAX_MESSAGE_LEN);
            }
            Frame::Trailer(t) => {
                out.write_u64::<BigEndian>(t.size).unwrap();
                out.extend_from_slice(&t.sha256);
                out.extend_from_slice(&t.offer_sha256);
                out.push(u8::from(t.changed));
            }
            Frame::Ack(a) => {
                out.push(match a.status {
                    AckStatus::Ok => 0,
                    AckStatus::DigestMismatch => 1,
                    AckStatus::Failed => 2,
                });
                out.extend_from_slice(&a.sha256);
                out.write_u16::<BigEndian>(a.reason.code()).unwrap();
                put_string(out, &a.message, MAX_MESSAGE_LEN);
            }
            Frame::End { failed, message } => {
                out.write_u32::<BigEndian>(*failed).unwrap();
                put_string(out, message, MAX_MESSAGE_LEN);
            }
            Frame::Start { offset } => out.write_u64::<BigEndian>(*offset).unwrap(),
            Frame::Skip { message } => put_string(out, message, MAX_MESSAGE_LEN),
            Frame::Pake { message } => {
                assert!(message.len() <= MAX_PAKE_LEN, "SPAKE2 messages are short");
                put_string_bytes(out, message);
            }
            Frame::Confirm { mac } => out.extend_from_slice(mac),
            Frame::Error(e) => {
                out.write_u16::<BigEndian>(e.reason.code()).unwrap();
                put_string(out, &e.message, MAX_MESSAGE_LEN);
            }
        }
    }

    /// Decodes one frame's payload, given its type byte. Total: any input
    /// gives a frame or an error.
    pub fn decode(type_byte: u8, payload: &[u8]) -> Result<Frame, ProtocolError> {
        let ty =
            FrameType::from_byte(type_byte).ok_or(ProtocolError::UnknownFrameType(type_byte))?;
        let mut c = Cursor::new(ty.name(), payload);
        let frame = match ty {
            FrameType::Offer => Frame::Offer(Offer {
                flags: c.u32()?,
                size: c.u64()?,
                mode: c.u32()?,
                mtime_secs: c.i64()?,
                mtime_nanos: {
                    let n = c.u32()?;
                    if n >= 1_000_000_000 {
                        return Err(c.malformed("mtime nanoseconds out of range"));
                    }
                    n
                },
                name: c.string_bytes()?.to_vec(),
                ..Offer::default()
            })
            .with_extras_from(&mut c)?,
            FrameType::Accept => Frame::Accept(Accept {
                offset: c.u64()?,
                prefix_sha256: c.digest()?,
            }),
            FrameType::Refuse => Frame::Refuse(Refuse {
                reason: Reason::from_code(c.u16()?),
                message: c.message()?,
            }),
            FrameType::Trailer => Frame::Trailer(Trailer {
                size: c.u64()?,
                sha256: c.digest()?,
                offer_sha256: c.digest()?,
                changed: match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(c.malformed("unknown trailer flags")),
                },
            }),
            FrameType::Ack => Frame::Ack(Ack {
                status: match c.u8()? {
                    0 => AckStatus::Ok,
                    1 => AckStatus::DigestMismatch,
                    2 => AckStatus::Failed,
                    _ => return Err(c.malformed("unknown status")),
                },
                sha256: c.digest()?,
                reason: Reason::from_code(c.u16()?),
                message: c.message()?,
            }),
            FrameType::End => Frame::End {
                failed: c.u32()?,
                message: c.message()?,
            },
            FrameType::Start => Frame::Start { offset: c.u64()? },
            FrameType::Skip => Frame::Skip {
                message: c.message()?,
            },
            FrameType::Pake => Frame::Pake {
                message: {
                    let bytes = c.string_bytes()?;
                    if bytes.len() > MAX_PAKE_LEN {
                        return Err(c.malformed("key-exchange message too long"));
                    }
                    bytes.to_vec()
                },
            },
            FrameType::Confirm => Frame::Confirm { mac: c.digest()? },
            FrameType::Error => Frame::Error(ErrorFrame {
                reason: Reason::from_code(c.u16()?),
                message: c.message()?,
            }),
        };
        c.finish()?;
        Ok(frame)
    }
}

/// An OFFER's payload (without the frame header).
fn encode_offer(o: &Offer, out: &mut Vec<u8>) {
    // Writes into a Vec cannot fail.
    // CHECKSUM, OWNER and XATTRS say whether their fields follow the name.
    let present = |on: bool, flag: u32| if on { flag } else { 0 };
    let flags = (o.flags & !(FLAG_CHECKSUM | FLAG_OWNER | FLAG_XATTRS))
        | present(o.sha256.is_some(), FLAG_CHECKSUM)
        | present(o.owner.is_some(), FLAG_OWNER)
        | present(o.xattrs.is_some(), FLAG_XATTRS);
    out.write_u32::<BigEndian>(flags).unwrap();
    out.write_u64::<BigEndian>(o.size).unwrap();
    out.write_u32::<BigEndian>(o.mode).unwrap();
    out.write_i64::<BigEndian>(o.mtime_secs).unwrap();
    out.write_u32::<BigEndian>(o.mtime_nanos).unwrap();
    put_string_bytes(out, &o.name[..o.name.len().min(usize::from(u16::MAX))]);
    if flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0 {
        let link = o.link.as_deref().unwrap_or_default();
        put_string_bytes(out, &link[..link.len().min(usize::from(u16::MAX))]);
    }
    if let Some(digest) = &o.sha256 {
        out.extend_from_slice(digest);
    }
    if let Some(owner) = &o.owner {
        out.write_u32::<BigEndian>(owner.uid).unwrap();
        out.write_u32::<BigEndian>(owner.gid).unwrap();
        put_short_bytes(out, &owner.user);
        put_short_bytes(out, &owner.group);
    }
    if let Some(xattrs) = &o.xattrs {
        let count = xattrs.len().min(MAX_XATTRS);
        out.write_u16::<BigEndian>(count as u16).unwrap();
        for x in &xattrs[..count] {
            put_short_bytes(out, &x.name);
            put_string_bytes(out, &x.value[..x.value.len().min(usize::from(u16::MAX))]);
        }
    }
}

/// Appends a u8 length and at most 255 bytes.
fn put_short_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(MAX_OWNER_NAME)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// SHA-256 of an OFFER's payload: what TRAILER.offer_sha256 carries. The
/// receiver recomputes it from the offer it decoded, whose encoding is
/// canonical (a decoder takes no other bytes for the same offer), so any
/// change in transit to the name, size, mode, times or flags shows.
pub fn offer_digest(o: &Offer) -> Digest {
    let mut payload = Vec::with_capacity(64 + o.name.len());
    encode_offer(o, &mut payload);
    Sha256::digest(&payload).into()
}

/// Writes one frame with write-all semantics.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode())
}

/// Reads one frame: the header, the length checked against
/// [`MAX_CONTROL_FRAME`] before allocating, then exactly that many bytes.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Frame, ProtocolError> {
    read_frame_capped(r, MAX_CONTROL_FRAME)
}

/// [`read_frame`] with a lower cap than the protocol's (a receiver's
/// `--max-frame`); a cap above [`MAX_CONTROL_FRAME`] counts as that.
pub fn read_frame_capped<R: Read + ?Sized>(r: &mut R, cap: u32) -> Result<Frame, ProtocolError> {
    let cap = cap.min(MAX_CONTROL_FRAME);
    let mut header = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut header)?;
    let len = BigEndian::read_u32(&header[1..]);
    if len > cap {
        return Err(ProtocolError::FrameTooLarge { len, cap });
    }
    if FrameType::from_byte(header[0]).is_none() {
        return Err(ProtocolError::UnknownFrameType(header[0]));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact_or_closed(r, &mut payload).map_err(|e| match e {
        ProtocolError::Closed => ProtocolError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a frame",
        )),
        other => other,
    })?;
    Frame::decode(header[0], &payload)
}

/// Appends a u16 length and the bytes (at most 64 KiB - 1, checked by callers).
fn put_string_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.write_u16::<BigEndian>(bytes.len() as u16).unwrap();
    out.extend_from_slice(bytes);
}

/// Appends a u16 length and the string's bytes, cut to at most `max` bytes
/// at a character boundary.
fn put_string(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &s.as_bytes()[..end];
    out.write_u16::<BigEndian>(bytes.len() as u16).unwrap();
    out.extend_from_slice(bytes);
}

/// A bounds-checked reader over one payload.
struct Cursor<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Cursor { what, buf }
    }

    fn malformed(&self, detail: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            what: self.what,
            detail,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed("payload too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(BigEndian::read_u16(self.take(2)?))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(BigEndian::read_u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(BigEndian::read_u64(self.take(8)?))
    }
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(BigEndian::read_i64(self.take(8)?))
    }
    fn digest(&mut self) -> Result<Digest, ProtocolError> {
        let mut d = [0u8; DIGEST_LEN];
        d.copy_from_slice(self.take(DIGEST_LEN)?);
        Ok(d)
    }
    fn short_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u8()?);
        self.take(len)
    }
    fn string_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }
    /// A human-readable message: bounded, and decoded leniently because it
    /// is only ever shown, escaped, never acted upon.
    fn message(&mut self) -> Result<String, ProtocolError> {
        let bytes = self.string_bytes()?;
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(self.malformed("message too long"));
        }
        // Replacement characters take 3 bytes where the invalid byte took 1;
        // cut again so a decoded message keeps the documented bound.
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        let mut end = text.len().min(MAX_MESSAGE_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        Ok(text)
    }
    fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes after payload"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Offer(Offer {
                flags: 0,
                size: 5 * 1024 * 1024 * 1024,
                mode: 0o100644,
                mtime_secs: -12,
                mtime_nanos: 999_999_999,
                name: "résumé ✓.pdf".into(),
                sha256: Some([9; 32]),
                ..Default::default()
            }),
            Frame::Offer(Offer {
                flags: 0,
                size: 0,
                mode: 0,
                mtime_secs: 0,
                mtime_nanos: 0,
                name: Vec::new(),
                sha256: None,
                ..Default::default()
            }),
            Frame::Accept(Accept {
                offset: 0,
                prefix_sha256: [0; 32],
            }),
            Frame::Accept(Accept {
                offset: u64::MAX,
                prefix_sha256: [0xab; 32],
            }),
            Frame::Refuse(Refuse {
                reason: Reason::Exists,
                message: "'a.txt' already exists".into(),
            }),
            Frame::Refuse(Refuse {
                reason: Reason::Other(999),
                message: String::new(),
            }),
            Frame::Trailer(Trailer {
                size: 42,
                sha256: [7; 32],
                offer_sha256: [9; 32],
                changed: false,
            }),
            Frame::Ack(Ack {
                status: AckStatus::Ok,
                sha256: [1; 32],
                reason: Reason::Other(0),
                message: String::new(),
            }),
            Frame::Ack(Ack {
                status: AckStatus::DigestMismatch,
                sha256: [2; 32],
                reason: Reason::Other(0),
                message: "digest mismatch".into(),
            }),
            Frame::Ack(Ack {
                status: AckStatus::Failed,
                sha256: [3; 32],
                reason: Reason::LocalIo,
                message: "no space".into(),
            }),
            Frame::end(),
            Frame::End {
                failed: 3,
                message: "cannot read 'x'".into(),
            },
            Frame::Start { offset: 0 },
            Frame::Skip {
                message: "unchanged".into(),
            },
            Frame::Pake {
                message: vec![0x5a; 33],
            },
            Frame::Confirm { mac: [7; 32] },
            Frame::Start {
                offset: 123_456_789_012,
            },
            Frame::Error(ErrorFrame {
                reason: Reason::Timeout,
                message: "idle for 30s".into(),
            }),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let bytes = frame.encode();
            let back = read_frame(&mut &bytes[..]).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn frames_read_back_to_back_from_one_stream() {
        let frames = samples();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        let mut r = &stream[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r).unwrap(), f);
        }
        assert!(matches!(read_frame(&mut r), Err(ProtocolError::Closed)));
    }

    #[test]
    fn header_layout_is_type_then_big_endian_length() {
        let bytes = Frame::Trailer(Trailer {
            size: 1,
            sha256: [0; 32],
            offer_sha256: [0; 32],
            changed: false,
        })
        .encode();
        assert_eq!(bytes[0], 0x04);
        assert_eq!(&bytes[1..5], &[0, 0, 0, 73]);
        assert_eq!(&bytes[5..13], &[0, 0, 0, 0, 0, 0, 0, 1]);
    }

    /// The test vectors printed in docs/PROTOCOL.md section 8.
    #[test]
    fn documented_test_vectors_hold() {
        assert_eq!(Frame::end().encode(), [0x06, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Frame::Start { offset: 5 }.encode(),
            [0x09, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]
        );
        let offer = Frame::Offer(Offer {
            flags: 0,
            size: 0,
            mode: 0o100644,
            mtime_secs: 0,
            mtime_nanos: 0,
            name: "a".into(),
            sha256: None,
            ..Default::default()
        });
        let mut want = vec![0x01, 0, 0, 0, 0x1f];
        want.extend([0; 4]);
        want.extend([0; 8]);
        want.extend([0x00, 0x00, 0x81, 0xa4]);
        want.extend([0; 8]);
        want.extend([0; 4]);
        want.extend([0x00, 0x01, b'a']);
        assert_eq!(offer.encode(), want);
        let Frame::Offer(o) = &offer else {
            unreachable!()
        };
        assert_eq!(
            crate::protocol::hex(&offer_digest(o)),
            "befac112e237a516979d1361e226206d11e17d16cf0826f664cc0dbcf7cd8fab"
        );
        assert_eq!(
            crate::protocol::Preamble::ours(crate::protocol::Transport::Plain).encode(),
            [0x58, 0x46, 0x45, 0x52, 0, 3, 0, 1]
        );
        assert_eq!(
            crate::protocol::Preamble::ours(crate::protocol::Transport::Key).encode(),
            [0x58, 0x46, 0x45, 0x52, 0, 3, 2, 1]
        );
        let mut confirm = vec![0x11, 0, 0, 0, 0x20];
        confirm.extend([7; 32]);
        assert_eq!(Frame::Confirm { mac: [7; 32] }.encode(), confirm);
        let mut pake = vec![0x10, 0, 0, 0, 0x23, 0, 0x21];
        pake.extend([9; 33]);
        assert_eq!(
            Frame::Pake {
                message: vec![9; 33]
            }
            .encode(),
            pake
        );
    }

    /// Found by the fuzz target: invalid UTF-8 grew past the bound when
    /// replaced, so the decoded message no longer re-encoded as it came.
    #[test]
    fn a_lossy_message_stays_within_the_bound_and_round_trips() {
        let mut bytes = vec![0x03, 0, 0, 0x04, 0x04, 0, 4, 0x04, 0];
        bytes.extend([0xff; 1024]);
        let frame = read_frame(&mut &bytes[..]).unwrap();
        let Frame::Refuse(refuse) = &frame else {
            panic!("{frame:?}");
        };
        assert!(refuse.message.len() <= MAX_MESSAGE_LEN);
        assert_eq!(read_frame(&mut &frame.encode()[..]).unwrap(), frame);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for frame in samples() {
            let bytes = frame.encode();
            for cut in 0..bytes.len() {
                assert!(
                    read_frame(&mut &bytes[..cut]).is_err(),
                    "{} cut at {cut} was accepted",
                    frame.name()
                );
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_payload() {
        // A 4 GiB length with no payload behind it: must fail on the cap,
        // not try to allocate or read.
        let bytes = [0x01, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ProtocolError::FrameTooLarge {
                len: u32::MAX,
                cap: MAX_CONTROL_FRAME
            })
        ));
        let just_over = (MAX_CONTROL_FRAME + 1).to_be_bytes();
        let bytes = [0x01, just_over[0], just_over[1], just_over[2], just_over[3]];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn unknown_type_is_rejected() {
        let bytes = [0x7f, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ProtocolError::UnknownFrameType(0x7f))
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = Frame::end().encode();
        bytes[4] = 7;
        bytes.push(0);
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn names_are_bytes_and_travel_exactly() {
        let offer = Frame::Offer(Offer {
            size: 1,
            name: b"caf\xe9\n\x1b".to_vec(),
            ..Default::default()
        });
        assert_eq!(read_frame(&mut &offer.encode()[..]).unwrap(), offer);
    }

    #[test]
    fn an_offer_with_every_extra_round_trips_and_a_bad_extra_is_malformed() {
        let offer = Offer {
            flags: FLAG_SYMLINK | FLAG_PATH,
            name: b"t/link".to_vec(),
            link: Some(b"../x".to_vec()),
            sha256: Some([1; 32]),
            owner: Some(Owner {
                uid: 1000,
                gid: 100,
                user: b"alice".to_vec(),
                group: b"users".to_vec(),
            }),
            xattrs: Some(vec![Xattr {
                name: b"user.k".to_vec(),
                value: b"v".to_vec(),
            }]),
            ..Default::default()
        };
        let bytes = Frame::Offer(offer.clone()).encode();
        assert_eq!(read_frame(&mut &bytes[..]).unwrap(), Frame::Offer(offer));
        // An extended attribute with an empty name.
        let mut bad = Offer {
            xattrs: Some(vec![Xattr {
                name: Vec::new(),
                value: Vec::new(),
            }]),
            ..Default::default()
        };
        let bytes = Frame::Offer(bad.clone()).encode();
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ProtocolError::Malformed { .. })
        ));
        // More attributes than the limit.
        bad.xattrs = Some(vec![
            Xattr {
                name: b"user.a".to_vec(),
                value: Vec::new(),
            };
            1
        ]);
        let mut bytes = Frame::Offer(bad).encode();
        let at = bytes.len() - 1 - 6 - 1 - 2;
        bytes[at..at + 2].copy_from_slice(&((MAX_XATTRS + 1) as u16).to_be_bytes());
        assert!(read_frame(&mut &bytes[..]).is_err());
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let bytes = Frame::Error(ErrorFrame {
            reason: Reason::LocalIo,
            message: long,
        })
        .encode();
        match read_frame(&mut &bytes[..]).unwrap() {
            Frame::Error(e) => {
                assert!(e.message.len() <= MAX_MESSAGE_LEN);
                assert!(e.message.chars().all(|c| c == 'é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_frame(&mut &bytes[..]);
        }

        #[test]
        fn decoder_never_panics_on_arbitrary_payloads(ty in 0u8..12, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Frame::decode(ty, &payload);
        }

        #[test]
        fn offers_round_trip(flags: u32, size: u64, mode: u32, secs: i64, nanos in 0u32..1_000_000_000, name in proptest::collection::vec(any::<u8>(), 0..80), link in proptest::collection::vec(any::<u8>(), 0..40), user in proptest::collection::vec(any::<u8>(), 0..40)) {
            let sha256 = if size % 2 == 0 { Some([7u8; 32]) } else { None };
            let flags = flags & !(FLAG_CHECKSUM | FLAG_OWNER | FLAG_XATTRS);
            let link = (flags & (FLAG_SYMLINK | FLAG_HARDLINK) != 0).then_some(link);
            let owner = (size % 3 == 0).then(|| Owner { uid: mode, gid: nanos, user: user.clone(), group: user.clone() });
            let xattrs = (size % 5 == 0).then(|| vec![Xattr { name: b"user.x".to_vec(), value: user.clone() }]);
            let f = Frame::Offer(Offer { flags, size, mode, mtime_secs: secs, mtime_nanos: nanos, name, link, sha256, owner, xattrs });
            prop_assert_eq!(read_frame(&mut &f.encode()[..]).unwrap(), f);
        }
    }
}

/// The end of a busy ERROR's message that says when to come back
/// (docs/PROTOCOL.md, section 6): `retry in N s`, N whole seconds, rounded up.
pub fn retry_hint(after: std::time::Duration) -> String {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    format!("retry in {} s", secs.max(1))
}

/// The wait a busy ERROR's message asks for, if it ends with
/// [`retry_hint`]'s words; at most 10 minutes, whatever it says.
pub fn parse_retry_hint(message: &str) -> Option<std::time::Duration> {
    let rest = message.trim_end().strip_suffix(" s")?;
    let at = rest.rfind("retry in ")?;
    let secs: u64 = rest[at + "retry in ".len()..].parse().ok()?;
    Some(std::time::Duration::from_secs(secs.min(600)))
}

#[cfg(test)]
mod retry_hint_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_busy_message_carries_when_to_come_back() {
        let said = format!(
            "refused after failed attempts; {}",
            retry_hint(Duration::from_millis(8_200))
        );
        assert!(said.ends_with("retry in 9 s"), "{said}");
        assert_eq!(parse_retry_hint(&said), Some(Duration::from_secs(9)));
        assert_eq!(
            parse_retry_hint("retry in 99999 s"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_retry_hint("busy; try again later"), None);
        assert_eq!(parse_retry_hint("retry in soon s"), None);
    }
}
