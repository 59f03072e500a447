//! Data of unknown length (a stream, such as stdin) travels as DATA frames:
//! type 0x08, a big-endian u32 length of at most [`MAX_DATA_CHUNK`], then
//! that many bytes; a DATA frame of length 0 ends the stream.
//!
//! Both directions are adapters over any `Read`/`Write`, so the hashing copy
//! runs over them unchanged. The reader checks every length before reading
//! and never allocates: chunk bytes go straight into the caller's buffer.

use std::io::{self, Read, Write};

use byteorder::{BigEndian, ByteOrder};

/// Frame type of a data chunk.
pub const DATA_FRAME: u8 = 0x08;
/// Largest payload of one DATA frame.
pub const MAX_DATA_CHUNK: usize = 1024 * 1024;
/// OFFER flag: the size is unknown and the data comes as DATA frames.
pub const FLAG_STREAM: u32 = 0x1;

/// Frames everything written to it as DATA chunks.
pub struct ChunkWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
}

impl<'a, W: Write + ?Sized> ChunkWriter<'a, W> {
    pub fn new(inner: &'a mut W) -> Self {
        ChunkWriter { inner }
    }

    /// Writes the zero-length chunk that ends the stream.
    pub fn finish(self) -> io::Result<()> {
        self.inner.write_all(&[DATA_FRAME, 0, 0, 0, 0])
    }
}

impl<W: Write + ?Sized> Write for ChunkWriter<'_, W> {
    /// Writes up to one chunk of `buf` as a whole frame (never a partial
    /// frame) and reports how much of `buf` it carried.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0); // an empty chunk would end the stream
        }
        let n = buf.len().min(MAX_DATA_CHUNK);
        let mut header = [DATA_FRAME, 0, 0, 0, 0];
        BigEndian::write_u32(&mut header[1..], n as u32);
        self.inner.write_all(&header)?;
        self.inner.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the payload bytes of DATA frames; end of file at the zero-length
/// chunk. Anything else is `InvalidData`; a close mid-stream is
/// `UnexpectedEof`.
pub struct ChunkReader<'a, R: Read + ?Sized> {
    inner: &'a mut R,
    /// Bytes left in the current chunk.
    left: usize,
    done: bool,
}

impl<'a, R: Read + ?Sized> ChunkReader<'a, R> {
    pub fn new(inner: &'a mut R) -> Self {
        ChunkReader {
            inner,
            left: 0,
            done: false,
        }
    }

    fn next_header(&mut self) -> io::Result<()> {
        let mut header = [0u8; 5];
        self.inner.read_exact(&mut header)?;
        if header[0] != DATA_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected a DATA frame, got type 0x{:02x}", header[0]),
            ));
        }
        let len = BigEndian::read_u32(&header[1..]) as usize;
        if len > MAX_DATA_CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("DATA frame of {len} bytes exceeds the {MAX_DATA_CHUNK}-byte limit"),
            ));
        }
        self.left = len;
        self.done = len == 0;
        Ok(())
    }
}

impl<R: Read + ?Sized> Read for ChunkReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            self.next_header()?;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a DATA frame",
            ));
        }
        self.left -= n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ChunkWriter::new(&mut out);
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    fn unframe(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut src = bytes;
        let mut out = Vec::new();
        ChunkReader::new(&mut src).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunks_round_trip_across_the_chunk_size() {
        for len in [
            0,
            1,
            MAX_DATA_CHUNK - 1,
            MAX_DATA_CHUNK,
            2 * MAX_DATA_CHUNK + 3,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            assert_eq!(unframe(&frame(&data)).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn layout_is_type_length_payload_and_a_zero_terminator() {
        assert_eq!(frame(b"ab"), [8, 0, 0, 0, 2, b'a', b'b', 8, 0, 0, 0, 0]);
    }

    #[test]
    fn oversized_chunk_is_rejected_before_reading_it() {
        let bytes = [8, 0x7f, 0xff, 0xff, 0xff];
        let err = unframe(&bytes).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn other_frames_and_truncation_are_errors() {
        assert_eq!(
            unframe(&[4, 0, 0, 0, 0]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let full = frame(b"hello");
        for cut in 0..full.len() {
            assert!(unframe(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn chunk_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unframe(&bytes);
        }
    }
}
