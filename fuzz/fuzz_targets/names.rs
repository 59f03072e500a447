//! Names and paths from a peer (bytes, as on Linux): validation under both
//! policies, collision checks, link targets and the form shown on a
//! terminal. An accepted path must never leave the destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::names::{
    Policy, Seen, escape_for_terminal, link_leaves_tree, shown, validate_name, validate_path,
};

fuzz_target!(|data: &[u8]| {
    let portable = data.first().is_some_and(|b| b & 1 == 1);
    let policy = Policy { portable };
    let _ = validate_name(data, policy);
    let escaped = escape_for_terminal(data);
    assert!(!escaped.contains('\x1b') && !escaped.contains('\n'));
    // About 240 bytes are shown, each escaped to at most 10 characters.
    assert!(shown(data).chars().count() <= 250 * 10 + 40);
    let mut seen = Seen::default();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(components) = validate_path(part, policy) {
            for c in &components {
                assert!(!c.is_empty() && *c != b"." && *c != b".." && !c.contains(&b'/'));
                assert!(!c.contains(&0));
                assert!(!portable || !c.contains(&b'\\'));
            }
            let _ = seen.check(&components, part.ends_with(b"d"), |i| {
                portable || i % 2 == 1
            });
            // A link target judged safe never climbs above the tree.
            let depth = components.len() - 1;
            if !link_leaves_tree(depth, part) {
                // Only leading `..`, never more than the depth.
                let mut level = depth as isize;
                let mut descended = false;
                for c in part.split(|b| *b == b'/') {
                    match c {
                        b".." => {
                            assert!(!descended);
                            level -= 1;
                        }
                        b"" | b"." => {}
                        _ => descended = true,
                    }
                    assert!(level >= 0);
                }
            }
        }
    }
});
