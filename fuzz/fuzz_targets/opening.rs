//! The opening exchange (preambles, PAKE, CONFIRM) fed arbitrary bytes in
//! arbitrary pieces, as either role: it fails or finishes, never panics,
//! and never asks for more than one opening frame at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::handshake::{Opening, SeededRng};
use xfer::secure::{Role, Secret};

/// A frame header plus the largest frame the opening takes.
const MOST: usize = 5 + xfer::handshake::MAX_OPENING_FRAME as usize;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 {
        Role::Sender
    } else {
        Role::Receiver
    };
    let secret = match first >> 1 & 3 {
        0 => Secret::Insecure,
        1 => Secret::Code("7f3k-q9wd".into()),
        _ => Secret::Key([7; 32]),
    };
    let mut opening = Opening::with_rng(role, &secret, "peer", SeededRng::new(first));
    // Piece sizes come from the input too: each byte below 16 says how many
    // of the following bytes to feed at once (at most what is needed).
    let mut input = rest;
    while !input.is_empty() {
        let _ = opening.take_output();
        if opening.finished().is_some() {
            return;
        }
        let need = opening.needed();
        assert!(need > 0 && need <= MOST, "asks for {need} bytes");
        let piece = usize::from(input[0] % 16).max(1).min(need).min(input.len());
        if opening.feed(&input[..piece]).is_err() {
            return;
        }
        input = &input[piece..];
    }
});
