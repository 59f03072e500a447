//! The front door's rules driven by arbitrary sequences of arrivals,
//! endings and the passing of time: the table stays consistent (counts,
//! caps, penalties within max), a dropped handshake is one that was in, and
//! a retired code stays retired.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use xfer::admission::{Admission, Admit, Limits, Outcome, Penalties, Source};

fuzz_target!(|data: &[u8]| {
    let Some((&setup, ops)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_handshakes: usize::from(setup & 7) + 1,
        max_per_source: usize::from(setup >> 3 & 3) + 1,
        penalties: (setup & 0x20 == 0).then(Penalties::default),
        guess_budget: (setup & 0x40 == 0).then_some(u64::from(setup >> 6) + 1),
    };
    let mut a = Admission::new(limits);
    let mut now = Instant::now();
    let mut inside: HashMap<u64, Source> = HashMap::new();
    let mut next_id = 0u64;
    let mut retired = false;
    for op in ops.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        match kind % 4 {
            0 => {
                let source = Source::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, arg % 5)));
                let id = next_id;
                next_id += 1;
                match a.arrive(id, source, now) {
                    Admit::Yes { drop } => {
                        if let Some(old) = drop {
                            let from = inside.remove(&old).expect("drops one that was in");
                            a.leave(old, from, Outcome::Dropped, now);
                        }
                        inside.insert(id, source);
                    }
                    Admit::Penalised(left) => {
                        assert!(!left.is_zero());
                        assert!(limits.penalties.is_some_and(|p| left <= p.max));
                    }
                    Admit::Retired => assert!(a.retired()),
                }
            }
            1 => {
                let Some(&id) = inside.keys().nth(usize::from(arg) % inside.len().max(1)) else {
                    continue;
                };
                let source = inside.remove(&id).expect("listed");
                let outcome = [
                    Outcome::Authenticated,
                    Outcome::Probe,
                    Outcome::Closed,
                    Outcome::Mismatch,
                    Outcome::WrongCode,
                    Outcome::TimedOut,
                    Outcome::Garbage,
                ][usize::from(arg >> 4) % 7];
                a.leave(id, source, outcome, now);
            }
            2 => now += Duration::from_millis(u64::from(arg) * 250),
            _ => a.prune(now),
        }
        assert!(a.consistent(now), "inconsistent after {op:?}");
        assert_eq!(a.handshakes(), inside.len());
        if retired {
            assert!(a.retired(), "a retired code came back");
        }
        retired = a.retired();
    }
});
