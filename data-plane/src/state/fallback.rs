//! A route's fallback: what answers while none of its backends has a usable
//! endpoint (every one ejected, or none ready), instead of a fast 503:
//! another cluster, or a static response of the sidecar's own. Converted
//! from proto once per snapshot, the response's head and body ready to copy.

use super::cluster::Cluster;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mesh_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The sidecar's own answer.
#[derive(Debug)]
pub struct StaticResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers, as configured.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Where a request goes when its route's backends cannot take it.
#[derive(Debug)]
pub enum Fallback {
    /// Another cluster's endpoints.
    Cluster(Arc<Cluster>),
    /// A static response.
    Response(StaticResponse),
}

impl Fallback {
    /// The metric label: the cluster's name, or `static`.
    pub fn label(&self) -> &str {
        match self {
            Fallback::Cluster(c) => &c.name,
            Fallback::Response(_) => "static",
        }
    }

    /// Converts one; the error says what is wrong.
    pub(super) fn from_proto(
        f: &pb::Fallback,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> Result<Fallback, String> {
        match &f.target {
            None => Err("fallback names neither a cluster nor a response".into()),
            Some(pb::fallback::Target::Cluster(name)) => clusters
                .get(name)
                .map(|c| Fallback::Cluster(Arc::clone(c)))
                .ok_or_else(|| format!("fallback names unknown cluster {name:?}")),
            Some(pb::fallback::Target::Response(r)) => {
                let status = u16::try_from(r.status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| !s.is_informational())
                    .ok_or_else(|| {
                        format!("fallback status {} is not a final HTTP status", r.status)
                    })?;
                let mut headers = HeaderMap::new();
                for h in &r.headers {
                    let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(h.name.as_bytes()),
                        HeaderValue::from_str(&h.value),
                    ) else {
                        return Err(format!("fallback header {:?} is not valid", h.name));
                    };
                    headers.append(name, value);
                }
                Ok(Fallback::Response(StaticResponse {
                    status,
                    headers,
                    body: Bytes::from(r.body.clone()),
                }))
            }
        }
    }

    /// A JSON view for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        match self {
            Fallback::Cluster(c) => serde_json::json!({ "cluster": c.name }),
            Fallback::Response(r) => serde_json::json!({
                "response": { "status": r.status.as_u16(), "body_bytes": r.body.len() }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u32, headers: &[(&str, &str)]) -> pb::Fallback {
        pb::Fallback {
            target: Some(pb::fallback::Target::Response(pb::StaticResponse {
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| pb::Header {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                body: b"degraded".to_vec(),
            })),
        }
    }

    #[test]
    fn a_static_response_is_checked_once_and_kept_ready() {
        let none = BTreeMap::new();
        let Ok(Fallback::Response(r)) =
            Fallback::from_proto(&response(200, &[("x-degraded", "1")]), &none)
        else {
            panic!("a valid response");
        };
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"degraded"[..]));
        assert_eq!(r.headers["x-degraded"], "1");
        for (bad, says) in [
            (response(99, &[]), "not a final HTTP status"),
            (response(1000, &[]), "not a final HTTP status"),
            (response(200, &[("bad name", "x")]), "not valid"),
            (
                pb::Fallback {
                    target: Some(pb::fallback::Target::Cluster("ghost.default".into())),
                },
                "unknown cluster \"ghost.default\"",
            ),
            (pb::Fallback { target: None }, "neither"),
        ] {
            let e = Fallback::from_proto(&bad, &none).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
