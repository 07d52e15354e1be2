//! `mesh-proxy init`: the pod's redirect step, run by the injected
//! `mesh-init` container before anything else. Its flags become plain
//! data (every bad one named at once, exit 64, no rule written); the nat
//! rules are pure text (`rules`); `apply` swaps them into the pod's
//! network namespace atomically with iptables-restore, so re-running it
//! changes nothing and `--clean` removes exactly mesh's rules.

mod apply;
pub mod rules;

use std::net::IpAddr;
use std::process::ExitCode;

/// Which iptables the rules are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables over nf_tables (the default on current distributions).
    Nft,
    /// The legacy x_tables iptables.
    Legacy,
}

/// What `mesh-proxy init` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the rules (replacing mesh's earlier ones).
    Apply,
    /// Print the rules, write nothing.
    Simulate,
    /// Remove mesh's rules.
    Clean,
}

/// The redirect step's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// The sidecar's inbound listener: every inbound TCP connection goes
    /// there but those to `skip_inbound`.
    pub inbound_port: u16,
    /// The sidecar's outbound listener: every outbound TCP connection goes
    /// there but the sidecar's own, loopback's, and `skip_outbound*`.
    pub outbound_port: u16,
    /// The sidecar's uid, whose connections are never redirected.
    pub proxy_uid: u32,
    /// Inbound ports (ranges) left alone.
    pub skip_inbound: Vec<(u16, u16)>,
    /// Outbound ports (ranges) left alone.
    pub skip_outbound: Vec<(u16, u16)>,
    /// Outbound destinations left alone.
    pub skip_cidrs: Vec<(IpAddr, u8)>,
    /// nft or legacy.
    pub backend: Backend,
    /// Apply, simulate or clean.
    pub action: Action,
}

const USAGE: &str = "usage: mesh-proxy init --inbound-port P --outbound-port P --proxy-uid UID [--skip-inbound-ports LIST] [--skip-outbound-ports LIST] [--skip-outbound-cidrs LIST] [--backend nft|legacy] [--simulate | --clean]";

/// Reads `init`'s flags (those after `init`), naming every problem.
pub fn parse(args: &[String]) -> Result<Init, Vec<String>> {
    let mut problems = Vec::new();
    let mut init = Init {
        inbound_port: 4143,
        outbound_port: 4140,
        proxy_uid: 2102,
        skip_inbound: Vec::new(),
        skip_outbound: Vec::new(),
        skip_cidrs: Vec::new(),
        backend: Backend::Nft,
        action: Action::Apply,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        match flag {
            "--simulate" | "--clean" => {
                let next = if flag == "--simulate" {
                    Action::Simulate
                } else {
                    Action::Clean
                };
                if init.action != Action::Apply {
                    problems.push("--simulate and --clean: give one".into());
                }
                init.action = next;
                continue;
            }
            "-h" | "--help" => {
                problems.push(USAGE.into());
                continue;
            }
            _ => {}
        }
        let Some(value) = it.next() else {
            problems.push(format!("{flag}: needs a value ({USAGE})"));
            break;
        };
        let port = |v: &str, problems: &mut Vec<String>| match v.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                problems.push(format!("{flag} {v:?}: not a port (1-65535)"));
                0
            }
        };
        let list = |r: Result<Vec<(u16, u16)>, String>, problems: &mut Vec<String>| {
            r.unwrap_or_else(|e| {
                problems.push(format!("{flag} {value:?}: {e}"));
                Vec::new()
            })
        };
        match flag {
            "--inbound-port" => init.inbound_port = port(value, &mut problems),
            "--outbound-port" => init.outbound_port = port(value, &mut problems),
            "--proxy-uid" => match value.parse::<u32>() {
                Ok(u) if u > 0 => init.proxy_uid = u,
                _ => problems.push(format!(
                    "{flag} {value:?}: not a uid other than root's (the sidecar never runs as root)"
                )),
            },
            "--skip-inbound-ports" => {
                init.skip_inbound = list(mesh_proto::lists::ports(value), &mut problems)
            }
            "--skip-outbound-ports" => {
                init.skip_outbound = list(mesh_proto::lists::ports(value), &mut problems)
            }
            "--skip-outbound-cidrs" => match mesh_proto::lists::cidrs(value) {
                Ok(c) => init.skip_cidrs = c,
                Err(e) => problems.push(format!("{flag} {value:?}: {e}")),
            },
            "--backend" => match value.as_str() {
                "nft" => init.backend = Backend::Nft,
                "legacy" => init.backend = Backend::Legacy,
                other => problems.push(format!("{flag} {other:?}: nft or legacy")),
            },
            other => problems.push(format!("{other}: not a flag of mesh-proxy init ({USAGE})")),
        }
    }
    if init.inbound_port != 0 && init.inbound_port == init.outbound_port {
        problems.push(format!(
            "--inbound-port and --outbound-port are both {}: the sidecar has two listeners",
            init.inbound_port
        ));
    }
    if problems.is_empty() {
        Ok(init)
    } else {
        Err(problems)
    }
}

/// `mesh-proxy init ARGS`: 0 once the rules are in place (or printed, or
/// removed), 64 for bad flags (nothing written), 1 when iptables fails.
pub fn main(args: &[String]) -> ExitCode {
    let init = match parse(args) {
        Ok(i) => i,
        Err(problems) => {
            for p in problems {
                eprintln!("mesh-proxy init: {p}");
            }
            return ExitCode::from(64);
        }
    };
    match apply::run(&init) {
        Ok(said) => {
            print!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-proxy init: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
