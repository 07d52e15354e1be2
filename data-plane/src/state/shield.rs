//! A route's canary shield, while a release is under way: which backend is
//! the canary, which the stable an idempotent request that failed on the
//! canary is sent to once more, and the budget those second tries draw on.

use crate::retry::Budget;
use mesh_proto::v1 as pb;
use std::sync::Arc;

/// Linkerd's default retry budget: 20% of requests, plus 10 a second.
const RATIO: f64 = 0.2;
const MIN_PER_SEC: u32 = 10;

/// The shield of one route.
#[derive(Debug)]
pub struct Shield {
    /// Index of the canary in the route's backends.
    pub canary: usize,
    /// Index of the stable.
    pub stable: usize,
    /// The route's retry budget, or the shield's own when it has none.
    pub budget: Arc<Budget>,
    /// Whether `budget` is the shield's own (then each request deposits in it).
    pub own_budget: bool,
}

impl Shield {
    /// From the proto, against the route's backends (their cluster names,
    /// in order); `retry` is the route's retry budget, if it has one.
    pub fn from_proto(
        s: &pb::Shield,
        backends: &[&str],
        retry: Option<&Arc<Budget>>,
    ) -> Result<Shield, String> {
        let find = |name: &str, what: &str| {
            backends
                .iter()
                .position(|b| *b == name)
                .ok_or_else(|| format!("shield: the {what} {name:?} is not a backend of the route"))
        };
        let (canary, stable) = (find(&s.canary, "canary")?, find(&s.stable, "stable")?);
        if canary == stable {
            return Err(format!("shield: canary and stable are both {:?}", s.canary));
        }
        Ok(Shield {
            canary,
            stable,
            budget: retry
                .cloned()
                .unwrap_or_else(|| Arc::new(Budget::new(RATIO, MIN_PER_SEC))),
            own_budget: retry.is_none(),
        })
    }

    /// Whether a request with this method may be sent twice.
    pub fn idempotent(method: &http::Method) -> bool {
        use http::Method as M;
        [M::GET, M::HEAD, M::OPTIONS, M::PUT, M::DELETE, M::TRACE].contains(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shield(canary: &str, stable: &str) -> pb::Shield {
        pb::Shield {
            canary: canary.into(),
            stable: stable.into(),
        }
    }

    #[test]
    fn a_shield_names_two_backends_of_its_route_and_takes_its_budget() {
        let names = ["echo-v1", "echo-v2"];
        let s = Shield::from_proto(&shield("echo-v2", "echo-v1"), &names, None).unwrap();
        assert_eq!((s.canary, s.stable, s.own_budget), (1, 0, true));
        let retry = Arc::new(Budget::new(0.5, 1));
        let s = Shield::from_proto(&shield("echo-v2", "echo-v1"), &names, Some(&retry)).unwrap();
        assert!(Arc::ptr_eq(&s.budget, &retry) && !s.own_budget);
        let e = Shield::from_proto(&shield("echo-v9", "echo-v1"), &names, None).unwrap_err();
        assert_eq!(
            e,
            "shield: the canary \"echo-v9\" is not a backend of the route"
        );
        let e = Shield::from_proto(&shield("echo-v1", "echo-v1"), &names, None).unwrap_err();
        assert!(e.contains("both \"echo-v1\""), "{e}");
        assert!(Shield::idempotent(&http::Method::PUT) && !Shield::idempotent(&http::Method::POST));
    }
}
