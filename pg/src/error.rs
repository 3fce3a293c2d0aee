//! What went wrong between flopmeter and PostgreSQL, in words that say what to fix.
//!
//! tokio-postgres reports a failure as a kind ("db error", "error connecting to server") with
//! the cause as its source; the cause is a server error with a SQLSTATE, an I/O error, or a
//! TLS error (a `rustls::Error` inside an `io::Error`). [`PgError::connecting`] reads the
//! cause once, where the connection is made, and picks the variant; every variant keeps the
//! original error as its source.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use rustls::CertificateError;
use tokio_postgres::error::SqlState;

use crate::dsn::{DsnError, SslMode};
use crate::tls::TlsSetupError;

/// Where a connection goes, for messages: never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Hosts and ports (`db.example:5432`).
    pub hosts: String,
    /// The user.
    pub user: String,
    /// The database.
    pub database: String,
    /// The TLS mode.
    pub ssl_mode: SslMode,
}

/// Why a server's certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    /// No chain to a trusted CA (or a bad signature on it).
    UnknownIssuer,
    /// The certificate does not name the host the DSN connects to.
    WrongName,
    /// Past its validity.
    Expired,
    /// Before its validity.
    NotYetValid,
    /// Anything else rustls refused, in its words.
    Other(String),
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateProblem::UnknownIssuer => f.write_str(
                "it is not signed by a CA this client trusts: give the CA that signed it \
                 (sslrootcert= in the DSN), or check that the server presents the right \
                 certificate",
            ),
            CertificateProblem::WrongName => f.write_str(
                "it does not name the host in the DSN: connect with a name the certificate \
                 has (one of its subject alternative names), or use sslmode=verify-ca",
            ),
            CertificateProblem::Expired => {
                f.write_str("it has expired (or this machine's clock is wrong): renew it")
            }
            CertificateProblem::NotYetValid => {
                f.write_str("it is not valid yet: is this machine's clock right?")
            }
            CertificateProblem::Other(detail) => write!(f, "{detail}"),
        }
    }
}

/// A failure to reach, or to work with, PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The DSN cannot be used.
    #[error(transparent)]
    Dsn(#[from] DsnError),
    /// The TLS settings cannot be built (CA file, system roots).
    #[error(transparent)]
    TlsSetup(#[from] TlsSetupError),
    /// The client's own runtime could not be started.
    #[error("cannot start the PostgreSQL client's threads: {0}")]
    Runtime(#[source] std::io::Error),
    /// Nothing answered at the address (refused, unresolvable, no route, timed out), or the
    /// server is starting or shutting down.
    #[error(
        "cannot reach PostgreSQL at {target}: {detail}. Is the server running, and are the \
         host and port in the DSN right and reachable from here?"
    )]
    Unreachable {
        /// Hosts and ports tried.
        target: String,
        /// The last cause, e.g. "Connection refused (os error 111)".
        detail: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server refused the credentials (wrong password, unknown role, no pg_hba.conf
    /// entry), or asked for a password the DSN does not have.
    #[error(
        "PostgreSQL at {target} refused user {user:?}: {detail}. Check the user and password \
         in the DSN, and that the server's pg_hba.conf admits this host and user"
    )]
    Authentication {
        /// Hosts and ports.
        target: String,
        /// The user.
        user: String,
        /// The server's words.
        detail: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database named in the DSN does not exist.
    #[error(
        "the database {database:?} does not exist on PostgreSQL at {target}: create it \
         (CREATE DATABASE {database} OWNER <the DSN's user>) or fix the database in the DSN"
    )]
    NoDatabase {
        /// Hosts and ports.
        target: String,
        /// The database.
        database: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server answered the TLS request with "no".
    #[error(
        "PostgreSQL at {target} does not offer TLS, and sslmode={mode} requires it: enable ssl \
         on the server (ssl = on, with its certificate), or connect through a Unix socket with \
         sslmode=prefer (a socket never carries TLS)"
    )]
    TlsRefused {
        /// Hosts and ports.
        target: String,
        /// The DSN's mode.
        mode: SslMode,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server's certificate was not accepted.
    #[error("the certificate of PostgreSQL at {target} is not trusted: {problem}")]
    CertificateNotTrusted {
        /// Hosts and ports.
        target: String,
        /// Why.
        problem: CertificateProblem,
        /// tokio-postgres's error (the `rustls::Error` is inside).
        #[source]
        source: tokio_postgres::Error,
    },
    /// The TLS handshake failed for another reason.
    #[error("the TLS handshake with PostgreSQL at {target} failed: {detail}")]
    Tls {
        /// Hosts and ports.
        target: String,
        /// The cause.
        detail: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server, the role or the database has no connection slot left.
    #[error(
        "PostgreSQL at {target} has no connection slot left for this client ({detail}): raise \
         the server's max_connections or the role's or database's CONNECTION LIMIT, or give \
         flopmeter a smaller pool"
    )]
    TooManyConnections {
        /// Hosts and ports.
        target: String,
        /// The server's words.
        detail: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An open connection broke: the server restarted or shut down, or the network failed.
    #[error(
        "the connection to PostgreSQL broke ({detail}): the server restarted or the network \
         failed. The transaction in flight was rolled back, unless its COMMIT had already \
         reached the server"
    )]
    ConnectionLost {
        /// The cause.
        detail: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server refused a statement (constraint, syntax, serialization failure...).
    #[error("PostgreSQL refused a statement: {detail}")]
    Statement {
        /// The SQLSTATE, when the server sent one (`40001`, `23505`, ...).
        code: Option<String>,
        /// The server's message, detail and hint, or the client's.
        detail: String,
        /// tokio-postgres's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No answer within the time allowed; the connection was closed, so the server rolls the
    /// transaction back.
    #[error(
        "no answer from PostgreSQL within {after:?}: the server or the network is stalled \
         (the connection was closed and its transaction rolled back)"
    )]
    Timeout {
        /// The time allowed.
        after: Duration,
    },
    /// The client was shut down while the work waited.
    #[error("the PostgreSQL client is shut down")]
    Closed,
}

impl PgError {
    /// Classifies a failure to open a connection to `target`.
    pub fn connecting(target: &Target, e: tokio_postgres::Error) -> PgError {
        let hosts = target.hosts.clone();
        if let Some(db) = e.as_db_error() {
            let detail = db_detail(db);
            let code = db.code().clone();
            return if code == SqlState::INVALID_PASSWORD
                || code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                PgError::Authentication {
                    target: hosts,
                    user: target.user.clone(),
                    detail,
                    source: e,
                }
            } else if code == SqlState::INVALID_CATALOG_NAME {
                PgError::NoDatabase {
                    target: hosts,
                    database: target.database.clone(),
                    source: e,
                }
            } else if code == SqlState::TOO_MANY_CONNECTIONS {
                PgError::TooManyConnections {
                    target: hosts,
                    detail,
                    source: e,
                }
            } else if code == SqlState::CANNOT_CONNECT_NOW {
                PgError::Unreachable {
                    target: hosts,
                    detail,
                    source: e,
                }
            } else {
                PgError::from(e)
            };
        }
        if let Some(tls) = find_rustls(&e) {
            return match tls {
                rustls::Error::InvalidCertificate(c) => PgError::CertificateNotTrusted {
                    target: hosts,
                    problem: certificate_problem(c),
                    source: e,
                },
                other => PgError::Tls {
                    target: hosts,
                    detail: other.to_string(),
                    source: e,
                },
            };
        }
        let detail = chain(&e);
        // tokio-postgres names these cases only in its text; the tests pin the words.
        if detail.contains("server does not support TLS") {
            return PgError::TlsRefused {
                target: hosts,
                mode: target.ssl_mode,
                source: e,
            };
        }
        if e.to_string() == "authentication error" {
            return PgError::Authentication {
                target: hosts,
                user: target.user.clone(),
                detail,
                source: e,
            };
        }
        if e.to_string() == "error performing TLS handshake" {
            return PgError::Tls {
                target: hosts,
                detail,
                source: e,
            };
        }
        PgError::Unreachable {
            target: hosts,
            detail,
            source: e,
        }
    }

    /// Whether the work may be retried on a new connection as it is: the connection broke or
    /// stalled (the server rolled the transaction back, unless it had committed: idempotent
    /// work only), or the server could not be reached for now.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PgError::Unreachable { .. }
                | PgError::ConnectionLost { .. }
                | PgError::Timeout { .. }
                | PgError::TooManyConnections { .. }
        ) || matches!(self, PgError::Statement { code: Some(c), .. }
            if c == SqlState::T_R_SERIALIZATION_FAILURE.code()
                || c == SqlState::T_R_DEADLOCK_DETECTED.code())
    }
}

/// An error on an open connection.
impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        let lost_codes = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ];
        match e.as_db_error() {
            Some(db) if lost_codes.contains(db.code()) => PgError::ConnectionLost {
                detail: db_detail(db),
                source: e,
            },
            Some(db) => PgError::Statement {
                code: Some(db.code().code().to_string()),
                detail: db_detail(db),
                source: e,
            },
            None if e.is_closed() || e.to_string() == "error communicating with the server" => {
                PgError::ConnectionLost {
                    detail: chain(&e),
                    source: e,
                }
            }
            None => PgError::Statement {
                code: None,
                detail: chain(&e),
                source: e,
            },
        }
    }
}

fn db_detail(db: &tokio_postgres::error::DbError) -> String {
    let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(d) = db.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    if let Some(h) = db.hint() {
        s.push_str("; hint: ");
        s.push_str(h);
    }
    s
}

fn certificate_problem(c: &CertificateError) -> CertificateProblem {
    match c {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            CertificateProblem::UnknownIssuer
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            CertificateProblem::WrongName
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            CertificateProblem::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            CertificateProblem::NotYetValid
        }
        other => CertificateProblem::Other(format!("{other:?}")),
    }
}

/// The `rustls::Error` somewhere in the chain. `io::Error::source` skips the error it wraps,
/// so each `io::Error` is opened by hand.
fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        current = err.source();
    }
    None
}

/// "kind: cause: cause", one line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut current = e.source();
    while let Some(err) = current {
        s.push_str(": ");
        s.push_str(&err.to_string());
        current = err.source();
    }
    s
}
