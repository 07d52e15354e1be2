//! The control plane's single writer in-process: an apply is validated,
//! persisted, then published; a failed apply (bad document, conflict with
//! the rules in force, or a state directory that cannot be written) leaves
//! both the file on disk and the published snapshot untouched; a
//! deregistration is propagated only once every other sidecar ACKs it; and
//! a burst of registry changes is published as one.

use mesh_control::registry::local::{NodeId, Registry};
use mesh_control::rules::RuleSet;
use mesh_control::state::{Beat, Error, State};
use mesh_control::store::{self, Store};
use mesh_proto::v1 as pb;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The identity echo's sidecars prove (the service's own account).
const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn beat(address: &str) -> Beat<'_> {
    Beat {
        address,
        ready: true,
        identity: "",
        cert_not_after_unix: 0,
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("mesh-writer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The state of a control plane with nothing registered and no rules,
/// over whatever `dir` holds.
fn fresh(dir: &Dir) -> State {
    State::new(
        Registry::default(),
        RuleSet::default(),
        Store::open(&dir.0).unwrap(),
        Default::default(),
    )
    .unwrap()
}

fn split(name: &str, v1: &str, v2: &str) -> (String, String) {
    (
        format!("{name}.yaml"),
        format!(
            "apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: {name}
spec:
  service: echo
  backends:
  - service: echo-v1
    weight: {v1}
  - service: echo-v2
    weight: {v2}
"
        ),
    )
}

fn weights(state: &State) -> Vec<u32> {
    let snap = state.subscribe().borrow().clone();
    let echo = snap
        .view
        .services
        .iter()
        .find(|s| s.name == "echo")
        .expect("echo is routed");
    echo.routes[0].backends.iter().map(|b| b.weight).collect()
}

fn invalid(r: Result<mesh_control::state::Applied, Error>) -> String {
    match r {
        Err(Error::Invalid(problems)) => problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_apply_is_persisted_then_published_and_a_failed_one_changes_nothing() {
    let dir = Dir::new("apply");
    let rules_file = dir.0.join(store::RULES);
    let state = fresh(&dir);
    let mut watch = state.subscribe();
    let v0 = watch.borrow_and_update().version;

    let applied = state.apply(&[split("echo", "90", "10")]).unwrap();
    assert!(applied.version > v0);
    assert!(watch.has_changed().unwrap(), "published");
    let published = watch.borrow_and_update().clone();
    assert_eq!(published.version, applied.version);
    assert_eq!(weights(&state), [90, 10]);
    // On disk before anyone could see it, and a restart serves the same.
    let saved = Store::open(&dir.0).unwrap().load_rules().unwrap().unwrap();
    assert_eq!(saved.splits.len(), 1);
    let on_disk = std::fs::read(&rules_file).unwrap();

    // A bad document: refused naming file, object and field.
    let (name, text) = split("echo", "90", "-10");
    let problems = invalid(state.apply(&[(name, text)]));
    assert!(
        problems.contains("echo.yaml:")
            && problems.contains("TrafficSplit default/echo")
            && problems.contains("spec.backends[1].weight"),
        "{problems}"
    );
    // A document fine alone that conflicts with the rules in force.
    let problems = invalid(state.apply(&[split("other", "50", "50")]));
    assert!(
        problems.contains("already has TrafficSplit default/echo"),
        "{problems}"
    );
    // An empty apply changes nothing either.
    assert!(state.apply(&[]).is_ok_and(|a| a.outcomes.is_empty()));
    for _ in 0..2 {
        assert!(!watch.has_changed().unwrap(), "nothing was published");
        assert_eq!(std::fs::read(&rules_file).unwrap(), on_disk, "nor written");
        assert_eq!(state.version(), applied.version);
        assert_eq!(weights(&state), [90, 10]);
    }

    // A state directory that cannot be written: the apply fails, and what
    // is published and in force stays what is on disk.
    let moved = dir.0.with_extension("moved");
    let _ = std::fs::remove_dir_all(&moved);
    std::fs::rename(&dir.0, &moved).unwrap();
    std::fs::write(&dir.0, b"not a directory").unwrap();
    let r = state.apply(&[split("echo", "50", "50")]);
    assert!(matches!(r, Err(Error::Store(_))), "{r:?}");
    assert!(!watch.has_changed().unwrap());
    assert_eq!(weights(&state), [90, 10]);
    std::fs::remove_file(&dir.0).unwrap();
    std::fs::rename(&moved, &dir.0).unwrap();
    // With the directory back, the same apply goes through.
    state.apply(&[split("echo", "50", "50")]).unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(weights(&state), [50, 50]);

    // A restart restores the rules from disk, not the seed.
    drop(state);
    let restarted = fresh(&dir);
    assert_eq!(weights(&restarted), [50, 50]);
}

fn node(id: &str) -> pb::Node {
    pb::Node {
        service: "client".into(),
        version: String::new(),
        namespace: "default".into(),
        instance_id: id.into(),
    }
}

#[tokio::test]
async fn a_deregistration_is_propagated_only_when_every_other_sidecar_acks_it() {
    let dir = Dir::new("dereg");
    let state = std::sync::Arc::new(fresh(&dir));
    let leaving = NodeId {
        namespace: "default".into(),
        service: "echo".into(),
        version: "v1".into(),
        instance_id: "echo-0".into(),
    };
    state
        .heartbeat(Some(ECHO), &leaving, beat("127.0.0.1:4143"))
        .unwrap();
    for (id, name) in [(1, "a"), (2, "b"), (3, "echo-0")] {
        state.proxies().add(id, node(name));
    }
    let short = Duration::from_millis(300);

    // Nobody answers: not propagated, after the timeout and not before.
    let v = state
        .published(state.deregister(Some(ECHO), &leaving).unwrap())
        .await;
    let started = Instant::now();
    assert!(!state.proxies().wait_propagated(v, "echo-0", short).await);
    assert!(started.elapsed() >= short);

    // Both others ACK (the leaving sidecar itself does not count).
    let waiter = {
        let state = state.clone();
        tokio::spawn(async move {
            state
                .proxies()
                .wait_propagated(v, "echo-0", Duration::from_secs(10))
                .await
        })
    };
    state.proxies().record_reply(1, v, None);
    assert!(!waiter.is_finished());
    state.proxies().record_reply(2, v + 1, None);
    assert!(waiter.await.unwrap(), "a later version counts");
    // echo-0's sidecar has gone.
    state.proxies().remove(3);

    // One NACKs: it still runs the config with the instance in it, so the
    // answer is false, and at once rather than at the timeout.
    let again = NodeId {
        instance_id: "echo-1".into(),
        ..leaving.clone()
    };
    state
        .heartbeat(Some(ECHO), &again, beat("127.0.0.1:4144"))
        .unwrap();
    let v = state
        .published(state.deregister(Some(ECHO), &again).unwrap())
        .await;
    state.proxies().record_reply(1, v, None);
    state
        .proxies()
        .record_reply(2, v, Some("regex too big".into()));
    let started = Instant::now();
    assert!(
        !state
            .proxies()
            .wait_propagated(v, "echo-1", Duration::from_secs(10))
            .await
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A sidecar that leaves the mesh no longer holds anyone up.
    state.proxies().remove(2);
    assert!(state.proxies().wait_propagated(v, "echo-1", short).await);
}

/// `n` TrafficSplits, each on its own service, in one file.
fn many_splits(n: usize) -> (String, String) {
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: s{i}\nspec:\n  service: svc{i}\n  backends:\n  - service: svc{i}-v1\n    weight: 1\n"
        ));
    }
    ("many.yaml".into(), yaml)
}

/// A large apply (10,000 splits) runs while an instance keeps heartbeating:
/// no heartbeat waits for it (they renew leases, which the writer never
/// holds), the instance stays in every snapshot, and a later one-split
/// apply is quick (nothing in validation grows with the square of the
/// rules in force).
#[test]
fn heartbeats_never_wait_for_a_large_apply() {
    let dir = Dir::new("large");
    let state = std::sync::Arc::new(fresh(&dir));
    let node = NodeId {
        namespace: "default".into(),
        service: "echo".into(),
        version: "v1".into(),
        instance_id: "echo-0".into(),
    };
    state
        .heartbeat(Some(ECHO), &node, beat("127.0.0.1:4143"))
        .unwrap();
    let file = many_splits(10_000);
    let applying = {
        let state = state.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let applied = state.apply(&[file]);
            (applied, started.elapsed())
        })
    };
    let (mut beats, mut slowest) = (0, Duration::ZERO);
    while !applying.is_finished() {
        let t = Instant::now();
        state
            .heartbeat(Some(ECHO), &node, beat("127.0.0.1:4143"))
            .unwrap();
        slowest = slowest.max(t.elapsed());
        beats += 1;
        assert!(
            state.expire(Duration::from_millis(900)).unwrap().is_empty(),
            "a lease expired during the apply"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (applied, took) = applying.join().unwrap();
    let applied = applied.unwrap();
    eprintln!(
        "measured: 10,000-split apply {took:?}, lock held {:?}; {beats} heartbeats meanwhile, slowest {slowest:?}",
        applied.held
    );
    assert_eq!(applied.outcomes.len(), 10_000);
    assert!(
        applied.held < took / 2 && applied.held < Duration::from_secs(1),
        "validation and fsync ran outside the lock: held {:?} of {took:?}",
        applied.held
    );
    assert!(beats > 0);
    assert!(
        slowest < Duration::from_millis(50),
        "a heartbeat waited {slowest:?} (the apply took {took:?})"
    );
    let snap = state.subscribe().borrow().clone();
    let echo = snap
        .view
        .clusters
        .iter()
        .find(|c| c.name == "echo.default")
        .unwrap();
    assert_eq!(echo.endpoints.len(), 1, "the instance never left");
    assert!(snap.view.services.len() > 10_000);
    // One more split on top of the 10,000.
    let t = Instant::now();
    state.apply(&[split("one-more", "50", "50")]).unwrap();
    let one = t.elapsed();
    eprintln!("measured: a one-split apply on top of 10,000: {one:?}");
    assert!(one < took, "one split took {one:?}, all 10,000 {took:?}");
}

#[tokio::test]
async fn a_burst_of_registry_changes_is_published_once_and_a_lone_one_after_the_window() {
    let dir = Dir::new("batch");
    let window = Duration::from_millis(200);
    let state = std::sync::Arc::new(fresh(&dir).with_batch_window(window));
    tokio::spawn(state.clone().run_batches());
    let endpoints = |state: &State| {
        let snap = state.subscribe().borrow().clone();
        snap.view
            .clusters
            .iter()
            .find(|c| c.name == "echo.default")
            .map_or(0, |c| c.endpoints.len())
    };

    // A rollout's worth of registrations at once: one publication.
    let before = state.version();
    let mut last = 0;
    for i in 0..100 {
        let node = NodeId {
            namespace: "default".into(),
            service: "echo".into(),
            version: "v1".into(),
            instance_id: format!("echo-{i}"),
        };
        let address = format!("127.0.0.1:{}", 5000 + i);
        state.heartbeat(Some(ECHO), &node, beat(&address)).unwrap();
        last += 1;
    }
    let started = Instant::now();
    let version = state.published(last).await;
    assert_eq!(endpoints(&state), 100);
    let publications = version - before;
    eprintln!(
        "measured: 100 registrations published in {publications} push(es), {:?} after the last",
        started.elapsed()
    );
    assert!(
        publications <= 2,
        "{publications} publications for one burst"
    );

    // A lone change is not published at once, but once its window ends.
    let node = NodeId {
        namespace: "default".into(),
        service: "echo".into(),
        version: "v1".into(),
        instance_id: "echo-late".into(),
    };
    let at = Instant::now();
    state
        .heartbeat(Some(ECHO), &node, beat("127.0.0.1:6000"))
        .unwrap();
    assert_eq!(state.version(), version, "held for the window");
    let v = state.published(last + 1).await;
    let took = at.elapsed();
    assert_eq!((v, endpoints(&state)), (version + 1, 101));
    assert!(
        took >= window,
        "published before its window ended: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}
