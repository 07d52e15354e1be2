//! Server-side apply and field ownership, as "Server-Side Apply" says
//! (https://kubernetes.io/docs/reference/using-api/server-side-apply/):
//! `metadata.managedFields` records which manager set which field and how
//! (Apply or Update); an apply that would change a field another manager
//! owns is refused with 409 Conflict naming the manager and the field,
//! unless forced; fields a manager applied before and no longer applies
//! are removed if nobody else owns them; an apply of an object that does
//! not exist creates it. Simplifications, kept to what the mesh and its
//! libraries use: every list is atomic (a leaf, as
//! `x-kubernetes-list-type: atomic`), and ownership by Update is tracked
//! only on objects that already carry managedFields (those something
//! applied), which is what leader election through kube-lease-manager
//! needs: an Update that changes or removes a field takes it from its
//! owners ("Using Server-Side Apply in a controller", "Conflicts").

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A field path, by object keys from the root.
type Path = Vec<String>;

/// (manager, operation) → the fields it owns.
type Owners = BTreeMap<(String, String), BTreeSet<Path>>;

/// The leaves of `v` under `at`: every value that is not a non-empty
/// object. apiVersion, kind, status and the server's metadata are nobody's
/// (labels and annotations are).
fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    at.push(k.clone());
                    walk(child, at, out);
                    at.pop();
                }
            }
            _ => {
                out.insert(at.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    let Some(m) = v.as_object() else {
        return out;
    };
    for (k, child) in m {
        let mut at = vec![k.clone()];
        match k.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for sub in ["labels", "annotations"] {
                    if let Some(c) = child.get(sub) {
                        at.push(sub.into());
                        walk(c, &mut at, &mut out);
                        at.pop();
                    }
                }
            }
            _ => walk(child, &mut at, &mut out),
        }
    }
    out
}

fn get<'a>(v: &'a Value, path: &Path) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set(v: &mut Value, path: &Path, value: Value) {
    let mut at = v;
    for k in &path[..path.len() - 1] {
        if !at.get(k).is_some_and(Value::is_object) {
            at[k.as_str()] = json!({});
        }
        at = &mut at[k.as_str()];
    }
    at[path[path.len() - 1].as_str()] = value;
}

fn remove(v: &mut Value, path: &Path) {
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut at = v;
    for k in parents {
        match at.get_mut(k) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(m) = at.as_object_mut() {
        m.remove(last);
    }
}

/// managedFields' fieldsV1 (`{"f:spec": {"f:holderIdentity": {}}}`) of
/// `paths`, and back.
fn to_fields(paths: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for p in paths {
        let keyed: Path = p.iter().map(|k| format!("f:{k}")).collect();
        set(&mut root, &keyed, json!({}));
    }
    root
}

fn from_fields(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
        let keys: Vec<(&String, &Value)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("f:"))
            .collect();
        if keys.is_empty() {
            if !at.is_empty() {
                out.insert(at.clone());
            }
            return;
        }
        for (k, child) in keys {
            at.push(k[2..].to_string());
            walk(child, at, out);
            at.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn owners(object: &Value) -> Owners {
    let mut out = Owners::new();
    for entry in object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = (
            entry["manager"].as_str().unwrap_or("").to_string(),
            entry["operation"].as_str().unwrap_or("Update").to_string(),
        );
        out.entry(key)
            .or_default()
            .extend(from_fields(&entry["fieldsV1"]));
    }
    out
}

fn write_owners(object: &mut Value, owners: &Owners) {
    let api_version = object["apiVersion"].clone();
    let now = super::store::now_rfc3339();
    let entries: Vec<Value> = owners
        .iter()
        .filter(|(_, fields)| !fields.is_empty())
        .map(|((manager, operation), fields)| {
            json!({"manager": manager, "operation": operation, "apiVersion": api_version,
                   "time": now, "fieldsType": "FieldsV1", "fieldsV1": to_fields(fields)})
        })
        .collect();
    object["metadata"]["managedFields"] = Value::Array(entries);
}

/// After an Update by `manager` turned `old` into `new`: the fields it
/// changed or added become its own, and are no one else's; removed fields
/// are no one's. Only for objects something has applied.
pub(crate) fn record_update(old: &Value, new: &mut Value, manager: &str) {
    if old["metadata"]["managedFields"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        return;
    }
    let mut own = owners(old);
    let after = leaves(new);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| get(old, p) != get(new, p))
        .cloned()
        .collect();
    for fields in own.values_mut() {
        fields.retain(|p| after.contains(p) && !changed.contains(p));
    }
    own.entry((manager.to_string(), "Update".into()))
        .or_default()
        .extend(changed);
    write_owners(new, &own);
}

/// A server-side apply of `config` by `manager` to `live` (None: the
/// object does not exist yet). The object to store, or the conflicts:
/// each `conflict with "manager": .path`.
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, Vec<String>> {
    let mut own = live.map(owners).unwrap_or_default();
    let mut object = live.cloned().unwrap_or_else(|| {
        json!({"apiVersion": config["apiVersion"], "kind": config["kind"],
               "metadata": {"name": config["metadata"]["name"]}})
    });
    let me = (manager.to_string(), "Apply".to_string());
    let applied = leaves(config);
    let mut conflicts = Vec::new();
    for path in &applied {
        let same = live.and_then(|l| get(l, path)) == get(config, path);
        for (who, fields) in &own {
            if who.0 != manager && fields.contains(path) && !same {
                conflicts.push(format!("conflict with {:?}: .{}", who.0, path.join(".")));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Fields this manager applied before and applies no more go, unless
    // someone else owns them too.
    let before = own.remove(&me).unwrap_or_default();
    for path in before.difference(&applied) {
        if !own.values().any(|f| f.contains(path)) {
            remove(&mut object, path);
        }
    }
    for path in &applied {
        let value = get(config, path).cloned().unwrap_or(Value::Null);
        let changed = get(&object, path) != Some(&value);
        set(&mut object, path, value);
        // An apply that changes a field (forced, if it conflicted) takes it
        // from everyone else; one that agrees shares it.
        if changed {
            for (who, fields) in own.iter_mut() {
                if who.0 != manager {
                    fields.remove(path);
                }
            }
        }
    }
    own.insert(me, applied);
    write_owners(&mut object, &own);
    Ok(object)
}

/// The metav1.Status of a refused apply.
pub(crate) fn conflict_status(conflicts: &[String]) -> Value {
    let n = conflicts.len();
    let plural = if n == 1 { "" } else { "s" };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            let field = c.rsplit(": ").next().unwrap_or("");
            json!({"reason": "FieldManagerConflict", "message": c, "field": field})
        })
        .collect();
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("Apply failed with {n} conflict{plural}: {}", conflicts.join("\n")),
           "reason": "Conflict", "details": {"causes": causes}, "code": 409})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "l"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 5}})
    }

    #[test]
    fn a_second_manager_conflicts_until_the_field_is_released_or_forced() {
        let live = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                          "metadata": {"name": "l"}, "spec": {}});
        let a = apply(Some(&live), &lease("a"), "mgr-a", false).unwrap();
        assert_eq!(a["spec"]["holderIdentity"], "a");
        let refused = apply(Some(&a), &lease("b"), "mgr-b", false).unwrap_err();
        assert_eq!(
            refused,
            vec![r#"conflict with "mgr-a": .spec.holderIdentity"#]
        );
        // The same values are shared, not a conflict.
        assert!(apply(Some(&a), &lease("a"), "mgr-b", false).is_ok());
        // An Update that removes the field frees it (a release).
        let mut released = a.clone();
        released["spec"]
            .as_object_mut()
            .unwrap()
            .remove("holderIdentity");
        record_update(&a, &mut released, "mgr-b");
        let b = apply(Some(&released), &lease("b"), "mgr-b", false).unwrap();
        assert_eq!(b["spec"]["holderIdentity"], "b");
        // Forced, it takes the field.
        let forced = apply(Some(&a), &lease("c"), "mgr-c", true).unwrap();
        assert_eq!(forced["spec"]["holderIdentity"], "c");
        assert_eq!(owners(&forced)[&("mgr-a".into(), "Apply".into())].len(), 1);
    }

    #[test]
    fn fields_no_longer_applied_are_removed_and_fields_v1_round_trips() {
        let a = apply(None, &lease("a"), "m", false).unwrap();
        let mut less = lease("a");
        less["spec"]
            .as_object_mut()
            .unwrap()
            .remove("leaseDurationSeconds");
        let b = apply(Some(&a), &less, "m", false).unwrap();
        assert!(b["spec"].get("leaseDurationSeconds").is_none(), "{b}");
        let paths = leaves(&lease("x"));
        assert_eq!(from_fields(&to_fields(&paths)), paths);
    }
}
