//! A stream's chunked data frames from arbitrary bytes: bounded chunks,
//! a clean end only at the terminator.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use xfer::protocol::ChunkReader;

fuzz_target!(|data: &[u8]| {
    let mut source = data;
    let mut reader = ChunkReader::new(&mut source);
    let mut out = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match reader.read(&mut out) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total <= data.len());
});
