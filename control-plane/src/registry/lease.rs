//! The leases of registered instances: when each last heartbeated, what it
//! said (address, readiness, identity), and its certificate's expiry. Kept
//! apart from the registry so that a heartbeat that changes nothing only
//! renews its lease here and never waits for the writer (an apply, a
//! publish); only a heartbeat that changes what the registry holds goes
//! on to it. Three missed beats and an instance's lease is gone. A lease
//! belongs to the identity that took it: nobody else renews or ends it, and
//! each identity holds at most so many.

use super::claim::Refusal;
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
    /// The verified identity that registered it (empty: saved by a
    /// version that did not record one; the next caller takes it).
    pub owner: String,
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
    /// Leases held per owner.
    held: HashMap<String, usize>,
}

impl Leases {
    /// Renews `key`'s lease at `now` for `said.owner`. Returns whether what
    /// it says differs from its last heartbeat (or it had no lease): then the
    /// registry must be told. A lease another identity holds is refused, and
    /// so is a new one beyond `max_per_owner`; nothing changes then.
    pub fn renew(
        &mut self,
        key: Key,
        said: Said,
        cert_not_after_unix: i64,
        now: Instant,
        max_per_owner: usize,
    ) -> Result<bool, Refusal> {
        match self.leases.get_mut(&key) {
            Some(l) => {
                if !l.said.owner.is_empty() && l.said.owner != said.owner {
                    return Err(Refusal::Owned {
                        namespace: key.0,
                        instance: key.1,
                        owner: l.said.owner.clone(),
                        caller: said.owner,
                    });
                }
                l.seen = now;
                l.cert_not_after_unix = cert_not_after_unix;
                if l.said == said {
                    return Ok(false);
                }
                if l.said.owner != said.owner {
                    // An unowned (restored) lease gets its owner.
                    *self.held.entry(said.owner.clone()).or_default() += 1;
                }
                l.said = said;
                Ok(true)
            }
            None => {
                let held = self.held.get(&said.owner).copied().unwrap_or(0);
                if held >= max_per_owner {
                    return Err(Refusal::Cap {
                        caller: said.owner,
                        max: max_per_owner,
                    });
                }
                *self.held.entry(said.owner.clone()).or_default() += 1;
                self.leases.insert(
                    key,
                    Lease {
                        seen: now,
                        said,
                        cert_not_after_unix,
                    },
                );
                Ok(true)
            }
        }
    }

    /// Whether `caller` may end `key`'s lease: it holds it, or nobody does.
    pub fn may_end(&self, key: &Key, caller: &str) -> Result<(), Refusal> {
        match self.leases.get(key) {
            Some(l) if !l.said.owner.is_empty() && l.said.owner != caller => Err(Refusal::Owned {
                namespace: key.0.clone(),
                instance: key.1.clone(),
                owner: l.said.owner.clone(),
                caller: caller.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// How many leases there are.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    fn remove(&mut self, key: &Key) {
        if let Some(l) = self.leases.remove(key)
            && let Some(n) = self.held.get_mut(&l.said.owner)
        {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&l.said.owner);
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
            if self.leases.contains_key(&key) {
                continue;
            }
            if !said.owner.is_empty() {
                *self.held.entry(said.owner.clone()).or_default() += 1;
            }
            self.leases.insert(
                key,
                Lease {
                    seen: now,
                    said,
                    cert_not_after_unix: 0,
                },
            );
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
            self.remove(k);
        }
        dead
    }

    /// Ends `key`'s lease (it deregistered).
    pub fn end(&mut self, key: &Key) {
        self.remove(key);
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
            owner: ECHO.into(),
        }
    }

    const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";
    const MAX: usize = 100;

    fn key(id: &str) -> Key {
        ("default".into(), id.into())
    }

    #[test]
    fn only_a_heartbeat_that_says_something_new_is_a_change() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        assert!(l.renew(key("a"), said(true), 0, t0, MAX).unwrap(), "new");
        assert!(
            !l.renew(key("a"), said(true), 0, t0, MAX).unwrap(),
            "the same again"
        );
        assert!(
            l.renew(key("a"), said(false), 0, t0, MAX).unwrap(),
            "readiness changed"
        );
        assert_eq!(l.said(&key("a")), Some(&said(false)));
        assert!(
            !l.renew(key("a"), said(false), 99, t0, MAX).unwrap(),
            "a new certificate is not"
        );
        assert_eq!(l.cert_not_after(&key("a")), 99);
    }

    #[test]
    fn leases_expire_and_restore_refreshes_them() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(3);
        l.renew(key("a"), said(true), 0, t0, MAX).unwrap();
        assert!(l.expire(t0 + Duration::from_secs(1), lease).is_empty());
        // Renewed at 2 s: alive at 4 s, gone after 5 s.
        assert!(
            !l.renew(key("a"), said(true), 0, t0 + Duration::from_secs(2), MAX)
                .unwrap()
        );
        assert!(l.expire(t0 + Duration::from_secs(4), lease).is_empty());
        assert_eq!(l.expire(t0 + Duration::from_secs(6), lease), vec![key("a")]);
        // Gone means gone: its next heartbeat is news again.
        assert!(
            l.renew(key("a"), said(true), 0, t0 + Duration::from_secs(7), MAX)
                .unwrap()
        );
        let mut r = Leases::default();
        r.restore([(key("b"), said(true))], t0);
        assert!(r.expire(t0 + Duration::from_secs(2), lease).is_empty());
        assert!(
            !r.renew(key("b"), said(true), 0, t0, MAX).unwrap(),
            "restored as it was saved"
        );
        assert_eq!(r.expire(t0 + Duration::from_secs(9), lease), vec![key("b")]);
    }

    #[test]
    fn a_lease_is_its_owners_and_each_owner_holds_at_most_so_many() {
        let mut l = Leases::default();
        let t0 = Instant::now();
        assert!(l.renew(key("a"), said(true), 0, t0, 2).unwrap());
        let mut rogue = said(true);
        rogue.owner = "spiffe://cluster.local/ns/default/sa/rogue".into();
        rogue.address = "127.0.0.1:2".into();
        let refused = l.renew(key("a"), rogue.clone(), 0, t0, 2).unwrap_err();
        assert_eq!(refused.reason(), "owned");
        assert!(refused.to_string().contains(ECHO) && refused.to_string().contains("sa/rogue"));
        assert_eq!(
            l.said(&key("a")).unwrap().address,
            "127.0.0.1:1",
            "unchanged"
        );
        assert_eq!(
            l.may_end(&key("a"), &rogue.owner).unwrap_err().reason(),
            "owned"
        );
        assert!(l.may_end(&key("a"), ECHO).is_ok());
        // The cap counts per owner, and ending a lease frees its place.
        assert!(l.renew(key("b"), said(true), 0, t0, 2).unwrap());
        assert_eq!(
            l.renew(key("c"), said(true), 0, t0, 2)
                .unwrap_err()
                .reason(),
            "cap"
        );
        assert!(
            l.renew(key("c"), rogue.clone(), 0, t0, 2).unwrap(),
            "another owner's count"
        );
        l.end(&key("b"));
        assert!(l.renew(key("d"), said(true), 0, t0, 2).unwrap());
        // A lease restored without an owner goes to its first caller.
        let mut unowned = said(true);
        unowned.owner.clear();
        l.restore([(key("e"), unowned)], t0);
        assert!(l.renew(key("e"), rogue.clone(), 0, t0, 2).unwrap());
        assert_eq!(
            l.renew(key("e"), said(true), 0, t0, 2)
                .unwrap_err()
                .reason(),
            "owned"
        );
        assert_eq!(l.len(), 4);
    }
}
