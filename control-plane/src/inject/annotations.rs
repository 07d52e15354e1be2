//! A pod's `mesh.dev/*` annotations, read and checked: each value is
//! parsed into plain data or named in a problem, every problem at once, so
//! a pod with one bad value is refused whole and never half-injected.

use mesh_proto::lists::{cidrs, ports};
use std::collections::BTreeMap;

/// The opt-in and opt-out: `enabled` or `disabled`, as a label or an
/// annotation (on the namespace, a label, which the webhook's
/// namespaceSelector reads).
pub const INJECT: &str = "mesh.dev/inject";
/// What injection added, as JSON; its presence marks a pod injected.
pub const STATUS: &str = "mesh.dev/status";
/// Ports whose connections skip protocol detection.
pub const OPAQUE_PORTS: &str = "mesh.dev/opaque-ports";
/// Inbound ports not redirected to the sidecar.
pub const SKIP_INBOUND_PORTS: &str = "mesh.dev/skip-inbound-ports";
/// Outbound ports not redirected to the sidecar.
pub const SKIP_OUTBOUND_PORTS: &str = "mesh.dev/skip-outbound-ports";
/// Outbound destinations (CIDRs) not redirected to the sidecar.
pub const SKIP_OUTBOUND_CIDRS: &str = "mesh.dev/skip-outbound-cidrs";
/// The sidecar's CPU request.
pub const PROXY_CPU_REQUEST: &str = "mesh.dev/proxy-cpu-request";
/// The sidecar's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "mesh.dev/proxy-cpu-limit";
/// The sidecar's memory request.
pub const PROXY_MEMORY_REQUEST: &str = "mesh.dev/proxy-memory-request";
/// The sidecar's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "mesh.dev/proxy-memory-limit";
/// The sidecar's log filter (`MESH_PROXY_LOG`).
pub const PROXY_LOG_LEVEL: &str = "mesh.dev/proxy-log-level";

/// Every `mesh.dev/` annotation a pod may carry; any other is a typo.
const KNOWN: [&str; 11] = [
    INJECT,
    STATUS,
    OPAQUE_PORTS,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
    PROXY_CPU_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_REQUEST,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
];

/// The ports mysql, postgres, redis, smtp (and submission), nats and
/// memcached listen on: their servers speak first or their clients send
/// nothing recognisable, so they are opaque unless a pod says otherwise.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4222,5432,6379,11211";

/// What a pod's annotations ask of its sidecar, as plain text the init
/// step and the sidecar read again (each value already checked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `enabled` or `disabled`, if the pod says.
    pub inject: Option<bool>,
    /// `mesh.dev/opaque-ports`.
    pub opaque_ports: Option<String>,
    /// `mesh.dev/skip-inbound-ports`.
    pub skip_inbound_ports: Option<String>,
    /// `mesh.dev/skip-outbound-ports`.
    pub skip_outbound_ports: Option<String>,
    /// `mesh.dev/skip-outbound-cidrs`.
    pub skip_outbound_cidrs: Option<String>,
    /// `requests` and `limits`, `cpu` and `memory`, each a quantity.
    pub requests: BTreeMap<&'static str, String>,
    /// The limits, likewise.
    pub limits: BTreeMap<&'static str, String>,
    /// `mesh.dev/proxy-log-level`.
    pub log_level: Option<String>,
}

/// Reads `annotations` (a pod's, as JSON) and `labels` (the inject label
/// only), naming every bad value: `annotation: value: problem`.
pub fn read(
    annotations: &serde_json::Value,
    labels: &serde_json::Value,
) -> Result<Overrides, Vec<String>> {
    let mut problems = Vec::new();
    let mut o = Overrides::default();
    let get = |key: &str| annotations.get(key);
    for (key, value) in annotations.as_object().into_iter().flatten() {
        if key.starts_with("mesh.dev/") && !KNOWN.contains(&key.as_str()) {
            problems.push(format!(
                "{key}: not an annotation mesh reads (it reads {})",
                KNOWN.join(", ")
            ));
        }
        if key.starts_with("mesh.dev/") && !value.is_string() {
            problems.push(format!("{key}: {value}: an annotation's value is a string"));
        }
    }
    let text = |key: &str| get(key).and_then(|v| v.as_str()).map(str::trim);
    let switch = |key: &str, from: &serde_json::Value, problems: &mut Vec<String>| match from
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::trim)
    {
        None => None,
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        Some(other) => {
            problems.push(format!("{key}: {other:?}: neither enabled nor disabled"));
            None
        }
    };
    // The annotation speaks for the pod when both are set.
    let by_label = switch(INJECT, labels, &mut problems);
    o.inject = switch(INJECT, annotations, &mut problems).or(by_label);
    for (key, slot) in [
        (OPAQUE_PORTS, &mut o.opaque_ports),
        (SKIP_INBOUND_PORTS, &mut o.skip_inbound_ports),
        (SKIP_OUTBOUND_PORTS, &mut o.skip_outbound_ports),
    ] {
        if let Some(v) = text(key) {
            match ports(v) {
                Ok(_) => *slot = Some(v.to_string()),
                Err(e) => problems.push(format!("{key}: {v:?}: {e}")),
            }
        }
    }
    if let Some(v) = text(SKIP_OUTBOUND_CIDRS) {
        match cidrs(v) {
            Ok(_) => o.skip_outbound_cidrs = Some(v.to_string()),
            Err(e) => problems.push(format!("{SKIP_OUTBOUND_CIDRS}: {v:?}: {e}")),
        }
    }
    for (resource, request, limit, what) in [
        ("cpu", PROXY_CPU_REQUEST, PROXY_CPU_LIMIT, "cores"),
        ("memory", PROXY_MEMORY_REQUEST, PROXY_MEMORY_LIMIT, "bytes"),
    ] {
        let mut amount = |key: &str, into: &mut BTreeMap<&'static str, String>| {
            let v = text(key)?;
            match quantity(v) {
                Ok(n) => {
                    into.insert(resource, v.to_string());
                    Some(n)
                }
                Err(e) => {
                    problems.push(format!("{key}: {v:?}: {e} ({what})"));
                    None
                }
            }
        };
        let req = amount(request, &mut o.requests);
        let lim = amount(limit, &mut o.limits);
        if let (Some(r), Some(l)) = (req, lim)
            && r > l
        {
            problems.push(format!(
                "{request}: {:?} is more than {limit}: {:?}",
                o.requests[resource], o.limits[resource]
            ));
        }
    }
    if let Some(v) = text(PROXY_LOG_LEVEL) {
        match log_filter(v) {
            Ok(()) => o.log_level = Some(v.to_string()),
            Err(e) => problems.push(format!("{PROXY_LOG_LEVEL}: {v:?}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(o)
    } else {
        Err(problems)
    }
}

/// A Kubernetes quantity (`100m`, `0.5`, `64Mi`, `1G`, `1e3`), as a
/// number to compare a request with its limit.
pub fn quantity(q: &str) -> Result<f64, String> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let bad = || "not a quantity such as 100m, 0.5, 64Mi or 1G".to_string();
    let n: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad())?;
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    if n <= 0.0 || !n.is_finite() {
        return Err("must be more than zero".into());
    }
    Ok(n * scale)
}

/// A log filter: a level, or comma-separated `target=level` directives.
fn log_filter(v: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in v.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        let target = directive.rsplit_once('=').map(|(t, _)| t);
        if !LEVELS.contains(&level.trim()) {
            return Err(format!(
                "{:?} is not a level ({})",
                level.trim(),
                LEVELS.join(", ")
            ));
        }
        if let Some(t) = target
            && !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("{t:?} is not a module path"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn good_values_are_read() {
        let o = read(
            &json!({OPAQUE_PORTS: "3306, 8000-8010", SKIP_OUTBOUND_CIDRS: "10.0.0.0/8,fd00::/8",
                    PROXY_CPU_REQUEST: "100m", PROXY_CPU_LIMIT: "1", PROXY_MEMORY_LIMIT: "64Mi",
                    PROXY_LOG_LEVEL: "info,mesh_proxy=debug", "other.io/x": "y"}),
            &json!({INJECT: "enabled"}),
        )
        .unwrap();
        assert_eq!(o.inject, Some(true));
        assert_eq!(o.opaque_ports.as_deref(), Some("3306, 8000-8010"));
        assert_eq!(o.requests["cpu"], "100m");
        assert_eq!(o.limits["memory"], "64Mi");
        assert_eq!(ports("25,8000-8010").unwrap(), [(25, 25), (8000, 8010)]);
    }

    #[test]
    fn every_bad_value_is_named_by_its_annotation() {
        let problems = read(
            &json!({OPAQUE_PORTS: "3306,70000", SKIP_INBOUND_PORTS: "9-1",
                    SKIP_OUTBOUND_CIDRS: "10.0.0.0/33", PROXY_MEMORY_REQUEST: "lots",
                    PROXY_CPU_REQUEST: "2", PROXY_CPU_LIMIT: "500m", PROXY_LOG_LEVEL: "loud",
                    INJECT: "yes", "mesh.dev/opaque-port": "1"}),
            &json!({}),
        )
        .unwrap_err();
        let all = problems.join("\n");
        for want in [
            "mesh.dev/opaque-ports: \"3306,70000\": \"70000\" is not a port",
            "mesh.dev/skip-inbound-ports: \"9-1\": \"9-1\": the range ends before it starts",
            "mesh.dev/skip-outbound-cidrs: \"10.0.0.0/33\"",
            "mesh.dev/proxy-memory-request: \"lots\": not a quantity",
            "mesh.dev/proxy-cpu-request: \"2\" is more than mesh.dev/proxy-cpu-limit: \"500m\"",
            "mesh.dev/proxy-log-level: \"loud\": \"loud\" is not a level",
            "mesh.dev/inject: \"yes\": neither enabled nor disabled",
            "mesh.dev/opaque-port: not an annotation mesh reads",
        ] {
            assert!(all.contains(want), "{want:?} missing from:\n{all}");
        }
        assert_eq!(problems.len(), 8, "{all}");
    }

    #[test]
    fn quantities_and_lists_refuse_what_kubernetes_would() {
        for bad in ["", "-1", "0", "1Xi", "m", "1e", "NaN"] {
            assert!(quantity(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quantity("1.5Gi").unwrap(), 1.5 * 1024f64.powi(3));
        assert_eq!(quantity("1e3").unwrap(), 1000.0);
        for bad in ["", "1,,2", "0", "a", "1-", "65536"] {
            assert!(ports(bad).is_err(), "{bad:?}");
        }
        for bad in ["10.0.0.0", "10.0.0/8", "::1/129", "a/1"] {
            assert!(cidrs(bad).is_err(), "{bad:?}");
        }
    }
}
