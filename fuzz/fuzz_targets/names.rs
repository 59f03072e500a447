//! Names and paths from a peer: validation, collision checks and the form
//! shown on a terminal. An accepted path must never leave the destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::names::{Seen, escape_for_terminal, shown, validate_name, validate_path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = validate_name(text);
    let escaped = escape_for_terminal(text);
    assert!(!escaped.contains('\x1b'));
    // At most 120 characters are shown, each escaped to at most 10.
    assert!(shown(text).chars().count() <= 120 * 10 + 40);
    let mut seen = Seen::default();
    for part in text.split('\n') {
        if let Ok(components) = validate_path(part) {
            for c in &components {
                assert!(!c.is_empty() && *c != "." && *c != ".." && !c.contains('/'));
                assert!(!c.contains('\0') && !c.contains('\\'));
            }
            let _ = seen.check(&components, part.ends_with('d'));
        }
    }
});
