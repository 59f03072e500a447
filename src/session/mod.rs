//! The session rules of both sides as pure state machines: no sockets, no
//! files, no clock. The I/O loops in `send` and `recv` move bytes between a
//! link, files and these machines; tests and the fuzzer drive the machines
//! directly, through whole sessions.

pub mod receiver;
