//! `meshctl up` runs a whole mesh from the demo mesh file, answers meshctl
//! commands, and on Ctrl-C stops every process it started.

mod support;

use meshctl::procs::binary;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::Stdio;
use std::time::Duration;
use support::DEADLINE;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_demo_mesh_and_ctrl_c_stops_it() {
    support::ensure_built();
    let dir = support::TempDir::new("up");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let control = format!("https://127.0.0.1:{port}");
    // Where `up` records its mesh for later commands (not the real $HOME).
    let recorded = dir.0.join("current.json");
    let mesh_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo/mesh.yaml");
    let mut up = Command::new(binary("meshctl"))
        .env("MESH_CONFIG", &recorded)
        .args(["--control", &control, "up", "-f", mesh_file, "--log-dir"])
        .arg(dir.0.join("logs"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let up_line = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(l)) = lines.next_line().await {
            printed.push_str(&l);
            printed.push('\n');
            if l.starts_with("client ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        up_line,
        Ok(true),
        "meshctl up never printed its table:\n{printed}"
    );
    assert!(
        printed.contains("mesh is up") && printed.contains("echo-v2-0"),
        "{printed}"
    );

    // The mesh it started answers meshctl.
    let out = Command::new(binary("meshctl"))
        .env("MESH_CONFIG", &recorded)
        .args([
            "--control",
            &control,
            "release",
            "status",
            "echo",
            "-o",
            "json",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["backends"][0]["service"], "echo-v1");
    assert_eq!(st["backends"][0]["weight"], 100);

    // `up` wires identity: each sidecar gets a SPIFFE certificate from the CA.
    let admin: std::net::SocketAddr = printed
        .lines()
        .find(|l| l.starts_with("echo-v1 "))
        .and_then(|l| l.split_whitespace().last())
        .expect("echo-v1 row with an admin address")
        .parse()
        .unwrap();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, body) = meshctl::traffic::get(admin, "/identity").await.unwrap();
        if body.contains("spiffe://cluster.local/ns/default/sa/echo") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no workload certificate: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `meshctl check` reports a healthy mesh with its identities once it settles.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let out = Command::new(binary("meshctl"))
            .env("MESH_CONFIG", &recorded)
            .args(["--control", &control, "check"])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            assert!(
                stdout.contains("spiffe://cluster.local/ns/default/sa/echo"),
                "{stdout}"
            );
            assert!(stdout.contains("all checks passed"), "{stdout}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "meshctl check never passed:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ctrl-C: everything stops, and the control plane's port closes.
    kill(Pid::from_raw(up.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), up.wait())
        .await
        .expect("up exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the control plane still listens after Ctrl-C"
    );
    // And every app and sidecar it started is gone: no address in its
    // table (apps, outbound, inbound, admin) still takes connections.
    let addrs: Vec<std::net::SocketAddr> = printed
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(addrs.len() >= 4 * 4, "every process's addresses: {printed}");
    for a in addrs {
        assert!(
            std::net::TcpStream::connect(a).is_err(),
            "{a} still listens after Ctrl-C:\n{printed}"
        );
    }
}
