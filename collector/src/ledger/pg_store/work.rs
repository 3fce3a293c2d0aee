//! Running a unit of work on the database, and what its failure means for the writer.
//!
//! Every store method is one unit of work on a pooled connection ([`Database::run`]): one
//! query for a read, one transaction for a write. A write that fails is one of three things,
//! and the store says which, because the collector acts differently on each:
//! - **rolled back**: it failed before its COMMIT was sent, or the server refused the COMMIT
//!   with an error of its own. Nothing of it is stored, so nothing is lost and nothing was
//!   promised: [`StoreError::Database`] (not a write failure; the agent is not acknowledged
//!   and resends, and the collector carries on when the database is back). A connection
//!   blip therefore costs one round of resends, not a restart.
//! - **outcome unknown**: the COMMIT was sent and no answer came (the connection broke, or
//!   the unit's time ran out). It may have committed. It is a write failure
//!   ([`StoreError::Storage`]): the writer acknowledges nothing until restart, as for a
//!   failed flush. (The high-water mark would make a resend harmless either way; treating it
//!   as a failure is the conservative reading of the storage contract.)
//! - **the store's own error** (a value that does not decode, a moved clock start): the
//!   work returned it before COMMIT, so it rolled back too, and it is returned as it is.
//!
//! Serialization failures and deadlocks (SQLSTATE 40001, 40P01) and a unique violation
//! (23505: another replica inserted a row this transaction found missing, such as a run's
//! first plan version) roll back and are retried, the whole unit, a few times.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flopmeter_pg::{Conn, Database, PgError};

use crate::compliance::store::ComplianceStoreError;
use crate::ledger::{Malformed, StoreError};

/// How often a unit that hit a serialization failure, a deadlock or a lost insert race is
/// tried in all.
const ATTEMPTS: usize = 6;

/// How a unit of work failed (see the module docs).
#[derive(Debug)]
pub(super) enum TxError<E> {
    /// Nothing was committed.
    RolledBack(PgError),
    /// The COMMIT was sent and its outcome is unknown.
    Unknown(PgError),
    /// The store's own error; nothing was committed.
    Store(E),
}

impl<E> From<PgError> for TxError<E> {
    fn from(e: PgError) -> Self {
        TxError::RolledBack(e)
    }
}

impl<E> From<tokio_postgres::Error> for TxError<E> {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::RolledBack(e.into())
    }
}

impl From<StoreError> for TxError<StoreError> {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<ComplianceStoreError> for TxError<ComplianceStoreError> {
    fn from(e: ComplianceStoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<crate::compliance::chain::ChainError> for TxError<StoreError> {
    fn from(e: crate::compliance::chain::ChainError) -> Self {
        TxError::Store(e.into())
    }
}

impl From<crate::compliance::chain::ChainError> for TxError<ComplianceStoreError> {
    fn from(e: crate::compliance::chain::ChainError) -> Self {
        TxError::Store(e.into())
    }
}

impl<E> TxError<E> {
    fn retryable(&self) -> bool {
        matches!(self, TxError::RolledBack(PgError::Statement { code: Some(c), .. })
            if c == "40001" || c == "40P01" || c == "23505")
    }
}

impl From<TxError<StoreError>> for StoreError {
    fn from(e: TxError<StoreError>) -> Self {
        match e {
            TxError::RolledBack(pg) => StoreError::Database(std::sync::Arc::new(pg)),
            TxError::Unknown(pg) => StoreError::Storage(Box::new(pg)),
            TxError::Store(e) => e,
        }
    }
}

impl From<TxError<ComplianceStoreError>> for ComplianceStoreError {
    fn from(e: TxError<ComplianceStoreError>) -> Self {
        match e {
            TxError::RolledBack(pg) => ComplianceStoreError::Database(Box::new(pg)),
            TxError::Unknown(pg) => ComplianceStoreError::Storage(Box::new(pg)),
            TxError::Store(e) => e,
        }
    }
}

/// Set just before a unit sends its COMMIT: a timeout after it leaves the outcome unknown.
#[derive(Debug, Clone, Default)]
pub(super) struct CommitSent(Arc<AtomicBool>);

impl CommitSent {
    /// Marks the COMMIT as sent.
    pub(super) fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn sent(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The failure of a COMMIT: refused by the server (it answered with an SQLSTATE: rolled
/// back), or unanswered (unknown).
pub(super) fn commit_failure<E>(e: PgError) -> TxError<E> {
    match e {
        PgError::Statement { code: Some(_), .. } => TxError::RolledBack(e),
        other => TxError::Unknown(other),
    }
}

/// Runs `work` on a pooled connection, retrying it whole on a serialization failure, a
/// deadlock or a lost insert race. `work` is called once per attempt.
pub(super) fn run<T, E, F, Fut>(db: &Database, work: F) -> Result<T, TxError<E>>
where
    F: Fn(Conn, CommitSent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, TxError<E>>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let work = Arc::new(work);
    let mut attempt = 1;
    loop {
        let sent = CommitSent::default();
        let (w, s) = (work.clone(), sent.clone());
        let out = db.run(move |conn| w(conn, s));
        match out {
            Err(e) if e.retryable() && attempt < ATTEMPTS => {
                attempt += 1;
                // A short, growing pause lets the transaction it collided with finish.
                std::thread::sleep(std::time::Duration::from_millis(2 << attempt));
            }
            Err(TxError::RolledBack(e @ PgError::Timeout { .. })) if sent.sent() => {
                return Err(TxError::Unknown(e));
            }
            other => return other,
        }
    }
}

/// A sequence number (or any u64) as PostgreSQL's NUMERIC(20,0) reads it.
pub(super) fn num(v: impl Into<u128>) -> String {
    v.into().to_string()
}

/// A NUMERIC(20,0) read as text back into a u64.
pub(super) fn parse_u64(s: &str, what: &'static str) -> Result<u64, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what,
        source: Malformed::Shape("a stored sequence number is not a whole number within u64"),
    })
}
