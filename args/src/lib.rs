//! flopmeter-args: the command-line pieces the agent, the collector and the CLI's client
//! commands share, so a flag means one thing, with one help text and one environment
//! variable, wherever it appears.
//!
//! - [`TlsClientArgs`]: `--tls-ca`, `--tls-cert`, `--tls-key`, `--tls-server-name`, a
//!   `#[command(flatten)]` group for every command that connects to a collector;
//! - [`LogFormat`]: `--log-format` of the long-running commands.
//!
//! Why a crate of its own: the agent and the collector crates define their commands' options
//! and share no crate but core, proto and tls, and clap belongs in none of those. It depends
//! on clap and serde only; `flopmeter-tls` reads the files these flags name.

use std::path::PathBuf;

use serde::Serialize;

/// The TLS flags of a client of the collector (the agent, `flopmeter models`, `ack`, ...).
/// Flatten it into a command's options (`#[command(flatten)]`, and `#[serde(flatten)]` where
/// the options are printed as a config file). `flopmeter_tls::ClientTls::load` checks the
/// files against the collector URL and reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsClientArgs {
    /// CA certificate (PEM) that signed the collector's certificate, for an https://
    /// --collector. Without it, the system's trusted roots.
    #[arg(long, env = "FLOPMETER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM), for a collector with mutual TLS. Needs --tls-key. An
    /// agent's CN or a DNS name must be its agent id (--agent-id); the CLI uses the
    /// `admin.pem` of `flopmeter certs dev` (admin writes still need the admin token).
    #[arg(long, env = "FLOPMETER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "FLOPMETER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Verify the collector's certificate against this name instead of the --collector
    /// host (e.g. when connecting by IP address).
    #[arg(long, env = "FLOPMETER_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsClientArgs {
    /// Whether any of the flags is given (they need an `https://` collector).
    pub fn any(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsClientArgs,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    }

    #[test]
    fn flags_parse_into_the_group() {
        let c = Cli::try_parse_from([
            "x",
            "--tls-ca",
            "ca.pem",
            "--tls-server-name",
            "collector",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(c.tls.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.tls.tls_server_name.as_deref(), Some("collector"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }
}
