//! Opening the ledger: sled's files, the checks a start relies on, the format version.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flopmeter_durable::{Flusher, GuardFile, OpenError};

use super::SledStore;
use super::damage::{DamageScan, guarded};
use super::guard::{GUARD_FILE, GuardState};
use super::{chain, compliance};
use crate::ledger::codec::{from_json, to_json};
use crate::ledger::{LedgerDamage, StoreError};

/// Page cache of offline tools and tests: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Version of the on-disk layout, checked on open.
const FORMAT_VERSION: u64 = 1;

impl SledStore {
    /// Opens (or creates) the ledger in `dir` with sled's default page cache.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the ledger in `dir`, with at most `cache_bytes` of sled page cache
    /// (the collector's resident memory is mostly this cache). A ledger sled cannot open, or
    /// whose meta, high-water marks, aggregates, declarations, registry or rollups do not
    /// decode ([`DamageScan::Startup`]), is refused with [`StoreError::Damaged`].
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let store = Self::open_unchecked(dir, cache_bytes)?;
        let damage = guarded(dir, || store.damage(DamageScan::Startup))?.map_err(|e| {
            StoreError::Damaged {
                dir: dir.to_path_buf(),
                cause: LedgerDamage::Unreadable(Box::new(e)),
            }
        })?;
        if let Some(first) = damage.first() {
            return Err(StoreError::Damaged {
                dir: dir.to_path_buf(),
                cause: LedgerDamage::Values {
                    first: first.clone(),
                    more: damage.len() - 1,
                },
            });
        }
        store.check_guard(dir)?;
        // Only a ledger that passed its checks moves the guard (a refused one must stay
        // refused on the next attempt).
        store.guard.armed.store(true, Ordering::SeqCst);
        store.guard.flush(true)?;
        Ok(store)
    }

    /// Opens (or creates) the ledger in `dir` without checking its values, for
    /// `ledger verify`, which reports every damaged value itself ([`SledStore::damage`]).
    pub fn open_unchecked(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .cache_capacity(cache_bytes)
            // The ledger writer flushes after every commit group; a background flusher
            // would only add fsyncs that make nothing more durable.
            .flush_every_ms(None);
        // A collector holding the ledger does not let go: no waiting for its lock.
        let db = flopmeter_durable::open(dir, config, Duration::ZERO).map_err(|e| match e {
            OpenError::Locked { dir, source } => StoreError::Locked {
                dir,
                source: Box::new(source),
            },
            OpenError::Unusable { dir, source } => StoreError::Unusable { dir, source },
            OpenError::Damaged { dir, cause } => StoreError::Damaged {
                dir,
                cause: LedgerDamage::Engine(Box::new(cause)),
            },
        })?;
        let t = |name: &str| db.open_tree(name);
        let store = SledStore {
            raw: t("raw")?,
            raw_index: t("raw_index")?,
            hwm: t("hwm")?,
            run_agg: t("run_agg")?,
            model_agg: t("model_agg")?,
            unattributed: t("unattributed")?,
            seen: t("seen")?,
            run_meta: t("run_meta")?,
            rejected: t("rejected")?,
            rollups: t("rollups")?,
            models: t("models")?,
            agents: t("agents")?,
            meta: t("meta")?,
            plans: t("plans")?,
            audit_log: t(chain::LOG_TREE)?,
            audit_head: t(chain::HEAD_TREE)?,
            clocks: t(compliance::CLOCKS_TREE)?,
            alerts: t(compliance::ALERTS_TREE)?,
            outbox: t(compliance::OUTBOX_TREE)?,
            compliance_meta: t(compliance::META_TREE)?,
            compliance_write: Arc::default(),
            cache: Arc::default(),
            guard: Arc::new(GuardState {
                file: GuardFile::new(dir, GUARD_FILE, "ledger"),
                armed: AtomicBool::new(false),
                written: Mutex::new(None),
                flusher: Arc::new(Flusher::new(db.clone())),
                hwm: db.open_tree("hwm")?,
            }),
            db,
        };
        match store.meta.get("format_version")? {
            None => {
                store.meta.insert(
                    "format_version",
                    to_json(&FORMAT_VERSION, "format version")?,
                )?;
            }
            Some(v) => {
                let found: u64 =
                    from_json(&v, "format version").map_err(|e| StoreError::Damaged {
                        dir: dir.to_path_buf(),
                        cause: LedgerDamage::Unreadable(Box::new(e)),
                    })?;
                if found != FORMAT_VERSION {
                    return Err(StoreError::FormatVersion {
                        dir: dir.to_path_buf(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_ledger_is_locked_not_damaged_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let _running = SledStore::open(dir.path()).unwrap();
        let e = SledStore::open_unchecked(dir.path(), DEFAULT_CACHE_BYTES).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("ask it with --collector instead of --data-dir"),
            "{e}"
        );
    }

    #[test]
    fn a_ledger_of_another_layout_version_is_refused_untouched_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.meta.insert("format_version", b"2".as_slice()).unwrap();
            s.db.flush().unwrap();
        }
        let e = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::FormatVersion {
                    found: 2,
                    supported: FORMAT_VERSION,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("written by a newer flopmeter"), "{msg}");
        assert!(
            msg.contains("Run the collector version that wrote it"),
            "{msg}"
        );
        drop(e);
        let s = SledStore::open_unchecked(dir.path(), DEFAULT_CACHE_BYTES).unwrap_err();
        assert!(matches!(s, StoreError::FormatVersion { .. }), "{s:?}");
        // (sled's threads of the refused handle may hold its lock a moment longer.)
        let db = flopmeter_durable::open(dir.path(), sled::Config::new(), Duration::from_secs(5))
            .unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("format_version").unwrap().as_deref(),
            Some(b"2".as_slice()),
            "the refusal changed nothing"
        );
    }
}
