//! `meshctl release start|pause|resume|promote|abort|rollback|history|status`
//! against a cluster: a release is a Release object (mesh.dev/v1alpha1,
//! named after its service) that mesh-control's leader runs. `start`
//! validates the spec with the control plane's code and writes the object
//! (server-side apply); a command is checked against the release's phase
//! by the same state machine, then written as the object's
//! `mesh.dev/release-command` annotation, which the leader carries out
//! and removes; `status` and `history` read the object's status.

use crate::cli::Output;
use crate::cluster::Cluster;
use crate::release::{Auto, Start, Target};
use anyhow::{Context, Result, bail};
use kube::api::{DynamicObject, Patch, PatchParams};
use mesh_control::release::cluster::{self as objects, COMMAND, REFUSED};
use mesh_control::release::{machine, spec::Spec, views};
use mesh_proto::v1 as pb;
use std::time::{Duration, Instant};

/// How long meshctl waits for the leader to take a start or a command up.
const TAKEN: Duration = Duration::from_secs(10);

fn api(c: &Cluster, namespace: &str) -> kube::Api<DynamicObject> {
    kube::Api::namespaced_with(c.client(), namespace, &objects::resource())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Release object of `namespace/service`, if there is one.
async fn object(c: &Cluster, namespace: &str, service: &str) -> Result<Option<objects::Found>> {
    let got = api(c, namespace)
        .get_opt(service)
        .await
        .with_context(|| format!("reading Release {namespace}/{service}"))?;
    Ok(got.as_ref().map(objects::found))
}

/// The release of `namespace/service` (under way, or its last), as the
/// Admin API would show it; `None` if it never had one.
pub async fn fetch(
    c: &Cluster,
    namespace: &str,
    service: &str,
) -> Result<Option<pb::ReleaseResponse>> {
    let found = object(c, namespace, service).await?;
    Ok(found
        .and_then(|f| f.status.record)
        .map(|r| views::response(&r, None, now_ms())))
}

/// Runs one of the automated release's commands against the cluster.
pub async fn run(c: &Cluster, auto: Auto) -> Result<()> {
    let (found, output) = match auto {
        Auto::Start(start) => (self::start(c, &start).await?, start.output),
        Auto::History { target, output } => {
            let f = object(c, &target.namespace, &target.service).await?;
            let records = f.map(|f| {
                let mut all = f.status.history;
                all.extend(f.status.record);
                all.reverse();
                all
            });
            let resp = pb::ReleaseHistoryResponse {
                releases: records
                    .unwrap_or_default()
                    .iter()
                    .map(views::release)
                    .collect(),
            };
            print!("{}", crate::release::render_history(&resp, output)?);
            return Ok(());
        }
        Auto::Pause(t) => (command(c, &t, "pause").await?, Output::Table),
        Auto::Resume(t) => (command(c, &t, "resume").await?, Output::Table),
        Auto::Promote { target, full } => {
            let action = if full { "promote-full" } else { "promote" };
            (command(c, &target, action).await?, Output::Table)
        }
        Auto::Abort(t) => (command(c, &t, "abort").await?, Output::Table),
        Auto::Rollback(t) => (command(c, &t, "rollback").await?, Output::Table),
    };
    let record = found
        .status
        .record
        .context("the Release has no record yet: is mesh-control running?")?;
    let resp = views::response(&record, None, now_ms());
    print!("{}", crate::release::render(&resp, output)?);
    Ok(())
}

/// Validates the spec, writes the object, and waits for the leader to
/// start (or refuse) its generation.
async fn start(c: &Cluster, start: &Start) -> Result<objects::Found> {
    let request = start.request()?;
    let spec = match (&request.spec, &request.file) {
        (_, Some(f)) => Spec::from_file(&f.filename, &f.content),
        (Some(s), None) => Spec::from_proto(s),
        (None, None) => bail!("give a service and --canary, or -f"),
    };
    let spec = spec.map_err(|problems| {
        eprint!("{}", crate::cluster::render(&problems));
        anyhow::anyhow!(
            "the release did not start ({} problem{}); nothing was written to {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            c.describe()
        )
    })?;
    let (namespace, service) = (spec.namespace.clone(), spec.service.clone());
    if let Some(f) = object(c, &namespace, &service).await?
        && let Some(r) = f.status.record.filter(|r| !r.phase.finished())
    {
        bail!(
            "a release of {namespace}/{service} is already {}; abort or finish it first",
            r.phase.as_str()
        );
    }
    let params = PatchParams::apply("meshctl").force();
    let stored = api(c, &namespace)
        .patch(&service, &params, &Patch::Apply(objects::manifest(&spec)))
        .await
        .with_context(|| format!("writing Release {namespace}/{service}"))?;
    let generation = stored.metadata.generation.unwrap_or(0);
    let end = Instant::now() + TAKEN;
    while Instant::now() < end {
        if let Some(f) = object(c, &namespace, &service).await?
            && f.status.observed_generation == Some(generation)
        {
            if f.status.phase == REFUSED {
                bail!("the release did not start: {}", f.status.reason);
            }
            // Started once its first weight is in the TrafficSplit (or
            // status says why it is not yet).
            if f.status
                .record
                .as_ref()
                .is_some_and(|r| !r.pending || !r.blocked.is_empty())
            {
                return Ok(f);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "Release {namespace}/{service} generation {generation} is stored, but no control plane started it within {TAKEN:?}: is mesh-control running?"
    )
}

/// Checks `action` against the release's phase, writes it, and waits for
/// the leader to carry it out.
async fn command(c: &Cluster, t: &Target, action: &str) -> Result<objects::Found> {
    let (namespace, service) = (&t.namespace, &t.service);
    let missing = || anyhow::anyhow!("no release of {namespace}/{service} under way");
    let f = object(c, namespace, service).await?.ok_or_else(missing)?;
    let mut record = f
        .status
        .record
        .filter(|r| !r.phase.finished())
        .ok_or_else(missing)?;
    let parsed = machine::Command::parse(action).context("a known action")?;
    // The leader runs the same transition; refused here, nothing is written.
    record.command(now_ms(), parsed, "meshctl")?;
    let patch = serde_json::json!({"metadata": {"annotations": {COMMAND: action}}});
    api(c, namespace)
        .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("writing the command to Release {namespace}/{service}"))?;
    let end = Instant::now() + TAKEN;
    while Instant::now() < end {
        let f = object(c, namespace, service).await?.ok_or_else(missing)?;
        if f.command.is_none() {
            return Ok(f);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the {action} command is written to Release {namespace}/{service}, but no control plane carried it out within {TAKEN:?}: is mesh-control running?"
    )
}
