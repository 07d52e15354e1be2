//! Heap allocations per proxied request, counted by DHAT (valgrind's
//! counting allocator, which replaces malloc and records the call stack of
//! every block): the client-side sidecar of a plaintext pair serves a short
//! and a long fixed-rate HTTP/1.1 run, one connection, each in its own
//! lifetime, and the difference in blocks over the difference in requests
//! is what one request allocates in steady state (start-up, the first
//! connection and shutdown cancel out). Each allocation is charged to the
//! innermost crate on its stack that is not the allocator or the standard
//! library, so the report tells our code's allocations from hyper's, h2's
//! or tokio's, and names our own sites.

use crate::instructions::{Load, RATE, under_valgrind};
use crate::report;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Blocks allocated, by call stack (frames without their addresses).
type Sites = BTreeMap<Vec<String>, u64>;

/// Functions of the allocator itself, skipped when charging an allocation.
const ALLOCATOR: [&str; 5] = ["malloc", "realloc", "calloc", "memalign", "[root]"];

/// The crate a frame's code belongs to, by its source path (release builds
/// carry line tables, whose inlined frames have a file but no name), or
/// None for the allocator and the standard library.
fn crate_of(frame: &str) -> Option<String> {
    let (name, place) = frame
        .rsplit_once(" (")
        .map_or((frame, ""), |(n, p)| (n, p.trim_end_matches(')')));
    let name = name.trim_start_matches('<');
    if ALLOCATOR.iter().any(|a| name.starts_with(a)) || place.starts_with("vg_") {
        return None;
    }
    if place.contains("/library/") || place.contains("/rustc/") {
        return None;
    }
    if place.contains("/data-plane/src/") {
        return Some("mesh_proxy".into());
    }
    if let Some((_, rest)) = place.split_once("/registry/src/") {
        // index-…/hyper-1.12.0/src/…: the crate is the directory, less its version.
        let dir = rest.split('/').nth(1).unwrap_or(rest);
        let krate = dir
            .rsplit_once('-')
            .filter(|(_, v)| v.starts_with(|c: char| c.is_ascii_digit()))
            .map_or(dir, |(k, _)| k);
        return Some(krate.replace('-', "_"));
    }
    // No line table: the symbol says whose code it is.
    let krate = name.split("::").next().unwrap_or(name);
    (!["alloc", "core", "std", "hashbrown", "UnknownInlinedFun"].contains(&krate))
        .then(|| krate.split(' ').next().unwrap_or(krate).to_string())
}

/// The blocks each call stack allocated, read from a DHAT output file.
fn sites(file: &Path) -> Result<Sites> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let table: Vec<String> = v["ftbl"]
        .as_array()
        .context("DHAT output has a frame table")?
        .iter()
        .map(|f| {
            let f = f.as_str().unwrap_or_default();
            // "0x4A1B2C: name (file.rs:12)": the address differs run to run.
            f.split_once(": ").map_or(f, |(_, rest)| rest).to_string()
        })
        .collect();
    let mut out = Sites::new();
    for pp in v["pps"]
        .as_array()
        .context("DHAT output has program points")?
    {
        let blocks = pp["tbk"].as_u64().unwrap_or(0);
        let frames = pp["fs"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .filter_map(|i| table.get(i.as_u64()? as usize).cloned())
                    .collect()
            })
            .unwrap_or_default();
        *out.entry(frames).or_default() += blocks;
    }
    Ok(out)
}

/// The crate an allocation is charged to, the frame that names it, and
/// the next crate out on the stack (whose code called that crate's).
fn owner(frames: &[String]) -> (String, String, String) {
    let mut crates = frames.iter().filter_map(|f| Some((crate_of(f)?, f)));
    let Some((krate, frame)) = crates.next() else {
        return (
            "(unknown)".into(),
            frames.first().cloned().unwrap_or_default(),
            String::new(),
        );
    };
    let caller = crates
        .map(|(c, _)| c)
        .find(|c| *c != krate)
        .unwrap_or_default();
    (krate, frame.clone(), caller)
}

/// One lifetime under DHAT: (sites, requests).
async fn lifetime(
    dir: &Path,
    echo: std::net::SocketAddr,
    proxy: &Path,
    secs: f64,
) -> Result<(Sites, u64)> {
    let out = dir.join("dhat.out");
    let args = [
        "--tool=dhat".to_string(),
        format!("--dhat-out-file={}", out.display()),
        // Whole source paths, so each frame can be told by its crate.
        "--fullpath-after=".to_string(),
    ];
    let requests = under_valgrind(dir, echo, (proxy, Load::Http1), "this", secs, &args).await?;
    Ok((sites(&out)?, requests))
}

/// Runs the measurement on this build; returns the markdown and the JSON.
pub(crate) async fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let proxy = meshctl::procs::binary("mesh-proxy");
    let secs = if quick { (0.5, 1.5) } else { (2.0, 8.0) };
    let dir = std::env::temp_dir().join(format!("mesh-bench-alloc-{}", std::process::id()));
    let (_echo, echo) = crate::data::echo(&dir).await?;
    let (short, n1) = lifetime(&dir.join("short"), echo, &proxy, secs.0).await?;
    let (long, n2) = lifetime(&dir.join("long"), echo, &proxy, secs.1).await?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(n2 > n1, "the long run served no more requests");
    let per = |n: f64| n / (n2 - n1) as f64;
    let (mut by_crate, mut ours) = (
        BTreeMap::<String, f64>::new(),
        BTreeMap::<String, f64>::new(),
    );
    let mut total = 0.0;
    for (frames, blocks) in &long {
        let extra = *blocks as f64 - short.get(frames).copied().unwrap_or(0) as f64;
        if extra <= 0.0 {
            continue;
        }
        total += extra;
        let (krate, frame, caller) = owner(frames);
        *by_crate.entry(format!("{krate} | {caller}")).or_default() += extra;
        // Ours: our own code's, or a library's called straight from ours.
        let ours_at = if krate == "mesh_proxy" {
            Some(frame)
        } else if caller == "mesh_proxy" {
            frames
                .iter()
                .find(|f| crate_of(f).as_deref() == Some("mesh_proxy"))
                .map(|f| format!("{krate} from {f}"))
        } else {
            None
        };
        if let Some(site) = ours_at {
            *ours.entry(site).or_default() += extra;
        }
    }
    let sorted = |m: &BTreeMap<String, f64>| {
        let mut v: Vec<(String, f64)> = m.iter().map(|(k, n)| (k.clone(), per(*n))).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    let (by_crate, ours) = (sorted(&by_crate), sorted(&ours));
    let mut md = format!(
        "Machine: {}\n\nCommand: `cargo run --release -p mesh-benches -- allocations`\n\nThe client sidecar of a plaintext pair under `valgrind --tool=dhat`, HTTP/1.1 GET at {RATE} rps over one connection for {} s and for {} s, each in its own sidecar lifetime; allocations per request = the difference in heap blocks allocated over the difference in requests counted at the echo app ({} requests). Each allocation is charged to the innermost crate on its call stack that is not the allocator or the standard library, beside the next crate out, whose code called it.\n\n**{:.1} allocations per proxied request.**\n\n| charged to | called from | allocations per request |\n|---|---|---|\n",
        report::machine(),
        secs.0,
        secs.1,
        n2 - n1,
        per(total),
    );
    for (k, n) in by_crate.iter().filter(|(_, n)| *n >= 0.05) {
        let _ = writeln!(md, "| {k} | {n:.2} |");
    }
    md.push_str("\nOur own sites (mesh_proxy frames that allocate, directly or through std, or that call the library that does):\n\n| site | allocations per request |\n|---|---|\n");
    for (site, n) in ours.iter().filter(|(_, n)| *n >= 0.05).take(12) {
        let _ = writeln!(md, "| `{}` | {n:.2} |", site.replace('|', "\\|"));
    }
    let json = json!({
        "machine": report::machine(),
        "rate": RATE,
        "seconds": [secs.0, secs.1],
        "requests": n2 - n1,
        "per_request": per(total),
        "by_crate": by_crate,
        "ours": ours,
    });
    Ok((md, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_is_charged_past_the_allocator_and_std() {
        let frames: Vec<String> = [
            "malloc (vg_replace_malloc.c:446)",
            "UnknownInlinedFun (/rustc/abc/library/alloc/src/raw_vec.rs:1)",
            "alloc::fmt::format::format_inner (/rustc/abc/library/alloc/src/fmt.rs:2)",
            "UnknownInlinedFun (/work/main/data-plane/src/outbound/handle.rs:117)",
            "UnknownInlinedFun (/root/.cargo/registry/src/index-1/hyper-util-0.1.21/src/a.rs:4)",
        ]
        .map(String::from)
        .to_vec();
        let (krate, frame, caller) = owner(&frames);
        assert_eq!(krate, "mesh_proxy");
        assert!(frame.contains("handle.rs:117"));
        assert_eq!(caller, "hyper_util");
        assert_eq!(owner(&frames[4..]).0, "hyper_util");
        assert_eq!(owner(&frames[..3]).0, "(unknown)");
        assert_eq!(
            crate_of("h2::proto::streams::Recv::recv_data (in /bin/mesh-proxy)").as_deref(),
            Some("h2")
        );
    }
}
