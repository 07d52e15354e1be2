//! A custom resource checked against its CRD's structural schema, as the
//! API server does on every create and update ("Validation" and "Field
//! pruning",
//! https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation):
//! types, required, enum, bounds, lengths, patterns, item and property
//! counts; fields the schema does not name are pruned, or refused when
//! the request asks `fieldValidation=Strict` (what kubectl sends). Messages
//! follow the API server's field-error wording.

use serde_json::{Map, Value};

/// Checks `object` (pruning unknown fields unless `strict`); every problem
/// found, as `path: problem`.
pub fn check(schema: &Value, object: &mut Value, strict: bool) -> Vec<String> {
    let mut problems = Vec::new();
    // metadata, apiVersion and kind are the server's to check.
    if let Some(o) = object.as_object_mut() {
        for (k, v) in o.iter_mut() {
            if ["metadata", "apiVersion", "kind"].contains(&k.as_str()) {
                continue;
            }
            match schema.pointer(&format!("/properties/{k}")) {
                Some(s) => walk(s, v, k, strict, &mut problems),
                None if strict => problems.push(format!("unknown field \"{k}\"")),
                None => {}
            }
        }
        if !strict {
            o.retain(|k, _| {
                ["metadata", "apiVersion", "kind"].contains(&k.as_str())
                    || schema.pointer(&format!("/properties/{k}")).is_some()
            });
        }
    }
    for r in required(schema) {
        if object.get(&r).is_none() {
            problems.push(format!("{r}: Required value"));
        }
    }
    problems
}

fn required(schema: &Value) -> Vec<String> {
    schema["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn show(v: &Value) -> String {
    v.to_string()
}

fn walk(schema: &Value, v: &mut Value, path: &str, strict: bool, problems: &mut Vec<String>) {
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        let got = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        problems.push(format!(
            "{path}: Invalid value: \"{got}\": {path} in body must be of type {ty}: \"{got}\""
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(show).collect();
        problems.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            show(v),
            list.join(", ")
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            problems.push(format!("{path}: Invalid value: {}: {path} in body should be greater than or equal to {min}", show(v)));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            problems.push(format!(
                "{path}: Invalid value: {}: {path} in body should be less than or equal to {max}",
                show(v)
            ));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            problems.push(format!(
                "{path}: Invalid value: {}: {path} in body should be at least {} chars long",
                show(v),
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            problems.push(format!(
                "{path}: Too long: may not be more than {} bytes",
                schema["maxLength"]
            ));
        }
        if let Some(p) = schema["pattern"].as_str()
            && !regex::Regex::new(p).is_ok_and(|re| re.is_match(s))
        {
            problems.push(format!(
                "{path}: Invalid value: {}: {path} in body should match '{p}'",
                show(v)
            ));
        }
    }
    match v {
        Value::Array(items) => {
            let n = items.len() as u64;
            if schema["minItems"].as_u64().is_some_and(|m| n < m) {
                problems.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should have at least {} items",
                    schema["minItems"]
                ));
            }
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter_mut().enumerate() {
                    walk(item, x, &format!("{path}[{i}]"), strict, problems);
                }
            }
        }
        Value::Object(map) => object(schema, map, path, strict, problems),
        _ => {}
    }
}

fn object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    strict: bool,
    problems: &mut Vec<String>,
) {
    let n = map.len() as u64;
    if schema["minProperties"].as_u64().is_some_and(|m| n < m) {
        problems.push(format!(
            "{path}: Invalid value: {n}: {path} in body should have at least {} properties",
            schema["minProperties"]
        ));
    }
    if schema["maxProperties"].as_u64().is_some_and(|m| n > m) {
        problems.push(format!(
            "{path}: Too many: {n}: must have at most {} items",
            schema["maxProperties"]
        ));
    }
    for r in required(schema) {
        if !map.contains_key(&r) {
            problems.push(format!("{path}.{r}: Required value"));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let mut unknown = Vec::new();
    for (k, v) in map.iter_mut() {
        let sub = format!("{path}.{k}");
        match (props.and_then(|p| p.get(k)), extra) {
            (Some(s), _) | (None, Some(s)) => walk(s, v, &sub, strict, problems),
            (None, None)
                if preserve
                    || (props.is_none()
                        && schema["type"] == "object"
                        && schema.get("properties").is_none()
                        && schema.get("additionalProperties").is_none()) => {}
            (None, None) => unknown.push(k.clone()),
        }
    }
    for k in unknown {
        if strict {
            problems.push(format!("unknown field \"{path}.{k}\""));
        } else {
            map.remove(&k);
        }
    }
}
