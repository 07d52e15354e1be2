//! Connects to mesh-control's admin API and turns gRPC errors into plain
//! messages (the server's message already names file, field and problem).

use anyhow::{Context, Result};
use mesh_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// Default control plane URL.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:15010";

/// Connects to the admin API.
pub async fn admin(url: &str) -> Result<AdminClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("control plane address {url:?}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the control plane at {url}; is it running (`meshctl up`)?")
        })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// A gRPC error as the message a person should read.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
