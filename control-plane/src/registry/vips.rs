//! Virtual IPs in local mode: each service gets one address of a range
//! (`--virtual-ips`, 10.96.0.0/16 by default), picked from a hash of its
//! name so it stays the same across restarts and as other services come
//! and go, the next free one on a collision. Apps dial it as they would a
//! Kubernetes ClusterIP, and the pod's redirect rules bring the connection
//! to the sidecar, which knows the service by it. Pure.

use super::ServiceKey;
use crate::config::VirtualIps as Range;
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn hash(key: &ServiceKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.0.bytes().chain([b'/']).chain(key.1.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An address of `range` for each of `keys`, none taken twice (a range
/// smaller than the services leaves the rest without one). Keys are taken
/// in order, so a collision goes the same way every time.
pub fn assign<'a>(
    range: &Range,
    keys: impl IntoIterator<Item = &'a ServiceKey>,
) -> BTreeMap<ServiceKey, Ipv4Addr> {
    let mut taken = HashSet::new();
    let mut out = BTreeMap::new();
    for key in keys {
        if taken.len() as u32 >= range.size() {
            break;
        }
        let mut slot = (hash(key) % u64::from(range.size())) as u32;
        while !taken.insert(slot) {
            slot = (slot + 1) % range.size();
        }
        out.insert(key.clone(), Ipv4Addr::from(range.base() + 1 + slot));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ServiceKey {
        ("default".into(), s.into())
    }

    #[test]
    fn each_service_keeps_its_address_and_none_is_shared() {
        let range: Range = "10.96.0.0/16".parse().unwrap();
        let keys: Vec<ServiceKey> = (0..500).map(|i| key(&format!("svc-{i}"))).collect();
        let all = assign(&range, &keys);
        assert_eq!(all.len(), 500);
        let distinct: HashSet<_> = all.values().collect();
        assert_eq!(distinct.len(), 500);
        assert!(all.values().all(|ip| ip.octets()[..2] == [10, 96]));
        // Another service arriving moves nobody else's.
        let one = assign(&range, [&key("svc-7")]);
        assert_eq!(one[&key("svc-7")], all[&key("svc-7")]);
        // A full range gives out what it has, each address once.
        let tiny: Range = "10.0.0.0/30".parse().unwrap();
        let two = assign(&tiny, &keys);
        assert_eq!(two.len(), 2);
        assert!(
            two.values()
                .all(|ip| [[10, 0, 0, 1], [10, 0, 0, 2]].contains(&ip.octets()))
        );
    }
}
