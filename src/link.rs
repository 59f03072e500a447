//! What both sides share below the session rules: the link (a byte stream
//! with deadlines, buffered or encrypted), the opening handshake, reading
//! and writing frames with messages that name the peer, and how a peer's
//! ERROR or REFUSE reason maps onto our exit codes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::exit_codes::{ExitCode, Failure, is_timeout};
use crate::protocol::{self, ErrorFrame, Frame, ProtocolError, Reason};

/// A byte stream to a peer. Sessions run over any such stream, so tests can
/// use in-memory pipes or a corrupting proxy instead of a socket.
pub trait Link: Read + Write + Send {
    /// Sets the deadline that each following read and write must meet.
    fn set_deadline(&mut self, _timeout: Duration) -> io::Result<()> {
        Ok(())
    }

    /// A file's data starts (`true`) or stops (`false`) flowing: the
    /// `--min-speed` floor counts only while it does (see `pace`).
    fn floor(&mut self, _armed: bool) {}

    /// Whether a read would find bytes (buffered here, arrived, or
    /// arriving within `wait`; zero asks without waiting). `false` when
    /// it cannot tell: the safe answer for a receiver deciding whether to
    /// answer before it waits.
    fn input_within(&self, _wait: Duration) -> bool {
        false
    }
}

impl Link for TcpStream {
    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        crate::net::set_deadline(self, timeout)
    }

    fn input_within(&self, wait: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [PollFd::new(self, PollFlags::IN)];
        let wait = rustix::time::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: wait.subsec_nanos() as _,
        };
        poll(&mut fds, Some(&wait)).is_ok_and(|n| n > 0)
    }
}

impl<S: Link + ?Sized> Link for &mut S {
    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        (**self).set_deadline(timeout)
    }

    fn input_within(&self, wait: Duration) -> bool {
        (**self).input_within(wait)
    }

    fn floor(&mut self, armed: bool) {
        (**self).floor(armed)
    }
}

impl<S: Link + ?Sized> Link for Box<S> {
    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        (**self).set_deadline(timeout)
    }

    fn input_within(&self, wait: Duration) -> bool {
        (**self).input_within(wait)
    }

    fn floor(&mut self, armed: bool) {
        (**self).floor(armed)
    }
}

/// One end of an in-memory duplex link: both sides of a session in one
/// process, with no socket (tests, and anything else that wants a session
/// without a network). Each write is handed over whole; the deadline
/// bounds each read. Dropping an end closes that direction.
pub struct MemoryLink {
    to_peer: std::sync::mpsc::SyncSender<Vec<u8>>,
    from_peer: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    pos: usize,
    deadline: Option<Duration>,
}

/// Two connected [`MemoryLink`]s; each holds at most `depth` unread writes.
pub fn memory_pair(depth: usize) -> (MemoryLink, MemoryLink) {
    let (a_tx, b_rx) = std::sync::mpsc::sync_channel(depth);
    let (b_tx, a_rx) = std::sync::mpsc::sync_channel(depth);
    let end = |to_peer, from_peer| MemoryLink {
        to_peer,
        from_peer,
        pending: Vec::new(),
        pos: 0,
        deadline: None,
    };
    (end(a_tx, a_rx), end(b_tx, b_rx))
}

impl Read for MemoryLink {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.pending.len() {
            let got = match self.deadline {
                Some(d) => self.from_peer.recv_timeout(d).map_err(|e| match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => {
                        io::Error::new(io::ErrorKind::TimedOut, "no data before the deadline")
                    }
                    std::sync::mpsc::RecvTimeoutError::Disconnected => {
                        io::Error::from(io::ErrorKind::UnexpectedEof)
                    }
                }),
                None => self
                    .from_peer
                    .recv()
                    .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof)),
            };
            match got {
                Ok(bytes) => {
                    self.pending = bytes;
                    self.pos = 0;
                }
                // The peer's end is gone: the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let n = out.len().min(self.pending.len() - self.pos);
        out[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for MemoryLink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.to_peer
            .send(data.to_vec())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Link for MemoryLink {
    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        self.deadline = Some(timeout);
        Ok(())
    }
}

/// Capacity of each of [`Buffered`]'s buffers.
const BUFFER: usize = 64 * 1024;

/// A link that gathers small writes (frames, small files) into one and
/// reads ahead, so a tree of small files costs a few syscalls per file, not
/// one per frame field. Before it waits for bytes from the peer it sends what
/// it gathered, so a side never waits for an answer to bytes it has not sent. Reads and
/// writes of a buffer's size or more go straight through, without a copy.
pub struct Buffered<S: Link> {
    inner: S,
    read_buf: Box<[u8]>,
    read_pos: usize,
    read_len: usize,
    write_buf: Vec<u8>,
    /// A write failed: the link is dead for writing (what was gathered may
    /// be half sent), and reads no longer try to send first, so the peer's
    /// last words (an ERROR saying why it stopped reading) can be read.
    broken: Option<io::ErrorKind>,
}

impl<S: Link> Buffered<S> {
    pub fn new(inner: S) -> Self {
        Buffered {
            inner,
            read_buf: vec![0u8; BUFFER].into_boxed_slice(),
            read_pos: 0,
            read_len: 0,
            write_buf: Vec::with_capacity(BUFFER),
            broken: None,
        }
    }

    fn send_gathered(&mut self) -> io::Result<()> {
        still_writable(self.broken)?;
        if !self.write_buf.is_empty() {
            let sent = self.inner.write_all(&self.write_buf);
            if let Err(e) = &sent {
                self.broken = Some(e.kind());
            }
            sent?;
            self.write_buf.clear();
        }
        Ok(())
    }
}

impl<S: Link> Read for Buffered<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.read_pos == self.read_len {
            // About to wait on the peer: first send it everything it may
            // be waiting for.
            let unsent = flush_before_wait(self.broken, || self.send_gathered())?;
            let got = if out.len() >= self.read_buf.len() {
                self.inner.read(out)
            } else {
                self.inner.read(&mut self.read_buf)
            };
            let n = last_words(unsent, got, |n| *n == 0)?;
            if out.len() >= self.read_buf.len() {
                return Ok(n);
            }
            self.read_len = n;
            self.read_pos = 0;
        }
        let n = out.len().min(self.read_len - self.read_pos);
        out[..n].copy_from_slice(&self.read_buf[self.read_pos..self.read_pos + n]);
        self.read_pos += n;
        Ok(n)
    }
}

/// Refuses any write on a link whose earlier write failed (`broken`, with
/// that failure's kind): part of it may have gone out, so anything sent now
/// would be out of step with what the peer got.
pub fn still_writable(broken: Option<io::ErrorKind>) -> io::Result<()> {
    match broken {
        None => Ok(()),
        Some(kind) => Err(io::Error::new(
            kind,
            "the connection failed earlier; nothing more is sent on it",
        )),
    }
}

/// The rule every buffering link keeps: before it waits on the peer, it
/// sends what it gathered (unless the link is already dead for writing),
/// keeping a failure to report after the read (see [`unsent`]).
pub fn flush_before_wait(
    broken: Option<io::ErrorKind>,
    send: impl FnOnce() -> io::Result<()>,
) -> io::Result<Option<io::Error>> {
    if broken.is_some() {
        return Ok(None);
    }
    unsent(send())
}

/// A failed send before a read, kept to report after the read: the peer may
/// have said why it stopped reading (an ERROR) before it closed. A timeout
/// is reported at once, since a peer that stalled has written nothing.
pub fn unsent(sent: io::Result<()>) -> io::Result<Option<io::Error>> {
    match sent {
        Ok(()) => Ok(None),
        Err(e) if is_timeout(&e) => Err(e),
        Err(e) => Ok(Some(e)),
    }
}

/// The read that followed an [`unsent`] failure: what it got if it got
/// something (`nothing` says when it did not), else the failed send.
pub fn last_words<T>(
    unsent: Option<io::Error>,
    got: io::Result<T>,
    nothing: impl FnOnce(&T) -> bool,
) -> io::Result<T> {
    match (got, unsent) {
        (Ok(v), Some(e)) if nothing(&v) => Err(e),
        (Err(_), Some(e)) => Err(e),
        (got, _) => got,
    }
}

impl<S: Link> Write for Buffered<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        still_writable(self.broken)?;
        if self.write_buf.len() + data.len() > BUFFER {
            self.send_gathered()?;
        }
        if data.len() >= BUFFER {
            let written = self.inner.write(data);
            if let Err(e) = &written {
                self.broken = Some(e.kind());
            }
            return written;
        }
        self.write_buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_gathered()?;
        self.inner.flush()
    }
}

impl<S: Link> Link for Buffered<S> {
    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        self.inner.set_deadline(timeout)
    }

    fn input_within(&self, wait: Duration) -> bool {
        self.read_pos < self.read_len || self.inner.input_within(wait)
    }

    fn floor(&mut self, armed: bool) {
        self.inner.floor(armed)
    }
}

/// A stream whose every read and write must finish before one instant.
pub struct WithDeadline<'a, S: Link + ?Sized> {
    inner: &'a mut S,
    until: std::time::Instant,
}

impl<'a, S: Link + ?Sized> WithDeadline<'a, S> {
    pub fn new(inner: &'a mut S, until: std::time::Instant) -> Self {
        WithDeadline { inner, until }
    }

    fn arm(&mut self) -> std::io::Result<()> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake deadline passed",
            ));
        }
        self.inner.set_deadline(left)
    }
}

impl<S: Link + ?Sized> std::io::Read for WithDeadline<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.inner.read(buf)
    }
}

impl<S: Link + ?Sized> std::io::Write for WithDeadline<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Link + ?Sized> Link for WithDeadline<'_, S> {
    fn input_within(&self, wait: Duration) -> bool {
        self.inner.input_within(wait)
    }
}

/// Sends now what `stream` has gathered (answers, ACKs) rather than when
/// it next waits for the peer.
pub fn send_now<S: Link + ?Sized>(stream: &mut S, peer: &str) -> anyhow::Result<()> {
    stream
        .flush()
        .map_err(|e| Failure::network(format!("cannot talk to {peer}"), &e).into())
}

/// Sets the deadline for each following read and write on `stream`.
pub fn set_deadline<S: Link + ?Sized>(
    stream: &mut S,
    timeout: Duration,
    peer: &str,
) -> anyhow::Result<()> {
    stream
        .set_deadline(timeout)
        .map_err(|e| Failure::network(format!("cannot set a deadline on {peer}"), &e).into())
}

/// Reads the next frame, turning a read failure into a message that names
/// the peer and what we were waiting for.
pub fn expect_frame<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    waiting_for: &str,
) -> anyhow::Result<Frame> {
    protocol::read_frame(stream).map_err(|e| {
        tell_peer(stream, &e);
        describe(e, peer).context(format!("waiting for {waiting_for}"))
    })
}

/// A peer whose bytes made no sense hears so (an ERROR frame) before the
/// connection closes; a lost connection or a deadline needs no words.
fn tell_peer<S: Link + ?Sized>(stream: &mut S, e: &ProtocolError) {
    if !matches!(e, ProtocolError::Closed | ProtocolError::Io(_)) {
        send_error(stream, Reason::Protocol, &e.to_string());
    }
}

/// Reads the next frame where the peer may also just end the session:
/// `None` for a clean close before the first byte of a frame.
pub fn next_frame<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    waiting_for: &str,
) -> anyhow::Result<Option<Frame>> {
    next_frame_capped(stream, peer, waiting_for, protocol::MAX_CONTROL_FRAME)
}

/// [`next_frame`] with the receiver's own cap on a frame's length; a peer
/// that goes over it hears why (ERROR, too large) and the session ends
/// with the refused exit code.
pub fn next_frame_capped<S: Link + ?Sized>(
    stream: &mut S,
    peer: &str,
    waiting_for: &str,
    cap: u32,
) -> anyhow::Result<Option<Frame>> {
    match protocol::read_frame_capped(stream, cap) {
        Ok(frame) => Ok(Some(frame)),
        Err(ProtocolError::Closed) => Ok(None),
        Err(e @ ProtocolError::FrameTooLarge { .. }) => {
            let message = format!("{e} (the receiver's --max-frame)");
            send_error(stream, Reason::TooLarge, &message);
            Err(Failure::new(ExitCode::Refused, format!("{peer}: {message}")).into())
        }
        Err(e) => {
            tell_peer(stream, &e);
            Err(describe(e, peer).context(format!("waiting for {waiting_for}")))
        }
    }
}

/// Writes one frame, naming the peer on failure. On a [`Buffered`] link it
/// may wait to go out with what follows, until the next read or flush.
pub fn send_frame<S: Link + ?Sized>(
    stream: &mut S,
    frame: &Frame,
    peer: &str,
) -> anyhow::Result<()> {
    protocol::write_frame(stream, frame)
        .map_err(|e| Failure::network(format!("connection to {peer} lost"), &e).into())
}

/// Writes one frame and makes sure it leaves now: for the last frame before
/// closing, which no read follows.
pub fn send_last_frame<S: Link + ?Sized>(
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

/// An ERROR frame from the peer as our failure.
pub fn peer_aborted(e: &ErrorFrame, peer: &str) -> anyhow::Error {
    // A code this xfer does not know is shown as its number.
    let unknown = match e.reason {
        Reason::Other(code) => format!(" (reason code {code})"),
        _ => String::new(),
    };
    let failure = Failure::new(
        ExitCode::for_peer_reason(e.reason),
        format!(
            "{peer} aborted: {}{unknown}",
            crate::names::escape_peer_message(&e.message)
        ),
    );
    // A busy receiver turns us away now, not for good.
    if e.reason == Reason::Busy {
        failure.transient().into()
    } else {
        failure.into()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, bug 8: an unknown reason code was not shown as a number,
    /// as docs/PROTOCOL.md requires.
    #[test]
    fn an_unknown_reason_code_is_shown_as_its_number() {
        let e = ErrorFrame {
            reason: Reason::from_code(4242),
            message: "new trouble".into(),
        };
        let err = peer_aborted(&e, "peer");
        assert!(format!("{err:#}").contains("reason code 4242"), "{err:#}");
        assert_eq!(ExitCode::for_error(&err), ExitCode::Network);
    }

    /// A receiver holding a batch waits a moment for the sender's next
    /// bytes: `input_within` must see bytes that arrive during the wait
    /// (not only those already there), see bytes a buffering link already
    /// holds, and give up when none come.
    #[test]
    fn input_within_sees_bytes_that_arrive_during_the_wait() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (rx, _) = listener.accept().unwrap();
        let mut rx = Buffered::new(rx);
        assert!(!rx.input_within(Duration::ZERO));
        let started = std::time::Instant::now();
        assert!(!rx.input_within(Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.write_all(b"next").unwrap();
            tx
        });
        // Bounded: the bytes come after 50 ms; ten seconds is only the
        // limit for a machine too loaded to run the writer sooner.
        assert!(rx.input_within(Duration::from_secs(10)));
        let _tx = writer.join().unwrap();
        let mut one = [0u8; 1];
        rx.read_exact(&mut one).unwrap();
        // Three more bytes are buffered here now: ready without a wait.
        assert!(rx.input_within(Duration::ZERO));
    }
}
