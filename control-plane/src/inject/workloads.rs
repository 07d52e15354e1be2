//! Where a manifest's pods are: a Pod itself, the pod template of a
//! Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController or
//! Job, a CronJob's job template's, and those of each item of a List;
//! `meshctl inject` and `uninject` change each pod found this way and leave
//! every other document as it is.

use super::{Namespace, Refused, Skip, Template};
use serde_json::Value;

/// The JSON pointer to the pod (template) of a document of `kind`, if it
/// has one.
fn pod_at(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What became of one pod of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind namespace/name` of the document holding it.
    pub object: String,
    /// Why it was left alone, if it was.
    pub skipped: Option<Skip>,
}

/// Calls `each` on every pod of `doc` (recursing into Lists) with its
/// document's `Kind namespace/name` and namespace.
fn visit<E>(
    doc: &mut Value,
    each: &mut dyn FnMut(&mut Value, &str, &str) -> Result<(), E>,
) -> Result<(), E> {
    let kind = doc["kind"].as_str().unwrap_or("").to_string();
    if kind.ends_with("List")
        && let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut)
    {
        for item in items {
            visit(item, each)?;
        }
        return Ok(());
    }
    let Some(at) = pod_at(&kind) else {
        return Ok(());
    };
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let object = format!(
        "{kind} {namespace}/{}",
        doc["metadata"]["name"].as_str().unwrap_or("<unnamed>")
    );
    match doc.pointer_mut(at) {
        Some(pod) if pod.is_object() => each(pod, &object, &namespace),
        _ => Ok(()),
    }
}

/// Injects every pod of `doc` in place (the namespace opted in: only a
/// pod's own `disabled` keeps it out); one report per pod. A pod that is
/// refused names its document and leaves `doc` unchanged.
pub fn inject(doc: &mut Value, template: &Template) -> Result<Vec<Report>, Refused> {
    let mut next = doc.clone();
    let mut reports = Vec::new();
    visit(&mut next, &mut |pod, object, namespace| {
        let done = super::inject(pod, namespace, Namespace::OptedIn, template)
            .map_err(|r| Refused(r.0.iter().map(|p| format!("{object}: {p}")).collect()))?;
        let skipped = match done {
            Ok(injected) => {
                *pod = injected;
                None
            }
            Err(skip) => Some(skip),
        };
        reports.push(Report {
            object: object.to_string(),
            skipped,
        });
        Ok(())
    })?;
    *doc = next;
    Ok(reports)
}

/// Removes injection from every pod of `doc` in place; the number of pods
/// it was removed from.
pub fn uninject(doc: &mut Value) -> Result<usize, String> {
    let mut next = doc.clone();
    let mut count = 0;
    visit(&mut next, &mut |pod, object, _| {
        if pod["metadata"]["annotations"]
            .get(super::annotations::STATUS)
            .is_some()
        {
            *pod = super::uninject(pod).map_err(|e| format!("{object}: {e}"))?;
            count += 1;
        }
        Ok::<_, String>(())
    })?;
    *doc = next;
    Ok(count)
}
