//! Golden metrics: after exactly N requests with known status codes, both
//! sidecars' `/metrics` count N per code, parsed with a real OpenMetrics
//! parser, and the latency histograms count every request.

mod support;

use openmetrics_parser::{OpenMetricsValue, openmetrics::parse_openmetrics};
use std::collections::BTreeMap;
use support::Mesh;
use support::load::{Shape, many};

/// `mesh_requests_total` summed by (direction, status_code), plus the
/// latency histogram's count by direction.
async fn scrape(
    admin: std::net::SocketAddr,
) -> (BTreeMap<(String, String), f64>, BTreeMap<String, u64>) {
    let (status, text) = meshctl::traffic::get(admin, "/metrics").await.unwrap();
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
