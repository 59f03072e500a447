//! The hashing copy: move exactly `len` bytes from a reader to a writer while
//! computing their SHA-256, with reading and writing overlapped.
//!
//! Two stages hand a small ring of reused buffers along bounded channels:
//! the calling thread reads a chunk and hashes it while it is still hot in
//! the cache, and a writer thread writes the previous chunk meanwhile.
//! Memory is constant whatever the length. (A separate hashing thread was
//! measured too: on a 2-core machine running both ends it was about 10%
//! slower, as every chunk then crossed cores twice; see docs/PERFORMANCE.md.)
//! This module knows nothing of sockets, files or frames; it must never
//! allocate per chunk.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

use crate::protocol::{Digest, read_full};

/// Size of each buffer in the ring.
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Buffers in flight: one being read, one being written, two spare so
/// neither side waits on the other's buffer in the steady state.
const RING: usize = 4;

/// Which end of the copy failed; callers know which end is the file.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading: {0}")]
    Source(#[source] io::Error),
    #[error("writing: {0}")]
    Sink(#[source] io::Error),
}

/// Copies exactly `len` bytes from `source` to `sink`, feeding them to
/// `hasher`, and returns the digest. `progress` is called with the total
/// written so far after each chunk. A source that ends early is a
/// `Source(UnexpectedEof)` error.
pub fn copy_hashed<R, W>(
    source: &mut R,
    sink: &mut W,
    len: u64,
    mut hasher: Sha256,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Digest, CopyError>
where
    R: Read + Send + ?Sized,
    W: Write + Send + ?Sized,
{
    if len <= CHUNK_SIZE as u64 {
        // One chunk: a thread would cost more than it overlaps.
        let mut buf = vec![0u8; len as usize];
        let (filled, read) = fill(source, &mut buf);
        if let Err(e) = read {
            // What did arrive is kept: a resume continues after it.
            sink.write_all(&buf[..filled]).map_err(CopyError::Sink)?;
            return Err(CopyError::Source(e));
        }
        hasher.update(&buf);
        sink.write_all(&buf).map_err(CopyError::Sink)?;
        progress(len);
        return Ok(hasher.finalize().into());
    }
    copy_overlapped(source, sink, Some(len), hasher, progress).map(|(_, digest)| digest)
}

/// Copies everything `source` yields until its end, of a length nobody
/// knows in advance (a stream), and returns how many bytes and their digest.
pub fn copy_hashed_to_end<R, W>(
    source: &mut R,
    sink: &mut W,
    hasher: Sha256,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(u64, Digest), CopyError>
where
    R: Read + Send + ?Sized,
    W: Write + Send + ?Sized,
{
    copy_overlapped(source, sink, None, hasher, progress)
}

fn copy_overlapped<R, W>(
    source: &mut R,
    sink: &mut W,
    len: Option<u64>,
    mut hasher: Sha256,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(u64, Digest), CopyError>
where
    R: Read + Send + ?Sized,
    W: Write + Send + ?Sized,
{
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(RING);
    for _ in 0..RING {
        free_tx
            .send(vec![0u8; CHUNK_SIZE])
            .expect("the ring has room for every buffer");
    }
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(RING);

    std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_stage(full_rx, free_tx, sink, progress));
        let read_result = read_and_hash(source, len, &mut hasher, free_rx, full_tx);
        let written = writer.join().expect("the write stage does not panic");
        // A sink failure makes the reader stop early, so report it first:
        // it is the cause, not a symptom.
        written.map_err(CopyError::Sink)?;
        let total = read_result.map_err(CopyError::Source)?;
        Ok((total, hasher.finalize().into()))
    })
}

/// Reads and hashes `len` bytes, or up to the end when `len` is `None`,
/// handing each chunk to the writer. Returns the bytes read.
fn read_and_hash<R: Read + ?Sized>(
    source: &mut R,
    len: Option<u64>,
    hasher: &mut Sha256,
    free: Receiver<Vec<u8>>,
    to_write: SyncSender<(Vec<u8>, usize)>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let want = match len {
            Some(len) if total >= len => return Ok(total),
            Some(len) => (len - total).min(CHUNK_SIZE as u64) as usize,
            None => CHUNK_SIZE,
        };
        let Ok(mut buf) = free.recv() else {
            return Ok(total); // the writer stopped; it reports why
        };
        let n = if len.is_some() {
            let (filled, read) = fill(source, &mut buf[..want]);
            if let Err(e) = read {
                // What did arrive is kept: a resume continues after it.
                if filled > 0 {
                    let _ = to_write.send((buf, filled));
                }
                return Err(e);
            }
            want
        } else {
            fill_to_end(source, &mut buf[..want])?
        };
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        if to_write.send((buf, n)).is_err() {
            return Ok(total);
        }
    }
}

fn write_stage<W: Write + ?Sized>(
    from_reader: Receiver<(Vec<u8>, usize)>,
    free: SyncSender<Vec<u8>>,
    sink: &mut W,
    progress: &(dyn Fn(u64) + Sync),
) -> io::Result<()> {
    let mut written = 0u64;
    for (buf, n) in from_reader {
        sink.write_all(&buf[..n])?;
        written += n as u64;
        progress(written);
        // The reader may already be done and gone; then the buffer retires.
        let _ = free.send(buf);
    }
    Ok(())
}

/// Hashes what `reader` yields, up to `limit` bytes (or to its end), with
/// one reused buffer; returns the hash state and how many bytes it read.
/// For the few places that must read something before sending (resume
/// prefixes, `--checksum`), never for the data itself.
pub fn hash_prefix<R: Read + ?Sized>(
    reader: &mut R,
    limit: Option<u64>,
) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut total = 0u64;
    loop {
        let want = match limit {
            Some(l) => (l - total).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        // Hashing a big file takes a while: a signal stops it between
        // chunks, through the normal error path.
        if crate::exit_codes::interrupted() {
            return Err(io::Error::other("interrupted"));
        }
        let (n, read) = read_full(reader, &mut buf[..want]);
        read?;
        hasher.update(&buf[..n]);
        total += n as u64;
        if n < want {
            break;
        }
    }
    Ok((hasher, total))
}

/// Fills `buf` as far as the source goes; returns how much (0 at the end).
fn fill_to_end<R: Read + ?Sized>(source: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let (filled, read) = read_full(source, buf);
    read.map(|()| filled)
}

/// Fills `buf` completely, or fails (with `UnexpectedEof` when the source
/// ends early); says how much it filled either way.
fn fill<R: Read + ?Sized>(source: &mut R, buf: &mut [u8]) -> (usize, io::Result<()>) {
    match read_full(source, buf) {
        (filled, Ok(())) if filled < buf.len() => (
            filled,
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "data ended early",
            )),
        ),
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn sha(data: &[u8]) -> Digest {
        Sha256::digest(data).into()
    }

    /// Issue 11, bug 5: a cut kept only whole 1 MiB chunks (nothing of a
    /// cut at 400,000 bytes, 3,145,728 of a cut at 3.3 MB).
    #[test]
    fn every_byte_that_arrived_before_a_cut_is_written() {
        for (cut, len) in [
            (400_000usize, 1_000_000u64),
            (400_000, 5_000_000),
            (3_300_000, 5_000_000),
            (CHUNK_SIZE, 5_000_000),
        ] {
            let data = pattern(cut);
            let mut out = Vec::new();
            let err =
                copy_hashed(&mut &data[..], &mut out, len, Sha256::new(), &|_| {}).unwrap_err();
            assert!(matches!(err, CopyError::Source(_)), "{err}");
            assert_eq!(out.len(), cut);
            assert_eq!(out, data);
        }
    }

    #[test]
    fn copies_and_hashes_exactly_len_bytes_at_chunk_edges() {
        for len in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE,
            5 * CHUNK_SIZE + 7,
        ] {
            let data = pattern(len + 100);
            let mut out = Vec::new();
            let seen = AtomicU64::new(0);
            let digest = copy_hashed(&mut &data[..], &mut out, len as u64, Sha256::new(), &|n| {
                seen.store(n, Ordering::Relaxed)
            })
            .unwrap();
            assert_eq!(out, &data[..len], "len {len}");
            assert_eq!(digest, sha(&data[..len]), "len {len}");
            assert_eq!(seen.load(Ordering::Relaxed), len as u64);
        }
    }

    #[test]
    fn short_source_is_a_source_error() {
        let data = pattern(2 * CHUNK_SIZE);
        let mut out = Vec::new();
        let err = copy_hashed(
            &mut &data[..],
            &mut out,
            3 * CHUNK_SIZE as u64,
            Sha256::new(),
            &|_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, CopyError::Source(ref e) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
    }

    struct FailingSink(usize);
    impl Write for FailingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
            }
            self.0 -= 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sink_failure_is_reported_as_sink_error_and_stops_reading() {
        let data = pattern(10 * CHUNK_SIZE);
        let mut src = &data[..];
        let err = copy_hashed(
            &mut src,
            &mut FailingSink(1),
            data.len() as u64,
            Sha256::new(),
            &|_| {},
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::Sink(ref e) if e.kind() == io::ErrorKind::BrokenPipe));
        // The reader stops once the ring is full instead of draining the source.
        assert!(src.len() >= data.len() - (RING + 2) * CHUNK_SIZE);
    }

    #[test]
    fn copies_a_stream_to_its_end_whatever_its_length() {
        for len in [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 5] {
            let data = pattern(len);
            let mut out = Vec::new();
            let (n, digest) =
                copy_hashed_to_end(&mut &data[..], &mut out, Sha256::new(), &|_| {}).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(out, data);
            assert_eq!(digest, sha(&data));
        }
    }

    #[test]
    fn a_seeded_hasher_continues_a_prefix() {
        let data = pattern(3 * CHUNK_SIZE);
        let (head, tail) = data.split_at(CHUNK_SIZE + 5);
        let mut h = Sha256::new();
        h.update(head);
        let mut out = Vec::new();
        let digest = copy_hashed(&mut &tail[..], &mut out, tail.len() as u64, h, &|_| {}).unwrap();
        assert_eq!(digest, sha(&data));
    }
}
