//! Endpoint choice within one backend: power of two choices over peak-EWMA
//! latency (the default, as in Linkerd), least-request, or round robin;
//! outlier ejection after consecutive failures; and the per-backend
//! concurrency limit. The per-endpoint statistics outlive config snapshots,
//! so a config push never forgets that an endpoint is slow or ejected.

use mesh_proto::v1 as pb;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an RTT observation takes to lose most of its weight (Linkerd's default).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);
/// The RTT assumed for an endpoint nothing has been measured on yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Longest ejection, however often an endpoint keeps failing.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Which algorithm picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// P2C over peak-EWMA RTT × (in-flight + 1).
    P2cEwma,
    /// Plain rotation.
    RoundRobin,
    /// P2C over in-flight requests.
    LeastRequest,
}

/// A backend's policy, from the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Endpoint choice.
    pub algorithm: Algorithm,
    /// Consecutive failures that eject; 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection time; doubles with each ejection in a row.
    #[serde(serialize_with = "ser_ms")]
    pub base_ejection: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
    /// Concurrent requests from this sidecar; 0 is unlimited.
    pub max_requests: u32,
    /// Concurrent connection attempts to each endpoint; 0 is unlimited.
    pub max_pending: u32,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Default for Policy {
    /// Istio's and Linkerd's defaults where they agree; 50% ejection cap so
    /// a bad push cannot eject a whole backend.
    fn default() -> Self {
        Policy {
            algorithm: Algorithm::P2cEwma,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
            max_requests: 0,
            max_pending: 0,
        }
    }
}

impl Policy {
    /// From proto; absent means the defaults.
    pub fn from_proto(p: Option<&pb::BackendPolicy>) -> Policy {
        let Some(p) = p else {
            return Policy::default();
        };
        Policy {
            algorithm: match pb::LoadBalancer::try_from(p.load_balancer) {
                Ok(pb::LoadBalancer::RoundRobin) => Algorithm::RoundRobin,
                Ok(pb::LoadBalancer::LeastRequest) => Algorithm::LeastRequest,
                _ => Algorithm::P2cEwma,
            },
            consecutive_failures: p.consecutive_failures,
            base_ejection: Duration::from_millis(p.base_ejection_ms),
            max_ejection_percent: p.max_ejection_percent.min(100),
            max_requests: p.max_requests,
            max_pending: p.max_pending,
        }
    }
}

/// Monotonic nanoseconds since the process's first call, for atomics.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the sidecar has learned about one endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    in_flight: AtomicU32,
    /// Connection attempts under way.
    connecting: Arc<AtomicU32>,
    /// Until when it is ejected (ns on our clock); 0 when it is not.
    ejected_until: AtomicU64,
    ewma: Mutex<Ewma>,
    outlier: Mutex<Outlier>,
    /// Requests sent, for `/config_dump`.
    requests: AtomicU64,
    /// Times ejected, for `/config_dump`.
    ejections: AtomicU64,
}

#[derive(Debug)]
struct Ewma {
    /// Estimated RTT in ns; `None` until the first observation.
    rtt_ns: Option<f64>,
    /// When it was last updated, or created.
    at_ns: u64,
}

impl Default for Ewma {
    fn default() -> Self {
        // Whole seconds: endpoints that appear together (one snapshot) tie,
        // so P2C spreads over them instead of always preferring the one
        // created a few nanoseconds earlier.
        const SECOND: u64 = 1_000_000_000;
        Ewma {
            rtt_ns: None,
            at_ns: now_ns() / SECOND * SECOND,
        }
    }
}

#[derive(Debug, Default)]
struct Outlier {
    consecutive: u32,
    /// Ejections in a row, for the exponential backoff.
    streak: u32,
}

impl Ewma {
    /// The estimate decayed to `now`: idle endpoints drift toward zero cost,
    /// so a once-slow endpoint is probed again eventually.
    /// A never-measured endpoint starts at `DEFAULT_RTT` and decays from
    /// when it appeared, so a new endpoint next to fast, lightly loaded
    /// ones is tried within seconds rather than never.
    fn decayed(&self, now: u64) -> f64 {
        let rtt = self.rtt_ns.unwrap_or(DEFAULT_RTT.as_nanos() as f64);
        let elapsed = now.saturating_sub(self.at_ns) as f64;
        rtt * (-elapsed / EWMA_DECAY.as_nanos() as f64).exp()
    }

    fn observe(&mut self, rtt_ns: f64, now: u64) {
        let current = self.decayed(now);
        // Peak-sensitive: a slower sample replaces the estimate at once; a
        // faster one only pulls it down gradually.
        self.rtt_ns = Some(if rtt_ns > current || self.rtt_ns.is_none() {
            rtt_ns
        } else {
            let w = (-(now.saturating_sub(self.at_ns) as f64) / EWMA_DECAY.as_nanos() as f64).exp();
            current * w + rtt_ns * (1.0 - w)
        });
        self.at_ns = now;
    }
}

impl Stats {
    /// Whether it is ejected now.
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    fn cost(&self, algorithm: Algorithm, now: u64) -> f64 {
        let pending = f64::from(self.in_flight.load(Ordering::Relaxed)) + 1.0;
        match algorithm {
            Algorithm::LeastRequest | Algorithm::RoundRobin => pending,
            Algorithm::P2cEwma => self.ewma.lock().expect("ewma lock").decayed(now) * pending,
        }
    }

    /// Counters for `/config_dump`.
    pub fn dump(&self) -> StatsDump {
        let now = now_ns();
        StatsDump {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected: self.ejected(now),
            ewma_ms: self.ewma.lock().expect("ewma lock").decayed(now) / 1e6,
        }
    }
}

/// `/config_dump` view of one endpoint's statistics.
#[derive(Debug, Serialize)]
pub struct StatsDump {
    in_flight: u32,
    requests: u64,
    ejections: u64,
    ejected: bool,
    ewma_ms: f64,
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// The backend has no ready endpoints.
    Empty,
    /// Every endpoint is ejected.
    AllEjected,
    /// The backend's concurrency limit is reached.
    Overloaded(u32),
}

/// Chooses among `stats` (one per endpoint, in endpoint order) by `policy`,
/// skipping ejected endpoints and, when there is a choice, `avoid` (the
/// endpoint the previous attempt failed on). `rr` is the backend's rotation
/// counter. Never allocates.
pub fn pick(
    stats: &[Arc<Stats>],
    policy: &Policy,
    rr: &AtomicU64,
    avoid: Option<usize>,
) -> Result<usize, NoPick> {
    if stats.is_empty() {
        return Err(NoPick::Empty);
    }
    let now = now_ns();
    let usable = |i: usize| !stats[i].ejected(now);
    let mut n = (0..stats.len()).filter(|&i| usable(i)).count();
    if n == 0 {
        return Err(NoPick::AllEjected);
    }
    let avoiding = avoid.filter(|&a| n > 1 && a < stats.len() && usable(a));
    if avoiding.is_some() {
        n -= 1;
    }
    let ok = |i: usize| usable(i) && Some(i) != avoiding;
    // The k-th usable endpoint, by a scan: endpoint sets are small and this
    // keeps the hot path free of allocation.
    let nth = |k: usize| (0..stats.len()).filter(|&i| ok(i)).nth(k).expect("k < n");
    let chosen = match policy.algorithm {
        Algorithm::RoundRobin => nth((rr.fetch_add(1, Ordering::Relaxed) as usize) % n),
        Algorithm::P2cEwma | Algorithm::LeastRequest if n == 1 => nth(0),
        algorithm => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a), nth(b));
            if stats[b].cost(algorithm, now) < stats[a].cost(algorithm, now) {
                b
            } else {
                a
            }
        }
    };
    Ok(chosen)
}

/// An attempt in flight on one endpoint; report how it ended with `finish`.
/// Dropped unfinished (say, the caller went away) it counts as neither.
#[derive(Debug)]
pub struct Attempt {
    stats: Arc<Stats>,
    started: Instant,
}

impl Attempt {
    /// Marks the start of a request to the endpoint with `stats`.
    pub fn start(stats: &Arc<Stats>) -> Attempt {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        Attempt {
            stats: Arc::clone(stats),
            started: Instant::now(),
        }
    }

    /// Records the outcome: latency feeds the EWMA, and failures may eject
    /// the endpoint (never more than the policy's share of `peers`). Returns
    /// whether this call ejected it.
    pub fn finish(self, ok: bool, policy: &Policy, peers: &[Arc<Stats>]) -> bool {
        self.finish_at(ok, policy, peers, now_ns())
    }

    /// `finish`, on the clock reading `now` (ns), so tests can drive time.
    fn finish_at(self, ok: bool, policy: &Policy, peers: &[Arc<Stats>], now: u64) -> bool {
        let s = &self.stats;
        s.ewma
            .lock()
            .expect("ewma lock")
            .observe(self.started.elapsed().as_nanos() as f64, now);
        let mut o = s.outlier.lock().expect("outlier lock");
        if ok {
            o.consecutive = 0;
            // Healthy for a full base interval after returning: forgive the streak.
            let until = s.ejected_until.load(Ordering::Relaxed);
            if until != 0 && now > until + policy.base_ejection.as_nanos() as u64 {
                o.streak = 0;
            }
            return false;
        }
        o.consecutive += 1;
        if policy.consecutive_failures == 0
            || o.consecutive < policy.consecutive_failures
            || s.ejected(now)
        {
            return false;
        }
        let ejected_now = peers.iter().filter(|p| p.ejected(now)).count();
        let cap = peers.len() * policy.max_ejection_percent as usize / 100;
        if ejected_now >= cap {
            return false;
        }
        let time = policy
            .base_ejection
            .saturating_mul(1 << o.streak.min(16))
            .min(MAX_EJECTION);
        o.streak += 1;
        o.consecutive = 0;
        s.ejected_until
            .store(now + time.as_nanos() as u64, Ordering::Relaxed);
        s.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Admits one connection attempt unless `limit` (0 = none) are already
    /// under way; the slot frees when the attempt ends either way.
    pub fn connect_slot(&self, limit: u32) -> Result<Slot, NoPick> {
        Slot::take(&self.connecting, limit)
    }
}

/// Admission against a concurrency limit; the slot frees on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Slot {
    /// Takes a slot, or says the backend is at `limit` (0 = unlimited).
    pub fn take(counter: &Arc<AtomicU32>, limit: u32) -> Result<Slot, NoPick> {
        let prev = counter.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(Arc::clone(counter));
        if limit > 0 && prev >= limit {
            return Err(NoPick::Overloaded(limit));
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: usize) -> Vec<Arc<Stats>> {
        (0..n).map(|_| Arc::new(Stats::default())).collect()
    }

    fn observe(s: &Arc<Stats>, rtt: Duration) {
        s.ewma
            .lock()
            .unwrap()
            .observe(rtt.as_nanos() as f64, now_ns());
    }

    #[test]
    fn p2c_ewma_avoids_the_slow_endpoint() {
        let s = stats(3);
        observe(&s[0], Duration::from_millis(200));
        observe(&s[1], Duration::from_millis(1));
        observe(&s[2], Duration::from_millis(1));
        let rr = AtomicU64::new(0);
        let slow = (0..1000)
            .filter(|_| pick(&s, &Policy::default(), &rr, None) == Ok(0))
            .count();
        // Two distinct choices out of three: the slow one can never win.
        assert_eq!(slow, 0);
        let rr_policy = Policy {
            algorithm: Algorithm::RoundRobin,
            ..Policy::default()
        };
        let slow = (0..999)
            .filter(|_| pick(&s, &rr_policy, &rr, None) == Ok(0))
            .count();
        assert_eq!(slow, 333);
    }

    #[test]
    fn peak_sensitive_then_decays() {
        let mut e = Ewma::default();
        e.observe(1e6, 0);
        e.observe(100e6, 1);
        assert!(e.decayed(1) > 99e6, "a slow sample counts at once");
        e.observe(1e6, 2);
        assert!(
            e.decayed(2) > 99e6,
            "a fast one right after barely moves it"
        );
        let ten_s = EWMA_DECAY.as_nanos() as u64;
        assert!(e.decayed(2 + ten_s) < 40e6, "idle, it decays");
    }

    #[test]
    fn a_never_measured_endpoint_decays_from_when_it_appeared() {
        let e = Ewma {
            rtt_ns: None,
            at_ns: 0,
        };
        assert_eq!(e.decayed(0), DEFAULT_RTT.as_nanos() as f64);
        let three_decays = 3 * EWMA_DECAY.as_nanos() as u64;
        assert!(e.decayed(three_decays) < 2e6, "{}", e.decayed(three_decays));
    }

    #[test]
    fn consecutive_failures_eject_within_the_cap() {
        let s = stats(3);
        let policy = Policy {
            consecutive_failures: 2,
            max_ejection_percent: 50,
            ..Policy::default()
        };
        assert!(!Attempt::start(&s[0]).finish(false, &policy, &s));
        assert!(Attempt::start(&s[0]).finish(false, &policy, &s));
        let rr = AtomicU64::new(0);
        assert!((0..100).all(|_| pick(&s, &policy, &rr, None) != Ok(0)));
        // 50% of 3 is 1: a second endpoint may not go.
        assert!(!Attempt::start(&s[1]).finish(false, &policy, &s));
        assert!(!Attempt::start(&s[1]).finish(false, &policy, &s));
        let all = Policy {
            max_ejection_percent: 100,
            ..policy.clone()
        };
        for i in 1..3 {
            for _ in 0..2 {
                Attempt::start(&s[i]).finish(false, &all, &s);
            }
        }
        assert_eq!(pick(&s, &all, &rr, None), Err(NoPick::AllEjected));
    }

    /// The ejection lifecycle on a driven clock: ejected for the base time,
    /// re-admitted after it, ejected twice as long on the next run of
    /// failures (up to the cap), and forgiven back to the base time after a
    /// full base interval of health.
    #[test]
    fn ejection_readmits_doubles_and_forgives() {
        let s = stats(2);
        let policy = Policy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(30),
            ..Policy::default()
        };
        let sec = |n: u64| n * 1_000_000_000;
        let fail_twice = |at: u64| {
            assert!(!Attempt::start(&s[0]).finish_at(false, &policy, &s, at));
            Attempt::start(&s[0]).finish_at(false, &policy, &s, at)
        };
        assert!(fail_twice(sec(100)));
        assert!(s[0].ejected(sec(129)));
        assert!(!s[0].ejected(sec(131)), "re-admitted after 30 s");
        // Failing again right away: the second ejection in a row is 60 s.
        assert!(fail_twice(sec(131)));
        assert!(s[0].ejected(sec(190)));
        assert!(!s[0].ejected(sec(192)));
        // A success before a full base interval of health forgives nothing.
        assert!(!Attempt::start(&s[0]).finish_at(true, &policy, &s, sec(195)));
        assert!(fail_twice(sec(196)));
        assert!(s[0].ejected(sec(196 + 119)), "third in a row: 120 s");
        assert!(!s[0].ejected(sec(196 + 121)));
        // Healthy for over 30 s after re-admission: back to the base time.
        assert!(!Attempt::start(&s[0]).finish_at(true, &policy, &s, sec(316 + 31)));
        assert!(fail_twice(sec(350)));
        assert!(s[0].ejected(sec(379)));
        assert!(!s[0].ejected(sec(381)), "forgiven: 30 s again");
        // The doubling stops at MAX_EJECTION.
        let mut at = sec(381);
        for _ in 0..10 {
            assert!(fail_twice(at));
            at += MAX_EJECTION.as_nanos() as u64 + 1;
        }
        assert!(s[0].ejected(at - 2) && !s[0].ejected(at));
    }

    #[test]
    fn avoid_and_limit() {
        let s = stats(2);
        let rr = AtomicU64::new(0);
        assert!((0..50).all(|_| pick(&s, &Policy::default(), &rr, Some(0)) == Ok(1)));
        let c = Arc::new(AtomicU32::new(0));
        let a = Slot::take(&c, 1).unwrap();
        assert_eq!(Slot::take(&c, 1).unwrap_err(), NoPick::Overloaded(1));
        drop(a);
        assert!(Slot::take(&c, 1).is_ok());
        assert_eq!(c.load(Ordering::Relaxed), 0);
    }
}
