//! The receiver's front door: one thread that accepts connections and runs
//! every opening exchange (preambles, SPAKE2, CONFIRM) without blocking, so
//! no peer can make it wait. A connection that has not authenticated costs
//! a socket, a small [`Opening`] and an entry in two tables; no thread.
//! Only a connection that proved it knows the secret (or, with
//! `--insecure`, sent a good preamble) leaves the gate, as an [`Opened`]
//! link for a session.
//!
//! The rules (caps, penalties, the guess budget, the log tally) are in
//! [`crate::admission`], pure and tested on their own; this module does the I/O
//! they decide on.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use crate::admission::{Admission, Admit, Limits, Outcome, Source, Tally};
use crate::exit_codes::{ExitCode, Failure};
use crate::handshake::{Failed, Opening};
use crate::output::Reporter;
use crate::protocol::{self, Reason};
use crate::secure::{Keys, Role, Secret};
use crate::signals;

const LISTENER: Token = Token(usize::MAX);

/// How long a refused or failed connection may take to read our last
/// frame before it is closed anyway.
const LINGER: Duration = Duration::from_secs(1);

/// Connections being closed at once, at most; beyond it they are closed
/// without waiting for the peer to read why.
const MAX_CLOSING: usize = 1024;

/// How often the log sums up what it did not show line by line.
const TALLY_WINDOW: Duration = Duration::from_secs(60);

/// How the gate behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// The whole opening must be done within this (`--connect-timeout`).
    pub timeout: Duration,
    /// Sessions served at once; a connection beyond it is refused as busy.
    pub max_sessions: usize,
    /// A one-shot `--insecure` receiver ends on the first failed opening
    /// (there is no secret a stranger could be failing to know).
    pub ends_on_failure: bool,
    /// One-shot receivers (and a listening sender) say "still waiting for
    /// the sender (receiver)" after a failed opening.
    pub one_shot: bool,
    /// Our side of the opening: the receiver, or a sender that listens
    /// (`send --listen`).
    pub role: Role,
}

/// A connection whose opening is done: the session's to serve.
pub struct Opened {
    pub stream: TcpStream,
    /// The peer as shown in messages.
    pub peer: String,
    /// `None`: plaintext.
    pub keys: Option<Keys>,
    /// What the peer's preamble says it can decode (`CAP_*`).
    pub peer_capabilities: u8,
    /// Our last opening bytes the socket did not take yet: send them first.
    pub unsent: Vec<u8>,
    /// When the opening's deadline runs out (the first offer is due by then).
    pub deadline: Instant,
}

/// What the gate hands its caller.
pub enum Next {
    Session(Box<Opened>),
    /// A signal arrived.
    Stopped,
    /// The receiver must end: a one-shot code was retired, or a one-shot
    /// `--insecure` receiver's only peer failed.
    Failed(anyhow::Error),
}

enum Phase {
    /// In the opening exchange.
    Opening(Box<Opening>),
    /// Our last words are going out; then the peer's are read and dropped
    /// until it closes or [`LINGER`] runs out.
    Closing { shut: bool },
}

struct Conn {
    stream: mio::net::TcpStream,
    peer: String,
    source: Source,
    deadline: Instant,
    /// Bytes for the peer not yet taken by the socket.
    out: Vec<u8>,
    phase: Phase,
}

pub struct Gate<'a> {
    poll: Poll,
    events: Events,
    listener: mio::net::TcpListener,
    conns: HashMap<u64, Conn>,
    deadlines: BTreeSet<(Instant, u64)>,
    admission: Admission,
    tally: Tally,
    secret: Secret,
    settings: Settings,
    reporter: &'a Reporter,
    /// Sessions being served (kept by the caller).
    sessions: &'a AtomicUsize,
    next_id: u64,
    closing: usize,
    accept_paused_until: Option<Instant>,
    ready: VecDeque<Opened>,
    failed: Option<anyhow::Error>,
    retired_said: bool,
    last_chores: Instant,
}

impl<'a> Gate<'a> {
    pub fn new(
        listener: TcpListener,
        secret: Secret,
        settings: Settings,
        reporter: &'a Reporter,
        sessions: &'a AtomicUsize,
    ) -> io::Result<Gate<'a>> {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Gate {
            poll,
            events: Events::with_capacity(1024),
            listener,
            conns: HashMap::new(),
            deadlines: BTreeSet::new(),
            admission: Admission::new(settings.limits),
            tally: Tally::new(TALLY_WINDOW),
            secret,
            settings,
            reporter,
            sessions,
            next_id: 0,
            closing: 0,
            accept_paused_until: None,
            ready: VecDeque::new(),
            failed: None,
            retired_said: false,
            last_chores: Instant::now(),
        })
    }

    /// Runs the door until a connection is ready for a session, a signal
    /// arrives, or the receiver must end.
    pub fn next_opened(&mut self) -> Next {
        loop {
            if let Some(opened) = self.ready.pop_front() {
                return Next::Session(Box::new(opened));
            }
            if let Some(e) = self.failed.take() {
                self.linger_closing();
                return Next::Failed(e);
            }
            if signals::interrupted() {
                return Next::Stopped;
            }
            let now = Instant::now();
            self.expire(now);
            if now.duration_since(self.last_chores) >= Duration::from_secs(1) {
                self.last_chores = now;
                self.sum_up(now, false);
                self.admission.prune(now);
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept_all();
            }
            // Wake for the next deadline, and often enough to see a signal.
            let mut wait = Duration::from_millis(250);
            if let Some((at, _)) = self.deadlines.first() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if let Some(at) = self.accept_paused_until {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut self.events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Next::Failed(
                        Failure::network("cannot wait for connections", &e).into(),
                    );
                }
                continue;
            }
            let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
            for token in tokens {
                if token == LISTENER {
                    if self.accept_paused_until.is_none() {
                        self.accept_all();
                    }
                } else {
                    self.drive(token.0 as u64);
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => self.arrive(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors (or memory): stop accepting for a
                    // moment, and say so once a minute at most.
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    let any = Source::of(std::net::Ipv4Addr::UNSPECIFIED.into());
                    if self.tally.note(any, "accept-failed", Instant::now()) {
                        crate::output::print_error(
                            &anyhow::Error::new(e).context("cannot accept a connection"),
                        );
                    }
                    return;
                }
            }
        }
    }

    fn arrive(&mut self, mut stream: mio::net::TcpStream, addr: SocketAddr) {
        let now = Instant::now();
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let peer = addr.to_string();
        let source = Source::of(addr.ip());
        let id = self.next_id;
        self.next_id += 1;
        let _ = stream.set_nodelay(true);
        let ours = protocol::Preamble::ours(self.secret.transport()).encode();
        let sessions = self.sessions.load(Ordering::SeqCst);
        if sessions >= self.settings.max_sessions {
            let message = format!("receiver is busy with {sessions} transfers; try again later");
            self.note(source, &peer, "busy", || {
                format!("refused {peer}: {message}")
            });
            self.refuse(id, stream, peer, source, &ours, Reason::Busy, &message);
            return;
        }
        match self.admission.arrive(id, source, now) {
            Admit::Yes { drop } => {
                if let Some(old) = drop {
                    self.drop_for_room(old);
                }
                let mut opening = Box::new(crate::handshake::opening(
                    self.settings.role,
                    &self.secret,
                    &peer,
                ));
                let out = opening.take_output();
                let deadline = now + self.settings.timeout;
                if self.register(id, &mut stream).is_err() {
                    self.admission.leave(id, source, Outcome::Closed, now);
                    return;
                }
                let phase = Phase::Opening(opening);
                self.track(
                    id,
                    Conn {
                        stream,
                        peer,
                        source,
                        deadline,
                        out,
                        phase,
                    },
                );
            }
            Admit::Penalised(left) => {
                let secs = left.as_secs().max(1);
                let message = format!(
                    "this address is refused after failed attempts \
                     (wrong codes, timeouts or malformed data); {}",
                    protocol::retry_hint(left)
                );
                self.note(source, &peer, "penalised", || {
                    format!("refused {peer}: penalised for {secs} s more")
                });
                self.refuse(id, stream, peer, source, &ours, Reason::Busy, &message);
            }
            Admit::Retired => {
                let message = "this receiver no longer accepts its code after too many \
                               wrong guesses; ask for a new one";
                self.note(source, &peer, "retired", || {
                    format!("refused {peer}: the code is retired")
                });
                self.refuse(id, stream, peer, source, &ours, Reason::Auth, message);
            }
        }
    }

    fn register(&mut self, id: u64, stream: &mut mio::net::TcpStream) -> io::Result<()> {
        self.poll.registry().register(
            stream,
            Token(id as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Turns a connection away with our preamble and an ERROR, then closes.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        id: u64,
        stream: mio::net::TcpStream,
        peer: String,
        source: Source,
        preamble: &[u8],
        reason: Reason,
        message: &str,
    ) {
        let mut out = preamble.to_vec();
        error_frame(&mut out, reason, message);
        let conn = Conn {
            stream,
            peer,
            source,
            deadline: Instant::now(),
            out: Vec::new(),
            phase: Phase::Closing { shut: false },
        };
        self.close_with(id, conn, out);
    }

    /// Closes a connection (not tracked any more) after `out`, our last
    /// words: the peer gets up to [`LINGER`] to read them, in the loop,
    /// unless too many are closing already.
    fn close_with(&mut self, id: u64, mut conn: Conn, out: Vec<u8>) {
        if out.is_empty()
            || self.closing >= MAX_CLOSING
            || self.register(id, &mut conn.stream).is_err()
        {
            // Said once if the socket takes it; closed as it is dropped.
            let _ = conn.stream.write(&out);
            return;
        }
        conn.out = out;
        conn.deadline = Instant::now() + LINGER;
        conn.phase = Phase::Closing { shut: false };
        self.track(id, conn);
    }

    /// Keeps `conn` until it is done or its deadline passes, and does what
    /// it can do now.
    fn track(&mut self, id: u64, conn: Conn) {
        self.deadlines.insert((conn.deadline, id));
        if matches!(conn.phase, Phase::Closing { .. }) {
            self.closing += 1;
        }
        self.conns.insert(id, conn);
        self.drive(id);
    }

    /// Drops handshake `id` to make room for a newer one.
    fn drop_for_room(&mut self, id: u64) {
        let Some(mut conn) = self.remove(id) else {
            return;
        };
        let message = "receiver is at its limit of connections in their handshake and \
                       dropped the oldest; try again";
        error_frame(&mut conn.out, Reason::Busy, message);
        let _ = conn.stream.write(&conn.out);
        let peer = conn.peer.clone();
        self.note(conn.source, &conn.peer, "dropped", || {
            format!("dropped {peer}: the oldest handshake, to make room")
        });
    }

    fn remove(&mut self, id: u64) -> Option<Conn> {
        let mut conn = self.conns.remove(&id)?;
        self.deadlines.remove(&(conn.deadline, id));
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if matches!(conn.phase, Phase::Closing { .. }) {
            self.closing -= 1;
        }
        Some(conn)
    }

    /// Closes the connections whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            match conn.phase {
                Phase::Closing { .. } => {
                    self.remove(id);
                }
                Phase::Opening(_) => {
                    let (peer, secs) = (conn.peer.clone(), self.settings.timeout.as_secs_f64());
                    let e = Failure::new(
                        ExitCode::Timeout,
                        format!(
                            "{peer}: timed out: the handshake took more than {secs} s (--connect-timeout)"
                        ),
                    );
                    self.failed_opening(id, Outcome::TimedOut, e.into(), None);
                }
            }
        }
    }

    /// Does what connection `id` can do now without waiting.
    fn drive(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(e) = flush(&mut conn.stream, &mut conn.out) {
            let e = Failure::network(format!("cannot talk to {}", conn.peer), &e).into();
            return self.gone(id, e);
        }
        match &mut conn.phase {
            Phase::Closing { shut } => {
                if !conn.out.is_empty() {
                    return;
                }
                if !*shut {
                    *shut = true;
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
                // Read and drop what the peer still sends, until it closes.
                let mut sink = [0u8; 4096];
                loop {
                    match conn.stream.read(&mut sink) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                self.remove(id);
            }
            Phase::Opening(opening) => {
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(keys) = opening.finished() {
                        let capabilities = opening.peer_capabilities();
                        return self.opened(id, keys, capabilities);
                    }
                    let need = opening.needed().min(buf.len());
                    match conn.stream.read(&mut buf[..need]) {
                        Ok(0) => {
                            let probe = opening.nothing_heard();
                            let guessed = opening.confirmed_to_a_stranger();
                            let peer = &conn.peer;
                            let e = Failure::new(
                                ExitCode::Network,
                                format!("{peer} closed the connection during the handshake"),
                            );
                            let outcome = if probe {
                                Outcome::Probe
                            } else if guessed {
                                Outcome::WrongCode
                            } else {
                                Outcome::Closed
                            };
                            return self.failed_opening(id, outcome, e.into(), None);
                        }
                        Ok(n) => {
                            let fed = opening.feed(&buf[..n]);
                            conn.out.extend_from_slice(&opening.take_output());
                            if let Err(e) = fed {
                                let outcome = match opening.failed_as() {
                                    _ if opening.confirmed_to_a_stranger() => Outcome::WrongCode,
                                    Failed::WrongCode => Outcome::WrongCode,
                                    Failed::PeerStopped => Outcome::Closed,
                                    Failed::Mismatch => Outcome::Mismatch,
                                    Failed::Garbage => Outcome::Garbage,
                                };
                                let last = std::mem::take(&mut conn.out);
                                return self.failed_opening(id, outcome, e, Some(last));
                            }
                            if let Err(e) = flush(&mut conn.stream, &mut conn.out) {
                                let e =
                                    Failure::network(format!("cannot talk to {}", conn.peer), &e)
                                        .into();
                                return self.gone(id, e);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let e =
                                Failure::network(format!("connection to {} lost", conn.peer), &e)
                                    .into();
                            return self.gone(id, e);
                        }
                    }
                }
            }
        }
    }

    /// A connection that broke: in its opening, a failure of the closed
    /// kind; while closing, just gone.
    fn gone(&mut self, id: u64, e: anyhow::Error) {
        match self.conns.get(&id).map(|c| &c.phase) {
            Some(Phase::Opening(_)) => self.failed_opening(id, Outcome::Closed, e, None),
            _ => {
                self.remove(id);
            }
        }
    }

    /// Opening `id` is done: it becomes a session (or, if the sessions are
    /// full by now, hears that the receiver is busy).
    fn opened(&mut self, id: u64, keys: Option<Keys>, peer_capabilities: u8) {
        let Some(conn) = self.remove(id) else {
            return;
        };
        self.admission
            .leave(id, conn.source, Outcome::Authenticated, Instant::now());
        let sessions = self.sessions.load(Ordering::SeqCst);
        let stream: TcpStream = conn.stream.into();
        if sessions >= self.settings.max_sessions {
            // Over the session limit after all: the ERROR goes out sealed,
            // as the sender now expects.
            let message = format!("receiver is busy with {sessions} transfers; try again later");
            let mut s = stream;
            let _ = s.set_nonblocking(false);
            let _ = crate::net::set_deadline(&s, Duration::from_millis(200));
            let _ = s.write_all(&conn.out);
            let mut link = crate::handshake::secured(&mut s, keys);
            crate::link::send_error(&mut link, Reason::Busy, &message);
            drop(link);
            let peer = conn.peer.clone();
            self.note(conn.source, &conn.peer, "busy", || {
                format!("refused {peer}: {message}")
            });
            return;
        }
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        self.ready.push_back(Opened {
            stream,
            peer: conn.peer,
            keys,
            peer_capabilities,
            unsent: conn.out,
            deadline: conn.deadline,
        });
    }

    /// Opening `id` failed with `e`; `last` is what we still have to say
    /// (an ERROR saying why).
    fn failed_opening(
        &mut self,
        id: u64,
        outcome: Outcome,
        e: anyhow::Error,
        last: Option<Vec<u8>>,
    ) {
        let Some(conn) = self.remove(id) else {
            return;
        };
        let now = Instant::now();
        let penalised = self.admission.leave(id, conn.source, outcome, now);
        if !matches!(outcome, Outcome::Probe) {
            let shown = if self.settings.one_shot && self.secret != Secret::Insecure {
                e.context(match self.settings.role {
                    Role::Receiver => "still waiting for the sender",
                    Role::Sender => "still waiting for the receiver",
                })
            } else {
                e
            };
            let (peer, kind) = (conn.peer.clone(), outcome.name());
            if self.tally.note(conn.source, kind, now) {
                crate::output::print_error(&shown);
                self.reporter.event(
                    "handshake-failed",
                    || json!({ "peer": peer, "reason": kind, "error": format!("{shown:#}") }),
                );
            }
            if self.settings.ends_on_failure {
                self.failed = Some(shown);
            }
        }
        if let Some(secs) = penalised {
            let (source, secs) = (conn.source.to_string(), secs.as_secs());
            self.reporter
                .info(|| format!("penalised {source} for {secs} s: repeated failed handshakes"));
            self.reporter
                .event("penalised", || json!({ "source": source, "seconds": secs }));
        }
        if self.admission.retired() && !self.retired_said {
            self.retired_said = true;
            let n = self.admission.wrong_guesses();
            let e = Failure::new(
                ExitCode::Auth,
                format!(
                    "{n} wrong guesses of the code: it is no longer accepted, so a guess cannot \
                     get in (start the receiver again for a new code)"
                ),
            );
            self.reporter
                .event("code-retired", || json!({ "wrong_guesses": n }));
            if self.settings.one_shot {
                self.failed = Some(e.into());
            } else {
                crate::output::print_error(&e.into());
            }
        }
        // What we still have to say goes out before the close.
        self.close_with(id, conn, last.unwrap_or_default());
    }

    /// One refusal or drop for the log: in full the first time in a window
    /// for this source and kind, counted after that.
    fn note(
        &mut self,
        source: Source,
        peer: &str,
        kind: &'static str,
        line: impl FnOnce() -> String,
    ) {
        if self.tally.note(source, kind, Instant::now()) {
            self.reporter.info(line);
            self.reporter
                .event("refused", || json!({ "peer": peer, "reason": kind }));
        }
    }

    /// Sums up what the log did not show line by line: the windows that
    /// are over, or (`all`) every one.
    fn sum_up(&mut self, now: Instant, all: bool) {
        let due = if all {
            self.tally.all(now)
        } else {
            self.tally.due(now)
        };
        for s in due {
            let counts: Vec<String> = s.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let source = s.source.to_string();
            self.reporter.info(|| {
                format!(
                    "from {source} in the last {} s, not shown one by one: {}",
                    s.seconds,
                    counts.join(", ")
                )
            });
            let map: serde_json::Map<String, serde_json::Value> = s
                .counts
                .iter()
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect();
            self.reporter.event(
                "handshakes-summary",
                || json!({ "source": source, "seconds": s.seconds, "counts": map }),
            );
        }
    }

    /// A one-shot receiver about to end: give the refused a moment to read
    /// why (what is left is closed when the gate is dropped).
    fn linger_closing(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.get_mut(&id)
                && matches!(conn.phase, Phase::Closing { .. })
                && !conn.out.is_empty()
            {
                let _ = conn.stream.write(&conn.out);
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }
}

impl Drop for Gate<'_> {
    /// The log's last word on what it did not show line by line.
    fn drop(&mut self) {
        self.sum_up(Instant::now(), true);
    }
}

/// Writes what the socket takes now of `out`.
fn flush(stream: &mut mio::net::TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An ERROR frame appended to `out`.
fn error_frame(out: &mut Vec<u8>, reason: Reason, message: &str) {
    let frame = protocol::Frame::Error(protocol::ErrorFrame {
        reason,
        message: message.to_string(),
    });
    protocol::write_frame(out, &frame).expect("writing to memory");
}

/// The budget of wrong guesses for `secret`: sized to a code's strength;
/// none worth keeping for a key file (or plaintext).
pub fn guess_budget_for(secret: &Secret) -> Option<u64> {
    match secret {
        Secret::Code(code) => Some(crate::admission::guess_budget(
            &crate::secure::normalize_code(code),
        )),
        _ => None,
    }
}

/// The code a listening side made up, on a line of its own: the one line
/// a person must see, so not hidden by `--quiet` (with `--json` it is in
/// the `listening` event instead). `who` types it ("the sender").
pub fn show_code(code: &str, who: &str) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr().lock(),
        format!("xfer: code: {code}  ({who} types it, or passes it in XFER_CODE)\n").as_bytes(),
    );
}

/// What to type on the other machine, as croc and wormhole print it: the
/// `command`, with `{how}` standing for how it authenticates and `{addr}`
/// for where to reach this one (the bound address, or this machine's name
/// and addresses); never the code.
pub fn other_side(
    command: &str,
    secret: &Secret,
    bind: Option<std::net::IpAddr>,
    port: u16,
) -> String {
    let how = match secret {
        Secret::Insecure => " --insecure",
        Secret::Key(_) => " --key-file KEYFILE",
        Secret::Code(_) => "",
    };
    let hosts = crate::net::addresses_for(bind, port);
    let run = |addr: &str| command.replace("{how}", how).replace("{addr}", addr);
    match hosts.split_first() {
        None => format!(
            "on the other machine, run: {}",
            run(&format!("THIS-HOST:{port}"))
        ),
        Some((first, [])) => format!("on the other machine, run: {}", run(first)),
        Some((first, more)) => format!(
            "on the other machine, run: {} (or {})",
            run(first),
            more.join(", ")
        ),
    }
}

/// Raises this process's limit on open files to its hard limit, so a
/// receiver can hold thousands of handshakes; returns the limit now.
pub fn raise_open_files() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|c| c < hard)
    {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
