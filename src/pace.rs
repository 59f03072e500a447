//! `--bwlimit` and `--min-speed`: a link that paces the bytes crossing the
//! wire and fails a transfer that crawls.
//!
//! It sits directly on the socket, under the record layer, so it counts
//! what really crosses the wire (headers, tags, frames) and never what a
//! resume or a skip did not send. One [`Paced`] serves a whole session, so
//! the budget is the session's, whatever it holds.
//!
//! Pacing is a token bucket refilled continuously at the rate, holding at
//! most a tenth of a second's worth: a write (or read) larger than that is
//! cut into pieces, each waiting for its tokens, so the bytes go out evenly
//! and no one-second window can carry more than 1.1 × the rate. A slow
//! patch cannot be made up by a burst later.
//!
//! The speed floor counts the bytes moved while a file's data is flowing
//! ([`Link::floor`] arms it); time spent waiting for `--bwlimit` tokens is
//! not counted, and neither is anything outside data (the opening, local
//! hashing), so local work is never charged to the peer.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::link::Link;

/// The pacing and floor settings of one side.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes a second, at most (`--bwlimit`); `None`: no limit.
    pub bwlimit: Option<u64>,
    /// Bytes a second, at least, over `floor_window` (`--min-speed`).
    pub min_speed: Option<u64>,
    /// `--min-speed-time`.
    pub floor_window: Duration,
}

impl Limits {
    /// The limits as a person reads them back, for the log (`None`: none).
    pub fn describe(&self) -> Option<String> {
        let shown = |n: u64| format!("{} ({n} bytes a second)", crate::output::rate(n, 1.0));
        let mut parts = Vec::new();
        if let Some(n) = self.bwlimit {
            parts.push(format!("at most {} over the wire (--bwlimit)", shown(n)));
        }
        if let Some(n) = self.min_speed {
            parts.push(format!(
                "at least {} over each {} s of a file's data (--min-speed)",
                shown(n),
                self.floor_window.as_secs_f64()
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A token bucket: `rate` bytes a second, at most `burst` at once.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1) as f64;
        // A tenth of a second, at least 512 bytes so tiny rates still move
        // a frame header at a time.
        let burst = (rate / 10.0).max(512.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// The most that may go in one piece.
    fn piece(&self) -> usize {
        self.burst as usize
    }

    /// How long to wait before `n` bytes may go (zero: now).
    fn wait_for(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        let short = n as f64 - self.tokens;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.rate)
        }
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// The speed floor's window.
#[derive(Debug)]
struct Floor {
    rate: u64,
    window: Duration,
    armed: bool,
    start: Instant,
    moved: u64,
    /// Time spent waiting for `--bwlimit` in this window.
    paused: Duration,
}

impl Floor {
    fn rearm(&mut self, on: bool, now: Instant) {
        self.armed = on;
        self.start = now;
        self.moved = 0;
        self.paused = Duration::ZERO;
    }

    /// Counts `n` bytes; an error when a whole window has passed below the
    /// floor.
    fn moved(&mut self, n: usize, now: Instant) -> io::Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.moved += n as u64;
        let counted = now
            .saturating_duration_since(self.start)
            .saturating_sub(self.paused);
        if counted < self.window {
            return Ok(());
        }
        let speed = self.moved as f64 / counted.as_secs_f64();
        if speed < self.rate as f64 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "slower than --min-speed {}/s for {} s ({}/s)",
                    crate::units::human_bytes(self.rate),
                    counted.as_secs(),
                    crate::units::human_bytes(speed as u64)
                ),
            ));
        }
        self.rearm(true, now);
        Ok(())
    }
}

/// A link paced to `--bwlimit` and held to `--min-speed`.
pub struct Paced<S: Link> {
    inner: S,
    bucket: Option<Bucket>,
    floor: Option<Floor>,
    /// The deadline each read and write has (`--idle-timeout`), as set.
    idle: Option<Duration>,
    /// The deadline the socket has now, when we shortened it for the floor.
    set: Option<Duration>,
}

impl<S: Link> Paced<S> {
    pub fn new(inner: S, limits: Limits) -> Self {
        let now = Instant::now();
        Paced {
            inner,
            bucket: limits.bwlimit.map(|rate| Bucket::new(rate, now)),
            floor: limits.min_speed.map(|rate| Floor {
                rate,
                window: limits.floor_window,
                armed: false,
                start: now,
                moved: 0,
                paused: Duration::ZERO,
            }),
            idle: None,
            set: None,
        }
    }

    /// While the floor is armed, a read or write waits no longer than what
    /// is left of its window, so a peer that sends nothing at all fails the
    /// floor too (not only one that trickles); else the idle deadline.
    fn deadline(&mut self) -> io::Result<()> {
        let want = match (&self.floor, self.idle) {
            (Some(f), idle) if f.armed => {
                let counted = Instant::now()
                    .saturating_duration_since(f.start)
                    .saturating_sub(f.paused);
                let left = f
                    .window
                    .saturating_sub(counted)
                    .max(Duration::from_millis(10));
                Some(idle.map_or(left, |i| i.min(left)))
            }
            (_, idle) => idle,
        };
        if want != self.set
            && let Some(d) = want
        {
            self.inner.set_deadline(d)?;
            self.set = want;
        }
        Ok(())
    }

    /// A wait that timed out: if it was the floor's window that ran out,
    /// the floor decides (an error below it; else a new window and the
    /// wait goes on).
    fn floor_decides(&mut self, e: io::Error) -> io::Result<()> {
        let due = self.floor.as_ref().is_some_and(|f| {
            f.armed
                && Instant::now()
                    .saturating_duration_since(f.start)
                    .saturating_sub(f.paused)
                    >= f.window
        });
        if !due || !crate::exit_codes::is_timeout(&e) {
            return Err(e);
        }
        self.spent(0)
    }

    /// Waits until `want` bytes may move; how many may (a piece).
    fn take(&mut self, want: usize) -> usize {
        let Some(bucket) = &mut self.bucket else {
            return want;
        };
        let n = want.min(bucket.piece()).max(1);
        let wait = bucket.wait_for(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
            if let Some(floor) = &mut self.floor {
                floor.paused += wait;
            }
        }
        n
    }

    /// `n` bytes moved.
    fn spent(&mut self, n: usize) -> io::Result<()> {
        if let Some(bucket) = &mut self.bucket {
            bucket.spend(n);
        }
        match &mut self.floor {
            Some(floor) => floor.moved(n, Instant::now()),
            None => Ok(()),
        }
    }
}

impl<S: Link> Read for Paced<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.take(buf.len());
        loop {
            self.deadline()?;
            match self.inner.read(&mut buf[..n]) {
                Ok(got) => {
                    self.spent(got)?;
                    return Ok(got);
                }
                Err(e) => self.floor_decides(e)?,
            }
        }
    }
}

impl<S: Link> Write for Paced<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.take(buf.len());
        loop {
            self.deadline()?;
            match self.inner.write(&buf[..n]) {
                Ok(sent) => {
                    self.spent(sent)?;
                    return Ok(sent);
                }
                Err(e) => self.floor_decides(e)?,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Link> Link for Paced<S> {
    fn input_within(&self, wait: Duration) -> bool {
        self.inner.input_within(wait)
    }

    fn set_deadline(&mut self, timeout: Duration) -> io::Result<()> {
        self.idle = Some(timeout);
        self.set = Some(timeout);
        self.inner.set_deadline(timeout)
    }

    fn floor(&mut self, armed: bool) {
        if let Some(floor) = &mut self.floor {
            floor.rearm(armed, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_paces_evenly_and_never_bursts_past_a_tenth_of_a_second() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        assert_eq!(b.piece(), 100_000);
        // The first tenth of a second's worth goes at once...
        assert_eq!(b.wait_for(100_000, t0), Duration::ZERO);
        b.spend(100_000);
        // ...then each piece waits for its own tokens.
        assert_eq!(b.wait_for(50_000, t0), Duration::from_millis(50));
        // Time idle refills at most one burst: no catching up later.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.wait_for(100_000, later), Duration::ZERO);
        b.spend(100_000);
        assert_eq!(b.wait_for(100_000, later), Duration::from_millis(100));
        // Tiny rates still move a frame header at a time.
        assert_eq!(Bucket::new(10, t0).piece(), 512);
    }

    #[test]
    fn the_floor_fails_a_window_below_the_rate_and_ignores_pauses_and_disarmed_time() {
        let t0 = Instant::now();
        let mut f = Floor {
            rate: 1000,
            window: Duration::from_secs(10),
            armed: false,
            start: t0,
            moved: 0,
            paused: Duration::ZERO,
        };
        // Disarmed: nothing counts.
        assert!(f.moved(0, t0 + Duration::from_secs(100)).is_ok());
        f.rearm(true, t0);
        assert!(f.moved(5_000, t0 + Duration::from_secs(5)).is_ok());
        // 11,000 bytes in 10 s: above the floor; a new window starts.
        assert!(f.moved(6_000, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(f.moved, 0);
        // 20 s with 10 of them paused by --bwlimit: 10 s counted, 9 kB.
        let t1 = t0 + Duration::from_secs(10);
        f.paused = Duration::from_secs(10);
        let e = f.moved(9_000, t1 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("--min-speed"), "{e}");
    }
}
