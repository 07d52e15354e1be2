//! Process accounting from /proc: CPU time and peak memory of a process and
//! its children (nginx runs a master and a worker; both count).

/// Clock ticks per second for /proc/<pid>/stat times. Linux has used 100 on
/// every mainstream architecture for decades; read it from the auxv-free
/// path to avoid `unsafe` sysconf.
const TICKS_PER_SEC: f64 = 100.0;

/// The pid and its direct children.
pub(crate) fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(stat) = stat_fields(child)
                && stat.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            {
                out.push(child);
            }
        }
    }
    out
}

/// Fields of /proc/<pid>/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system) used so far by the processes.
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / TICKS_PER_SEC
        })
        .sum()
}

/// CPU seconds used so far by the processes, to the nanosecond: the
/// scheduler's own runtime of every thread (/proc/<pid>/task/*/schedstat),
/// where `cpu_seconds` counts 10 ms ticks. Threads that have exited are
/// not counted.
pub(crate) fn cpu_seconds_exact(pids: &[u32]) -> f64 {
    let mut ns = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// The kernel's share of `cpu_seconds` (stime): what a process costs the
/// system on its behalf (syscalls, and the packets it sends and receives).
pub(crate) fn system_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / TICKS_PER_SEC)
        .sum()
}

/// Peak resident memory (VmHWM) summed over the processes, in MiB.
pub(crate) fn peak_rss_mib(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|p| crate::report::rss_mib(*p).1)
        .filter(|v| v.is_finite())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_accounted() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(&[me]) > 0.0);
        assert!(cpu_seconds_exact(&[me]) >= 0.04);
        assert!(peak_rss_mib(&[me]) > 0.0);
        assert!(family(me).contains(&me));
    }
}
