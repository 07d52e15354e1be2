//! The sidecar's outbound service in-process: a real `State` from a
//! discovery snapshot, the real outbound handler on a loopback port, and
//! loopback upstreams that answer by script. Retries and their budget,
//! per-try and route timeouts, mirror isolation, route selection, replay
//! limits, gRPC retries, least-request balancing, ejection and
//! re-admission, fallbacks, and what telemetry records, each shown at this
//! layer.

mod support;

use mesh_proto::v1 as pb;
use mesh_proxy::telemetry::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use support::{Reply, Sidecar, Upstream, cluster, retry, route, service};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn failed_idempotent_requests_are_retried_with_the_attempt_header() {
    // 503, 503, then 200.
    let flaky = Upstream::start(|n, _| Reply::status(if n < 2 { 503 } else { 200 })).await;
    let down = Upstream::start(|_, _| Reply::status(503)).await;
    let mut r = route("r", &[("flaky.default", 1)]);
    r.retry = Some(retry(2, &["gateway-error"], 0.2, 10));
    let mut p = route("p", &[("down.default", 1)]);
    p.retry = Some(retry(2, &["gateway-error"], 0.2, 10));
    let sidecar = Sidecar::start(
        vec![service("flaky", vec![r]), service("down", vec![p])],
        vec![
            cluster("flaky.default", &[&flaky], None),
            cluster("down.default", &[&down], None),
        ],
    )
    .await;
    let c = sidecar.client();
    let a = c.get("flaky", "/x").await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = flaky.seen();
    assert_eq!(seen.len(), 3);
    let attempt = |i: usize| {
        seen[i]
            .headers
            .get("mesh-retry-attempt")
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        (attempt(0), attempt(1), attempt(2)),
        (None, Some("2".into()), Some("3".into()))
    );
    assert_eq!(sidecar.metric("mesh_retries_total", &[("route", "r")]), 2.0);
    // A POST is not idempotent: one attempt, and the failure is the answer.
    let a = c.send("POST", "down", "/x", &[], b"order".to_vec()).await;
    assert_eq!(a.status, 503);
    assert_eq!(down.hits(), 1);
    // Once its retries are spent, the last failure is the answer.
    let a = c.get("down", "/x").await;
    assert_eq!(a.status, 503);
    assert_eq!(down.hits(), 1 + 3);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_over_its_window() {
    let down = Upstream::start(|_, _| Reply::status(503)).await;
    let mut r = route("r", &[("down.default", 1)]);
    // No share of requests, 1 retry per second: 10 retries in the 10 s window.
    r.retry = Some(retry(1, &["gateway-error"], 0.0, 1));
    let sidecar = Sidecar::start(
        vec![service("down", vec![r])],
        vec![cluster("down.default", &[&down], None)],
    )
    .await;
    let c = sidecar.client();
    for _ in 0..30 {
        assert_eq!(c.get("down", "/").await.status, 503);
    }
    assert_eq!(down.hits(), 30 + 10);
    assert_eq!(
        sidecar.metric("mesh_retries_total", &[("route", "r")]),
        10.0
    );
}

#[tokio::test]
async fn a_per_try_timeout_retries_a_slow_attempt_and_the_route_timeout_bounds_them_all() {
    // The first attempt stalls for 5 s; later ones answer at once.
    let slow_once = Upstream::start(|n, _| {
        Reply::ok().after(if n == 0 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        })
    })
    .await;
    let stalled = Upstream::start(|_, _| Reply::ok().after(Duration::from_secs(5))).await;
    let mut once = route("once", &[("slow-once.default", 1)]);
    let mut policy = retry(2, &["gateway-error"], 0.2, 10);
    policy.per_try_timeout_ms = 100;
    once.retry = Some(policy.clone());
    let mut bounded = route("bounded", &[("stalled.default", 1)]);
    policy.max_retries = 5;
    bounded.retry = Some(policy);
    bounded.timeout_ms = 300;
    let sidecar = Sidecar::start(
        vec![
            service("slow-once", vec![once]),
            service("stalled", vec![bounded]),
        ],
        vec![
            cluster("slow-once.default", &[&slow_once], None),
            cluster("stalled.default", &[&stalled], None),
        ],
    )
    .await;
    let c = sidecar.client();
    let a = c.get("slow-once", "/").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(slow_once.hits(), 2);
    assert!(
        a.took >= Duration::from_millis(100) && a.took < Duration::from_secs(2),
        "waited out one per-try timeout, not the stall: {:?}",
        a.took
    );
    let a = c.get("stalled", "/").await;
    assert_eq!(a.status, 504, "{a:?}");
    assert!(
        a.took >= Duration::from_millis(300) && a.took < Duration::from_secs(2),
        "the route timeout, not the retries, ends it: {:?}",
        a.took
    );
    // Attempts began at about 0, 100 and 200 ms before the 300 ms deadline.
    assert!((2..=4).contains(&stalled.hits()), "{}", stalled.hits());
    assert_eq!(
        sidecar.metric("mesh_timeouts_total", &[("route", "bounded")]),
        1.0
    );
    // gRPC callers get DEADLINE_EXCEEDED for the same timeout.
    let a = c
        .send_h2(
            "POST",
            "stalled",
            "/echo.Echo/Say",
            &[("content-type", "application/grpc")],
        )
        .await;
    assert_eq!(a.headers["grpc-status"], "4", "{a:?}");
}

#[tokio::test]
async fn a_stalled_mirror_never_slows_the_primary_and_copies_beyond_the_cap_are_dropped() {
    let primary = Upstream::ok().await;
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let shadow = Upstream::start(move |_, _| Reply::ok().held(&held)).await;
    let mut r = route("r", &[("primary.default", 1)]);
    r.mirror = Some(pb::Mirror {
        cluster: "shadow.default".into(),
        percent: 100.0,
    });
    let sidecar = Sidecar::start(
        vec![service("primary", vec![r])],
        vec![
            cluster("primary.default", &[&primary], None),
            cluster("shadow.default", &[&shadow], None),
        ],
    )
    .await;
    let c = sidecar.client();
    let n = 100;
    for _ in 0..n {
        let a = c.get("primary", "/").await;
        assert_eq!(a.status, 200);
        assert!(a.took < Duration::from_secs(1), "{:?}", a.took);
    }
    assert_eq!(primary.hits(), n);
    // 64 copies are stuck at the shadow; the rest were dropped, not queued.
    assert_eq!(shadow.wait_hits(64, WAIT).await, 64);
    let sent = sidecar.metric("mesh_mirror_requests_total", &[("result", "sent")]);
    let dropped = sidecar.metric("mesh_mirror_requests_total", &[("result", "dropped")]);
    assert_eq!((sent, dropped), (64.0, (n - 64) as f64));
    assert_eq!(shadow.hits(), 64, "no dropped copy was sent late");
    // Once the shadow answers, copies flow again.
    release.notify_waiters();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert_eq!(c.get("primary", "/").await.status, 200);
        if shadow.hits() > 64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirroring never resumed"
        );
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_first_matching_route_wins_and_an_unmatched_request_is_404() {
    let v1 = Upstream::ok().await;
    let v2 = Upstream::ok().await;
    let header = |name: &str, v: &str| pb::HeaderMatch {
        name: name.into(),
        value: Some(pb::header_match::Value::Exact(v.into())),
    };
    let mut canary = route("canary", &[("echo-v2.default", 1)]);
    canary.matches = vec![pb::RequestMatch {
        headers: vec![header("x-canary", "true")],
        ..Default::default()
    }];
    let mut api = route("api", &[("echo-v1.default", 1)]);
    api.matches = vec![pb::RequestMatch {
        path: Some(pb::request_match::Path::PathPrefix("/api".into())),
        ..Default::default()
    }];
    let sidecar = Sidecar::start(
        vec![service("echo", vec![canary, api])],
        vec![
            cluster("echo-v1.default", &[&v1], None),
            cluster("echo-v2.default", &[&v2], None),
        ],
    )
    .await;
    let c = sidecar.client();
    // Both routes match: the first one takes it.
    let a = c
        .send("GET", "echo", "/api/x", &[("x-canary", "true")], vec![])
        .await;
    assert_eq!((a.status, v2.hits(), v1.hits()), (200, 1, 0));
    assert_eq!(c.get("echo", "/api/x").await.status, 200);
    assert_eq!(v1.hits(), 1);
    // /apix is not under the /api prefix, and nothing else matches.
    let a = c.get("echo", "/apix").await;
    assert_eq!(a.status, 404);
    assert!(
        a.headers["mesh-proxy-error"]
            .to_str()
            .unwrap()
            .contains("no route of service echo.default matches"),
        "{a:?}"
    );
    let a = c
        .send_h2(
            "POST",
            "echo",
            "/other",
            &[("content-type", "application/grpc")],
        )
        .await;
    assert_eq!(a.headers["grpc-status"], "12", "UNIMPLEMENTED: {a:?}");
    assert_eq!(v1.hits() + v2.hits(), 2);
    // An unknown authority is 404 too, counted as service="unknown".
    assert_eq!(c.get("ghost", "/").await.status, 404);
    assert_eq!(
        sidecar.metric(
            "mesh_requests_total",
            &[("service", "unknown"), ("status_code", "404")]
        ),
        1.0
    );
}

#[tokio::test]
async fn bodies_over_64_kib_are_never_retried() {
    let down = Upstream::start(|_, _| Reply::status(503)).await;
    let mut r = route("r", &[("down.default", 1)]);
    let mut policy = retry(2, &["5xx"], 0.2, 10);
    policy.non_idempotent = true;
    r.retry = Some(policy);
    let sidecar = Sidecar::start(
        vec![service("down", vec![r])],
        vec![cluster("down.default", &[&down], None)],
    )
    .await;
    let c = sidecar.client();
    let a = c
        .send("POST", "down", "/", &[], vec![b'x'; 10 * 1024])
        .await;
    assert_eq!(a.status, 503);
    assert_eq!(down.hits(), 3, "a small body is replayed");
    let big = 100 * 1024;
    let a = c.send("POST", "down", "/", &[], vec![b'x'; big]).await;
    assert_eq!(a.status, 503);
    assert_eq!(down.hits(), 4, "a body over 64 KiB is sent once");
    assert_eq!(down.seen()[3].body_len, big, "and whole");
}

#[tokio::test]
async fn grpc_calls_are_retried_only_on_routes_that_allow_non_idempotent_retries() {
    // UNAVAILABLE (trailers-only) once per route, then OK.
    let script = |n: usize, _: &support::Seen| {
        let code = if n == 0 { "14" } else { "0" };
        Reply::ok()
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
    };
    let allowed = Upstream::start(script).await;
    let plain = Upstream::start(script).await;
    let mut policy = retry(2, &[], 0.2, 10);
    policy.grpc_codes = vec![14];
    let mut a_route = route("retried", &[("allowed.default", 1)]);
    a_route.retry = Some(pb::RetryPolicy {
        non_idempotent: true,
        ..policy.clone()
    });
    let mut p_route = route("default", &[("plain.default", 1)]);
    p_route.retry = Some(policy);
    let sidecar = Sidecar::start(
        vec![
            service("allowed", vec![a_route]),
            service("plain", vec![p_route]),
        ],
        vec![
            cluster("allowed.default", &[&allowed], None),
            cluster("plain.default", &[&plain], None),
        ],
    )
    .await;
    let c = sidecar.client();
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let a = c.send_h2("POST", "allowed", "/echo.Echo/Say", &grpc).await;
    assert_eq!(
        (&a.headers["grpc-status"], allowed.hits()),
        (&"0".parse().unwrap(), 2)
    );
    let a = c.send_h2("POST", "plain", "/echo.Echo/Say", &grpc).await;
    assert_eq!(
        (&a.headers["grpc-status"], plain.hits()),
        (&"14".parse().unwrap(), 1)
    );
}

/// Sends GETs one at a time, each in its own task, moving on as soon as it
/// is answered or has reached `busy` (which holds what it gets). Returns
/// how many reached `busy`.
async fn one_by_one(sidecar: &Sidecar, n: usize, busy: &Upstream) -> usize {
    let c = Arc::new(sidecar.client());
    for _ in 0..n {
        let before = busy.hits();
        let c = c.clone();
        let task = tokio::spawn(async move { c.get("svc", "/").await });
        tokio::select! {
            done = task => assert_eq!(done.unwrap().status, 200),
            _ = busy.wait_hits(before + 1, WAIT) => {}
        }
    }
    busy.hits()
}

#[tokio::test]
async fn least_request_sends_new_requests_away_from_a_busy_endpoint() {
    let hold = Arc::new(Notify::new());
    for (lb, expect_busy) in [
        (pb::LoadBalancer::LeastRequest, 1..=1),
        // The contrast, same endpoints: rotation keeps feeding the busy one.
        (pb::LoadBalancer::RoundRobin, 20..=21),
    ] {
        let h = hold.clone();
        let busy = Upstream::start(move |_, _| Reply::ok().held(&h)).await;
        let idle = Upstream::ok().await;
        let policy = pb::BackendPolicy {
            load_balancer: lb as i32,
            consecutive_failures: 0,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
            max_requests: 0,
            max_pending: 0,
            allow_plaintext: false,
        };
        let sidecar = Sidecar::start(
            vec![service("svc", vec![route("r", &[("svc.default", 1)])])],
            vec![cluster("svc.default", &[&busy, &idle], Some(policy))],
        )
        .await;
        let on_busy = one_by_one(&sidecar, 41, &busy).await;
        assert!(
            expect_busy.contains(&on_busy),
            "{lb:?}: {on_busy} of 41 requests went to the busy endpoint"
        );
        assert_eq!(on_busy + idle.hits(), 41);
        hold.notify_waiters();
    }
}

#[tokio::test]
async fn an_ejected_endpoint_gets_nothing_until_base_ejection_time_passes() {
    let bad = Upstream::start(|_, _| Reply::status(500)).await;
    let good = Upstream::ok().await;
    let policy = pb::BackendPolicy {
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        consecutive_failures: 3,
        base_ejection_ms: 500,
        max_ejection_percent: 50,
        max_requests: 0,
        max_pending: 0,
        allow_plaintext: false,
    };
    // No retries: every request is one attempt.
    let sidecar = Sidecar::start(
        vec![service("svc", vec![route("r", &[("svc.default", 1)])])],
        vec![cluster("svc.default", &[&bad, &good], Some(policy))],
    )
    .await;
    let c = sidecar.client();
    let started = tokio::time::Instant::now();
    // Round robin: the third failure on `bad` is the fifth or sixth request.
    for _ in 0..6 {
        c.get("svc", "/").await;
    }
    assert_eq!(bad.hits(), 3);
    assert_eq!(
        sidecar.metric("mesh_ejections_total", &[("backend", "svc.default")]),
        1.0
    );
    let ejected_at = bad.hits();
    while started.elapsed() < Duration::from_millis(400) {
        assert_eq!(
            c.get("svc", "/").await.status,
            200,
            "only the good endpoint answers"
        );
    }
    assert_eq!(
        bad.hits(),
        ejected_at,
        "nothing reaches an ejected endpoint"
    );
    tokio::time::sleep_until(started + Duration::from_millis(600)).await;
    for _ in 0..4 {
        c.get("svc", "/").await;
    }
    assert!(bad.hits() > ejected_at, "re-admitted after 500 ms");
}

#[tokio::test]
async fn telemetry_off_counts_nothing_and_without_a_collector_trace_headers_pass_untouched() {
    let up = Upstream::ok().await;
    let off = Arc::new(Metrics::new(false, "v1".into()));
    let sidecar = Sidecar::start_with(
        vec![service("svc", vec![route("r", &[("svc.default", 1)])])],
        vec![cluster("svc.default", &[&up], None)],
        off.clone(),
    )
    .await;
    let c = sidecar.client();
    let trace = [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ];
    for _ in 0..5 {
        assert_eq!(c.send("GET", "svc", "/", &trace, vec![]).await.status, 200);
    }
    assert_eq!(c.get("ghost", "/").await.status, 404);
    let text = off.render();
    for family in ["mesh_requests_total", "mesh_response_latency_seconds_count"] {
        assert!(
            !text.lines().any(|l| l.starts_with(&format!("{family}{{"))),
            "{family} recorded with telemetry off:\n{text}"
        );
    }
    let report = off.aggregates.take(&pb::Node::default());
    assert!(report.traffic.is_empty(), "{report:?}");
    for seen in up.seen() {
        for (k, v) in trace {
            assert_eq!(seen.headers[k], v, "{k} changed");
        }
        assert!(seen.headers.get("tracestate").is_none());
    }
    // Without trace headers, none are added.
    c.get("svc", "/").await;
    let last = up.seen().pop().unwrap();
    for k in ["traceparent", "tracestate", "b3", "x-b3-traceid"] {
        assert!(last.headers.get(k).is_none(), "{k} added");
    }
}

/// A backend with no usable endpoint hands its share to the route's other
/// backends; with none left the fallback cluster answers, and without a
/// fallback the answer is the fast 503 naming the backend.
#[tokio::test]
async fn a_backend_without_endpoints_yields_to_its_siblings_then_to_the_fallback() {
    let good = Upstream::ok().await;
    let spare = Upstream::start(|_, _| Reply::ok().header("x-from", "spare")).await;
    let mut split = route("split", &[("empty.default", 50), ("good.default", 50)]);
    split.fallback = Some(fallback_to("spare.default"));
    let mut lone = route("lone", &[("empty.default", 1)]);
    lone.fallback = Some(fallback_to("spare.default"));
    let bare = route("bare", &[("empty.default", 1)]);
    let sidecar = Sidecar::start(
        vec![
            service("split", vec![split]),
            service("lone", vec![lone]),
            service("bare", vec![bare]),
        ],
        vec![
            cluster("empty.default", &[], None),
            cluster("good.default", &[&good], None),
            cluster("spare.default", &[&spare], None),
        ],
    )
    .await;
    let c = sidecar.client();
    for _ in 0..20 {
        assert_eq!(c.get("split", "/").await.status, 200);
    }
    assert_eq!(
        good.hits(),
        20,
        "the live sibling took the empty one's share"
    );
    assert_eq!(spare.hits(), 0, "no fallback while a backend can serve");

    let a = c.get("lone", "/").await;
    assert_eq!(
        (a.status, a.headers["x-from"].to_str().unwrap()),
        (200, "spare")
    );
    assert_eq!(
        sidecar.metric(
            "mesh_fallback_requests_total",
            &[("route", "lone"), ("fallback", "spare.default")]
        ),
        1.0
    );
    let a = c.get("bare", "/").await;
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("empty.default"), "{a:?}");
}

/// A static fallback is the sidecar's own answer: status, headers and body
/// as configured, no upstream touched; a fallback cluster that cannot serve
/// either leaves the primary's error as the answer.
#[tokio::test]
async fn a_static_fallback_is_written_by_the_sidecar_and_a_dead_fallback_keeps_the_error() {
    let mut fixed = route("fixed", &[("empty.default", 1)]);
    fixed.fallback = Some(pb::Fallback {
        target: Some(pb::fallback::Target::Response(pb::StaticResponse {
            status: 299,
            headers: vec![pb::Header {
                name: "x-degraded".into(),
                value: "yes".into(),
            }],
            body: b"cached answer".to_vec(),
        })),
    });
    let mut dead = route("dead", &[("empty.default", 1)]);
    dead.fallback = Some(fallback_to("also-empty.default"));
    let sidecar = Sidecar::start(
        vec![service("fixed", vec![fixed]), service("dead", vec![dead])],
        vec![
            cluster("empty.default", &[], None),
            cluster("also-empty.default", &[], None),
        ],
    )
    .await;
    let c = sidecar.client();
    let a = c.get("fixed", "/").await;
    assert_eq!((a.status, a.body.as_str()), (299, "cached answer"));
    assert_eq!(a.headers["x-degraded"], "yes");
    assert_eq!(
        sidecar.metric("mesh_fallback_requests_total", &[("fallback", "static")]),
        1.0
    );
    let a = c.get("dead", "/").await;
    assert_eq!(a.status, 503);
    assert!(
        a.body.contains("empty.default"),
        "the primary's error: {a:?}"
    );
}

fn fallback_to(cluster: &str) -> pb::Fallback {
    pb::Fallback {
        target: Some(pb::fallback::Target::Cluster(cluster.into())),
    }
}
