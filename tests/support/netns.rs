//! Network namespaces the root-only tests make for themselves (`ip netns`,
//! veth), removed again when dropped; and the check that says plainly
//! when a test skipped for want of root.

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};

/// Whether the tests run as root (iptables installed by tests/setup.sh if
/// missing); if not, says that `test` skipped.
pub fn root_or_skip(test: &str) -> bool {
    // The effective uid, second on the Uid line of /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    if root
        && !Command::new("iptables-nft-restore")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        // A fresh root machine: tests/setup.sh installs iptables (named
        // from the tests crate or the benches one alike).
        let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/setup.sh");
        let ok = Command::new("bash").arg(setup).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "{setup} could not install iptables"
        );
    }
    if !root {
        eprintln!(
            "SKIPPED {test}: it needs root for network namespaces and iptables (CI runs it as root)"
        );
    }
    root
}

/// One network namespace, deleted on drop.
pub struct NetNs {
    /// Its name under /run/netns.
    pub name: String,
}

impl NetNs {
    /// A new namespace with loopback up.
    pub fn new(what: &str) -> NetNs {
        let name = format!(
            "mesh-{what}-{}-{:04x}",
            std::process::id(),
            fastrand::u16(..)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `args` run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// `args` run inside it: its output, whatever the status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ip netns exec runs")
    }

    /// `args` run inside it, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl NetNs {
    /// Runs `work` on a thread of its own that has joined this namespace
    /// (setns affects the calling thread only), with a runtime of its own:
    /// a client in the pod, as an app there would be.
    pub fn run<T, F>(&self, work: impl FnOnce() -> F + Send + 'static) -> T
    where
        F: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work())
        })
        .join()
        .expect("the thread in the namespace finished")
    }
}

/// Joins the calling thread to namespace `name` (setns moves the calling
/// thread only, so a thread of its own runs what belongs in a pod).
pub fn enter(name: &str) {
    let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("the namespace exists");
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects `a` and `b` with a veth pair, `a_addr` and `b_addr` (CIDR) on
/// each end.
pub fn link(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str) {
    let (va, vb) = (
        format!("va{:05x}", fastrand::u32(..0xfffff)),
        format!("vb{:05x}", fastrand::u32(..0xfffff)),
    );
    run(&[
        "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
        &b.name,
    ]);
    for (ns, dev, addr) in [(a, &va, a_addr), (b, &vb, b_addr)] {
        ns.ok(&["ip", "addr", "add", addr, "dev", dev]);
        ns.ok(&["ip", "link", "set", dev, "up"]);
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
