//! The encrypted record layer reading arbitrary bytes: nothing forged may
//! open, and nothing may panic or allocate past one record's bound.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use xfer::secure::{Encrypted, Keys};
use xfer::link::Link;

struct Bytes<'a>(&'a [u8]);

impl Read for Bytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Bytes<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Link for Bytes<'_> {}

fuzz_target!(|data: &[u8]| {
    let mut link = Encrypted::new(Bytes(data), Keys::from_raw([1; 32], [2; 32]));
    let mut out = [0u8; 4096];
    loop {
        match link.read(&mut out) {
            // Random bytes cannot carry a valid tag for an unknown key.
            Ok(0) => break,
            Ok(n) => panic!("{n} bytes opened from forged records"),
            Err(_) => break,
        }
    }
});
