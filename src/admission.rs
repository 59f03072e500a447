//! Who may start a handshake, as pure rules with no sockets and an explicit
//! clock: caps on handshakes (overall and per source), penalties for
//! sources that fail, the budget of wrong code guesses, and a tally that
//! keeps the log readable under attack. The event loop in `gate` asks
//! these rules and does what they say.
//!
//! The model is OpenSSH's `MaxStartups`, `PerSourceMaxStartups` and
//! `PerSourcePenalties`, with one change: a full table makes room by
//! dropping the oldest handshake of the source that holds the most, rather
//! than refusing the newcomer, so a crowd of idle connections from other
//! addresses can never keep a new sender out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A source, as the rules count it: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut s = v6.segments();
                s[4..].fill(0);
                Source(IpAddr::V6(s.into()))
            }
            v4 => Source(v4),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// What each kind of failure adds to a source's penalty (`--penalties`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalties {
    /// A wrong code or key.
    pub wrong_code: Duration,
    /// A handshake not finished within `--connect-timeout`.
    pub timeout: Duration,
    /// Bytes that are not xfer, a malformed frame, or a mismatched transport.
    pub garbage: Duration,
    /// A source is refused once its penalty reaches this...
    pub min: Duration,
    /// ...and never for longer than this.
    pub max: Duration,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties {
            wrong_code: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            garbage: Duration::from_secs(5),
            min: Duration::from_secs(15),
            max: Duration::from_secs(600),
        }
    }
}

impl std::str::FromStr for Penalties {
    type Err = String;

    /// `off`, or `KIND:DURATION,...` with kinds `wrong-code`, `timeout`,
    /// `garbage`, `min`, `max` (the others keep their defaults).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = Penalties::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, value) = part.split_once(':').ok_or_else(|| {
                format!("'{part}' is not KIND:DURATION (e.g. wrong-code:5s), nor 'off'")
            })?;
            let d = crate::units::parse_duration(value.trim())?;
            match kind.trim() {
                "wrong-code" => p.wrong_code = d,
                "timeout" => p.timeout = d,
                "garbage" => p.garbage = d,
                "min" => p.min = d,
                "max" => p.max = d,
                other => {
                    return Err(format!(
                        "unknown penalty '{other}': use wrong-code, timeout, garbage, min or max"
                    ));
                }
            }
        }
        if p.max < p.min {
            return Err("the penalty max is below its min".into());
        }
        Ok(p)
    }
}

/// The rules' settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source.
    pub max_per_source: usize,
    /// `None`: `--penalties off`.
    pub penalties: Option<Penalties>,
    /// Wrong code guesses allowed before the code is retired (`None`: no
    /// limit worth keeping, as for a key file).
    pub guess_budget: Option<u64>,
}

/// How a handshake ended, for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// It knew the secret (or none was needed): a session follows.
    Authenticated,
    /// Closed before sending anything: someone checking we are here.
    Probe,
    /// Closed, or sent ERROR, part way through.
    Closed,
    /// An xfer peer set up for another transport: a mistake, not an attack.
    Mismatch,
    WrongCode,
    TimedOut,
    Garbage,
    /// Dropped to make room for a newer handshake.
    Dropped,
}

impl Outcome {
    /// The name in logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Authenticated => "authenticated",
            Outcome::Probe => "probe",
            Outcome::Closed => "closed",
            Outcome::Mismatch => "mismatch",
            Outcome::WrongCode => "wrong-code",
            Outcome::TimedOut => "timeout",
            Outcome::Garbage => "garbage",
            Outcome::Dropped => "dropped",
        }
    }
}

/// The answer to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Start its handshake; first drop handshake `drop` (the table is full).
    Yes { drop: Option<u64> },
    /// The source is penalised for this long yet.
    Penalised(Duration),
    /// The code has been retired: no more handshakes.
    Retired,
}

#[derive(Debug, Default)]
struct SourceState {
    /// Handshakes in progress, oldest first.
    handshakes: VecDeque<u64>,
    /// The penalty runs out at this time.
    penalty_until: Option<Instant>,
    /// The penalty reached `min`: the source is refused until it runs out.
    enforced: bool,
}

/// The rules' state.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    sources: HashMap<Source, SourceState>,
    handshakes: usize,
    wrong_guesses: u64,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            sources: HashMap::new(),
            handshakes: 0,
            wrong_guesses: 0,
        }
    }

    /// Handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// Wrong guesses so far.
    pub fn wrong_guesses(&self) -> u64 {
        self.wrong_guesses
    }

    /// The code has had its budget of wrong guesses.
    pub fn retired(&self) -> bool {
        self.limits
            .guess_budget
            .is_some_and(|budget| self.wrong_guesses >= budget)
    }

    /// How long `source` is refused for yet (zero: not refused).
    pub fn penalised_for(&mut self, source: Source, now: Instant) -> Duration {
        let Some(state) = self.sources.get_mut(&source) else {
            return Duration::ZERO;
        };
        match state.penalty_until {
            Some(until) if until > now => {
                if state.enforced {
                    until - now
                } else {
                    Duration::ZERO
                }
            }
            _ => {
                state.penalty_until = None;
                state.enforced = false;
                Duration::ZERO
            }
        }
    }

    /// A new connection `id` from `source`.
    pub fn arrive(&mut self, id: u64, source: Source, now: Instant) -> Admit {
        if self.retired() {
            return Admit::Retired;
        }
        let left = self.penalised_for(source, now);
        if !left.is_zero() {
            return Admit::Penalised(left);
        }
        let own = self.sources.get(&source).map_or(0, |s| s.handshakes.len());
        let drop = if own >= self.limits.max_per_source.max(1) {
            // The source's own oldest makes room.
            self.sources[&source]
                .handshakes
                .front()
                .map(|&old| (source, old))
        } else if self.handshakes >= self.limits.max_handshakes.max(1) {
            // The oldest of the source that holds the most.
            self.sources
                .iter()
                .max_by_key(|(_, s)| s.handshakes.len())
                .and_then(|(key, s)| s.handshakes.front().map(|&old| (*key, old)))
        } else {
            None
        };
        if let Some((from, old)) = drop {
            self.forget(old, from);
        }
        self.sources
            .entry(source)
            .or_default()
            .handshakes
            .push_back(id);
        self.handshakes += 1;
        Admit::Yes {
            drop: drop.map(|(_, old)| old),
        }
    }

    /// Handshake `id` from `source` is over. Returns the penalty, when the
    /// source has just become refused because of it.
    pub fn leave(
        &mut self,
        id: u64,
        source: Source,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Duration> {
        if outcome != Outcome::Dropped {
            self.forget(id, source);
        }
        if outcome == Outcome::WrongCode {
            self.wrong_guesses += 1;
        }
        let penalties = self.limits.penalties?;
        let add = match outcome {
            Outcome::WrongCode => penalties.wrong_code,
            Outcome::TimedOut => penalties.timeout,
            Outcome::Garbage => penalties.garbage,
            _ => return None,
        };
        if add.is_zero() {
            return None;
        }
        let state = self.sources.entry(source).or_default();
        let from = state.penalty_until.filter(|&u| u > now).unwrap_or(now);
        let until = (from + add).min(now + penalties.max);
        state.penalty_until = Some(until);
        if !state.enforced && until - now >= penalties.min {
            state.enforced = true;
            return Some(until - now);
        }
        None
    }

    /// Removes handshake `id` of `source` (it was dropped, or is over).
    fn forget(&mut self, id: u64, source: Source) {
        let Some(state) = self.sources.get_mut(&source) else {
            return;
        };
        if let Some(i) = state.handshakes.iter().position(|&h| h == id) {
            state.handshakes.remove(i);
            self.handshakes -= 1;
        }
        if state.handshakes.is_empty() && state.penalty_until.is_none() {
            self.sources.remove(&source);
        }
    }

    /// The table's own rules, for tests and the fuzzer: the count matches
    /// the per-source queues, no handshake is listed twice, no source
    /// holds more than its cap and none is penalised past `max`.
    pub fn consistent(&self, now: Instant) -> bool {
        let listed: usize = self.sources.values().map(|s| s.handshakes.len()).sum();
        let mut ids: Vec<u64> = self
            .sources
            .values()
            .flat_map(|s| s.handshakes.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let max = self.limits.penalties.map(|p| p.max);
        listed == self.handshakes
            && ids.len() == listed
            && self.handshakes <= self.limits.max_handshakes.max(1)
            && self
                .sources
                .values()
                .all(|s| s.handshakes.len() <= self.limits.max_per_source.max(1))
            && self.sources.values().all(|s| match (s.penalty_until, max) {
                (Some(until), Some(max)) => until.saturating_duration_since(now) <= max,
                (Some(_), None) => false,
                (None, _) => true,
            })
    }

    /// Forgets the sources with nothing in progress and no penalty left
    /// (call now and then, so the table does not grow with every address
    /// ever penalised).
    pub fn prune(&mut self, now: Instant) {
        self.sources.retain(|_, s| {
            if s.penalty_until.is_some_and(|u| u <= now) {
                s.penalty_until = None;
                s.enforced = false;
            }
            !s.handshakes.is_empty() || s.penalty_until.is_some()
        });
    }
}

/// Wrong guesses a code may take while the chance that any of them was
/// right stays below one in a million: 10^-6 × 2^bits, at least 1.
/// `bits` is 5 per Crockford symbol of the normalised code (a generated
/// code has 8: 40 bits, about 1.1 million guesses; a 4-symbol chosen code,
/// 1). A chosen code's real strength is at most that.
pub fn guess_budget(normalised_code: &str) -> u64 {
    let bits = 5 * normalised_code.chars().count() as u32;
    if bits >= 100 {
        return u64::MAX;
    }
    ((2f64.powi(bits as i32) * 1e-6) as u64).max(1)
}

/// Keeps the log readable under attack: the first event of each kind from
/// each source in a window is shown in full; the rest are only counted,
/// and summed up once the window is over.
#[derive(Debug)]
pub struct Tally {
    window: Duration,
    sources: BTreeMap<Source, Window>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    shown: Vec<&'static str>,
    hidden: BTreeMap<&'static str, u64>,
}

/// What a window held beyond what was shown.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub source: Source,
    pub seconds: u64,
    pub counts: Vec<(&'static str, u64)>,
}

impl Tally {
    pub fn new(window: Duration) -> Tally {
        Tally {
            window,
            sources: BTreeMap::new(),
        }
    }

    /// One event `kind` from `source`: true when it is to be shown in full.
    pub fn note(&mut self, source: Source, kind: &'static str, now: Instant) -> bool {
        let w = self.sources.entry(source).or_insert_with(|| Window {
            opened: now,
            shown: Vec::new(),
            hidden: BTreeMap::new(),
        });
        if w.shown.contains(&kind) {
            *w.hidden.entry(kind).or_default() += 1;
            false
        } else {
            w.shown.push(kind);
            true
        }
    }

    /// Every window now, over or not, with what it held unshown (when the
    /// receiver stops).
    pub fn all(&mut self, now: Instant) -> Vec<Summary> {
        std::mem::take(&mut self.sources)
            .into_iter()
            .filter(|(_, w)| !w.hidden.is_empty())
            .map(|(source, w)| Summary {
                source,
                seconds: now.duration_since(w.opened).as_secs(),
                counts: w.hidden.into_iter().collect(),
            })
            .collect()
    }

    /// The windows that are over, with what they held unshown (those that
    /// hid nothing close silently).
    pub fn due(&mut self, now: Instant) -> Vec<Summary> {
        let over: Vec<Source> = self
            .sources
            .iter()
            .filter(|(_, w)| now.duration_since(w.opened) >= self.window)
            .map(|(s, _)| *s)
            .collect();
        let mut out = Vec::new();
        for source in over {
            let w = self.sources.remove(&source).expect("listed above");
            if !w.hidden.is_empty() {
                out.push(Summary {
                    source,
                    seconds: now.duration_since(w.opened).as_secs(),
                    counts: w.hidden.into_iter().collect(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    fn limits(max: usize, per: usize) -> Limits {
        Limits {
            max_handshakes: max,
            max_per_source: per,
            penalties: Some(Penalties::default()),
            guess_budget: None,
        }
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(src("2001:db8:1:2::5"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::5"), src("2001:db8:1:3::5"));
        assert_eq!(src("::ffff:127.0.0.2"), src("127.0.0.2"));
        assert_eq!(src("2001:db8:1:2::5").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_full_table_drops_the_oldest_of_the_source_holding_the_most() {
        let now = Instant::now();
        let mut a = Admission::new(limits(4, 10));
        let (crowd, lone, new) = (src("127.0.0.2"), src("127.0.0.3"), src("127.0.0.4"));
        assert_eq!(a.arrive(1, lone, now), Admit::Yes { drop: None });
        for id in 2..5 {
            assert_eq!(a.arrive(id, crowd, now), Admit::Yes { drop: None });
        }
        // Full: the crowd's oldest goes, not the lone source's.
        assert_eq!(a.arrive(5, new, now), Admit::Yes { drop: Some(2) });
        assert_eq!(a.arrive(6, new, now), Admit::Yes { drop: Some(3) });
        assert_eq!(a.handshakes(), 4);
        // The dropped ones' ends change nothing.
        a.leave(2, crowd, Outcome::Dropped, now);
        assert_eq!(a.handshakes(), 4);
        a.leave(1, lone, Outcome::Authenticated, now);
        assert_eq!(a.handshakes(), 3);
        assert!(a.consistent(now));
    }

    #[test]
    fn a_source_at_its_cap_makes_room_from_its_own_oldest() {
        let now = Instant::now();
        let mut a = Admission::new(limits(100, 2));
        let s = src("10.0.0.1");
        a.arrive(1, s, now);
        a.arrive(2, s, now);
        assert_eq!(a.arrive(3, s, now), Admit::Yes { drop: Some(1) });
        assert_eq!(a.arrive(4, src("10.0.0.2"), now), Admit::Yes { drop: None });
    }

    #[test]
    fn failures_add_up_to_a_refusal_that_runs_out() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(100, 100));
        let s = src("192.0.2.7");
        // Two wrong codes (10 s) are below min (15 s): still admitted.
        for id in 0..2 {
            a.arrive(id, s, t0);
            assert_eq!(a.leave(id, s, Outcome::WrongCode, t0), None);
        }
        assert_eq!(a.arrive(2, s, t0), Admit::Yes { drop: None });
        // A third makes 15 s: refused from now until it runs out.
        assert_eq!(
            a.leave(2, s, Outcome::WrongCode, t0),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            a.arrive(3, s, t0 + Duration::from_secs(5)),
            Admit::Penalised(Duration::from_secs(10))
        );
        // Others are not affected, and probes or closes add nothing.
        assert_eq!(a.arrive(4, src("192.0.2.8"), t0), Admit::Yes { drop: None });
        assert_eq!(a.leave(4, src("192.0.2.8"), Outcome::Probe, t0), None);
        assert_eq!(
            a.arrive(5, s, t0 + Duration::from_secs(15)),
            Admit::Yes { drop: None }
        );
        assert_eq!(a.wrong_guesses(), 3);
    }

    #[test]
    fn penalties_are_capped_at_max_and_can_be_turned_off() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(100, 100));
        let s = src("192.0.2.9");
        for id in 0..200 {
            a.arrive(id, s, t0);
            a.leave(id, s, Outcome::TimedOut, t0);
        }
        assert_eq!(
            a.arrive(999, s, t0),
            Admit::Penalised(Duration::from_secs(600))
        );
        let mut off = Admission::new(Limits {
            penalties: None,
            ..limits(100, 100)
        });
        for id in 0..50 {
            off.arrive(id, s, t0);
            assert_eq!(off.leave(id, s, Outcome::Garbage, t0), None);
        }
        assert_eq!(off.arrive(50, s, t0), Admit::Yes { drop: None });
    }

    #[test]
    fn the_code_is_retired_when_its_budget_of_wrong_guesses_is_spent() {
        assert_eq!(guess_budget("abcd"), 1);
        assert_eq!(guess_budget("7f3kq9wd"), 1_099_511);
        assert_eq!(guess_budget("abcdef"), 1_073);
        let t0 = Instant::now();
        let mut a = Admission::new(Limits {
            guess_budget: Some(2),
            penalties: None,
            ..limits(100, 100)
        });
        let s = src("192.0.2.1");
        for id in 0..2 {
            assert!(!a.retired());
            a.arrive(id, s, t0);
            a.leave(id, s, Outcome::WrongCode, t0);
        }
        assert!(a.retired());
        assert_eq!(a.arrive(9, src("192.0.2.2"), t0), Admit::Retired);
    }

    #[test]
    fn penalties_read_as_openssh_writes_them() {
        let p: Penalties = "wrong-code:1m, min:30s".parse().unwrap();
        assert_eq!(p.wrong_code, Duration::from_secs(60));
        assert_eq!(p.min, Duration::from_secs(30));
        assert_eq!(p.timeout, Penalties::default().timeout);
        assert!(
            "crash:5s"
                .parse::<Penalties>()
                .unwrap_err()
                .contains("unknown")
        );
        assert!("min:1h,max:1m".parse::<Penalties>().is_err());
        assert!("5s".parse::<Penalties>().is_err());
    }

    #[test]
    fn the_tally_shows_the_first_of_each_kind_and_sums_up_the_rest() {
        let t0 = Instant::now();
        let mut t = Tally::new(Duration::from_secs(60));
        let s = src("203.0.113.5");
        assert!(t.note(s, "wrong-code", t0));
        assert!(t.note(s, "timeout", t0));
        for _ in 0..99 {
            assert!(!t.note(s, "wrong-code", t0));
        }
        assert!(t.note(src("203.0.113.6"), "wrong-code", t0));
        assert_eq!(t.due(t0 + Duration::from_secs(59)), vec![]);
        assert_eq!(
            t.due(t0 + Duration::from_secs(60)),
            vec![Summary {
                source: s,
                seconds: 60,
                counts: vec![("wrong-code", 99)]
            }]
        );
        // A new window shows the first again.
        assert!(t.note(s, "wrong-code", t0 + Duration::from_secs(61)));
    }
}
