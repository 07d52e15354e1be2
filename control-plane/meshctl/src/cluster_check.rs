//! `meshctl check` against a cluster. `--pre`: the cluster answers, runs
//! Kubernetes 1.29 or newer, and lets this user create everything
//! `meshctl install` renders (SelfSubjectAccessReview). Without it: the
//! CRDs are established, a control-plane replica holds the leader Lease
//! and renews it, the CA Secret holds a root that is not about to expire,
//! the webhook configuration carries the mesh's roots, and every rule
//! object is accepted for its current generation (each one refused, say
//! written while no webhook guarded the API, is named with why). What is
//! gathered from the cluster is judged by a pure function.

use crate::cluster::Cluster;
use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use std::time::{SystemTime, UNIX_EPOCH};

/// The oldest Kubernetes mesh supports (native sidecars, ValidatingAdmissionPolicy-era APIs).
const MIN_MINOR: u32 = 29;
/// A CA root expiring sooner than this is worth a warning.
const ROOT_WARN_SECS: i64 = 30 * 24 * 3600;
/// The CRDs an install establishes.
pub const CRDS: [&str; 5] = [
    "trafficsplits.split.smi-spec.io",
    "httproutegroups.specs.smi-spec.io",
    "trafficpolicies.mesh.dev",
    "authorizationpolicies.mesh.dev",
    "releases.mesh.dev",
];

/// One rule object's standing.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// "TrafficSplit default/echo".
    pub name: String,
    /// metadata.generation.
    pub generation: i64,
    /// Accepted: (status, observedGeneration, message).
    pub accepted: Option<(String, i64, String)>,
    /// ResolvedRefs: (status, message).
    pub resolved: Option<(String, String)>,
}

/// What `meshctl check` gathered from the cluster.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Whether each CRD of `CRDS` is established (None: missing).
    pub crds: Vec<(String, Option<bool>)>,
    /// The leader Lease: holder and seconds since its renewal, and its duration.
    pub lease: Option<(Option<String>, Option<i64>, i64)>,
    /// The CA root's expiry (Unix seconds), if the Secret holds one.
    pub root_not_after: Option<i64>,
    /// The CA Secret's root certificate, PEM.
    pub root_pem: Option<String>,
    /// caBundles of the webhook configuration (None: missing).
    pub webhook_bundles: Option<Vec<String>>,
    /// caBundles of the injection webhook configuration (None: missing).
    pub injector_bundles: Option<Vec<String>>,
    /// Every rule object.
    pub rules: Vec<Rule>,
}

/// Every finding: (passed, what). Pure.
pub fn judge(f: &Facts, now: i64) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for (name, established) in &f.crds {
        out.push(match established {
            Some(true) => (true, format!("CRD {name} is established")),
            Some(false) => (false, format!("CRD {name} exists but is not established")),
            None => (
                false,
                format!("CRD {name} is missing: meshctl install | kubectl apply -f -"),
            ),
        });
    }
    out.push(match &f.lease {
        Some((Some(holder), Some(ago), duration)) if *ago <= *duration => (
            true,
            format!("control plane: {holder} leads (Lease renewed {ago} s ago, lasts {duration} s)"),
        ),
        Some((Some(holder), Some(ago), _)) => (
            false,
            format!("control plane: the Lease of {holder} lapsed {ago} s ago and no replica took it: is mesh-control running?"),
        ),
        _ => (false, "control plane: no replica holds the Lease mesh-system/mesh-control: is mesh-control running?".into()),
    });
    match f.root_not_after {
        Some(t) if t <= now => out.push((false, "the CA root in Secret mesh-system/mesh-ca has EXPIRED".into())),
        Some(t) if t - now < ROOT_WARN_SECS => out.push((
            false,
            format!("the CA root in Secret mesh-system/mesh-ca expires in {} days: rotate it", (t - now) / 86400),
        )),
        Some(t) => out.push((true, format!("CA root valid for {} more days", (t - now) / 86400))),
        None => out.push((false, "no CA in Secret mesh-system/mesh-ca: replicas do not share one chain (run mesh-control with --ca-secret)".into())),
    }
    for (bundles, what, missing) in [
        (
            &f.webhook_bundles,
            "the webhook configuration",
            "ValidatingWebhookConfiguration mesh-control is missing: bad rules reach the cluster unvalidated",
        ),
        (
            &f.injector_bundles,
            "the injection webhook configuration",
            "MutatingWebhookConfiguration mesh-inject is missing: no Pod gets a sidecar",
        ),
    ] {
        match (bundles, &f.root_pem) {
            (None, _) => out.push((false, missing.into())),
            (Some(b), _) if b.is_empty() || b.iter().any(String::is_empty) => out.push((
                false,
                format!("{what} has no caBundle yet: the API server cannot call the webhook (is mesh-control running?)"),
            )),
            (Some(b), Some(root)) if b.iter().any(|x| x.trim() != root.trim()) => out.push((
                false,
                format!("{what}'s caBundle is not the mesh's roots: the API server will refuse the webhook's certificate"),
            )),
            (Some(_), _) => out.push((true, format!("{what} trusts the mesh's roots"))),
        }
    }
    for r in &f.rules {
        match &r.accepted {
            Some((s, g, _)) if s == "True" && *g == r.generation => {
                match &r.resolved {
                    Some((s, m)) if s == "False" => out.push((false, format!("{} is accepted but names what the cluster lacks: {m}", r.name))),
                    _ => out.push((true, format!("{} is accepted", r.name))),
                }
            }
            Some((s, g, m)) if s == "False" && *g == r.generation => out.push((
                false,
                format!("{} is REFUSED (generation {g}); its last valid version, if any, keeps serving: {m}", r.name),
            )),
            _ => out.push((
                false,
                format!("{} generation {} is not judged yet: is the leader running?", r.name, r.generation),
            )),
        }
    }
    out
}

/// `--pre`: what an install needs of the cluster and of this user.
pub async fn pre(c: &Cluster) -> Result<bool> {
    let mut ok = true;
    let v = c.client().apiserver_version().await?;
    let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
    if v.major == "1" && minor >= MIN_MINOR {
        println!("✓ Kubernetes {} (1.{MIN_MINOR} or newer)", v.git_version);
    } else {
        println!(
            "✗ Kubernetes {}: mesh needs 1.{MIN_MINOR} or newer",
            v.git_version
        );
        ok = false;
    }
    let can = [
        ("", "namespaces", ""),
        ("apiextensions.k8s.io", "customresourcedefinitions", ""),
        ("rbac.authorization.k8s.io", "clusterroles", ""),
        ("rbac.authorization.k8s.io", "clusterrolebindings", ""),
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "",
        ),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
        ),
        ("", "serviceaccounts", "mesh-system"),
        ("rbac.authorization.k8s.io", "roles", "mesh-system"),
        ("rbac.authorization.k8s.io", "rolebindings", "mesh-system"),
        ("apps", "deployments", "mesh-system"),
        ("", "services", "mesh-system"),
        ("policy", "poddisruptionbudgets", "mesh-system"),
    ];
    let api = kube::Api::<SelfSubjectAccessReview>::all(c.client());
    let mut refused = Vec::new();
    for (group, resource, namespace) in can {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some("create".into()),
                    namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            refused.push(if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            });
        }
    }
    if refused.is_empty() {
        println!("✓ you may create everything meshctl install renders");
    } else {
        println!("✗ you may not create: {}", refused.join(", "));
        ok = false;
    }
    Ok(ok)
}

/// Gathers the facts from the cluster.
pub async fn gather(c: &Cluster) -> Result<Facts> {
    let mut f = Facts::default();
    let crds = kube::Api::<CustomResourceDefinition>::all(c.client());
    for name in CRDS {
        let established = crds.get_opt(name).await?.map(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        f.crds.push((name.to_string(), established));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if let Some(lease) = kube::Api::<Lease>::namespaced(c.client(), "mesh-system")
        .get_opt("mesh-control")
        .await?
    {
        let spec = lease.spec.unwrap_or_default();
        let ago = spec.renew_time.map(|t| now - t.0.as_second());
        f.lease = Some((
            spec.holder_identity,
            ago,
            i64::from(spec.lease_duration_seconds.unwrap_or(0)),
        ));
    }
    if let Some(secret) = kube::Api::<Secret>::namespaced(c.client(), "mesh-system")
        .get_opt("mesh-ca")
        .await?
    {
        let data = secret.data.unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        if let (Some(root_pem), Some(root_key_pem), Some(issuing_pem), Some(issuing_key_pem)) = (
            text("root-cert.pem"),
            text("root-key.pem"),
            text("ca-cert.pem"),
            text("ca-key.pem"),
        ) {
            let m = mesh_control::identity::ca::Material {
                root_pem: root_pem.clone(),
                root_key_pem,
                issuing_pem,
                issuing_key_pem,
            };
            if let Ok(ca) = mesh_control::identity::ca::Ca::from_material(
                &m,
                std::path::Path::new("Secret mesh-system/mesh-ca"),
                std::time::Duration::from_secs(3600),
            ) {
                f.root_not_after = Some(ca.root_not_after_unix());
                f.root_pem = Some(root_pem);
            }
        }
    }
    let bundle = |b: Option<&k8s_openapi::ByteString>| {
        b.map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    if let Some(vwc) = kube::Api::<ValidatingWebhookConfiguration>::all(c.client())
        .get_opt("mesh-control")
        .await?
    {
        f.webhook_bundles = Some(
            vwc.webhooks
                .unwrap_or_default()
                .iter()
                .map(|w| bundle(w.client_config.ca_bundle.as_ref()))
                .collect(),
        );
    }
    if let Some(mwc) = kube::Api::<MutatingWebhookConfiguration>::all(c.client())
        .get_opt("mesh-inject")
        .await?
    {
        f.injector_bundles = Some(
            mwc.webhooks
                .unwrap_or_default()
                .iter()
                .map(|w| bundle(w.client_config.ca_bundle.as_ref()))
                .collect(),
        );
    }
    // HTTPRoutes too, where the cluster serves them (mesh's alone).
    let route = mesh_control::kubernetes::gateway::resource();
    for ar in Cluster::kinds().chain([route]) {
        let Ok(list) = c.api(&ar, None).list(&ListParams::default()).await else {
            continue;
        };
        for obj in list {
            if mesh_control::kubernetes::rules::ours(&ar, &obj) {
                f.rules.push(rule(&ar, &obj));
            }
        }
    }
    Ok(f)
}

fn rule(ar: &ApiResource, obj: &DynamicObject) -> Rule {
    let conditions = mesh_control::kubernetes::status::current(ar, obj);
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    Rule {
        name: format!(
            "{} {}/{}",
            ar.kind,
            obj.metadata.namespace.as_deref().unwrap_or(""),
            obj.metadata.name.as_deref().unwrap_or("")
        ),
        generation: obj.metadata.generation.unwrap_or(0),
        accepted: find("Accepted").map(|c| {
            (
                c.status.clone(),
                c.observed_generation.unwrap_or(0),
                c.message.clone(),
            )
        }),
        resolved: find("ResolvedRefs").map(|c| (c.status.clone(), c.message.clone())),
    }
}

/// `meshctl check` against the cluster: prints every finding; returns
/// whether all passed.
pub async fn run(c: &Cluster) -> Result<bool> {
    let facts = gather(c).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let findings = judge(&facts, now);
    for (ok, what) in &findings {
        println!("{} {what}", if *ok { "✓" } else { "✗" });
    }
    Ok(findings.iter().all(|(ok, _)| *ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_rule_a_lapsed_lease_and_a_missing_webhook_are_named() {
        let f = Facts {
            crds: vec![(CRDS[0].into(), Some(true)), (CRDS[1].into(), None)],
            lease: Some((Some("replica-a".into()), Some(40), 15)),
            root_not_after: Some(1_000 + 400 * 86400),
            root_pem: Some("ROOT".into()),
            webhook_bundles: None,
            injector_bundles: Some(vec!["ROOT".into()]),
            rules: vec![
                Rule {
                    name: "TrafficSplit default/good".into(),
                    generation: 2,
                    accepted: Some(("True".into(), 2, String::new())),
                    resolved: None,
                },
                Rule {
                    name: "TrafficSplit default/bad".into(),
                    generation: 3,
                    accepted: Some(("False".into(), 3, "spec.backends: every weight is 0".into())),
                    resolved: None,
                },
                Rule {
                    name: "TrafficSplit default/new".into(),
                    generation: 4,
                    accepted: Some(("True".into(), 3, String::new())),
                    resolved: None,
                },
            ],
        };
        let failed: Vec<String> = judge(&f, 1_000)
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, w)| w)
            .collect();
        let has = |s: &str| failed.iter().any(|w| w.contains(s));
        assert!(
            has("httproutegroups.specs.smi-spec.io is missing"),
            "{failed:?}"
        );
        assert!(has("Lease of replica-a lapsed 40 s ago"), "{failed:?}");
        assert!(
            has("ValidatingWebhookConfiguration mesh-control is missing"),
            "{failed:?}"
        );
        assert!(
            has("TrafficSplit default/bad is REFUSED (generation 3)") && has("every weight is 0"),
            "{failed:?}"
        );
        assert!(
            has("TrafficSplit default/new generation 4 is not judged yet"),
            "{failed:?}"
        );
        assert!(!has("default/good") && !has("CA root"), "{failed:?}");
    }
}
