//! The embedded ledger store on sled 0.34.
//!
//! One sled database per collector (sled allows one process per database, so offline tools
//! such as `flopmeter ledger verify --data-dir` need the collector stopped). Trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raw` | agent \0 first-seq | [`StoredBatch`] (protobuf) |
//! | `raw_index` | last-event-ms ‖ raw key | empty: finds batches past retention |
//! | `hwm` | agent | u64 BE high-water mark |
//! | `run_agg` | model \0 run | [`Aggregate`] (JSON) |
//! | `model_agg` | model | [`Aggregate`] |
//! | `unattributed` | node \0 gpu-type \0 day | [`Aggregate`] |
//! | `seen` | tag ‖ model \0 [run \0] agent-or-node | empty |
//! | `run_meta` | model \0 run | [`Declaration`] (JSON) |
//! | `rejected` | agent \0 seq | [`StoredRejection`] (protobuf) |
//! | `rollups` | scope \0 ... \0 hour | [`Rollup`] (JSON) |
//! | `models` | model | [`ModelEntry`] (JSON) |
//! | `plans` | model \0 registry, or model \0 run \0 run-id | [`PlanHistory`] (JSON) |
//! | `agents` | agent | [`AgentInfo`] (JSON) |
//! | `meta` | name | JSON (format version, stage policy) |
//!
//! A batch is applied in one sled multi-tree transaction over every tree it touches, the
//! high-water mark included: after a crash either all of a batch is there or none of it.
//!
//! Facts for the audit chain are appended in the transaction that makes them true: a
//! registry change ([`LedgerStore::set_model_entry`]) and a plan version declared in a
//! batch's records are written with their audit entries to the compliance engine's
//! `audit_log` and `audit_head` trees ([`crate::compliance::chain`]), which live in the same
//! database.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1::IntervalRecord;
use prost::Message as _;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::aggregate::{Aggregate, Attribution, attribution, gpu_type_of};
use super::codec::{
    AgentInfo, Declaration, Rollup, StoredBatch, StoredRejection, from_json, from_proto, to_json,
};
use super::keys::{self, DAY_MS, HOUR_MS, ROLLUP_RUN, ROLLUP_UNATTRIBUTED, Seen};
use super::plans::{PlanHistory, PlanScope, PlanSource, PlanVersion, Recorded};
use super::sequence::{self, SeqPlan};
use super::verify::{VerifyCut, VerifyReport, VerifyScan, compare};
use super::{
    ApplyOutcome, IncomingBatch, LedgerStore, ModelEntry, RejectedEntry, RejectionNotice,
    RollupStats, RunEntry, StoreError, UnattributedBucket,
};
use crate::compliance::chain::{self, AuditRecord};
use flopmeter_core::audit::{AuditKind, to_json as audit_json};

/// Page cache of offline tools and tests: 256 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Version of the on-disk layout, checked on open.
const FORMAT_VERSION: u64 = 1;

/// The truncation guard's file in the data directory. sled opens a truncated or partly
/// overwritten log as whatever prefix it can read, silently: a ledger that lost its recent
/// writes, or all of them, would serve smaller totals without a word. The guard remembers
/// how far the high-water marks had got (they only grow), and a ledger behind it is refused.
pub const GUARD_FILE: &str = "flopmeter-ledger-guard";

/// How often, at most, a flush rewrites the guard.
const GUARD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The guard's file and what it is computed from.
#[derive(Debug)]
struct GuardState {
    path: std::path::PathBuf,
    /// Set once the ledger passed its checks at open; until then nothing is written.
    armed: std::sync::atomic::AtomicBool,
    written: Mutex<Option<std::time::Instant>>,
    db: sled::Db,
    hwm: sled::Tree,
}

impl GuardState {
    /// What the guard records now: the high-water marks only ever grow.
    fn now(&self) -> Result<Guard, StoreError> {
        let mut g = Guard::default();
        for v in self.hwm.iter().values() {
            g.agents += 1;
            g.high_water_sum += u128::from(decode_u64(&v?)?);
        }
        Ok(g)
    }

    /// Flushes sled and moves the guard, at most every [`GUARD_EVERY`] unless `force`. The
    /// high-water marks are read *before* the flush, so everything the guard counts is
    /// durable when it is written, whichever thread flushes and whatever is applied
    /// meanwhile: the guard is never ahead of the disk. A guard failure only weakens the
    /// check: logged.
    fn flush(&self, force: bool) -> Result<(), sled::Error> {
        let due = self.armed.load(std::sync::atomic::Ordering::SeqCst) && {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let due = force || written.is_none_or(|t| t.elapsed() >= GUARD_EVERY);
            if due {
                *written = Some(std::time::Instant::now());
            }
            due
        };
        let snapshot = due.then(|| self.now());
        self.db.flush()?;
        let r = match snapshot {
            None => return Ok(()),
            Some(g) => g
                .map_err(|e| e.to_string())
                .and_then(|g| g.write(&self.path).map_err(|e| e.to_string())),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot update the ledger's truncation guard");
        }
        Ok(())
    }
}

impl Drop for GuardState {
    fn drop(&mut self) {
        // The last handle on the ledger: what is flushed now is what the next open must find.
        let _ = self.flush(true);
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Guard {
    agents: u64,
    high_water_sum: u128,
}

impl Guard {
    fn read(path: &Path) -> Option<Guard> {
        let text = std::fs::read_to_string(path).ok()?;
        let (a, s) = text.trim().split_once(' ')?;
        Some(Guard {
            agents: a.parse().ok()?,
            high_water_sum: s.parse().ok()?,
        })
    }

    /// Temporary file, fsync, rename: a torn write leaves the old value.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {}", self.agents, self.high_water_sum)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// How much [`SledStore::damage`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageScan {
    /// Every tree except the raw batches and quarantined records (the bulk of the ledger,
    /// read only by rollups, `verify` and evidence).
    Startup,
    /// Every tree.
    Full,
}

/// Runs sled work that may panic on damaged files (sled 0.34 asserts on some corrupt pages)
/// and turns a panic into [`StoreError::Damaged`].
fn guarded<T>(dir: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        StoreError::Damaged {
            dir: dir.to_path_buf(),
            detail: format!("the storage engine failed reading it ({what})"),
        }
    })
}

/// The sled-backed [`LedgerStore`].
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    raw: sled::Tree,
    raw_index: sled::Tree,
    hwm: sled::Tree,
    run_agg: sled::Tree,
    model_agg: sled::Tree,
    unattributed: sled::Tree,
    seen: sled::Tree,
    run_meta: sled::Tree,
    rejected: sled::Tree,
    rollups: sled::Tree,
    models: sled::Tree,
    agents: sled::Tree,
    meta: sled::Tree,
    plans: sled::Tree,
    audit_log: sled::Tree,
    audit_head: sled::Tree,
    cache: Arc<Mutex<Cache>>,
    /// The truncation guard (see [`GUARD_FILE`]); the last clone dropped writes it.
    guard: Arc<GuardState>,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(r: Result<T, StoreError>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

fn decode_u64(v: &[u8]) -> Result<u64, StoreError> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("high-water mark is not 8 bytes".into()))
}

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

    /// Refuses a ledger behind its truncation guard ([`GUARD_FILE`]) with
    /// [`StoreError::Damaged`].
    pub fn check_guard(&self, dir: &Path) -> Result<(), StoreError> {
        let guard = &self.guard.path;
        if let Some(had) = Guard::read(guard) {
            let now = guarded(dir, || self.guard.now())??;
            if now.high_water_sum < had.high_water_sum || now.agents < had.agents {
                return Err(StoreError::Damaged {
                    dir: dir.to_path_buf(),
                    detail: format!(
                        "its high-water marks sum to {} over {} agent(s), but had reached {} \
                         over {} ({GUARD_FILE}): its files were truncated or replaced by an \
                         older copy, so records acknowledged to agents are missing (if you \
                         restored sled's files from a backup on purpose, delete {} to accept \
                         them)",
                        now.high_water_sum,
                        now.agents,
                        had.high_water_sum,
                        had.agents,
                        guard.display()
                    ),
                });
            }
        }
        Ok(())
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

    /// Every stored value that does not decode as its tree's type, one line each
    /// (`tree key: error`). `Startup` reads what a start and every write rely on; `Full` adds
    /// the raw batches and quarantined records.
    pub fn damage(&self, scan: DamageScan) -> Result<Vec<String>, StoreError> {
        fn json<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<(), String> {
            serde_json::from_slice::<T>(v)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        fn proto<T: prost::Message + Default>(v: &[u8]) -> Result<(), String> {
            T::decode(v).map(drop).map_err(|e| e.to_string())
        }
        fn u64_be(v: &[u8]) -> Result<(), String> {
            <[u8; 8]>::try_from(v)
                .map(drop)
                .map_err(|_| format!("{} bytes where a u64 (8 bytes) belongs", v.len()))
        }
        fn meta(k: &[u8], v: &[u8]) -> Result<(), String> {
            match k {
                b"format_version" => json::<u64>(v),
                b"stage_policy" => json::<StagePolicy>(v),
                _ => Ok(()),
            }
        }
        type Check = fn(&[u8], &[u8]) -> Result<(), String>;
        let mut checks: Vec<(&str, &sled::Tree, Check)> = vec![
            ("meta", &self.meta, meta),
            ("hwm", &self.hwm, |_, v| u64_be(v)),
            ("run_agg", &self.run_agg, |_, v| json::<Aggregate>(v)),
            ("model_agg", &self.model_agg, |_, v| json::<Aggregate>(v)),
            ("unattributed", &self.unattributed, |_, v| {
                json::<Aggregate>(v)
            }),
            ("run_meta", &self.run_meta, |_, v| json::<Declaration>(v)),
            ("rollups", &self.rollups, |_, v| json::<Rollup>(v)),
            ("models", &self.models, |_, v| json::<ModelEntry>(v)),
            ("plans", &self.plans, |_, v| json::<PlanHistory>(v)),
            ("agents", &self.agents, |_, v| json::<AgentInfo>(v)),
        ];
        if scan == DamageScan::Full {
            checks.push(("raw", &self.raw, |_, v| proto::<StoredBatch>(v)));
            checks.push(("rejected", &self.rejected, |_, v| {
                proto::<StoredRejection>(v)
            }));
        }
        let mut out = Vec::new();
        for (name, tree, check) in checks {
            for kv in tree.iter() {
                let (k, v) = kv?;
                if let Err(e) = check(&k, &v) {
                    let key: String = String::from_utf8_lossy(&k)
                        .replace('\0', "/")
                        .chars()
                        .take(120)
                        .collect();
                    out.push(format!("{name} value at key {key:?} does not decode: {e}"));
                }
            }
        }
        Ok(out)
    }

    /// The underlying sled database, for repair tools and tests (e.g. tampering with an
    /// aggregate to prove that `verify` notices).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        tree: &sled::Tree,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| from_json(&v, what)).transpose()
    }

    #[allow(clippy::type_complexity)]
    fn batch_trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        (
            &self.raw,
            &self.raw_index,
            &self.hwm,
            &self.run_agg,
            &self.model_agg,
            &self.unattributed,
            &self.seen,
            &self.run_meta,
            &self.rejected,
            &self.plans,
            &self.audit_log,
            &self.audit_head,
        )
    }

    /// Applies batches in one transaction and, once it committed, remembers what it wrote.
    fn run_group(
        &self,
        batches: &[(&IncomingBatch, &[u64])],
    ) -> Result<Vec<ApplyOutcome>, TransactionError<StoreError>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (outs, working) = self.batch_trees().transaction(|t| {
            let mut w = Working::default();
            let mut outs = Vec::with_capacity(batches.len());
            for (b, seqs) in batches {
                outs.push(apply_in_tx(t, b, seqs, &mut w, &cache)?);
            }
            w.write(t)?;
            Ok((outs, w))
        })?;
        cache.absorb(working);
        Ok(outs)
    }

    /// Resent records: tells the agent again about those quarantined earlier, in case the
    /// Ack that carried them was lost.
    fn with_earlier_rejections(
        &self,
        b: &IncomingBatch,
        seqs: &[u64],
        mut outcome: ApplyOutcome,
    ) -> Result<ApplyOutcome, StoreError> {
        if outcome.duplicates > 0 {
            let last_dup = seqs[outcome.duplicates - 1];
            let mut earlier = self.earlier_rejections(&b.agent_id, seqs[0], last_dup)?;
            earlier.append(&mut outcome.rejections);
            outcome.rejections = earlier;
        }
        Ok(outcome)
    }

    /// Rejections already quarantined for `agent` in `first..=last` (resent records).
    fn earlier_rejections(
        &self,
        agent: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<RejectionNotice>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .rejected
            .range(keys::agent_seq(agent, first)..=keys::agent_seq(agent, last))
        {
            let (k, v) = kv?;
            let r: StoredRejection = from_proto(&v, "rejected record")?;
            let seq = keys::split_agent_seq(&k).map_or(0, |(_, s)| s);
            out.push(RejectionNotice {
                seq,
                reason: r.reason,
                detail: r.detail,
            });
        }
        Ok(out)
    }
}

/// Reads, changes and writes back one JSON value inside a transaction.
fn update_json<T, F>(tree: &TransactionalTree, key: &[u8], what: &str, f: F) -> TxResult<()>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
    F: FnOnce(&mut T),
{
    let mut v: T = match tree.get(key)? {
        Some(b) => abort(from_json(&b, what))?,
        None => T::default(),
    };
    f(&mut v);
    tree.insert(key, abort(to_json(&v))?)?;
    Ok(())
}

/// Which aggregate tree a cached value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AggTree {
    Run,
    Model,
    Unattributed,
}

/// Decoded values known to be committed, so that a batch does not decode an aggregate or
/// probe a `seen` entry the previous batches already touched. Only the writer uses it,
/// and only after its transaction committed; it is dropped with the store (a restarted
/// collector starts cold).
#[derive(Debug, Default)]
struct Cache {
    aggregates: HashMap<(AggTree, Vec<u8>), Aggregate>,
    hwms: HashMap<String, u64>,
    seen: HashSet<Vec<u8>>,
}

/// Beyond this many entries a cache is emptied rather than grown. The hot set is the runs,
/// models and agents reporting now; a ledger with many more (100,000 one-record models) must
/// not keep each decoded aggregate for ever (about 1 KiB each).
const CACHE_LIMIT: usize = 8_192;

impl Cache {
    fn absorb(&mut self, w: Working) {
        if self.aggregates.len() + w.aggregates.len() > CACHE_LIMIT {
            self.aggregates.clear();
        }
        if self.seen.len() + w.seen.len() > CACHE_LIMIT * 4 {
            self.seen.clear();
        }
        if self.hwms.len() + w.hwms.len() > CACHE_LIMIT {
            self.hwms.clear();
        }
        self.aggregates.extend(w.aggregates);
        self.hwms.extend(w.hwms);
        self.seen.extend(w.seen);
    }
}

/// What one transaction changes, kept decoded and written once at its end: a group of
/// batches touching the same run encodes its aggregate once, not once per batch.
#[derive(Debug, Default)]
struct Working {
    aggregates: HashMap<(AggTree, Vec<u8>), Aggregate>,
    hwms: HashMap<String, u64>,
    seen: HashSet<Vec<u8>>,
}

impl Working {
    fn hwm(&mut self, tree: &TransactionalTree, cache: &Cache, agent: &str) -> TxResult<u64> {
        if let Some(&h) = self.hwms.get(agent).or_else(|| cache.hwms.get(agent)) {
            return Ok(h);
        }
        Ok(match tree.get(agent.as_bytes())? {
            Some(v) => abort(decode_u64(&v))?,
            None => 0,
        })
    }

    /// True when `key` is a new `seen` entry (and inserts it).
    fn see(&mut self, tree: &TransactionalTree, cache: &Cache, key: Vec<u8>) -> TxResult<bool> {
        if self.seen.contains(&key) || cache.seen.contains(&key) {
            return Ok(false);
        }
        let new = tree.get(&key)?.is_none();
        if new {
            tree.insert(key.clone(), &[][..])?;
        }
        self.seen.insert(key);
        Ok(new)
    }

    fn aggregate(
        &mut self,
        which: AggTree,
        tree: &TransactionalTree,
        cache: &Cache,
        key: Vec<u8>,
    ) -> TxResult<&mut Aggregate> {
        let k = (which, key);
        if !self.aggregates.contains_key(&k) {
            let a = match cache.aggregates.get(&k) {
                Some(a) => a.clone(),
                None => match tree.get(&k.1)? {
                    Some(v) => abort(from_json(&v, "aggregate"))?,
                    None => Aggregate::default(),
                },
            };
            self.aggregates.insert(k.clone(), a);
        }
        Ok(self.aggregates.get_mut(&k).expect("inserted above"))
    }

    /// Writes the changed aggregates and high-water marks.
    fn write(&self, t: &BatchTrees) -> TxResult<()> {
        let (_, _, hwm_t, run_agg, model_agg, unatt, ..) = t;
        for ((which, key), a) in &self.aggregates {
            let tree = match which {
                AggTree::Run => run_agg,
                AggTree::Model => model_agg,
                AggTree::Unattributed => unatt,
            };
            tree.insert(key.as_slice(), abort(to_json(a))?)?;
        }
        for (agent, h) in &self.hwms {
            hwm_t.insert(agent.as_bytes(), &h.to_be_bytes())?;
        }
        Ok(())
    }
}

/// Encodes a [`StoredBatch`] from borrowed records (no copies of the records).
fn encode_stored_batch(
    agent: &str,
    node: &str,
    received: i64,
    records: &[&IntervalRecord],
) -> Vec<u8> {
    use prost::encoding::{int64, message, string};
    let (agent, node) = (agent.to_string(), node.to_string());
    let len =
        records.iter().map(|r| r.encoded_len() + 4).sum::<usize>() + agent.len() + node.len() + 16;
    let mut buf = Vec::with_capacity(len);
    string::encode(1, &agent, &mut buf);
    string::encode(2, &node, &mut buf);
    int64::encode(3, &received, &mut buf);
    for r in records {
        message::encode(4, *r, &mut buf);
    }
    buf
}

/// The trees a batch touches, inside a transaction.
type BatchTrees = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// Checks what the ledger's keys need of a batch before any transaction.
fn check_batch(b: &IncomingBatch) -> Result<Vec<u64>, StoreError> {
    let seqs: Vec<u64> = b.records.iter().map(|r| r.record.seq).collect();
    if !sequence::well_formed(&seqs) {
        return Err(StoreError::Invalid(
            "sequence numbers must start above 0 and strictly increase".into(),
        ));
    }
    if b.agent_id.is_empty() || b.agent_id.contains('\0') || b.node.contains('\0') {
        return Err(StoreError::Invalid("bad agent id or node name".into()));
    }
    Ok(seqs)
}

/// Applies one batch inside a transaction: reads the high-water mark, plans, writes
/// everything the batch moves and the new mark.
fn apply_in_tx(
    t: &BatchTrees,
    b: &IncomingBatch,
    seqs: &[u64],
    w: &mut Working,
    cache: &Cache,
) -> TxResult<ApplyOutcome> {
    let (
        raw,
        raw_index,
        hwm_t,
        run_agg,
        model_agg,
        unatt,
        seen,
        run_meta,
        rejected,
        plans_t,
        audit_log,
        audit_head,
    ) = t;
    let agent = b.agent_id.as_str();
    let node = b.node.as_str();
    let hwm = w.hwm(hwm_t, cache, agent)?;
    let (start, end, gap_at) = match sequence::plan(hwm, seqs) {
        SeqPlan::Duplicate => {
            return Ok(ApplyOutcome {
                acked_through: hwm,
                duplicates: seqs.len(),
                ..ApplyOutcome::default()
            });
        }
        SeqPlan::Gap { expected } => {
            return Ok(ApplyOutcome {
                acked_through: hwm,
                duplicates: seqs.iter().filter(|&&s| s <= hwm).count(),
                resend_from: Some(expected),
                ..ApplyOutcome::default()
            });
        }
        SeqPlan::Apply { start, end, gap_at } => (start, end, gap_at),
    };
    let mut out = ApplyOutcome {
        duplicates: start,
        resend_from: gap_at,
        ..ApplyOutcome::default()
    };
    let mut run_delta: BTreeMap<(&str, &str), Aggregate> = BTreeMap::new();
    let mut model_delta: BTreeMap<&str, Aggregate> = BTreeMap::new();
    let mut unatt_delta: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    let mut decls = BTreeMap::new();
    let mut statements: BTreeMap<(&str, &str), Vec<PlanStatement<'_>>> = BTreeMap::new();
    let mut good: Vec<&IntervalRecord> = Vec::with_capacity(end - start);
    let mut last_event = 0i64;
    for cr in &b.records[start..end] {
        let rec = &cr.record;
        if let Some(rej) = &cr.rejection {
            let stored = StoredRejection {
                reason: rej.reason.clone(),
                detail: rej.detail.clone(),
                node: node.to_string(),
                received_unix_ms: b.received_unix_ms,
                record: Some(rec.clone()),
            };
            rejected.insert(keys::agent_seq(agent, rec.seq), stored.encode_to_vec())?;
            out.rejections.push(RejectionNotice {
                seq: rec.seq,
                reason: rej.reason.clone(),
                detail: rej.detail.clone(),
            });
            out.newly_rejected += 1;
            continue;
        }
        out.applied += 1;
        last_event = last_event.max(rec.end_unix_ms);
        match attribution(rec) {
            Attribution::Run { model, run } => {
                run_delta.entry((model, run)).or_default().add_record(rec);
                model_delta.entry(model).or_default().add_record(rec);
                if let Some(d) = &cr.declaration {
                    decls.insert((model, run), d);
                    PlanStatement::push(statements.entry((model, run)).or_default(), d, rec);
                }
            }
            Attribution::Unattributed => {
                let day = rec.start_unix_ms.div_euclid(DAY_MS);
                let key = keys::with_bucket(&[node, gpu_type_of(rec)], day);
                unatt_delta.entry(key).or_default().add_record(rec);
            }
        }
        good.push(rec);
    }
    // Distinct agents and nodes: the `seen` entries and the counts they
    // bump move in this same transaction.
    for ((model, run), d) in &mut run_delta {
        d.agents += u64::from(w.see(seen, cache, Seen::RunAgent.key(&[model, run, agent]))?);
        d.nodes += u64::from(w.see(seen, cache, Seen::RunNode.key(&[model, run, node]))?);
    }
    for (model, d) in &mut model_delta {
        d.agents += u64::from(w.see(seen, cache, Seen::ModelAgent.key(&[model, agent]))?);
        d.nodes += u64::from(w.see(seen, cache, Seen::ModelNode.key(&[model, node]))?);
    }
    for ((model, run), d) in &run_delta {
        let a = w.aggregate(AggTree::Run, run_agg, cache, keys::join(&[model, run]))?;
        a.merge_stages(d);
        a.agents += d.agents;
        a.nodes += d.nodes;
    }
    for (model, d) in &model_delta {
        let a = w.aggregate(AggTree::Model, model_agg, cache, model.as_bytes().to_vec())?;
        a.merge_stages(d);
        a.agents += d.agents;
        a.nodes += d.nodes;
    }
    for (key, d) in unatt_delta {
        w.aggregate(AggTree::Unattributed, unatt, cache, key)?
            .merge_stages(&d);
    }
    // Parsed at the door (`CheckedRecord::new`): nothing here costs more than a lookup.
    for ((model, run), decl) in decls {
        if decl.is_empty() {
            continue;
        }
        let key = keys::join(&[model, run]);
        let unchanged = match run_meta.get(&key)? {
            Some(v) => abort(from_json::<Declaration>(&v, "declaration"))? == *decl,
            None => false,
        };
        if !unchanged {
            run_meta.insert(key, abort(to_json(decl))?)?;
        }
    }
    let mut facts = Vec::new();
    for ((model, run), said) in statements {
        let key = PlanScope::Run(run.to_string()).key(model);
        let mut history: PlanHistory = match plans_t.get(&key)? {
            Some(v) => abort(from_json(&v, "plan history"))?,
            None => PlanHistory::default(),
        };
        let mut changed = false;
        for st in said {
            let Some(v) = st.version(agent, node, b.received_unix_ms) else {
                continue;
            };
            match history.record(v.clone()) {
                Recorded::Added => {
                    changed = true;
                    out.plans_declared += 1;
                    facts.push(plan_fact(model, run, &v, b.received_unix_ms)?);
                }
                Recorded::Unchanged => {}
                Recorded::Full => tracing::warn!(
                    model,
                    run,
                    agent,
                    "run declares more than {} plan versions: further ones are not recorded",
                    super::plans::MAX_VERSIONS
                ),
            }
        }
        if changed {
            plans_t.insert(key, abort(to_json(&history))?)?;
        }
    }
    chain::append(audit_log, audit_head, &facts, StoreError::Corrupt)?;
    let first_seq = seqs[start];
    let last_seq = seqs[end - 1];
    if !good.is_empty() {
        let raw_key = keys::agent_seq(agent, first_seq);
        let mut index_key = (last_event.max(0) as u64).to_be_bytes().to_vec();
        index_key.extend_from_slice(&raw_key);
        raw.insert(
            raw_key,
            encode_stored_batch(agent, node, b.received_unix_ms, &good),
        )?;
        raw_index.insert(index_key, &[][..])?;
    }
    w.hwms.insert(agent.to_string(), last_seq);
    out.acked_through = last_seq;
    Ok(out)
}

/// A run's records declaring a plan: one per change of the declared figures within a batch,
/// in record order (a run sends the same declaration with every record, so consecutive
/// equal ones are one statement). The figures were parsed at the door (`CheckedRecord::new`):
/// nothing is parsed here, inside the transaction.
struct PlanStatement<'a> {
    decl: &'a Declaration,
    rec: &'a IntervalRecord,
}

impl<'a> PlanStatement<'a> {
    fn figures(d: &Declaration) -> (Option<u128>, Option<u128>, Option<u128>) {
        (d.planned_flop, d.params, d.tokens)
    }

    fn push(run: &mut Vec<PlanStatement<'a>>, d: &'a Declaration, rec: &'a IntervalRecord) {
        let figures = Self::figures(d);
        // Silence is not a withdrawal: a record without plan figures says nothing about one.
        let states_a_plan = figures != (None, None, None);
        if states_a_plan && run.last().is_none_or(|p| Self::figures(p.decl) != figures) {
            run.push(PlanStatement { decl: d, rec });
        }
    }

    /// The version it states, dated at the event time of its record (the moment the job
    /// ran with it), never after the collector received it.
    fn version(&self, agent: &str, node: &str, received_unix_ms: i64) -> Option<PlanVersion> {
        let d = self.decl;
        if Self::figures(d) == (None, None, None) {
            return None;
        }
        Some(PlanVersion {
            planned_flop: d.planned_flop,
            params: d.params,
            tokens: d.tokens,
            declared_at_ms: self.rec.start_unix_ms.min(received_unix_ms),
            recorded_at_ms: received_unix_ms,
            by: PlanSource::Agent {
                agent_id: agent.to_string(),
                node: node.to_string(),
                seq: self.rec.seq,
            },
        })
    }
}

/// The audit record of a plan version declared in records.
fn plan_fact(model: &str, run: &str, v: &PlanVersion, received: i64) -> TxResult<AuditRecord> {
    #[derive(serde::Serialize)]
    struct PlanDeclared<'a> {
        model: &'a str,
        run: &'a str,
        version: &'a PlanVersion,
    }
    let actor = match &v.by {
        PlanSource::Agent { agent_id, .. } => format!("agent:{agent_id}"),
        PlanSource::Registry { actor } => actor.clone(),
    };
    Ok(AuditRecord {
        time_ms: received,
        actor,
        kind: AuditKind::PlanDeclared,
        payload: abort(
            audit_json(&PlanDeclared {
                model,
                run,
                version: v,
            })
            .map_err(|e| StoreError::Corrupt(format!("plan audit payload: {e}"))),
        )?,
    })
}

impl LedgerStore for SledStore {
    fn high_water_mark(&self, agent_id: &str) -> Result<u64, StoreError> {
        self.hwm
            .get(agent_id.as_bytes())?
            .map_or(Ok(0), |v| decode_u64(&v))
    }

    fn high_water_marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.hwm
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode_u64(&v)?))
            })
            .collect()
    }

    fn recent_records(
        &self,
        agent_id: &str,
        max_batches: usize,
    ) -> Result<(Vec<IntervalRecord>, bool), StoreError> {
        let mut batches = Vec::new();
        let mut truncated = false;
        for kv in self.raw.scan_prefix(keys::prefix(&[agent_id])).rev() {
            if batches.len() == max_batches {
                truncated = true;
                break;
            }
            let (_, v) = kv?;
            batches.push(from_proto::<StoredBatch>(&v, "raw batch")?.records);
        }
        Ok((batches.into_iter().rev().flatten().collect(), truncated))
    }

    fn apply_batch(&self, b: &IncomingBatch) -> Result<ApplyOutcome, StoreError> {
        let seqs = check_batch(b)?;
        let mut outs = self.run_group(&[(b, &seqs)]).map_err(tx_error)?;
        let out = outs.pop().expect("one batch, one outcome");
        self.with_earlier_rejections(b, &seqs, out)
    }

    fn apply_group(&self, batches: &[&IncomingBatch]) -> Vec<Result<ApplyOutcome, StoreError>> {
        let checked: Vec<Result<Vec<u64>, StoreError>> =
            batches.iter().map(|b| check_batch(b)).collect();
        let valid: Vec<(&IncomingBatch, &[u64])> = batches
            .iter()
            .zip(&checked)
            .filter_map(|(b, s)| s.as_ref().ok().map(|s| (*b, s.as_slice())))
            .collect();
        // One transaction for the whole group: sled 0.34 seals and writes its log buffer
        // once per transaction, so per-batch transactions cost one write and a thread
        // wake-up each. Each batch stays atomic (the group is), and batches see the writes
        // of the batches before them (same agent twice in a group included).
        match self.run_group(&valid) {
            Ok(outs) => {
                let mut outs = outs.into_iter();
                batches
                    .iter()
                    .zip(checked)
                    .map(|(b, seqs)| {
                        let seqs = seqs?;
                        let out = outs.next().expect("one outcome per valid batch");
                        self.with_earlier_rejections(b, &seqs, out)
                    })
                    .collect()
            }
            // One batch failed (a corrupt value, a storage error): nothing of the group was
            // written; apply each on its own so the failure stays with its batch.
            Err(_) => batches.iter().map(|b| self.apply_batch(b)).collect(),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.guard.flush(false)?;
        Ok(())
    }

    fn record_agent(&self, info: &AgentInfo) -> Result<(), StoreError> {
        self.agents
            .insert(info.agent_id.as_bytes(), to_json(info)?)?;
        Ok(())
    }

    fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.agents
            .iter()
            .map(|kv| from_json(&kv?.1, "agent"))
            .collect()
    }

    fn model_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = BTreeSet::new();
        for tree in [&self.model_agg, &self.models] {
            for k in tree.iter().keys() {
                names.insert(String::from_utf8_lossy(&k?).into_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    fn model_aggregate(&self, model: &str) -> Result<Option<Aggregate>, StoreError> {
        Self::get_json(&self.model_agg, model.as_bytes(), "model aggregate")
    }

    fn run_aggregate(&self, model: &str, run: &str) -> Result<Option<Aggregate>, StoreError> {
        Self::get_json(&self.run_agg, &keys::join(&[model, run]), "run aggregate")
    }

    fn run_exists(&self, model: &str, run: &str) -> Result<bool, StoreError> {
        Ok(self.run_agg.contains_key(keys::join(&[model, run]))?)
    }

    fn runs(&self, model: &str) -> Result<Vec<RunEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.run_agg.scan_prefix(keys::prefix(&[model])) {
            let (k, v) = kv?;
            let parts = keys::split(&k);
            let run = parts.get(1).cloned().unwrap_or_default();
            out.push(RunEntry {
                model: model.to_string(),
                declaration: Self::get_json(&self.run_meta, &k, "declaration")?,
                aggregate: from_json(&v, "run aggregate")?,
                run,
            });
        }
        Ok(out)
    }

    fn model_nodes(&self, model: &str) -> Result<Vec<String>, StoreError> {
        let prefix = Seen::ModelNode.prefix(&[model]);
        let mut out = Vec::new();
        for k in self.seen.scan_prefix(&prefix).keys() {
            let k = k?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    fn unattributed(
        &self,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<UnattributedBucket>, StoreError> {
        let mut out = Vec::new();
        for kv in self.unattributed.iter() {
            let (k, v) = kv?;
            let Some((parts, day)) = keys::split_bucket(&k, 2) else {
                return Err(StoreError::Corrupt("unattributed key".into()));
            };
            if day < first_day || day > last_day {
                continue;
            }
            out.push(UnattributedBucket {
                node: parts[0].clone(),
                gpu_type: parts[1].clone(),
                day,
                aggregate: from_json(&v, "unattributed aggregate")?,
            });
        }
        Ok(out)
    }

    fn model_entry(&self, model: &str) -> Result<Option<ModelEntry>, StoreError> {
        Self::get_json(&self.models, model.as_bytes(), "model entry")
    }

    fn set_model_entry(&self, entry: &ModelEntry) -> Result<(), StoreError> {
        if entry.model.is_empty() || entry.model.contains('\0') {
            return Err(StoreError::Invalid(
                "a model name must be non-empty, without NUL".into(),
            ));
        }
        let actor = entry.updated_by.clone().unwrap_or_else(|| "admin".into());
        let value = to_json(entry)?;
        let plan_key = PlanScope::Registry.key(&entry.model);
        let version = PlanVersion {
            planned_flop: entry.declared.planned_flop,
            params: entry.declared.params,
            tokens: entry.declared.tokens,
            declared_at_ms: entry.updated_unix_ms,
            recorded_at_ms: entry.updated_unix_ms,
            by: PlanSource::Registry {
                actor: actor.clone(),
            },
        };
        (&self.models, &self.plans, &self.audit_log, &self.audit_head)
            .transaction(|(models, plans, log, head)| {
                let before: Option<ModelEntry> = match models.get(entry.model.as_bytes())? {
                    Some(v) => Some(abort(from_json(&v, "model entry"))?),
                    None => None,
                };
                let mut history: PlanHistory = match plans.get(&plan_key)? {
                    Some(v) => abort(from_json(&v, "plan history"))?,
                    None => PlanHistory::default(),
                };
                let plan = match history.record(version.clone()) {
                    Recorded::Added => {
                        plans.insert(plan_key.as_slice(), abort(to_json(&history))?)?;
                        Some(&version)
                    }
                    Recorded::Unchanged | Recorded::Full => None,
                };
                models.insert(entry.model.as_bytes(), value.as_slice())?;
                #[derive(serde::Serialize)]
                struct RegistryChange<'a> {
                    model: &'a str,
                    entry: &'a ModelEntry,
                    before: Option<&'a ModelEntry>,
                    /// The plan version this change declared, if it changed the plan.
                    plan: Option<&'a PlanVersion>,
                }
                let payload = abort(
                    audit_json(&RegistryChange {
                        model: &entry.model,
                        entry,
                        before: before.as_ref(),
                        plan,
                    })
                    .map_err(|e| StoreError::Corrupt(format!("registry audit payload: {e}"))),
                )?;
                chain::append(
                    log,
                    head,
                    &[AuditRecord {
                        time_ms: entry.updated_unix_ms,
                        actor: actor.clone(),
                        kind: AuditKind::RegistryChange,
                        payload,
                    }],
                    StoreError::Corrupt,
                )?;
                Ok(())
            })
            .map_err(tx_error)
    }

    fn plan_histories(&self, model: &str) -> Result<Vec<(PlanScope, PlanHistory)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.plans.scan_prefix(keys::prefix(&[model])) {
            let (k, v) = kv?;
            if let Some((m, scope)) = PlanScope::from_key(&k)
                && m == model
            {
                out.push((scope, from_json(&v, "plan history")?));
            }
        }
        Ok(out)
    }

    fn rejections(
        &self,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RejectedEntry>, StoreError> {
        let iter = match agent_id {
            Some(a) => self.rejected.scan_prefix(keys::prefix(&[a])),
            None => self.rejected.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.take(limit) {
            let (k, v) = kv?;
            let (agent_id, seq) = keys::split_agent_seq(&k)
                .ok_or_else(|| StoreError::Corrupt("rejected key".into()))?;
            let r: StoredRejection = from_proto(&v, "rejected record")?;
            out.push(RejectedEntry {
                agent_id,
                node: r.node,
                seq,
                reason: r.reason,
                detail: r.detail,
                received_unix_ms: r.received_unix_ms,
            });
        }
        Ok(out)
    }

    fn roll_up(&self, cutoff_unix_ms: i64, max_batches: usize) -> Result<RollupStats, StoreError> {
        let cutoff = (cutoff_unix_ms.max(0) as u64).to_be_bytes();
        let mut index_keys = Vec::new();
        for k in self.raw_index.range(..&cutoff[..]).keys() {
            index_keys.push(k?);
            if index_keys.len() > max_batches {
                break;
            }
        }
        let more = index_keys.len() > max_batches;
        index_keys.truncate(max_batches);
        if index_keys.is_empty() {
            return Ok(RollupStats::default());
        }
        (&self.raw, &self.raw_index, &self.rollups)
            .transaction(|(raw, raw_index, rollups)| {
                let mut stats = RollupStats {
                    more,
                    ..RollupStats::default()
                };
                let mut delta: BTreeMap<Vec<u8>, Rollup> = BTreeMap::new();
                for ik in &index_keys {
                    let raw_key = &ik[8..];
                    if let Some(v) = raw.get(raw_key)? {
                        let batch: StoredBatch = abort(from_proto(&v, "raw batch"))?;
                        for rec in &batch.records {
                            let hour = rec.start_unix_ms.div_euclid(HOUR_MS);
                            let key = match attribution(rec) {
                                Attribution::Run { model, run } => {
                                    keys::with_bucket(&[ROLLUP_RUN, model, run], hour)
                                }
                                Attribution::Unattributed => keys::with_bucket(
                                    &[ROLLUP_UNATTRIBUTED, &batch.node, gpu_type_of(rec)],
                                    hour,
                                ),
                            };
                            let r = delta.entry(key).or_default();
                            r.aggregate.add_record(rec);
                            if matches!(attribution(rec), Attribution::Run { .. }) {
                                r.agents.insert(batch.agent_id.clone());
                                r.nodes.insert(batch.node.clone());
                            }
                            stats.records += 1;
                        }
                        raw.remove(raw_key)?;
                        stats.batches += 1;
                    }
                    raw_index.remove(ik)?;
                }
                for (key, d) in &delta {
                    update_json(rollups, key, "rollup", |r: &mut Rollup| {
                        r.aggregate.merge_stages(&d.aggregate);
                        r.agents.extend(d.agents.iter().cloned());
                        r.nodes.extend(d.nodes.iter().cloned());
                    })?;
                }
                Ok(stats)
            })
            .map_err(tx_error)
    }

    fn verify_scan(&self, cut: VerifyCut) -> Result<VerifyScan, StoreError> {
        let mut scan = VerifyScan {
            cut,
            ..VerifyScan::default()
        };
        // A key numbered above the cut was written after it (step 3 reads it); one of an
        // agent without a mark is remembered, to tell a new agent from damage in step 3.
        let below_cut =
            |scan: &mut VerifyScan, k: &[u8]| -> Result<Option<(String, u64)>, StoreError> {
                let (agent, seq) = keys::split_agent_seq(k)
                    .ok_or_else(|| StoreError::Corrupt("raw batch or rejection key".into()))?;
                match scan.cut.marks.get(&agent) {
                    Some(&at_cut) => Ok((seq <= at_cut).then_some((agent, seq))),
                    None => {
                        let m = scan.unmarked.entry(agent).or_default();
                        *m = (*m).max(seq);
                        Ok(None)
                    }
                }
            };
        for kv in self.raw.iter() {
            let (k, v) = kv?;
            let Some((agent, _)) = below_cut(&mut scan, &k)? else {
                continue;
            };
            let batch: StoredBatch = from_proto(&v, "raw batch")?;
            if let Some(last) = batch.records.last() {
                let m = scan.max_seq.entry(agent).or_default();
                *m = (*m).max(last.seq);
            }
            scan.recomputed.add_raw(&batch);
        }
        for k in self.rejected.iter().keys() {
            if let Some((agent, seq)) = below_cut(&mut scan, &k?)? {
                let m = scan.max_seq.entry(agent).or_default();
                *m = (*m).max(seq);
            }
        }
        for kv in self.rollups.iter() {
            let (k, v) = kv?;
            let r: Rollup = from_json(&v, "rollup")?;
            let rc = &mut scan.recomputed;
            match keys::split_bucket(&k, 3) {
                Some((p, _)) if p[0] == ROLLUP_RUN => rc.add_run_rollup(&p[1], &p[2], &r),
                Some((p, hour)) if p[0] == ROLLUP_UNATTRIBUTED => {
                    rc.add_unattributed_rollup(&p[1], &p[2], hour, &r)
                }
                _ => scan.mismatches.push(format!(
                    "rollup key {k:?} is not a run or unattributed scope"
                )),
            }
        }
        for kv in self.run_agg.iter() {
            let (k, v) = kv?;
            let p = keys::split(&k);
            let id = (p[0].clone(), p.get(1).cloned().unwrap_or_default());
            scan.runs
                .insert(id, from_json::<Aggregate>(&v, "run aggregate")?);
        }
        for kv in self.model_agg.iter() {
            let (k, v) = kv?;
            let m = String::from_utf8_lossy(&k).into_owned();
            scan.models
                .insert(m, from_json::<Aggregate>(&v, "model aggregate")?);
        }
        for kv in self.unattributed.iter() {
            let (k, v) = kv?;
            let (p, day) = keys::split_bucket(&k, 2)
                .ok_or_else(|| StoreError::Corrupt("unattributed key".into()))?;
            scan.unattributed.insert(
                (p[0].clone(), p[1].clone(), day),
                from_json::<Aggregate>(&v, "unattributed aggregate")?,
            );
        }
        for k in self.seen.iter().keys() {
            scan.seen.insert(k?.to_vec());
        }
        Ok(scan)
    }

    fn verify_finish(&self, mut scan: VerifyScan) -> Result<VerifyReport, StoreError> {
        // What was applied since the cut: raw batches and rejections numbered above it.
        let mut touched_runs = BTreeSet::new();
        let mut touched_models = BTreeSet::new();
        let mut touched_buckets = BTreeSet::new();
        let marks_now = self.high_water_marks()?;
        for (agent, seq) in &scan.unmarked {
            if !marks_now.iter().any(|(a, _)| a == agent) {
                scan.mismatches.push(format!(
                    "agent {agent}: record {seq} is stored but the agent has no high-water mark"
                ));
            }
        }
        for (agent, now) in marks_now {
            let at_cut = scan.cut.marks.get(&agent).copied().unwrap_or(0);
            if now <= at_cut {
                continue;
            }
            let from = keys::agent_seq(&agent, at_cut + 1);
            let to = keys::agent_seq(&agent, u64::MAX);
            for kv in self.raw.range(from.clone()..=to.clone()) {
                let (_, v) = kv?;
                let batch: StoredBatch = from_proto(&v, "raw batch")?;
                if let Some(last) = batch.records.last() {
                    let m = scan.max_seq.entry(agent.clone()).or_default();
                    *m = (*m).max(last.seq);
                }
                for rec in &batch.records {
                    match attribution(rec) {
                        Attribution::Run { model, run } => {
                            touched_runs.insert((model.to_string(), run.to_string()));
                            touched_models.insert(model.to_string());
                        }
                        Attribution::Unattributed => {
                            touched_buckets.insert((
                                batch.node.clone(),
                                gpu_type_of(rec).to_string(),
                                rec.start_unix_ms.div_euclid(DAY_MS),
                            ));
                        }
                    }
                }
                scan.recomputed.add_raw(&batch);
            }
            for k in self.rejected.range(from..=to).keys() {
                if let Some((a, seq)) = keys::split_agent_seq(&k?) {
                    let m = scan.max_seq.entry(a).or_default();
                    *m = (*m).max(seq);
                }
            }
        }
        // Read again what those batches touched, as it is now.
        for id in &touched_runs {
            match Self::get_json(&self.run_agg, &keys::join(&[&id.0, &id.1]), "run aggregate")? {
                Some(a) => scan.runs.insert(id.clone(), a),
                None => scan.runs.remove(id),
            };
        }
        for m in &touched_models {
            match Self::get_json(&self.model_agg, m.as_bytes(), "model aggregate")? {
                Some(a) => scan.models.insert(m.clone(), a),
                None => scan.models.remove(m),
            };
            for tag in [
                Seen::RunAgent,
                Seen::RunNode,
                Seen::ModelAgent,
                Seen::ModelNode,
            ] {
                let prefix = tag.prefix(&[m]);
                let stale: Vec<Vec<u8>> = scan
                    .seen
                    .range(prefix.clone()..)
                    .take_while(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                for k in stale {
                    scan.seen.remove(&k);
                }
                for k in self.seen.scan_prefix(&prefix).keys() {
                    scan.seen.insert(k?.to_vec());
                }
            }
        }
        for (node, gpu, day) in &touched_buckets {
            let key = keys::with_bucket(&[node, gpu], *day);
            let id = (node.clone(), gpu.clone(), *day);
            match Self::get_json(&self.unattributed, &key, "unattributed aggregate")? {
                Some(a) => scan.unattributed.insert(id, a),
                None => scan.unattributed.remove(&id),
            };
        }

        let mut rc = scan.recomputed;
        rc.finish();
        let mut report = VerifyReport {
            mismatches: scan.mismatches,
            ..VerifyReport::default()
        };
        let m = &mut report.mismatches;
        compare("run", &scan.runs, &rc.runs, |(a, b)| format!("{a}/{b}"), m);
        compare("model", &scan.models, &rc.models, |a| a.clone(), m);
        compare(
            "unattributed",
            &scan.unattributed,
            &rc.unattributed,
            |(n, g, d)| format!("{n}/{g}/day {d}"),
            m,
        );

        let mut expected_seen = BTreeSet::new();
        for ((model, run), s) in &rc.run_agents {
            for a in s {
                expected_seen.insert(Seen::RunAgent.key(&[model, run, a]));
            }
        }
        for ((model, run), s) in &rc.run_nodes {
            for n in s {
                expected_seen.insert(Seen::RunNode.key(&[model, run, n]));
            }
        }
        for (model, s) in &rc.model_agents {
            for a in s {
                expected_seen.insert(Seen::ModelAgent.key(&[model, a]));
            }
        }
        for (model, s) in &rc.model_nodes {
            for n in s {
                expected_seen.insert(Seen::ModelNode.key(&[model, n]));
            }
        }
        for k in scan.seen.symmetric_difference(&expected_seen) {
            let side = if scan.seen.contains(k) {
                "stored but not in any record"
            } else {
                "in records but not stored"
            };
            m.push(format!(
                "agent/node entry {}: {side}",
                String::from_utf8_lossy(k).replace('\0', "/")
            ));
        }
        for (agent, seq) in &scan.max_seq {
            let hwm = self.high_water_mark(agent)?;
            if *seq > hwm {
                m.push(format!(
                    "agent {agent}: record {seq} is stored above the high-water mark {hwm}"
                ));
            }
        }
        report.raw_batches = rc.raw_batches;
        report.raw_records = rc.raw_records;
        report.rollups = rc.rollups;
        report.runs = scan.runs.len() as u64;
        report.models = scan.models.len() as u64;
        report.unattributed_buckets = scan.unattributed.len() as u64;
        Ok(report)
    }

    fn stage_policy(&self) -> Result<Option<StagePolicy>, StoreError> {
        Self::get_json(&self.meta, b"stage_policy", "stage policy")
    }

    fn set_stage_policy(&self, policy: &StagePolicy) -> Result<(), StoreError> {
        self.meta.insert("stage_policy", to_json(policy)?)?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
