//! Validates routing documents and compiles them into the route model,
//! reporting every problem at once as "file:line: object: field: problem".
//! SMI HTTPRouteGroups are compiled here; HTTPRoutes in `gateway`,
//! TrafficPolicies in `traffic`.

use super::docs::{self, SmiMatch};
use super::gateway::http_route;
use super::traffic::traffic_policy;
use super::{HeaderMatch, PathMatch, RequestMatch, RouteGroup, Routing};
use crate::manifest::{self, Document, Located, RawNumber};

/// Parses a Gateway API duration ("1s", "250ms", "1m30s") into ms.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative; durations must be 0 or more"));
    }
    if t.is_empty() {
        return Err("is empty; write a duration like 1s or 250ms".into());
    }
    let bad = || format!("{s:?} is not a duration; write e.g. 1s, 250ms or 1m30s");
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        total = total.saturating_add(n.saturating_mul(unit_ms));
        rest = &rest[len..];
    }
    Ok(total)
}

/// Collects problems for one document.
pub(super) struct Problems<'a> {
    at: &'a Located,
    object: String,
    errors: Vec<manifest::Error>,
}

impl Problems<'_> {
    pub(super) fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(manifest::Error::at(
            self.at,
            &self.object,
            field.into(),
            problem.into(),
        ));
    }

    pub(super) fn duration(&mut self, field: &str, v: &Option<String>) -> Option<u64> {
        match duration_ms(v.as_deref()?) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    pub(super) fn count(&mut self, field: &str, v: &Option<RawNumber>) -> Option<u32> {
        match v.as_ref()?.as_count("values") {
            Ok(n) => Some(n),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    /// Retry attempts: a whole number of at least 1; `zero` says what to
    /// write instead of 0 in this syntax.
    pub(super) fn attempts(
        &mut self,
        field: &str,
        v: &Option<RawNumber>,
        zero: &str,
    ) -> Option<u32> {
        match v.as_ref()?.as_count("attempts") {
            Ok(0) => {
                self.add(field, format!("is 0; give at least 1, {zero}"));
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    pub(super) fn percent(&mut self, field: &str, v: f64) -> f64 {
        if !(0.0..=100.0).contains(&v) {
            self.add(field, format!("{v} is outside 0-100"));
        }
        v
    }

    pub(super) fn regex(&mut self, field: &str, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let first = e.to_string().lines().last().unwrap_or_default().to_string();
            self.add(field, format!("regex {re:?} does not compile: {first}"));
        }
    }
}

/// Every routing document in `docs`, validated; every problem at once.
pub fn routing_from(docs: &[Located]) -> Result<Routing, Vec<manifest::Error>> {
    let mut out = Routing::default();
    let mut errors = Vec::new();
    for at in docs {
        if !matches!(
            at.doc,
            Document::HttpRouteGroup(_) | Document::HttpRoute(_) | Document::TrafficPolicy(_)
        ) {
            continue;
        }
        let (object, meta) = at.doc.kind_and_meta();
        let mut p = Problems {
            at,
            object: format!("{object} {}/{}", meta.namespace, meta.name),
            errors: Vec::new(),
        };
        match &at.doc {
            Document::HttpRouteGroup(g) => {
                let group = route_group(&mut p, g);
                out.groups.push(group);
            }
            Document::HttpRoute(r) => {
                if let Some(route) = http_route(&mut p, r) {
                    out.routes.push(route);
                }
            }
            Document::TrafficPolicy(tp) => {
                let policy = traffic_policy(&mut p, tp);
                out.policies.push(policy);
            }
            _ => {}
        }
        errors.append(&mut p.errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn route_group(p: &mut Problems<'_>, g: &docs::HttpRouteGroup) -> RouteGroup {
    if g.spec.matches.is_empty() {
        p.add("spec.matches", "needs at least one match");
    }
    let mut matches = Vec::new();
    for (i, m) in g.spec.matches.iter().enumerate() {
        if m.name.is_empty() {
            p.add(format!("spec.matches[{i}].name"), "must not be empty");
        }
        matches.push((m.name.clone(), smi_match(p, i, m)));
    }
    RouteGroup {
        name: g.metadata.name.clone(),
        namespace: g.metadata.namespace.clone(),
        matches,
    }
}

fn smi_match(p: &mut Problems<'_>, i: usize, m: &SmiMatch) -> RequestMatch {
    let field = |f: &str| format!("spec.matches[{i}].{f}");
    let path = m.path_regex.as_ref().map(|re| {
        p.regex(&field("pathRegex"), re);
        PathMatch::Regex(re.clone())
    });
    // SMI lists methods; one method per match here, so several become a regex-free check later.
    let methods: Vec<String> = m
        .methods
        .iter()
        .filter(|m| *m != "*")
        .map(|m| m.to_ascii_uppercase())
        .collect();
    if methods.len() > 1 {
        p.add(
            field("methods"),
            "list one method per match (or *); give each method its own match",
        );
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        p.regex(&field(&format!("headers.{name}")), value);
        headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: Err(value.clone()),
        });
    }
    RequestMatch {
        path,
        method: methods.into_iter().next(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_ms("1s"), Ok(1000));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert!(duration_ms("-1s").unwrap_err().contains("negative"));
        assert!(duration_ms("abc").unwrap_err().contains("not a duration"));
        assert!(duration_ms("10").unwrap_err().contains("not a duration"));
        assert!(duration_ms("").is_err());
    }
}
