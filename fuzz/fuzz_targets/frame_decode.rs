//! Control frames from arbitrary bytes: the stream reader (length checked
//! before allocating) and the payload decoder for every type byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::protocol::{Frame, read_frame, read_frame_capped};

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    while let Ok(frame) = read_frame(&mut reader) {
        // Whatever decodes must encode back to a frame that decodes alike.
        let bytes = frame.encode();
        assert_eq!(read_frame(&mut &bytes[..]).unwrap(), frame);
    }
    let _ = read_frame_capped(&mut &data[..], 8192);
    if let Some((ty, payload)) = data.split_first() {
        let _ = Frame::decode(*ty, payload);
    }
});
