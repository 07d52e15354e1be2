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
#[allow(dead_code, unreachable_pub)]
#[path = "support/tokens.rs"]
mod tokens;

use pods::Hub;
use serde_json::Value;

const MESH: &str = "apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: echo-split
spec:
  service: echo
  backends:
  - service: echo-v1
    weight: 50
  - service: echo-v2
    weight: 50
";

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mesh-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The virtual IP of `service` as the sidecar in `ns` knows it.
fn virtual_ip(ns: &netns::NetNs, service: &str) -> Option<String> {
    let dump = ns.output(&[
        "curl",
        "-sf",
        "-m",
        "1",
        "http://127.0.0.1:4191/config_dump",
    ]);
    let dump: Value = serde_json::from_slice(&dump.stdout).ok()?;
    dump["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?["virtual_ips"][0]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_to_a_virtual_ip_is_split_and_mtls_and_other_addresses_pass_through() {
    if !netns::root_or_skip(
        "curl_to_a_virtual_ip_is_split_and_mtls_and_other_addresses_pass_through",
    ) {
        return;
    }
    let dir = temp("intercept");
    let mut hub = Hub::start(&dir, MESH).await;
    let mut client = hub.pod("cli");
    let mut v1 = hub.pod("v1");
    let mut v2 = hub.pod("v2");
    for (pod, version) in [(&mut v1, "v1"), (&mut v2, "v2")] {
        hub.echo(pod, version, &[]).await;
        hub.sidecar(pod, "echo", version, Some("127.0.0.1:8080"), &[])
            .await;
    }
    hub.sidecar(&mut client, "client", "", None, &[]).await;

    // The client's sidecar knows echo's virtual IP once both versions are
    // its endpoints.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let vip = loop {
        let dump = client.ns.output(&[
            "curl",
            "-sf",
            "-m",
            "1",
            "http://127.0.0.1:4191/config_dump",
        ]);
        let text = String::from_utf8_lossy(&dump.stdout);
        if let Some(vip) = virtual_ip(&client.ns, "echo")
            && text.contains(&format!("{}:4143", v1.ip))
            && text.contains(&format!("{}:4143", v2.ip))
        {
            break vip;
        }
        assert!(
            std::time::Instant::now() < end,
            "echo never had both endpoints: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
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
    let _ = std::fs::remove_dir_all(&dir);
}
