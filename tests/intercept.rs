//! Transparent interception end to end, in network namespaces (root only;
//! each test says plainly that it skipped otherwise, and CI runs as root).
//! Each pod is a namespace with its app, its sidecar and the redirect
//! rules `mesh-proxy init` wrote; the control plane runs in local mode
//! with virtual IPs in a hub namespace routing between them. An
//! unmodified client (curl) calls a service's virtual IP and is answered
//! by its versions in the TrafficSplit's proportions, the app seeing the
//! caller's verified identity (so the call went sidecar to sidecar over
//! mTLS); an address that is no service passes through.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/pods.rs"]
mod pods;
mod support;
// The pods take their bootstrap tokens from the harness's.
use support::tokens;

use pods::Hub;
use serde_json::Value;

/// echo v1 and v2, half each.
fn mesh() -> String {
    support::split("echo", &[("echo-v1", "50"), ("echo-v2", "50")])
}

/// The split and a policy that lets only `client` call echo.
fn guarded() -> String {
    support::authorization_policy(
        "echo-callers",
        "echo",
        &["spiffe://cluster.local/ns/default/sa/client"],
    )
}

/// openssl's own TLS server on port 8443 of `ns`, its certificate naming
/// `ip` (no part of mesh); and the certificate, for the client to verify.
fn tls_server(
    hub: &Hub,
    ns: &netns::NetNs,
    ip: &str,
    dir: &std::path::Path,
) -> (meshctl::procs::Proc, std::path::PathBuf) {
    let (cert, key) = (dir.join(format!("{ip}.pem")), dir.join(format!("{ip}.key")));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=app"])
        .arg("-addext")
        .arg(format!("subjectAltName=IP:{ip}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let server = meshctl::procs::Proc::spawn_plain(
        &format!("tls-{ip}"),
        pods::in_ns(
            ns,
            &[
                "openssl",
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                "8443",
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
            ],
        ),
        &hub.logs,
    )
    .unwrap();
    (server, cert)
}

/// curl of `url` from `ns` trusting `cert` alone, retried (bounded) while
/// the server comes up: its output.
async fn curl_tls(ns: &netns::NetNs, url: &str, cert: &std::path::Path) -> std::process::Output {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = ns.output(&[
            "curl",
            "-sS",
            "-m",
            "5",
            "--cacert",
            cert.to_str().unwrap(),
            url,
        ]);
        if out.status.success() || std::time::Instant::now() > end {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mesh-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_to_a_virtual_ip_is_split_and_mtls_and_other_addresses_pass_through() {
    if !netns::root_or_skip(
        "curl_to_a_virtual_ip_is_split_and_mtls_and_other_addresses_pass_through",
    ) {
        return;
    }
    let dir = temp("intercept");
    let mut hub = Hub::start(&dir, &mesh()).await;
    let mut client = hub.pod("cli");
    let mut v1 = hub.pod("v1");
    let mut v2 = hub.pod("v2");
    for (pod, version) in [(&mut v1, "v1"), (&mut v2, "v2")] {
        hub.echo(pod, version, "127.0.0.1:8080").await;
        hub.sidecar(pod, "echo", version, Some("127.0.0.1:8080"), &[])
            .await;
    }
    hub.sidecar(&mut client, "client", "", None, &[]).await;
    // A second port of v1's pod, serving another app.
    hub.echo(&mut v1, "second-port", "127.0.0.1:9090").await;

    // The client's sidecar knows echo's virtual IP once both versions are
    // its endpoints.
    let vip = hub.wait_service(&client, "echo", &[&v1.ip, &v2.ip]).await;
    assert!(vip.starts_with("10.96."), "{vip}");

    // 200 requests from an unmodified curl to http://<vip>:8080/, one
    // connection: each request is routed on its own.
    let url = format!("http://{vip}:8080/");
    let mut args = vec!["curl", "-sS", "-m", "20"];
    let urls = vec![url.as_str(); 200];
    args.extend(urls.iter().copied());
    let out = client.ns.output(&args);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(answers.len(), 200);
    let v1_share = answers.iter().filter(|a| a["version"] == "v1").count();
    let v2_share = answers.iter().filter(|a| a["version"] == "v2").count();
    assert_eq!(v1_share + v2_share, 200, "{:?}", &answers[..3]);
    // 50/50 over 200: outside 60..140 is more than five standard deviations.
    assert!(
        (60..=140).contains(&v1_share),
        "v1 {v1_share}, v2 {v2_share}"
    );
    for a in &answers {
        assert_eq!(
            a["client_id"], "spiffe://cluster.local/ns/default/sa/client",
            "the app sees the caller's verified identity: {a}"
        );
    }

    // A gRPC client (tonic, h2c prior knowledge) dialling the same virtual
    // IP: detected as HTTP/2, routed per call, over mTLS both versions.
    let grpc_url = format!("http://{vip}:8080");
    let versions = client.ns.run(move || async move {
        let channel = tonic::transport::Endpoint::from_shared(grpc_url)
            .unwrap()
            .connect()
            .await
            .expect("gRPC connects to the virtual IP");
        let mut echo = mesh_proto::echo::echo_client::EchoClient::new(channel);
        let mut versions = Vec::new();
        for _ in 0..40 {
            let reply = echo
                .unary(mesh_proto::echo::EchoRequest {
                    payload: b"hi".to_vec(),
                })
                .await
                .expect("a unary call through two sidecars")
                .into_inner();
            assert_eq!(reply.payload, b"hi");
            versions.push(reply.version);
        }
        versions
    });
    assert!(
        versions.iter().any(|v| v == "v1") && versions.iter().any(|v| v == "v2"),
        "{versions:?}"
    );

    // An unmeshed client (in the hub) calling the pod's ports directly: the
    // pod's inbound redirect brings each to the sidecar, which forwards to
    // the port it was dialled to.
    for (port, version) in [("8080", "v1"), ("9090", "second-port")] {
        let url = format!("http://{}:{port}/", v1.ip);
        let out = hub.ns.ok(&["curl", "-sS", "-m", "5", &url]);
        let answer: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["version"], version, "{url}: {answer}");
    }

    // An address that is no service passes through unchanged: a server in
    // the hub answers as itself.
    let _outside = hub.tcp_peer(&hub.ns, "outside", &["serve", "9000"]).await;
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tcp_peer.py");
    let said = client
        .ns
        .ok(&["python3", tool, "call", &client.gateway, "9000"]);
    assert_eq!(said.trim(), "direct 9000");
    // ... and so does HTTP to it: curl gets the hub's own answer, not a 503
    // from a sidecar that knows no such service.
    let said = client.ns.output(&[
        "curl",
        "-sS",
        "--http0.9",
        "-m",
        "5",
        &format!("http://{}:9000/", client.gateway),
    ]);
    assert!(
        String::from_utf8_lossy(&said.stdout).contains("direct 9000"),
        "{said:?}"
    );

    // The app's own TLS to a destination outside the mesh passes through
    // untouched: curl verifies the server's own certificate.
    let (_tls_server, cert) = tls_server(&hub, &hub.ns, &client.gateway, &dir);
    let url = format!("https://{}:8443/", client.gateway);
    let out = curl_tls(&client.ns, &url, &cert).await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("s_server"),
        "TLS through the client's sidecar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_and_server_first_protocols_cross_two_sidecars_intact() {
    if !netns::root_or_skip("opaque_tcp_and_server_first_protocols_cross_two_sidecars_intact") {
        return;
    }
    let dir = temp("opaque");
    let mut hub = Hub::start(&dir, &format!("{}---\n{}", mesh(), guarded())).await;
    let mut client = hub.pod("cli");
    let mut intruder = hub.pod("web");
    let mut server = hub.pod("srv");
    hub.echo(&mut server, "v1", "127.0.0.1:8080").await;
    hub.sidecar(&mut server, "echo", "v1", Some("127.0.0.1:8080"), &[])
        .await;
    hub.sidecar(&mut client, "client", "", None, &[]).await;
    hub.sidecar(&mut intruder, "web", "", None, &[]).await;
    // A raw TCP echo, a server that speaks first on a port detection
    // watches (2525) and the same on an opaque one (25, SMTP's).
    let _echo = hub
        .tcp_peer(&server.ns, "tcp-echo", &["echo", "7000"])
        .await;
    let _smtp = hub
        .tcp_peer(&server.ns, "banner", &["banner", "2525", "220 mesh ESMTP"])
        .await;
    let _opaque = hub
        .tcp_peer(&server.ns, "banner-25", &["banner", "25", "220 opaque"])
        .await;
    let vip = hub.wait_service(&client, "echo", &[&server.ip]).await;
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tcp_peer.py");
    let py = |args: &[&str]| {
        let mut all = vec!["python3", tool];
        all.extend_from_slice(args);
        client.ns.ok(&all)
    };

    // Half-close both ways: the server sees the client's EOF (and says so
    // after echoing), then the client sees the server's.
    let said = py(&["talk", &vip, "7000", "hello through two sidecars"]);
    assert_eq!(said, "hello through two sidecars26 bytes then EOF\n");

    // Server speaks first: on a watched port after the detection deadline
    // (100 ms) and no later than 50 ms past it; on an opaque port at once.
    let ms = |said: String, banner: &str| -> f64 {
        let (ms, line) = said.trim().split_once(' ').unwrap();
        assert_eq!(line, banner);
        ms.parse().unwrap()
    };
    // The best of three: what the design adds, not what a busy machine's
    // scheduler does to one try.
    let best = |port: &str, banner: &str| {
        (0..3)
            .map(|_| ms(py(&["greet", &vip, port]), banner))
            .fold(f64::MAX, f64::min)
    };
    let watched = best("2525", "220 mesh ESMTP");
    let opaque = best("25", "220 opaque");
    eprintln!("banner after {watched:.1} ms on a watched port, {opaque:.1} ms on an opaque one");
    assert!((100.0..=150.0).contains(&watched), "{watched} ms");
    assert!(
        opaque < watched - 90.0,
        "the opaque port waited for detection: {opaque} ms"
    );

    // The server's sidecar enforces echo's AuthorizationPolicy on opaque
    // connections too: web's gets nothing through, not even the banner.
    let mut all = vec!["python3", tool];
    all.extend_from_slice(&["talk", &vip, "7000", "let me in"]);
    let denied = intruder.ns.output(&all);
    assert_eq!(String::from_utf8_lossy(&denied.stdout), "", "{denied:?}");
    let server_metrics = server
        .ns
        .ok(&["curl", "-sf", "http://127.0.0.1:4191/metrics"]);
    assert!(
        server_metrics
            .contains(r#"mesh_inbound_connections_total{tls="true",outcome="forbidden"} 1"#),
        "the denial was the policy's: {server_metrics}"
    );

    // An unmeshed client (in the hub) of the server pod's banner port: the
    // pod's inbound redirect brings it to the sidecar, which hands the
    // silent connection to the app after the deadline, not after the idle
    // timeout.
    let mut all = vec!["python3", tool];
    let server_ip = server.ip.clone();
    all.extend_from_slice(&["greet", &server_ip, "2525"]);
    let unmeshed = (0..3)
        .map(|_| ms(hub.ns.ok(&all), "220 mesh ESMTP"))
        .fold(f64::MAX, f64::min);
    assert!((100.0..=150.0).contains(&unmeshed), "{unmeshed} ms");
    let mut all = vec!["python3", tool];
    all.extend_from_slice(&["talk", &server_ip, "7000", "plain"]);
    assert_eq!(hub.ns.ok(&all), "plain5 bytes then EOF\n");

    // Bad input closes only its own connection: bytes that start like
    // HTTP but are not get a 400; a garbage ClientHello to the pod's
    // inbound is dropped; the next connections are served as before.
    let said = py(&[
        "talk",
        &vip,
        "8080",
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ]);
    assert!(said.starts_with("HTTP/1.1 400"), "{said}");
    let mut all = vec!["python3", tool];
    all.extend_from_slice(&["talk", &server_ip, "7000", r"\x16\x03\x01\x00\x05garbage"]);
    let out = hub.ns.output(&all);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("bytes then EOF"),
        "a garbage ClientHello reached the app: {out:?}"
    );
    assert_eq!(
        py(&["talk", &vip, "7000", "again"]),
        "again5 bytes then EOF\n"
    );

    // An unmeshed client's own TLS to a port of the meshed pod: the pod's
    // sidecar tells it from a peer's handshake (no sidecar marker in its
    // ClientHello) and hands it to the app untouched; curl verifies the
    // app's own certificate.
    let (_app_tls, cert) = tls_server(&hub, &server.ns, &server.ip, &dir);
    let out = curl_tls(&hub.ns, &format!("https://{}:8443/", server.ip), &cert).await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("s_server"),
        "the app's own TLS through the pod's sidecar: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 100 MB each way, byte for byte.
    let said = py(&["bulk", &vip, "7000", "100"]);
    assert_eq!(said.trim(), format!("same {}", 100 << 20));

    // The server's sidecar counted what it detected nothing of, and the
    // client's what decided each connection.
    let metrics = client
        .ns
        .ok(&["curl", "-sf", "http://127.0.0.1:4191/metrics"]);
    for want in [
        r#"mesh_protocol_detections_total{direction="outbound",protocol="opaque",by="bytes"}"#,
        r#"mesh_protocol_detections_total{direction="outbound",protocol="opaque",by="timeout"} 3"#,
        r#"mesh_protocol_detections_total{direction="outbound",protocol="opaque",by="port"} 3"#,
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
    // Opaque connections by peer identity, with their bytes: the 100 MB
    // went to echo's sidecar and came back from it.
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    let echo_id = "spiffe://cluster.local/ns/default/sa/echo";
    for way in ["to_peer", "from_peer"] {
        let series = format!(
            r#"mesh_tcp_opaque_bytes_total{{direction="outbound",peer_identity="{echo_id}",way="{way}"}}"#
        );
        assert!(value(&metrics, &series) >= (100 << 20) as f64, "{series}");
    }
    let server_metrics = server
        .ns
        .ok(&["curl", "-sf", "http://127.0.0.1:4191/metrics"]);
    let opened = value(
        &server_metrics,
        r#"mesh_tcp_opaque_opened_total{direction="inbound",peer_identity="spiffe://cluster.local/ns/default/sa/client"}"#,
    );
    assert!(opened >= 5.0, "{opened}");
    let _ = std::fs::remove_dir_all(&dir);
}
