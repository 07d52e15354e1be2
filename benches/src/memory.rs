//! Where a sidecar's resident memory goes: an mTLS pair serves HTTP/1.1 at
//! 1,000 rps over 16 connections, then each sidecar's /proc/<pid>/smaps is
//! read and every mapping charged to what it holds: the binary's code, its
//! read-only data, its writable data, shared libraries, the heap (glibc's
//! main heap and its per-thread arenas), thread stacks, and the kernel's
//! pages (vdso, vvar). Resident and private-dirty KiB per part, against
//! the peak (VmHWM) the 8 MiB target is about.

use crate::data;
use crate::report;
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// One mapping of smaps: its header's permissions and path, and its
/// resident and private-dirty KiB.
#[derive(Debug, Default, Clone)]
struct Mapping {
    perms: String,
    path: String,
    size_kib: u64,
    rss_kib: u64,
    dirty_kib: u64,
}

/// Parses /proc/<pid>/smaps text into its mappings.
fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // "start-end perms offset dev inode [path]"
            let perms = words.next().unwrap_or("").to_string();
            let path = words.nth(3).unwrap_or("").to_string();
            out.push(Mapping {
                perms,
                path,
                ..Mapping::default()
            });
            continue;
        }
        let kib = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let Some(m) = out.last_mut() {
            match first {
                "Size:" => m.size_kib = kib(),
                "Rss:" => m.rss_kib = kib(),
                "Private_Dirty:" => m.dirty_kib = kib(),
                _ => {}
            }
        }
    }
    out
}

/// What a mapping holds. A thread's stack is an anonymous mapping right
/// after its guard page (a 4 KiB `---p`); an arena is anonymous memory
/// reserved in 64 MiB runs, whose untouched rest is `---p` after it.
fn part(maps: &[Mapping], i: usize, binary: &str) -> &'static str {
    let m = &maps[i];
    let anonymous = m.path.is_empty();
    match m.path.as_str() {
        "[heap]" => return "heap",
        "[stack]" => return "thread stacks",
        "[vdso]" | "[vvar]" | "[vsyscall]" | "[vvar_vclock]" => return "kernel (vdso)",
        _ => {}
    }
    if !anonymous {
        if m.path.ends_with(binary) {
            return match m.perms.as_str() {
                p if p.contains('x') => "binary: code",
                p if p.starts_with("r--") => "binary: read-only data",
                _ => "binary: writable data",
            };
        }
        return "shared libraries";
    }
    if m.perms.starts_with("---") {
        return "reserved, untouched";
    }
    let after_guard = i > 0 && maps[i - 1].perms.starts_with("---") && maps[i - 1].size_kib <= 4;
    if after_guard { "thread stacks" } else { "heap" }
}

/// Resident and private-dirty KiB by part.
type Parts = BTreeMap<&'static str, (u64, u64)>;

fn parts_of(pid: u32) -> Parts {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let maps = mappings(&smaps);
    let mut parts = Parts::new();
    for i in 0..maps.len() {
        let e = parts.entry(part(&maps, i, "mesh-proxy")).or_default();
        e.0 += maps[i].rss_kib;
        e.1 += maps[i].dirty_kib;
    }
    parts
}

/// Runs the suite: markdown and JSON.
pub(crate) async fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-memory-{}", std::process::id()));
    let (_echo, echo) = data::echo(&dir).await?;
    let proxy = meshctl::procs::binary("mesh-proxy");
    let t = data::mesh(&dir.join("pair"), echo, true, &proxy, "mtls", &[], &[]).await?;
    let secs = if quick { 1 } else { 10 };
    let m = t.http(1000, Duration::from_secs(secs)).await?;
    anyhow::ensure!(m.run.errors == 0, "{} requests failed", m.run.errors);
    let mut md = format!(
        "Machine: {}\n\nCommand: `cargo run --release -p mesh-benches -- memory`\n\nAn mTLS sidecar pair after {secs} s of HTTP/1.1 at 1,000 rps over {} connections ({} requests); each sidecar's /proc/<pid>/smaps, every mapping charged to what it holds. KiB resident (of which private dirty: written by this process, so not shared with any other).\n\n| part | client sidecar | server sidecar |\n|---|---|---|\n",
        report::machine(),
        data::CONNS,
        m.run.requests,
    );
    let pids: Vec<u32> = t
        .proxies
        .iter()
        .filter_map(|p| p.first().copied())
        .collect();
    let each: Vec<Parts> = pids.iter().map(|p| parts_of(*p)).collect();
    let names: std::collections::BTreeSet<&str> =
        each.iter().flat_map(|p| p.keys().copied()).collect();
    for name in &names {
        let cell = |p: &Parts| {
            p.get(name)
                .map_or("0".to_string(), |(rss, dirty)| format!("{rss} ({dirty})"))
        };
        let _ = writeln!(md, "| {name} | {} | {} |", cell(&each[0]), cell(&each[1]));
    }
    let total = |p: &Parts| p.values().map(|v| v.0).sum::<u64>();
    let peaks: Vec<f64> = pids.iter().map(|p| report::rss_mib(*p).1).collect();
    let _ = writeln!(
        md,
        "| **resident now** | {} | {} |\n| **peak (VmHWM), MiB** | {:.1} | {:.1} |",
        total(&each[0]),
        total(&each[1]),
        peaks[0],
        peaks[1],
    );
    let json = json!({
        "machine": report::machine(),
        "requests": m.run.requests,
        "sidecars": each.iter().zip(&peaks).map(|(p, peak)| json!({
            "parts_kib": p.iter().map(|(k, v)| (k.to_string(), json!({"rss": v.0, "private_dirty": v.1}))).collect::<serde_json::Map<_, _>>(),
            "peak_mib": peak,
        })).collect::<Vec<_>>(),
    });
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((md, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 08:01 42 /work/target/release/mesh-proxy
Size:               1024 kB
Rss:                 600 kB
Private_Dirty:         0 kB
55d0a0100000-55d0a0400000 r-xp 00100000 08:01 42 /work/target/release/mesh-proxy
Size:               3072 kB
Rss:                2000 kB
Private_Dirty:         0 kB
7f0000000000-7f0000001000 ---p 00000000 00:00 0
Size:                  4 kB
Rss:                   0 kB
Private_Dirty:         0 kB
7f0000001000-7f0000201000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                  16 kB
Private_Dirty:        16 kB
7f0000201000-7f0000300000 rw-p 00000000 00:00 0
Size:               1020 kB
Rss:                 300 kB
Private_Dirty:       300 kB
7f0000300000-7f0004000000 ---p 00000000 00:00 0
Size:              60000 kB
Rss:                   0 kB
Private_Dirty:         0 kB
7f1000000000-7f1000100000 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 900 kB
Private_Dirty:         0 kB
";

    #[test]
    fn mappings_are_charged_to_what_they_hold() {
        let maps = mappings(SMAPS);
        assert_eq!(maps.len(), 7);
        let parts: Vec<&str> = (0..maps.len())
            .map(|i| part(&maps, i, "mesh-proxy"))
            .collect();
        assert_eq!(
            parts,
            [
                "binary: read-only data",
                "binary: code",
                "reserved, untouched",
                "thread stacks",
                "heap",
                "reserved, untouched",
                "shared libraries"
            ]
        );
        assert_eq!((maps[3].rss_kib, maps[3].dirty_kib), (16, 16));
    }
}
