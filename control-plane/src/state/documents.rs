//! The documents of an apply or a delete: parsed, every problem at once,
//! with the kinds that are not rules refused by name.

use super::Error;
use crate::manifest;

/// Parses rule files, every problem at once; Service and Workload
/// documents are refused (they belong in the mesh file).
pub(super) fn rules(files: &[(String, String)]) -> Result<Vec<manifest::Located>, Error> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (name, content) in files {
        match manifest::parse(name, content) {
            Ok(mut d) => docs.append(&mut d),
            Err(mut e) => errors.append(&mut e),
        }
    }
    for d in &docs {
        if matches!(d.doc, manifest::Document::Release(_)) {
            errors.push(manifest::Error {
                file: d.file.clone(),
                line: d.line,
                object: None,
                field: Some("kind".into()),
                problem: "a Release is started, not applied: meshctl release start -f FILE".into(),
            });
        }
        if matches!(
            d.doc,
            manifest::Document::Service(_) | manifest::Document::Workload(_)
        ) {
            errors.push(manifest::Error {
                file: d.file.clone(),
                line: d.line,
                object: None,
                field: Some("kind".into()),
                problem: "Service and Workload documents belong in the mesh file; apply takes rules (TrafficSplit, HTTPRouteGroup, HTTPRoute, TrafficPolicy, AuthorizationPolicy)".into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(Error::Invalid(errors))
    }
}
