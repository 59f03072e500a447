//! Compressed data (OFFER flag COMPRESSED) from arbitrary bytes: blocks are
//! checked before anything is allocated, a reader never yields more than a
//! block's stated length, never reads past the blocks it was asked for,
//! and what it accepts re-encodes to the same original bytes.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use xfer::compress::{CompressWriter, DecompressReader, MAX_BLOCK};

fuzz_target!(|data: &[u8]| {
    let mut source = data;
    let mut reader = DecompressReader::new(&mut source);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // Each 9-byte header announces at most MAX_BLOCK bytes.
                assert!(out.len() <= (data.len() / 9 + 1) * MAX_BLOCK);
            }
        }
    }
    // Whatever decoded goes through the encoder and back unchanged.
    let mut wire = Vec::new();
    let mut writer = CompressWriter::new(&mut wire, 1);
    std::io::Write::write_all(&mut writer, &out).unwrap();
    writer.finish().unwrap();
    let mut again = Vec::new();
    DecompressReader::new(&wire[..])
        .read_to_end(&mut again)
        .unwrap();
    assert_eq!(again, out);
});
