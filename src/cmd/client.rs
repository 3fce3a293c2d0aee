//! What the collector's client subcommands share: the admin endpoint and token, and a
//! small runtime for one RPC.

use anyhow::Context as _;
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

    /// Admin token, for collectors that require one (model registry changes, ack, dismiss,
    /// ledger verify).
    #[arg(
        long,
        env = "FLOPMETER_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,

    /// CA certificate (PEM) that signed the collector's certificate, for an https://
    /// --collector. Without it, the system's trusted roots.
    #[arg(long, env = "FLOPMETER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM), for collectors whose clients must present one (e.g. the
    /// `admin.pem` of `flopmeter certs dev`). Admin writes still need the admin token.
    #[arg(long, env = "FLOPMETER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "FLOPMETER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Verify the collector's certificate against this name instead of the --collector host.
    #[arg(long, env = "FLOPMETER_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientArgs {
    /// Connects to the admin API.
    pub async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// A connection to the collector's gRPC port, over TLS for an https:// --collector.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let files = flopmeter_tls::ClientTlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        let tls =
            flopmeter_tls::ClientTls::load(&self.collector, &files, flopmeter_tls::unix_now())
                .map_err(|e| UsageError(e.to_string()))?;
        let endpoint = Endpoint::from_shared(self.collector.clone())
            .and_then(|e| tls.apply(e))
            .map_err(|e| UsageError(format!("invalid --collector {:?}: {e}", self.collector)))?;
        match endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
        {
            Ok(c) => Ok(c),
            Err(e) => {
                let what = match flopmeter_tls::diagnose(&e, tls.is_tls()) {
                    Some(d) => format!(
                        "cannot reach the collector at {}: {}",
                        self.collector, d.message
                    ),
                    None => format!("cannot reach the collector at {}", self.collector),
                };
                Err(anyhow::Error::new(e).context(what))
            }
        }
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
    // A TLS problem the handshake did not reveal (TLS 1.3 refuses a client certificate
    // after the client considers the handshake done) surfaces at the first call.
    if let Some(d) =
        flopmeter_tls::diagnose(&s, true).or_else(|| flopmeter_tls::diagnose(&s, false))
    {
        return anyhow::anyhow!("{} ({})", d.message, s.message());
    }
    match s.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied => UsageError(s.message().to_string()).into(),
        _ => anyhow::anyhow!("collector error ({:?}): {}", s.code(), s.message()),
    }
}

/// A decimal u128 string from the admin API.
pub fn u128_of(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}
