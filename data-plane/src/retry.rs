//! Retry policy: which outcomes are retriable, which requests are safe to
//! replay, backoff with full jitter, and the retry budget that keeps retries
//! from multiplying an outage (retries ≤ ratio × requests + a floor per
//! second, over a sliding window).

use crate::http::grpc_status;
use http::{HeaderMap, Method, StatusCode};
use mesh_proto::v1 as pb;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Header telling the upstream which attempt this is (2 for the first retry).
pub const ATTEMPT_HEADER: &str = "mesh-retry-attempt";
/// The budget's window.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Deadline per attempt, if any.
    pub per_try_timeout: Option<Duration>,
    /// First backoff; it doubles per retry up to `backoff_max`.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Retry any 5xx.
    pub on_5xx: bool,
    /// Retry 502, 503 and 504.
    pub on_gateway_error: bool,
    /// Retry when the connection could not be made.
    pub on_connect_failure: bool,
    /// Retry when the connection broke mid-request.
    pub on_reset: bool,
    /// These HTTP statuses.
    pub statuses: Vec<u16>,
    /// These gRPC status codes.
    pub grpc_codes: Vec<u32>,
    /// POST, PATCH and friends may be retried too.
    pub non_idempotent: bool,
    /// Budget: share of requests.
    pub budget_ratio: f64,
    /// Budget: floor per second.
    pub budget_min_per_sec: u32,
}

impl Policy {
    /// From proto (the control plane validated it; anything odd becomes safe).
    pub fn from_proto(p: &pb::RetryPolicy) -> Result<Policy, String> {
        let mut policy = Policy {
            max_retries: p.max_retries,
            per_try_timeout: (p.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(p.per_try_timeout_ms)),
            backoff_base: Duration::from_millis(p.backoff_base_ms),
            backoff_max: Duration::from_millis(p.backoff_max_ms.max(p.backoff_base_ms)),
            on_5xx: false,
            on_gateway_error: false,
            on_connect_failure: false,
            on_reset: false,
            statuses: Vec::new(),
            grpc_codes: p.grpc_codes.clone(),
            non_idempotent: p.non_idempotent,
            budget_ratio: p.budget_ratio,
            budget_min_per_sec: p.budget_min_per_sec,
        };
        if !(0.0..=1.0).contains(&p.budget_ratio) {
            return Err(format!("budget_ratio {} is outside 0-1", p.budget_ratio));
        }
        for cond in &p.retry_on {
            match cond.as_str() {
                "5xx" => policy.on_5xx = true,
                "gateway-error" => policy.on_gateway_error = true,
                "connect-failure" => policy.on_connect_failure = true,
                "reset" => policy.on_reset = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..600).contains(&c) => policy.statuses.push(c),
                    _ => return Err(format!("unknown retry condition {code:?}")),
                },
            }
        }
        Ok(policy)
    }

    /// Whether this request may be replayed at all.
    pub fn allows_method(&self, method: &Method) -> bool {
        self.non_idempotent
            || matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            )
    }

    /// Whether a response (status and headers) calls for a retry.
    pub fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let s = status.as_u16();
        if (self.on_5xx && status.is_server_error())
            || (self.on_gateway_error && matches!(s, 502..=504))
            || self.statuses.contains(&s)
        {
            return true;
        }
        // Only a trailers-only gRPC error is visible before the body starts.
        grpc_status(headers).is_some_and(|c| c != 0 && self.grpc_codes.contains(&c))
    }

    /// The backoff before retry `n` (1-based): full jitter over an
    /// exponentially growing cap, so retries from many clients spread out.
    pub fn backoff(&self, n: u32) -> Duration {
        if self.backoff_base.is_zero() {
            return Duration::ZERO;
        }
        let cap = self
            .backoff_base
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(self.backoff_max);
        cap.mul_f64(fastrand::f64())
    }
}

/// Requests and retries over the last `BUDGET_WINDOW`, in one-second buckets.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_sec: u32,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    start: Instant,
    /// (second since start, requests, retries).
    slots: [(u64, u64, u64); 10],
}

impl Budget {
    /// A budget allowing `ratio` × requests plus `min_per_sec` retries per second.
    pub fn new(ratio: f64, min_per_sec: u32) -> Budget {
        Budget {
            ratio,
            min_per_sec,
            buckets: Mutex::new(Buckets {
                start: Instant::now(),
                slots: [(u64::MAX, 0, 0); 10],
            }),
        }
    }

    /// Whether this budget has the same settings.
    pub fn same_settings(&self, ratio: f64, min_per_sec: u32) -> bool {
        self.ratio == ratio && self.min_per_sec == min_per_sec
    }

    /// Counts an original request. On every request's path, so it only
    /// touches the current second's bucket.
    pub fn deposit(&self) {
        self.buckets.lock().expect("budget lock").current().1 += 1;
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn withdraw(&self) -> bool {
        let mut b = self.buckets.lock().expect("budget lock");
        let (reqs, retries) = b.totals();
        let allowed =
            self.ratio * reqs as f64 + f64::from(self.min_per_sec) * BUDGET_WINDOW.as_secs_f64();
        if (retries as f64) < allowed {
            b.current().2 += 1;
            true
        } else {
            false
        }
    }
}

impl Buckets {
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// This second's bucket, recycled from the one ten seconds ago.
    fn current(&mut self) -> &mut (u64, u64, u64) {
        let sec = self.now();
        let slot = &mut self.slots[(sec % BUDGET_WINDOW.as_secs()) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, 0);
        }
        slot
    }

    /// Requests and retries over the window.
    fn totals(&self) -> (u64, u64) {
        let sec = self.now();
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 + BUDGET_WINDOW.as_secs() > sec)
            .fold((0, 0), |acc, s| (acc.0 + s.1, acc.1 + s.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> Policy {
        Policy::from_proto(&pb::RetryPolicy {
            max_retries: 2,
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            grpc_codes: vec![14],
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn conditions() {
        let h = HeaderMap::new();
        let p = policy(&["gateway-error"]);
        assert!(p.retries_response(StatusCode::SERVICE_UNAVAILABLE, &h));
        assert!(!p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &h));
        let p = policy(&["5xx", "409"]);
        assert!(p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &h));
        assert!(p.retries_response(StatusCode::CONFLICT, &h));
        assert!(!p.retries_response(StatusCode::NOT_FOUND, &h));
        let mut g = HeaderMap::new();
        g.insert("grpc-status", "14".parse().unwrap());
        assert!(p.retries_response(StatusCode::OK, &g));
        g.insert("grpc-status", "5".parse().unwrap());
        assert!(!p.retries_response(StatusCode::OK, &g));
        assert!(
            Policy::from_proto(&pb::RetryPolicy {
                retry_on: vec!["sometimes".into()],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn only_idempotent_methods_by_default() {
        let p = policy(&["5xx"]);
        assert!(p.allows_method(&Method::GET) && p.allows_method(&Method::PUT));
        assert!(!p.allows_method(&Method::POST) && !p.allows_method(&Method::PATCH));
        let p = Policy {
            non_idempotent: true,
            ..p
        };
        assert!(p.allows_method(&Method::POST));
    }

    #[test]
    fn budget_is_ratio_plus_floor() {
        let b = Budget::new(0.2, 1);
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100 plus 1/s over the 10 s window.
        let granted = (0..1000).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[test]
    fn backoff_is_jittered_under_a_growing_cap() {
        let p = Policy {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(25),
            ..policy(&["5xx"])
        };
        let samples = |n: u32| (0..400).map(|_| p.backoff(n)).collect::<Vec<_>>();
        // Full jitter: uniform over [0, cap]. The cap is 10 ms for the
        // first retry, and 25 ms (the maximum) by the fifth.
        for (n, cap) in [(1, 10), (2, 20), (5, 25)] {
            let s = samples(n);
            let cap = Duration::from_millis(cap);
            assert!(s.iter().all(|b| *b <= cap), "retry {n}");
            let (min, max) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            assert!(
                *max >= cap.mul_f64(0.9),
                "retry {n}: max {max:?} of cap {cap:?}"
            );
            assert!(
                *min <= cap.mul_f64(0.1),
                "retry {n}: min {min:?} of cap {cap:?}"
            );
            let mean = s.iter().sum::<Duration>() / s.len() as u32;
            assert!(
                mean >= cap.mul_f64(0.4) && mean <= cap.mul_f64(0.6),
                "retry {n}: mean {mean:?} of cap {cap:?}"
            );
        }
        let none = Policy {
            backoff_base: Duration::ZERO,
            ..p.clone()
        };
        assert_eq!(none.backoff(3), Duration::ZERO);
    }
}
