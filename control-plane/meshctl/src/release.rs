//! `meshctl release start|pause|resume|promote|abort|rollback|history` and
//! the automated release in `release status` (with `--watch`): thin over
//! the Admin API's release calls.

use crate::cli::{self, Output, render_problems};
use crate::client::{Control, admin, explain};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mesh_proto::v1 as pb;
use serde_json::json;
use std::path::PathBuf;

/// The automated release's commands.
#[derive(Subcommand)]
pub enum Auto {
    /// Start an automated release: the canary's weight moves step by step
    /// while its own traffic passes the analysis, and returns to the stable
    /// at once when it fails.
    Start(Box<Start>),
    /// Hold the release at its step: no checks, no moves.
    Pause(Target),
    /// Go on from the step the release was paused at.
    Resume(Target),
    /// Move to the next step now (at the last step, promote).
    Promote {
        /// Whose release.
        #[command(flatten)]
        target: Target,
        /// All traffic to the canary now.
        #[arg(long)]
        full: bool,
    },
    /// Stop the release: all traffic back to the stable.
    Abort(Target),
    /// Fail the release by hand: all traffic back to the stable.
    Rollback(Target),
    /// Past releases of a service: outcome, duration, reason.
    History {
        /// Whose release.
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// One service's release.
#[derive(Args)]
pub struct Target {
    /// Service.
    pub service: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

/// `release start`'s flags.
#[derive(Args)]
pub struct Start {
    /// Service whose split moves (or give -f).
    #[arg(required_unless_present = "file")]
    service: Option<String>,
    /// A Release document (mesh.dev/v1alpha1) instead of flags.
    #[arg(short, long, conflicts_with_all = ["service", "canary"])]
    file: Option<PathBuf>,
    /// Backend being released.
    #[arg(long, required_unless_present = "file")]
    canary: Option<String>,
    /// Backend keeping the traffic (default: the split's other backend).
    #[arg(long)]
    stable: Option<String>,
    /// Canary weights in percent, ascending (default 5,10,25,50,100).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<u32>,
    /// Or steps of this many percent ...
    #[arg(long)]
    step_weight: Option<u32>,
    /// ... up to this one.
    #[arg(long)]
    max_weight: Option<u32>,
    /// Time at each step before its check (default 30s).
    #[arg(long)]
    interval: Option<String>,
    /// Least canary success rate, percent (default 99).
    #[arg(long)]
    success_rate: Option<f64>,
    /// Most canary p99 (default 500ms).
    #[arg(long)]
    p99: Option<String>,
    /// Least canary requests in a step's window (default 20).
    #[arg(long)]
    min_requests: Option<u64>,
    /// Failed checks in a row that roll back (default 2).
    #[arg(long)]
    failure_threshold: Option<u32>,
    /// No progress for this long rolls back (default 10m).
    #[arg(long)]
    progress_deadline: Option<String>,
    /// Most success-rate points the canary may trail the stable by.
    #[arg(long)]
    max_success_gap: Option<f64>,
    /// Most canary p99 / stable p99.
    #[arg(long)]
    max_p99_ratio: Option<f64>,
    /// Wait at the last step for `release promote`.
    #[arg(long)]
    manual_promotion: bool,
    /// A hook, TYPE=URL: pre-rollout, rollout, confirm-promotion,
    /// post-rollout or rollback (5 s timeout, 2 retries; -f for more).
    #[arg(long = "webhook", value_name = "TYPE=URL")]
    webhooks: Vec<String>,
    /// Do not retry the canary's failures on the stable while it runs.
    #[arg(long)]
    no_shield: bool,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub(crate) output: Output,
}

fn ms(flag: &str, d: &Option<String>) -> Result<Option<u64>> {
    d.as_deref()
        .map(mesh_control::manifest::meta::duration_ms)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--{flag} {e}"))
}

impl Start {
    pub(crate) fn request(&self) -> Result<pb::StartReleaseRequest> {
        if let Some(path) = &self.file {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(pb::StartReleaseRequest {
                spec: None,
                file: Some(pb::RuleFile {
                    filename: path.display().to_string(),
                    content,
                }),
            });
        }
        let spec = pb::ReleaseSpec {
            service: self.service.clone().unwrap_or_default(),
            namespace: self.namespace.clone(),
            stable: self.stable.clone().unwrap_or_default(),
            canary: self.canary.clone().unwrap_or_default(),
            steps: self.steps.clone(),
            step_weight: self.step_weight.unwrap_or(0),
            max_weight: self.max_weight.unwrap_or(0),
            interval_ms: ms("interval", &self.interval)?.unwrap_or(0),
            success_rate: self.success_rate,
            p99_ms: ms("p99", &self.p99)?.map(|v| v as f64),
            min_requests: self.min_requests,
            failure_threshold: self.failure_threshold,
            progress_deadline_ms: ms("progress-deadline", &self.progress_deadline)?,
            max_success_gap: self.max_success_gap,
            max_p99_ratio: self.max_p99_ratio,
            manual_promotion: self.manual_promotion,
            shield: Some(!self.no_shield),
            webhooks: self
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let (kind, url) = w
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--webhook {w:?}: write TYPE=URL"))?;
                    Ok(pb::ReleaseWebhook {
                        name: format!("{kind}-{}", i + 1),
                        r#type: kind.into(),
                        url: url.into(),
                        ..Default::default()
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok(pb::StartReleaseRequest {
            spec: Some(spec),
            file: None,
        })
    }
}

/// Runs one of the automated release's commands.
pub async fn run(control: &Control, auto: Auto) -> Result<()> {
    let mut client = admin(control).await?;
    let (resp, output) = match auto {
        Auto::Start(start) => {
            let resp = client
                .start_release(start.request()?)
                .await
                .map_err(|s| explain(s).context("the release did not start"))?
                .into_inner();
            if !resp.problems.is_empty() {
                eprint!("{}", render_problems(&resp.problems));
                bail!(
                    "the release did not start ({} problem{})",
                    resp.problems.len(),
                    if resp.problems.len() == 1 { "" } else { "s" }
                );
            }
            (resp, start.output)
        }
        Auto::History { target, output } => {
            let resp = client
                .release_history(get(&target))
                .await
                .map_err(explain)?
                .into_inner();
            print!("{}", render_history(&resp, output)?);
            return Ok(());
        }
        Auto::Pause(t) => (command(&mut client, &t, "pause").await?, Output::Table),
        Auto::Resume(t) => (command(&mut client, &t, "resume").await?, Output::Table),
        Auto::Promote { target, full } => {
            let action = if full { "promote-full" } else { "promote" };
            (command(&mut client, &target, action).await?, Output::Table)
        }
        Auto::Abort(t) => (command(&mut client, &t, "abort").await?, Output::Table),
        Auto::Rollback(t) => (command(&mut client, &t, "rollback").await?, Output::Table),
    };
    print!("{}", render(&resp, output)?);
    Ok(())
}

fn get(t: &Target) -> pb::GetReleaseRequest {
    pb::GetReleaseRequest {
        service: t.service.clone(),
        namespace: t.namespace.clone(),
    }
}

async fn command(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    t: &Target,
    action: &str,
) -> Result<pb::ReleaseResponse> {
    Ok(client
        .control_release(pb::ControlReleaseRequest {
            service: t.service.clone(),
            namespace: t.namespace.clone(),
            action: action.into(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

/// The service's release (under way, or its last), `None` if it never had one.
pub async fn fetch(
    control: &Control,
    namespace: &str,
    service: &str,
) -> Result<Option<pb::ReleaseResponse>> {
    let got = admin(control)
        .await?
        .get_release(pb::GetReleaseRequest {
            service: service.into(),
            namespace: namespace.into(),
        })
        .await;
    match got {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(explain(s)),
    }
}

/// Whether a phase is final.
pub fn finished(phase: &str) -> bool {
    matches!(phase, "Promoted" | "RolledBack" | "Aborted")
}

fn sample_json(s: &Option<pb::ReleaseSample>) -> serde_json::Value {
    let s = s.unwrap_or_default();
    json!({"requests": s.requests, "failures": s.failures, "successRate": s.success_rate, "p99Ms": s.p99_ms})
}

fn check_json(c: &pb::ReleaseCheck) -> serde_json::Value {
    json!({
        "atUnixMs": c.at_unix_ms, "canaryWeight": c.canary_weight, "outcome": c.outcome,
        "detail": c.detail, "windowMs": c.window_ms,
        "canary": sample_json(&c.canary), "stable": sample_json(&c.stable),
    })
}

fn release_json(r: &pb::Release) -> serde_json::Value {
    let s = r.spec.clone().unwrap_or_default();
    json!({
        "id": r.id, "service": s.service, "namespace": s.namespace,
        "stable": s.stable, "canary": s.canary, "phase": r.phase, "reason": r.reason,
        "step": r.step + 1, "steps": r.steps, "canaryWeight": r.canary_weight,
        "intervalMs": s.interval_ms, "successRate": s.success_rate, "p99Ms": s.p99_ms,
        "minRequests": s.min_requests, "failureThreshold": s.failure_threshold,
        "failedChecks": r.failed_checks,
        "startedUnixMs": r.started_unix_ms, "finishedUnixMs": r.finished_unix_ms,
        "nextCheckUnixMs": r.next_check_unix_ms,
        "blocked": r.blocked,
        "checks": r.checks.iter().map(check_json).collect::<Vec<_>>(),
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}%"))
}

fn millis(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

fn ago(now: u64, at: u64) -> String {
    format!("{:.0}s ago", now.saturating_sub(at) as f64 / 1000.0)
}

/// One release and its current window, as JSON.
pub(crate) fn response_json(resp: &pb::ReleaseResponse) -> serde_json::Value {
    let mut v = release_json(&resp.release.clone().unwrap_or_default());
    v["current"] = resp
        .current
        .as_ref()
        .map_or(serde_json::Value::Null, check_json);
    v
}

/// `release status`: the weights, then the release under way (or the
/// last one), as one document with `-o json`.
pub async fn status(
    control: &Control,
    namespace: &str,
    service: &str,
    output: Output,
) -> Result<()> {
    // The release first: one that ended has its weights in force, so the
    // weights read after it are never older than it.
    let release = fetch(control, namespace, service).await?;
    let st = cli::status(control, namespace, service).await?;
    print_status(&st, release, output)
}

/// The weights, then the release, as `release status` shows them.
pub fn print_status(
    st: &pb::ReleaseStatusResponse,
    release: Option<pb::ReleaseResponse>,
    output: Output,
) -> Result<()> {
    if output == Output::Json {
        let mut v = cli::status_json(st);
        v["release"] = release
            .as_ref()
            .map_or(serde_json::Value::Null, response_json);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    cli::print_status(st, output)?;
    if let Some(r) = release {
        print!("{}", render(&r, output)?);
    }
    Ok(())
}

/// Renders one release.
pub fn render(resp: &pb::ReleaseResponse, output: Output) -> Result<String> {
    let r = resp.release.clone().unwrap_or_default();
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&response_json(resp))? + "\n");
    }
    let s = r.spec.clone().unwrap_or_default();
    let now = resp.now_unix_ms;
    let mut out = format!(
        "release {} of {}/{}: {} at step {} of {} ({} {}%, {} {}%)\n  {}\n",
        r.id,
        s.namespace,
        s.service,
        r.phase,
        r.step + 1,
        r.steps.len(),
        s.canary,
        r.canary_weight,
        s.stable,
        100 - r.canary_weight.min(100),
        r.reason
    );
    if !r.blocked.is_empty() {
        out += &format!("  weights not applied yet: {}\n", r.blocked);
    }
    if let Some(c) = &resp.current {
        let next = r.next_check_unix_ms.saturating_sub(now) as f64 / 1000.0;
        out += &format!(
            "  window so far {:.0}s, next check in {next:.0}s; thresholds: success rate ≥ {}, p99 ≤ {}, ≥ {} canary requests\n",
            c.window_ms as f64 / 1000.0,
            pct(s.success_rate),
            millis(s.p99_ms),
            s.min_requests.unwrap_or(0)
        );
        for (who, x) in [("canary", &c.canary), ("stable", &c.stable)] {
            let x = x.unwrap_or_default();
            out += &format!(
                "    {who:<7} {:>7} requests  success {:>7}  p99 {:>8}\n",
                x.requests,
                pct(x.success_rate),
                millis(x.p99_ms)
            );
        }
    }
    if !r.checks.is_empty() {
        out += "  checks:\n";
        for c in &r.checks {
            out += &format!(
                "    {:>8}  {:>3}%  {:<16} {}\n",
                ago(now, c.at_unix_ms),
                c.canary_weight,
                c.outcome,
                c.detail
            );
        }
    }
    Ok(out)
}

pub(crate) fn render_history(resp: &pb::ReleaseHistoryResponse, output: Output) -> Result<String> {
    if output == Output::Json {
        let all: Vec<_> = resp.releases.iter().map(release_json).collect();
        return Ok(serde_json::to_string_pretty(&all)? + "\n");
    }
    let mut out = String::from("ID  OUTCOME              DURATION  CANARY          REASON\n");
    for r in &resp.releases {
        let s = r.spec.clone().unwrap_or_default();
        let end = if r.finished_unix_ms == 0 {
            r.updated_unix_ms
        } else {
            r.finished_unix_ms
        };
        out += &format!(
            "{:<3} {:<20} {:>7.0}s  {:<15} {}\n",
            r.id,
            r.phase,
            end.saturating_sub(r.started_unix_ms) as f64 / 1000.0,
            s.canary,
            r.reason
        );
    }
    Ok(out)
}

/// `release status --watch`: the release redrawn as it moves, until it ends.
pub async fn watch(
    control: &Control,
    namespace: &str,
    service: &str,
    output: Output,
) -> Result<()> {
    watch_with(
        || fetch(control, namespace, service),
        namespace,
        service,
        output,
    )
    .await
}

/// The same over any source of the release: the admin API, or the
/// Release object in a cluster.
pub async fn watch_with<F, Fut>(
    mut fetch: F,
    namespace: &str,
    service: &str,
    output: Output,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<pb::ReleaseResponse>>>,
{
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos:>3}% canary  {msg}")
            .context("progress template")?,
    );
    let mut last = None;
    loop {
        let Some(resp) = fetch().await? else {
            bail!("no release of {namespace}/{service}");
        };
        let r = resp.release.clone().unwrap_or_default();
        bar.set_position(u64::from(r.canary_weight));
        bar.set_message(format!("{}: {}", r.phase, r.reason));
        // Without a terminal the bar is hidden: a line per change instead.
        let seen = (r.phase.clone(), r.canary_weight, r.checks.len());
        if last.as_ref() != Some(&seen) {
            bar.suspend(|| print!("{}", render(&resp, output).unwrap_or_default()));
            last = Some(seen);
        }
        if finished(&r.phase) {
            bar.finish_and_clear();
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
