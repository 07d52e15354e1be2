//! Discovery by subscription, seen from the wire: a sidecar that names the
//! services it calls receives those, its own, and their clusters, and of
//! every later change only what touches them (a change elsewhere sends it
//! nothing); a name subscribed later arrives as a delta, an unknown one is
//! named, a dropped one is removed; and a sidecar that reconnects with the
//! versions it holds gets only what changed while it was away, even across
//! a control-plane restart.

mod support;

use mesh_proto::incremental;
use mesh_proto::v1 as pb;
use prost::Message;
use std::collections::HashMap;
use support::subscriber::Subscriber;
use support::{Mesh, split};

fn services(r: &pb::DiscoveryResponse) -> Vec<&str> {
    r.services.iter().map(|s| s.name.as_str()).collect()
}

fn clusters(r: &pb::DiscoveryResponse) -> Vec<&str> {
    r.clusters.iter().map(|c| c.name.as_str()).collect()
}

fn subscribe(names: &[&str]) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        incremental: true,
        subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_receives_the_services_it_names_and_changes_to_them_alone() {
    let (mesh, _instances) = Mesh::with_instances("subscriptions-only", &["echo", "other"]).await;
    let channel = mesh.workload_channel("client").await;
    let mut part =
        Subscriber::open_with(channel.clone(), "client-part", subscribe(&["echo"])).await;
    let mut all = Subscriber::open(channel, "client-all", true).await;

    let first = part.next().await;
    assert!(first.base_version.is_empty(), "the first response is whole");
    assert!(services(&first).contains(&"echo"), "{:?}", services(&first));
    assert!(
        !services(&first).contains(&"other"),
        "{:?}",
        services(&first)
    );
    assert!(
        clusters(&first).contains(&"echo.default"),
        "{:?}",
        clusters(&first)
    );
    assert!(!clusters(&first).iter().any(|c| c.starts_with("other")));
    part.reply(&first, None).await;
    let whole = all.next().await;
    all.reply(&whole, None).await;
    assert!(
        services(&whole).contains(&"other"),
        "'*' takes every service"
    );

    // A change to other, then one to echo: the subscriber of echo gets the
    // second alone, so it got nothing for the first.
    let _other_b = mesh.instance("other", "v1", "other-b", &[], None).await;
    mesh.wait_ready_endpoints("other", &[("other", 2)])
        .await
        .unwrap();
    let _echo_b = mesh.instance("echo", "v1", "echo-b", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    let d = part.next().await;
    assert_eq!(
        d.base_version, first.version_info,
        "builds on what it holds"
    );
    assert!(
        services(&d).is_empty(),
        "no route changed: {:?}",
        services(&d)
    );
    assert!(clusters(&d).contains(&"echo.default"), "{:?}", clusters(&d));
    assert!(
        !clusters(&d).iter().any(|c| c.starts_with("other")),
        "{:?}",
        clusters(&d)
    );
    assert_eq!(
        d.clusters
            .iter()
            .find(|c| c.name == "echo.default")
            .unwrap()
            .endpoints
            .len(),
        2
    );
    let bytes = d.encoded_len();
    eprintln!("measured: one endpoint joining echo sent its subscriber {bytes} bytes");
    assert!(bytes <= 1024, "{bytes} bytes for one endpoint change");
    let applied = incremental::apply(&first, &d).expect("the delta applies");
    part.reply(&d, None).await;

    // The subscriber of every service saw the change to other.
    let mut saw_other = false;
    while !saw_other {
        let next = all.next().await;
        all.reply(&next, None).await;
        saw_other = clusters(&next).contains(&"other.default");
    }
    // And the part it holds is exactly that part of the whole.
    let now = all_now(&mesh).await;
    for s in &applied.services {
        assert_eq!(
            Some(s),
            now.services
                .iter()
                .find(|n| n.name == s.name && n.namespace == s.namespace)
        );
    }
    for c in &applied.clusters {
        assert_eq!(Some(c), now.clusters.iter().find(|n| n.name == c.name));
    }
}

/// The whole current config, as a fresh full subscriber receives it.
async fn all_now(mesh: &Mesh) -> pb::DiscoveryResponse {
    let channel = mesh.workload_channel("client").await;
    Subscriber::open(channel, "client-now", false)
        .await
        .next()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_come_and_go_on_a_live_stream_and_an_unknown_one_is_named() {
    let (mesh, _instances) = Mesh::with_instances("subscriptions-change", &["echo", "other"]).await;
    let channel = mesh.workload_channel("client").await;
    let mut sub = Subscriber::open_with(channel, "client-a", subscribe(&["echo"])).await;
    let first = sub.next().await;
    sub.reply(&first, None).await;

    sub.send(subscribe(&["other.default.svc.cluster.local", "nosuch"]))
        .await;
    let added = sub.next().await;
    assert_eq!(added.base_version, first.version_info);
    assert_eq!(services(&added), ["other"]);
    assert_eq!(clusters(&added), ["other.default"]);
    assert_eq!(added.unknown, ["nosuch"]);
    sub.reply(&added, None).await;

    sub.send(pb::DiscoveryRequest {
        unsubscribe: vec!["other.default.svc.cluster.local".into()],
        ..Default::default()
    })
    .await;
    let dropped = sub.next().await;
    assert_eq!(dropped.removed_services, ["default/other"]);
    assert_eq!(dropped.removed_clusters, ["other.default"]);
    assert!(services(&dropped).is_empty() && clusters(&dropped).is_empty());
    assert_eq!(
        dropped.unknown,
        ["nosuch"],
        "still subscribed, still unknown"
    );
    sub.reply(&dropped, None).await;

    // The unknown name's service appears: it is sent, and no longer unknown.
    let _nosuch = mesh.instance("nosuch", "v1", "nosuch-a", &[], None).await;
    let appeared = sub.next().await;
    assert_eq!(services(&appeared), ["nosuch"]);
    assert!(appeared.unknown.is_empty());
    sub.reply(&appeared, None).await;
    // Its endpoint may come in the same response or the next.
    let mut ready = appeared;
    while !ready
        .clusters
        .iter()
        .any(|c| c.name == "nosuch.default" && !c.endpoints.is_empty())
    {
        ready = sub.next().await;
        sub.reply(&ready, None).await;
    }

    // A name no DNS name can be closes the stream, naming the limit.
    sub.send(subscribe(&[&"a".repeat(300)])).await;
    let status = sub.closed().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("300 bytes"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_sidecar_gets_only_what_changed_while_it_was_away() {
    let mut mesh = Mesh::start("subscriptions-reconnect").await;
    let _v1 = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    let _v2 = mesh.instance("echo", "v2", "echo-v2-a", &[], None).await;
    let _other = mesh.instance("other", "v1", "other-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    mesh.wait_ready_endpoints("other", &[("other", 1)])
        .await
        .unwrap();
    let channel = mesh.workload_channel("client").await;
    let mut sub = Subscriber::open(channel, "client-a", true).await;
    let held = sub.next().await;
    sub.reply(&held, None).await;
    drop(sub);

    mesh.kill_control().await;
    mesh.restart_control().await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    mesh.wait_ready_endpoints("other", &[("other", 1)])
        .await
        .unwrap();
    mesh.apply_ok(
        "split.yaml",
        &split("echo", &[("echo-v1", "70"), ("echo-v2", "30")]),
    )
    .await;

    let versions = |pairs: Vec<(String, String)>| pairs.into_iter().collect::<HashMap<_, _>>();
    let back = pb::DiscoveryRequest {
        incremental: true,
        version_info: held.version_info.clone(),
        service_versions: versions(
            held.services
                .iter()
                .map(|s| (incremental::service_key(s), s.resource_version.clone()))
                .collect(),
        ),
        cluster_versions: versions(
            held.clusters
                .iter()
                .map(|c| (c.name.clone(), c.resource_version.clone()))
                .collect(),
        ),
        ..Default::default()
    };
    let channel = mesh.workload_channel("client").await;
    let mut sub = Subscriber::open_with(channel, "client-a", back).await;
    let first = sub.next().await;
    assert_eq!(
        first.base_version, held.version_info,
        "builds on what it said it holds"
    );
    assert_eq!(services(&first), ["echo"], "only echo's routes changed");
    assert!(
        first.encoded_len() * 2 < held.encoded_len(),
        "{} bytes against {} for the whole",
        first.encoded_len(),
        held.encoded_len()
    );
    let applied = incremental::apply(&held, &first).expect("the delta applies");
    let mut now = all_now(&mesh).await;
    now.nonce.clear();
    let mut applied = applied;
    applied.nonce.clear();
    assert_eq!(
        applied, now,
        "what it holds now is the whole current config"
    );
}
