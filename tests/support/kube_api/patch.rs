//! PATCH bodies by Content-Type, as "Patch and Apply" lists them
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply):
//! JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7386) through the
//! json-patch crate, and strategic merge patch for the built-in fields the
//! mesh's objects use. Strategic merge follows
//! https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/:
//! maps merge, `null` deletes, a list with a patch merge key merges by it,
//! any other list is replaced, and `$patch: replace|delete` is honoured.
//! Server-side apply is `apply.rs`.

use serde_json::Value;

/// Patch merge keys of the lists the served kinds have (from the
/// `patchMergeKey` tags of the Kubernetes API types).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "volumeMounts"
        | "imagePullSecrets" => Some("name"),
        "ports" => Some("port"),
        "conditions" => Some("type"),
        _ => None,
    }
}

/// Applies `patch` of `content_type` to `current`.
pub fn apply(content_type: &str, current: &Value, patch: &[u8]) -> Result<Value, (u16, String)> {
    let bad = |e: String| (400, e);
    let mime = content_type.split(';').next().unwrap_or("").trim();
    match mime {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| bad(format!("invalid JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| (422, format!("{e}")))?;
            Ok(doc)
        }
        "application/merge-patch+json" => {
            let p: Value = serde_json::from_slice(patch)
                .map_err(|e| bad(format!("invalid merge patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(patch)
                .map_err(|e| bad(format!("invalid strategic merge patch: {e}")))?;
            Ok(strategic(current, &p, ""))
        }
        "application/apply-patch+yaml" => Err((
            415,
            "server-side apply is not served by this test API server".into(),
        )),
        other => Err((
            415,
            format!("the body of the request was in an unknown format: {other}"),
        )),
    }
}

fn strategic(current: &Value, patch: &Value, field: &str) -> Value {
    match (current, patch) {
        (Value::Object(cur), Value::Object(p)) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut out = p.clone();
                out.remove("$patch");
                return Value::Object(out);
            }
            let mut out = cur.clone();
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                } else {
                    let next = match out.get(k) {
                        Some(c) => strategic(c, v, k),
                        None => strip_directives(v),
                    };
                    out.insert(k.clone(), next);
                }
            }
            Value::Object(out)
        }
        (Value::Array(cur), Value::Array(p)) => match merge_key(field) {
            Some(key) => {
                let mut out = cur.clone();
                for item in p {
                    let id = item.get(key);
                    let pos = out.iter().position(|c| id.is_some() && c.get(key) == id);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            out.remove(i);
                        }
                        (Some(i), false) => out[i] = strategic(&out[i], item, ""),
                        (None, false) => out.push(strip_directives(item)),
                        (None, true) => {}
                    }
                }
                Value::Array(out)
            }
            None => patch.clone(),
        },
        _ => strip_directives(patch),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_keyed_lists_and_replaces_the_rest() {
        let cur = json!({"spec": {"ports": [{"port": 80, "name": "http"}], "selector": {"app": "a"}},
                         "endpoints": [{"addresses": ["1.1.1.1"]}]});
        let p = json!({"spec": {"ports": [{"port": 80, "name": "web"}, {"port": 90}], "selector": {"app": null}},
                       "endpoints": [{"addresses": ["2.2.2.2"]}]});
        let out = apply(
            "application/strategic-merge-patch+json",
            &cur,
            p.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "web"}, {"port": 90}])
        );
        assert_eq!(out["spec"]["selector"], json!({}));
        assert_eq!(out["endpoints"], json!([{"addresses": ["2.2.2.2"]}]));
    }
}
