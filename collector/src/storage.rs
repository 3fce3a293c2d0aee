//! The storage boundary: the ledger ([`LedgerStore`]) and the compliance engine's state
//! ([`ComplianceStore`]), both implemented by one backend.
//!
//! Why a pair built from one backend ([`Stores::new`]) rather than two stores: registry
//! changes and plans declared in records append to the audit chain in the same transaction
//! as the ledger write, so the chain the engine appends to must be the one the ledger
//! appends to. `Stores::new` takes one value implementing both traits, so the type system
//! rules out a ledger on one backend and an engine on another; each consumer then names only
//! the half it uses (ingest, reports and the console's reads the ledger; the engine both).

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::compliance::store::ComplianceStore;
pub use crate::ledger::LedgerStore;
use crate::ledger::StoreError;
use crate::ledger::sled_store::SledStore;

/// Where the collector keeps its ledger and compliance state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded database in a data directory (sled): one collector process per
    /// directory.
    Embedded {
        /// The directory (`--data-dir`).
        data_dir: PathBuf,
        /// Page cache, bytes (`--ledger-cache-mb`).
        cache_bytes: u64,
    },
}

/// Opens `backend` (blocking: run it off the async runtime), with the checks a start relies
/// on (format version, damage, truncation guard).
pub fn open(backend: &Backend) -> Result<Stores, StoreError> {
    match backend {
        Backend::Embedded {
            data_dir,
            cache_bytes,
        } => Ok(Stores::new(Arc::new(SledStore::open_with_cache(
            data_dir,
            *cache_bytes,
        )?))),
    }
}

/// The two halves of one storage backend.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The ledger.
    pub ledger: Arc<dyn LedgerStore>,
    /// The compliance engine's state, in the same backend.
    pub compliance: Arc<dyn ComplianceStore>,
}

impl Stores {
    /// Both halves of `backend`.
    pub fn new<S: LedgerStore + ComplianceStore + 'static>(backend: Arc<S>) -> Stores {
        Stores {
            ledger: backend.clone(),
            compliance: backend,
        }
    }
}
