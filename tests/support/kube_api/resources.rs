//! What the test API server serves: the built-in resources the mesh reads,
//! the discovery documents that describe them (legacy discovery,
//! https://kubernetes.io/docs/concepts/overview/kubernetes-api/#discovery-api:
//! `/api` APIVersions, `/apis` APIGroupList, `/api/v1` and
//! `/apis/<group>/<version>` APIResourceList), and label selectors
//! (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors).

use serde_json::{Value, json};
use std::sync::Arc;

/// One served resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether it has a status subresource (and so a `.status` the main
    /// resource does not write).
    pub status: bool,
    /// A custom resource's openAPIV3Schema, which every write must pass.
    pub schema: Option<Arc<Value>>,
}

impl Resource {
    fn builtin(group: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Resource {
        Resource {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status,
            schema: None,
        }
    }

    /// The store's name for it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The built-in resources served from the start.
pub fn builtins() -> Vec<Resource> {
    vec![
        Resource::builtin("", "namespaces", "Namespace", false, true),
        Resource::builtin("", "services", "Service", true, true),
        Resource::builtin("", "pods", "Pod", true, true),
        Resource::builtin("", "serviceaccounts", "ServiceAccount", true, false),
        Resource::builtin("", "secrets", "Secret", true, false),
        Resource::builtin("coordination.k8s.io", "leases", "Lease", true, false),
        Resource::builtin("apps", "deployments", "Deployment", true, true),
        Resource::builtin(
            "policy",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            true,
        ),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "ClusterRole",
            false,
            false,
        ),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
        ),
        Resource::builtin("rbac.authorization.k8s.io", "roles", "Role", true, false),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            true,
            false,
        ),
        Resource::builtin(
            "discovery.k8s.io",
            "endpointslices",
            "EndpointSlice",
            true,
            false,
        ),
        Resource::builtin(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
            false,
        ),
        Resource::builtin(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
            false,
        ),
        Resource::builtin(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
    ]
}

/// The resources a CustomResourceDefinition serves, one per served
/// version ("Create a CustomResourceDefinition",
/// https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#create-a-customresourcedefinition).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        out.push(Resource {
            group: s(&spec["group"]),
            version: s(&v["name"]),
            plural: s(&spec["names"]["plural"]),
            kind: s(&spec["names"]["kind"]),
            namespaced: spec["scope"].as_str() == Some("Namespaced"),
            status: v.pointer("/subresources/status").is_some(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new),
        });
    }
    out
}

pub fn find(all: &[Resource], group: &str, version: &str, plural: &str) -> Option<Resource> {
    all.iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .cloned()
}

/// `/api`: APIVersions.
pub fn core_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
    })
}

/// `/apis`: APIGroupList.
pub fn groups(all: &[Resource]) -> Value {
    let mut names: Vec<(&str, &str)> = all
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group.as_str(), r.version.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let groups: Vec<Value> = names
        .iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/<group>/<version>`: APIResourceList, or None for a
/// group version nobody serves.
pub fn resource_list(all: &[Resource], group: &str, version: &str) -> Option<Value> {
    let mine: Vec<&Resource> = all
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in mine {
        list.push(json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if r.status {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

/// One requirement of a label selector.
#[derive(Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector: every requirement must hold ("the comma
/// separator acts as a logical AND").
#[derive(Debug, Default)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let rest = rest.trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("unable to parse requirement: {part:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_string(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().to_string(), set(rest)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else {
                Requirement::Exists(part.to_string())
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_top(text: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Field selectors the server supports for every resource
/// (`metadata.name`, `metadata.namespace`; "Field selectors",
/// https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/).
pub fn field_matches(selector: &str, object: &Value) -> Result<bool, String> {
    for part in selector.split(',').filter(|p| !p.is_empty()) {
        let (field, want, eq) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid field selector: {part:?}"));
        };
        let have = match field {
            "metadata.name" => object.pointer("/metadata/name"),
            "metadata.namespace" => object.pointer("/metadata/namespace"),
            other => return Err(format!("field label not supported: {other}")),
        }
        .and_then(Value::as_str)
        .unwrap_or("");
        if (have == want) != eq {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_the_label_selector_grammar() {
        let obj = json!({"metadata": {"labels": {"app": "echo", "tier": "web"}}});
        for (sel, want) in [
            ("app=echo", true),
            ("app==echo,tier=web", true),
            ("app!=echo", false),
            ("app in (echo, other)", true),
            ("app notin (echo)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
    }
}
