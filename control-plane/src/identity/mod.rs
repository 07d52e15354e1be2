//! Workload identity: the CA (`ca`), local-mode proofs (`tokens`), and the
//! Identity gRPC service that turns a proof plus a CSR into a SPIFFE
//! certificate. The private key never reaches the control plane.

pub mod ca;
pub mod tokens;

use mesh_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The SPIFFE ID of a service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The Identity service.
pub struct Identity {
    ca: Arc<ca::Ca>,
    tokens: Arc<tokens::Tokens>,
    trust_domain: String,
}

impl Identity {
    /// A service signing with `ca` for holders of `tokens`.
    pub fn new(ca: Arc<ca::Ca>, tokens: tokens::Tokens, trust_domain: String) -> Self {
        Identity {
            ca,
            tokens: Arc::new(tokens),
            trust_domain,
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
        let Some(binding) = self.tokens.get(&req.token) else {
            tracing::warn!("certificate refused: unknown bootstrap token");
            return Err(Status::unauthenticated("the bootstrap token is not valid"));
        };
        let identity = spiffe_id(
            &self.trust_domain,
            &binding.namespace,
            &binding.service_account,
        );
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
