//! `meshctl check`: is the mesh healthy? The control plane answers, every
//! proxy runs the newest config, every workload certificate is fresh, and
//! the CA root is not about to expire. Lists every sidecar: registered
//! workloads and outbound-only sidecars (no app, so never registered).
//! Exits non-zero on any warning.

use crate::client::{admin, explain};
use anyhow::Result;
use mesh_proto::v1 as pb;
use std::time::{SystemTime, UNIX_EPOCH};

/// A root expiring sooner than this is worth a warning.
const ROOT_WARN_SECS: i64 = 30 * 24 * 3600;

/// Everything worth a warning, given the control plane's answers and `now` (Unix seconds).
pub fn assess(
    ids: &pb::IdentitiesResponse,
    proxies: &pb::ProxyStatusResponse,
    now: i64,
) -> Vec<String> {
    let mut out = Vec::new();
    let root_left = ids.root_not_after_unix - now;
    if root_left <= 0 {
        out.push("the CA root has EXPIRED: no certificate it signs is trusted".into());
    } else if root_left < ROOT_WARN_SECS {
        out.push(format!(
            "the CA root expires in {}: rotate it",
            human(root_left)
        ));
    }
    for w in ids.workloads.iter().filter(|w| !w.identity.is_empty()) {
        let name = format!("{}/{}", w.namespace, w.instance_id);
        let left = w.cert_not_after_unix - now;
        if w.cert_not_after_unix == 0 {
            out.push(format!("{name} has no workload certificate yet"));
        } else if left <= 0 {
            out.push(format!("{name}'s certificate has EXPIRED"));
        } else if left * 4 < ids.cert_lifetime_secs {
            // Renewal happens with ~30% left; under 25% means it keeps failing.
            out.push(format!(
                "{name}'s certificate expires in {} (less than a quarter of its lifetime): renewal is failing",
                human(left)
            ));
        }
    }
    // Once any workload proves an identity the mesh runs mTLS, and one that
    // proves none is either unreachable for mTLS callers or, where a policy
    // allows plaintext, reached without encryption: worth naming either way.
    if ids.workloads.iter().any(|w| !w.identity.is_empty()) {
        for w in ids.workloads.iter().filter(|w| w.identity.is_empty()) {
            out.push(format!(
                "{}/{} ({}) proves no identity while the mesh runs mTLS: callers with one do not reach it unless TrafficPolicy {} sets tls.mode: permissive, and then in plaintext",
                w.namespace, w.instance_id, w.service, w.service
            ));
        }
    }
    for p in &proxies.proxies {
        let name = format!("{}/{}", p.namespace, p.instance_id);
        if !p.nack_reason.is_empty() {
            out.push(format!(
                "{name} rejects config {}: {}",
                p.nacked_version, p.nack_reason
            ));
        } else if p.acked_version != proxies.control_version {
            out.push(format!(
                "{name} runs config {} but the control plane is at {}",
                if p.acked_version.is_empty() {
                    "none"
                } else {
                    &p.acked_version
                },
                proxies.control_version
            ));
        }
    }
    out
}

/// One table row per sidecar: (instance, service, identity, certificate).
/// Registered workloads come from the CA's view; a subscribed sidecar it
/// does not know has no app (a client, a job) and is listed as such.
pub fn rows(
    ids: &pb::IdentitiesResponse,
    proxies: &pb::ProxyStatusResponse,
    now: i64,
) -> Vec<[String; 4]> {
    let mut out: Vec<[String; 4]> = ids
        .workloads
        .iter()
        .map(|w| {
            let (id, left) = if w.identity.is_empty() {
                ("(plaintext)".to_string(), "-".to_string())
            } else if w.cert_not_after_unix == 0 {
                (w.identity.clone(), "no certificate".to_string())
            } else {
                (w.identity.clone(), human(w.cert_not_after_unix - now))
            };
            [w.instance_id.clone(), w.service.clone(), id, left]
        })
        .collect();
    let registered = |p: &pb::ProxyStatus| {
        ids.workloads
            .iter()
            .any(|w| w.namespace == p.namespace && w.instance_id == p.instance_id)
    };
    for p in proxies.proxies.iter().filter(|p| !registered(p)) {
        out.push([
            p.instance_id.clone(),
            p.service.clone(),
            "(no app: outbound only)".into(),
            "-".into(),
        ]);
    }
    out
}

fn human(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

/// Runs the checks and prints them; returns whether all passed.
pub async fn run(control: &crate::client::Control) -> Result<bool> {
    let mut client = admin(control).await?;
    let ids = client
        .identities(pb::IdentitiesRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let proxies = client
        .proxy_status(pb::ProxyStatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    println!(
        "control plane {}: config version {}",
        control.url, proxies.control_version
    );
    println!(
        "trust domain {}: CA root expires in {}; workload certificates live {}\n",
        ids.trust_domain,
        human(ids.root_not_after_unix - now),
        human(ids.cert_lifetime_secs)
    );
    println!(
        "{:<18} {:<12} {:<48} CERTIFICATE EXPIRES IN",
        "INSTANCE", "SERVICE", "IDENTITY"
    );
    for [instance, service, id, left] in rows(&ids, &proxies, now) {
        println!("{instance:<18} {service:<12} {id:<48} {left}");
    }
    let warnings = assess(&ids, &proxies, now);
    println!();
    if warnings.is_empty() {
        println!(
            "all checks passed: {} proxies synced, every certificate fresh",
            proxies.proxies.len()
        );
    }
    for w in &warnings {
        println!("WARNING: {w}");
    }
    Ok(warnings.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(root_left: i64, cert_left: i64) -> pb::IdentitiesResponse {
        pb::IdentitiesResponse {
            trust_domain: "cluster.local".into(),
            root_not_after_unix: 1000 + root_left,
            cert_lifetime_secs: 86400,
            workloads: vec![pb::WorkloadIdentity {
                namespace: "default".into(),
                service: "echo".into(),
                instance_id: "echo-0".into(),
                identity: "spiffe://cluster.local/ns/default/sa/echo".into(),
                cert_not_after_unix: 1000 + cert_left,
            }],
        }
    }

    fn synced() -> pb::ProxyStatusResponse {
        pb::ProxyStatusResponse {
            control_version: "7".into(),
            proxies: vec![pb::ProxyStatus {
                instance_id: "echo-0".into(),
                namespace: "default".into(),
                acked_version: "7".into(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_sidecar_without_an_app_is_listed_too() {
        let mut proxies = synced();
        proxies.proxies.push(pb::ProxyStatus {
            service: "client".into(),
            instance_id: "client-0".into(),
            namespace: "default".into(),
            acked_version: "7".into(),
            ..Default::default()
        });
        let rows = rows(&ids(365 * 86400, 80000), &proxies, 1000);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0][0], "echo-0");
        assert_eq!(
            rows[1],
            ["client-0", "client", "(no app: outbound only)", "-"].map(String::from)
        );
    }

    #[test]
    fn an_endpoint_without_identity_in_an_mtls_mesh_is_named() {
        let mut with_rogue = ids(400 * 86400, 80_000);
        with_rogue.workloads.push(pb::WorkloadIdentity {
            namespace: "default".into(),
            service: "echo".into(),
            instance_id: "rogue-1".into(),
            identity: String::new(),
            cert_not_after_unix: 0,
        });
        let warnings = assess(&with_rogue, &synced(), 1000);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("default/rogue-1 (echo) proves no identity"));
        // Without mTLS anywhere, plaintext is the mesh's mode, not a warning.
        let mut plain = with_rogue.clone();
        plain.workloads.iter_mut().for_each(|w| w.identity.clear());
        assert!(assess(&plain, &synced(), 1000).is_empty());
    }

    #[test]
    fn a_healthy_mesh_has_no_warnings() {
        assert!(assess(&ids(365 * 86400, 80000), &synced(), 1000).is_empty());
    }

    #[test]
    fn expiring_root_and_certificates_and_stale_proxies_are_named() {
        let w = assess(&ids(10 * 86400, 3600), &synced(), 1000);
        assert!(
            w.iter().any(|w| w.contains("CA root expires in 10 days")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("echo-0's certificate expires in")
                    && w.contains("renewal is failing")),
            "{w:?}"
        );
        let w = assess(&ids(365 * 86400, -1), &synced(), 1000);
        assert!(w.iter().any(|w| w.contains("EXPIRED")), "{w:?}");
        let mut stale = synced();
        stale.proxies[0].acked_version = "6".into();
        let w = assess(&ids(365 * 86400, 80000), &stale, 1000);
        assert!(
            w.iter()
                .any(|w| w.contains("runs config 6 but the control plane is at 7")),
            "{w:?}"
        );
        let mut nack = synced();
        nack.proxies[0].nack_reason = "bad".into();
        nack.proxies[0].nacked_version = "7".into();
        assert!(assess(&ids(365 * 86400, 80000), &nack, 1000)[0].contains("rejects config 7: bad"));
    }
}
