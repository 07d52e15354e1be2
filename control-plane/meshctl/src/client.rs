//! Connects to mesh-control's admin API over mTLS, as an operator: it
//! presents the operator's certificate (`--credentials`, or what `meshctl
//! up` recorded) and accepts only a server proving the control plane's
//! SPIFFE ID. gRPC errors become plain messages (the server's message
//! already names file, field and problem).

use anyhow::{Context, Result, anyhow};
use mesh_control::mtls::{Connector, Credentials, control_id};
use mesh_proto::v1::admin_client::AdminClient;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::Channel;

/// Default admin API URL.
pub const DEFAULT_CONTROL: &str = "https://127.0.0.1:15011";

/// Where a control plane's admin API is, and whose credentials to use.
#[derive(Debug, Clone)]
pub struct Control {
    /// Admin API URL.
    pub url: String,
    /// A directory with `cert.pem`, `key.pem` and `roots.pem`.
    pub credentials: PathBuf,
}

impl Control {
    /// The admin API at `url` with the credentials in `credentials`.
    pub fn new(url: impl Into<String>, credentials: impl Into<PathBuf>) -> Control {
        Control {
            url: url.into(),
            credentials: credentials.into(),
        }
    }

    /// The flags' or environment's choice; without credentials, those of the
    /// mesh `meshctl up` last started (`current()`).
    pub fn resolve(url: Option<String>, credentials: Option<PathBuf>) -> Result<Control> {
        let recorded = || current_file().and_then(|f| std::fs::read_to_string(f).ok());
        match (url, credentials) {
            (url, Some(credentials)) => Ok(Control {
                url: url.unwrap_or_else(|| DEFAULT_CONTROL.into()),
                credentials,
            }),
            (url, None) => match recorded()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            {
                Some(v) => Ok(Control {
                    url: url
                        .unwrap_or_else(|| v["control"].as_str().unwrap_or(DEFAULT_CONTROL).into()),
                    credentials: v["credentials"].as_str().unwrap_or_default().into(),
                }),
                None => Err(anyhow!(
                    "no credentials for the admin API: pass --credentials DIR (or set MESH_CREDENTIALS), or start a mesh with `meshctl up`, which records its own"
                )),
            },
        }
    }

    /// Records this as the mesh later meshctl commands talk to (0600).
    pub fn record(&self) -> Result<PathBuf> {
        let file = current_file().context("no $MESH_CONFIG or $HOME to record the mesh in")?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::json!({"control": self.url, "credentials": self.credentials});
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("writing {}", file.display()))?;
        f.write_all(text.to_string().as_bytes())?;
        Ok(file)
    }
}

/// `$MESH_CONFIG`, else `$HOME/.config/mesh/current.json`.
fn current_file() -> Option<PathBuf> {
    std::env::var_os("MESH_CONFIG")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/mesh/current.json"))
        })
}

/// A channel to the control plane at `url` that presents no certificate
/// and accepts only a server chaining to `roots` and proving the control
/// plane's ID in `trust_domain`.
pub async fn anonymous_channel(url: &str, roots: &Path, trust_domain: &str) -> Result<Channel> {
    let config = mesh_control::mtls::anonymous_config(roots, &control_id(trust_domain))?;
    connect(url, config).await
}

async fn connect(url: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel> {
    // tonic sees plain http; the connector does TLS itself.
    let plain = url.replacen("https://", "http://", 1);
    tonic::transport::Endpoint::from_shared(plain)
        .with_context(|| format!("control plane address {url:?}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_with_connector(Connector(config))
        .await
        .with_context(|| {
            format!("cannot reach the control plane at {url}; is it running (`meshctl up`)?")
        })
}

/// A channel to the control plane at `url` that presents the credentials
/// in `dir` (an operator's, or a workload's) and accepts only a server
/// proving the control plane's SPIFFE ID.
pub async fn channel(url: &str, dir: &Path) -> Result<Channel> {
    let creds = Credentials::read(dir).with_context(|| {
        format!(
            "reading the credentials in {} (meshctl --credentials DIR)",
            dir.display()
        )
    })?;
    let expected = control_id(&creds.trust_domain());
    connect(url, creds.client_config(&expected)?).await
}

/// Connects to the admin API.
pub async fn admin(control: &Control) -> Result<AdminClient<Channel>> {
    let channel = channel(&control.url, &control.credentials).await?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// A gRPC error as the message a person should read.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
