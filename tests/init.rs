//! `mesh-proxy init` in network namespaces of its own (root only; each
//! test says plainly that it skipped otherwise, and CI runs as root): the
//! rules it writes redirect inbound TCP to the inbound listener and
//! outbound TCP to the outbound listener, the original destination still
//! readable there (SO_ORIGINAL_DST), with the sidecar's own uid, loopback,
//! skip ports and skip CIDRs left alone; running it twice leaves the table
//! as once did, `--simulate` writes nothing, `--clean` removes exactly
//! mesh's rules, and a bad flag exits 64 having written no rule.

#[path = "support/netns.rs"]
mod netns;

use netns::{NetNs, link, root_or_skip};
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::time::Duration;

fn proxy() -> String {
    meshctl::procs::ensure_built(!cfg!(debug_assertions));
    meshctl::procs::binary("mesh-proxy").display().to_string()
}

/// The nat table as iptables-nft-save prints it, without its comments
/// and packet counters (which traffic changes).
fn nat(ns: &NetNs) -> String {
    let counters = regex::Regex::new(r"\[\d+:\d+\]").unwrap();
    ns.ok(&["iptables-nft-save", "-t", "nat"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| counters.replace_all(l, "[*]").into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// origdst.py serving `port` in `ns`, once it says it listens.
struct Server(Child);

impl Server {
    fn start(ns: &NetNs, port: u16) -> Server {
        let mut child = ns
            .command(&["python3", tool_ref(), "serve", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            line.as_deref().map(str::trim),
            Ok("ready"),
            "the server on {port} never listened"
        );
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn call(ns: &NetNs, host: &str, port: u16, uid: Option<u32>) -> String {
    let port = port.to_string();
    let uid = uid.map(|u| u.to_string());
    let mut args = vec!["python3", tool_ref(), "call", host, &port];
    if let Some(u) = &uid {
        args.push(u);
    }
    ns.ok(&args).trim().to_string()
}

fn tool_ref() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tcp_peer.py")
}

#[test]
fn the_rules_redirect_both_ways_and_leave_alone_what_they_should() {
    if !root_or_skip("the_rules_redirect_both_ways_and_leave_alone_what_they_should") {
        return;
    }
    let peer = NetNs::new("peer");
    let pod = NetNs::new("pod");
    link(&peer, "10.71.0.1/24", &pod, "10.71.0.2/24");
    // The world outside the pod: the peer holds two addresses the pod
    // routes to through it, and answers there itself, so a connection
    // that was not redirected says so.
    for addr in ["10.80.3.4/32", "10.90.3.4/32"] {
        let dev = peer.ok(&["ip", "-o", "link", "show", "type", "veth"]);
        let dev = dev
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string();
        peer.ok(&["ip", "addr", "add", addr, "dev", &dev]);
    }
    for net in ["10.80.0.0/16", "10.90.0.0/16"] {
        pod.ok(&["ip", "route", "add", net, "via", "10.71.0.1"]);
    }
    let _world = [Server::start(&peer, 8080), Server::start(&peer, 25)];

    let before = nat(&pod);
    let bin = proxy();
    let args = [
        bin.as_str(),
        "init",
        "--proxy-uid",
        "2102",
        "--skip-inbound-ports",
        "4191",
        "--skip-outbound-ports",
        "25",
        "--skip-outbound-cidrs",
        "10.90.0.0/16",
    ];
    let said = pod.ok(&args);
    assert!(said.contains("mesh's nat rules written (V4"), "{said}");
    let once = nat(&pod);
    assert!(
        once.contains("-A MESH_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 4140"),
        "{once}"
    );
    pod.ok(&args);
    assert_eq!(nat(&pod), once, "a second run changes nothing");

    let _outbound = Server::start(&pod, 4140);
    let _inbound = Server::start(&pod, 4143);
    let _admin = Server::start(&pod, 4191);
    // Outbound: redirected to 4140, which still sees where the app dialled.
    assert_eq!(call(&pod, "10.80.3.4", 8080, None), "10.80.3.4:8080");
    // The sidecar's own uid, a skipped CIDR and a skipped port go out as
    // they are, to the peer.
    for (host, port, uid, answer) in [
        ("10.80.3.4", 8080, Some(2102), "direct 8080"),
        ("10.90.3.4", 8080, None, "direct 8080"),
        ("10.80.3.4", 25, None, "direct 25"),
    ] {
        assert_eq!(
            call(&pod, host, port, uid),
            answer,
            "{host}:{port} uid {uid:?}"
        );
    }
    // Loopback is left alone: the admin listener answers as itself.
    assert_eq!(call(&pod, "127.0.0.1", 4191, None), "direct 4191");
    // Inbound from the peer: redirected to 4143 but for the admin port.
    assert_eq!(call(&peer, "10.71.0.2", 8080, None), "10.71.0.2:8080");
    assert_eq!(call(&peer, "10.71.0.2", 4191, None), "direct 4191");

    // --clean removes exactly mesh's rules.
    let said = pod.ok(&[proxy().as_str(), "init", "--clean"]);
    assert!(said.contains("removed"), "{said}");
    assert_eq!(nat(&pod), before);
    assert_eq!(call(&pod, "10.80.3.4", 8080, None), "direct 8080");
}

#[test]
fn simulate_writes_nothing_and_a_bad_flag_exits_64_writing_nothing() {
    if !root_or_skip("simulate_writes_nothing_and_a_bad_flag_exits_64_writing_nothing") {
        return;
    }
    let pod = NetNs::new("sim");
    let before = nat(&pod);
    let printed = pod.ok(&[
        proxy().as_str(),
        "init",
        "--simulate",
        "--skip-outbound-cidrs",
        "10.0.0.0/8",
    ]);
    assert!(
        printed.contains("-A MESH_OUTBOUND -d 10.0.0.0/8 -j RETURN"),
        "{printed}"
    );
    assert!(printed.contains("COMMIT"));
    assert_eq!(nat(&pod), before, "--simulate wrote rules");
    // The legacy backend writes the same rules to x_tables, and cleans them.
    let legacy = |ns: &NetNs| ns.ok(&["iptables-legacy-save", "-t", "nat"]);
    pod.ok(&[proxy().as_str(), "init", "--backend", "legacy"]);
    assert!(legacy(&pod).contains("-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 4143"));
    pod.ok(&[proxy().as_str(), "init", "--backend", "legacy", "--clean"]);
    assert!(!legacy(&pod).contains("MESH_"));
    for (flag, value, says) in [
        (
            "--skip-outbound-cidrs",
            "10.0.0.0/99",
            "the prefix length is not 0-32",
        ),
        ("--skip-inbound-ports", "80,http", "\"http\" is not a port"),
        ("--backend", "ebpf", "nft or legacy"),
    ] {
        let out = pod.output(&[proxy().as_str(), "init", flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag} {value}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{err}");
        assert_eq!(nat(&pod), before, "{flag} {value}: a rule was written");
    }
}
