//! What the collector's client subcommands share: the admin endpoint and token, and a
//! small runtime for one RPC.

use anyhow::Context as _;
use flopmeter_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::{InvalidInput, UsageError};

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

    #[command(flatten)]
    #[serde(flatten)]
    pub tls: flopmeter_args::TlsClientArgs,
}

impl ClientArgs {
    /// Connects to the admin API.
    pub async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// A connection to the collector's gRPC port, over TLS for an https:// --collector.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let tls =
            flopmeter_tls::ClientTls::load(&self.collector, &self.tls, flopmeter_tls::unix_now())
                .map_err(InvalidInput::new)?;
        let endpoint = Endpoint::from_shared(self.collector.clone())
            .and_then(|e| tls.apply(e))
            .map_err(|e| InvalidInput::flag(format!("collector {:?}", self.collector), e))?;
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

#[cfg(test)]
mod tests {
    use clap::{Args as _, CommandFactory as _};

    /// Every command that talks to a collector (`--collector`) takes the TLS client flags,
    /// and takes them from the one group: same names, help, environment variables and value
    /// names as `flopmeter_args::TlsClientArgs`. A command that grew its own copy, or lost
    /// the group, fails here.
    #[test]
    fn every_collector_client_takes_the_one_tls_group() {
        let group = flopmeter_args::TlsClientArgs::augment_args(clap::Command::new("group"));
        let wanted: Vec<&clap::Arg> = group.get_arguments().collect();
        assert_eq!(wanted.len(), 4);
        fn leaves(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
            if c.has_subcommands() {
                for s in c.get_subcommands() {
                    leaves(s, format!("{path} {}", s.get_name()), out);
                }
            } else {
                out.push((path, c.clone()));
            }
        }
        let mut all = Vec::new();
        leaves(&crate::Cli::command(), "flopmeter".into(), &mut all);
        let mut clients = Vec::new();
        for (path, cmd) in &all {
            let has = |long: &str| cmd.get_arguments().find(|a| a.get_long() == Some(long));
            // The load generator speaks plaintext only (a tool, not a client of a deployment).
            if has("collector").is_none() || path == "flopmeter loadgen" {
                continue;
            }
            clients.push(path.clone());
            for w in &wanted {
                let long = w.get_long().unwrap();
                let a = has(long).unwrap_or_else(|| panic!("{path} has no --{long}"));
                assert_eq!(a.get_env(), w.get_env(), "{path} --{long}");
                assert_eq!(
                    a.get_help().map(ToString::to_string),
                    w.get_help().map(ToString::to_string),
                    "{path} --{long}"
                );
                assert_eq!(
                    a.get_long_help().map(ToString::to_string),
                    w.get_long_help().map(ToString::to_string),
                    "{path} --{long}"
                );
                assert_eq!(a.get_value_names(), w.get_value_names(), "{path} --{long}");
            }
        }
        for c in [
            "flopmeter agent",
            "flopmeter models",
            "flopmeter ack",
            "flopmeter ledger verify",
        ] {
            assert!(clients.iter().any(|p| p == c), "{c} in {clients:?}");
        }
    }
}
