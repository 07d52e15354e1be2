//! YAML → typed documents for every kind mesh reads: the SMI, Gateway API
//! and mesh rule kinds, and the registry kinds of a mesh file. Owns the
//! "file:line: object: field: problem" error every later check reports
//! with. Imports nothing else of the crate: validation is `rules`'s job.

pub mod gateway;
pub mod meta;
pub mod policy;
pub mod release;
pub mod smi;
pub mod workload;

use meta::{DEFAULT_NAMESPACE, MESH_API_VERSION, ObjectMeta};
use serde::Deserialize;
use std::fmt;

/// One problem in one document, with enough context to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// File the document came from.
    pub file: String,
    /// 1-based line where the document (or the syntax error) starts.
    pub line: usize,
    /// "TrafficSplit default/echo-split", when the document got that far.
    pub object: Option<String>,
    /// Dotted path of the offending field, e.g. `spec.backends[1].weight`.
    pub field: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl Error {
    /// A problem with `field` of the document `at`, which describes `object`.
    pub fn at(at: &Located, object: &str, field: String, problem: String) -> Error {
        Self::about(Some(at), object, field, problem)
    }

    /// The problem as said to a stored object, without file or line (the
    /// file is the user's, and kubectl names it): `object: field: problem`.
    pub fn in_object(&self) -> String {
        let mut out = self.object.clone().unwrap_or_else(|| self.file.clone());
        if let Some(field) = &self.field {
            out.push_str(": ");
            out.push_str(field);
        }
        out.push_str(": ");
        out.push_str(&self.problem);
        out
    }

    /// The same, for an object that may come from saved state rather than a
    /// document being applied (then the file reads `<state>`).
    pub fn about(at: Option<&Located>, object: &str, field: String, problem: String) -> Error {
        Error {
            file: at
                .map(|d| d.file.clone())
                .unwrap_or_else(|| "<state>".into()),
            line: at.map(|d| d.line).unwrap_or(0),
            object: Some(object.to_string()),
            field: Some(field),
            problem,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: about the whole file (or about rules already in force).
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// A parsed document.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// SMI TrafficSplit.
    TrafficSplit(smi::TrafficSplit),
    /// A service with statically known instances.
    Service(workload::Service),
    /// A workload `meshctl up` runs behind sidecars.
    Workload(workload::Workload),
    /// Who may call a service.
    AuthorizationPolicy(policy::AuthorizationPolicy),
    /// SMI HTTPRouteGroup.
    HttpRouteGroup(smi::HttpRouteGroup),
    /// Gateway API HTTPRoute on a Service.
    HttpRoute(gateway::HttpRoute),
    /// How callers treat a service (boxed: by far the largest kind).
    TrafficPolicy(Box<policy::TrafficPolicy>),
    /// An automated release (started by `meshctl release start -f`).
    Release(Box<release::Release>),
}

impl Document {
    /// The kind as written in YAML, and the document's metadata.
    pub fn kind_and_meta(&self) -> (&'static str, &ObjectMeta) {
        match self {
            Document::TrafficSplit(d) => ("TrafficSplit", &d.metadata),
            Document::Service(d) => ("Service", &d.metadata),
            Document::Workload(d) => ("Workload", &d.metadata),
            Document::AuthorizationPolicy(d) => ("AuthorizationPolicy", &d.metadata),
            Document::HttpRouteGroup(d) => ("HTTPRouteGroup", &d.metadata),
            Document::HttpRoute(d) => ("HTTPRoute", &d.metadata),
            Document::TrafficPolicy(d) => ("TrafficPolicy", &d.metadata),
            Document::Release(d) => ("Release", &d.metadata),
        }
    }
}

/// The document of `kind` named `namespace/name` among `docs`, so an error
/// about an object can point at the file and line it came from.
pub fn find<'a>(
    docs: &'a [Located],
    kind: &str,
    namespace: &str,
    name: &str,
) -> Option<&'a Located> {
    docs.iter().find(|d| {
        let (k, meta) = d.doc.kind_and_meta();
        k == kind && meta.namespace == namespace && meta.name == name
    })
}

/// A document and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// Source file.
    pub file: String,
    /// 1-based first line of the document.
    pub line: usize,
    /// The document.
    pub doc: Document,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<NameOnly>,
}

#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Parses every document in `content`, returning all documents or every error.
pub fn parse(file: &str, content: &str) -> Result<Vec<Located>, Vec<Error>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (line, text) in split_documents(content) {
        match parse_one(file, line, &text) {
            Ok(Some(doc)) => docs.push(Located {
                file: file.to_string(),
                line,
                doc,
            }),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if docs.is_empty() && errors.is_empty() {
        // Applying the wrong (empty) file must not look like success.
        errors.push(Error {
            file: file.to_string(),
            line: 0,
            object: None,
            field: None,
            problem: "no documents (the file is empty, or holds only comments and `---`)".into(),
        });
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Splits a YAML stream on `---` lines, keeping each document's first line
/// (the `line` of the document `parse` makes of it).
pub fn split_documents(content: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in content.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            out.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    out.push((start, current));
    out.retain(|(_, text)| {
        text.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    out
}

fn parse_one(file: &str, line: usize, text: &str) -> Result<Option<Document>, Error> {
    let err = |object: Option<String>, field: Option<String>, problem: String| Error {
        file: file.to_string(),
        line,
        object,
        field,
        problem,
    };
    let meta: TypeMeta = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, line, &e))?;
    let kind = meta.kind.clone().unwrap_or_default();
    let api = meta.api_version.clone().unwrap_or_default();
    let object = meta.metadata.as_ref().map(|m| {
        format!(
            "{kind} {}/{}",
            m.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            m.name.as_deref().unwrap_or("<unnamed>")
        )
    });
    if kind.is_empty() {
        return Err(err(object, Some("kind".into()), "missing".into()));
    }
    let expected_api = match kind.as_str() {
        "TrafficSplit" => smi::SPLIT_API_VERSION,
        "Service" | "Workload" | "AuthorizationPolicy" | "TrafficPolicy" | "Release" => {
            MESH_API_VERSION
        }
        "HTTPRouteGroup" => smi::SPECS_API_VERSION,
        "HTTPRoute" => gateway::GATEWAY_API_VERSION,
        other => {
            return Err(err(
                object,
                Some("kind".into()),
                format!(
                    "unknown kind {other:?}; expected TrafficSplit, HTTPRouteGroup, HTTPRoute, TrafficPolicy, AuthorizationPolicy, Release, Service or Workload"
                ),
            ));
        }
    };
    if api != expected_api {
        return Err(err(
            object,
            Some("apiVersion".into()),
            format!("{api:?} is not supported for {kind}; use {expected_api:?}"),
        ));
    }
    let typed = |e: serde_saphyr::Error| {
        let mut e2 = yaml_error(file, line, &e);
        e2.object = object.clone();
        e2
    };
    let doc = match kind.as_str() {
        "TrafficSplit" => Document::TrafficSplit(serde_saphyr::from_str(text).map_err(typed)?),
        "Service" => Document::Service(serde_saphyr::from_str(text).map_err(typed)?),
        "AuthorizationPolicy" => {
            Document::AuthorizationPolicy(serde_saphyr::from_str(text).map_err(typed)?)
        }
        "HTTPRouteGroup" => Document::HttpRouteGroup(serde_saphyr::from_str(text).map_err(typed)?),
        "HTTPRoute" => Document::HttpRoute(serde_saphyr::from_str(text).map_err(typed)?),
        "TrafficPolicy" => Document::TrafficPolicy(serde_saphyr::from_str(text).map_err(typed)?),
        "Release" => Document::Release(serde_saphyr::from_str(text).map_err(typed)?),
        _ => Document::Workload(serde_saphyr::from_str(text).map_err(typed)?),
    };
    Ok(Some(doc))
}

/// Turns a YAML/serde error into ours, with the line made absolute.
fn yaml_error(file: &str, doc_line: usize, e: &serde_saphyr::Error) -> Error {
    let line = e
        .location()
        .map(|l| doc_line + l.line() as usize - 1)
        .unwrap_or(doc_line);
    // The parser's words where they are the user's, ours where they speak
    // of the parser's own options.
    let (field, problem) = match e.without_snippet() {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => (
            Some(k.clone()),
            format!("{k:?} appears twice in one mapping; give each key once"),
        ),
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => (
            None,
            "a key appears twice in one mapping; give each key once".into(),
        ),
        serde_saphyr::Error::Budget { breach, .. } => (None, too_big(breach)),
        other => {
            let problem = other.to_string();
            // serde-saphyr appends its own "at line X column Y" relative to
            // the document; ours is absolute, so drop the relative one.
            let problem = match problem.find(" at line ") {
                Some(i) => problem[..i].to_string(),
                None => problem,
            };
            (field_from_message(&problem), problem)
        }
    };
    Error {
        file: file.to_string(),
        line,
        object: None,
        field,
        problem,
    }
}

/// A YAML document past one of the parser's limits (they stop alias bombs
/// and runaway files), in words: which limit, and how big it is.
fn too_big(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let limits = serde_saphyr::Budget::default();
    match breach {
        B::Nodes { .. } => format!(
            "too large: more than {} YAML nodes (mappings, lists and values) in one document; split it into several documents",
            limits.max_nodes
        ),
        B::Events { .. } => format!(
            "too large: more than {} YAML events in one document; split it into several documents",
            limits.max_events
        ),
        B::Depth { .. } => format!("nested more than {} levels deep", limits.max_depth),
        B::Documents { .. } => format!("more than {} documents", limits.max_documents),
        B::ScalarBytes { .. } => "more than 64 MiB of text in one document".into(),
        B::Aliases { .. }
        | B::Anchors { .. }
        | B::AliasAnchorRatio { .. }
        | B::RecordedAnchorEvents { .. }
        | B::RecordedAnchorBytes { .. } => {
            "too many YAML aliases or anchors for their size (an alias bomb?)".into()
        }
        _ => "too large or too complex for the YAML parser's limits".into(),
    }
}

/// serde names unknown and missing fields in its message; lift the name out.
fn field_from_message(msg: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(i) = msg.find(marker) {
            let rest = &msg[i + marker.len()..];
            return rest.find('`').map(|j| rest[..j].to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests;
