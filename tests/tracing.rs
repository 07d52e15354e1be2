//! Distributed tracing and access logs, end to end: client sidecar → server
//! sidecar → echo app, with both sidecars exporting to a real OTLP/gRPC
//! receiver (the opentelemetry-proto collector service). Spans share one
//! trace id and link client → server; an incoming `traceparent` or B3
//! context is joined, not replaced; the sampled flag is honoured both ways;
//! the app sees the server span as its parent. The client sidecar's JSON
//! access log names the request, its trace and its upstream, and redacts
//! secrets.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Mesh;

/// What the receiver got: (service.name, span).
type Received = Arc<Mutex<Vec<(String, Span)>>>;

struct Receiver(Received);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push((service.clone(), s));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Received::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Receiver(got.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (format!("http://{addr}"), got)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(s: &Span) -> BTreeMap<String, String> {
    s.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// GET /traced?x=1 of echo through `proxy` with `headers` (and a known
/// user agent); the echo app's JSON.
async fn get(proxy: std::net::SocketAddr, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec![("user-agent", "tracing-test")];
    all.extend_from_slice(headers);
    support::echo_json(proxy, "/traced?x=1", &all).await
}

/// Waits (bounded) for the access-log line in `out` that contains `needle`.
async fn log_line(out: &std::path::Path, needle: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return serde_json::from_str(l).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {needle} in {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until the receiver holds `n` spans of `trace`.
async fn spans_of(got: &Received, trace: &str, n: usize) -> Vec<(String, Span)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans: Vec<_> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if spans.len() >= n {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace}: {} of {n} spans arrived",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The client (outbound) and server (inbound) span of one request; checks
/// they link and what the app saw.
fn client_and_server(spans: &[(String, Span)]) -> (&Span, &Span) {
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|(svc, s)| svc == "client" && s.kind == 3)
        .map(|(_, s)| s)
        .expect("a CLIENT span from the client sidecar");
    let server = spans
        .iter()
        .find(|(svc, s)| svc == "echo" && s.kind == 2)
        .map(|(_, s)| s)
        .expect("a SERVER span from the echo sidecar");
    assert_eq!(
        server.parent_span_id, client.span_id,
        "server is the client's child"
    );
    (client, server)
}

fn traceparent(app: &serde_json::Value) -> (String, String, String) {
    let tp = app["trace"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the app got no traceparent: {app}"));
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_link_across_sidecars_and_join_incoming_traces() {
    let (collector, got) = receiver().await;
    let mesh = Mesh::start("tracing").await;
    // Sampling 0: only an incoming sampled flag makes a trace.
    let never = [
        ("MESH_PROXY_TRACE_COLLECTOR", collector.as_str()),
        ("MESH_PROXY_TRACE_SAMPLING", "0"),
    ];
    let echo = mesh
        .instance_with("echo", "v1", "echo-v1-a", &[], None, &never)
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let logged = [
        ("MESH_PROXY_TRACE_COLLECTOR", collector.as_str()),
        ("MESH_PROXY_TRACE_SAMPLING", "0"),
        ("MESH_PROXY_ACCESS_LOG", "json"),
    ];
    let quiet = mesh.client_with("client-0", &logged).await;
    let always = [
        ("MESH_PROXY_TRACE_COLLECTOR", collector.as_str()),
        ("MESH_PROXY_TRACE_SAMPLING", "1"),
    ];
    let eager = mesh.client_with("client-1", &always).await;

    // 1. No incoming context, ratio 1: a new trace, client → server → app.
    let app = get(eager.outbound, &[]).await;
    let (trace, parent, flags) = traceparent(&app);
    assert_eq!(flags, "01");
    let spans = spans_of(&got, &trace, 2).await;
    let (client, server) = client_and_server(&spans);
    assert!(client.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        parent,
        hex(&server.span_id),
        "the app's parent is the server span"
    );
    let c = attrs(client);
    assert_eq!(c["http.request.method"], "GET");
    assert_eq!(c["server.address"], "echo");
    assert_eq!(c["url.full"], "http://echo/traced?x=1");
    assert_eq!(c["http.response.status_code"], "200");
    assert_eq!(c["mesh.backend.version"], "v1");
    assert_eq!(c["network.peer.address"], "127.0.0.1");
    assert_eq!(client.name, "GET");
    let s = attrs(server);
    assert_eq!(s["url.path"], "/traced");
    assert_eq!(s["url.query"], "x=1");
    assert_eq!(s["http.response.status_code"], "200");
    assert_eq!(s["user_agent.original"], "tracing-test");
    assert_eq!(s["network.peer.address"], "127.0.0.1");

    // 2. An incoming sampled traceparent is joined even at ratio 0, and its
    //    tracestate travels on.
    let t = "4bf92f3577b34da6a3ce929d0e0e4736";
    let p = "00f067aa0ba902b7";
    let app = get(
        quiet.outbound,
        &[
            ("traceparent", &format!("00-{t}-{p}-01")),
            ("tracestate", "vendor=abc"),
            ("authorization", "Bearer secret-token"),
        ],
    )
    .await;
    let spans = spans_of(&got, t, 2).await;
    let (client, server) = client_and_server(&spans);
    assert_eq!(hex(&client.parent_span_id), p, "joined, not replaced");
    assert_eq!(client.trace_state, "vendor=abc");
    assert_eq!(
        traceparent(&app),
        (t.into(), hex(&server.span_id), "01".into())
    );
    assert_eq!(app["trace"]["tracestate"], "vendor=abc");

    // 3. An incoming unsampled traceparent: nothing recorded, even by the
    //    ratio-1 sidecar, yet the context still reaches the app.
    let t3 = "0af7651916cd43dd8448eb211c80319c";
    let app = get(
        eager.outbound,
        &[("traceparent", &format!("00-{t3}-b7ad6b7169203331-00"))],
    )
    .await;
    let (seen, _, flags) = traceparent(&app);
    assert_eq!((seen.as_str(), flags.as_str()), (t3, "00"));

    // 4. B3 multi header and 5. B3 single header, both sampled: joined, and
    //    re-issued to the app in the same encoding, pointing at the server span.
    let t4 = "463ac35c9f6413ad48485a3953bb6124";
    let app = get(
        quiet.outbound,
        &[
            ("x-b3-traceid", t4),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let spans = spans_of(&got, t4, 2).await;
    let (client, server) = client_and_server(&spans);
    assert_eq!(hex(&client.parent_span_id), "a2fb4a1d1a96d312");
    assert_eq!(app["trace"]["x-b3-traceid"], t4);
    assert_eq!(app["trace"]["x-b3-spanid"], hex(&server.span_id));
    assert_eq!(app["trace"]["x-b3-sampled"], "1");
    let t5 = "80f198ee56343ba864fe8b2a57d3eff7";
    let app = get(
        quiet.outbound,
        &[("b3", &format!("{t5}-e457b5a2e4d86bd1-1"))],
    )
    .await;
    let spans = spans_of(&got, t5, 2).await;
    let (client, server) = client_and_server(&spans);
    assert_eq!(hex(&client.parent_span_id), "e457b5a2e4d86bd1");
    assert_eq!(
        app["trace"]["b3"],
        format!("{t5}-{}-1", hex(&server.span_id))
    );

    // 6. gRPC: a stream that fails after two replies carries ABORTED in
    //    its trailers; both spans end with the stream and record it.
    let t8 = "88888888888888888888888888888888";
    let mut grpc =
        mesh_proto::echo::echo_client::EchoClient::new(support::echo_channel(eager.outbound).await);
    let mut req = tonic::Request::new(mesh_proto::echo::StreamRequest {
        count: 5,
        payload_size: 10,
        fail_after: 2,
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{t8}-8888888888888888-01").parse().unwrap(),
    );
    let mut stream = grpc.server_stream(req).await.unwrap().into_inner();
    let mut replies = 0;
    let code = loop {
        match stream.message().await {
            Ok(Some(_)) => replies += 1,
            Ok(None) => break tonic::Code::Ok,
            Err(s) => break s.code(),
        }
    };
    assert_eq!((replies, code), (2, tonic::Code::Aborted));
    let spans = spans_of(&got, t8, 2).await;
    let (client, server) = client_and_server(&spans);
    for s in [client, server] {
        let a = attrs(s);
        assert_eq!(a["rpc.grpc.status_code"], "10", "{a:?}");
        assert_eq!(a["error.type"], "10", "{a:?}");
        assert_eq!(a["http.response.status_code"], "200");
    }

    // Nothing else was exported: the unsampled request 3 made no spans.
    // Each sidecar exports in order, so once a later sampled trace through
    // the same sidecars has arrived, request 3's spans would have too.
    let t6 = "11111111111111111111111111111111";
    get(
        eager.outbound,
        &[("traceparent", &format!("00-{t6}-2222222222222222-01"))],
    )
    .await;
    spans_of(&got, t6, 2).await;
    assert!(spans_of(&got, &seen, 0).await.is_empty());
    assert_eq!(
        got.lock().unwrap().len(),
        6 * 2,
        "2 spans per sampled request"
    );

    // The access log line of request 2, from the client sidecar's stdout.
    let out = mesh.logs().join("client-0-proxy.out");
    let line = log_line(&out, t).await;
    assert_eq!(line["kind"], "access");
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["authority"], "echo");
    assert_eq!(line["path"], "/traced");
    assert_eq!(line["status"], 200);
    assert_eq!(line["trace_id"], t);
    assert_eq!(
        line["upstream"],
        echo.sidecar.addr("inbound").unwrap().to_string()
    );
    assert_eq!(line["route"], "default");
    assert_eq!(line["backend"], "echo.default");
    assert_eq!(line["bytes_received"], 0);
    assert!(line["bytes_sent"].as_u64().unwrap() > 50, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert_eq!(line["complete"], true);
    assert_eq!(line["headers"]["authorization"], "[REDACTED]");
    assert_eq!(line["headers"]["user-agent"], "tracing-test");
    assert!(
        !std::fs::read_to_string(&out)
            .unwrap()
            .contains("secret-token")
    );
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");

    // A request body is counted as it streams through (POSTs are not
    // buffered for retries).
    let t7 = "77777777777777777777777777777777";
    let client = meshctl::traffic::client();
    let req = http::Request::post(format!("http://{}/upload", quiet.outbound))
        .header("host", "echo")
        .header("traceparent", format!("00-{t7}-7777777777777777-01"))
        .body(Full::new(Bytes::from(vec![b'x'; 3000])))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let app: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(app["body_bytes"], 3000);
    let line = log_line(&out, t7).await;
    assert_eq!(line["method"], "POST");
    assert_eq!(line["bytes_received"], 3000);
    assert_eq!(line["bytes_sent"], body.len());
}
