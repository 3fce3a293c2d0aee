//! The DSN as operators write it for libpq: `postgres://user:password@host:port/database?
//! sslmode=verify-full&sslrootcert=/etc/flopmeter/pg-ca.crt`.
//!
//! tokio-postgres parses the URL but knows only `disable`, `prefer` and `require`, and no
//! certificate files: the TLS keys are taken out here and given libpq's meaning
//! ([`SslMode`]), the rest goes to tokio-postgres unchanged. The password stays inside
//! [`tokio_postgres::Config`], whose `Debug` redacts it; [`Dsn`]'s `Display` and `Debug` never
//! show it, and no error of this module quotes the DSN.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode as WireSslMode};

/// How TLS is used, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, plaintext otherwise; the certificate is not checked
    /// (libpq's default, and `allow`).
    Prefer,
    /// TLS or nothing; the certificate is not checked unless a CA is given, which makes it
    /// `verify-ca` (as in libpq).
    Require,
    /// TLS, the certificate chain checked against the CA; the host name is not.
    VerifyCa,
    /// TLS, the chain and the host name checked: what a production DSN should say.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which certificates a verified connection trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's trust store (`sslrootcert=system`, libpq 16's spelling), for
    /// managed servers with a certificate from a public CA.
    System,
    /// A PEM bundle: the CA that signed the server's certificate.
    File(PathBuf),
}

/// A DSN that cannot be used, said so that the operator can fix it. No variant quotes the
/// DSN, which holds the password.
#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    /// Not a `postgres://` URL.
    #[error(
        "the PostgreSQL DSN must be a URL: postgres://USER:PASSWORD@HOST:PORT/DATABASE?\
         sslmode=verify-full (the key=value form is not supported)"
    )]
    NotUrl,
    /// `sslmode` has a value libpq does not know.
    #[error(
        "sslmode={value:?} in the PostgreSQL DSN is not a mode: use disable, prefer, require, \
         verify-ca or verify-full"
    )]
    SslMode {
        /// The value given.
        value: String,
    },
    /// A TLS option flopmeter does not implement (client certificates, CRLs).
    #[error(
        "{key} in the PostgreSQL DSN is not supported: flopmeter authenticates to PostgreSQL \
         with a password (over TLS); remove it"
    )]
    Unsupported {
        /// The option.
        key: String,
    },
    /// A query parameter is not `key=value` or not valid percent-encoded UTF-8. Nothing of
    /// it is quoted: with an unencoded `?` in the password, it would be part of the password.
    #[error(
        "the PostgreSQL DSN has a parameter that is not key=value in percent-encoded UTF-8 \
         (a password containing ?, @, / or # must be percent-encoded: ? is %3F)"
    )]
    Parameter,
    /// tokio-postgres refused the rest of the DSN.
    #[error("the PostgreSQL DSN is not valid: {source}")]
    Invalid {
        /// tokio-postgres's error (it names keys, never values).
        #[source]
        source: tokio_postgres::Error,
    },
    /// No host and no socket directory.
    #[error(
        "the PostgreSQL DSN names no host: postgres://USER:PASSWORD@HOST:PORT/DATABASE, or \
         ?host=/run/postgresql for a Unix socket"
    )]
    NoHost,
    /// No user.
    #[error("the PostgreSQL DSN names no user: postgres://USER:PASSWORD@HOST:PORT/DATABASE")]
    NoUser,
}

/// A parsed DSN: tokio-postgres's configuration plus the TLS settings it cannot express.
#[derive(Clone)]
pub struct Dsn {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_certs: Option<RootCerts>,
}

/// TLS keys of libpq that a DSN may carry and flopmeter refuses rather than ignores.
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
];

impl Dsn {
    /// Parses a DSN.
    pub fn parse(s: &str) -> Result<Dsn, DsnError> {
        let s = s.trim();
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(DsnError::NotUrl);
        }
        let (base, query) = match s.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (s, None),
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut root_certs = None;
        let mut rest = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let Some((raw_key, raw_value)) = pair.split_once('=') else {
                return Err(DsnError::Parameter);
            };
            let key = decode(raw_key)?;
            match key.as_str() {
                "sslmode" => ssl_mode = parse_mode(&decode(raw_value)?)?,
                "sslrootcert" => {
                    let value = decode(raw_value)?;
                    root_certs = Some(if value == "system" {
                        RootCerts::System
                    } else {
                        RootCerts::File(PathBuf::from(value))
                    });
                }
                k if UNSUPPORTED.contains(&k) => {
                    return Err(DsnError::Unsupported { key: key.clone() });
                }
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|source| DsnError::Invalid { source })?;
        if config.get_hosts().is_empty() {
            return Err(DsnError::NoHost);
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err(DsnError::NoUser);
        }
        // libpq: `require` with a CA to check against is `verify-ca`.
        if ssl_mode == SslMode::Require && matches!(root_certs, Some(RootCerts::File(_))) {
            ssl_mode = SslMode::VerifyCa;
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            _ => WireSslMode::Require,
        });
        Ok(Dsn {
            config,
            ssl_mode,
            root_certs,
        })
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The trust roots `sslrootcert` names, if any.
    pub fn root_certs(&self) -> Option<&RootCerts> {
        self.root_certs.as_ref()
    }

    /// The user.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// The database (PostgreSQL's default is the user's name).
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or_else(|| self.user())
    }

    /// Whether a password was given.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The hosts and ports, e.g. `db.example:5432` or `/run/postgresql (socket, port 5432)`:
    /// what error messages name.
    pub fn target(&self) -> String {
        let ports = self.config.get_ports();
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                Host::Unix(dir) => format!("{} (Unix socket, port {})", dir.display(), port(i)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether any host is reached over TCP (where TLS applies).
    pub fn uses_tcp(&self) -> bool {
        self.config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Tcp(_)))
    }

    /// tokio-postgres's configuration (the password inside, redacted by its `Debug`).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(crate) fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Dsn, DsnError> {
        Dsn::parse(s)
    }
}

/// `postgres://user:***@host:port/database?sslmode=...`: the DSN with the password masked,
/// for logs and messages.
impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = if self.has_password() { ":***" } else { "" };
        write!(
            f,
            "postgres://{}{password}@{}/{}?sslmode={}",
            self.user(),
            self.target(),
            self.database(),
            self.ssl_mode
        )
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dsn").field(&self.to_string()).finish()
    }
}

fn parse_mode(value: &str) -> Result<SslMode, DsnError> {
    Ok(match value {
        "disable" => SslMode::Disable,
        // libpq's `allow` tries plaintext first; no server of ours needs that order.
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(DsnError::SslMode {
                value: other.chars().take(40).collect(),
            });
        }
    })
}

fn decode(raw: &str) -> Result<String, DsnError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| DsnError::Parameter)
}
