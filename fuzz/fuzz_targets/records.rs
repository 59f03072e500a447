//! The encrypted record layer reading arbitrary bytes: nothing forged may
//! open, and nothing may panic or allocate past one record's bound. Then a
//! round trip shaped by the same bytes: writes of any sizes (flushed or
//! not), read back in reads of any sizes over a link that hands out any
//! pieces, must give back exactly what was written (the paths that seal
//! from the caller's buffer and open into it, and the ones in place).
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use xfer::link::Link;
use xfer::secure::{Encrypted, Keys};

fn forged(data: &[u8]) {
    let mut link = Encrypted::new(
        Pieces {
            wire: data,
            piece: usize::MAX,
        },
        Keys::from_raw([1; 32], [2; 32]),
    );
    let mut out = [0u8; 4096];
    loop {
        match link.read(&mut out) {
            // Random bytes cannot carry a valid tag for an unknown key.
            Ok(0) => break,
            Ok(n) => panic!("{n} bytes opened from forged records"),
            Err(_) => break,
        }
    }
}

/// A link that hands out at most `piece` bytes a read.
struct Pieces<'a> {
    wire: &'a [u8],
    piece: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.piece);
        self.wire.read(&mut buf[..n])
    }
}

impl Write for Pieces<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Link for Pieces<'_> {}

struct Sink<'a>(&'a mut Vec<u8>);

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Sink<'_> {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

impl Link for Sink<'_> {}

/// A size from two bytes of the input, scaled so that sizes around and
/// above one record (64 KiB) come up as often as small ones.
fn size(bytes: &[u8], at: usize) -> usize {
    let b = |i: usize| bytes.get(at + i).copied().unwrap_or(0) as usize;
    let raw = b(0) << 8 | b(1);
    if raw & 1 == 0 { raw >> 4 } else { raw * 4 }
}

fuzz_target!(|data: &[u8]| {
    forged(data);
    round_trip(data);
});

fn round_trip(data: &[u8]) {
    let keys = || Keys::from_raw([3; 32], [3; 32]);
    let mut wire = Vec::new();
    let mut sealer = Encrypted::new(Sink(&mut wire), keys());
    let mut written = Vec::new();
    let mut k = 0;
    for step in data.chunks(3).take(12) {
        let n = size(step, 0);
        let chunk: Vec<u8> = (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(k))
            .collect();
        k = k.wrapping_add(1);
        sealer.write_all(&chunk).unwrap();
        written.extend_from_slice(&chunk);
        if step.get(2).is_some_and(|b| b & 1 == 1) {
            sealer.flush().unwrap();
        }
    }
    sealer.flush().unwrap();
    drop(sealer);
    let piece = size(data, 1).max(1);
    let mut opener = Encrypted::new(Pieces { wire: &wire, piece }, keys());
    let mut got = Vec::new();
    let mut i = 0;
    loop {
        let want = size(data, 2 * i + 5).max(1);
        i += 1;
        let mut buf = vec![0u8; want];
        let n = opener.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got == written,
        "read back {} bytes of {}",
        got.len(),
        written.len()
    );
}
