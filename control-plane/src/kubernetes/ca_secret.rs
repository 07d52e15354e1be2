//! The CA's root and issuing keys in a Secret (`--ca-secret`), so every
//! replica of the control plane signs with one chain and a sidecar's
//! certificate from one verifies at another (istiod keeps its self-signed
//! CA in `istio-ca-secret` the same way). The first replica to start
//! creates it; one that loses that race reads the winner's.

use crate::identity::ca::Material;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use std::collections::BTreeMap;

/// The Secret's keys (cert-manager's and Istio's names, where they have one).
const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";

/// Why the CA Secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("CA Secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// It exists but does not hold a CA.
    #[error("CA Secret {namespace}/{name}: {reason}")]
    Invalid {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A new CA could not be generated.
    #[error("generating the CA: {0}")]
    Generate(#[from] crate::identity::ca::Error),
}

/// The CA held in `namespace/name`, created with a new one if absent.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Material, Error> {
    let api = kube::Api::<Secret>::namespaced(client, namespace);
    let failed = |source| Error::Api {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    if let Some(s) = api.get_opt(name).await.map_err(failed)? {
        return material(&s, namespace, name);
    }
    let m = Material::generate()?;
    let text = |v: &str| ByteString(v.as_bytes().to_vec());
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "mesh".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (ROOT_CERT.to_string(), text(&m.root_pem)),
            (ROOT_KEY.to_string(), text(&m.root_key_pem)),
            (CA_CERT.to_string(), text(&m.issuing_pem)),
            (CA_KEY.to_string(), text(&m.issuing_key_pem)),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "created the CA Secret");
            Ok(m)
        }
        // Another replica created it first: use its CA, not ours.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(name).await.map_err(failed)?;
            material(&s, namespace, name)
        }
        Err(e) => Err(failed(e)),
    }
}

fn material(s: &Secret, namespace: &str, name: &str) -> Result<Material, Error> {
    let data = s.data.clone().unwrap_or_default();
    let field = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| Error::Invalid {
                namespace: namespace.into(),
                name: name.into(),
                reason: format!("no {key} in its data"),
            })
    };
    Ok(Material {
        root_pem: field(ROOT_CERT)?,
        root_key_pem: field(ROOT_KEY)?,
        issuing_pem: field(CA_CERT)?,
        issuing_key_pem: field(CA_KEY)?,
    })
}
