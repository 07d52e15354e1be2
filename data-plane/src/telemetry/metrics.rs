//! The sidecar's Prometheus metrics, exposed on admin `/metrics` in
//! OpenMetrics text (prometheus-client) or the classic text format. Label values come only from config
//! (service, route and backend names, versions), from verified identities,
//! and from status codes, never from raw request data, so cardinality is
//! bounded by the mesh's size: a request for an unknown authority is
//! counted under `service="unknown"`.

use crate::telemetry::exposition::{self, Format};
use crate::telemetry::report::Aggregates;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Latency buckets in seconds: 1 ms to 10 s, as Linkerd's.
const BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// What one request looked like, for its labels.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Target service, `name.namespace`.
    pub service: crate::name::Name,
    /// Route name; empty on inbound.
    pub route: crate::name::Name,
    /// Backend service, `name.namespace`; empty on inbound.
    pub backend: crate::name::Name,
    /// Version of the endpoint that answered; empty if none did.
    pub backend_version: crate::name::Name,
    /// HTTP status of the response.
    pub status_code: u16,
    /// gRPC status when the response carries it in its headers.
    pub grpc_status: String,
    /// Whether the hop was mTLS.
    pub tls: bool,
    /// Verified SPIFFE ID of the peer (the client on inbound, the server on
    /// outbound); empty without mTLS.
    pub peer_identity: crate::name::Name,
}

/// Latency labels: the request's, without the per-response ones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    direction: &'static str,
    service: String,
    route: String,
    backend: String,
    backend_version: String,
}

/// Per-route events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Target service.
    pub service: crate::name::Name,
    /// Route name.
    pub route: crate::name::Name,
}

/// Per-backend events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Backend service, `name.namespace`.
    pub backend: crate::name::Name,
}

/// Mirror outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// Shadow backend.
    pub backend: crate::name::Name,
    /// `sent` or `dropped` (too many in flight).
    pub result: &'static str,
}

/// Requests a route's fallback answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// Target service.
    pub service: crate::name::Name,
    /// Route name.
    pub route: crate::name::Name,
    /// The fallback cluster, or `static`.
    pub fallback: String,
}

/// Requests that failed because the client's own body did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
}

/// Inbound connection outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// Whether the connection was mTLS.
    pub tls: bool,
    /// `accepted`, `refused` or `handshake_failed`.
    pub outcome: &'static str,
}

/// Completed mTLS handshakes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `inbound` (we terminated it) or `outbound` (we opened it).
    pub direction: &'static str,
    /// `full`, or `resumed` from a TLS 1.3 session ticket.
    pub kind: &'static str,
}

/// Protocol detection on redirected connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `http1`, `h2`, `tls` or `opaque`.
    pub protocol: &'static str,
    /// What decided: `bytes` (the client's first bytes), `timeout` (it
    /// sent nothing in time) or `port` (an opaque port: no detection).
    pub by: &'static str,
}

/// TCP connections by direction and peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `src` (accepted from a client) or `dst` (opened to an upstream).
    pub peer: &'static str,
}

type Histograms = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Registers `metric` under `name` and hands it back (metrics are shared
/// handles: the registry and the struct field see the same counts).
fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// One label set's metrics, resolved.
struct Resolved {
    requests: Counter,
    latency: Histogram,
    cell: Arc<crate::telemetry::report::Cell>,
    failed: bool,
}

impl Resolved {
    fn record(&self, secs: f64) {
        self.requests.inc();
        self.latency.observe(secs);
        self.cell.record(self.failed, secs);
    }
}

/// Every metric the sidecar keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histograms,
    /// Retries sent.
    pub retries: Family<RouteLabels, Counter>,
    /// Requests the canary failed that a release's shield sent to the stable.
    pub shielded: Family<RouteLabels, Counter>,
    /// Requests that hit the route timeout or a per-try timeout.
    pub timeouts: Family<RouteLabels, Counter>,
    /// Endpoints ejected.
    pub ejections: Family<BackendLabels, Counter>,
    /// Mirrored copies.
    pub mirrors: Family<MirrorLabels, Counter>,
    /// Requests answered by a route's fallback.
    pub fallbacks: Family<FallbackLabels, Counter>,
    /// Requests whose client body failed (cut short, malformed, client gone).
    pub client_body_errors: Family<DirectionLabels, Counter>,
    /// Inbound connections.
    pub inbound_connections: Family<ConnectionLabels, Counter>,
    /// mTLS handshakes, full or resumed.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Redirected connections by the protocol detected.
    pub protocol_detections: Family<DetectLabels, Counter>,
    /// Opaque TCP connections by peer identity.
    pub opaque: crate::telemetry::opaque::Opaque,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    config_version: Gauge,
    config_applied: Gauge<f64, AtomicU64>,
    tcp_open: Family<TcpLabels, Counter>,
    tcp_close: Family<TcpLabels, Counter>,
    tcp_open_now: Family<TcpLabels, Gauge>,
    tcp_read: Family<TcpLabels, Counter>,
    tcp_write: Family<TcpLabels, Counter>,
    tcp_refused: Family<TcpLabels, Counter>,
    /// The interval in progress, streamed to the control plane.
    pub aggregates: Arc<Aggregates>,
    /// Every label set seen, with its counter, histogram and aggregate
    /// resolved, so a request costs one fast hash and a few atomic adds.
    resolved: RwLock<HashMap<RequestLabels, Resolved, foldhash::fast::RandomState>>,
    enabled: bool,
    own_version: crate::name::Name,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(true, String::new())
    }
}

impl Metrics {
    /// Metrics for a sidecar of `own_version`; with `enabled` false,
    /// requests are not counted at all (the telemetry-off switch).
    pub fn new(enabled: bool, own_version: String) -> Self {
        let mut registry = Registry::with_prefix("mesh");
        let r = &mut registry;
        Metrics {
            requests: registered(
                r,
                "requests",
                "Requests by direction, target service, route, backend, status and peer",
                Family::default(),
            ),
            // The unit is in the name; no `# UNIT` line, which some
            // OpenMetrics parsers refuse on histograms.
            latency: registered(
                r,
                "response_latency_seconds",
                "Time from request to response headers, in seconds",
                Family::new_with_constructor(histogram as fn() -> Histogram),
            ),
            retries: registered(r, "retries", "Retries sent", Family::default()),
            shielded: registered(
                r,
                "shielded",
                "Requests a canary failed, sent once more to the stable by a release's shield",
                Family::default(),
            ),
            timeouts: registered(
                r,
                "timeouts",
                "Requests that ran out of time (route or per-try timeout)",
                Family::default(),
            ),
            ejections: registered(
                r,
                "ejections",
                "Endpoints ejected by outlier detection",
                Family::default(),
            ),
            mirrors: registered(r, "mirror_requests", "Mirrored copies", Family::default()),
            fallbacks: registered(
                r,
                "fallback_requests",
                "Requests a route's fallback answered while no backend had a usable endpoint",
                Family::default(),
            ),
            client_body_errors: registered(
                r,
                "client_body_errors",
                "Requests whose client body failed (cut short, malformed chunking, client gone): the client's fault, never held against an endpoint",
                Family::default(),
            ),
            inbound_connections: registered(
                r,
                "inbound_connections",
                "Inbound connections by transport and outcome",
                Family::default(),
            ),
            tls_handshakes: registered(
                r,
                "tls_handshakes",
                "Completed mTLS handshakes by direction and kind: full, or resumed from a TLS 1.3 session ticket (no certificate exchange or signature)",
                Family::default(),
            ),
            opaque: crate::telemetry::opaque::Opaque::register(r),
            protocol_detections: registered(
                r,
                "protocol_detections",
                "Redirected connections by the protocol detected and what decided it (bytes, timeout, an opaque port)",
                Family::default(),
            ),
            access_log_dropped: registered(
                r,
                "access_log_dropped",
                "Access-log lines dropped because the writer fell behind",
                Counter::default(),
            ),
            config_version: registered(
                r,
                "config_version",
                "Control-plane config version applied",
                Gauge::default(),
            ),
            config_applied: registered(
                r,
                "config_applied_timestamp_seconds",
                "When the applied config version was applied (Unix seconds)",
                Gauge::default(),
            ),
            tcp_open: registered(r, "tcp_open", "TCP connections opened", Family::default()),
            tcp_close: registered(r, "tcp_close", "TCP connections closed", Family::default()),
            tcp_open_now: registered(
                r,
                "tcp_open_connections",
                "TCP connections open now",
                Family::default(),
            ),
            tcp_read: registered(
                r,
                "tcp_read_bytes",
                "Bytes read from TCP connections (TLS records included)",
                Family::default(),
            ),
            tcp_write: registered(
                r,
                "tcp_write_bytes",
                "Bytes written to TCP connections (TLS records included)",
                Family::default(),
            ),
            tcp_refused: registered(
                r,
                "tcp_refused",
                "Connections closed on accept because the listener had its limit open (MESH_PROXY_MAX_CONNECTIONS)",
                Family::default(),
            ),
            registry,
            aggregates: Arc::new(Aggregates::new(&BUCKETS)),
            resolved: RwLock::default(),
            enabled,
            own_version: own_version.into(),
        }
    }

    /// Whether requests are counted at all (`MESH_PROXY_TELEMETRY`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts one finished request and its latency to response headers.
    /// Inbound requests are served by this sidecar's own version.
    pub fn request(&self, mut labels: RequestLabels, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        if labels.direction == "inbound" && labels.backend_version.is_empty() {
            labels.backend_version.clone_from(&self.own_version);
        }
        let secs = elapsed.as_secs_f64();
        {
            let resolved = self.resolved.read().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = resolved.get(&labels) {
                r.record(secs);
                return;
            }
        }
        let r = self.resolve(&labels);
        r.record(secs);
        self.resolved
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(labels, r);
    }

    /// The slow path, once per label set: finds (or creates) its counter,
    /// histogram and aggregate.
    fn resolve(&self, labels: &RequestLabels) -> Resolved {
        let latency = self
            .latency
            .get_or_create(&LatencyLabels {
                direction: labels.direction,
                service: labels.service.to_string(),
                route: labels.route.to_string(),
                backend: labels.backend.to_string(),
                backend_version: labels.backend_version.to_string(),
            })
            .clone();
        let requests = self.requests.get_or_create(labels).clone();
        let failed = labels.status_code >= 500
            || !(labels.grpc_status.is_empty() || labels.grpc_status == "0");
        let backend = if labels.direction == "inbound" {
            &labels.service
        } else {
            &labels.backend
        };
        let cell = self.aggregates.cell((
            labels.direction,
            labels.service.to_string(),
            backend.to_string(),
            labels.backend_version.to_string(),
        ));
        Resolved {
            requests,
            latency,
            cell,
            failed,
        }
    }

    /// The TCP counters of (`direction`, `peer`); `None` with telemetry off.
    pub fn tcp(
        &self,
        direction: &'static str,
        peer: &'static str,
    ) -> Option<Arc<crate::telemetry::meter::Meter>> {
        if !self.enabled {
            return None;
        }
        let l = TcpLabels { direction, peer };
        Some(Arc::new(crate::telemetry::meter::Meter {
            open: self.tcp_open.get_or_create(&l).clone(),
            close: self.tcp_close.get_or_create(&l).clone(),
            open_now: self.tcp_open_now.get_or_create(&l).clone(),
            read: self.tcp_read.get_or_create(&l).clone(),
            write: self.tcp_write.get_or_create(&l).clone(),
            refused: self.tcp_refused.get_or_create(&l).clone(),
        }))
    }

    /// Records that `version` was applied now.
    pub fn config_applied(&self, version: &str) {
        self.config_version.set(version.parse().unwrap_or(-1));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_applied.set(now.as_secs_f64());
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The metrics in `format`.
    pub fn render_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.render(),
            Format::Text => exposition::to_text(&self.render()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Grafana dashboard in install/ queries only metrics and labels
    /// the sidecar really exports.
    #[test]
    fn the_dashboard_queries_what_the_sidecar_exports() {
        let m = Metrics::default();
        m.request(RequestLabels::default(), Duration::from_millis(1));
        let route = RouteLabels {
            service: "s".into(),
            route: "r".into(),
        };
        m.retries.get_or_create(&route).inc();
        m.timeouts.get_or_create(&route).inc();
        m.ejections
            .get_or_create(&BackendLabels {
                backend: "b".into(),
            })
            .inc();
        m.mirrors
            .get_or_create(&MirrorLabels {
                backend: "b".into(),
                result: "sent",
            })
            .inc();
        m.fallbacks
            .get_or_create(&FallbackLabels {
                service: "s".into(),
                route: "r".into(),
                fallback: "static".into(),
            })
            .inc();
        m.inbound_connections
            .get_or_create(&ConnectionLabels {
                tls: true,
                outcome: "accepted",
            })
            .inc();
        m.config_applied("1");
        let _counted = crate::telemetry::meter::Metered::new((), m.tcp("inbound", "src").as_ref());
        let text = m.render();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../install/grafana/mesh-dashboard.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut exprs: Vec<String> = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().iter())
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect();
        exprs.push(
            dash["templating"]["list"][1]["definition"]
                .as_str()
                .unwrap()
                .into(),
        );
        assert!(exprs.len() >= 10);
        let metric = regex::Regex::new(r"mesh_[a-z_]+").unwrap();
        let by = regex::Regex::new(r"by \(([^)]*)\)").unwrap();
        for e in &exprs {
            for name in metric.find_iter(e) {
                let name = name.as_str();
                if name.starts_with("mesh_release_") {
                    // mesh-control's; its own test checks them.
                    continue;
                }
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "{name} (in {e}) is not exported:\n{text}"
                );
            }
            if e.contains("mesh_release_") {
                continue;
            }
            for labels in by.captures_iter(e) {
                for label in labels[1].split(',').map(str::trim) {
                    if label == "le" || label == "instance" {
                        continue; // histogram bucket bound; added by Prometheus
                    }
                    assert!(
                        text.contains(&format!("{label}=\"")),
                        "label {label} (in {e}) is not exported"
                    );
                }
            }
        }
    }

    #[test]
    fn renders_openmetrics_with_units_and_eof() {
        let m = Metrics::default();
        let labels = RequestLabels {
            direction: "outbound",
            service: "echo.default".into(),
            status_code: 503,
            ..Default::default()
        };
        m.request(labels.clone(), Duration::from_millis(3));
        m.request(labels, Duration::from_millis(3));
        m.config_applied("42");
        let text = m.render();
        assert!(text.contains("mesh_requests_total{direction=\"outbound\",service=\"echo.default\",route=\"\",backend=\"\",backend_version=\"\",status_code=\"503\",grpc_status=\"\",tls=\"false\",peer_identity=\"\"} 2"), "{text}");
        assert!(
            text.contains("# TYPE mesh_response_latency_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("mesh_response_latency_seconds_bucket{le=\"0.005\",direction=\"outbound\",service=\"echo.default\",route=\"\",backend=\"\",backend_version=\"\"} 2"), "{text}");
        assert!(text.contains("mesh_config_version 42"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
