//! A real PostgreSQL for tests (feature `test-support`, never in a product build).
//!
//! - [`shared`] starts one server **per test binary**, on first use: `initdb` into a
//!   temporary directory (as the `postgres` OS user when the tests run as root, since initdb
//!   refuses root), the server on a Unix socket in that directory and on a loopback TCP port
//!   with TLS (a certificate from flopmeter's development CA, naming `localhost` only).
//!   A watchdog process stops it and deletes the directory when the test binary exits, however
//!   it exits (the harness never drops statics; a SIGKILL runs no destructor).
//! - [`Server::fresh_database`] gives each test a database of its own.
//! - [`Server::start`] starts a private server, for tests that stop or restart it
//!   ([`Server::stop`], [`Server::start_again`], [`Server::restart`]) without disturbing the
//!   tests that share the other one. It is stopped when dropped (and by its watchdog).
//! - [`CutProxy`] stands between one client and the server and can cut and restore the
//!   connection, as a network partition does.
//!
//! Functions here panic with a message instead of returning errors: they are test fixtures,
//! and a fixture that cannot start must stop the test loudly.

mod proxy;
mod server;

pub use proxy::CutProxy;
pub use server::{SUPERUSER, SUPERUSER_PASSWORD, Server, TestDatabase, shared};
