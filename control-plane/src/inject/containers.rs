//! The two init containers injection adds and the token volume: the
//! redirect step (`mesh-proxy init`, NET_ADMIN and NET_RAW only) and the
//! native sidecar (`restartPolicy: Always`, started before the app and
//! ready first through its startupProbe, stopped after it, so a Job's pod
//! completes when its app exits).

use super::annotations::{DEFAULT_OPAQUE_PORTS, Overrides};
use super::{INIT, PROXY, TOKEN_VOLUME, Template};
use serde_json::{Value, json};

/// The sidecar's uid: the redirect step lets this uid's traffic out
/// unredirected, so what the sidecar sends is never looped back into it.
pub(super) const PROXY_UID: u64 = 2102;
/// The sidecar's listeners in the pod: inbound (peers), outbound (the
/// app), admin (the kubelet's probes).
const INBOUND_PORT: u16 = 4143;
const OUTBOUND_PORT: u16 = 4140;
const ADMIN_PORT: u16 = 4191;
/// Where the projected token is mounted.
const TOKEN_DIR: &str = "/var/run/secrets/mesh";
/// How long the kubelet lets the sidecar take to be ready (1 s probes).
const STARTUP_SECONDS: u64 = 120;

/// The redirect step and the sidecar for `pod`.
pub(super) fn build(pod: &Value, o: &Overrides, t: &Template) -> (Value, Value) {
    (init(o, t), proxy(pod, o, t))
}

/// The projected ServiceAccount token, audience `mesh`, that proves the
/// pod's identity to the CA (checked with a TokenReview); the kubelet
/// rotates it and the sidecar reads it again at each renewal.
pub(super) fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": "mesh", "expirationSeconds": 3600, "path": "token"}}]},
    })
}

fn init(o: &Overrides, t: &Template) -> Value {
    // The admin port is never redirected: the kubelet probes it.
    let skip_in = match &o.skip_inbound_ports {
        Some(p) => format!("{ADMIN_PORT},{p}"),
        None => ADMIN_PORT.to_string(),
    };
    let mut args = vec![
        "init".to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--skip-inbound-ports".into(),
        skip_in,
    ];
    for (flag, value) in [
        ("--skip-outbound-ports", &o.skip_outbound_ports),
        ("--skip-outbound-cidrs", &o.skip_outbound_cidrs),
    ] {
        if let Some(v) = value {
            args.extend([flag.to_string(), v.clone()]);
        }
    }
    json!({
        "name": INIT,
        "image": t.image,
        "imagePullPolicy": t.pull_policy,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"},
                      "limits": {"cpu": "100m", "memory": "32Mi"}},
        // Writing nat rules needs root with NET_ADMIN and NET_RAW, and
        // nothing more.
        "securityContext": {
            "runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "privileged": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

fn proxy(pod: &Value, o: &Overrides, t: &Template) -> Value {
    let labels = &pod["metadata"]["labels"];
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    // The service a pod belongs to, by the labels Kubernetes recommends
    // ("Recommended Labels"), else its service account.
    let service = label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .unwrap_or(account);
    let version = label("app.kubernetes.io/version")
        .or_else(|| label("version"))
        .unwrap_or("");
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, v: &str| json!({"name": name, "value": v});
    let mut env = vec![
        field("POD_IP", "status.podIP"),
        field("MESH_PROXY_NAMESPACE", "metadata.namespace"),
        field("MESH_PROXY_INSTANCE_ID", "metadata.name"),
        field("MESH_PROXY_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value("MESH_PROXY_SERVICE", service),
        value("MESH_PROXY_VERSION", version),
        value(
            "MESH_PROXY_INBOUND_ADDR",
            &format!("0.0.0.0:{INBOUND_PORT}"),
        ),
        value(
            "MESH_PROXY_ADVERTISE_ADDR",
            &format!("$(POD_IP):{INBOUND_PORT}"),
        ),
        value(
            "MESH_PROXY_OUTBOUND_ADDR",
            &format!("127.0.0.1:{OUTBOUND_PORT}"),
        ),
        value("MESH_PROXY_ADMIN_ADDR", &format!("0.0.0.0:{ADMIN_PORT}")),
        value("MESH_PROXY_CONTROL_ADDR", &t.control_addr),
        value("MESH_PROXY_CONTROL_ROOTS", &t.roots_pem),
        value("MESH_PROXY_TRUST_DOMAIN", &t.trust_domain),
        value(
            "MESH_PROXY_IDENTITY_TOKEN_FILE",
            &format!("{TOKEN_DIR}/token"),
        ),
        value(
            "MESH_PROXY_OPAQUE_PORTS",
            o.opaque_ports.as_deref().unwrap_or(DEFAULT_OPAQUE_PORTS),
        ),
        value("MESH_PROXY_LOG", o.log_level.as_deref().unwrap_or("info")),
    ];
    if let Some(port) = app_port(pod) {
        env.push(value("MESH_PROXY_APP_ADDR", &format!("127.0.0.1:{port}")));
    }
    let mut requests = json!({"cpu": "50m", "memory": "16Mi"});
    let mut limits = json!({"memory": "128Mi"});
    for (k, v) in &o.requests {
        requests[*k] = json!(v);
    }
    for (k, v) in &o.limits {
        limits[*k] = json!(v);
    }
    let probe = |path: &str, period: u64, failures: u64| {
        json!({"httpGet": {"path": path, "port": ADMIN_PORT},
               "periodSeconds": period, "failureThreshold": failures})
    };
    json!({
        "name": PROXY,
        "image": t.image,
        "imagePullPolicy": t.pull_policy,
        // A native sidecar: started before the app, kept running beside it,
        // stopped after it ("Sidecar Containers", Kubernetes 1.29+).
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "mesh-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "startupProbe": probe("/ready", 1, STARTUP_SECONDS),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
        "securityContext": {
            "runAsUser": PROXY_UID, "runAsNonRoot": true, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

/// The app's port: the first TCP port its first container declares.
fn app_port(pod: &Value) -> Option<u64> {
    pod["spec"]["containers"]
        .as_array()?
        .first()?
        .get("ports")?
        .as_array()?
        .iter()
        .find(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")?
        .get("containerPort")?
        .as_u64()
}
