//! The session rules of both sides as pure state machines: no sockets, no
//! files, no clock. The I/O loops in `send` and `recv` move bytes between a
//! link, files and these machines; tests and the fuzzer drive the machines
//! directly, through whole sessions.

#[doc(hidden)]
pub mod drill;
pub mod receiver;
pub mod sender;

use std::time::Duration;

/// How long one side waits for the other while the other may be doing
/// local work on `bytes` of a file before it can answer (fsync before a
/// verdict, reading back a partial file or hashing its copy before an
/// answer, hashing a prefix before a START): the idle timeout plus one
/// second per 16 MiB, a slow disk's pace.
pub fn allow_for_local_work(idle: Duration, bytes: u64) -> Duration {
    idle + Duration::from_secs(bytes / (16 << 20))
}
