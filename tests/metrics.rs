//! Golden metrics: after exactly N requests with known status codes, both
//! sidecars' `/metrics` count N per code, parsed with a real OpenMetrics
//! parser, and the latency histograms count every request.

mod support;

use openmetrics_parser::{OpenMetricsValue, openmetrics::parse_openmetrics};
use std::collections::BTreeMap;
use support::Mesh;
use support::load::{Shape, many};

/// What to ask `/metrics` for: the default is the classic text format.
const OPENMETRICS: Option<&str> = Some("application/openmetrics-text; version=1.0.0");

/// `mesh_requests_total` summed by (direction, status_code), plus the
/// latency histogram's count by direction.
async fn scrape(
    admin: std::net::SocketAddr,
) -> (BTreeMap<(String, String), f64>, BTreeMap<String, u64>) {
    let (status, _, text) = meshctl::traffic::get_accepting(admin, "/metrics", OPENMETRICS)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let parsed = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e:?} in:\n{text}"));
    let mut requests = BTreeMap::new();
    let family = &parsed.families["mesh_requests"];
    for s in family.iter_samples() {
        let labels: BTreeMap<String, String> = s
            .get_labelset()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let OpenMetricsValue::Counter(c) = &s.value else {
            panic!("mesh_requests is a counter");
        };
        *requests
            .entry((labels["direction"].clone(), labels["status_code"].clone()))
            .or_default() += c.value.as_f64();
    }
    let mut latency = BTreeMap::new();
    for s in parsed.families["mesh_response_latency_seconds"].iter_samples() {
        let direction = s
            .get_labelset()
            .unwrap()
            .iter()
            .find(|(k, _)| *k == "direction")
            .map(|(_, v)| v.clone())
            .unwrap();
        let OpenMetricsValue::Histogram(h) = &s.value else {
            panic!("latency is a histogram");
        };
        *latency.entry(direction).or_default() += h.count.unwrap_or(0);
    }
    (requests, latency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counters_equal_what_was_sent_on_both_sidecars() {
    let (_mesh, inst, client) = Mesh::one_instance("metrics", &[]).await;
    // Known codes; none that the default retry policy would retry.
    let plan = [("200", 23), ("404", 7), ("500", 5)];
    for (code, n) in plan {
        let mut shape = Shape::get("echo");
        shape.path = format!("/?status={code}");
        let replies = many(client.outbound, &shape, n, 3).await;
        assert!(replies.iter().all(|r| r.status.to_string() == code));
    }
    let total: u64 = plan.iter().map(|(_, n)| *n as u64).sum();
    for (admin, direction) in [(client.admin, "outbound"), (inst.admin(), "inbound")] {
        let (requests, latency) = scrape(admin).await;
        for (code, n) in plan {
            assert_eq!(
                requests
                    .get(&(direction.to_string(), code.to_string()))
                    .copied(),
                Some(n as f64),
                "{direction} {code}: {requests:?}"
            );
        }
        let seen: f64 = requests
            .iter()
            .filter(|((d, _), _)| d == direction)
            .map(|(_, v)| v)
            .sum();
        assert_eq!(
            seen, total as f64,
            "{direction}: nothing else counted: {requests:?}"
        );
        assert_eq!(latency.get(direction), Some(&total), "{latency:?}");
    }
    // The client's labels say where the requests went.
    let (_, text) = meshctl::traffic::get(client.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        text.contains("mesh_requests_total{direction=\"outbound\",service=\"echo.default\",route=\"default\",backend=\"echo.default\",backend_version=\"v1\",status_code=\"404\""),
        "{text}"
    );
    assert!(text.contains("mesh_config_version "), "{text}");
}

/// Every sample of `family` with its labels and value (counters and gauges).
async fn samples(
    admin: std::net::SocketAddr,
    family: &str,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let (_, _, text) = meshctl::traffic::get_accepting(admin, "/metrics", OPENMETRICS)
        .await
        .unwrap();
    let parsed = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e:?} in:\n{text}"));
    let Some(f) = parsed.families.get(family) else {
        return Vec::new();
    };
    f.iter_samples()
        .map(|s| {
            let labels = s
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let v = match &s.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(g) => g.as_f64(),
                other => panic!("{family}: unexpected {other:?}"),
            };
            (labels, v)
        })
        .collect()
}

async fn tcp(admin: std::net::SocketAddr, family: &str, direction: &str, peer: &str) -> f64 {
    samples(admin, family)
        .await
        .iter()
        .filter(|(l, _)| l["direction"] == direction && l["peer"] == peer)
        .map(|(_, v)| v)
        .sum()
}

/// TCP: the bytes the client sidecar wrote to the server sidecar are
/// exactly the bytes the server sidecar read from it (and back), and every
/// connection opened is open or closed. gRPC: a status that arrives in
/// trailers (OK after replies, ABORTED mid-stream) labels the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_bytes_match_across_the_hop_and_grpc_trailers_label_requests() {
    use mesh_proto::echo::StreamRequest;
    use mesh_proto::echo::echo_client::EchoClient;
    let (_mesh, inst, client) = Mesh::one_instance("metrics-tcp", &[]).await;
    many(client.outbound, &Shape::get("echo"), 40, 4).await;
    let channel = support::echo_channel(client.outbound).await;
    let mut grpc = EchoClient::new(channel);
    let (ok, aborted) = (6, 3);
    for fail_after in std::iter::repeat_n(0, ok).chain(std::iter::repeat_n(2, aborted)) {
        let mut stream = grpc
            .server_stream(StreamRequest {
                count: 5,
                payload_size: 100,
                fail_after,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        let end = loop {
            match stream.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => break tonic::Code::Ok,
                Err(s) => break s.code(),
            }
        };
        let want = if fail_after == 0 {
            (5, tonic::Code::Ok)
        } else {
            (2, tonic::Code::Aborted)
        };
        assert_eq!((got, end), want);
    }
    for (admin, direction) in [(client.admin, "outbound"), (inst.admin(), "inbound")] {
        let by_status = samples(admin, "mesh_requests").await;
        let count = |code: &str| -> f64 {
            by_status
                .iter()
                .filter(|(l, _)| l["direction"] == direction && l["grpc_status"] == code)
                .map(|(_, v)| v)
                .sum()
        };
        assert_eq!(count("0"), ok as f64, "{direction}: {by_status:?}");
        assert_eq!(count("10"), aborted as f64, "{direction}: {by_status:?}");
    }
    // The hop between the sidecars is one set of mTLS connections, metered
    // on the wire at both ends.
    let c = client.admin;
    let s = inst.admin();
    assert_eq!(
        tcp(c, "mesh_tcp_write_bytes", "outbound", "dst").await,
        tcp(s, "mesh_tcp_read_bytes", "inbound", "src").await
    );
    assert_eq!(
        tcp(c, "mesh_tcp_read_bytes", "outbound", "dst").await,
        tcp(s, "mesh_tcp_write_bytes", "inbound", "src").await
    );
    assert!(tcp(c, "mesh_tcp_read_bytes", "outbound", "dst").await > 40.0 * 100.0);
    assert!(
        tcp(s, "mesh_tcp_write_bytes", "inbound", "dst").await > 0.0,
        "to the app"
    );
    for (admin, direction) in [(c, "outbound"), (s, "inbound")] {
        for peer in ["src", "dst"] {
            let opened = tcp(admin, "mesh_tcp_open", direction, peer).await;
            let closed = tcp(admin, "mesh_tcp_close", direction, peer).await;
            let open = tcp(admin, "mesh_tcp_open_connections", direction, peer).await;
            assert!(opened >= 1.0, "{direction}/{peer}");
            assert_eq!(opened, closed + open, "{direction}/{peer}");
        }
    }
}
