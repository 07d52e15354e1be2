//! One request's telemetry, the same in both directions: as the request
//! arrives, start its span (when tracing is on) and its access-log entry
//! (when sampled); once it is answered, count it in the metrics, end the
//! span, and hand the log entry to the response body, which writes it when
//! the body is done. With tracing and logs off, a request costs only its
//! metric updates.

use crate::body::BytesIn;
use crate::errors::Body;
use crate::telemetry::access_log::{AccessLog, Entry, Outcome};
use crate::telemetry::metrics::{Metrics, RequestLabels};
use crate::telemetry::trace::{Span, Tracing};
use http::{Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Metrics, tracer and access log, shared by every handler.
pub struct Observer {
    /// Prometheus metrics and the aggregates for the control plane.
    pub metrics: Arc<Metrics>,
    tracing: Option<Arc<Tracing>>,
    log: Option<Arc<AccessLog>>,
}

/// A request under observation.
pub struct Watch {
    started: Instant,
    span: Option<Span>,
    entry: Option<Entry>,
    bytes_in: Option<BytesIn>,
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The trace id a W3C `traceparent` names, for logs when we do not trace.
fn traceparent_id(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let id = v.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_string())
}

/// A sampled span's request attributes (OpenTelemetry HTTP semantic
/// conventions): server spans name the path, client spans the full URL.
fn request_attributes<B>(direction: &str, req: &Request<B>) -> Vec<KeyValue> {
    let host = crate::http::authority(req).unwrap_or_default();
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => match p.parse::<u16>() {
            Ok(p) => (n, Some(p)),
            Err(_) => (host, None),
        },
        None => (host, None),
    };
    let mut attrs = vec![
        KeyValue::new("http.request.method", req.method().as_str().to_string()),
        KeyValue::new("network.protocol.version", protocol(req.version())),
        KeyValue::new("server.address", name.to_string()),
    ];
    if let Some(p) = port {
        attrs.push(KeyValue::new("server.port", i64::from(p)));
    }
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    if direction == "inbound" {
        attrs.push(KeyValue::new("url.scheme", "http"));
        attrs.push(KeyValue::new("url.path", req.uri().path().to_string()));
        if let Some(q) = req.uri().query() {
            attrs.push(KeyValue::new("url.query", q.to_string()));
        }
    } else {
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        attrs.push(KeyValue::new(
            "url.full",
            format!("http://{host}{path_and_query}"),
        ));
    }
    attrs
}

/// A sampled span's attributes from the answered request: the endpoint
/// that answered and what the mesh decided on the way.
fn response_attributes(labels: &RequestLabels, upstream: Option<SocketAddr>) -> Vec<KeyValue> {
    let mut attrs = Vec::new();
    if let Some(addr) = upstream {
        attrs.push(KeyValue::new("network.peer.address", addr.ip().to_string()));
        attrs.push(KeyValue::new("network.peer.port", i64::from(addr.port())));
    }
    if !labels.grpc_status.is_empty() {
        attrs.push(KeyValue::new(
            "rpc.grpc.status_code",
            labels.grpc_status.clone(),
        ));
    }
    for (k, v) in [
        ("mesh.service", &labels.service),
        ("mesh.route", &labels.route),
        ("mesh.backend", &labels.backend),
        ("mesh.backend.version", &labels.backend_version),
        ("mesh.peer.identity", &labels.peer_identity),
    ] {
        if !v.is_empty() {
            attrs.push(KeyValue::new(k, v.to_string()));
        }
    }
    attrs
}

impl Observer {
    /// An observer; `tracing` and `log` are `None` when off.
    pub fn new(
        metrics: Arc<Metrics>,
        tracing: Option<Arc<Tracing>>,
        log: Option<Arc<AccessLog>>,
    ) -> Self {
        Observer {
            metrics,
            tracing,
            log,
        }
    }

    /// Starts watching a request; may rewrite its trace headers.
    pub fn begin<B>(&self, direction: &'static str, req: &mut Request<B>) -> Watch {
        let started = Instant::now();
        let span = self.tracing.as_ref().map(|t| {
            let kind = if direction == "inbound" {
                SpanKind::Server
            } else {
                SpanKind::Client
            };
            let mut span = t.start_span(kind, req.method().as_str().to_string(), req.headers_mut());
            if span.recording() {
                span.add(request_attributes(direction, req));
            }
            span
        });
        let entry = self
            .log
            .as_ref()
            .filter(|l| l.sampled())
            .map(|l| l.begin(direction, req));
        let bytes_in = entry.as_ref().map(|_| {
            let b = BytesIn::default();
            req.extensions_mut().insert(b.clone());
            b
        });
        Watch {
            started,
            span,
            entry: entry.map(|mut e| {
                if self.tracing.is_none() {
                    e.set_trace_id(traceparent_id(req.headers()));
                }
                e
            }),
            bytes_in,
        }
    }

    /// Counts the answered request, ends its span and arranges its log line.
    pub fn finish(
        &self,
        w: Watch,
        labels: RequestLabels,
        upstream: Option<SocketAddr>,
        resp: Response<Body>,
    ) -> Response<Body> {
        let elapsed = w.started.elapsed();
        let mut trace_id = None;
        let mut recording = None;
        if let Some(span) = w.span {
            trace_id = Some(span.trace_id().to_string());
            if span.recording() {
                // Ended with the response body, so it covers the whole
                // exchange and sees a gRPC status that comes in trailers.
                let grpc = labels.grpc_status.parse::<i32>().ok();
                let attrs = response_attributes(&labels, upstream);
                recording = Some((span, attrs, labels.status_code, grpc));
            }
        }
        let logged = w.entry.map(|mut e| {
            if trace_id.is_some() {
                e.set_trace_id(trace_id);
            }
            let o = Outcome {
                status: labels.status_code,
                upstream,
                peer_identity: (!labels.peer_identity.is_empty())
                    .then(|| labels.peer_identity.to_string()),
                route: labels.route.to_string(),
                backend: labels.backend.to_string(),
                bytes_in: w.bytes_in,
            };
            (e, o)
        });
        // A gRPC status that was not in the headers comes in the trailers:
        // count the request when they arrive, so it is labelled with it.
        let in_trailers =
            labels.grpc_status.is_empty() && crate::http::grpc_content(resp.headers());
        let deferred = if in_trailers && self.metrics.enabled() {
            Some((self.metrics.clone(), labels))
        } else {
            self.metrics.request(labels, elapsed);
            if logged.is_none() && recording.is_none() {
                return resp;
            }
            None
        };
        resp.map(|b| {
            b.on_end(Box::new(move |end| {
                // A gRPC stream cut short has a status too (never a
                // success): CANCELLED or UNAVAILABLE.
                let code = if in_trailers {
                    end.grpc_code()
                } else {
                    end.grpc_status
                };
                if let Some((metrics, mut labels)) = deferred {
                    if let Some(code) = code {
                        labels.grpc_status = code.to_string();
                    }
                    metrics.request(labels, elapsed);
                }
                if let Some((span, mut attrs, status, grpc)) = recording {
                    if let Some(code) = code {
                        attrs.push(KeyValue::new("rpc.grpc.status_code", code.to_string()));
                    }
                    if !end.complete {
                        attrs.push(KeyValue::new("mesh.response.complete", false));
                    }
                    span.finish(status, code.or(grpc), attrs);
                }
                if let Some((entry, o)) = logged {
                    entry.finish(o, end);
                }
            }))
        })
    }

    /// Flushes spans on shutdown. The exporter's thread needs this runtime
    /// to send, so the blocking flush runs off it, bounded.
    pub async fn shutdown(&self) {
        if let Some(t) = self.tracing.clone() {
            let flush = tokio::task::spawn_blocking(move || t.shutdown());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flush).await;
        }
    }
}
