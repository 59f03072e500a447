//! A one-connection TCP proxy on loopback that can flip a byte, stop
//! forwarding, or replay and reorder encrypted records, to show what xfer
//! does when the network misbehaves. When either side closes, it closes
//! both, like a network path going away.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Forward everything unchanged.
    Pass,
    /// Invert the byte at this offset of the sender-to-receiver stream.
    FlipByteAt(u64),
    /// Forward this many sender-to-receiver bytes, then swallow the rest.
    StallAfter(u64),
    /// Forward this many sender-to-receiver bytes, then cut the connection
    /// (like a network going down); later connections pass unchanged.
    CutAfter(u64),
    /// Forward this many sender-to-receiver bytes, then hold the rest back
    /// (the sender feels backpressure) until [`Proxy::release`].
    HoldAfter(u64),
    /// Forward this many sender-to-receiver bytes, then one byte every
    /// 200 ms (a peer that trickles to stay alive).
    TrickleAfter(u64),
    /// Of an encrypted session, send the sender's record number N twice.
    ReplayRecord(u64),
    /// Of an encrypted session, send the sender's records N and N+1 in
    /// the opposite order.
    SwapRecords(u64),
}

pub struct Proxy {
    pub port: u16,
    forwarded: Arc<AtomicU64>,
    released: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let counter = forwarded.clone();
        let released = Arc::new(AtomicBool::new(false));
        let gate = released.clone();
        thread::spawn(move || {
            // The first connection gets the mode; any later one (a retry)
            // passes unchanged, counted with the first.
            for (i, client) in listener.incoming().take(16).enumerate() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                };
                let mode = if i == 0 { mode } else { Mode::Pass };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (counter, gate) = (counter.clone(), gate.clone());
                thread::spawn(move || {
                    pump(c2, s2, mode, &counter, &gate);
                });
                thread::spawn(move || {
                    pump(
                        server,
                        client,
                        Mode::Pass,
                        &AtomicU64::new(0),
                        &AtomicBool::new(true),
                    );
                });
            }
        });
        Proxy {
            port,
            forwarded,
            released,
        }
    }

    /// Lets a [`Mode::HoldAfter`] proxy forward the rest.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sender-to-receiver bytes forwarded so far, over all connections.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` bytes went sender-to-receiver.
    pub fn wait_forwarded(&self, n: u64) {
        let deadline = Instant::now() + super::STEP;
        while self.forwarded.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "proxy forwarded only {} of {n} bytes",
                self.forwarded.load(Ordering::SeqCst)
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reads one unit of an encrypted session's sender stream as it is on the
/// wire: `header` bytes, whose last four are the big-endian length of what
/// follows (a frame's header has its type byte before that).
fn read_unit(from: &mut TcpStream, header: usize) -> Option<Vec<u8>> {
    let mut unit = vec![0u8; header];
    from.read_exact(&mut unit).ok()?;
    let len = u32::from_be_bytes(unit[header - 4..].try_into().unwrap()) as usize;
    let start = unit.len();
    unit.resize(start + len, 0);
    from.read_exact(&mut unit[start..]).ok()?;
    Some(unit)
}

/// Forwards an encrypted session record by record (after the preamble and
/// the PAKE and CONFIRM frames), replaying or swapping one.
fn pump_records(mut from: TcpStream, mut to: TcpStream, mode: Mode, forwarded: &AtomicU64) {
    let mut preamble = [0u8; 8];
    let mut ok = from.read_exact(&mut preamble).is_ok() && to.write_all(&preamble).is_ok();
    for _ in 0..2 {
        ok = ok
            && match read_unit(&mut from, 5) {
                Some(frame) => to.write_all(&frame).is_ok(),
                None => false,
            };
    }
    let mut n = 0u64;
    let mut held: Option<Vec<u8>> = None;
    while ok {
        let Some(record) = read_unit(&mut from, 4) else {
            break;
        };
        let out: Vec<Vec<u8>> = match mode {
            Mode::ReplayRecord(at) if n == at => vec![record.clone(), record],
            Mode::SwapRecords(at) if n == at => {
                held = Some(record);
                vec![]
            }
            Mode::SwapRecords(at) if n == at + 1 => vec![record, held.take().unwrap()],
            _ => vec![record],
        };
        n += 1;
        for r in out {
            ok = ok && to.write_all(&r).is_ok();
            forwarded.fetch_add(r.len() as u64, Ordering::SeqCst);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: Mode,
    forwarded: &AtomicU64,
    released: &AtomicBool,
) {
    if matches!(mode, Mode::ReplayRecord(_) | Mode::SwapRecords(_)) {
        return pump_records(from, to, mode, forwarded);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        if let Mode::HoldAfter(limit) = mode {
            let deadline = Instant::now() + super::STEP;
            while offset >= limit && !released.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        let want = match mode {
            Mode::HoldAfter(limit) if offset < limit && !released.load(Ordering::SeqCst) => {
                ((limit - offset) as usize).min(buf.len())
            }
            Mode::TrickleAfter(limit) if offset < limit => {
                ((limit - offset) as usize).min(buf.len())
            }
            Mode::TrickleAfter(_) => {
                thread::sleep(Duration::from_millis(200));
                1
            }
            _ => buf.len(),
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let start = offset;
        offset += n as u64;
        let send = match mode {
            Mode::Pass => n,
            Mode::FlipByteAt(at) => {
                if (start..offset).contains(&at) {
                    chunk[(at - start) as usize] ^= 0xff;
                }
                n
            }
            Mode::StallAfter(limit) | Mode::CutAfter(limit) => {
                limit.saturating_sub(start).min(n as u64) as usize
            }
            Mode::HoldAfter(_) | Mode::TrickleAfter(_) => n,
            Mode::ReplayRecord(_) | Mode::SwapRecords(_) => unreachable!("pump_records"),
        };
        if send > 0 && to.write_all(&chunk[..send]).is_err() {
            break;
        }
        forwarded.fetch_add(send as u64, Ordering::SeqCst);
        if matches!(mode, Mode::CutAfter(limit) if offset >= limit) {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
