//! The admin subcommands: apply, get splits, release shift/status and
//! proxy-status, with output for people (tables) and machines (`-o json`).

use crate::client::{admin, explain};
use anyhow::{Context, Result, bail};
use mesh_proto::v1 as pb;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text.
    Table,
    /// JSON.
    Json,
}

/// Reads rule files: each path is a file, or a directory of `*.yaml`/`*.yml`.
pub fn read_rule_files(paths: &[PathBuf]) -> Result<Vec<pb::RuleFile>> {
    let mut files = Vec::new();
    for p in paths {
        let mut add = |path: &Path| -> Result<()> {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            files.push(pb::RuleFile {
                filename: path.display().to_string(),
                content,
            });
            Ok(())
        };
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            entries.sort();
            for e in entries {
                add(&e)?;
            }
        } else {
            add(p)?;
        }
    }
    if files.is_empty() {
        bail!("no rule files found in {paths:?}");
    }
    check_size(&files)?;
    Ok(files)
}

/// Refuses, before sending, a set of files larger than one apply carries,
/// naming the largest.
fn check_size(files: &[pb::RuleFile]) -> Result<()> {
    let total: usize = files.iter().map(|f| f.content.len()).sum();
    if total <= mesh_proto::MAX_APPLY_BYTES {
        return Ok(());
    }
    let mib = |n: usize| n as f64 / (1 << 20) as f64;
    let mut largest: Vec<&pb::RuleFile> = files.iter().collect();
    largest.sort_by_key(|f| std::cmp::Reverse(f.content.len()));
    let named: Vec<String> = largest
        .iter()
        .take(3)
        .map(|f| format!("{} ({:.1} MiB)", f.filename, mib(f.content.len())))
        .collect();
    bail!(
        "{}: {:.1} MiB of rules is more than the {:.0} MiB one apply takes; apply them in parts",
        named.join(", "),
        mib(total),
        mib(mesh_proto::MAX_APPLY_BYTES)
    )
}

/// `meshctl apply -f ...`
pub async fn apply(control: &crate::client::Control, paths: &[PathBuf]) -> Result<()> {
    let files = read_rule_files(paths)?;
    let resp = admin(control)
        .await?
        .apply(pb::ApplyRequest { files })
        .await
        .map_err(|s| explain(s).context("rules rejected; nothing was applied"))?
        .into_inner();
    report(resp, "applied")
}

/// `meshctl delete -f ...` or `meshctl delete <kind> <name>`.
pub async fn delete(
    control: &crate::client::Control,
    paths: &[PathBuf],
    kind: Option<String>,
    name: Option<String>,
    namespace: &str,
) -> Result<()> {
    let files = if paths.is_empty() {
        Vec::new()
    } else {
        read_rule_files(paths)?
    };
    let resp = admin(control)
        .await?
        .delete(pb::DeleteRequest {
            files,
            kind: kind.unwrap_or_default(),
            name: name.unwrap_or_default(),
            namespace: namespace.into(),
        })
        .await
        .map_err(|s| explain(s).context("nothing was deleted"))?
        .into_inner();
    report(resp, "deleted")
}

/// Prints what an apply or delete did; a refusal prints every problem,
/// grouped by file with a count, and fails.
fn report(resp: pb::ApplyResponse, what: &str) -> Result<()> {
    if !resp.problems.is_empty() {
        eprint!("{}", render_problems(&resp.problems));
        bail!(
            "rules rejected; nothing was {what} ({} problem{} in {} file{})",
            resp.problems.len(),
            if resp.problems.len() == 1 { "" } else { "s" },
            files_in(&resp.problems),
            if files_in(&resp.problems) == 1 {
                ""
            } else {
                "s"
            },
        );
    }
    for r in &resp.results {
        println!("{r}");
    }
    for w in &resp.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn files_in(problems: &[pb::Problem]) -> usize {
    let mut files: Vec<&str> = problems.iter().map(|p| p.file.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    files.len()
}

/// Every problem, one per line as "file:line: object: field: problem",
/// under a heading per file (in the order files first appear) with its count.
pub fn render_problems(problems: &[pb::Problem]) -> String {
    let mut order: Vec<&str> = Vec::new();
    for p in problems {
        if !order.contains(&p.file.as_str()) {
            order.push(&p.file);
        }
    }
    let mut out = String::new();
    for file in order {
        let mine: Vec<&pb::Problem> = problems.iter().filter(|p| p.file == file).collect();
        out.push_str(&format!(
            "{file}: {} problem{}\n",
            mine.len(),
            if mine.len() == 1 { "" } else { "s" }
        ));
        for p in mine {
            let mut line = p.file.clone();
            if p.line > 0 {
                line.push_str(&format!(":{}", p.line));
            }
            for part in [&p.object, &p.field] {
                if !part.is_empty() {
                    line.push_str(&format!(": {part}"));
                }
            }
            out.push_str(&format!("  {line}: {}\n", p.problem));
        }
    }
    out
}

fn split_json(s: &pb::Split) -> serde_json::Value {
    json!({
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "service": s.service,
            "backends": s.backends.iter().map(|b| json!({"service": b.service, "weight": b.weight})).collect::<Vec<_>>(),
        }
    })
}

/// `meshctl get splits`
pub async fn get_splits(
    control: &crate::client::Control,
    namespace: &str,
    output: Output,
) -> Result<()> {
    let resp = admin(control)
        .await?
        .get_splits(pb::GetSplitsRequest {
            namespace: namespace.into(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    print_splits(&resp, output)
}

/// Prints splits as `get splits` shows them, from a local control plane
/// or a cluster.
pub fn print_splits(resp: &pb::GetSplitsResponse, output: Output) -> Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"version": resp.version, "items": resp.splits.iter().map(split_json).collect::<Vec<_>>()})
            )?
        ),
        Output::Table => {
            println!(
                "{:<12} {:<16} {:<16} BACKENDS",
                "NAMESPACE", "NAME", "SERVICE"
            );
            for s in &resp.splits {
                let backends: Vec<String> = s
                    .backends
                    .iter()
                    .map(|b| format!("{}={}", b.service, b.weight))
                    .collect();
                println!(
                    "{:<12} {:<16} {:<16} {}",
                    s.namespace,
                    s.name,
                    s.service,
                    backends.join(" ")
                );
            }
        }
    }
    Ok(())
}

/// `meshctl release shift`; returns the new config version.
pub async fn shift(
    control: &crate::client::Control,
    namespace: &str,
    service: &str,
    backend: &str,
    percent: u32,
) -> Result<u64> {
    let resp = admin(control)
        .await?
        .shift(pb::ShiftRequest {
            service: service.into(),
            namespace: namespace.into(),
            backend: backend.into(),
            percent,
        })
        .await
        .map_err(explain)?
        .into_inner();
    for w in &resp.warnings {
        eprintln!("warning: {w}");
    }
    resp.version
        .parse()
        .context("control plane returned a bad version")
}

/// Prints the result of a shift.
pub fn print_shift(service: &str, split: &[(String, u32)]) {
    let parts: Vec<String> = split.iter().map(|(b, w)| format!("{b} {w}%")).collect();
    println!("{service}: {}", parts.join(", "));
}

/// Fetches `release status`.
pub async fn status(
    control: &crate::client::Control,
    namespace: &str,
    service: &str,
) -> Result<pb::ReleaseStatusResponse> {
    Ok(admin(control)
        .await?
        .release_status(pb::ReleaseStatusRequest {
            service: service.into(),
            namespace: namespace.into(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

/// Prints `release status`, from a local control plane or a cluster.
pub fn print_status(st: &pb::ReleaseStatusResponse, output: Output) -> Result<()> {
    print!("{}", render_status(st, output)?);
    if output == Output::Json {
        println!();
    }
    Ok(())
}

/// `release status` as JSON: the weights and endpoints per backend.
pub fn status_json(st: &pb::ReleaseStatusResponse) -> serde_json::Value {
    let backends: Vec<_> = st
        .backends
        .iter()
        .map(|b| {
            json!({
                "service": b.service,
                "weight": b.weight,
                "effectivePercent": b.effective_percent,
                "readyEndpoints": b.endpoints.iter().filter(|e| e.ready).count(),
                "endpoints": b.endpoints.iter().map(|e| json!({"instance": e.instance_id, "address": e.address, "ready": e.ready})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "service": st.service,
        "namespace": st.namespace,
        "hasSplit": st.has_split,
        "routedBy": st.routed_by,
        "configVersion": st.version,
        "backends": backends,
        "warnings": st.warnings,
    })
}

/// Renders `release status`.
pub fn render_status(st: &pb::ReleaseStatusResponse, output: Output) -> Result<String> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&status_json(st))?);
    }
    let mut out = format!(
        "service {}/{} ({}; config version {})\n",
        st.namespace,
        st.service,
        if st.has_split {
            format!("routed by {}", st.routed_by)
        } else {
            "nothing routes it: it routes to itself".to_string()
        },
        st.version
    );
    out.push_str(&format!(
        "{:<18} {:>6} {:>8}  {:<7}  ENDPOINTS\n",
        "BACKEND", "WEIGHT", "SHARE", "READY"
    ));
    for b in &st.backends {
        let ready = b.endpoints.iter().filter(|e| e.ready).count();
        let eps: Vec<String> = b
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{}@{}{}",
                    e.instance_id,
                    e.address,
                    if e.ready { "" } else { " (unready)" }
                )
            })
            .collect();
        out.push_str(&format!(
            "{:<18} {:>6} {:>7.1}%  {:<7}  {}\n",
            b.service,
            b.weight,
            b.effective_percent,
            format!("{ready}/{}", b.endpoints.len()),
            if eps.is_empty() {
                "-".into()
            } else {
                eps.join(", ")
            }
        ));
    }
    for w in &st.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    Ok(out)
}

/// `meshctl proxy-status`
pub async fn proxy_status(control: &crate::client::Control, output: Output) -> Result<()> {
    let resp = admin(control)
        .await?
        .proxy_status(pb::ProxyStatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    if output == Output::Json {
        let proxies: Vec<_> = resp
            .proxies
            .iter()
            .map(|p| {
                json!({"service": p.service, "version": p.version, "namespace": p.namespace, "instance": p.instance_id,
                       "ackedVersion": p.acked_version, "nackedVersion": p.nacked_version, "nackReason": p.nack_reason,
                       "lastPushMs": p.last_push_ms, "lastSeenMsAgo": p.last_seen_ms_ago})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"controlVersion": resp.control_version, "proxies": proxies})
            )?
        );
        return Ok(());
    }
    println!("control plane config version {}", resp.control_version);
    println!(
        "{:<18} {:<12} {:<8} {:<16} {:<10} {:<10} STATUS",
        "INSTANCE", "SERVICE", "VERSION", "ACKED", "PUSH", "SEEN"
    );
    for p in &resp.proxies {
        let status = if !p.nack_reason.is_empty() {
            format!("REJECTED {}: {}", p.nacked_version, p.nack_reason)
        } else if p.acked_version == resp.control_version {
            "SYNCED".into()
        } else {
            "STALE".into()
        };
        let push = p
            .last_push_ms
            .map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
        let seen = format!("{:.1}s ago", p.last_seen_ms_ago as f64 / 1000.0);
        println!(
            "{:<18} {:<12} {:<8} {:<16} {push:<10} {seen:<10} {status}",
            p.instance_id, p.service, p.version, p.acked_version
        );
    }
    Ok(())
}
