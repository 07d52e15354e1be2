//! The control plane at scale, with sidecars that subscribe to the
//! services they call (simulated over real gRPC, as in `control`):
//! - one endpoint change in a mesh of 10,000 services and 100,000
//!   endpoints, timed until every one of 1,000 sidecars that use the
//!   service has it, with the bytes each received, and the count of
//!   responses at sidecars that do not use it;
//! - a rolling restart of 100 endpoints of one service, counted in pushes
//!   per subscribed sidecar;
//! - 5,000 sidecars connecting at once: time to each one's first config,
//!   and control-plane RSS against its idle RSS with the same registry;
//! - a real sidecar's RSS on demand in that mesh, against one that holds
//!   every service of a 10-service mesh.

use crate::control::{
    CLIENT_TOKEN, DEADLINE, Got, mesh_file, start_control, subscribe_to, workload_channel,
};
use crate::report::{percentile, rss_mib};
use anyhow::{Context, Result, bail};
use mesh_proto::v1 as pb;
use mesh_proto::v1::discovery_client::DiscoveryClient;
use meshctl::procs::{Proc, binary, wait_ready};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// What one run measured.
pub(crate) struct Scale {
    pub(crate) services: usize,
    pub(crate) endpoints: usize,
    pub(crate) subscribers: usize,
    pub(crate) changes: usize,
    /// Per affected sidecar, pooled over the changes: change → its ACK.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The last affected sidecar of each change.
    pub(crate) last_p99_ms: f64,
    pub(crate) bytes_p50: f64,
    pub(crate) bytes_max: f64,
    /// Responses at sidecars that do not use a changed service.
    pub(crate) unaffected: usize,
    /// Pushes per subscribed sidecar through a rolling restart of 100.
    pub(crate) rollout_pushes_mean: f64,
    pub(crate) rollout_pushes_max: usize,
    pub(crate) connecting: usize,
    pub(crate) first_p50_ms: f64,
    pub(crate) first_p99_ms: f64,
    pub(crate) idle_mib: f64,
    pub(crate) connected_mib: f64,
    /// A real sidecar's RSS: on demand in this mesh, and holding every
    /// service of a 10-service one.
    pub(crate) sidecar_mib: f64,
    pub(crate) small_sidecar_mib: f64,
}

/// The hot service every sidecar calls, and nine of the rest for sidecar
/// `i`, spread over the mesh.
fn calls(i: usize, services: usize) -> Vec<String> {
    let mut names = vec!["svc-0".to_string()];
    names.extend((0..9).map(|j| format!("svc-{}", 1 + (i * 9 + j) % (services - 1))));
    names
}

/// A node of service `svc` in `default`.
fn node(svc: &str, id: &str) -> pb::Node {
    pb::Node {
        service: svc.into(),
        version: "v1".into(),
        namespace: "default".into(),
        instance_id: id.into(),
    }
}

/// Registers (or refreshes) instance `id` of `svc`, at `port`.
async fn register(
    client: &mut DiscoveryClient<tonic::transport::Channel>,
    svc: &str,
    id: &str,
    port: u16,
) -> Result<()> {
    client
        .heartbeat(pb::HeartbeatRequest {
            node: Some(node(svc, id)),
            address: format!("127.1.0.1:{port}"),
            ready: true,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Receives until each of `who` got a response after `since`; returns each
/// one's time to it and size, and what everyone else received meanwhile.
async fn until(
    rx: &mut UnboundedReceiver<Got>,
    who: &HashSet<usize>,
    since: Instant,
) -> Result<(Vec<(f64, usize)>, Vec<Got>)> {
    let mut seen = HashSet::new();
    let (mut times, mut others) = (Vec::new(), Vec::new());
    let end = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < who.len() {
        let Ok(Some(got)) = tokio::time::timeout_at(end, rx.recv()).await else {
            bail!(
                "only {} of {} sidecars got the change",
                seen.len(),
                who.len()
            );
        };
        if got.at < since {
            continue;
        }
        if !who.contains(&got.i) {
            others.push(got);
        } else if seen.insert(got.i) {
            times.push((got.at.duration_since(since).as_secs_f64() * 1e3, got.bytes));
        }
    }
    Ok((times, others))
}

/// Waits until every one of `n` subscribers has its first config; each
/// one's time to it from `since`.
async fn first_configs(
    rx: &mut UnboundedReceiver<Got>,
    n: usize,
    since: Instant,
) -> Result<Vec<f64>> {
    let mut have = vec![None; n];
    let mut count = 0;
    let end = tokio::time::Instant::now() + DEADLINE;
    while count < n {
        let Ok(Some(got)) = tokio::time::timeout_at(end, rx.recv()).await else {
            bail!("only {count} of {n} sidecars got a first config");
        };
        if have[got.i].is_none() {
            have[got.i] = Some(got.at.duration_since(since).as_secs_f64() * 1e3);
            count += 1;
        }
    }
    let mut t: Vec<f64> = have.into_iter().flatten().collect();
    t.sort_by(f64::total_cmp);
    Ok(t)
}

pub(crate) async fn run(
    dir: &Path,
    services: usize,
    per: usize,
    subscribers: usize,
    changes: usize,
    connecting: usize,
) -> Result<Scale> {
    let yaml = mesh_file(services, per);
    let (mut control, url) = start_control(&dir.join("changes"), &yaml, None).await?;
    let mut rx = subscribe_to(&dir.join("changes"), &url, subscribers, |i| {
        calls(i, services)
    })
    .await?;
    first_configs(&mut rx, subscribers, Instant::now()).await?;
    let everyone: HashSet<usize> = (0..subscribers).collect();
    let channel = workload_channel(&dir.join("changes"), &url, "svc-0").await?;
    let mut svc0 = DiscoveryClient::new(channel);

    // One endpoint of the hot service joins, then leaves: each a change.
    let (mut samples, mut lasts, mut sizes, mut unaffected) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for k in 0..changes {
        let start = Instant::now();
        if k % 2 == 0 {
            register(&mut svc0, "svc-0", "svc-0-extra", 9000).await?;
        } else {
            svc0.deregister(pb::DeregisterRequest {
                node: Some(node("svc-0", "svc-0-extra")),
            })
            .await?;
        }
        let (times, others) = until(&mut rx, &everyone, start).await?;
        unaffected += others.len();
        lasts.push(times.iter().map(|t| t.0).fold(0.0, f64::max));
        for (t, b) in times {
            samples.push(t);
            sizes.push(b as f64);
        }
    }
    // A cold service's change reaches its few subscribers and nobody else;
    // a hot one's change after it marks the end of the wait.
    let cold = "svc-5";
    let users: HashSet<usize> = (0..subscribers)
        .filter(|&i| calls(i, services).iter().any(|n| n == cold))
        .collect();
    let channel = workload_channel(&dir.join("changes"), &url, cold).await?;
    let start = Instant::now();
    register(
        &mut DiscoveryClient::new(channel),
        cold,
        "svc-5-extra",
        9001,
    )
    .await?;
    let (_, others) = until(&mut rx, &users, start).await?;
    unaffected += others.len();
    let start = Instant::now();
    register(&mut svc0, "svc-0", "svc-0-marker", 9002).await?;
    let (_, others) = until(&mut rx, &everyone, start).await?;
    unaffected += others
        .iter()
        .filter(|g| g.clusters.iter().any(|c| c.starts_with(cold)))
        .count();

    // A rolling restart of 100 endpoints of the hot service, 25 at a time:
    // each batch's old ones leave and new ones join together.
    let ids = |round: usize| (0..100).map(move |j| format!("svc-0-{round}-{j}"));
    futures::future::try_join_all(ids(0).enumerate().map(|(j, id)| {
        let mut c = svc0.clone();
        async move { register(&mut c, "svc-0", &id, 10_000 + j as u16).await }
    }))
    .await?;
    let settled = Instant::now();
    until(&mut rx, &everyone, settled).await?;
    let rollout = Instant::now();
    for batch in 0..4 {
        let old: Vec<String> = ids(0).skip(batch * 25).take(25).collect();
        let new: Vec<String> = ids(1).skip(batch * 25).take(25).collect();
        let leave = old.iter().map(|id| {
            let mut c = svc0.clone();
            let req = pb::DeregisterRequest {
                node: Some(node("svc-0", id)),
            };
            async move {
                c.deregister(req)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        });
        let join = new.iter().enumerate().map(|(j, id)| {
            let mut c = svc0.clone();
            let port = 11_000 + (batch * 25 + j) as u16;
            async move { register(&mut c, "svc-0", id, port).await }
        });
        futures::future::try_join(
            futures::future::try_join_all(leave),
            futures::future::try_join_all(join),
        )
        .await?;
    }
    // Everything the rollout sent has arrived once a marker change has.
    let marker = Instant::now();
    register(&mut svc0, "svc-0", "svc-0-marker-2", 9003).await?;
    let mut pushes = vec![0usize; subscribers];
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut marked = HashSet::new();
    while marked.len() < subscribers {
        let Ok(Some(got)) = tokio::time::timeout_at(end, rx.recv()).await else {
            bail!(
                "the rollout's marker reached {} of {subscribers}",
                marked.len()
            );
        };
        if got.at >= marker {
            marked.insert(got.i);
        } else if got.at >= rollout {
            pushes[got.i] += 1;
        }
    }
    // A real sidecar on demand in this mesh, against one holding every
    // service of a 10-service mesh: each after a request to svc-0.
    let sidecar_mib = sidecar_rss(&dir.join("changes"), &url, &control, "").await?;
    control.stop(Duration::from_secs(5)).await;
    let small = dir.join("small");
    let (mut control, url) = start_control(&small, &mesh_file(10, per), None).await?;
    let small_sidecar_mib = sidecar_rss(&small, &url, &control, "*").await?;
    control.stop(Duration::from_secs(5)).await;

    // 5,000 sidecars at once, on a control plane of their own.
    let (mut control, url) = start_control(&dir.join("connect"), &yaml, None).await?;
    let pid = control.pid().context("control plane running")?;
    let (idle_mib, _) = rss_mib(pid);
    let start = Instant::now();
    let mut rx = subscribe_to(&dir.join("connect"), &url, connecting, |i| {
        calls(i, services)
    })
    .await?;
    let firsts = first_configs(&mut rx, connecting, start).await?;
    let (connected_mib, _) = rss_mib(pid);
    control.stop(Duration::from_secs(5)).await;

    samples.sort_by(f64::total_cmp);
    lasts.sort_by(f64::total_cmp);
    sizes.sort_by(f64::total_cmp);
    Ok(Scale {
        services,
        endpoints: services * per,
        subscribers,
        changes,
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        last_p99_ms: percentile(&lasts, 99.0),
        bytes_p50: percentile(&sizes, 50.0),
        bytes_max: *sizes.last().unwrap_or(&f64::NAN),
        unaffected,
        rollout_pushes_mean: pushes.iter().sum::<usize>() as f64 / subscribers as f64,
        rollout_pushes_max: pushes.iter().copied().max().unwrap_or(0),
        connecting,
        first_p50_ms: percentile(&firsts, 50.0),
        first_p99_ms: percentile(&firsts, 99.0),
        idle_mib,
        connected_mib,
        sidecar_mib,
        small_sidecar_mib,
    })
}

/// The resident memory of a real `client` sidecar (`MESH_PROXY_SERVICES`
/// set to `services`) on the control plane at `url`, once a request to
/// `svc-0` has made it hold svc-0's config. The request itself fails:
/// the mesh file's endpoints are addresses nobody serves.
async fn sidecar_rss(dir: &Path, url: &str, control: &Proc, services: &str) -> Result<f64> {
    let mut cmd = tokio::process::Command::new(binary("mesh-proxy"));
    cmd.env("MESH_PROXY_SERVICE", "client")
        .env("MESH_PROXY_INSTANCE_ID", "client-rss")
        .env("MESH_PROXY_CONTROL_ADDR", url)
        .env("MESH_PROXY_CONTROL_ROOTS", control.roots()?)
        .env("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)
        .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_SERVICES", services)
        .env("MESH_PROXY_LOG", "warn");
    let sidecar = Proc::spawn("rss-sidecar", cmd, dir).await?;
    let admin = sidecar.addr("admin")?;
    wait_ready(admin, "/ready", DEADLINE).await?;
    let client = meshctl::traffic::client();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        meshctl::traffic::one(&client, sidecar.addr("outbound")?, "svc-0").await;
        let (_, dump) = meshctl::traffic::get(admin, "/config_dump").await?;
        if dump.contains("\"svc-0\"") {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "the sidecar never held svc-0"
        );
    }
    Ok(rss_mib(sidecar.pid().context("sidecar running")?).0)
}
