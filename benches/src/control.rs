//! Control-plane benchmarks against a real mesh-control process:
//! - fan-out: N simulated sidecars subscribe over gRPC and ACK every
//!   version; a `release shift` is timed from the Shift RPC to the moment the
//!   last subscriber has the new version and sends its ACK;
//! - memory: control-plane RSS with 1,000 services and 10,000 endpoints;
//! - large apply: 10,000 TrafficSplits applied while instances heartbeat;
//!   every heartbeat's latency, and whether any lease lapsed.
//!
//! The simulated sidecars are a tonic client written here because no load
//! tool speaks mesh's discovery protocol; they do what mesh-proxy does on the
//! wire (subscribe, receive, ACK) without running 1,000 proxy processes.

use crate::report::{percentile, rss_mib};
use anyhow::{Context, Result, bail};
use mesh_proto::v1 as pb;
use mesh_proto::v1::discovery_client::DiscoveryClient;
use meshctl::procs::{ControlPlane, Proc};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The bootstrap token of a real `client` sidecar on a control plane
/// `start_control` started.
pub(crate) const CLIENT_TOKEN: &str = "bench-client-token-0123456789abcd";
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);
/// Subscriptions sharing one HTTP/2 connection, as a node's sidecars would not;
/// but 10 per connection keeps the client side from dominating the measurement.
const STREAMS_PER_CONN: usize = 10;

/// Results of one fan-out run.
pub(crate) struct Fanout {
    /// When the first subscriber had the change: the floor under the fan-out.
    pub(crate) first_p50_ms: f64,
    pub(crate) subscribers: usize,
    pub(crate) shifts: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Results of the memory run.
pub(crate) struct Memory {
    pub(crate) services: usize,
    pub(crate) endpoints: usize,
    pub(crate) rss_mib: f64,
    pub(crate) peak_mib: f64,
    pub(crate) subscribers: usize,
}

pub(crate) fn mesh_file(services: usize, endpoints_per: usize) -> String {
    let mut s = String::new();
    for i in 0..services {
        s.push_str(&format!(
            "apiVersion: mesh.dev/v1alpha1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  instances:\n"
        ));
        for j in 0..endpoints_per {
            let v = if j % 2 == 0 { "v1" } else { "v2" };
            s.push_str(&format!(
                "  - {{id: svc-{i}-{j}, address: \"127.0.{}.{}:{}\", version: {v}}}\n",
                i % 250,
                1 + j % 250,
                10000 + j
            ));
        }
        s.push_str("---\n");
    }
    s.push_str(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: svc-0\nspec:\n  service: svc-0\n  backends:\n  - {service: svc-0-v1, weight: 100}\n  - {service: svc-0-v2, weight: 0}\n",
    );
    s
}

pub(crate) async fn start_control(
    dir: &Path,
    yaml: &str,
    heartbeat_ms: Option<u64>,
) -> Result<(Proc, String)> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, yaml)?;
    let _ = std::fs::remove_dir_all(dir.join("state"));
    // For a real sidecar of service `client`, where a suite starts one.
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!("- {{token: {CLIENT_TOKEN}, namespace: default, serviceAccount: client}}\n"),
    )?;
    let p = ControlPlane {
        grpc_addr: "127.0.0.1:0",
        admin_addr: "127.0.0.1:0",
        state_dir: &dir.join("state"),
        config: Some(&file),
        heartbeat_ms,
        log: "warn",
        extra_args: &[
            // One identity stands in for a whole fleet here.
            "--max-registrations-per-identity".into(),
            "1000000".into(),
            "--bootstrap-tokens".into(),
            tokens.display().to_string(),
        ],
    }
    .start(&dir.join("logs"))
    .await?;
    let url = format!("https://{}", p.addr("grpc")?);
    Ok((p, url))
}

/// A channel to the control plane as workload `account` of `default`:
/// credentials issued by the CA in `dir`'s state, as Certify would issue
/// them (the control plane serves no call of a sidecar's without one).
pub(crate) async fn workload_channel(
    dir: &Path,
    url: &str,
    account: &str,
) -> Result<tonic::transport::Channel> {
    let ca = mesh_control::identity::ca::Ca::load_or_create(
        &dir.join("state/ca"),
        None,
        Duration::from_secs(3600),
    )?;
    let creds = dir.join(format!("credentials-{account}"));
    let id = mesh_control::identity::spiffe_id("cluster.local", "default", account);
    mesh_control::mtls::write_credentials(&ca, &id, &creds)?;
    meshctl::client::channel(url, &creds).await
}

/// Results of the large-apply run.
pub(crate) struct LargeApply {
    pub(crate) splits: usize,
    pub(crate) instances: usize,
    pub(crate) apply_ms: f64,
    /// One more split on top of them.
    pub(crate) one_ms: f64,
    pub(crate) beats: usize,
    pub(crate) beat_p50_ms: f64,
    pub(crate) beat_p99_ms: f64,
    pub(crate) beat_max_ms: f64,
}

fn many_splits(first: usize, n: usize) -> pb::RuleFile {
    let mut content = String::new();
    for i in first..first + n {
        content.push_str(&format!(
            "---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: s{i}\nspec:\n  service: s{i}\n  backends:\n  - service: s{i}-v1\n    weight: 1\n"
        ));
    }
    pb::RuleFile {
        filename: format!("splits-{first}.yaml"),
        content,
    }
}

/// Applies `splits` TrafficSplits in one file while `instances` heartbeat
/// every 10 ms, under a 900 ms lease (300 ms beats, as the tests run);
/// fails if any instance's lease lapsed (a version besides the
/// apply's was published).
pub(crate) async fn large_apply(dir: &Path, splits: usize, instances: usize) -> Result<LargeApply> {
    let (mut control, url) = start_control(dir, &mesh_file(1, 1), Some(300)).await?;
    let channel = workload_channel(dir, &url, "beat").await?;
    let beat = |i: usize| pb::HeartbeatRequest {
        node: Some(pb::Node {
            service: "beat".into(),
            version: "v1".into(),
            namespace: "default".into(),
            instance_id: format!("beat-{i}"),
        }),
        address: format!("127.0.0.1:{}", 20000 + i),
        ready: true,
        ..Default::default()
    };
    for i in 0..instances {
        DiscoveryClient::new(channel.clone())
            .heartbeat(beat(i))
            .await?;
    }
    let mut admin = meshctl::client::admin(&control.control()?).await?;
    // Registrations are published at the end of the control plane's batch
    // window: count versions only from once they are.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let routes = admin
            .get_routes(pb::GetRoutesRequest {
                service: "beat".into(),
                namespace: "default".into(),
            })
            .await
            .map(|r| r.into_inner());
        let published = routes.is_ok_and(|r| {
            r.clusters
                .iter()
                .any(|c| c.name == "beat.default" && c.endpoints.len() == instances)
        });
        if published {
            break;
        }
        if tokio::time::Instant::now() > end {
            bail!("the {instances} registrations were never published");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before: u64 = admin
        .proxy_status(pb::ProxyStatusRequest {})
        .await?
        .into_inner()
        .control_version
        .parse()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let beaters: Vec<_> = (0..instances)
        .map(|i| {
            let (mut client, stopped, req) = (
                DiscoveryClient::new(channel.clone()),
                stopped.clone(),
                beat(i),
            );
            tokio::spawn(async move {
                let mut took = Vec::new();
                while !*stopped.borrow() {
                    let t = Instant::now();
                    client.heartbeat(req.clone()).await?;
                    took.push(t.elapsed().as_secs_f64() * 1000.0);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                anyhow::Ok(took)
            })
        })
        .collect();
    let t = Instant::now();
    let resp = admin
        .apply(pb::ApplyRequest {
            files: vec![many_splits(0, splits)],
        })
        .await?
        .into_inner();
    let apply_ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = stop.send(true);
    let mut took = Vec::new();
    for b in beaters {
        took.extend(b.await??);
    }
    if !resp.problems.is_empty() {
        bail!("apply refused: {:?}", &resp.problems[..1]);
    }
    let after: u64 = resp.version.parse()?;
    if after != before + 1 {
        bail!(
            "{} versions published during the apply: leases lapsed",
            after - before
        );
    }
    let t = Instant::now();
    admin
        .apply(pb::ApplyRequest {
            files: vec![many_splits(splits, 1)],
        })
        .await?;
    let one_ms = t.elapsed().as_secs_f64() * 1000.0;
    control.stop(Duration::from_secs(5)).await;
    took.sort_by(f64::total_cmp);
    Ok(LargeApply {
        splits,
        instances,
        apply_ms,
        one_ms,
        beats: took.len(),
        beat_p50_ms: percentile(&took, 50.0),
        beat_p99_ms: percentile(&took, 99.0),
        beat_max_ms: *took.last().unwrap_or(&f64::NAN),
    })
}

/// One response a simulated sidecar applied.
pub(crate) struct Got {
    /// Which subscriber.
    pub(crate) i: usize,
    pub(crate) version: u64,
    /// Its encoded size.
    pub(crate) bytes: usize,
    /// The clusters it carried.
    pub(crate) clusters: Vec<String>,
    /// When its ACK was sent.
    pub(crate) at: Instant,
}

/// Opens `n` subscriptions to every service; every response applied is
/// reported.
pub(crate) async fn subscribe(
    dir: &Path,
    url: &str,
    n: usize,
) -> Result<mpsc::UnboundedReceiver<Got>> {
    subscribe_to(dir, url, n, |_| Vec::new()).await
}

/// Opens `n` subscriptions, subscriber `i` to the services `names(i)`
/// (none: every service); every response applied is reported.
pub(crate) async fn subscribe_to(
    dir: &Path,
    url: &str,
    n: usize,
    names: impl Fn(usize) -> Vec<String>,
) -> Result<mpsc::UnboundedReceiver<Got>> {
    let (report, rx) = mpsc::unbounded_channel();
    for conn in 0..n.div_ceil(STREAMS_PER_CONN) {
        let channel = workload_channel(dir, url, "sim").await?;
        for i in conn * STREAMS_PER_CONN..((conn + 1) * STREAMS_PER_CONN).min(n) {
            let (channel, report, subscribe) = (channel.clone(), report.clone(), names(i));
            tokio::spawn(async move {
                let mut client = DiscoveryClient::new(channel).max_decoding_message_size(64 << 20);
                let (tx, rx) = mpsc::channel(4);
                let node = pb::Node {
                    service: "sim".into(),
                    version: "v1".into(),
                    namespace: "default".into(),
                    instance_id: format!("sim-{i}"),
                };
                tx.send(pb::DiscoveryRequest {
                    node: Some(node),
                    incremental: true,
                    subscribe,
                    ..Default::default()
                })
                .await
                .ok()?;
                let mut stream = client
                    .subscribe(ReceiverStream::new(rx))
                    .await
                    .ok()?
                    .into_inner();
                // As mesh-proxy does: a delta applies only on the version
                // it builds on; anything else is refused (and answered in
                // full). Applying it is the sidecar's own cost, not timed.
                let mut running = String::new();
                while let Ok(Some(resp)) = stream.message().await {
                    let fits = resp.base_version.is_empty() || resp.base_version == running;
                    let reply = pb::DiscoveryRequest {
                        version_info: if fits {
                            resp.version_info.clone()
                        } else {
                            running.clone()
                        },
                        response_nonce: resp.nonce.clone(),
                        error_detail: (!fits).then(|| pb::ErrorDetail {
                            message: format!("delta on {}, running {running}", resp.base_version),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    tx.send(reply).await.ok()?;
                    if fits {
                        running = resp.version_info.clone();
                        let got = Got {
                            i,
                            version: resp.version_info.parse().unwrap_or(0),
                            bytes: prost::Message::encoded_len(&resp),
                            clusters: resp.clusters.into_iter().map(|c| c.name).collect(),
                            at: Instant::now(),
                        };
                        report.send(got).ok()?;
                    }
                }
                Some(())
            });
        }
    }
    Ok(rx)
}

/// Waits until every subscriber reported `version` or newer; returns when the last one did.
pub(crate) async fn all_have(
    rx: &mut mpsc::UnboundedReceiver<Got>,
    n: usize,
    version: u64,
) -> Result<(Instant, Instant)> {
    let mut have = vec![None; n];
    let mut count = 0;
    let end = tokio::time::Instant::now() + DEADLINE;
    while count < n {
        let Ok(Some(got)) = tokio::time::timeout_at(end, rx.recv()).await else {
            bail!("only {count} of {n} subscribers reached version {version}");
        };
        if got.version >= version && have[got.i].is_none() {
            have[got.i] = Some(got.at);
            count += 1;
        }
    }
    let times: Vec<Instant> = have.into_iter().flatten().collect();
    Ok((
        *times.iter().min().expect("n > 0"),
        *times.iter().max().expect("n > 0"),
    ))
}

/// Times `shifts` rule changes fanned out to `n` subscribers.
pub(crate) async fn fanout(dir: &Path, n: usize, shifts: usize) -> Result<Fanout> {
    let (mut control, url) = start_control(dir, &mesh_file(10, 4), None).await?;
    let mut rx = subscribe(dir, &url, n).await?;
    let mut admin = meshctl::client::admin(&control.control()?).await?;
    let initial: u64 = admin
        .proxy_status(pb::ProxyStatusRequest {})
        .await?
        .into_inner()
        .control_version
        .parse()?;
    all_have(&mut rx, n, initial)
        .await
        .context("initial snapshot")?;
    let mut samples = Vec::new();
    let mut firsts = Vec::new();
    for k in 0..shifts {
        let start = Instant::now();
        let resp = admin
            .shift(pb::ShiftRequest {
                service: "svc-0".into(),
                namespace: "default".into(),
                backend: "svc-0-v2".into(),
                percent: (k % 2 * 10 + 10) as u32,
            })
            .await?
            .into_inner();
        let (first, last) = all_have(&mut rx, n, resp.version.parse()?).await?;
        samples.push(last.duration_since(start).as_secs_f64() * 1000.0);
        firsts.push(first.duration_since(start).as_secs_f64() * 1000.0);
    }
    // The control plane saw every ACK too, not just the senders. The last
    // ACKs may still be on the wire when the last sidecar has the version,
    // so wait for them, with a deadline.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let acked = loop {
        let st = admin
            .proxy_status(pb::ProxyStatusRequest {})
            .await?
            .into_inner();
        let acked = st
            .proxies
            .iter()
            .filter(|p| p.acked_version == st.control_version)
            .count();
        if acked == n || Instant::now() > deadline {
            break acked;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    if acked != n {
        bail!("control plane recorded {acked} of {n} ACKs of the last version");
    }
    control.stop(Duration::from_secs(5)).await;
    samples.sort_by(f64::total_cmp);
    firsts.sort_by(f64::total_cmp);
    Ok(Fanout {
        first_p50_ms: percentile(&firsts, 50.0),
        subscribers: n,
        shifts,
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: *samples.last().unwrap_or(&f64::NAN),
    })
}

/// Control-plane memory with `services` × `per` endpoints and `subscribers` streams.
pub(crate) async fn memory(
    dir: &Path,
    services: usize,
    per: usize,
    subscribers: usize,
) -> Result<Memory> {
    let (mut control, url) = start_control(dir, &mesh_file(services, per), None).await?;
    let mut rx = subscribe(dir, &url, subscribers).await?;
    let mut admin = meshctl::client::admin(&control.control()?).await?;
    let version: u64 = admin
        .proxy_status(pb::ProxyStatusRequest {})
        .await?
        .into_inner()
        .control_version
        .parse()?;
    all_have(&mut rx, subscribers, version).await?;
    let (rss, peak) = rss_mib(control.pid().context("control plane running")?);
    control.stop(Duration::from_secs(5)).await;
    Ok(Memory {
        services,
        endpoints: services * per,
        rss_mib: rss,
        peak_mib: peak,
        subscribers,
    })
}
