//! The release controller's rollback, timed on the demo mesh (echo v1 ×2,
//! v2, a client: four real sidecars): from the rollback command (the
//! transition a failed check makes, persisted, then one push) until every
//! sidecar runs the config with all traffic on the stable.

use anyhow::{Context, Result, ensure};
use mesh_proto::v1 as pb;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One run's figures.
pub(crate) struct Rollback {
    pub(crate) rounds: usize,
    pub(crate) sidecars: usize,
    pub(crate) p50_ms: f64,
    pub(crate) max_ms: f64,
}

/// The config version the sidecar at `admin` runs.
async fn version(admin: SocketAddr) -> Result<u64> {
    let (_, body) = meshctl::traffic::get(admin, "/config_dump").await?;
    let dump: serde_json::Value = serde_json::from_str(&body)?;
    Ok(dump["version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Waits (bounded) until every sidecar runs a version after `before`.
async fn all_past(admins: &[SocketAddr], before: u64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    for a in admins {
        while version(*a).await? <= before {
            ensure!(Instant::now() < end, "sidecar {a} never got past {before}");
            // The poll's own granularity, not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// `rounds` releases started and rolled back.
pub(crate) async fn rollback(dir: &Path, rounds: usize) -> Result<Rollback> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, meshctl::demo::DEMO_MESH)?;
    let mesh = meshctl::up::Mesh::start(&meshctl::up::Options {
        file,
        state_dir: None,
        grpc_addr: meshctl::up::DEFAULT_GRPC.into(),
        admin_addr: "127.0.0.1:0".into(),
        log_dir: dir.to_path_buf(),
    })
    .await?;
    let control = mesh.control()?;
    let mut admin = meshctl::client::admin(&control).await?;
    let admins: Vec<SocketAddr> = mesh
        .replicas
        .iter()
        .map(|r| r.sidecar.addr("admin"))
        .collect::<Result<_>>()?;
    let spec = pb::ReleaseSpec {
        service: "echo".into(),
        namespace: "default".into(),
        canary: "echo-v2".into(),
        steps: vec![50, 100],
        // No check comes due: only the rollback moves it.
        interval_ms: 600_000,
        ..Default::default()
    };
    let current = |st: pb::ReleaseStatusResponse| st.version.parse::<u64>().unwrap_or(0);
    let status = pb::ReleaseStatusRequest {
        service: "echo".into(),
        namespace: "default".into(),
    };
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        admin
            .start_release(pb::StartReleaseRequest {
                spec: Some(spec.clone()),
                file: None,
            })
            .await
            .context("starting a release")?;
        let started = current(admin.release_status(status.clone()).await?.into_inner());
        all_past(&admins, started - 1).await?;
        let t0 = Instant::now();
        admin
            .control_release(pb::ControlReleaseRequest {
                service: "echo".into(),
                namespace: "default".into(),
                action: "rollback".into(),
            })
            .await
            .context("rolling back")?;
        all_past(&admins, started).await?;
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        let st = admin.release_status(status.clone()).await?.into_inner();
        let v2 = st.backends.iter().find(|b| b.service == "echo-v2");
        ensure!(
            v2.is_some_and(|b| b.weight == 0),
            "rolled back, yet echo-v2 keeps weight: {:?}",
            st.backends
        );
    }
    mesh.shutdown().await;
    took.sort_by(f64::total_cmp);
    Ok(Rollback {
        rounds,
        sidecars: admins.len(),
        p50_ms: took[took.len() / 2],
        max_ms: *took.last().context("at least one round")?,
    })
}
