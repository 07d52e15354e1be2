//! Workload identity: the CA (`ca`), local-mode proofs (`tokens`),
//! Kubernetes proofs (`review`: projected ServiceAccount tokens checked by
//! TokenReview), and the Identity gRPC service that turns a proof plus a
//! CSR into a SPIFFE certificate. The private key never reaches the
//! control plane.

pub mod ca;
pub mod review;
pub mod tokens;

use mesh_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The SPIFFE ID of a service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// A SPIFFE ID of this trust domain, split into what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Service account.
    pub service_account: &'a str,
}

/// `spiffe://<trust_domain>/ns/<namespace>/sa/<account>` split; `None` for
/// any other shape or trust domain.
pub fn workload<'a>(id: &'a str, trust_domain: &str) -> Option<Workload<'a>> {
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let rest = rest.strip_prefix("/ns/")?;
    let (namespace, rest) = rest.split_once('/')?;
    let service_account = rest.strip_prefix("sa/")?;
    let plain = |s: &str| !s.is_empty() && !s.contains('/');
    (plain(namespace) && plain(service_account)).then_some(Workload {
        namespace,
        service_account,
    })
}

/// What a Certify request's token is checked against.
pub enum Proofs {
    /// Local mode: the bootstrap tokens in force.
    Local(tokens::Shared),
    /// Kubernetes: the API server's TokenReview.
    Kubernetes(kube::Client),
}

/// The Identity service.
pub struct Identity {
    ca: Arc<ca::Ca>,
    proofs: Proofs,
    trust_domain: String,
}

impl Identity {
    /// A service signing with `ca` for holders of a token `proofs` accepts.
    pub fn new(ca: Arc<ca::Ca>, proofs: Proofs, trust_domain: String) -> Self {
        Identity {
            ca,
            proofs,
            trust_domain,
        }
    }

    /// The `(namespace, service account)` a token proves.
    async fn proven(&self, token: &str) -> Result<(String, String), Status> {
        match &self.proofs {
            Proofs::Local(tokens) => {
                let tokens = tokens.current();
                let Some(binding) = tokens.get(token) else {
                    tracing::warn!("certificate refused: unknown bootstrap token");
                    return Err(Status::unauthenticated("the bootstrap token is not valid"));
                };
                Ok((binding.namespace.clone(), binding.service_account.clone()))
            }
            Proofs::Kubernetes(client) => review::review(client, token).await.map_err(|e| {
                tracing::warn!(reason = %e, "certificate refused");
                match e {
                    review::Refused::Review(_) => Status::unavailable(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                }
            }),
        }
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Identity {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let req = request.into_inner();
        let (namespace, account) = self.proven(&req.token).await?;
        let identity = spiffe_id(&self.trust_domain, &namespace, &account);
        // Signing is CPU work (ECDSA); keep it off the async workers.
        let ca = self.ca.clone();
        let csr = req.csr_pem;
        let id = identity.clone();
        let signed = tokio::task::spawn_blocking(move || ca.sign(&csr, &id))
            .await
            .map_err(|e| Status::internal(format!("signing task: {e}")))?
            .inspect_err(|e| tracing::warn!(%identity, error = %e, "certificate refused"))?;
        tracing::info!(%identity, not_after = signed.not_after_unix, "certificate issued");
        Ok(Response::new(pb::CertifyResponse {
            identity,
            certificate_pem: signed.certificate_pem,
            chain_pem: signed.chain_pem,
            roots_pem: signed.roots_pem,
            not_after_unix: signed.not_after_unix,
        }))
    }
}
