//! Writing the rules: the nat table of each address family read with
//! iptables-save, merged with mesh's rules (`rules::merge`), and written
//! back whole with iptables-restore, which swaps a table atomically; so a
//! pod never runs with half of them, and a second run leaves the table as
//! the first left it.

use super::rules::{self, Family};
use super::{Action, Backend, Init};
use std::io::Write;
use std::process::{Command, Stdio};

/// Why the rules could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The iptables binary could not be started.
    #[error("{command}: {source} (is iptables installed?)")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// The families the pod's network namespace has: IPv6 only where the
/// kernel gives it addresses (`/proc/net` is the namespace's own).
fn families() -> Vec<Family> {
    if std::path::Path::new("/proc/net/if_inet6").exists() {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

fn binaries(backend: Backend, family: Family) -> (&'static str, &'static str) {
    match (backend, family) {
        (Backend::Nft, Family::V4) => ("iptables-nft-save", "iptables-nft-restore"),
        (Backend::Nft, Family::V6) => ("ip6tables-nft-save", "ip6tables-nft-restore"),
        (Backend::Legacy, Family::V4) => ("iptables-legacy-save", "iptables-legacy-restore"),
        (Backend::Legacy, Family::V6) => ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
    }
}

/// Does what `init` asks; what to print.
pub(super) fn run(init: &Init) -> Result<String, Error> {
    let mut said = String::new();
    for family in families() {
        let (save, restore) = binaries(init.backend, family);
        let ours = rules::ours(init, family);
        match init.action {
            Action::Simulate => {
                said.push_str(&format!(
                    "# {family:?}: mesh's chains and rules, as {restore} would take them\n"
                ));
                said.push_str(&rules::merge("", Some(&ours)));
            }
            Action::Apply | Action::Clean => {
                let current = output(Command::new(save).args(["-t", "nat"]), None)?;
                let keep = (init.action == Action::Apply).then_some(ours.as_str());
                let table = rules::merge(&current, keep);
                output(&mut Command::new(restore), Some(&table))?;
                let what = if keep.is_some() { "written" } else { "removed" };
                said.push_str(&format!(
                    "mesh-proxy init: mesh's nat rules {what} ({family:?}, {restore})\n"
                ));
            }
        }
    }
    Ok(said)
}

/// Runs `cmd` with `input` on its stdin; its stdout.
fn output(cmd: &mut Command, input: Option<&str>) -> Result<String, Error> {
    let command = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A failed write shows as the command's own failure below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
