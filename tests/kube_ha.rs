//! A highly available control plane on the Kubernetes API test server:
//! two mesh-control replicas share one CA through a Secret (a sidecar
//! certified by one is trusted by the sidecars of the other) and compete
//! for a `coordination.k8s.io/v1` Lease through server-side apply. Both
//! serve the same config to their sidecars; only the Lease's holder
//! writes rule statuses. The holder killed under steady load, no request
//! fails; the other takes over once the Lease expires, accepts the next
//! release step (`meshctl release shift` against the cluster) and writes
//! from then on.

#[path = "support/kube_api/mod.rs"]
mod kube_api;
#[path = "support/kube_mesh.rs"]
mod kube_mesh;
mod support;

use kube_api::KubeApi;
use kube_mesh::{LEASE_SECS, echo_pair, two_replicas, wait_for_holder};
use std::time::{Duration, Instant};
use support::split;

/// The field managers that wrote the status of TrafficSplit `name`.
fn status_writers(api: &KubeApi, name: &str) -> Vec<String> {
    let path =
        format!("/apis/split.smi-spec.io/v1alpha4/namespaces/default/trafficsplits/{name}/status");
    let mut who: Vec<String> = api
        .writes()
        .into_iter()
        .filter(|(what, _)| what.ends_with(&path))
        .map(|(_, manager)| manager)
        .collect();
    who.dedup();
    who
}

/// `n` requests through `client`: every one answered, by these versions.
async fn versions(client: &support::Client, n: usize) -> Vec<String> {
    let replies =
        support::load::many(client.outbound, &support::load::Shape::get("echo"), n, 4).await;
    assert_eq!(
        support::load::with_status(&replies, 200),
        n,
        "every request answered"
    );
    let mut v: Vec<String> = replies.iter().filter_map(|r| r.version.clone()).collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_a_ca_and_a_config_and_one_leader_writes() {
    let (dir, api, a, b) = two_replicas("kube-ha").await;

    // One CA for both: the Secret one of them created.
    let secret = api
        .object("/secrets", "mesh-system", "mesh-ca")
        .expect("the CA Secret");
    for key in ["root-cert.pem", "root-key.pem", "ca-cert.pem", "ca-key.pem"] {
        assert!(secret["data"][key].is_string(), "{key} in {secret}");
    }
    assert_eq!(
        std::fs::read_to_string(&a.roots).unwrap(),
        std::fs::read_to_string(&b.roots).unwrap(),
        "both replicas present the same roots"
    );

    // Sidecars on both: echo v1 on a, v2 on b, a client on each. Every
    // sidecar proves itself with its projected ServiceAccount token.
    let tokens = kube_api::accounts(&api, &dir.0, &["echo", "client"]).await;
    let (echo_token, client_token) = (&tokens[0], &tokens[1]);
    let echo_env = [("MESH_PROXY_IDENTITY_TOKEN_FILE", echo_token.as_str())];
    let client_env = [("MESH_PROXY_IDENTITY_TOKEN_FILE", client_token.as_str())];
    let (_v1, _v2) = echo_pair(
        &api,
        &dir.0,
        (&a, "echo-v1-a"),
        (&b, "echo-v2-b"),
        &echo_env,
    )
    .await;
    let client_a = a.client_with("client-a", &client_env).await;
    let client_b = b.client_with("client-b", &client_env).await;

    // The same rule reaches the sidecars of both replicas: all to v2, which
    // a's client reaches over mTLS to a sidecar b certified.
    let (before_a, before_b) = (a.version().await, b.version().await);
    kube_api::create(
        &api,
        &dir.0,
        "split.yaml",
        &split("echo", &[("echo-v1", "0"), ("echo-v2", "100")]),
    )
    .await;
    for (m, c, before) in [(&a, &client_a, before_a), (&b, &client_b, before_b)] {
        support::wait_for_version(m, c, before).await;
        assert_eq!(versions(c, 200).await, ["v2"]);
    }

    // Exactly one leader, and only it writes statuses.
    let (leader, _) = wait_for_holder(&api, &["replica-a", "replica-b"], support::DEADLINE).await;
    kube_api::condition(&api, "echo-split", "Accepted", "True", 1).await;
    assert_eq!(
        status_writers(&api, "echo-split"),
        [format!("mesh-control-{leader}")],
        "only the leader writes"
    );

    // The leader killed: the other takes the Lease once it expires, and
    // writes from then on; its sidecars keep their config and get the next.
    let (mut dead, survivor, survivor_client) = if leader == "replica-a" {
        (a, b, client_b)
    } else {
        (b, a, client_a)
    };
    let follower = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    // Under steady load through the survivor's client, which no failure
    // may reach: the dead replica's sidecars keep their last good config.
    let steady = meshctl::traffic::Steady::start(survivor_client.outbound, "echo", 2, 100_000);
    let killed = Instant::now();
    dead.kill_control().await;
    let within = Duration::from_secs(LEASE_SECS + 2);
    let (_, took) = wait_for_holder(&api, &[follower], within).await;
    let takeover = took - killed;
    eprintln!(
        "measured: {follower} took the Lease {takeover:?} after the leader was killed (Lease {LEASE_SECS}s)"
    );
    // A release step through meshctl in cluster mode, still under load:
    // the new leader accepts it and the survivor's sidecars run it.
    let before = survivor.version().await;
    let shifted = tokio::process::Command::new(meshctl::procs::binary("meshctl"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args([
            "release", "shift", "echo", "--to", "echo-v2", "--weight", "50",
        ])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&shifted.stderr);
    assert!(
        shifted.status.success() && said.contains("generation 2 accepted"),
        "{said}"
    );
    support::wait_for_version(&survivor, &survivor_client, before).await;
    let outcomes = steady.finish().await;
    support::assert_none_failed(&outcomes, "the leader's death and a release step");
    eprintln!(
        "measured: {} requests through the leader's death and a shift, none failed",
        outcomes.len()
    );
    let replies = support::load::many(
        survivor_client.outbound,
        &support::load::Shape::get("echo"),
        1000,
        4,
    )
    .await;
    let v2 = replies
        .iter()
        .filter(|r| r.version.as_deref() == Some("v2"))
        .count() as u64;
    assert_eq!(support::load::with_status(&replies, 200), 1000);
    assert!(
        support::within_binomial(v2, 1000, 0.5),
        "{v2} of 1000 at v2 after a shift to 50%"
    );
    kube_api::condition(&api, "echo-split", "Accepted", "True", 2).await;
    assert_eq!(
        status_writers(&api, "echo-split"),
        [
            format!("mesh-control-{leader}"),
            format!("mesh-control-{follower}")
        ],
        "the new leader writes, the dead one no more"
    );
}
