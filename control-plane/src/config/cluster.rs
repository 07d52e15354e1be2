//! The flags only a control plane on a Kubernetes cluster has: the
//! admission webhook's listener, and what its replicas share (the
//! namespace of its own objects, its name in leader election, the Lease's
//! duration, the Secret holding the CA). Plain data, checked with the rest.

use std::net::SocketAddr;

/// The command line's cluster flags, as text.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ClusterArgs {
    /// HTTPS listen address of the validating admission webhook
    /// (`--registry kubernetes` only); default: not served.
    #[arg(long, env = "MESH_CONTROL_WEBHOOK_ADDR")]
    webhook_addr: Option<String>,
    /// Comma-separated DNS names and IP addresses the webhook's certificate
    /// names: the Service the API server calls it through.
    #[arg(
        long,
        env = "MESH_CONTROL_WEBHOOK_NAMES",
        default_value = DEFAULT_WEBHOOK_NAMES
    )]
    webhook_names: String,
    /// The ValidatingWebhookConfiguration whose caBundle mesh-control keeps
    /// equal to the mesh's roots.
    #[arg(
        long,
        env = "MESH_CONTROL_WEBHOOK_CONFIGURATION",
        default_value = "mesh-control"
    )]
    webhook_configuration: String,
    /// The MutatingWebhookConfiguration (sidecar injection) whose caBundle
    /// mesh-control keeps equal to the mesh's roots.
    #[arg(
        long,
        env = "MESH_CONTROL_INJECTOR_CONFIGURATION",
        default_value = "mesh-inject"
    )]
    injector_configuration: String,
    /// The image injected sidecars (and their redirect step) run.
    #[arg(
        long,
        env = "MESH_CONTROL_PROXY_IMAGE",
        default_value = DEFAULT_PROXY_IMAGE
    )]
    proxy_image: String,
    /// The injected containers' imagePullPolicy: Always, IfNotPresent or Never.
    #[arg(
        long,
        env = "MESH_CONTROL_PROXY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    proxy_image_pull_policy: String,
    /// The control plane's gRPC URL as injected sidecars reach it.
    #[arg(
        long,
        env = "MESH_CONTROL_INJECT_CONTROL_ADDR",
        default_value = DEFAULT_INJECT_CONTROL_ADDR
    )]
    inject_control_addr: String,
    /// The namespace of the control plane's own objects: its Lease and its
    /// CA Secret (`--registry kubernetes`).
    #[arg(long, env = "MESH_CONTROL_NAMESPACE", default_value = "mesh-system")]
    namespace: String,
    /// This replica's name in leader election; default: $POD_NAME, else
    /// $HOSTNAME and the process id.
    #[arg(long, env = "MESH_CONTROL_IDENTITY")]
    identity: Option<String>,
    /// How long the leader's Lease lasts unrenewed: another replica takes
    /// over at most this long after the leader dies. Renewed when a third
    /// of it is left.
    #[arg(long, env = "MESH_CONTROL_LEASE_DURATION_SECS", default_value = "15")]
    lease_duration_secs: String,
    /// The Secret (in --namespace) that holds the CA's root and issuing
    /// keys, so every replica signs with one chain; created by the first
    /// replica to start. Default: the CA stays in --state-dir, which suits
    /// one replica only.
    #[arg(long, env = "MESH_CONTROL_CA_SECRET")]
    ca_secret: Option<String>,
    /// The Service (in --namespace) whose ready endpoints are this control
    /// plane's replicas: each pulls from the others the telemetry their
    /// sidecars reported, so the leader's release analysis and `stat` on
    /// any replica see every sidecar. Empty: no pulling.
    #[arg(
        long,
        env = "MESH_CONTROL_PEERS_SERVICE",
        default_value = "mesh-control"
    )]
    peers_service: String,
}

/// The names the webhook's certificate carries by default: the install's
/// Service, as the API server resolves it.
pub const DEFAULT_WEBHOOK_NAMES: &str =
    "mesh-control.mesh-system.svc,mesh-control.mesh-system.svc.cluster.local";

/// The image injected sidecars run by default.
const DEFAULT_PROXY_IMAGE: &str = "mesh/mesh-proxy:0.1.0";
/// The control plane's gRPC URL from a pod, by default: the install's
/// Service.
const DEFAULT_INJECT_CONTROL_ADDR: &str = "https://mesh-control.mesh-system.svc:15010";

/// What the injection webhook gives every sidecar it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injector {
    /// The MutatingWebhookConfiguration whose caBundle is kept current.
    pub configuration: String,
    /// The image injected sidecars run.
    pub image: String,
    /// Their imagePullPolicy.
    pub pull_policy: String,
    /// The control plane's URL as sidecars reach it.
    pub control_addr: String,
}

/// The validating admission webhook's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// HTTPS listen address.
    pub addr: SocketAddr,
    /// DNS names and IP addresses its certificate carries.
    pub names: Vec<String>,
    /// The ValidatingWebhookConfiguration whose caBundle is kept current.
    pub configuration: String,
    /// Sidecar injection, served on the same listener.
    pub injector: Injector,
}

/// What a control plane on a cluster is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The admission webhook, when served.
    pub webhook: Option<Webhook>,
    /// The namespace of its Lease and CA Secret.
    pub namespace: String,
    /// This replica's name in leader election.
    pub identity: String,
    /// The Lease's duration, in seconds.
    pub lease_duration_secs: u64,
    /// The Secret holding the CA, if the replicas share one.
    pub ca_secret: Option<String>,
    /// The Service whose endpoints are the replicas (empty: none).
    pub peers_service: String,
}

/// Checks the cluster flags (`kubernetes`: whether the registry is the
/// cluster), naming each problem.
pub(super) fn check(args: &ClusterArgs, kubernetes: bool, problems: &mut Vec<String>) -> Cluster {
    let webhook = args.webhook_addr.as_deref().map(|a| {
        let addr = a.trim().parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.push(format!("--webhook-addr {a:?}: not an ip:port address"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        Webhook {
            addr,
            names: webhook_names(&args.webhook_names, problems),
            configuration: args.webhook_configuration.clone(),
            injector: injector(args, problems),
        }
    });
    for (flag, given) in [
        ("--webhook-addr", webhook.is_some()),
        ("--ca-secret", args.ca_secret.is_some()),
        ("--identity", args.identity.is_some()),
    ] {
        if given && !kubernetes {
            problems.push(format!("{flag}: only with --registry kubernetes"));
        }
    }
    if !is_dns_label(&args.namespace) {
        problems.push(format!(
            "--namespace {:?}: not a namespace name (lower-case letters, digits and '-', at most 63)",
            args.namespace
        ));
    }
    if let Some(s) = &args.ca_secret
        && !is_dns_name(s)
    {
        problems.push(format!(
            "--ca-secret {s:?}: not a Secret name (a lower-case DNS name)"
        ));
    }
    let peers_service = args.peers_service.trim().to_string();
    if !peers_service.is_empty() && !is_dns_label(&peers_service) {
        problems.push(format!(
            "--peers-service {:?}: not a Service name (lower-case letters, digits and '-', at most 63), or empty for none",
            args.peers_service
        ));
    }
    let lease_duration_secs = match args.lease_duration_secs.trim().parse::<u64>() {
        Ok(n) if (2..=3600).contains(&n) => n,
        _ => {
            problems.push(format!(
                "--lease-duration-secs {:?}: a whole number of seconds from 2 to 3600",
                args.lease_duration_secs
            ));
            15
        }
    };
    let identity = match &args.identity {
        Some(id) if !id.trim().is_empty() => id.trim().to_string(),
        Some(_) => {
            problems.push("--identity: must not be empty".into());
            String::new()
        }
        None => std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mesh-control".into());
            format!("{host}-{}", std::process::id())
        }),
    };
    Cluster {
        webhook,
        namespace: args.namespace.clone(),
        identity,
        lease_duration_secs,
        ca_secret: args.ca_secret.clone(),
        peers_service,
    }
}

fn injector(args: &ClusterArgs, problems: &mut Vec<String>) -> Injector {
    if !is_dns_name(&args.injector_configuration) {
        problems.push(format!(
            "--injector-configuration {:?}: not an object name (a lower-case DNS name)",
            args.injector_configuration
        ));
    }
    let image = args.proxy_image.trim();
    if image.is_empty() || image.contains(char::is_whitespace) {
        problems.push(format!(
            "--proxy-image {:?}: not an image reference",
            args.proxy_image
        ));
    }
    let policy = args.proxy_image_pull_policy.trim();
    if !matches!(policy, "Always" | "IfNotPresent" | "Never") {
        problems.push(format!(
            "--proxy-image-pull-policy {policy:?}: Always, IfNotPresent or Never"
        ));
    }
    let addr = args.inject_control_addr.trim();
    if !addr.starts_with("https://") || addr.parse::<http::Uri>().is_err() {
        problems.push(format!(
            "--inject-control-addr {addr:?}: the control plane speaks only TLS; an https:// URL"
        ));
    }
    Injector {
        configuration: args.injector_configuration.clone(),
        image: image.to_string(),
        pull_policy: policy.to_string(),
        control_addr: addr.to_string(),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The webhook certificate's names: DNS names (RFC 1123 labels) or IP
/// addresses, at least one.
fn webhook_names(list: &str, problems: &mut Vec<String>) -> Vec<String> {
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        problems.push("--webhook-names: name at least one DNS name or IP address".into());
    }
    for n in &names {
        if !is_dns_name(n) && n.parse::<std::net::IpAddr>().is_err() {
            problems.push(format!(
                "--webhook-names {n:?}: neither a lower-case DNS name nor an IP address"
            ));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, problems};

    #[test]
    fn the_webhook_needs_the_cluster_and_names_it_can_certify() {
        let c = parse(&[
            "--registry",
            "kubernetes",
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-names",
            "127.0.0.1, mesh-control.mesh-system.svc",
        ])
        .unwrap();
        let w = c.cluster.webhook.unwrap();
        assert_eq!(w.names, ["127.0.0.1", "mesh-control.mesh-system.svc"]);
        assert_eq!(w.configuration, "mesh-control");
        assert_eq!(w.injector.configuration, "mesh-inject");
        assert_eq!(w.injector.image, super::DEFAULT_PROXY_IMAGE);
        let p = problems(&[
            "--registry",
            "kubernetes",
            "--webhook-addr",
            "127.0.0.1:0",
            "--proxy-image-pull-policy",
            "Sometimes",
            "--inject-control-addr",
            "http://mesh-control:15010",
        ]);
        assert!(
            p.iter()
                .any(|x| x.contains("--proxy-image-pull-policy \"Sometimes\"")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.contains("--inject-control-addr")),
            "{p:?}"
        );
        assert!(parse(&[]).unwrap().cluster.webhook.is_none());
        let p = problems(&[
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-names",
            "Mesh_Control.svc,,",
        ]);
        assert!(
            p.iter()
                .any(|x| x.contains("only with --registry kubernetes")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.contains("\"Mesh_Control.svc\": neither a lower-case DNS name")),
            "{p:?}"
        );
        let p = problems(&["--registry", "kubernetes", "--webhook-addr", "15017"]);
        assert!(
            p.iter().any(|x| x.contains("--webhook-addr \"15017\"")),
            "{p:?}"
        );
    }

    #[test]
    fn replicas_share_a_namespace_a_lease_and_maybe_a_ca_secret() {
        let c = parse(&[
            "--registry",
            "kubernetes",
            "--identity",
            "replica-a",
            "--ca-secret",
            "mesh-ca",
            "--lease-duration-secs",
            "4",
        ])
        .unwrap();
        assert_eq!(c.cluster.namespace, "mesh-system");
        assert_eq!(c.cluster.identity, "replica-a");
        assert_eq!(c.cluster.ca_secret.as_deref(), Some("mesh-ca"));
        assert_eq!(c.cluster.lease_duration_secs, 4);
        // The install's Service is where the peers are, unless told.
        assert_eq!(c.cluster.peers_service, "mesh-control");
        let off = parse(&["--registry", "kubernetes", "--peers-service", ""]).unwrap();
        assert_eq!(off.cluster.peers_service, "");
        let p = problems(&[
            "--ca-secret",
            "Mesh_CA",
            "--namespace",
            "Mesh",
            "--lease-duration-secs",
            "1",
            "--peers-service",
            "Mesh.Control",
        ]);
        for what in [
            "--ca-secret: only with --registry kubernetes",
            "\"Mesh_CA\": not a Secret name",
            "--namespace \"Mesh\"",
            "--lease-duration-secs \"1\"",
            "--peers-service \"Mesh.Control\": not a Service name",
        ] {
            assert!(p.iter().any(|x| x.contains(what)), "{what}: {p:?}");
        }
    }
}
