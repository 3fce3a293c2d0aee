//! flopmeter's PostgreSQL infrastructure (issue 15): what a PostgreSQL store is built on,
//! independent of the store traits.
//!
//! - [`dsn`]: the DSN as operators write it for libpq, the password never shown.
//! - [`tls`]: rustls (ring) with libpq's `sslmode`s; never OpenSSL.
//! - [`database`]: the pool on a runtime of its own and the synchronous bridge
//!   ([`Database::run`]) the collector's synchronous stores call.
//! - [`migrate`]: the schema as embedded, numbered SQL files applied under an advisory lock.
//! - [`lease`]: one compliance engine at a time, with a fencing token.
//! - [`notify`]: `LISTEN`/`NOTIFY` as a counter: another replica committed to the ledger.
//! - [`error`]: failures that say what to fix ([`PgError`]).
//! - `test_support` (feature `test-support`): a real PostgreSQL per test binary, a fresh
//!   database per test, restarts and a TCP proxy that can be cut.
//!
//! It is a crate of its own, not a module of the collector, so that its tests (which start a
//! real server) build and run without the collector, and the later `ledger migrate` tool can
//! use it without the whole collector.

pub mod database;
pub mod dsn;
pub mod error;
pub mod lease;
pub mod migrate;
pub mod notify;
pub mod tls;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use database::{Conn, Database, Options};
pub use dsn::{Dsn, DsnError, RootCerts, SslMode};
pub use error::{CertificateProblem, PgError, Target};
pub use lease::{FencedTransaction, Lease, LeaseConfig, LeaseError};
pub use migrate::{MIGRATIONS, MigrateError, Migration, MigrationReport};
pub use notify::Listener;
pub use tls::TlsSetupError;
