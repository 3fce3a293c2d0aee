//! flopmeter-pg against a real PostgreSQL (Debian's `postgresql`, started once for this test
//! binary by `flopmeter_pg::test_support::shared`; each test has a database of its own).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod bridge;
mod connect;
mod harness;
mod lease;
mod migrate;
mod notify;

use std::time::{Duration, Instant};

use flopmeter_pg::test_support::TestDatabase;
use flopmeter_pg::{Database, Dsn, Options};

/// A fresh database on the shared server.
fn fresh() -> TestDatabase {
    flopmeter_pg::test_support::shared().fresh_database()
}

/// Options for a DSN, with short limits so a failing test fails quickly.
fn options(dsn: &str) -> Options {
    let mut o = Options::new(Dsn::parse(dsn).expect("test DSN parses"));
    o.connect_timeout = Duration::from_secs(5);
    o.run_timeout = Duration::from_secs(20);
    o
}

/// Connects over the Unix socket.
fn connect(db: &TestDatabase) -> Database {
    Database::connect(options(&db.socket_dsn())).expect("connect over the socket")
}

/// Polls `cond` until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
