//! Which services the sidecar subscribes to, parsed with the rest of
//! `MESH_PROXY_*`: a static list (`*`, the default, for all of them), and
//! for the rest, on demand, how long the first request to an unknown name
//! waits for the control plane and how long a name may go unused before it
//! is dropped.

use super::parse::Parser;
use std::time::Duration;

/// Services subscribed from the start, comma-separated, as the app names
/// them (`echo`, `echo.shop`, a virtual IP), the others subscribed on
/// their first request; set but empty, every service is subscribed on
/// demand. Unset, or `*`: every service, as before on-demand discovery.
pub const ENV_SERVICES: &str = "MESH_PROXY_SERVICES";
/// How long a request to a name the sidecar holds no config for waits
/// for the control plane to send it, in ms; then 503.
pub const ENV_DISCOVERY_WAIT_MS: &str = "MESH_PROXY_DISCOVERY_WAIT_MS";
const DEFAULT_WAIT_MS: u64 = 1_000;
/// How long a service subscribed on demand may go without a request
/// before it is dropped, in ms.
pub const ENV_UNSUBSCRIBE_AFTER_MS: &str = "MESH_PROXY_UNSUBSCRIBE_AFTER_MS";
const DEFAULT_UNSUBSCRIBE_AFTER_MS: u64 = 10 * 60 * 1_000;

/// The sidecar's subscription settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Every service, as before on-demand discovery.
    pub all: bool,
    /// Names subscribed from the start and never dropped.
    pub services: Vec<String>,
    /// A request's wait for an unknown name.
    pub wait: Duration,
    /// A name subscribed on demand is dropped after this long unused.
    pub unsubscribe_after: Duration,
}

impl Default for Demand {
    /// Every service, as when `MESH_PROXY_SERVICES` is unset.
    fn default() -> Self {
        Demand {
            all: true,
            services: Vec::new(),
            wait: Duration::from_millis(DEFAULT_WAIT_MS),
            unsubscribe_after: Duration::from_millis(DEFAULT_UNSUBSCRIBE_AFTER_MS),
        }
    }
}

impl Parser<'_> {
    pub(super) fn demand(&mut self) -> Demand {
        // Read raw: set but empty means something, unlike other keys.
        let list = self.env.get(ENV_SERVICES).unwrap_or_else(|| "*".into());
        let mut services = Vec::new();
        let mut all = false;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                all = true;
            } else if name.len() > 253 || name.contains(|c: char| c.is_whitespace() || c == '/') {
                self.errors.push(format!(
                    "{ENV_SERVICES}: {name:?} is not a service name or virtual IP"
                ));
            } else {
                services.push(name.to_ascii_lowercase());
            }
        }
        Demand {
            all,
            services,
            wait: self.millis(ENV_DISCOVERY_WAIT_MS, DEFAULT_WAIT_MS),
            unsubscribe_after: self.millis(ENV_UNSUBSCRIBE_AFTER_MS, DEFAULT_UNSUBSCRIBE_AFTER_MS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(value: Option<&str>) -> (Demand, Vec<String>) {
        let env: HashMap<String, String> = value
            .map(|v| (ENV_SERVICES.to_string(), v.to_string()))
            .into_iter()
            .collect();
        let mut p = Parser {
            env: &env,
            errors: Vec::new(),
        };
        (p.demand(), p.errors)
    }

    #[test]
    fn unset_or_a_star_is_every_service_and_empty_is_all_on_demand() {
        for v in [None, Some("*"), Some("echo, *")] {
            assert!(parse(v).0.all, "{v:?}");
        }
        let (d, errors) = parse(Some(""));
        assert!(!d.all && d.services.is_empty() && errors.is_empty());
        let (d, _) = parse(Some(" Echo , db.store,10.96.0.5,"));
        assert!(!d.all);
        assert_eq!(d.services, ["echo", "db.store", "10.96.0.5"]);
        assert_eq!(d.wait, Duration::from_secs(1));
    }

    #[test]
    fn a_name_that_cannot_be_one_is_named() {
        let (_, errors) = parse(Some("echo,a b,x/y"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("\"a b\"") && errors[1].contains("\"x/y\""),
            "{errors:?}"
        );
    }
}
