//! Discovery is incremental for a sidecar that asks: after the first full
//! snapshot on a stream, each change arrives as only what changed on top
//! of the version before, and applied to that version it gives exactly the
//! full snapshot a subscriber that did not ask receives. A refused delta is
//! answered at once with the full snapshot, and the next change builds on
//! that.

mod support;

use mesh_proto::incremental;
use mesh_proto::v1 as pb;
use support::subscriber::Subscriber;
use support::{Mesh, split};

/// Full snapshots compare without their nonces (a delta's differs).
fn content(mut r: pb::DiscoveryResponse) -> pb::DiscoveryResponse {
    r.nonce.clear();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_as_deltas_and_a_refused_delta_is_answered_in_full() {
    let mesh = Mesh::start("incremental").await;
    let _v1 = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    let _v2 = mesh.instance("echo", "v2", "echo-v2-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    let channel = mesh.workload_channel("client").await;
    let mut delta = Subscriber::open(channel.clone(), "client-delta", true).await;
    let mut full = Subscriber::open(channel, "client-full", false).await;

    let first = delta.next().await;
    assert!(
        first.base_version.is_empty(),
        "the first response on a stream is full"
    );
    delta.reply(&first, None).await;
    let mut full_now = full.next().await;
    full.reply(&full_now, None).await;
    // Both start from the same version (nothing changed in between).
    assert_eq!(first.version_info, full_now.version_info);

    mesh.apply_ok(
        "split.yaml",
        &split("echo", &[("echo-v1", "80"), ("echo-v2", "20")]),
    )
    .await;
    let d = delta.next().await;
    assert_eq!(
        d.base_version, first.version_info,
        "builds on the last one sent"
    );
    assert!(
        d.services.len() < first.services.len(),
        "a delta carries only what changed: {} of {} services",
        d.services.len(),
        first.services.len()
    );
    assert!(
        d.services.iter().any(|s| s.name == "echo"),
        "echo's routes changed"
    );
    full_now = full.next().await;
    full.reply(&full_now, None).await;
    assert!(full_now.base_version.is_empty(), "never a delta unasked");
    assert_eq!(full_now.version_info, d.version_info);
    let applied = incremental::apply(&first, &d).expect("the delta applies to its base");
    assert_eq!(content(applied), content(full_now.clone()));

    // Refused: the same version comes again, in full, without a change.
    delta.reply(&d, Some("refused by the test")).await;
    let again = delta.next().await;
    assert!(
        again.base_version.is_empty(),
        "a refused delta is answered in full"
    );
    assert_eq!(content(again.clone()), content(full_now.clone()));
    assert_ne!(again.nonce, d.nonce, "a new nonce for a new response");
    delta.reply(&again, None).await;

    // The next change builds on the full one.
    mesh.apply_ok(
        "split.yaml",
        &split("echo", &[("echo-v1", "40"), ("echo-v2", "60")]),
    )
    .await;
    let d2 = delta.next().await;
    assert_eq!(d2.base_version, again.version_info);
    full_now = full.next().await;
    let applied = incremental::apply(&again, &d2).expect("the delta applies to its base");
    assert_eq!(content(applied), content(full_now));
}
