//! The 8-byte preamble each side sends first: magic, version, transport.
//!
//! Its layout is frozen across versions so that peers of different versions
//! can always tell each other apart and say so clearly.

use std::io::{Read, Write};

use byteorder::{BigEndian, ByteOrder};

use super::{ProtocolError, read_exact_or_closed};

/// The four bytes every xfer connection starts with: ASCII "XFER".
pub const MAGIC: [u8; 4] = *b"XFER";
/// The protocol version this implementation speaks. Version 2 added
/// TRAILER.offer_sha256; version 3 made names bytes, added links, owners,
/// extended attributes and compression, and the capability byte. Peers of
/// other versions are told apart by the preamble.
pub const VERSION: u16 = 3;
/// Capability bit: this side decodes zstd-compressed blocks.
pub const CAP_ZSTD: u8 = 0x1;
/// Size of the preamble on the wire.
pub const PREAMBLE_LEN: usize = 8;

/// How the bytes after the preamble are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Frames and data in the clear (`--insecure` on both ends).
    Plain,
    /// SPAKE2 keyed by a short code typed by a person, then AES-256-GCM
    /// records.
    Code,
    /// SPAKE2 keyed by a 256-bit key from a key file, then AES-256-GCM
    /// records.
    Key,
    /// A value this implementation does not know.
    Other(u8),
}

impl Transport {
    fn to_byte(self) -> u8 {
        match self {
            Transport::Plain => 0,
            Transport::Code => 1,
            Transport::Key => 2,
            Transport::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            0 => Transport::Plain,
            1 => Transport::Code,
            2 => Transport::Key,
            other => Transport::Other(other),
        }
    }
}

/// What one side announces before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub version: u16,
    pub transport: Transport,
    /// What this side can decode (`CAP_*` bits); unknown bits are ignored.
    pub capabilities: u8,
}

impl Preamble {
    /// The preamble this implementation sends for `transport`.
    pub fn ours(transport: Transport) -> Self {
        Preamble {
            version: VERSION,
            transport,
            capabilities: CAP_ZSTD,
        }
    }

    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        BigEndian::write_u16(&mut out[4..6], self.version);
        out[6] = self.transport.to_byte();
        out[7] = self.capabilities;
        out
    }

    /// Decodes a preamble without judging version or transport, so the
    /// caller can report a mismatch in its own words.
    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Self, ProtocolError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        Ok(Preamble {
            version: BigEndian::read_u16(&bytes[4..6]),
            transport: Transport::from_byte(bytes[6]),
            capabilities: bytes[7],
        })
    }

    /// Checks that the peer's preamble is one this implementation can talk to.
    pub fn check_compatible(&self) -> Result<(), ProtocolError> {
        if self.version != VERSION {
            return Err(ProtocolError::VersionMismatch {
                theirs: self.version,
                ours: VERSION,
            });
        }
        match self.transport {
            Transport::Plain | Transport::Code | Transport::Key => Ok(()),
            Transport::Other(b) => Err(ProtocolError::UnsupportedTransport(b)),
        }
    }

    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode())
    }
}

/// Reads and decodes the peer's preamble (without checking compatibility).
pub fn read_preamble<R: Read + ?Sized>(r: &mut R) -> Result<Preamble, ProtocolError> {
    let mut buf = [0u8; PREAMBLE_LEN];
    read_exact_or_closed(r, &mut buf)?;
    Preamble::decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips() {
        let p = Preamble::ours(Transport::Plain);
        let bytes = p.encode();
        assert_eq!(&bytes[..4], b"XFER");
        assert_eq!(read_preamble(&mut &bytes[..]).unwrap(), p);
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut bytes = Preamble::ours(Transport::Plain).encode();
        bytes[0] = b'G';
        assert!(matches!(
            read_preamble(&mut &bytes[..]),
            Err(ProtocolError::BadMagic(_))
        ));
    }

    #[test]
    fn other_version_is_reported_as_mismatch() {
        let mut bytes = Preamble::ours(Transport::Plain).encode();
        // A version 2 peer: its names are UTF-8 strings and it knows no
        // links, owners or compression.
        bytes[5] = 2;
        let p = read_preamble(&mut &bytes[..]).unwrap();
        let err = p.check_compatible().unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::VersionMismatch { theirs: 2, ours: 3 }
        ));
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn unknown_transport_is_rejected() {
        let mut bytes = Preamble::ours(Transport::Plain).encode();
        bytes[6] = 7;
        assert_eq!(
            read_preamble(&mut &Preamble::ours(Transport::Key).encode()[..])
                .unwrap()
                .transport,
            Transport::Key
        );
        let p = read_preamble(&mut &bytes[..]).unwrap();
        assert!(matches!(
            p.check_compatible(),
            Err(ProtocolError::UnsupportedTransport(7))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_eight_bytes_decode_or_fail_cleanly(bytes in proptest::array::uniform8(proptest::prelude::any::<u8>())) {
            if let Ok(p) = Preamble::decode(&bytes) {
                let _ = p.check_compatible();
                proptest::prop_assert_eq!(p.encode(), bytes);
            }
        }
    }

    #[test]
    fn truncated_preamble_is_an_error() {
        let bytes = Preamble::ours(Transport::Plain).encode();
        assert!(read_preamble(&mut &bytes[..5]).is_err());
        assert!(matches!(
            read_preamble(&mut &[][..]),
            Err(ProtocolError::Closed)
        ));
    }
}
