//! Block compression of file data on the wire.
//!
//! # Format
//!
//! Compressed data is a sequence of blocks, each a 9-byte header followed by
//! a body:
//!
//! | offset | size | field                                      |
//! |--------|------|--------------------------------------------|
//! | 0      | 1    | `kind`: 0 = stored, 1 = zstd               |
//! | 1      | 4    | `original_len`, u32 big-endian             |
//! | 5      | 4    | `body_len`, u32 big-endian                 |
//! | 9      | `body_len` | body                                 |
//!
//! `original_len` is the number of file bytes the block stands for, from 1 to
//! [`MAX_BLOCK`] (256 KiB). A *stored* block's body is those bytes as they are,
//! so its `body_len` equals `original_len`. A *zstd* block's body is exactly
//! one zstd frame that decodes to exactly `original_len` bytes, and is strictly
//! shorter than them (`1 <= body_len < original_len`). Anything else is
//! malformed, and is reported as an [`io::ErrorKind::InvalidData`] error.
//!
//! The blocks carry no count and no end marker: whoever reads them knows from
//! the surrounding protocol how many original bytes to expect, or reads until
//! the inner stream ends at a block boundary. [`DecompressReader`] never reads
//! a byte past the block it needs, so the inner stream can go on with other
//! frames right after the last block.
//!
//! # Bounded memory on hostile input
//!
//! The header is checked before anything is allocated for a block, and a
//! decoder never holds more than [`MAX_BLOCK`] bytes of output or of body.
//! zstd frames are decoded in one shot into a fixed [`MAX_BLOCK`] buffer,
//! which needs no window buffer at all. A frame must nonetheless declare a
//! window of at most `2^`[`WINDOW_LOG_MAX`] bytes (as this module's writer's
//! frames always do). zstd itself enforces its `WindowLogMax` setting only
//! when streaming, so the reader checks the frame header itself; it also sets
//! that limit on its decoder, should decoding ever be switched to streaming.
//!
//! # Adaptive skip
//!
//! [`CompressWriter`] compresses each full buffer of [`MAX_BLOCK`] bytes as
//! one block, and sends it stored instead if zstd does not make it at least
//! [`MIN_SAVING_PERCENT`] % smaller. Trying costs CPU even when it fails, so
//! on incompressible data (already compressed files, media, encrypted
//! archives) the writer backs off: after an incompressible block it sends the
//! next `n` blocks stored without trying, where `n` starts at 1 and doubles
//! after each further failed try, up to [`MAX_SKIP`]. A block that compresses
//! well resets `n` to 1. On a long incompressible stream that means one try
//! every 65 blocks (16.25 MiB), and compressible data that follows is noticed
//! within at most that many blocks.

use std::io::{self, Read, Write};

use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe;

/// Most original bytes one block stands for: 256 KiB.
pub const MAX_BLOCK: usize = 256 * 1024;

/// Size of a block header: kind, `original_len` and `body_len`.
pub const HEADER_LEN: usize = 9;

/// `kind` of a block whose body is the original bytes as they are.
pub const KIND_STORED: u8 = 0;

/// `kind` of a block whose body is one zstd frame.
pub const KIND_ZSTD: u8 = 1;

/// A block is sent compressed only if zstd makes it at least this much smaller
/// (in percent of the original); otherwise it is sent stored.
pub const MIN_SAVING_PERCENT: usize = 3;

/// Most blocks the writer sends stored without trying to compress them, after
/// a run of incompressible blocks (see the module documentation).
pub const MAX_SKIP: u32 = 64;

/// Largest zstd window a block's frame may declare, as a power of two:
/// 2^18 = [`MAX_BLOCK`]. No block needs more, since none is longer.
pub const WINDOW_LOG_MAX: u32 = 18;

/// zstd level that [`CompressWriter`] callers should use unless told
/// otherwise. On source code, level 1 runs about 1.2 times as fast as level 3
/// for output about 6 % larger, and a single core compressing at level 3
/// (about 320 MB/s on the reference VM) is already slower than a gigabit
/// link carrying its output.
pub const DEFAULT_LEVEL: i32 = 1;

/// The first four bytes of every zstd frame (0xFD2FB528, little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Whether a block's body is stored or zstd-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// The body is the original bytes (`kind` 0).
    Stored,
    /// The body is one zstd frame (`kind` 1).
    Zstd,
}

impl BlockKind {
    /// The `kind` byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            BlockKind::Stored => KIND_STORED,
            BlockKind::Zstd => KIND_ZSTD,
        }
    }
}

/// A block header that passed [`decode_block_header`]'s checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// How the body is encoded.
    pub kind: BlockKind,
    /// Number of original bytes the block stands for (1..=[`MAX_BLOCK`]).
    pub original_len: u32,
    /// Number of body bytes following the header.
    pub body_len: u32,
}

impl BlockHeader {
    /// The header's 9 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        encode_header(self.kind, self.original_len, self.body_len)
    }
}

/// Why a block is malformed.
///
/// Converts into an [`io::Error`] of kind [`io::ErrorKind::InvalidData`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The `kind` byte is neither 0 (stored) nor 1 (zstd).
    #[error("compressed block: unknown kind {0}")]
    UnknownKind(u8),
    /// `original_len` is 0.
    #[error("compressed block: header says 0 original bytes")]
    Empty,
    /// `original_len` is over [`MAX_BLOCK`].
    #[error("compressed block: header says {0} original bytes, more than the maximum {MAX_BLOCK}")]
    TooLong(u32),
    /// A stored block whose body length differs from its original length.
    #[error(
        "compressed block: stored block has a {body_len}-byte body, header says {original_len} original bytes"
    )]
    StoredLength { original_len: u32, body_len: u32 },
    /// A zstd block whose body is empty or not shorter than the original.
    #[error(
        "compressed block: zstd body of {body_len} bytes for {original_len} original bytes (must be 1 to {original_len} exclusive)"
    )]
    ZstdBodyLength { original_len: u32, body_len: u32 },
    /// The body is not exactly one zstd frame (another magic number, a
    /// skippable frame, or bytes after the frame).
    #[error("compressed block: body is not exactly one zstd frame")]
    NotOneFrame,
    /// The frame declares a window larger than `2^`[`WINDOW_LOG_MAX`].
    #[error(
        "compressed block: zstd frame declares a {window}-byte window, more than the {} allowed",
        1u64 << WINDOW_LOG_MAX
    )]
    WindowTooLarge { window: u64 },
    /// The frame declares or decodes to another length than the header says.
    #[error("compressed block: zstd frame decodes to {decoded} bytes, header says {expected}")]
    LengthMismatch { decoded: u64, expected: u32 },
    /// zstd refused the frame (corrupt data, or more than [`MAX_BLOCK`] bytes
    /// of output).
    #[error("compressed block: bad zstd frame: {0}")]
    Corrupt(String),
}

impl From<BlockError> for io::Error {
    fn from(e: BlockError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Checks a block header, before anything is read or allocated for its body.
pub fn decode_block_header(h: &[u8; HEADER_LEN]) -> Result<BlockHeader, BlockError> {
    let original_len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let body_len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let kind = match h[0] {
        KIND_STORED => BlockKind::Stored,
        KIND_ZSTD => BlockKind::Zstd,
        other => return Err(BlockError::UnknownKind(other)),
    };
    if original_len == 0 {
        return Err(BlockError::Empty);
    }
    if original_len as usize > MAX_BLOCK {
        return Err(BlockError::TooLong(original_len));
    }
    match kind {
        BlockKind::Stored if body_len != original_len => Err(BlockError::StoredLength {
            original_len,
            body_len,
        }),
        BlockKind::Zstd if body_len == 0 || body_len >= original_len => {
            Err(BlockError::ZstdBodyLength {
                original_len,
                body_len,
            })
        }
        _ => Ok(BlockHeader {
            kind,
            original_len,
            body_len,
        }),
    }
}

fn encode_header(kind: BlockKind, original_len: u32, body_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[0] = kind.code();
    h[1..5].copy_from_slice(&original_len.to_be_bytes());
    h[5..9].copy_from_slice(&body_len.to_be_bytes());
    h
}

/// What a [`CompressWriter`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Original bytes, in blocks already sent.
    pub original: u64,
    /// Bytes written to the inner writer: headers and bodies.
    pub wire: u64,
    /// Blocks sent stored (incompressible, or skipped without trying).
    pub blocks_stored: u64,
    /// Blocks sent zstd-compressed.
    pub blocks_compressed: u64,
}

/// When to try compressing: the adaptive skip of the module documentation.
#[derive(Debug, Clone)]
struct SkipPolicy {
    enabled: bool,
    /// Blocks still to send stored without trying.
    skip: u32,
    /// How many blocks the next failed try skips.
    backoff: u32,
}

impl SkipPolicy {
    fn new(enabled: bool) -> Self {
        SkipPolicy {
            enabled,
            skip: 0,
            backoff: 1,
        }
    }

    /// Whether to try compressing the next block. Counts a skipped block.
    fn should_try(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            false
        } else {
            true
        }
    }

    /// Records the outcome of a try.
    fn record(&mut self, compressed: bool) {
        if compressed {
            self.backoff = 1;
        } else if self.enabled {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_SKIP);
        }
    }
}

/// A writer that sends what is written to it as compressed blocks.
///
/// Buffers up to [`MAX_BLOCK`] bytes and writes each full buffer as one
/// block, with a single `write_all` of header and body. Call
/// [`finish`](Self::finish) at the end: it writes the last, partial block.
/// Dropping the writer without it loses the buffered bytes. After an error
/// from the inner writer, the stream on the wire is broken: give up on it.
pub struct CompressWriter<W: Write> {
    inner: W,
    level: i32,
    /// Created on the first try, so that `new` cannot fail.
    compressor: Kept<Compressor<'static>>,
    /// The zstd context and two buffers, kept for the next file: `a` holds
    /// `HEADER_LEN` bytes of room for a stored block's header, then the
    /// pending original bytes (a stored block goes out without a copy); `b`
    /// room for the header, then a compressed body (empty until the first
    /// try).
    policy: SkipPolicy,
    stats: Stats,
}

impl<W: Write> CompressWriter<W> {
    /// A writer compressing at zstd `level` (1 to 22, higher is smaller and
    /// slower; 0 means zstd's default, 3; negative levels are zstd's faster
    /// modes; out-of-range levels are clamped), with adaptive skip on.
    pub fn new(inner: W, level: i32) -> Self {
        let mut compressor = Kept::take(level);
        compressor.a.clear();
        compressor.a.reserve(HEADER_LEN + MAX_BLOCK);
        compressor.a.resize(HEADER_LEN, 0);
        CompressWriter {
            inner,
            level,
            compressor,
            policy: SkipPolicy::new(true),
            stats: Stats::default(),
        }
    }

    /// Turns adaptive skip on (the default) or off. Off, every block is tried.
    pub fn adaptive_skip(mut self, on: bool) -> Self {
        self.policy = SkipPolicy::new(on);
        self
    }

    /// What was sent so far (not counting the bytes still buffered).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Writes the last block, if any bytes are buffered, flushes the inner
    /// writer and hands it back with the totals.
    pub fn finish(mut self) -> io::Result<(W, Stats)> {
        self.emit_block()?;
        self.inner.flush()?;
        Ok((self.inner, self.stats))
    }

    fn pending(&self) -> usize {
        self.compressor.a.len() - HEADER_LEN
    }

    /// Writes the buffered bytes as one block, if there are any.
    fn emit_block(&mut self) -> io::Result<()> {
        let len = self.pending();
        if len == 0 {
            return Ok(());
        }
        let original_len = len as u32; // <= MAX_BLOCK
        let body_len = if self.policy.should_try() {
            let body_len = self.try_compress()?;
            self.policy.record(body_len.is_some());
            body_len
        } else {
            None
        };
        let wire = match body_len {
            Some(body_len) => {
                self.compressor.b[..HEADER_LEN].copy_from_slice(&encode_header(
                    BlockKind::Zstd,
                    original_len,
                    body_len as u32,
                ));
                let wire = &self.compressor.b[..HEADER_LEN + body_len];
                self.inner.write_all(wire)?;
                self.stats.blocks_compressed += 1;
                wire.len()
            }
            None => {
                self.compressor.a[..HEADER_LEN].copy_from_slice(&encode_header(
                    BlockKind::Stored,
                    original_len,
                    original_len,
                ));
                self.inner.write_all(&self.compressor.a)?;
                self.stats.blocks_stored += 1;
                self.compressor.a.len()
            }
        };
        self.stats.original += len as u64;
        self.stats.wire += wire as u64;
        self.compressor.a.truncate(HEADER_LEN);
        Ok(())
    }

    /// Compresses the pending bytes into `packed[HEADER_LEN..]`, returning the
    /// body's length, or `None` if it would not be [`MIN_SAVING_PERCENT`] %
    /// smaller.
    fn try_compress(&mut self) -> io::Result<Option<usize>> {
        let original = &self.compressor.a[HEADER_LEN..];
        // At least MIN_SAVING_PERCENT smaller; this also makes it strictly
        // smaller, as the format requires.
        let max_body = original.len() * (100 - MIN_SAVING_PERCENT) / 100;
        if max_body == 0 {
            return Ok(None);
        }
        if self.compressor.b.is_empty() {
            self.compressor.b = vec![0; HEADER_LEN + MAX_BLOCK];
        }
        let compressor = match &mut self.compressor.codec {
            Some(c) => c,
            None => self.compressor.codec.insert(Compressor::new(self.level)?),
        };
        // A destination of exactly `max_body` bytes: zstd gives up as soon as
        // its output would not fit, which saves time on incompressible data.
        // Any error means the block goes out stored, which is always valid.
        let dest = &mut self.compressor.b[HEADER_LEN..HEADER_LEN + max_body];
        Ok(compressor
            .compress_to_buffer(original, dest)
            .ok()
            .filter(|&n| n > 0))
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // A full buffer is sent before taking more bytes, never after: if
        // sending fails, none of `buf` has been taken.
        if self.pending() == MAX_BLOCK {
            self.emit_block()?;
        }
        let n = buf.len().min(MAX_BLOCK - self.pending());
        self.compressor.a.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Sends the buffered bytes as a (short) block and flushes the inner
    /// writer. Each flush ends a block, so flushing often costs ratio.
    fn flush(&mut self) -> io::Result<()> {
        self.emit_block()?;
        self.inner.flush()
    }
}

/// Where a [`DecompressReader`] is in the block sequence.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Between blocks: the next read reads a header.
    Boundary,
    /// In a stored block's body, with that many bytes still to pass on.
    Stored { remaining: usize },
    /// In a decoded zstd block: `out[pos..len]` still to hand out.
    Decoded { pos: usize, len: usize },
    /// An error left the inner stream at an unknown place.
    Failed(io::ErrorKind),
}

/// A reader that yields the original bytes of the blocks read from `inner`.
///
/// Reads exactly one header and one body at a time, and a header only when
/// asked for bytes after the current block is used up: a caller that stops
/// after the number of bytes it expects leaves the inner stream right after
/// the last block. `read` returns `Ok(0)` only when the inner stream ends at a
/// block boundary; an end inside a header or body is
/// [`io::ErrorKind::UnexpectedEof`], a malformed block
/// [`io::ErrorKind::InvalidData`]. After such an error, every read fails.
pub struct DecompressReader<R: Read> {
    inner: R,
    state: ReadState,
    /// (The context's `a` holds a zstd block's body, up to `MAX_BLOCK - 1`
    /// bytes; `b` a decoded block, `MAX_BLOCK` bytes once the first one
    /// arrives.)
    /// Created for the first zstd block, so that `new` cannot fail.
    decompressor: Kept<Decompressor<'static>>,
}

impl<R: Read> DecompressReader<R> {
    /// A reader of the blocks in `inner`.
    pub fn new(inner: R) -> Self {
        DecompressReader {
            inner,
            state: ReadState::Boundary,
            decompressor: Kept::take(0),
        }
    }

    /// Whether every block read so far has been handed out in full: after
    /// reading the number of bytes it expects, a caller can check this to
    /// make sure the sender did not put more in the last block.
    pub fn at_block_boundary(&self) -> bool {
        matches!(self.state, ReadState::Boundary)
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The inner reader. Reading from it directly desynchronizes this reader
    /// unless it is at a block boundary.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the inner reader back, positioned after the last block read.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next block, returning `false` at a clean end of input.
    fn next_block(&mut self) -> io::Result<bool> {
        let mut h = [0; HEADER_LEN];
        match fill(&mut self.inner, &mut h)? {
            0 => return Ok(false),
            HEADER_LEN => {}
            n => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "compressed stream: input ends inside a block header ({n} of {HEADER_LEN} bytes)"
                    ),
                ));
            }
        }
        let header = decode_block_header(&h)?;
        let original_len = header.original_len as usize;
        let body_len = header.body_len as usize;
        if header.kind == BlockKind::Stored {
            self.state = ReadState::Stored {
                remaining: original_len,
            };
            return Ok(true);
        }

        if self.decompressor.a.len() < body_len {
            self.decompressor.a.resize(body_len, 0);
        }
        let body = &mut self.decompressor.a[..body_len];
        let got = fill(&mut self.inner, body)?;
        if got < body_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "compressed stream: input ends inside a zstd block body ({got} of {body_len} bytes)"
                ),
            ));
        }
        if self.decompressor.b.is_empty() {
            self.decompressor.b = vec![0; MAX_BLOCK];
        }
        let decompressor = match &mut self.decompressor.codec {
            Some(d) => d,
            None => {
                let mut d = Decompressor::new()?;
                d.set_parameter(zstd_safe::DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
                self.decompressor.codec.insert(d)
            }
        };
        let len = decode_frame(
            decompressor,
            body,
            header.original_len,
            &mut self.decompressor.b,
        )?;
        self.state = ReadState::Decoded { pos: 0, len };
        Ok(true)
    }
}

impl<R: Read> Read for DecompressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                ReadState::Failed(kind) => {
                    return Err(io::Error::new(
                        kind,
                        "compressed stream: unusable after an earlier error",
                    ));
                }
                ReadState::Boundary => match self.next_block() {
                    Ok(true) => continue,
                    Ok(false) => return Ok(0),
                    Err(e) => {
                        self.state = ReadState::Failed(e.kind());
                        return Err(e);
                    }
                },
                ReadState::Stored { remaining } => {
                    // Straight from the inner reader into `buf`, never past
                    // the body. A failed read consumed nothing, so the state
                    // stays valid (a retry after `Interrupted` is fine).
                    let want = remaining.min(buf.len());
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "compressed stream: input ends inside a stored block body ({remaining} bytes missing)"
                            ),
                        );
                        self.state = ReadState::Failed(e.kind());
                        return Err(e);
                    }
                    self.state = match remaining - n {
                        0 => ReadState::Boundary,
                        remaining => ReadState::Stored { remaining },
                    };
                    return Ok(n);
                }
                ReadState::Decoded { pos, len } => {
                    let n = (len - pos).min(buf.len());
                    buf[..n].copy_from_slice(&self.decompressor.b[pos..pos + n]);
                    self.state = match pos + n {
                        end if end == len => ReadState::Boundary,
                        pos => ReadState::Decoded { pos, len },
                    };
                    return Ok(n);
                }
            }
        }
    }
}

/// Reads until `buf` is full or the input ends, returning how many bytes
/// were read. Unlike `read_exact`, says how far it got.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes a zstd block's body into `out` (at least [`MAX_BLOCK`] bytes),
/// checking that it is one frame, with a small window, of `expected` bytes.
fn decode_frame(
    decompressor: &mut Decompressor<'static>,
    body: &[u8],
    expected: u32,
    out: &mut [u8],
) -> Result<usize, BlockError> {
    let corrupt = |code| BlockError::Corrupt(zstd_safe::get_error_name(code).to_owned());
    if body.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Err(BlockError::NotOneFrame);
    }
    // zstd enforces its window limit only when streaming; the one-shot
    // decoding below ignores it (it needs no window), so check it here.
    if let Some(window) = declared_window(body)?
        && window > 1 << WINDOW_LOG_MAX
    {
        return Err(BlockError::WindowTooLarge { window });
    }
    // Exactly one frame: `decompress_to_buffer` would go on to decode a
    // second frame, or skip a skippable one.
    let frame_len = zstd_safe::find_frame_compressed_size(body).map_err(corrupt)?;
    if frame_len != body.len() {
        return Err(BlockError::NotOneFrame);
    }
    // A frame that says how long it is can be refused without decoding it.
    match zstd_safe::get_frame_content_size(body) {
        Ok(Some(declared)) if declared != u64::from(expected) => {
            return Err(BlockError::LengthMismatch {
                decoded: declared,
                expected,
            });
        }
        Ok(_) => {}
        Err(_) => return Err(BlockError::Corrupt("unreadable frame header".to_owned())),
    }
    let out = &mut out[..MAX_BLOCK];
    let decoded = decompressor
        .decompress_to_buffer(body, out)
        .map_err(|e| BlockError::Corrupt(e.to_string()))?;
    if decoded != expected as usize {
        return Err(BlockError::LengthMismatch {
            decoded: decoded as u64,
            expected,
        });
    }
    Ok(decoded)
}

/// The window size a zstd frame header declares in its window descriptor
/// (RFC 8878, 3.1.1.1.2), or `None` for a single-segment frame, which has
/// none: its window is its content size, checked separately.
fn declared_window(frame: &[u8]) -> Result<Option<u64>, BlockError> {
    let unreadable = || BlockError::Corrupt("unreadable frame header".to_owned());
    let frame_header_descriptor = *frame.get(4).ok_or_else(unreadable)?;
    if frame_header_descriptor & 0x20 != 0 {
        return Ok(None);
    }
    let window_descriptor = *frame.get(5).ok_or_else(unreadable)?;
    let base = 1u64 << (10 + u32::from(window_descriptor >> 3));
    Ok(Some(base + base / 8 * u64::from(window_descriptor & 7)))
}

/// A zstd context kept for the next file on the same thread. Making one
/// costs tens of microseconds and a few hundred KiB; a tree of small files
/// compressed one by one paid that per file (measured: most of
/// `--compress`'s cost on 4 KiB source files). A context holds no data
/// between one-shot calls, so reuse changes no byte on the wire.
struct Kept<C: Spare> {
    /// The zstd level it was made for (0 for a decompressor).
    level: i32,
    codec: Option<C>,
    /// Two block-sized buffers its user keeps with it.
    a: Vec<u8>,
    b: Vec<u8>,
}

/// The per-thread slot of one kind of zstd context.
trait Spare: Sized + 'static {
    fn slot() -> &'static std::thread::LocalKey<std::cell::RefCell<Option<Parts<Self>>>>;
}

/// What a slot keeps: the level, the context, the two buffers.
type Parts<C> = (i32, Option<C>, Vec<u8>, Vec<u8>);

thread_local! {
    static SPARE_COMPRESSOR: std::cell::RefCell<Option<Parts<Compressor<'static>>>> =
        const { std::cell::RefCell::new(None) };
    static SPARE_DECOMPRESSOR: std::cell::RefCell<Option<Parts<Decompressor<'static>>>> =
        const { std::cell::RefCell::new(None) };
}

impl Spare for Compressor<'static> {
    fn slot() -> &'static std::thread::LocalKey<std::cell::RefCell<Option<Parts<Self>>>> {
        &SPARE_COMPRESSOR
    }
}

impl Spare for Decompressor<'static> {
    fn slot() -> &'static std::thread::LocalKey<std::cell::RefCell<Option<Parts<Self>>>> {
        &SPARE_DECOMPRESSOR
    }
}

impl<C: Spare> Kept<C> {
    /// This thread's spare context for `level`, if it has one.
    fn take(level: i32) -> Self {
        let kept = C::slot()
            .try_with(|slot| slot.try_borrow_mut().ok()?.take())
            .ok()
            .flatten();
        match kept {
            // A context is for one level; the buffers are for anyone.
            Some((at, codec, a, b)) => Kept {
                level,
                codec: codec.filter(|_| at == level),
                a,
                b,
            },
            None => Kept {
                level,
                codec: None,
                a: Vec::new(),
                b: Vec::new(),
            },
        }
    }
}

impl<C: Spare> Drop for Kept<C> {
    fn drop(&mut self) {
        let codec = self.codec.take();
        let (a, b) = (std::mem::take(&mut self.a), std::mem::take(&mut self.b));
        // Only into an empty slot: nothing is dropped while it is borrowed.
        let _ = C::slot().try_with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut()
                && slot.is_none()
            {
                *slot = Some((self.level, codec, a, b));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// SplitMix64: a small seeded generator, good enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let x = self.next().to_le_bytes();
                chunk.copy_from_slice(&x[..chunk.len()]);
            }
        }
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Rng(seed).fill(&mut v);
        v
    }

    /// Text-like bytes: words from a small vocabulary, compresses well.
    fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "fn ",
            "let ",
            "mut ",
            "self",
            ".read(",
            "buf",
            ");\n",
            "    ",
            "match ",
            "=> ",
            "Ok(",
            "Err(",
            "io::Result<usize>",
            "{\n",
            "}\n",
            "// block ",
            "header",
            "0x9E37",
        ];
        let mut rng = Rng(seed);
        let mut v = Vec::with_capacity(len + 32);
        while v.len() < len {
            v.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
        }
        v.truncate(len);
        v
    }

    /// 3 MiB alternating runs of text and random bytes of various sizes.
    fn mixed_bytes(seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut v = Vec::new();
        let mut i = 0;
        while v.len() < 3 << 20 {
            let run = 1 + rng.below(400_000);
            let part = if i % 2 == 0 {
                text_bytes(rng.next(), run)
            } else {
                random_bytes(rng.next(), run)
            };
            v.extend_from_slice(&part);
            i += 1;
        }
        v.truncate(3 << 20);
        v
    }

    /// Compresses `data`, writing it in pieces of the sizes `sizes` yields.
    fn compress_with(
        data: &[u8],
        level: i32,
        skip: bool,
        mut sizes: impl FnMut() -> usize,
    ) -> (Vec<u8>, Stats) {
        let mut w = CompressWriter::new(Vec::new(), level).adaptive_skip(skip);
        let mut rest = data;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            w.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        w.finish().unwrap()
    }

    fn compress(data: &[u8]) -> (Vec<u8>, Stats) {
        compress_with(data, DEFAULT_LEVEL, true, || usize::MAX)
    }

    fn decompress(wire: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        DecompressReader::new(wire).read_to_end(&mut out)?;
        Ok(out)
    }

    /// The headers of the blocks in `wire`, checking it is well formed.
    fn blocks(wire: &[u8]) -> Vec<BlockHeader> {
        let mut headers = Vec::new();
        let mut rest = wire;
        while !rest.is_empty() {
            let h = decode_block_header(rest[..HEADER_LEN].try_into().unwrap()).unwrap();
            rest = &rest[HEADER_LEN + h.body_len as usize..];
            headers.push(h);
        }
        headers
    }

    fn round_trip(data: &[u8]) -> Stats {
        let (wire, stats) = compress(data);
        assert_eq!(decompress(&wire).unwrap(), data);
        assert_eq!(stats.original, data.len() as u64);
        assert_eq!(stats.wire, wire.len() as u64);
        let headers = blocks(&wire);
        assert_eq!(
            headers.len() as u64,
            stats.blocks_stored + stats.blocks_compressed
        );
        assert_eq!(headers.len(), data.len().div_ceil(MAX_BLOCK));
        stats
    }

    fn block(kind: u8, original_len: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&original_len.to_be_bytes());
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn expect_invalid(wire: &[u8], needle: &str) {
        let e = decompress(wire).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains(needle), "{e:?} lacks {needle:?}");
    }

    /// A hand-made zstd frame of one RLE block: `len` copies of `byte`, with
    /// no content size, and window log `window_log` (10 to 41).
    fn rle_frame(window_log: u8, len: u32, byte: u8) -> Vec<u8> {
        let mut v = ZSTD_MAGIC.to_vec();
        v.push(0x00); // no content size, not single-segment, no checksum, no dictionary
        v.push((window_log - 10) << 3);
        let block_header = 1 | (1 << 1) | (len << 3); // last block, RLE, size
        v.extend_from_slice(&block_header.to_le_bytes()[..3]);
        v.push(byte);
        v
    }

    #[test]
    fn empty_input_writes_nothing() {
        let stats = round_trip(&[]);
        assert_eq!(stats, Stats::default());
        assert_eq!(decompress(&[]).unwrap(), b"");
    }

    #[test]
    fn one_byte_is_stored() {
        let (wire, stats) = compress(b"x");
        assert_eq!(wire, block(KIND_STORED, 1, b"x"));
        assert_eq!(stats.blocks_stored, 1);
        round_trip(b"x");
    }

    #[test]
    fn exactly_one_full_block() {
        let stats = round_trip(&text_bytes(1, MAX_BLOCK));
        assert_eq!((stats.blocks_compressed, stats.blocks_stored), (1, 0));
        let stats = round_trip(&random_bytes(2, MAX_BLOCK));
        assert_eq!((stats.blocks_compressed, stats.blocks_stored), (0, 1));
    }

    #[test]
    fn one_byte_over_a_block() {
        let data = text_bytes(3, MAX_BLOCK + 1);
        round_trip(&data);
        let (wire, _) = compress(&data);
        let headers = blocks(&wire);
        assert_eq!(headers[0].original_len as usize, MAX_BLOCK);
        assert_eq!(
            headers[1],
            BlockHeader {
                kind: BlockKind::Stored,
                original_len: 1,
                body_len: 1
            }
        );
    }

    #[test]
    fn mixed_data_in_arbitrary_write_sizes() {
        let data = mixed_bytes(4);
        for (level, skip) in [(1, true), (3, true), (3, false)] {
            let mut rng = Rng(level as u64);
            let (wire, stats) = compress_with(&data, level, skip, || match rng.below(4) {
                0 => 1 + rng.below(16),
                1 => 1 + rng.below(70_000),
                2 => MAX_BLOCK - 1 + rng.below(3),
                _ => 1 + rng.below(1 << 20),
            });
            assert!(
                stats.blocks_compressed > 0 && stats.blocks_stored > 0,
                "{stats:?}"
            );
            assert!(stats.wire < stats.original, "{stats:?}");
            // Read back in odd sizes too.
            let mut r = DecompressReader::new(&wire[..]);
            let mut out = Vec::new();
            let mut buf = vec![0; 100_003];
            loop {
                let want = 1 + rng.below(buf.len());
                match r.read(&mut buf[..want]).unwrap() {
                    0 => break,
                    n => out.extend_from_slice(&buf[..n]),
                }
            }
            assert!(out == data, "level {level}, skip {skip}");
        }
    }

    #[test]
    fn any_level_works() {
        let data = text_bytes(15, 100_000);
        for level in [i32::MIN, -5, 0, 1, 3, 19, 22, 100, i32::MAX] {
            let (wire, stats) = compress_with(&data, level, true, || usize::MAX);
            assert_eq!(decompress(&wire).unwrap(), data, "level {level}");
            // The fastest levels (down to -131072) barely compress at all.
            if level >= -5 {
                assert_eq!(stats.blocks_compressed, 1, "level {level}");
            }
        }
    }

    #[test]
    fn compressible_data_shrinks() {
        let data = text_bytes(5, 2 * MAX_BLOCK + 1000);
        let stats = round_trip(&data);
        assert_eq!(stats.blocks_compressed, 3);
        assert!(stats.wire * 3 < stats.original, "{stats:?}");
    }

    #[test]
    fn flush_ends_a_block() {
        let mut w = CompressWriter::new(Vec::new(), 1);
        w.write_all(b"hello").unwrap();
        w.flush().unwrap();
        assert_eq!(w.get_ref().len(), HEADER_LEN + 5);
        w.flush().unwrap(); // nothing buffered: no empty block
        w.write_all(b" world").unwrap();
        let (wire, stats) = w.finish().unwrap();
        assert_eq!(stats.blocks_stored, 2);
        assert_eq!(decompress(&wire).unwrap(), b"hello world");
    }

    #[test]
    fn adaptive_skip_sequence() {
        // Blocks: random, text, random, then four of text.
        let mut data = Vec::new();
        for (i, compressible) in [false, true, false, true, true, true, true]
            .into_iter()
            .enumerate()
        {
            let seed = 100 + i as u64;
            data.extend(if compressible {
                text_bytes(seed, MAX_BLOCK)
            } else {
                random_bytes(seed, MAX_BLOCK)
            });
        }
        let kinds = |skip| {
            let (wire, _) = compress_with(&data, 1, skip, || usize::MAX);
            assert_eq!(decompress(&wire).unwrap(), data);
            blocks(&wire)
                .iter()
                .map(|h| h.kind == BlockKind::Zstd)
                .collect::<Vec<_>>()
        };
        // Tried and stored; skipped; tried and stored; two skipped; tried and
        // compressed, which resets the back-off; compressed.
        assert_eq!(kinds(true), [false, false, false, false, false, true, true]);
        assert_eq!(kinds(false), [false, true, false, true, true, true, true]);
    }

    #[test]
    fn skip_policy_backs_off_to_the_cap_and_resets() {
        // All blocks incompressible: the runs of blocks skipped between tries.
        let mut p = SkipPolicy::new(true);
        let (mut runs, mut run) = (Vec::new(), 0);
        for _ in 0..400 {
            if p.should_try() {
                runs.push(run);
                run = 0;
                p.record(false);
            } else {
                run += 1;
            }
        }
        assert_eq!(runs[..10], [0, 1, 2, 4, 8, 16, 32, 64, 64, 64]);
        // A success resets the back-off.
        while !p.should_try() {}
        p.record(true);
        assert!(p.should_try());
        p.record(false);
        assert!(!p.should_try());
        assert!(p.should_try());
        // Off, every block is tried.
        let mut off = SkipPolicy::new(false);
        off.record(false);
        assert!(off.should_try());
    }

    #[test]
    fn reader_stops_exactly_at_the_block_boundary() {
        let data = mixed_bytes(6);
        for n in [1, 5000, MAX_BLOCK, MAX_BLOCK + 7, data.len()] {
            let (mut wire, _) = compress(&data[..n]);
            let blocks_len = wire.len();
            wire.extend_from_slice(b"NEXT FRAME");
            let mut r = DecompressReader::new(Cursor::new(&wire[..]));
            let mut out = vec![0; n];
            r.read_exact(&mut out).unwrap();
            assert!(out == data[..n]);
            assert!(r.at_block_boundary());
            let inner = r.into_inner();
            assert_eq!(inner.position() as usize, blocks_len, "n = {n}");
        }
        // Two streams back to back: reading `n` bytes of the first leaves
        // the second's header unread.
        let (mut wire, _) = compress(&data[..MAX_BLOCK]);
        let first_len = wire.len();
        wire.extend_from_slice(&compress(b"second").0);
        let mut cursor = Cursor::new(&wire[..]);
        let mut out = vec![0; MAX_BLOCK];
        DecompressReader::new(&mut cursor)
            .read_exact(&mut out)
            .unwrap();
        assert_eq!(cursor.position() as usize, first_len);
        let mut second = Vec::new();
        DecompressReader::new(&mut cursor)
            .read_to_end(&mut second)
            .unwrap();
        assert_eq!(second, b"second");
    }

    #[test]
    fn reader_is_not_at_a_boundary_mid_block() {
        let (wire, _) = compress(&text_bytes(7, 1000));
        let mut r = DecompressReader::new(&wire[..]);
        let mut out = [0; 999];
        r.read_exact(&mut out).unwrap();
        assert!(!r.at_block_boundary());
        assert_eq!(r.read(&mut []).unwrap(), 0);
    }

    #[test]
    fn header_checks() {
        let h = |kind: u8, original: u32, body: u32| {
            let mut v = [0; HEADER_LEN];
            v.copy_from_slice(&block(kind, original, &[])[..HEADER_LEN]);
            v[5..].copy_from_slice(&body.to_be_bytes());
            decode_block_header(&v)
        };
        assert_eq!(h(2, 10, 10), Err(BlockError::UnknownKind(2)));
        assert_eq!(h(255, 10, 10), Err(BlockError::UnknownKind(255)));
        assert_eq!(h(0, 0, 0), Err(BlockError::Empty));
        assert_eq!(h(1, 0, 0), Err(BlockError::Empty));
        assert_eq!(
            h(0, MAX_BLOCK as u32 + 1, MAX_BLOCK as u32 + 1),
            Err(BlockError::TooLong(MAX_BLOCK as u32 + 1))
        );
        assert_eq!(h(1, u32::MAX, 10), Err(BlockError::TooLong(u32::MAX)));
        assert_eq!(
            h(0, 10, 9),
            Err(BlockError::StoredLength {
                original_len: 10,
                body_len: 9
            })
        );
        assert_eq!(
            h(1, 10, 10),
            Err(BlockError::ZstdBodyLength {
                original_len: 10,
                body_len: 10
            })
        );
        assert_eq!(
            h(1, 10, 0),
            Err(BlockError::ZstdBodyLength {
                original_len: 10,
                body_len: 0
            })
        );
        let ok = h(1, MAX_BLOCK as u32, 9).unwrap();
        assert_eq!(
            ok,
            BlockHeader {
                kind: BlockKind::Zstd,
                original_len: MAX_BLOCK as u32,
                body_len: 9
            }
        );
        assert_eq!(decode_block_header(&ok.encode()), Ok(ok));
    }

    #[test]
    fn hostile_headers_are_rejected_before_reading_the_body() {
        // A huge length with no body behind it: an error, not an allocation
        // or a wait for 4 GiB.
        expect_invalid(&block(0, u32::MAX, &[]), "more than the maximum");
        expect_invalid(&block(1, 0, &[]), "0 original bytes");
        expect_invalid(&block(7, 5, b"hello"), "unknown kind 7");
        expect_invalid(&block(0, 5, b"hell"), "4-byte body");
        expect_invalid(&block(1, 5, b"hello"), "zstd body of 5 bytes");
    }

    #[test]
    fn zstd_frame_of_the_wrong_length() {
        let frame = zstd::bulk::compress(&[0u8; 1000], 3).unwrap();
        expect_invalid(
            &block(1, 2000, &frame),
            "zstd frame decodes to 1000 bytes, header says 2000",
        );
        // Without a content size in the frame, the check happens on decoding.
        expect_invalid(
            &block(1, 2000, &rle_frame(10, 1000, 0)),
            "decodes to 1000 bytes, header says 2000",
        );
        expect_invalid(
            &block(1, 500, &rle_frame(10, 1000, 0)),
            "decodes to 1000 bytes, header says 500",
        );
        // The hand-made frame itself is fine.
        assert_eq!(
            decompress(&block(1, 1000, &rle_frame(10, 1000, 7))).unwrap(),
            [7; 1000]
        );
    }

    #[test]
    fn zstd_frame_larger_than_a_block() {
        // Three RLE blocks of 128 KiB: 384 KiB, more than the buffer.
        let mut frame = ZSTD_MAGIC.to_vec();
        frame.extend_from_slice(&[0x00, (18 - 10) << 3]);
        for last in [0, 0, 1] {
            let header: u32 = last | (1 << 1) | ((128 << 10) << 3);
            frame.extend_from_slice(&header.to_le_bytes()[..3]);
            frame.push(b'a');
        }
        expect_invalid(&block(1, MAX_BLOCK as u32, &frame), "bad zstd frame");
    }

    #[test]
    fn zstd_frame_with_a_huge_window() {
        for window_log in [19, 31, 41] {
            expect_invalid(&block(1, 1000, &rle_frame(window_log, 1000, 0)), "window");
        }
        // 2^18 itself is allowed.
        assert_eq!(
            decompress(&block(1, 1000, &rle_frame(18, 1000, 0))).unwrap(),
            [0; 1000]
        );
    }

    #[test]
    fn body_must_be_exactly_one_zstd_frame() {
        let half = zstd::bulk::compress(&[0u8; 500], 3).unwrap();
        let two = [half.clone(), half.clone()].concat();
        expect_invalid(&block(1, 1000, &two), "not exactly one zstd frame");
        let trailing = [half.clone(), vec![0]].concat();
        expect_invalid(&block(1, 500, &trailing), "not exactly one zstd frame");
        // A skippable frame (magic 0x184D2A50) holding 8 bytes.
        let mut skippable = vec![0x50, 0x2A, 0x4D, 0x18, 8, 0, 0, 0];
        skippable.extend_from_slice(&[0; 8]);
        expect_invalid(&block(1, 1000, &skippable), "not exactly one zstd frame");
        // A skippable frame in front of a real one.
        expect_invalid(
            &block(1, 500, &[skippable, half].concat()),
            "not exactly one zstd frame",
        );
    }

    #[test]
    fn garbage_zstd_body() {
        expect_invalid(&block(1, 1000, &random_bytes(8, 100)), "zstd frame");
        let mut frame = zstd::bulk::compress(&text_bytes(9, 5000), 3).unwrap();
        let mid = frame.len() / 2;
        frame[mid..].fill(0xFF);
        let e = decompress(&block(1, 5000, &frame)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Too short to hold a frame header.
        expect_invalid(&block(1, 1000, &ZSTD_MAGIC), "bad zstd frame");
    }

    #[test]
    fn truncated_input_is_unexpected_eof() {
        let data = [text_bytes(10, 3000), random_bytes(11, 3000)].concat();
        let mut w = CompressWriter::new(Vec::new(), 3);
        w.write_all(&data[..3000]).unwrap();
        w.flush().unwrap();
        w.write_all(&data[3000..]).unwrap();
        let (wire, _) = w.finish().unwrap();
        let headers = blocks(&wire);
        assert_eq!(
            headers.iter().map(|h| h.kind).collect::<Vec<_>>(),
            [BlockKind::Zstd, BlockKind::Stored]
        );
        let first_end = HEADER_LEN + headers[0].body_len as usize;
        for cut in 0..wire.len() {
            let result = decompress(&wire[..cut]);
            if cut == 0 || cut == first_end {
                let expected = if cut == 0 { &[][..] } else { &data[..3000] };
                assert_eq!(result.unwrap(), expected);
            } else {
                assert_eq!(
                    result.unwrap_err().kind(),
                    io::ErrorKind::UnexpectedEof,
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn errors_are_sticky() {
        let wire = [block(0, 3, b"abc"), block(9, 1, b"x"), block(0, 3, b"def")].concat();
        let mut r = DecompressReader::new(&wire[..]);
        let mut buf = [0; 10];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert_eq!(
            r.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            r.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// An inner writer that records the size of every write.
    struct Recorder(Vec<usize>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_write_per_block() {
        let data = mixed_bytes(12);
        let mut w = CompressWriter::new(Recorder(Vec::new()), 1);
        for chunk in data.chunks(1000) {
            w.write_all(chunk).unwrap();
        }
        let (rec, stats) = w.finish().unwrap();
        assert_eq!(
            rec.0.len() as u64,
            stats.blocks_stored + stats.blocks_compressed
        );
        assert_eq!(rec.0.iter().sum::<usize>() as u64, stats.wire);
    }

    #[test]
    fn a_failed_block_write_takes_no_bytes() {
        struct Fails;
        impl Write for Fails {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = CompressWriter::new(Fails, 1);
        let data = random_bytes(13, MAX_BLOCK + 10);
        assert_eq!(w.write(&data).unwrap(), MAX_BLOCK);
        assert!(w.write(&data[MAX_BLOCK..]).is_err());
        assert!(w.finish().is_err());
    }

    #[test]
    fn flipped_bytes_never_panic() {
        // A valid encoding of a few short blocks of both kinds.
        let mut w = CompressWriter::new(Vec::new(), 3).adaptive_skip(false);
        let mut rng = Rng(14);
        let mut data = Vec::new();
        for i in 0..6 {
            let len = 1 + rng.below(3000);
            let part = if i % 3 == 2 {
                random_bytes(rng.next(), len)
            } else {
                text_bytes(rng.next(), len)
            };
            w.write_all(&part).unwrap();
            w.flush().unwrap();
            data.extend(part);
        }
        let (wire, stats) = w.finish().unwrap();
        assert!(
            stats.blocks_compressed >= 3 && stats.blocks_stored >= 1,
            "{stats:?}"
        );
        assert_eq!(decompress(&wire).unwrap(), data);

        let mut outcomes = [0usize; 3]; // same data, other data, error
        for _ in 0..20_000 {
            let mut bad = wire.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bad.len());
                bad[i] ^= 1 << rng.below(8);
                if rng.below(8) == 0 {
                    bad[i] = rng.next() as u8;
                }
            }
            match decompress(&bad) {
                Ok(out) if out == data => outcomes[0] += 1,
                Ok(_) => outcomes[1] += 1,
                Err(e) => {
                    assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ),
                        "{e:?}"
                    );
                    outcomes[2] += 1;
                }
            }
        }
        // Most flips are caught; those in stored bodies (or zstd literals)
        // change the data, which the transfer's own hash catches.
        assert!(outcomes[2] > 1000, "{outcomes:?}");
    }
}
