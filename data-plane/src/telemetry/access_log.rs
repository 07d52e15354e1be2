//! Access logs: one JSON line per sampled request on stdout, written when
//! the response body is done (so duration and bytes are the whole
//! exchange). One thread writes behind a bounded queue, so a slow pipe
//! never stalls a request; lines that do not fit are dropped and counted.
//! Values of headers on the redaction list are never written.

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

/// Lines queued for the writer at most.
const QUEUE: usize = 8192;

/// The access log.
pub struct AccessLog {
    sampling: f64,
    redact: Vec<String>,
    tx: SyncSender<String>,
    /// Lines dropped because the writer fell behind (exported as
    /// `mesh_access_log_dropped_total`).
    dropped: Counter,
}

/// A request being logged: what is known when it arrives.
pub struct Entry {
    log: Arc<AccessLog>,
    time: String,
    started: Instant,
    trace_id: Option<String>,
    fields: Map<String, Value>,
}

/// What is known when it is answered.
#[derive(Debug, Default)]
pub struct Outcome {
    /// HTTP status.
    pub status: u16,

    /// Endpoint that answered (the app, inbound).
    pub upstream: Option<SocketAddr>,
    /// Verified SPIFFE ID of the peer.
    pub peer_identity: Option<String>,
    /// Route and backend (outbound).
    pub route: String,
    /// Backend service.
    pub backend: String,
    /// Request body bytes read from the client, counted as they arrive.
    pub bytes_in: Option<crate::body::BytesIn>,
}

impl AccessLog {
    /// Starts the writer thread on stdout; lines that do not fit its queue
    /// are counted on `dropped`.
    pub fn start(cfg: &crate::config::AccessLog, dropped: Counter) -> Arc<AccessLog> {
        Self::start_on(cfg, dropped, QUEUE, || std::io::stdout().lock())
    }

    /// The same on any sink (`sink()` is called once per batch of lines),
    /// with `queue` lines of room.
    pub fn start_on<W: Write>(
        cfg: &crate::config::AccessLog,
        dropped: Counter,
        queue: usize,
        sink: impl Fn() -> W + Send + 'static,
    ) -> Arc<AccessLog> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(queue);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let mut out = sink();
                    let _ = writeln!(out, "{line}");
                    // Batch whatever else is already queued under one flush.
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            })
            .expect("spawning the access-log writer");
        Arc::new(AccessLog {
            sampling: cfg.sampling,
            redact: cfg.redact.clone(),
            tx,
            dropped,
        })
    }

    /// Whether this request is logged.
    pub fn sampled(&self) -> bool {
        self.sampling >= 1.0 || (self.sampling > 0.0 && fastrand::f64() < self.sampling)
    }

    /// Starts an entry for a request.
    pub fn begin<B>(self: &Arc<Self>, direction: &'static str, req: &http::Request<B>) -> Entry {
        let authority = crate::http::authority(req);
        let mut fields = Map::new();
        fields.insert("direction".into(), json!(direction));
        fields.insert("method".into(), json!(req.method().as_str()));
        fields.insert("authority".into(), json!(authority));
        fields.insert("path".into(), json!(req.uri().path()));
        fields.insert("protocol".into(), json!(format!("{:?}", req.version())));
        fields.insert("headers".into(), Value::Object(self.headers(req.headers())));
        Entry {
            log: self.clone(),
            time: now(),
            started: Instant::now(),
            trace_id: None,
            fields,
        }
    }

    fn headers(&self, headers: &HeaderMap) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, value) in headers {
            let v = if self.redact.iter().any(|r| r == name.as_str()) {
                "[REDACTED]".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            // Repeated headers keep their last value; enough for a log line.
            out.insert(name.as_str().to_string(), Value::String(v));
        }
        out
    }

    fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Entry {
    /// The trace the request belongs to.
    pub fn set_trace_id(&mut self, id: Option<String>) {
        self.trace_id = id;
    }

    /// The line, once the response body is done.
    pub fn finish(mut self, o: Outcome, end: crate::body::End) {
        let f = &mut self.fields;
        f.insert("status".into(), json!(o.status));
        f.insert("grpc_status".into(), json!(end.grpc_status));
        f.insert(
            "duration_ms".into(),
            json!((self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
        );
        f.insert("bytes_sent".into(), json!(end.bytes));
        let received = o
            .bytes_in
            .map(|b| b.0.load(std::sync::atomic::Ordering::Relaxed));
        f.insert("bytes_received".into(), json!(received));
        f.insert("complete".into(), json!(end.complete));
        f.insert("trace_id".into(), json!(self.trace_id));
        f.insert("upstream".into(), json!(o.upstream));
        f.insert("peer_identity".into(), json!(o.peer_identity));
        if !o.route.is_empty() {
            f.insert("route".into(), json!(o.route));
            f.insert("backend".into(), json!(o.backend));
        }
        let mut line = Map::new();
        line.insert("time".into(), json!(self.time));
        line.insert("kind".into(), json!("access"));
        line.extend(std::mem::take(f));
        self.log.write(Value::Object(line).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc::channel;

    /// A pipe nobody reads until the test says so: each batch waits for a
    /// go-ahead, and written lines are kept.
    struct Slow {
        lines: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.lines.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry(log: &Arc<AccessLog>) {
        let req = http::Request::get("/x")
            .header("host", "echo")
            .body(())
            .unwrap();
        log.begin("outbound", &req).finish(
            Outcome::default(),
            crate::body::End {
                bytes: 0,
                grpc_status: None,
                complete: true,
                broken: false,
            },
        );
    }

    #[test]
    fn a_slow_pipe_drops_lines_and_counts_them_never_blocking_a_request() {
        let cfg = crate::config::AccessLog {
            sampling: 1.0,
            redact: Vec::new(),
        };
        let (go_tx, go_rx) = channel::<()>();
        let go = Arc::new(Mutex::new(go_rx));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let metrics = crate::telemetry::metrics::Metrics::default();
        let dropped = metrics.access_log_dropped.clone();
        let (g, l) = (go.clone(), lines.clone());
        let log = AccessLog::start_on(&cfg, dropped.clone(), 4, move || {
            // Stuck until the test lets this batch through.
            let _ = g.lock().unwrap().recv();
            Slow { lines: l.clone() }
        });
        let started = Instant::now();
        for _ in 0..20 {
            entry(&log);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "never blocks"
        );
        // One line may be with the stuck writer, four wait in the queue.
        let d = dropped.get();
        assert!((15..=16).contains(&d), "{d} dropped");
        for _ in 0..3 {
            let _ = go_tx.send(());
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let written = loop {
            let n = lines
                .lock()
                .unwrap()
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            if n as u64 + d == 20 || Instant::now() > deadline {
                break n;
            }
            std::thread::yield_now();
        };
        assert_eq!(written as u64 + d, 20, "every line is written or counted");
        let exported = format!("mesh_access_log_dropped_total {d}");
        assert!(
            metrics.render().contains(&exported),
            "{exported} not on /metrics"
        );
    }
}
