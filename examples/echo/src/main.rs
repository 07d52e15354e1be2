//! mesh-echo: the example workload for demos, tests and benchmarks. One port
//! serves HTTP/1.1, h2c (prior knowledge) and gRPC (`mesh.echo.v1.Echo`).
//! Every answer names the service, version and instance that produced it.
//!
//! HTTP paths: `/healthz` (the health check), `/admin/health?ok=false|true`
//! (make the health check fail or pass), `/admin/errors?rate=R` (answer a
//! share R of requests with an error from now on, as `--error-rate`; with
//! `&spread=even`, exactly every 1/R-th request rather than at random),
//! `?status=NNN` on any other path
//! (answer with that status), `/admin/stats` (requests that
//! arrived, by method, and how many were retries: tests count arrivals
//! here), anything else echoes a JSON summary
//! of the request; request bodies are streamed and hashed, never buffered,
//! so a 10 MB upload can be checked end to end.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proto::echo::echo_server::{Echo, EchoServer};
use mesh_proto::echo::{EchoReply, EchoRequest, StreamRequest};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_stream::Stream;
use tonic::codegen::Service;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mesh-echo",
    about = "echo workload: HTTP/1.1, h2c and gRPC on one port"
)]
struct Args {
    /// Listen address; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Service name reported in answers.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Version reported in answers.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Instance id reported in answers.
    #[arg(long, default_value = "echo-0")]
    instance: String,
    /// Added latency per request, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of requests answered with an error (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// HTTP status of those errors (gRPC gets the matching code: 503 →
    /// UNAVAILABLE, anything else → INTERNAL).
    #[arg(long, default_value_t = 500)]
    error_status: u16,
    /// Size of the body returned for GET, in bytes.
    #[arg(long, default_value_t = 0)]
    response_bytes: usize,
}

struct App {
    args: Args,
    /// Arrivals (not counting /healthz and /admin), by method, and retries.
    arrivals: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    healthy: AtomicBool,
    /// The share of requests failed, in millionths: `--error-rate`, until
    /// `/admin/errors` changes it.
    error_ppm: std::sync::atomic::AtomicU32,
    /// Errors spread evenly (`spread=even`: every 1/R-th request) rather
    /// than drawn at random, so any window's rate is exact.
    even: AtomicBool,
    /// Requests judged so far, for the even spread.
    judged: std::sync::atomic::AtomicU64,
    filler: Bytes,
}

impl App {
    async fn delay_and_fail(&self) -> bool {
        if self.args.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.latency_ms)).await;
        }
        let ppm = self.error_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return false;
        }
        if self.even.load(Ordering::Relaxed) {
            // The n-th request fails when it carries the running count of
            // failures (n × R) past a whole number.
            let n = self.judged.fetch_add(1, Ordering::Relaxed);
            let ppm = u64::from(ppm);
            return (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000;
        }
        fastrand::u32(..1_000_000) < ppm
    }

    fn grpc_error(&self) -> tonic::Status {
        if self.args.error_status == 503 {
            tonic::Status::unavailable("injected error")
        } else {
            tonic::Status::internal("injected error")
        }
    }

    fn count(&self, method: &str, headers: &http::HeaderMap) {
        let mut a = self.arrivals.lock().expect("stats lock");
        *a.entry(method.to_string()).or_default() += 1;
        if headers.contains_key("mesh-retry-attempt") {
            *a.entry("retries".to_string()).or_default() += 1;
        }
    }

    fn reply(&self, payload: Vec<u8>, seq: u32) -> EchoReply {
        EchoReply {
            service: self.args.service.clone(),
            version: self.args.version.clone(),
            instance: self.args.instance.clone(),
            payload,
            seq,
        }
    }
}

#[derive(Clone)]
struct Grpc(Arc<App>);

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Grpc {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        if self.0.delay_and_fail().await {
            return Err(self.0.grpc_error());
        }
        Ok(tonic::Response::new(
            self.0.reply(req.into_inner().payload, 0),
        ))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: tonic::Request<StreamRequest>,
    ) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
        if self.0.delay_and_fail().await {
            return Err(self.0.grpc_error());
        }
        let StreamRequest {
            count,
            payload_size,
            fail_after,
        } = req.into_inner();
        let app = self.0.clone();
        let stream = tokio_stream::iter((0..count).map(move |seq| {
            if fail_after > 0 && seq >= fail_after {
                return Err(tonic::Status::aborted("failing after fail_after replies"));
            }
            let payload = (0..payload_size).map(|i| ((i + seq) % 251) as u8).collect();
            Ok(app.reply(payload, seq))
        }));
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// FNV-1a, streamed chunk by chunk.
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

async fn http(app: Arc<App>, req: Request<Incoming>) -> Response<tonic::body::Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-echo-version", app.args.version.as_str())
            .header("x-echo-instance", app.args.instance.as_str())
            .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
            .expect("valid response")
    };
    match path.as_str() {
        "/healthz" => {
            return if app.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "{\"healthy\":true}\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"healthy\":false}\n".into(),
                )
            };
        }
        "/admin/health" => {
            app.healthy
                .store(!query.contains("ok=false"), Ordering::Relaxed);
            return text(
                StatusCode::OK,
                format!("{{\"healthy\":{}}}\n", app.healthy.load(Ordering::Relaxed)),
            );
        }
        "/admin/errors" => {
            let rate = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("rate="))
                .and_then(|r| r.parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r));
            return match rate {
                Some(r) => {
                    let even = query.split('&').any(|kv| kv == "spread=even");
                    app.even.store(even, Ordering::Relaxed);
                    app.error_ppm
                        .store((r * 1_000_000.0).round() as u32, Ordering::Relaxed);
                    let spread = if even { "even" } else { "random" };
                    text(
                        StatusCode::OK,
                        format!("{{\"error_rate\":{r},\"spread\":\"{spread}\"}}\n"),
                    )
                }
                None => text(
                    StatusCode::BAD_REQUEST,
                    "{\"error\":\"give rate=R with 0 <= R <= 1\"}\n".into(),
                ),
            };
        }
        "/admin/stats" => {
            let by_method = app.arrivals.lock().expect("stats lock").clone();
            return text(
                StatusCode::OK,
                serde_json::json!({
                    "requests": by_method.iter().filter(|(k, _)| *k != "retries").map(|(_, v)| v).sum::<u64>(),
                    "by_method": by_method,
                })
                .to_string(),
            );
        }
        _ => {}
    }
    app.count(req.method().as_str(), req.headers());
    // The verified caller identity the sidecar passes on (mTLS only).
    let client_id = req
        .headers()
        .get("mesh-client-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    // The name the request arrived with, as a strict server would read it:
    // `:authority` (absolute-form URI) and the Host header.
    let authority = req.uri().authority().map(|a| a.to_string());
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Trace headers as they arrived, so tests can check what the sidecar
    // propagated to the app.
    let trace: serde_json::Map<String, serde_json::Value> = [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    ]
    .iter()
    .filter_map(|h| {
        let v = req.headers().get(*h)?.to_str().ok()?;
        Some((h.to_string(), serde_json::Value::String(v.into())))
    })
    .collect();
    let mut body = req.into_body();
    let (mut len, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                    hash = fnv(hash, d);
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{{\"error\":{:?}}}\n", e.to_string()),
                );
            }
        }
    }
    // `?delay_ms=N` holds this one answer N ms: a slow request in flight.
    if let Some(ms) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay_ms="))
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    // `?status=NNN` answers with that status: tests count known codes.
    if let Some(code) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("status="))
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        return text(code, format!("{{\"status\":{}}}\n", code.as_u16()));
    }
    if app.delay_and_fail().await {
        return text(
            StatusCode::from_u16(app.args.error_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "{\"error\":\"injected error\"}\n".into(),
        );
    }
    let summary = serde_json::json!({
        "service": app.args.service,
        "version": app.args.version,
        "instance": app.args.instance,
        "method": method,
        "path": path,
        "protocol": version,
        "authority": authority,
        "host": host,
        "body_bytes": len,
        "body_fnv": format!("{hash:016x}"),
                "client_id": client_id,
        "trace": trace,
    });
    let mut out = summary.to_string();
    out.push('\n');
    if app.args.response_bytes > 0 && method == "GET" {
        let mut resp = text(StatusCode::OK, String::new());
        *resp.body_mut() = tonic::body::Body::new(Full::new(app.filler.clone()));
        return resp;
    }
    text(StatusCode::OK, out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_rate),
        "--error-rate must be between 0 and 1"
    );
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!(
        "{}",
        serde_json::json!({"component": "mesh-echo", "addr": listener.local_addr()?, "instance": args.instance})
    );
    let filler = Bytes::from(vec![b'x'; args.response_bytes]);
    let args_error_rate = args.error_rate;
    let app = Arc::new(App {
        arrivals: Default::default(),
        args,
        healthy: AtomicBool::new(true),
        error_ppm: std::sync::atomic::AtomicU32::new((args_error_rate * 1_000_000.0).round() as u32),
        even: AtomicBool::new(false),
        judged: Default::default(),
        filler,
    });
    let grpc = tonic::service::Routes::new(EchoServer::new(Grpc(app.clone())));
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let (app, grpc, builder) = (app.clone(), grpc.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let is_grpc = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let (app, mut grpc) = (app.clone(), grpc.clone());
                async move {
                    if is_grpc {
                        app.count(req.method().as_str(), req.headers());
                        grpc.call(req).await
                    } else {
                        Ok(http(app, req).await)
                    }
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
