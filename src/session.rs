//! What both sides of a session share: the stream abstraction, the opening
//! handshake, and how a peer's ERROR or REFUSE reason maps onto our exit
//! codes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::exit_codes::{ExitCode, Failure};
use crate::names::escape_for_terminal;
use crate::protocol::{self, ErrorFrame, Frame, Preamble, ProtocolError, Reason};

/// A byte stream to a peer. Sessions run over any such stream, so tests can
/// use in-memory pipes or a corrupting proxy instead of a socket.
pub trait Link: Read + Write + Send {
    /// Sets the deadline that each following read and write must meet.
    fn set_deadline(&mut self, _timeout: Duration) -> io::Result<()> {
        Ok(())
    }
}

impl Link for TcpStream {
    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        crate::net::set_deadline(self, timeout)
    }
}

/// Sends our preamble, reads the peer's, and checks we can talk.
pub fn handshake<S: Link + ?Sized>(stream: &mut S, peer: &str) -> anyhow::Result<()> {
    Preamble::ours()
        .write_to(stream)
        .and_then(|()| stream.flush())
        .map_err(|e| Failure::network(format!("cannot talk to {peer}"), &e))?;
    let theirs = protocol::read_preamble(stream).map_err(|e| describe(e, peer))?;
    theirs
        .check_compatible()
        .map_err(|e| Failure::new(ExitCode::Network, format!("{peer}: {e}")))?;
    Ok(())
}

/// Reads the next frame, turning a read failure into a message that names
/// the peer and what we were waiting for.
pub fn expect_frame<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    waiting_for: &str,
) -> anyhow::Result<Frame> {
    protocol::read_frame(stream)
        .map_err(|e| describe(e, peer).context(format!("waiting for {waiting_for}")))
}

/// Reads the next frame where the peer may also just end the session:
/// `None` for a clean close before the first byte of a frame.
pub fn next_frame<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    waiting_for: &str,
) -> anyhow::Result<Option<Frame>> {
    match protocol::read_frame(stream) {
        Ok(frame) => Ok(Some(frame)),
        Err(ProtocolError::Closed) => Ok(None),
        Err(e) => Err(describe(e, peer).context(format!("waiting for {waiting_for}"))),
    }
}

/// Writes one frame and flushes it, naming the peer on failure.
pub fn send_frame<S: Link + ?Sized>(
    stream: &mut S,
    frame: &Frame,
    peer: &str,
) -> anyhow::Result<()> {
    protocol::write_frame(stream, frame)
        .and_then(|()| stream.flush())
        .map_err(|e| Failure::network(format!("connection to {peer} lost"), &e).into())
}

/// Best effort: tells the peer why we abort. Errors are ignored because the
/// connection may already be gone, and our own error is what matters.
pub fn send_error<S: Link + ?Sized>(stream: &mut S, reason: Reason, message: &str) {
    let frame = Frame::Error(ErrorFrame {
        reason,
        message: message.to_string(),
    });
    let _ = protocol::write_frame(stream, &frame).and_then(|()| stream.flush());
}

/// A protocol-level read error as a [`Failure`] with the right exit code.
pub fn describe(err: ProtocolError, peer: &str) -> anyhow::Error {
    match err {
        ProtocolError::Closed => {
            Failure::new(ExitCode::Network, format!("{peer} closed the connection")).into()
        }
        ProtocolError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => Failure::new(
            ExitCode::Network,
            format!("connection to {peer} lost: {}", e),
        )
        .into(),
        ProtocolError::Io(e) => Failure::network(format!("connection to {peer} lost"), &e).into(),
        other => Failure::new(ExitCode::Network, format!("{peer}: {other}")).into(),
    }
}

/// The exit code for a failure the peer reported with `reason`.
pub fn code_for_reason(reason: Reason) -> ExitCode {
    match reason {
        Reason::Exists
        | Reason::BadName
        | Reason::TooLarge
        | Reason::Unsupported
        | Reason::LocalIo
        | Reason::Busy => ExitCode::Refused,
        Reason::Timeout => ExitCode::Timeout,
        Reason::Protocol | Reason::Interrupted | Reason::Other(_) => ExitCode::Network,
    }
}

/// An ERROR frame from the peer as our failure.
pub fn peer_aborted(e: &ErrorFrame, peer: &str) -> anyhow::Error {
    Failure::new(
        code_for_reason(e.reason),
        format!("{peer} aborted: {}", escape_for_terminal(&e.message)),
    )
    .into()
}

/// A frame that has no business arriving now.
pub fn unexpected(got: &Frame, expected: &'static str, peer: &str) -> anyhow::Error {
    Failure::new(
        ExitCode::Network,
        format!(
            "{peer}: {}",
            ProtocolError::Unexpected {
                expected,
                got: got.name()
            }
        ),
    )
    .into()
}
