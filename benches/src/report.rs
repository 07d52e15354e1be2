//! Writes results: a JSON file per suite under benches/results/, and the
//! suite's section of BENCHMARKS.md (between markers), with the machine
//! description and the command that reproduces it. Numbers are never typed
//! into BENCHMARKS.md by hand.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The repository root (benches/ is one level down).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One line describing the machine the numbers came from.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Saves `json` as benches/results/<suite>.json.
pub(crate) fn write_json(suite: &str, json: &serde_json::Value) -> Result<PathBuf> {
    let dir = repo_root().join("benches/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{suite}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(json)?)?;
    Ok(path)
}

/// Replaces the `suite` section of BENCHMARKS.md with `body`.
pub(crate) fn update_markdown(suite: &str, body: &str) -> Result<()> {
    let path = repo_root().join("BENCHMARKS.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (begin, end) = (
        format!("<!-- {suite}:begin -->"),
        format!("<!-- {suite}:end -->"),
    );
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        anyhow::bail!("BENCHMARKS.md has no {begin} … {end} markers");
    };
    let updated = format!("{}{begin}\n{body}\n{}", &text[..b], &text[e..]);
    std::fs::write(&path, updated)?;
    Ok(())
}

/// A percentile of sorted samples (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The middle value of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Which of two paths (false, true) goes first in `round`: A B, then B A,
/// so whatever drifts over a run weighs on both alike.
pub(crate) fn abba(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// Resident and peak memory of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::{abba, median, percentile};

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v[..1], 99.0), 1.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
        assert_eq!(
            [abba(0), abba(1), abba(2)],
            [[false, true], [true, false], [false, true]]
        );
    }
}
