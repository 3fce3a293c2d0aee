//! What the collector's client subcommands share: the admin endpoint and token, and a
//! small runtime for one RPC.

use anyhow::Context;
use flopmeter_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::UsageError;

/// How to reach the collector's admin API.
#[derive(Debug, Clone, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientArgs {
    /// The collector's gRPC endpoint.
    #[arg(
        long,
        env = "FLOPMETER_COLLECTOR",
        value_name = "URL",
        default_value = "http://127.0.0.1:7443"
    )]
    pub collector: String,

    /// Admin token, for collectors that require one (model registry changes).
    #[arg(
        long,
        env = "FLOPMETER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
}

impl ClientArgs {
    /// Connects to the admin API.
    pub async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        let endpoint = Endpoint::from_shared(self.collector.clone())
            .map_err(|e| UsageError(format!("invalid --collector {:?}: {e}", self.collector)))?;
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot reach the collector at {}", self.collector))?;
        Ok(AdminClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// A request carrying the admin token, if any.
    pub fn request<T>(&self, msg: T) -> anyhow::Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| UsageError("the admin token has invalid characters".into()))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// A single-threaded runtime for a client command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A gRPC status as an error a user can act on.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::Unauthenticated => {
            UsageError(s.message().to_string()).into()
        }
        _ => anyhow::anyhow!("collector error ({:?}): {}", s.code(), s.message()),
    }
}

/// A decimal u128 string from the admin API.
pub fn u128_of(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}
