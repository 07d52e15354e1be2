//! One route as the data path uses it: request matching (path, method,
//! headers), weighted backends, and the route's timeout, retry, mirror and
//! fault policies, converted from proto once per snapshot.

use super::cluster::Cluster;
use super::fallback::Fallback;
use crate::retry::{self, Budget};
use http::{HeaderName, Method, Request};
use mesh_proto::v1 as pb;
use regex::Regex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// One route.
#[derive(Debug)]
pub struct Route {
    /// Name (the TrafficSplit's or HTTPRoute rule's, or `default`).
    pub name: crate::name::Name,
    /// Any match selects the route; empty matches everything.
    pub matches: Vec<Match>,
    /// All backends as configured.
    pub backends: Vec<Backend>,
    /// Whole-request deadline, retries included.
    pub timeout: Option<Duration>,
    /// Retry policy and the budget it draws on.
    pub retry: Option<(retry::Policy, Arc<Budget>)>,
    /// Shadow traffic.
    pub mirror: Option<Mirror>,
    /// Injected faults.
    pub fault: Option<Fault>,
    /// Host names it takes (Gateway API `hostnames`); empty: any.
    pub hostnames: Vec<String>,
    /// What answers while no backend has a usable endpoint.
    pub fallback: Option<Fallback>,
    /// A release's canary shield.
    pub shield: Option<super::shield::Shield>,
    /// Indices of backends with ready endpoints, and the sum of their weights.
    /// Precomputed per snapshot so a pick is one random number and a scan.
    live: Vec<usize>,
    live_weight: u64,
}

/// A weighted backend.
#[derive(Debug)]
pub struct Backend {
    /// Its endpoints.
    pub cluster: Arc<Cluster>,
    /// Relative weight.
    pub weight: u32,
}

/// Conditions that must all hold.
#[derive(Debug)]
pub struct Match {
    path: PathMatch,
    method: Option<Method>,
    headers: Vec<(HeaderName, Value)>,
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Value {
    Exact(String),
    Regex(Regex),
}

/// Copies of requests sent to a shadow backend.
#[derive(Debug)]
pub struct Mirror {
    /// Where copies go.
    pub cluster: Arc<Cluster>,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// Faults injected before forwarding.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Added delay.
    pub delay: Duration,
    /// Share of requests delayed, 0–100.
    pub delay_percent: f64,
    /// Status of injected aborts.
    pub abort_status: u16,
    /// Share of requests aborted, 0–100.
    pub abort_percent: f64,
}

/// Whether a percentage roll succeeds.
fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

impl Fault {
    /// Whether this request is delayed (rolled per request).
    pub fn delays(&self) -> bool {
        roll(self.delay_percent)
    }

    /// Whether this request is aborted (rolled per request).
    pub fn aborts(&self) -> bool {
        roll(self.abort_percent)
    }
}

impl Mirror {
    /// Whether this request is copied (rolled per request).
    pub fn sampled(&self) -> bool {
        roll(self.percent)
    }
}

/// Whether `host` is one of `hostnames`: exactly, ignoring case, or under
/// a `*.` wildcard, which takes one or more leading labels but never the
/// bare suffix (Gateway API: "`*.example.com` would match both
/// `test.example.com`, and `foo.test.example.com`, but not `example.com`").
fn host_matches(hostnames: &[String], host: &str) -> bool {
    hostnames.iter().any(|h| match h.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
        None => host.eq_ignore_ascii_case(h),
    })
}

/// Compiles a regex that must match a whole value, within `limit` bytes.
fn anchored(re: &str, limit: usize) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(limit)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(n) => format!(
                "regex {re:?} compiles to more than this sidecar's limit of {n} bytes (MESH_PROXY_MAX_REGEX_BYTES)"
            ),
            e => format!("regex {re:?} does not compile: {e}"),
        })
}

impl Match {
    fn from_proto(m: &pb::RequestMatch, limit: usize) -> Result<Match, String> {
        use pb::header_match::Value as V;
        use pb::request_match::Path as P;
        let path = match &m.path {
            None => PathMatch::Any,
            Some(P::PathExact(p)) => PathMatch::Exact(p.clone()),
            Some(P::PathPrefix(p)) if p.is_empty() || p == "/" => PathMatch::Any,
            Some(P::PathPrefix(p)) => PathMatch::Prefix(p.trim_end_matches('/').to_string()),
            Some(P::PathRegex(re)) => PathMatch::Regex(anchored(re, limit)?),
        };
        let method = if m.method.is_empty() {
            None
        } else {
            Some(
                Method::from_bytes(m.method.as_bytes())
                    .map_err(|_| format!("method {:?} is not an HTTP method", m.method))?,
            )
        };
        let mut headers = Vec::new();
        for h in &m.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is invalid", h.name))?;
            let value = match &h.value {
                Some(V::Exact(v)) => Value::Exact(v.clone()),
                Some(V::Regex(re)) => Value::Regex(anchored(re, limit)?),
                None => return Err(format!("header match {:?} has no value", h.name)),
            };
            headers.push((name, value));
        }
        Ok(Match {
            path,
            method,
            headers,
        })
    }

    fn matches<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            // Gateway API prefixes match whole segments: /api matches /api
            // and /api/x, never /apix.
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|(name, want)| {
                req.headers().get_all(name).iter().any(|v| {
                    v.to_str().is_ok_and(|v| match want {
                        Value::Exact(e) => v == e,
                        Value::Regex(re) => re.is_match(v),
                    })
                })
            })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.path {
            PathMatch::Any => {}
            PathMatch::Exact(p) => parts.push(format!("path = {p}")),
            PathMatch::Prefix(p) => parts.push(format!("path prefix {p}")),
            PathMatch::Regex(re) => parts.push(format!("path ~ {}", re.as_str())),
        }
        if let Some(m) = &self.method {
            parts.push(format!("method {m}"));
        }
        for (n, v) in &self.headers {
            parts.push(match v {
                Value::Exact(e) => format!("{n} = {e}"),
                Value::Regex(re) => format!("{n} ~ {}", re.as_str()),
            });
        }
        if parts.is_empty() {
            "*".into()
        } else {
            parts.join(" & ")
        }
    }
}

/// What a route is built from besides its proto: the snapshot's clusters and
/// the previous snapshot's retry budgets (kept so a push does not reset them).
pub struct Context<'a> {
    /// Clusters by name.
    pub clusters: &'a std::collections::BTreeMap<String, Arc<Cluster>>,
    /// Budgets of the previous snapshot, by `service/route`.
    pub budgets: &'a HashMap<String, Arc<Budget>>,
    /// Most bytes a compiled regex may take.
    pub regex_limit: usize,
}

impl Route {
    /// Converts one route of service `id`; errors name the route.
    pub fn from_proto(r: &pb::Route, id: &str, cx: &Context<'_>) -> Result<Route, Vec<String>> {
        let mut errors = Vec::new();
        let at = |e: String| format!("{id}: route {}: {e}", r.name);
        let mut backends = Vec::new();
        for b in &r.backends {
            match cx.clusters.get(&b.cluster) {
                Some(c) => backends.push(Backend {
                    cluster: Arc::clone(c),
                    weight: b.weight,
                }),
                None => errors.push(at(format!("names unknown cluster {:?}", b.cluster))),
            }
        }
        if r.backends.is_empty() {
            errors.push(at("has no backends".into()));
        }
        let mut matches = Vec::new();
        for m in &r.matches {
            match Match::from_proto(m, cx.regex_limit) {
                Ok(m) => matches.push(m),
                Err(e) => errors.push(at(e)),
            }
        }
        // The single legacy prefix, from control planes before `matches`.
        if let Some(legacy) = r.r#match.as_ref().filter(|m| !m.path_prefix.is_empty())
            && r.matches.is_empty()
        {
            let m = pb::RequestMatch {
                path: Some(pb::request_match::Path::PathPrefix(
                    legacy.path_prefix.clone(),
                )),
                ..Default::default()
            };
            matches.push(Match::from_proto(&m, cx.regex_limit).map_err(|e| vec![at(e)])?);
        }
        let retry = match &r.retry {
            None => None,
            Some(p) if p.max_retries == 0 => None,
            Some(p) => match retry::Policy::from_proto(p) {
                Ok(policy) => {
                    let key = format!("{id}/{}", r.name);
                    let budget = cx
                        .budgets
                        .get(&key)
                        .filter(|b| b.same_settings(policy.budget_ratio, policy.budget_min_per_sec))
                        .cloned()
                        .unwrap_or_else(|| {
                            Arc::new(Budget::new(policy.budget_ratio, policy.budget_min_per_sec))
                        });
                    Some((policy, budget))
                }
                Err(e) => {
                    errors.push(at(format!("retry: {e}")));
                    None
                }
            },
        };
        let mirror = match &r.mirror {
            None => None,
            Some(m) => match cx.clusters.get(&m.cluster) {
                Some(c) => Some(Mirror {
                    cluster: Arc::clone(c),
                    percent: m.percent,
                }),
                None => {
                    errors.push(at(format!("mirror names unknown cluster {:?}", m.cluster)));
                    None
                }
            },
        };
        let fault = r.fault.as_ref().map(|f| Fault {
            delay: Duration::from_millis(f.delay_ms),
            delay_percent: f.delay_percent,
            abort_status: u16::try_from(f.abort_status).unwrap_or(503),
            abort_percent: f.abort_percent,
        });
        if let Some(f) = &fault
            && f.abort_percent > 0.0
            && http::StatusCode::from_u16(f.abort_status).is_err()
        {
            errors.push(at(format!(
                "fault abort status {} is not an HTTP status",
                f.abort_status
            )));
        }
        let fallback = match &r.fallback {
            None => None,
            Some(f) => match Fallback::from_proto(f, cx.clusters) {
                Ok(f) => Some(f),
                Err(e) => {
                    errors.push(at(e));
                    None
                }
            },
        };
        for h in &r.hostnames {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') {
                errors.push(at(format!(
                    "hostname {h:?} is not a host name or a `*.` wildcard"
                )));
            }
        }
        let names: Vec<&str> = backends.iter().map(|b| b.cluster.name.as_str()).collect();
        let shield = r.shield.as_ref().and_then(|s| {
            super::shield::Shield::from_proto(s, &names, retry.as_ref().map(|(_, b)| b))
                .map_err(|e| errors.push(at(e)))
                .ok()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let live: Vec<usize> = (0..backends.len())
            .filter(|&i| !backends[i].cluster.endpoints.is_empty())
            .collect();
        let live_weight = live.iter().map(|&i| u64::from(backends[i].weight)).sum();
        Ok(Route {
            hostnames: r.hostnames.clone(),
            name: r.name.clone().into(),
            matches,
            backends,
            timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
            retry,
            mirror,
            fault,
            fallback,
            shield,
            live,
            live_weight,
        })
    }

    /// Whether the route takes this request.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        let host_ok = self.hostnames.is_empty()
            || crate::http::authority(req)
                .is_some_and(|a| host_matches(&self.hostnames, crate::http::host_of(a)));
        host_ok && (self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req)))
    }

    /// Chooses a backend by weight among those with ready endpoints. When every
    /// live backend has weight 0 (say v1 is down and v2 is a 0% canary), live
    /// backends share equally: a split must never black-hole traffic.
    pub fn pick_backend(&self) -> Option<&Backend> {
        if self.live.is_empty() {
            return None;
        }
        if self.live_weight == 0 {
            return self
                .backends
                .get(self.live[fastrand::usize(..self.live.len())]);
        }
        let mut n = fastrand::u64(..self.live_weight);
        for &i in &self.live {
            let w = u64::from(self.backends[i].weight);
            if n < w {
                return self.backends.get(i);
            }
            n -= w;
        }
        None
    }

    /// The backends with ready endpoints, other than `but` (a backend
    /// already tried), in configured order: where an attempt goes when the
    /// backend its weight chose has no usable endpoint.
    pub fn other_live_backends<'r>(
        &'r self,
        but: &'r Backend,
    ) -> impl Iterator<Item = &'r Backend> {
        self.live
            .iter()
            .map(|&i| &self.backends[i])
            .filter(move |b| !std::ptr::eq(*b, but))
    }

    /// A JSON view for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "hostnames": self.hostnames,
            "matches": self.matches.iter().map(Match::describe).collect::<Vec<_>>(),
            "backends": self.backends.iter().map(|b| serde_json::json!({
                "cluster": b.cluster.name, "weight": b.weight,
            })).collect::<Vec<_>>(),
            "timeout_ms": self.timeout.map(|t| t.as_millis() as u64),
            "retry": self.retry.as_ref().map(|(p, _)| p),
            "mirror": self.mirror.as_ref().map(|m| serde_json::json!({
                "cluster": m.cluster.name, "percent": m.percent,
            })),
            "fault": self.fault,
            "fallback": self.fallback.as_ref().map(Fallback::dump),
            "shield": self.shield.as_ref().map(|s| serde_json::json!({
                "canary": self.backends[s.canary].cluster.name,
                "stable": self.backends[s.stable].cluster.name,
            })),
        })
    }
}
