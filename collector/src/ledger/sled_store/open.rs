//! Opening the ledger: sled's files, the checks a start relies on, the format version.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::SledStore;
use super::damage::{DamageScan, guarded};
use super::guard::{GUARD_FILE, GuardState};
use crate::compliance::chain::{self};
use crate::ledger::StoreError;
use crate::ledger::codec::{from_json, to_json};

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
                detail: e.to_string(),
            }
        })?;
        if let Some(first) = damage.first() {
            return Err(StoreError::Damaged {
                dir: dir.to_path_buf(),
                detail: if damage.len() == 1 {
                    first.clone()
                } else {
                    format!("{first} (and {} more)", damage.len() - 1)
                },
            });
        }
        store.check_guard(dir)?;
        // Only a ledger that passed its checks moves the guard (a refused one must stay
        // refused on the next attempt).
        store
            .guard
            .armed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        store.guard.flush(true)?;
        Ok(store)
    }

    /// Opens (or creates) the ledger in `dir` without checking its values, for
    /// `ledger verify`, which reports every damaged value itself ([`SledStore::damage`]).
    pub fn open_unchecked(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // The ledger writer flushes after every commit group; a background flusher
            // would only add fsyncs that make nothing more durable.
            .flush_every_ms(None);
        let db = match guarded(dir, || config.open())? {
            Ok(db) => db,
            Err(sled::Error::Io(e)) if e.to_string().contains("lock") => {
                return Err(StoreError::Storage(format!(
                    "cannot open ledger in {}: {e} (a running collector holds it: stop it, or \
                     ask it with --collector instead of --data-dir)",
                    dir.display()
                )));
            }
            Err(sled::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::NotADirectory
                        | std::io::ErrorKind::AlreadyExists
                        | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Err(StoreError::Storage(format!(
                    "cannot open ledger in {}: {e} (it must be a directory the collector can \
                     read and write: check --data-dir, ownership and permissions)",
                    dir.display()
                )));
            }
            Err(e) => {
                return Err(StoreError::Damaged {
                    dir: dir.to_path_buf(),
                    detail: format!("the storage engine cannot open it ({e})"),
                });
            }
        };
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
            cache: Arc::default(),
            guard: Arc::new(GuardState {
                path: dir.join(GUARD_FILE),
                armed: std::sync::atomic::AtomicBool::new(false),
                written: Mutex::new(None),
                db: db.clone(),
                hwm: db.open_tree("hwm")?,
            }),
            db,
        };
        match store.meta.get("format_version")? {
            None => {
                store
                    .meta
                    .insert("format_version", to_json(&FORMAT_VERSION)?)?;
            }
            Some(v) => {
                let found: u64 =
                    from_json(&v, "format_version").map_err(|e| StoreError::Damaged {
                        dir: dir.to_path_buf(),
                        detail: e.to_string(),
                    })?;
                if found != FORMAT_VERSION {
                    return Err(StoreError::Storage(format!(
                        "ledger format {found} is not the supported {FORMAT_VERSION}"
                    )));
                }
            }
        }
        Ok(store)
    }
}
