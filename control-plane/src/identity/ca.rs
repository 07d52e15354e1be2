//! The mesh CA: a root and an issuing certificate, generated on first start
//! (or loaded from files the operator provides) and kept in the state
//! directory with key files mode 0600. It signs leaf certificates for CSRs,
//! but builds every leaf itself: only the CSR's public key is used, so a CSR
//! can never obtain a CA certificate or a name it did not prove.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Root validity: long, because rotating a trust root is an operator event.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issuing CA validity.
const ISSUING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Leaves start a minute in the past, so modest clock skew does not reject them.
const SKEW: Duration = Duration::from_secs(60);

/// CA errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CA file could not be read or written.
    #[error("CA file {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A CA file does not hold what it should.
    #[error("CA file {path}: {reason}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CSR does not parse, or its signature does not verify.
    #[error("malformed CSR: {0}")]
    Csr(String),
    /// The CSR asks for something other than exactly one SPIFFE ID.
    #[error("the CSR must carry exactly one URI SAN (a SPIFFE ID); it carries {0}")]
    Names(String),
    /// The CSR asks for a different identity than the proof shows.
    #[error("the proof is for {proven} but the CSR asks for {requested}")]
    Mismatch {
        /// Identity the proof establishes.
        proven: String,
        /// Identity the CSR asks for.
        requested: String,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
}

/// Where operator-provided CA material lives.
#[derive(Debug, Clone)]
pub struct Provided {
    /// Issuing CA certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Trust anchors (PEM); the issuing certificate itself when absent.
    pub roots: Option<PathBuf>,
}

/// A signed leaf.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Leaf certificate, PEM.
    pub certificate_pem: String,
    /// Intermediates (PEM), leaf's issuer first.
    pub chain_pem: Vec<String>,
    /// Trust anchors (PEM).
    pub roots_pem: Vec<String>,
    /// Leaf expiry, Unix seconds.
    pub not_after_unix: i64,
}

/// A generated CA as text: what the state directory or a Secret keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// Root certificate, PEM.
    pub root_pem: String,
    /// Root key, PEM (kept to issue the next issuing CA).
    pub root_key_pem: String,
    /// Issuing CA certificate, PEM.
    pub issuing_pem: String,
    /// Issuing CA key, PEM.
    pub issuing_key_pem: String,
}

impl Material {
    /// A new root and an issuing CA signed by it.
    pub fn generate() -> Result<Material, Error> {
        let root_key = KeyPair::generate()?;
        let root_key_pem = root_key.serialize_pem();
        let root =
            CertifiedIssuer::self_signed(ca_params("mesh root CA", ROOT_LIFETIME, None), root_key)?;
        let issuing_key = KeyPair::generate()?;
        let issuing_key_pem = issuing_key.serialize_pem();
        let issuing = CertifiedIssuer::signed_by(
            ca_params("mesh issuing CA", ISSUING_LIFETIME, Some(0)),
            issuing_key,
            &root,
        )?;
        Ok(Material {
            root_pem: root.pem(),
            root_key_pem,
            issuing_pem: issuing.pem(),
            issuing_key_pem,
        })
    }
}

/// The certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates to send with each leaf (empty when the issuer is a root).
    chain_pem: Vec<String>,
    roots_pem: Vec<String>,
    lifetime: Duration,
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })
}

/// Writes a file atomically; `secret` files are created 0600 so a key is never
/// readable by others, not even between create and chmod.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Each certificate of a PEM bundle, as its own PEM text.
pub(crate) fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter_map(|b| {
            b.find("-----BEGIN CERTIFICATE-----")
                .map(|i| format!("{}\n", &b[i..]))
        })
        .collect()
}

fn ca_params(cn: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = (now - SKEW).into();
    p.not_after = (now + lifetime).into();
    p
}

impl Ca {
    /// Loads the CA from `provided` files, else from `dir`, else creates one in `dir`.
    pub fn load_or_create(
        dir: &Path,
        provided: Option<&Provided>,
        lifetime: Duration,
    ) -> Result<Ca, Error> {
        if let Some(p) = provided {
            let cert = read(&p.cert)?;
            let roots = match &p.roots {
                Some(r) => pem_blocks(&read(r)?),
                None => pem_blocks(&cert),
            };
            let chain = if p.roots.is_some() {
                pem_blocks(&cert)
            } else {
                Vec::new()
            };
            return Self::from_parts(&cert, &read(&p.key)?, &p.key, chain, roots, lifetime);
        }
        let (root_pem_path, issuing_pem_path, issuing_key_path) = (
            dir.join("root.pem"),
            dir.join("issuing.pem"),
            dir.join("issuing.key"),
        );
        if issuing_key_path.exists() {
            let issuing = read(&issuing_pem_path)?;
            return Self::from_parts(
                &issuing,
                &read(&issuing_key_path)?,
                &issuing_key_path,
                pem_blocks(&issuing),
                pem_blocks(&read(&root_pem_path)?),
                lifetime,
            );
        }
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.into(),
            source,
        })?;
        let m = Material::generate()?;
        // Keys first, certificates last: an interrupted first start leaves no
        // issuing.key, so the next start generates afresh instead of loading half a CA.
        write(&dir.join("root.key"), &m.root_key_pem, true)?;
        write(&root_pem_path, &m.root_pem, false)?;
        write(&issuing_pem_path, &m.issuing_pem, false)?;
        write(&issuing_key_path, &m.issuing_key_pem, true)?;
        Self::from_material(&m, &issuing_key_path, lifetime)
    }

    /// The CA `m` describes; `origin` names where it came from in errors.
    pub fn from_material(m: &Material, origin: &Path, lifetime: Duration) -> Result<Ca, Error> {
        Self::from_parts(
            &m.issuing_pem,
            &m.issuing_key_pem,
            origin,
            pem_blocks(&m.issuing_pem),
            pem_blocks(&m.root_pem),
            lifetime,
        )
    }

    fn from_parts(
        cert_pem: &str,
        key_pem: &str,
        key_path: &Path,
        chain_pem: Vec<String>,
        roots_pem: Vec<String>,
        lifetime: Duration,
    ) -> Result<Ca, Error> {
        let invalid = |reason: String| Error::Invalid {
            path: key_path.into(),
            reason,
        };
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("not a private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
        if roots_pem.is_empty() {
            return Err(invalid("no trust anchors (roots) found".into()));
        }
        Ok(Ca {
            issuer,
            chain_pem,
            roots_pem,
            lifetime,
        })
    }

    /// Trust anchors, PEM.
    pub fn roots_pem(&self) -> &[String] {
        &self.roots_pem
    }

    /// The earliest expiry among the trust anchors, Unix seconds.
    pub fn root_not_after_unix(&self) -> i64 {
        use rustls_pki_types::pem::PemObject;
        self.roots_pem
            .iter()
            .filter_map(|pem| rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok())
            .filter_map(|der| {
                x509_parser::parse_x509_certificate(&der)
                    .ok()
                    .map(|(_, c)| c.validity().not_after.timestamp())
            })
            .min()
            .unwrap_or(0)
    }

    /// Lifetime of the workload certificates it signs.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A key pair generated here and a leaf for `identity` on it: the
    /// control plane's own certificates (its server identity, the admin
    /// credentials it hands its operator), which need no proof beyond
    /// holding the CA.
    pub fn issue(&self, identity: &str) -> Result<(Signed, String), Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(identity.try_into().map_err(|_| {
                Error::Names(format!("{identity:?} is not an IA5 string"))
            })?)];
        let csr = params.serialize_request(&key)?.pem()?;
        Ok((self.sign(&csr, identity)?, key.serialize_pem()))
    }

    /// Writes `signed` and `key_pem` as `cert.pem` (leaf, then chain) and
    /// `key.pem` (0600) in `dir` (0700), and the trust anchors as
    /// `roots.pem`: what a client needs to speak mTLS to the control plane.
    pub fn write_credentials(dir: &Path, signed: &Signed, key_pem: &str) -> Result<(), Error> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.into(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            Error::Io {
                path: dir.into(),
                source,
            }
        })?;
        let mut chain = signed.certificate_pem.clone();
        for c in &signed.chain_pem {
            chain.push_str(c);
        }
        write(&dir.join("key.pem"), key_pem, true)?;
        write(&dir.join("cert.pem"), &chain, false)?;
        write(&dir.join("roots.pem"), &signed.roots_pem.concat(), false)
    }

    /// Signs a leaf for `identity` with the public key of `csr_pem`, if the
    /// CSR asks for exactly that identity.
    pub fn sign(&self, csr_pem: &str, identity: &str) -> Result<Signed, Error> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::Csr(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        let uris = csr
            .params
            .subject_alt_names
            .iter()
            .filter(|s| matches!(s, SanType::URI(_)))
            .count();
        if requested.len() != 1 || uris != 1 {
            return Err(Error::Names(if requested.is_empty() {
                "none".into()
            } else {
                requested.join(", ")
            }));
        }
        if requested[0] != identity {
            return Err(Error::Mismatch {
                proven: identity.into(),
                requested: requested[0].clone(),
            });
        }
        let san = SanType::URI(
            identity
                .try_into()
                .map_err(|_| Error::Names(format!("{identity:?} is not an IA5 string")))?,
        );
        self.leaf(
            vec![san],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &csr.public_key,
        )
    }

    /// A key pair generated here and a server-only leaf naming `names`
    /// (DNS names, or IP addresses): what the API server verifies when it
    /// calls the admission webhook through its Service.
    pub fn issue_server(&self, names: &[String]) -> Result<(Signed, String), Error> {
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| Error::Names(format!("{n:?} is not a DNS name"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sans.is_empty() {
            return Err(Error::Names("none".into()));
        }
        let key = KeyPair::generate()?;
        let signed = self.leaf(sans, &[ExtendedKeyUsagePurpose::ServerAuth], &key)?;
        Ok((signed, key.serialize_pem()))
    }

    /// Builds and signs every leaf: never a CA, the given names and
    /// purposes, this CA's lifetime.
    fn leaf(
        &self,
        sans: Vec<SanType>,
        purposes: &[ExtendedKeyUsagePurpose],
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<Signed, Error> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = purposes.to_vec();
        let now = SystemTime::now();
        let not_after = now + self.lifetime;
        params.not_before = (now - SKEW).into();
        params.not_after = not_after.into();
        let leaf = params.signed_by(public_key, &self.issuer)?;
        Ok(Signed {
            certificate_pem: leaf.pem(),
            chain_pem: self.chain_pem.clone(),
            roots_pem: self.roots_pem.clone(),
            not_after_unix: not_after
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn csr_for(uri: &str) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained); // a greedy CSR
        (p.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mesh-ca-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn creates_persists_with_0600_keys_and_reloads_the_same_root() {
        let dir = tmp("persist");
        let a = Ca::load_or_create(&dir, None, Duration::from_secs(60)).unwrap();
        for key in ["root.key", "issuing.key"] {
            let mode = fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let b = Ca::load_or_create(&dir, None, Duration::from_secs(60)).unwrap();
        assert_eq!(
            a.roots_pem(),
            b.roots_pem(),
            "a restart keeps the trust root"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_server_leaf_names_its_dns_names_and_ips_and_serves_only() {
        let dir = tmp("server");
        let ca = Ca::load_or_create(&dir, None, Duration::from_secs(60)).unwrap();
        let names = [
            "mesh-control.mesh-system.svc".to_string(),
            "127.0.0.1".into(),
        ];
        let (signed, key_pem) = ca.issue_server(&names).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let der = pem_der(&signed.certificate_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names = format!("{:?}", san.value.general_names);
        assert!(
            names.contains("DNSName(\"mesh-control.mesh-system.svc\")")
                && names.contains("IPAddress([127, 0, 0, 1])"),
            "{names}"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(matches!(ca.issue_server(&[]), Err(Error::Names(_))));
        assert!(matches!(
            ca.issue_server(&["caf\u{e9}.svc".into()]),
            Err(Error::Names(_))
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn signs_only_the_proven_identity_and_never_a_ca() {
        let dir = tmp("sign");
        let ca = Ca::load_or_create(&dir, None, Duration::from_secs(60)).unwrap();
        let id = "spiffe://cluster.local/ns/default/sa/echo";
        let (csr, key) = csr_for(id);
        let signed = ca.sign(&csr, id).unwrap();
        let der = pem_der(&signed.certificate_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca(), "a CSR asking for CA gets a leaf");
        // The leaf certifies the CSR's key, and no other.
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        let (_, other) = csr_for(id);
        assert_ne!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&other)
        );
        // Signed by the issuing certificate the chain carries.
        let issuing_der = pem_der(&signed.chain_pem[0]);
        let (_, issuing) = x509_parser::parse_x509_certificate(&issuing_der).unwrap();
        assert_eq!(cert.issuer(), issuing.subject());
        cert.verify_signature(Some(issuing.public_key()))
            .expect("the issuing key signed the leaf");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!("[URI(\"{id}\")]")
        );
        assert_eq!(signed.chain_pem.len(), 1);

        let err = ca
            .sign(&csr_for("spiffe://cluster.local/ns/default/sa/admin").0, id)
            .unwrap_err();
        assert!(err.to_string().contains("sa/admin"), "{err}");
        assert!(matches!(ca.sign("garbage", id), Err(Error::Csr(_))));
        fs::remove_dir_all(dir).unwrap();
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn operator_provided_files_are_loaded_and_bad_ones_named() {
        let dir = tmp("provided");
        let made = Ca::load_or_create(&dir.join("made"), None, Duration::from_secs(60)).unwrap();
        let p = Provided {
            cert: dir.join("made/issuing.pem"),
            key: dir.join("made/issuing.key"),
            roots: Some(dir.join("made/root.pem")),
        };
        let loaded =
            Ca::load_or_create(&dir.join("unused"), Some(&p), Duration::from_secs(60)).unwrap();
        assert_eq!(loaded.roots_pem(), made.roots_pem());
        let bad = Provided {
            key: dir.join("made/root.pem"),
            ..p
        };
        let err = Ca::load_or_create(&dir.join("unused"), Some(&bad), Duration::from_secs(60))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("root.pem") && err.to_string().contains("not a private key"),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
