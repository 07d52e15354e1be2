//! Resilience: retries and outlier ejection hide a failing endpoint, POSTs
//! are never replayed unless the route says so, retries stay within the
//! budget, timeouts answer 504 on time and compose with per-try timeouts,
//! P2C-EWMA steers around a slow endpoint, and faults are injected as asked.
//! Every retry is counted where it lands: at the echo apps.

mod support;

use http::Method;
use std::time::{Duration, Instant};
use support::load::{Shape, arrivals, at_once, from_instance, many, total_arrivals, with_status};
use support::{Instance, Mesh, traffic_policy};

/// Three v1 instances of echo, the last one failing every request with 503.
async fn one_bad_of_three(tag: &str, bad_args: &[&str]) -> (Mesh, Vec<Instance>, support::Client) {
    let mesh = Mesh::start(tag).await;
    let mut insts = Vec::new();
    for (id, args) in [
        ("echo-a", &[][..]),
        ("echo-b", &[][..]),
        ("echo-bad", bad_args),
    ] {
        insts.push(mesh.instance("echo", "v1", id, args, None).await);
    }
    mesh.wait_ready_endpoints("echo", &[("echo", 3)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    (mesh, insts, client)
}

const FAILING: &[&str] = &["--error-rate", "1", "--error-status", "503"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_ejection_hide_a_failing_endpoint() {
    let (_mesh, insts, client) = one_bad_of_three("retry-eject", FAILING).await;
    // Mesh defaults: no TrafficPolicy at all.
    let n = 2000;
    let replies = many(client.outbound, &Shape::get("echo"), n, 4).await;
    let ok = with_status(&replies, 200);
    assert!(ok * 1000 >= n * 999, "{ok} of {n} succeeded; want ≥ 99.9%");
    let bad = arrivals(&insts[2]).await;
    let good = total_arrivals(&[&insts[0], &insts[1]]).await;
    eprintln!("measured: {ok}/{n} ok; failing endpoint got {bad:?}; good ones {good:?}");
    // Ejected after 5 consecutive failures (a few more can be in flight at
    // the time): without ejection it would see a third of 2,000.
    assert!(bad.requests <= 12, "the failing endpoint got {bad:?}");
    assert!(good.requests >= n as u64, "{good:?}");
    // Every failure it served was retried elsewhere.
    assert!(
        good.retries >= bad.requests.saturating_sub((n - ok) as u64),
        "{good:?} vs {bad:?}"
    );
    let (_, dump) = meshctl::traffic::get(client.admin, "/config_dump")
        .await
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    // One record per instance, listed under each cluster it serves (echo, echo-v1).
    let ejected: std::collections::BTreeSet<&str> = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["endpoints"].as_array().unwrap())
        .filter(|e| e["stats"]["ejected"] == true)
        .map(|e| e["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ejected.into_iter().collect::<Vec<_>>(),
        ["echo-bad"],
        "the sidecar shows what it ejected: {:#}",
        dump["clusters"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_replayed_only_when_the_route_allows() {
    let (mesh, insts, client) = one_bad_of_three("retry-post", FAILING).await;
    let all: Vec<&Instance> = insts.iter().collect();
    // Keep the bad endpoint in rotation, and rotate strictly: exactly every
    // third POST hits it.
    mesh.apply_ok(
        "no-eject.yaml",
        &traffic_policy(
            "echo",
            "loadBalancer: round-robin\noutlierDetection:\n  consecutiveFailures: 0",
        ),
    )
    .await;
    mesh.sync(&client).await;
    let post = Shape::get("echo").method(Method::POST).body(b"charge $10");
    let n = 300;
    let before = total_arrivals(&all).await;
    let replies = many(client.outbound, &post, n, 4).await;
    let seen = total_arrivals(&all).await - before;
    let failed = with_status(&replies, 503);
    assert_eq!(seen.posts, n as u64, "every POST arrives exactly once");
    assert_eq!(seen.retries, 0);
    assert_eq!(
        failed,
        n / 3,
        "a third fail, and each failure reaches the caller"
    );
    assert_eq!(with_status(&replies, 200), n - n / 3);
    // The same POSTs on a route that marks them retryable.
    mesh.apply_ok(
        "retry-posts.yaml",
        &traffic_policy(
            "echo",
            "loadBalancer: round-robin\noutlierDetection:\n  consecutiveFailures: 0\nretry:\n  attempts: 2\n  retryOn: [5xx]\n  nonIdempotent: true",
        ),
    )
    .await;
    mesh.sync(&client).await;
    let before = total_arrivals(&all).await;
    let bad_before = arrivals(&insts[2]).await;
    let replies = many(client.outbound, &post, n, 4).await;
    let seen = total_arrivals(&all).await - before;
    let bad = arrivals(&insts[2]).await - bad_before;
    assert_eq!(
        with_status(&replies, 200),
        n,
        "a retry avoids the endpoint that failed"
    );
    assert_eq!(
        seen.posts,
        n as u64 + bad.requests,
        "one extra arrival per failure"
    );
    assert_eq!(seen.retries, bad.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget() {
    let mesh = Mesh::start("retry-budget").await;
    let mut insts = Vec::new();
    for id in ["echo-a", "echo-b", "echo-c"] {
        insts.push(mesh.instance("echo", "v1", id, FAILING, None).await);
    }
    mesh.wait_ready_endpoints("echo", &[("echo", 3)])
        .await
        .unwrap();
    mesh.apply_ok(
        "budget.yaml",
        &traffic_policy(
            "echo",
            "outlierDetection:\n  consecutiveFailures: 0\nretry:\n  attempts: 3\n  retryOn: [5xx]\n  backoff: 1ms\n  budget:\n    ratio: 0.2\n    minPerSecond: 10",
        ),
    )
    .await;
    let client = mesh.client("client-0").await;
    let all: Vec<&Instance> = insts.iter().collect();
    let n = 1000u64;
    let started = Instant::now();
    let replies = many(client.outbound, &Shape::get("echo"), n as usize, 4).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(with_status(&replies, 503), n as usize);
    let seen = total_arrivals(&all).await;
    let retries = seen.requests - n;
    assert_eq!(retries, seen.retries);
    // 20% of requests, plus 10/s over each 10 s window the run touched.
    let windows = (secs / 10.0).ceil().max(1.0);
    let allowed = 0.2 * n as f64 + 100.0 * windows;
    eprintln!("measured: {retries} retries for {n} requests in {secs:.1}s; budget {allowed}");
    assert!(
        (retries as f64) <= allowed,
        "{retries} retries for {n} requests in {secs:.1}s; budget allows {allowed}"
    );
    // Without a budget it would be 3 per request; with one, some still happen.
    assert!(retries >= n / 10, "{retries}");

    // Allowed to eject everything, the sidecar fails fast and says why.
    mesh.apply_ok(
        "eject-all.yaml",
        &traffic_policy(
            "echo",
            "outlierDetection:\n  consecutiveFailures: 2\n  maxEjectionPercent: 100\nretry:\n  attempts: 1\n  retryOn: []",
        ),
    )
    .await;
    mesh.sync(&client).await;
    many(client.outbound, &Shape::get("echo"), 20, 1).await;
    let before = total_arrivals(&all).await;
    let replies = many(client.outbound, &Shape::get("echo"), 50, 4).await;
    assert_eq!(
        total_arrivals(&all).await,
        before,
        "no request reaches an ejected endpoint"
    );
    for r in &replies {
        assert_eq!(r.status, 503);
        let why = r.proxy_error.as_deref().unwrap_or_default();
        assert!(
            why.contains("every endpoint of echo.default is ejected"),
            "{r:?}"
        );
        assert!(r.elapsed < Duration::from_millis(100), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_answer_504_on_time_and_compose_with_per_try_timeouts() {
    let mesh = Mesh::start("timeout").await;
    let slow = mesh
        .instance("echo", "v1", "echo-slow", &["--latency-ms", "3000"], None)
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    mesh.apply_ok("timeout.yaml", &traffic_policy("echo", "timeout: 1s"))
        .await;
    let client = mesh.client("client-0").await;
    let http = meshctl::traffic::client();
    let r = support::load::send(&http, client.outbound, &Shape::get("echo"))
        .await
        .unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    let secs = r.elapsed.as_secs_f64();
    eprintln!("measured: 504 after {secs:.3}s");
    assert!(
        (0.9..=1.1).contains(&secs),
        "504 after {secs:.3}s; want 1 s ± 10%"
    );
    assert!(r.proxy_error.unwrap().contains("no response within"));

    // gRPC gets DEADLINE_EXCEEDED.
    let channel = support::echo_channel(client.outbound).await;
    let started = Instant::now();
    let status = mesh_proto::echo::echo_client::EchoClient::new(channel)
        .unary(mesh_proto::echo::EchoRequest { payload: vec![] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));

    // Per-try 400 ms with 2 retries inside a 2 s request timeout: three
    // attempts arrive and the caller has its 504 after about 1.2 s.
    mesh.apply_ok(
        "per-try.yaml",
        &traffic_policy("echo", "timeout: 2s\nretry:\n  attempts: 2\n  perTryTimeout: 400ms\n  backoff: 1ms\n  retryOn: [gateway-error]"),
    )
    .await;
    mesh.sync(&client).await;
    let before = arrivals(&slow).await;
    let r = support::load::send(&http, client.outbound, &Shape::get("echo"))
        .await
        .unwrap();
    let secs = r.elapsed.as_secs_f64();
    assert_eq!(r.status, 504);
    assert!((1.15..1.6).contains(&secs), "{secs:.3}s");
    let seen = arrivals(&slow).await - before;
    assert_eq!((seen.requests, seen.retries), (3, 2));
    // The request timeout caps retries: 1 s allows at most three 400 ms tries.
    mesh.apply_ok(
        "per-try.yaml",
        &traffic_policy("echo", "timeout: 1s\nretry:\n  attempts: 5\n  perTryTimeout: 400ms\n  backoff: 1ms\n  retryOn: [gateway-error]"),
    )
    .await;
    mesh.sync(&client).await;
    let before = arrivals(&slow).await;
    let r = support::load::send(&http, client.outbound, &Shape::get("echo"))
        .await
        .unwrap();
    let secs = r.elapsed.as_secs_f64();
    eprintln!("measured: 504 after {secs:.3}s");
    assert_eq!(r.status, 504);
    assert!((0.9..=1.1).contains(&secs), "{secs:.3}s");
    let seen = arrivals(&slow).await - before;
    assert_eq!(seen.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_avoids_a_slow_endpoint_that_round_robin_does_not() {
    let (mesh, _insts, client) = one_bad_of_three("p2c", &["--latency-ms", "200"]).await;
    let get = Shape::get("echo");
    many(client.outbound, &get, 200, 4).await; // warm-up: the balancer learns
    let n = 400;
    let replies = many(client.outbound, &get, n, 4).await;
    assert_eq!(with_status(&replies, 200), n);
    let slow = from_instance(&replies, "echo-bad");
    eprintln!("measured: P2C-EWMA sent the slow endpoint {slow} of {n}");
    assert!(
        slow * 10 < n,
        "P2C-EWMA sent the slow endpoint {slow} of {n}"
    );

    mesh.apply_ok(
        "rr.yaml",
        &traffic_policy("echo", "loadBalancer: round-robin"),
    )
    .await;
    mesh.sync(&client).await;
    let n = 300;
    let replies = many(client.outbound, &get, n, 8).await;
    let slow = from_instance(&replies, "echo-bad");
    eprintln!("measured: round robin sent the slow endpoint {slow} of {n}");
    assert!(
        (90..=110).contains(&slow),
        "round robin sent the slow endpoint {slow} of {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_per_route() {
    let (mesh, inst, client) = Mesh::one_instance("fault", &[]).await;
    mesh.apply_ok(
        "fault.yaml",
        &traffic_policy("echo", "fault:\n  abort:\n    httpStatus: 503\n    percent: 50\n  delay:\n    fixedDelay: 100ms\n    percent: 100"),
    )
    .await;
    mesh.sync(&client).await;
    let before = arrivals(&inst).await;
    let n = 200;
    let replies = many(client.outbound, &Shape::get("echo"), n, 8).await;
    let aborted = replies
        .iter()
        .filter(|r| {
            r.status == 503
                && r.proxy_error
                    .as_deref()
                    .is_some_and(|e| e.contains("fault"))
        })
        .count();
    assert!(
        support::within_binomial(aborted as u64, n as u64, 0.5),
        "{aborted} of {n} aborted"
    );
    assert!(
        replies
            .iter()
            .all(|r| r.elapsed >= Duration::from_millis(100))
    );
    // Aborted requests never reach the app.
    let seen = arrivals(&inst).await - before;
    assert_eq!(seen.requests as usize, n - aborted);
    // `get routes` shows it.
    let out = mesh.meshctl(&["get", "routes", "echo"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("delay 100ms 100%, abort 503 50%"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_turn_overload_into_immediate_503s() {
    let (mesh, _inst, client) = Mesh::one_instance("limits", &["--latency-ms", "1000"]).await;
    mesh.apply_ok(
        "limits.yaml",
        &traffic_policy(
            "echo",
            "limits:\n  maxRequests: 2\nretry:\n  attempts: 1\n  retryOn: []",
        ),
    )
    .await;
    mesh.sync(&client).await;
    // Ten callers at once, each on its own connection.
    let replies = at_once(client.outbound, &Shape::get("echo"), 10).await;
    assert_eq!(with_status(&replies, 200), 2, "{replies:?}");
    for r in replies.iter().filter(|r| r.status == 503) {
        assert!(
            r.elapsed < Duration::from_millis(500),
            "refused late: {r:?}"
        );
        assert!(
            r.proxy_error
                .as_deref()
                .unwrap()
                .contains("limit of 2 concurrent requests"),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_connection_limit_refuses_at_once_while_a_handshake_hangs() {
    const TOKEN: &str = "client-bootstrap-token-012345678";
    let tokens = support::TempDir::new("pending-tokens");
    let file = tokens.0.join("tokens.yaml");
    std::fs::write(
        &file,
        format!("- {{token: {TOKEN}, namespace: default, serviceAccount: client}}\n"),
    )
    .unwrap();
    let mesh =
        Mesh::start_with_args("pending", &["--bootstrap-tokens", file.to_str().unwrap()]).await;
    // A peer that accepts TCP and never answers TLS: every mTLS connection
    // attempt to it stays pending until the handshake timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    // Register it as an instance of `silent` through the public discovery API,
    // heartbeating like a sidecar would, with `silent`'s own certificate.
    let channel = mesh.workload_channel("silent").await;
    let beat = tokio::spawn(async move {
        let mut c = mesh_proto::v1::discovery_client::DiscoveryClient::new(channel);
        loop {
            c.heartbeat(mesh_proto::v1::HeartbeatRequest {
                node: Some(mesh_proto::v1::Node {
                    service: "silent".into(),
                    version: "v1".into(),
                    namespace: "default".into(),
                    instance_id: "silent-0".into(),
                }),
                address: silent_addr.to_string(),
                ready: true,
                identity: "spiffe://cluster.local/ns/default/sa/silent".into(),
                cert_not_after_unix: 0,
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    mesh.wait_ready_endpoints("silent", &[("silent", 1)])
        .await
        .unwrap();
    mesh.apply_ok(
        "pending.yaml",
        &traffic_policy(
            "silent",
            "limits:\n  maxPendingConnections: 1\nretry:\n  attempts: 1\n  retryOn: []",
        ),
    )
    .await;
    let client = mesh
        .client_with("client-0", &[("MESH_PROXY_IDENTITY_TOKEN", TOKEN)])
        .await;
    let replies = at_once(client.outbound, &Shape::get("silent"), 6).await;
    beat.abort();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(refused.len(), 5, "{replies:?}");
    for r in &refused {
        assert!(
            r.elapsed < Duration::from_millis(500),
            "refused late: {r:?}"
        );
        assert!(
            r.proxy_error
                .as_deref()
                .unwrap()
                .contains("1 connection attempts already pending"),
            "{r:?}"
        );
    }
    // The one attempt that went ahead gives up at the handshake timeout.
    let hung: Vec<_> = replies.iter().filter(|r| r.status != 503).collect();
    assert_eq!(hung[0].status, 502, "{hung:?}");
    assert!(hung[0].elapsed >= Duration::from_secs(3), "{hung:?}");
}
