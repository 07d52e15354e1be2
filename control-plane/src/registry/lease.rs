//! The leases of registered instances: when each last heartbeated, what it
//! said (address, readiness, identity), and its certificate's expiry. Kept
//! apart from the registry so that a heartbeat that changes nothing only
//! renews its lease here and never waits for the writer (an apply, a
//! publish); only a heartbeat that changes what the registry holds goes
//! on to it. Three missed beats and an instance's lease is gone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `(namespace, instance id)`.
pub type Key = (String, String);

/// What a heartbeat says of its instance: if this is unchanged, the
/// registry need not hear of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    /// Service.
    pub service: String,
    /// Version label.
    pub version: String,
    /// "ip:port" of its inbound listener.
    pub address: String,
    /// Whether its app is ready.
    pub ready: bool,
    /// SPIFFE ID its inbound presents; empty for plaintext.
    pub identity: String,
}

#[derive(Debug)]
struct Lease {
    seen: Instant,
    said: Said,
    cert_not_after_unix: i64,
}

/// Every registered instance's lease.
#[derive(Debug, Default)]
pub struct Leases {
    leases: HashMap<Key, Lease>,
}

impl Leases {
    /// Renews `key`'s lease at `now`. Returns whether what it says differs
    /// from its last heartbeat (or it had no lease): then the registry must
    /// be told.
    pub fn renew(&mut self, key: Key, said: Said, cert_not_after_unix: i64, now: Instant) -> bool {
        match self.leases.get_mut(&key) {
            Some(l) => {
                l.seen = now;
                l.cert_not_after_unix = cert_not_after_unix;
                if l.said == said {
                    return false;
                }
                l.said = said;
                true
            }
            None => {
                self.leases.insert(
                    key,
                    Lease {
                        seen: now,
                        said,
                        cert_not_after_unix,
                    },
                );
                true
            }
        }
    }

    /// What `key`'s latest heartbeat said.
    pub fn said(&self, key: &Key) -> Option<&Said> {
        self.leases.get(key).map(|l| &l.said)
    }

    /// Gives instances restored from disk a fresh lease from `now`: a
    /// sidecar that is still alive renews it, a dead one expires one lease
    /// later instead of vanishing at once (which would push empty endpoint
    /// sets to every sidecar while heartbeats catch up).
    pub fn restore(&mut self, instances: impl IntoIterator<Item = (Key, Said)>, now: Instant) {
        for (key, said) in instances {
            self.leases.entry(key).or_insert(Lease {
                seen: now,
                said,
                cert_not_after_unix: 0,
            });
        }
    }

    /// Removes and returns every lease older than `lease` at `now`.
    pub fn expire(&mut self, now: Instant, lease: Duration) -> Vec<Key> {
        let dead: Vec<Key> = self
            .leases
            .iter()
            .filter(|(_, l)| now.duration_since(l.seen) > lease)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.leases.remove(k);
        }
        dead
    }

    /// Ends `key`'s lease (it deregistered).
    pub fn end(&mut self, key: &Key) {
        self.leases.remove(key);
    }

    /// The certificate expiry `key` last reported (0: none or unknown).
    pub fn cert_not_after(&self, key: &Key) -> i64 {
        self.leases.get(key).map_or(0, |l| l.cert_not_after_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(ready: bool) -> Said {
        Said {
            service: "echo".into(),
            version: "v1".into(),
            address: "127.0.0.1:1".into(),
            ready,
            identity: String::new(),
        }
    }

    fn key(id: &str) -> Key {
        ("default".into(), id.into())
    }

    #[test]
    fn only_a_heartbeat_that_says_something_new_is_a_change() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        assert!(l.renew(key("a"), said(true), 0, t0), "new");
        assert!(!l.renew(key("a"), said(true), 0, t0), "the same again");
        assert!(l.renew(key("a"), said(false), 0, t0), "readiness changed");
        assert_eq!(l.said(&key("a")), Some(&said(false)));
        assert!(
            !l.renew(key("a"), said(false), 99, t0),
            "a new certificate is not"
        );
        assert_eq!(l.cert_not_after(&key("a")), 99);
    }

    #[test]
    fn leases_expire_and_restore_refreshes_them() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(3);
        l.renew(key("a"), said(true), 0, t0);
        assert!(l.expire(t0 + Duration::from_secs(1), lease).is_empty());
        // Renewed at 2 s: alive at 4 s, gone after 5 s.
        assert!(!l.renew(key("a"), said(true), 0, t0 + Duration::from_secs(2)));
        assert!(l.expire(t0 + Duration::from_secs(4), lease).is_empty());
        assert_eq!(l.expire(t0 + Duration::from_secs(6), lease), vec![key("a")]);
        // Gone means gone: its next heartbeat is news again.
        assert!(l.renew(key("a"), said(true), 0, t0 + Duration::from_secs(7)));
        let mut r = Leases::default();
        r.restore([(key("b"), said(true))], t0);
        assert!(r.expire(t0 + Duration::from_secs(2), lease).is_empty());
        assert!(
            !r.renew(key("b"), said(true), 0, t0),
            "restored as it was saved"
        );
        assert_eq!(r.expire(t0 + Duration::from_secs(9), lease), vec![key("b")]);
    }
}
