//! The operators' credentials on disk, beside the mesh's roots.

use crate::identity::ca;
use std::path::Path;

/// Writes the operators' client credentials: `admin/` may change the mesh,
/// `viewer/` may only read it. Reissued on every start and renewal, so they
/// are never older than a certificate lifetime. Beside them, `roots.pem`:
/// the trust anchors a sidecar needs to know the control plane (not secret).
pub(super) fn write(ca: &ca::Ca, trust_domain: &str, dir: &Path) -> Result<(), crate::mtls::Error> {
    use crate::authz::{ADMIN_ACCOUNT, VIEWER_ACCOUNT};
    for (account, sub) in [(ADMIN_ACCOUNT, "admin"), (VIEWER_ACCOUNT, "viewer")] {
        let id = crate::mtls::system_id(trust_domain, account);
        crate::mtls::write_credentials(ca, &id, &dir.join(sub))?;
    }
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, ca.roots_pem().concat()).map_err(|source| crate::mtls::Error::Read {
        path: roots,
        source,
    })?;
    Ok(())
}
