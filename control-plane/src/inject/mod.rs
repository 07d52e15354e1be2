//! Sidecar injection, one implementation for the mutating webhook and
//! `meshctl inject`: a pod (or a workload's pod template) in, the same pod
//! with mesh's redirect step and its native sidecar out. Everything added
//! is named in the `mesh.dev/status` annotation, so injecting twice gives
//! the pod injecting once gives, and `uninject` removes exactly what was
//! added. Pure: JSON in, JSON out.

pub mod annotations;
mod containers;
pub mod workloads;

use annotations::{INJECT, Overrides, STATUS};
use serde_json::{Value, json};

/// The redirect step's init container, first of all.
pub const INIT: &str = "mesh-init";
/// The native sidecar, an init container right after the redirect step.
pub const PROXY: &str = "mesh-proxy";
/// The projected ServiceAccount token (audience `mesh`) volume.
pub const TOKEN_VOLUME: &str = "mesh-token";

/// Namespaces never injected, whatever they or their pods say: the
/// cluster's own.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What every injected sidecar is given: plain data, the same for every
/// pod of a mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// mesh-proxy's image (it runs the redirect step too).
    pub image: String,
    /// Its imagePullPolicy.
    pub pull_policy: String,
    /// The control plane's gRPC URL as pods reach it.
    pub control_addr: String,
    /// The mesh's roots (PEM) the sidecar knows the control plane by.
    pub roots_pem: String,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// `spec.hostNetwork`.
    #[error("the pod shares its node's network (hostNetwork), which mesh must not redirect")]
    HostNetwork,
    /// kube-system, kube-public, kube-node-lease.
    #[error("{0} is a Kubernetes system namespace, never meshed")]
    SystemNamespace(String),
    /// The pod's `mesh.dev/inject: disabled`.
    #[error("the pod opts out ({INJECT}: disabled)")]
    Disabled,
    /// Injected before.
    #[error("the pod already has mesh's sidecar")]
    Injected,
    /// Nobody asked.
    #[error("neither the pod nor its namespace opts in ({INJECT}: enabled)")]
    NotOptedIn,
}

/// A pod injection refuses: every bad annotation named at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

/// Whether a pod's namespace opted in (the webhook knows from which of its
/// selectors matched; `meshctl inject` injects unless the pod opts out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Its label says `mesh.dev/inject: enabled` (or `meshctl inject`).
    OptedIn,
    /// Only the pod itself can opt in.
    NotOptedIn,
}

/// `pod` (a Pod, or a pod template: `metadata` and `spec`) in `namespace`,
/// injected, or why it stays as it is.
pub fn inject(
    pod: &Value,
    namespace: &str,
    opted: Namespace,
    template: &Template,
) -> Result<Result<Value, Skip>, Refused> {
    shape(pod).map_err(Refused)?;
    let meta = &pod["metadata"];
    let spec = &pod["spec"];
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Ok(Err(Skip::SystemNamespace(namespace.to_string())));
    }
    if spec["hostNetwork"] == true {
        return Ok(Err(Skip::HostNetwork));
    }
    if injected(pod) {
        return Ok(Err(Skip::Injected));
    }
    let overrides = annotations::read(&meta["annotations"], &meta["labels"]).map_err(Refused)?;
    match (overrides.inject, opted) {
        (Some(false), _) => return Ok(Err(Skip::Disabled)),
        (None, Namespace::NotOptedIn) => return Ok(Err(Skip::NotOptedIn)),
        _ => {}
    }
    Ok(Ok(add(pod, &overrides, template)))
}

/// The fields injection writes are what a Pod's are, or it would replace
/// what is there: checked before anything else.
fn shape(pod: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut want = |path: &str, ok: fn(&Value) -> bool, what: &str| {
        if let Some(v) = pod.pointer(path)
            && !v.is_null()
            && !ok(v)
        {
            problems.push(format!("{}: {v}: not {what}", path[1..].replace('/', ".")));
        }
    };
    want("/metadata", Value::is_object, "an object");
    want("/metadata/annotations", Value::is_object, "a map");
    want("/metadata/labels", Value::is_object, "a map");
    want("/spec/initContainers", Value::is_array, "a list");
    want("/spec/containers", Value::is_array, "a list");
    want("/spec/volumes", Value::is_array, "a list");
    if !pod["spec"].is_object() {
        problems.push("spec: missing, or not an object: no pod to inject".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Whether `pod` already carries mesh's sidecar: the status annotation, or
/// a container of ours added by hand.
pub fn injected(pod: &Value) -> bool {
    let ours = |list: &Value| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == PROXY || c["name"] == INIT)
    };
    pod["metadata"]["annotations"].get(STATUS).is_some()
        || ours(&pod["spec"]["initContainers"])
        || ours(&pod["spec"]["containers"])
}

/// What injection added, as the status annotation records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    version: String,
    init_containers: Vec<String>,
    volumes: Vec<String>,
    /// The fields that did not exist before (`metadata.annotations`,
    /// `spec.initContainers`, `spec.volumes`), removed again by uninject.
    created: Vec<String>,
}

fn add(pod: &Value, o: &Overrides, t: &Template) -> Value {
    let mut pod = pod.clone();
    let mut created = Vec::new();
    let mut list = |pod: &mut Value, path: [&str; 2], items: Vec<Value>, front: bool| {
        let slot = &mut pod[path[0]][path[1]];
        if !slot.is_array() {
            created.push(format!("{}.{}", path[0], path[1]));
            *slot = json!([]);
        }
        let arr = slot.as_array_mut().expect("an array just made");
        if front {
            arr.splice(0..0, items);
        } else {
            arr.extend(items);
        }
    };
    let (init, proxy) = containers::build(&pod, o, t);
    list(
        &mut pod,
        ["spec", "initContainers"],
        vec![init, proxy],
        true,
    );
    list(
        &mut pod,
        ["spec", "volumes"],
        vec![containers::token_volume()],
        false,
    );
    if !pod["metadata"]["annotations"].is_object() {
        created.push("metadata.annotations".into());
        pod["metadata"]["annotations"] = json!({});
    }
    let status = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        init_containers: vec![INIT.into(), PROXY.into()],
        volumes: vec![TOKEN_VOLUME.into()],
        created,
    };
    pod["metadata"]["annotations"][STATUS] =
        Value::String(serde_json::to_string(&status).expect("a status serializes"));
    pod
}

/// Why a pod cannot be uninjected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{STATUS}: {0}")]
pub struct BadStatus(String);

/// `pod` without what injection added, exactly as it was before; a pod
/// never injected comes back unchanged.
pub fn uninject(pod: &Value) -> Result<Value, BadStatus> {
    let Some(raw) = pod["metadata"]["annotations"].get(STATUS) else {
        return Ok(pod.clone());
    };
    let status: Status = raw
        .as_str()
        .ok_or_else(|| BadStatus("not a string".into()))
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| BadStatus(format!("not what injection wrote: {e}")))
        })?;
    let mut pod = pod.clone();
    let mut strip = |path: &str, names: &[String]| {
        if let Some(arr) = pod.pointer_mut(path).and_then(Value::as_array_mut) {
            arr.retain(|item| !names.iter().any(|n| item["name"] == n.as_str()));
        }
    };
    strip("/spec/initContainers", &status.init_containers);
    strip("/spec/volumes", &status.volumes);
    if let Some(a) = pod
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(STATUS);
    }
    for field in &status.created {
        let Some((parent, child)) = field.split_once('.') else {
            continue;
        };
        let Some(p) = pod.get_mut(parent).and_then(Value::as_object_mut) else {
            continue;
        };
        let empty = match p.get(child) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        };
        if empty {
            p.remove(child);
        }
    }
    Ok(pod)
}

#[cfg(test)]
pub(crate) mod tests;
