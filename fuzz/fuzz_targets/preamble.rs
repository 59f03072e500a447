//! The 8-byte preamble from arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::protocol::read_preamble;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = read_preamble(&mut &data[..]) {
        let _ = p.check_compatible();
        assert_eq!(&p.encode()[..7], &data[..7]);
    }
});
