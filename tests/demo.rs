//! `meshctl demo`, the README's first command, run as a user runs it (in
//! the debug profile these tests build, otherwise the same): it
//! brings up the demo mesh, shifts 0 → 10 → 50 → 100% to v2 under steady
//! traffic with no failed request, shows the shares it measured at each
//! step, release status and the aggregated golden metrics, then runs an
//! automated release of a good v2 (promoted unattended) and of a failing
//! one (rolled back on its own), and exits 0 having stopped everything it
//! started.

mod support;

use meshctl::procs::binary;
use std::time::Duration;

/// The row of a shift step: (v1 answers, v2 answers, failed).
fn step(out: &str, pct: u32) -> (u64, u64, u64) {
    let label = format!("shift v2 → {pct}%");
    let line = out
        .lines()
        .find(|l| l.starts_with(&label))
        .unwrap_or_else(|| panic!("no {label:?} row in:\n{out}"));
    let n: Vec<u64> = line[label.len()..]
        .split_whitespace()
        .take(3)
        .map(|w| w.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

/// The README's first command: one cargo build of the whole workspace (the
/// one `support::ensure_built` runs here), then the demo binary.
const README_COMMAND: &str =
    "cargo build --release --workspace --bins && ./target/release/meshctl demo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shifts_to_v2_step_by_step_with_no_failed_request() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let first = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.lines().next())
        .unwrap();
    assert_eq!(first, README_COMMAND, "the README's first command changed");
    support::ensure_built();
    // Run as the README runs it: the built binary, not under cargo.
    let run = tokio::process::Command::new(binary("meshctl"))
        .args(["demo", "--requests", "400"])
        .env_remove("CARGO")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the demo finishes within two minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Not under cargo, it builds nothing: the README's build did.
    assert!(!stdout.contains("▶ building"), "{stdout}");

    assert_eq!(step(&stdout, 0), (400, 0, 0), "{stdout}");
    let (v1, v2, failed) = step(&stdout, 10);
    assert_eq!((v1 + v2, failed), (400, 0));
    assert!(
        support::within_binomial(v2, 400, 0.1),
        "10%: {v2} of 400 to v2"
    );
    let (v1, v2, failed) = step(&stdout, 50);
    assert_eq!((v1 + v2, failed), (400, 0));
    assert!(
        support::within_binomial(v2, 400, 0.5),
        "50%: {v2} of 400 to v2"
    );
    assert_eq!(step(&stdout, 100), (0, 400, 0), "{stdout}");

    let background = stdout
        .lines()
        .find(|l| l.starts_with("background traffic during all shifts:"))
        .expect(&stdout);
    assert!(background.ends_with(" 0 failed"), "{background}");
    let requests: u64 = background
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert!(requests > 0, "{background}");

    // release status after the last shift: v2 carries everything.
    let status = &stdout[stdout.find("$ meshctl release status echo").expect(&stdout)..];
    let row = |b: &str| {
        status
            .lines()
            .find(|l| l.starts_with(b))
            .unwrap_or_else(|| panic!("no {b} row:\n{status}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!((row("echo-v1"), row("echo-v2")), ("0".into(), "100".into()));
    // The golden metrics name both versions, all requests successful.
    let stat = &stdout[stdout.find("$ meshctl stat echo").expect(&stdout)..];
    for version in [" v1 ", " v2 "] {
        let line = stat
            .lines()
            .find(|l| l.starts_with("echo.default") && l.contains(version))
            .unwrap_or_else(|| panic!("no{version}row:\n{stat}"));
        assert!(line.contains("100.00%"), "{line}");
    }
    // The automated half: the good v2 walked through its steps and
    // promoted, the failing one rolled back on its own, with the reason.
    let auto = stdout
        .lines()
        .find(|l| l.starts_with("automated releases:"))
        .expect(&stdout);
    assert!(
        auto.contains(
            "the good v2 Promoted, the bad v2 RolledBack; weights now echo-v1 100%, echo-v2 0%"
        ),
        "{auto}"
    );
    let passed: Vec<&str> = stdout.lines().filter(|l| l.contains(" passed ")).collect();
    assert!(passed.len() >= 3, "a passed check per step:\n{stdout}");
    assert!(stdout.contains("→ Promoted: every step passed"), "{stdout}");
    let rolled = stdout
        .lines()
        .find(|l| l.contains("→ RolledBack: "))
        .expect(&stdout);
    assert!(
        rolled.contains("failed checks in a row at 10%: success rate"),
        "{rolled}"
    );
    // It stopped what it started: its demo directory is gone.
    assert!(stdout.contains("shutting down"), "{stdout}");
    let logs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("logs: "))
        .expect(&stdout);
    assert!(
        !std::path::Path::new(logs.trim()).exists(),
        "{logs} left behind"
    );
    let addrs: Vec<std::net::SocketAddr> = stdout
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    assert!(addrs.len() >= 4 * 3, "every process's addresses: {stdout}");
    for a in addrs {
        assert!(
            std::net::TcpStream::connect(a).is_err(),
            "{a} still listens after the demo"
        );
    }
}
