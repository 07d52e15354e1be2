//! Snapshot conversion: names, weighted picks, hand-on of empty backends,
//! statistics kept across snapshots, route matching, and rejection of bad
//! resources with every reason.

use super::*;
use std::time::Instant;

/// Converts `snap` for a sidecar in `namespace` after `prev`, now.
fn convert(
    snap: &pb::DiscoveryResponse,
    namespace: &str,
    prev: &State,
    stats: &mut EndpointStats,
) -> Result<State, Rejected> {
    State::from_proto(snap, namespace, prev, stats, Instant::now())
}

fn snapshot(v1_eps: &[&str], v2_eps: &[&str], w1: u32, w2: u32) -> pb::DiscoveryResponse {
    let cluster = |name: &str, eps: &[&str]| pb::Cluster {
        name: name.into(),
        resource_version: "r".into(),
        endpoints: eps
            .iter()
            .map(|a| pb::Endpoint {
                address: (*a).into(),
                instance_id: format!("i-{a}"),
                version: String::new(),
                identity: String::new(),
            })
            .collect(),
        policy: None,
    };
    pb::DiscoveryResponse {
        version_info: "7".into(),
        nonce: "7.1".into(),
        services: vec![pb::ServiceConfig {
            name: "echo".into(),
            namespace: "default".into(),
            resource_version: "r".into(),
            authorization: None,
            virtual_ips: Vec::new(),
            routes: vec![pb::Route {
                name: "split".into(),
                backends: vec![
                    pb::WeightedBackend {
                        cluster: "echo-v1.default".into(),
                        weight: w1,
                    },
                    pb::WeightedBackend {
                        cluster: "echo-v2.default".into(),
                        weight: w2,
                    },
                ],
                ..Default::default()
            }],
        }],
        clusters: vec![
            cluster("echo-v1.default", v1_eps),
            cluster("echo-v2.default", v2_eps),
        ],
        ..Default::default()
    }
}

#[test]
fn resolves_every_name_form() {
    let mut stats = EndpointStats::default();
    let s = convert(
        &snapshot(&["127.0.0.1:1"], &[], 1, 1),
        "default",
        &State::default(),
        &mut stats,
    )
    .unwrap();
    for host in [
        "echo",
        "echo:80",
        "ECHO",
        "echo.default",
        "echo.default.svc.cluster.local:8080",
    ] {
        assert!(s.resolve(host).is_some(), "{host}");
    }
    let other = convert(
        &snapshot(&["127.0.0.1:1"], &[], 1, 1),
        "prod",
        &State::default(),
        &mut stats,
    )
    .unwrap();
    assert!(other.resolve("echo").is_none());
    assert!(other.resolve("echo.default").is_some());
}

#[test]
fn weighted_pick_follows_weights() {
    let mut stats = EndpointStats::default();
    let s = convert(
        &snapshot(&["127.0.0.1:1"], &["127.0.0.1:2"], 80, 20),
        "default",
        &State::default(),
        &mut stats,
    )
    .unwrap();
    let route = s
        .resolve("echo")
        .unwrap()
        .route(&http::Request::new(()))
        .unwrap();
    let n = 20_000;
    let v2 = (0..n)
        .filter(|_| route.pick_backend().unwrap().cluster.name == "echo-v2.default")
        .count();
    // Binomial(20000, 0.2): sd ≈ 57; 6 sd either side.
    assert!((3660..=4340).contains(&v2), "{v2}");
}

#[test]
fn empty_backend_hands_its_share_on() {
    let mut stats = EndpointStats::default();
    let s = convert(
        &snapshot(&[], &["127.0.0.1:2"], 100, 0),
        "default",
        &State::default(),
        &mut stats,
    )
    .unwrap();
    let route = s
        .resolve("echo")
        .unwrap()
        .route(&http::Request::new(()))
        .unwrap();
    for _ in 0..100 {
        assert_eq!(
            route.pick_backend().unwrap().cluster.name,
            "echo-v2.default"
        );
    }
    let none = convert(
        &snapshot(&[], &[], 1, 1),
        "default",
        &State::default(),
        &mut stats,
    )
    .unwrap();
    assert!(
        none.resolve("echo")
            .unwrap()
            .route(&http::Request::new(()))
            .unwrap()
            .pick_backend()
            .is_none()
    );
}

#[test]
fn round_robin_over_endpoints() {
    let mut stats = EndpointStats::default();
    let s = convert(
        &snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0),
        "default",
        &State::default(),
        &mut stats,
    )
    .unwrap();
    let c = &s.clusters["echo-v1.default"];
    // Unmeasured endpoints cost the same, so P2C spreads over both.
    let firsts = (0..200).filter(|_| c.pick(None) == Ok(0)).count();
    assert!((40..=160).contains(&firsts), "{firsts}");
}

#[test]
fn statistics_survive_a_new_snapshot() {
    let mut stats = EndpointStats::default();
    let snap = snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0);
    let a = convert(&snap, "default", &State::default(), &mut stats).unwrap();
    let b = convert(&snap, "default", &a, &mut stats).unwrap();
    let (ca, cb) = (
        &a.clusters["echo-v1.default"],
        &b.clusters["echo-v1.default"],
    );
    assert!(Arc::ptr_eq(&ca.stats[1], &cb.stats[1]));
    // The same instance in two clusters has one record.
    let snap = snapshot(&["127.0.0.1:1"], &["127.0.0.1:1"], 1, 1);
    let c = convert(&snap, "default", &State::default(), &mut stats).unwrap();
    assert!(Arc::ptr_eq(
        &c.clusters["echo-v1.default"].stats[0],
        &c.clusters["echo-v2.default"].stats[0]
    ));
    assert!(Arc::ptr_eq(&ca.in_flight, &cb.in_flight));
}

/// An endpoint that leaves (health check failed) and comes back keeps
/// what was learned about it; a never-seen one starts fresh.
#[test]
fn a_returning_endpoint_resumes_its_statistics() {
    let mut stats = EndpointStats::default();
    let both = snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0);
    let one = snapshot(&["127.0.0.1:2"], &[], 1, 0);
    let a = convert(&both, "default", &State::default(), &mut stats).unwrap();
    let gone = convert(&one, "default", &a, &mut stats).unwrap();
    let still_gone = convert(&one, "default", &gone, &mut stats).unwrap();
    let back = convert(&both, "default", &still_gone, &mut stats).unwrap();
    let stats = |s: &State, i: usize| Arc::clone(&s.clusters["echo-v1.default"].stats[i]);
    assert!(Arc::ptr_eq(&stats(&a, 0), &stats(&back, 0)));
    assert!(Arc::ptr_eq(&stats(&a, 1), &stats(&back, 1)));
    let fresh = State::from_proto(
        &both,
        "default",
        &State::default(),
        &mut EndpointStats::default(),
        Instant::now(),
    )
    .unwrap();
    assert!(!Arc::ptr_eq(&stats(&a, 0), &stats(&fresh, 0)));
}

#[test]
fn routes_match_path_method_and_headers() {
    let mut stats = EndpointStats::default();
    use pb::request_match::Path;
    let mut snap = snapshot(&["127.0.0.1:1"], &["127.0.0.1:2"], 1, 0);
    let mut canary = snap.services[0].routes[0].clone();
    canary.name = "canary".into();
    canary.backends[0].weight = 0;
    canary.backends[1].weight = 1;
    canary.matches = vec![pb::RequestMatch {
        path: Some(Path::PathPrefix("/api".into())),
        method: "GET".into(),
        headers: vec![pb::HeaderMatch {
            name: "x-canary".into(),
            value: Some(pb::header_match::Value::Regex("true|yes".into())),
        }],
    }];
    snap.services[0].routes.insert(0, canary);
    let s = convert(&snap, "default", &State::default(), &mut stats).unwrap();
    let svc = s.resolve("echo").unwrap();
    let req = |m: &str, path: &str, canary: Option<&str>| {
        let mut b = http::Request::builder().method(m).uri(path);
        if let Some(v) = canary {
            b = b.header("x-canary", v);
        }
        b.body(()).unwrap()
    };
    let name = |r: http::Request<()>| svc.route(&r).unwrap().name.clone();
    assert_eq!(name(req("GET", "/api/x", Some("yes"))), "canary");
    assert_eq!(name(req("GET", "/api", Some("true"))), "canary");
    assert_eq!(name(req("GET", "/apix", Some("true"))), "split");
    assert_eq!(name(req("GET", "/api", Some("truer"))), "split");
    assert_eq!(name(req("POST", "/api", Some("true"))), "split");
    assert_eq!(name(req("GET", "/api", None)), "split");
}

#[test]
fn a_bad_route_policy_rejects_the_snapshot_naming_the_route() {
    let mut stats = EndpointStats::default();
    let mut snap = snapshot(&["127.0.0.1:1"], &[], 1, 0);
    let r = &mut snap.services[0].routes[0];
    r.matches = vec![pb::RequestMatch {
        headers: vec![pb::HeaderMatch {
            name: "x-canary".into(),
            value: Some(pb::header_match::Value::Regex("([a-z".into())),
        }],
        ..Default::default()
    }];
    r.retry = Some(pb::RetryPolicy {
        max_retries: 1,
        retry_on: vec!["sometimes".into()],
        ..Default::default()
    });
    r.mirror = Some(pb::Mirror {
        cluster: "ghost.default".into(),
        percent: 5.0,
    });
    let err = convert(&snap, "default", &State::default(), &mut stats).unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
    for e in &err.0 {
        assert!(e.starts_with("service default/echo: route split:"), "{e}");
    }
    let text = err.to_string();
    assert!(
        text.contains("does not compile") && text.contains("sometimes") && text.contains("ghost"),
        "{text}"
    );
}

#[test]
fn bad_resources_reject_the_snapshot_with_every_reason() {
    let mut stats = EndpointStats::default();
    let mut snap = snapshot(&["not-an-address"], &[], 1, 1);
    snap.services[0].routes[0]
        .backends
        .push(pb::WeightedBackend {
            cluster: "ghost.default".into(),
            weight: 1,
        });
    let err = convert(&snap, "default", &State::default(), &mut stats).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.to_string().contains("not-an-address"));
    assert!(err.to_string().contains("ghost.default"));
}

/// The retention clock starts when an endpoint leaves, however long it was
/// in the config before: with a snapshot every minute, an endpoint present
/// for 10 minutes that leaves and is back 4 minutes later resumes its
/// statistics, and one back after 6 minutes starts fresh.
#[test]
fn retention_counts_from_departure_with_snapshots_every_minute() {
    let mut stats = EndpointStats::default();
    let t0 = Instant::now();
    let at = |m: u64| t0 + std::time::Duration::from_secs(60 * m);
    let both = snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0);
    let only = |a: &str| snapshot(&[a], &[], 1, 0);
    let record = |s: &State, addr: &str| {
        let c = &s.clusters["echo-v1.default"];
        let i = c
            .endpoints
            .iter()
            .position(|e| e.addr.to_string() == addr)?;
        Some(Arc::clone(&c.stats[i]))
    };
    let mut state = State::default();
    let mut first = None;
    for m in 0..=10 {
        state = State::from_proto(&both, "default", &state, &mut stats, at(m)).unwrap();
        first.get_or_insert_with(|| {
            (
                record(&state, "127.0.0.1:1").unwrap(),
                record(&state, "127.0.0.1:2").unwrap(),
            )
        });
    }
    let (one, two) = first.unwrap();
    // Both leave: from minute 11 on, snapshots hold only a third endpoint.
    for m in 11..=14 {
        state =
            State::from_proto(&only("127.0.0.1:3"), "default", &state, &mut stats, at(m)).unwrap();
    }
    // Back at minute 15, 4 minutes after they left: both resume.
    state = State::from_proto(&both, "default", &state, &mut stats, at(15)).unwrap();
    assert!(Arc::ptr_eq(&record(&state, "127.0.0.1:1").unwrap(), &one));
    assert!(Arc::ptr_eq(&record(&state, "127.0.0.1:2").unwrap(), &two));
    // 127.0.0.1:2 leaves again at minute 16 and is back at minute 22.
    for m in 16..=21 {
        state =
            State::from_proto(&only("127.0.0.1:1"), "default", &state, &mut stats, at(m)).unwrap();
    }
    state = State::from_proto(&both, "default", &state, &mut stats, at(22)).unwrap();
    assert!(Arc::ptr_eq(&record(&state, "127.0.0.1:1").unwrap(), &one));
    assert!(!Arc::ptr_eq(&record(&state, "127.0.0.1:2").unwrap(), &two));
}

/// Gateway API hostnames: matched against the authority with its port
/// ignored ("Implementations MUST ignore any port value specified in the
/// HTTP Host header"), case-insensitively, a `*.` wildcard taking one or
/// more labels but never the bare suffix.
#[test]
fn a_route_with_hostnames_takes_only_requests_addressed_by_them() {
    let mut stats = EndpointStats::default();
    let mut snap = snapshot(&["127.0.0.1:1"], &[], 1, 0);
    snap.services[0].routes[0].hostnames = vec!["*.example.com".into(), "echo.default".into()];
    let s = convert(&snap, "default", &State::default(), &mut stats).unwrap();
    let route = &s.resolve("echo").unwrap().routes[0];
    let req = |host: &str| {
        http::Request::builder()
            .header("host", host)
            .body(())
            .unwrap()
    };
    for yes in [
        "echo.default",
        "ECHO.default:8080",
        "a.example.com",
        "a.b.example.com:80",
    ] {
        assert!(route.matches(&req(yes)), "{yes}");
    }
    for no in ["echo", "example.com", "a.example.net", "xexample.com"] {
        assert!(!route.matches(&req(no)), "{no}");
    }
    let h2 = http::Request::builder()
        .uri("http://a.example.com:443/x")
        .body(())
        .unwrap();
    assert!(route.matches(&h2), ":authority counts too");
    let mut bad = snapshot(&["127.0.0.1:1"], &[], 1, 0);
    bad.services[0].routes[0].hostnames = vec!["a.*.com".into()];
    let err = convert(&bad, "default", &State::default(), &mut stats).unwrap_err();
    assert!(err.to_string().contains("hostname \"a.*.com\""), "{err}");
}
