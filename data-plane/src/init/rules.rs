//! The nat rules of the redirect step, as iptables-restore text: mesh's
//! own chains (every name starts `MESH_`) and the two jumps into them, and
//! the merge that puts them into a saved nat table in place of any earlier
//! mesh rules, keeping every rule that is not mesh's. Pure text in and out.

use super::Init;
use std::fmt::Write;
use std::net::IpAddr;

/// mesh's chains: every rule mesh writes is in one of them or jumps to one.
const PREFIX: &str = "MESH_";
const INBOUND: &str = "MESH_INBOUND";
const IN_REDIRECT: &str = "MESH_IN_REDIRECT";
const OUTBOUND: &str = "MESH_OUTBOUND";
const OUT_REDIRECT: &str = "MESH_OUT_REDIRECT";

/// iptables' multiport takes at most 15 ports, a range counting two.
const MULTIPORT_MAX: usize = 15;

/// IPv4 (iptables) or IPv6 (ip6tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

/// mesh's chain declarations and rules for `family`, one per line.
pub fn ours(init: &Init, family: Family) -> String {
    let mut out = String::new();
    for chain in [INBOUND, IN_REDIRECT, OUTBOUND, OUT_REDIRECT] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let mut rule = |r: String| {
        out.push_str(&r);
        out.push('\n');
    };
    rule(format!("-A PREROUTING -p tcp -j {INBOUND}"));
    rule(format!("-A OUTPUT -p tcp -j {OUTBOUND}"));
    // Inbound: every TCP connection to the pod goes to the inbound
    // listener, but those to the ports left alone.
    for ports in multiport(&init.skip_inbound) {
        rule(format!(
            "-A {INBOUND} -p tcp -m multiport --dports {ports} -j RETURN"
        ));
    }
    rule(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
    rule(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        init.inbound_port
    ));
    // Outbound: the sidecar's own connections (or they would loop back
    // into it), loopback's, and the ports and destinations left alone go
    // out as they are; every other TCP connection goes to the outbound
    // listener.
    rule(format!(
        "-A {OUTBOUND} -m owner --uid-owner {} -j RETURN",
        init.proxy_uid
    ));
    rule(format!("-A {OUTBOUND} -o lo -j RETURN"));
    for ports in multiport(&init.skip_outbound) {
        rule(format!(
            "-A {OUTBOUND} -p tcp -m multiport --dports {ports} -j RETURN"
        ));
    }
    for (addr, len) in &init.skip_cidrs {
        if matches!(
            (family, addr),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        ) {
            rule(format!("-A {OUTBOUND} -d {addr}/{len} -j RETURN"));
        }
    }
    rule(format!("-A {OUTBOUND} -p tcp -j {OUT_REDIRECT}"));
    rule(format!(
        "-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        init.outbound_port
    ));
    out
}

/// The ranges as multiport lists (`25,8000:8010`), each within
/// multiport's limit.
fn multiport(ranges: &[(u16, u16)]) -> Vec<String> {
    let mut lists = Vec::new();
    let (mut current, mut weight) = (Vec::new(), 0);
    for &(lo, hi) in ranges {
        let (item, w) = if lo == hi {
            (lo.to_string(), 1)
        } else {
            (format!("{lo}:{hi}"), 2)
        };
        if weight + w > MULTIPORT_MAX {
            lists.push(std::mem::take(&mut current).join(","));
            weight = 0;
        }
        current.push(item);
        weight += w;
    }
    if !current.is_empty() {
        lists.push(current.join(","));
    }
    lists
}

/// The whole nat table for iptables-restore: `save` (iptables-save's nat
/// table) without any earlier mesh chain or rule, with `ours` (none to
/// clean) added. Applied to its own output it gives the same text again.
pub fn merge(save: &str, ours: Option<&str>) -> String {
    let mine = |line: &str| {
        line.starts_with(&format!(":{PREFIX}"))
            || line.starts_with(&format!("-A {PREFIX}"))
            || line.contains(&format!(" -j {PREFIX}"))
            || line.contains(&format!(" -g {PREFIX}"))
    };
    let (mut chains, mut rules) = (Vec::new(), Vec::new());
    let mut in_nat = false;
    for line in save.lines().map(str::trim_end) {
        match line {
            "*nat" => in_nat = true,
            "COMMIT" => in_nat = false,
            l if !in_nat || l.starts_with('#') || l.is_empty() || mine(l) => {}
            l if l.starts_with(':') => chains.push(l),
            l => rules.push(l),
        }
    }
    let ours = ours.unwrap_or("");
    for line in ours.lines() {
        if line.starts_with(':') {
            chains.push(line);
        } else {
            rules.push(line);
        }
    }
    let mut out = String::from("*nat\n");
    for line in chains.into_iter().chain(rules) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}
