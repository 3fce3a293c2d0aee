//! The spool: interval records kept on disk (sled 0.34) until the collector has acknowledged
//! them.
//!
//! Why it exists: a node's records must survive agent crashes, upgrades, reboots and network
//! cuts of days. Today's exporters keep counters in memory and lose them on restart; a
//! compliance ledger cannot.
//!
//! # Contract
//!
//! 1. **Append assigns the sequence number.** [`Spool::append`] gives each record the next
//!    per-agent sequence number, strictly increasing by one, and writes the records *and* the
//!    new next-sequence counter in one sled batch, then fsyncs. When `append` returns `Ok`, the
//!    records are durable. [`SpoolError::NotDurable`] means they are in the spool under the
//!    numbers it names and will be sent, but are not durable (see *Durability* below): the
//!    caller must not append them again, which would count them twice. Any other `Err` means
//!    none of them was stored and they are still the caller's.
//! 2. **Sequence numbers never repeat**, across restarts too: the counter is persisted in the
//!    same atomic batch as the records, and on open the next number is the larger of the
//!    stored counter and the highest stored record + 1. [`Spool::raise_next_seq`] lets the
//!    shipper move it past a collector's high-water mark (a spool that was wiped while the
//!    collector remembers the agent), so new records are never mistaken for old ones.
//! 3. **Delete only after an ack.** Only [`Spool::ack`] deletes, and only records at or below
//!    the acknowledged sequence. The deletion and the new acked-through mark are one batch,
//!    fsynced before `ack` returns, so an acknowledged record never reappears after a crash.
//!    When that fsync fails the deletion still stands and `ack` returns its count (logged,
//!    counted): a deleted record that comes back after a crash is only sent again, and the
//!    collector ignores and re-acknowledges it.
//! 4. **Survives `kill -9` at any point**: every state change is a single atomic batch
//!    followed by an fsync; a kill between two steps leaves either the old or the new state.
//! 5. **Size cap, never a silent drop.** Above the high-water mark (80% of `max_bytes` by
//!    default) the spool logs a warning once. At the cap, `append` refuses with
//!    [`SpoolError::Full`] and raises [`SpoolStats::full`]; the caller keeps the records in
//!    memory and retries (back-pressure). Only [`Spool::append_over_cap`], for a caller whose
//!    own memory ceiling is reached, writes past the cap, because disk is the better place for
//!    data than nowhere.
//! 6. **Resumes from what it holds**: on open it counts the records it has and the shipper
//!    sends them from the oldest.
//! 7. **Damage is refused or quarantined, never a crash or a silent drop.** A spool sled
//!    cannot open makes [`Spool::open`] fail with [`SpoolError::Damaged`], whose message
//!    names the recovery (move the directory aside and restart). A record value that does
//!    not decode is moved, as stored, to the quarantine (`q` keys) and replaced under its
//!    sequence number by an empty placeholder record, in one batch: the collector's
//!    exactly-once protocol needs every number, and it rejects the placeholder
//!    (`bad-interval`), so the hole is visible at both ends and no total changes.
//!    [`SpoolStats::corrupt_records`] counts them.
//! 8. **A collector that knows more numbers than this spool renumbers, not deletes.** An
//!    acknowledgement at or above the next number to assign can only come from a Welcome
//!    whose high-water mark outran the counter: the spool was wiped or moved aside while the
//!    collector remembers the agent. The records held were never sent under those numbers, so
//!    they are renumbered above the mark (one batch) instead of being taken as acknowledged.
//!
//! # Durability
//!
//! A failed fsync is not retried into success. After it the kernel may have dropped the pages
//! it could not write, so a later fsync can succeed without them: the spool follows the one
//! rule of [`flopmeter_durable::Flusher`] (the collector's ledger follows it too). From the
//! first failed fsync until the agent restarts, every append returns
//! [`SpoolError::NotDurable`] (the records are stored, numbered and sent, never reported
//! durable), [`SpoolStats::durable`] is false, and the truncation guard is not moved again,
//! so it never claims what the disk may not hold. Records the collector acknowledges are
//! durable there whatever happens to the spool; restart the agent once the disk is repaired
//! and the spool is empty (`flopmeter_agent_spool_records` 0) to lose nothing.
//!
//! Layout, one sled tree (so a `Batch` is atomic across records and counters):
//! `r` + seq (u64 big-endian) → the prost-encoded `IntervalRecord` with its `seq` set;
//! `q` + original key → a quarantined value, as it was stored;
//! `m/next_seq` and `m/acked_through` → u64 big-endian;
//! `m/virtual_pos` → i64 big-endian, the event time a replay-mode agent (virtual clock, tests
//! and demos only) has spooled through, written in the same batch as the records it ends, so
//! a restarted replay agent resumes exactly where its durable output stops.
//!
//! Beside sled's files, `flopmeter-assigned` holds the next sequence number as of the last
//! durable change (contract 7): sled opens a truncated log as whatever prefix it can read,
//! so a spool that accounts for fewer numbers than it had assigned is refused as damaged.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use flopmeter_durable::{Damage, FlushError, Flusher, GuardFile, OpenError};
use flopmeter_proto::v1::IntervalRecord;
use prost::Message;

const RECORD_PREFIX: u8 = b'r';
const QUARANTINE_PREFIX: u8 = b'q';
/// `gpu_uuid` of the placeholder that takes an undecodable record's sequence number.
pub const CORRUPT_PLACEHOLDER_UUID: &str = "spool-corrupt-record";
const NEXT_SEQ_KEY: &[u8] = b"m/next_seq";
const VIRTUAL_POS_KEY: &[u8] = b"m/virtual_pos";
const ACKED_THROUGH_KEY: &[u8] = b"m/acked_through";

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool holds `bytes` of records and its cap is `max_bytes`: the caller must keep
    /// its records and retry later.
    #[error("spool full: {bytes} bytes held, cap {max_bytes} bytes")]
    Full {
        /// Bytes held.
        bytes: u64,
        /// The cap.
        max_bytes: u64,
    },
    /// The records were stored under `first..=last` and will be sent, but the fsync failed
    /// (now or earlier: see the module's *Durability*): they are not durable. The caller must
    /// not append them again.
    #[error(
        "spool records {first} to {last} are stored and will be sent, but are not durable: \
         {source}. Check the spool's disk, and restart the agent once it is repaired and the \
         spool is empty"
    )]
    NotDurable {
        /// First sequence number stored.
        first: u64,
        /// Last sequence number stored.
        last: u64,
        /// Why not durable.
        #[source]
        source: FlushError,
    },
    /// A change other than an append (the sequence counter, the replay position) is applied
    /// but not durable.
    #[error("spool at {path}: a change is applied but not durable: {source}")]
    Flush {
        /// The spool directory.
        path: PathBuf,
        /// Why not durable.
        #[source]
        source: FlushError,
    },
    /// The spool's files cannot be opened as a database, or account for less than it had
    /// made durable. The agent refuses to start rather than guess.
    #[error(
        "the spool at {path} cannot be opened: {cause}. Recovery: stop the agent, move the \
         directory aside (e.g. `mv {path} {path}.damaged`) and start it again with an empty \
         spool; keep the agent-id file in the parent directory, so the collector recognises \
         the agent and its Welcome high-water mark moves new sequence numbers past every number \
         already used. Records in the damaged spool that the collector had not acknowledged \
         are not sent",
        path = path.display()
    )]
    Damaged {
        /// The spool directory.
        path: PathBuf,
        /// What is wrong.
        #[source]
        cause: SpoolDamage,
    },
    /// The spool directory cannot be created or opened (a file in its place, permissions, a
    /// read-only file system).
    #[error(
        "cannot open the spool at {path}: {source}; it must be a directory the agent can create, \
         read and write (check --spool-dir, ownership and permissions)",
        path = path.display()
    )]
    Unusable {
        /// The spool directory.
        path: PathBuf,
        /// The file-system error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (another agent on the same `--spool-dir`) holds the spool's lock.
    #[error(
        "the spool at {path} is locked by another process: is another flopmeter agent running \
         with the same --spool-dir? ({source})",
        path = path.display()
    )]
    Locked {
        /// The spool directory.
        path: PathBuf,
        /// The lock error.
        #[source]
        source: sled::Error,
    },
    /// sled failed (I/O error, corruption).
    #[error("spool storage at {path}: {source}", path = path.display())]
    Storage {
        /// The spool directory.
        path: PathBuf,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
    /// Sequence numbers are exhausted (2^64 records: a corrupt counter, not a real agent).
    #[error("spool sequence numbers exhausted")]
    SeqExhausted,
}

/// Why a spool is refused as damaged.
#[derive(Debug, thiserror::Error)]
pub enum SpoolDamage {
    /// sled cannot open or read its files.
    #[error(transparent)]
    Engine(#[from] Damage),
    /// sled opened it but failed reading what a start needs.
    #[error("the storage engine failed reading it ({0})")]
    Read(#[source] sled::Error),
    /// It accounts for fewer sequence numbers than its guard says it had assigned.
    #[error(
        "it accounts for sequence numbers up to {held} only, but had assigned up to {assigned} \
         ({GUARD_FILE}): its files were truncated or replaced by an older copy, and records it \
         held may be lost"
    )]
    Truncated {
        /// The highest number it accounts for.
        held: u64,
        /// The highest number its guard says it had assigned.
        assigned: u64,
    },
}

impl SpoolError {
    fn opening(e: OpenError) -> SpoolError {
        match e {
            OpenError::Locked { dir, source } => SpoolError::Locked { path: dir, source },
            OpenError::Unusable { dir, source } => SpoolError::Unusable { path: dir, source },
            OpenError::Damaged { dir, cause } => SpoolError::Damaged {
                path: dir,
                cause: cause.into(),
            },
        }
    }
}

/// Tuning of a spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    /// The cap on stored record bytes (keys + encoded values).
    pub max_bytes: u64,
    /// Fraction of `max_bytes` above which a warning is logged.
    pub high_water_ratio: f64,
    /// sled's page cache. Small: the spool is written once and read once per record, so a
    /// cache buys nothing, and sled's 1 GiB default would dwarf the whole agent.
    pub cache_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_bytes: 256 * 1024 * 1024,
            high_water_ratio: 0.8,
            cache_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A snapshot of the spool's state, for metrics and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Records held (not yet acknowledged).
    pub records: u64,
    /// Bytes of records held.
    pub bytes: u64,
    /// The cap.
    pub max_bytes: u64,
    /// Lowest sequence number held, if any.
    pub first_seq: Option<u64>,
    /// The sequence number the next appended record gets.
    pub next_seq: u64,
    /// Everything at or below this has been acknowledged and deleted.
    pub acked_through: u64,
    /// Held bytes are above the high-water mark.
    pub above_high_water: bool,
    /// The last append was refused because the spool was full.
    pub full: bool,
    /// Appends refused because the spool was full, since open.
    pub refused: u64,
    /// Records written past the cap because the caller's memory ceiling was reached.
    pub over_cap_records: u64,
    /// fsyncs that failed, or were not trusted because an earlier one failed.
    pub flush_errors: u64,
    /// No fsync has failed since open: what `append` reports durable is. Once false it stays
    /// false until the agent restarts (the module's *Durability*).
    pub durable: bool,
    /// Undecodable records (or malformed record keys) moved to the quarantine since open.
    pub corrupt_records: u64,
    /// Values held in the quarantine (found since open or before).
    pub quarantined: u64,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    acked_through: u64,
    first_seq: Option<u64>,
    records: u64,
    bytes: u64,
    full: bool,
    refused: u64,
    warned_high_water: bool,
    over_cap_records: u64,
    flush_errors: u64,
    corrupt_records: u64,
    quarantined: u64,
}

/// The durable record spool. See the module docs for its contract.
#[derive(Debug)]
pub struct Spool {
    db: sled::Db,
    path: PathBuf,
    /// Every fsync goes through it: the durability rule.
    flusher: Flusher,
    /// The truncation guard ([`GUARD_FILE`]), moved only after a durable change.
    guard: GuardFile,
    opts: SpoolOptions,
    state: Mutex<State>,
    appended: tokio::sync::watch::Sender<u64>,
}

fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of_key(k: &[u8]) -> Option<u64> {
    if k.len() == 9 && k[0] == RECORD_PREFIX {
        Some(u64::from_be_bytes(k[1..].try_into().ok()?))
    } else {
        None
    }
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    // A damaged counter reads as 0: `open` then derives the next number from the records
    // and the acked mark, and the collector's Welcome raises it past its high-water mark.
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The truncation guard's file, beside sled's own in the spool directory: the next sequence
/// number as of the last durable change.
const GUARD_FILE: &str = "flopmeter-assigned";

/// How long `open` waits for a lock still held by a spool this process just closed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn quarantine_key(key: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(key.len() + 1);
    q.push(QUARANTINE_PREFIX);
    q.extend_from_slice(key);
    q
}

/// The record that stands in for an undecodable one: no interval, so the collector rejects
/// it (`bad-interval`) and moves its high-water mark past the number.
fn placeholder(seq: u64) -> IntervalRecord {
    IntervalRecord {
        seq,
        gpu_uuid: CORRUPT_PLACEHOLDER_UUID.into(),
        ..IntervalRecord::default()
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and resumes from what it holds.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        let path = dir.to_path_buf();
        let config = sled::Config::new()
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::LowSpace)
            // Durability comes from the explicit flush after every change; the background
            // flusher only adds wake-ups.
            .flush_every_ms(None);
        let db = flopmeter_durable::open(dir, config, LOCK_WAIT).map_err(SpoolError::opening)?;
        let damaged = |source: sled::Error| SpoolError::Damaged {
            path: path.clone(),
            cause: SpoolDamage::Read(source),
        };
        let stored_next = u64_of(db.get(NEXT_SEQ_KEY).map_err(damaged)?);
        let acked_through = u64_of(db.get(ACKED_THROUGH_KEY).map_err(damaged)?);
        let (mut records, mut bytes, mut first_seq, mut last_seq) = (0u64, 0u64, None, 0u64);
        for kv in db.range(record_key(0)..=record_key(u64::MAX)) {
            let (k, v) = kv.map_err(damaged)?;
            let Some(seq) = seq_of_key(&k) else { continue };
            records += 1;
            bytes += (k.len() + v.len()) as u64;
            first_seq.get_or_insert(seq);
            last_seq = seq;
        }
        let quarantined = db.scan_prefix([QUARANTINE_PREFIX]).count() as u64;
        if quarantined > 0 {
            tracing::warn!(
                dir = %path.display(),
                quarantined,
                "the spool holds quarantined (undecodable) records from earlier runs"
            );
        }
        let next_seq = stored_next
            .max(last_seq.saturating_add(1))
            .max(acked_through.saturating_add(1))
            .max(1);
        let guard = GuardFile::new(dir, GUARD_FILE, "spool");
        if let Some(assigned) = guard.read::<u64>()
            && next_seq < assigned
        {
            // sled recovers a truncated log as the prefix it can read, silently: without
            // this, records and the counter would vanish without a word.
            return Err(SpoolError::Damaged {
                path,
                cause: SpoolDamage::Truncated {
                    held: next_seq - 1,
                    assigned: assigned - 1,
                },
            });
        }
        let (appended, _) = tokio::sync::watch::channel(next_seq - 1);
        let spool = Spool {
            flusher: Flusher::new(db.clone()),
            db,
            path,
            guard,
            opts,
            state: Mutex::new(State {
                next_seq,
                acked_through,
                first_seq,
                records,
                bytes,
                full: false,
                refused: 0,
                warned_high_water: false,
                over_cap_records: 0,
                flush_errors: 0,
                corrupt_records: 0,
                quarantined,
            }),
            appended,
        };
        tracing::info!(
            dir = %spool.path.display(),
            records,
            bytes,
            next_seq,
            acked_through,
            "spool opened"
        );
        // The counter as found is on disk (sled read it from there).
        spool.guard.record(next_seq);
        Ok(spool)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters: every field is recomputed from sled on the next open.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn storage(&self, source: sled::Error) -> SpoolError {
        SpoolError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `records`, assigning consecutive sequence numbers, durably. Returns the range
    /// of numbers assigned (empty input: `Ok(None)`). Refuses with [`SpoolError::Full`] when
    /// the spool is at its cap; the records are then not stored and stay the caller's.
    pub fn append(
        &self,
        records: &mut [IntervalRecord],
    ) -> Result<Option<RangeInclusive<u64>>, SpoolError> {
        self.append_inner(records, false, None)
    }

    /// Like [`Spool::append`] but writes past the cap. For a caller that can no longer hold
    /// the records in memory: the cap is exceeded (and counted) rather than data dropped.
    pub fn append_over_cap(
        &self,
        records: &mut [IntervalRecord],
    ) -> Result<Option<RangeInclusive<u64>>, SpoolError> {
        self.append_inner(records, true, None)
    }

    /// For a replay-mode agent: like [`Spool::append`] (or [`Spool::append_over_cap`]), and
    /// records `virtual_pos` (event time, Unix ms) as the position spooled through, in the
    /// same batch. With no records only the position is written (an interval that booked
    /// nothing still moves the position).
    pub fn append_replay(
        &self,
        records: &mut [IntervalRecord],
        virtual_pos: i64,
        over_cap: bool,
    ) -> Result<Option<RangeInclusive<u64>>, SpoolError> {
        if records.is_empty() {
            let mut st = self.state();
            self.db
                .insert(VIRTUAL_POS_KEY, &virtual_pos.to_be_bytes())
                .map_err(|e| self.storage(e))?;
            let next = st.next_seq;
            self.sync(&mut st, Some(next))
                .map_err(|source| self.not_durable(source))?;
            return Ok(None);
        }
        self.append_inner(records, over_cap, Some(virtual_pos))
    }

    /// The position a replay-mode agent spooled through ([`Spool::append_replay`]), if any.
    pub fn virtual_pos(&self) -> Result<Option<i64>, SpoolError> {
        let v = self.db.get(VIRTUAL_POS_KEY).map_err(|e| self.storage(e))?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    fn append_inner(
        &self,
        records: &mut [IntervalRecord],
        over_cap: bool,
        virtual_pos: Option<i64>,
    ) -> Result<Option<RangeInclusive<u64>>, SpoolError> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut st = self.state();
        if st.bytes >= self.opts.max_bytes && !over_cap {
            if !st.full {
                tracing::error!(
                    bytes = st.bytes,
                    max_bytes = self.opts.max_bytes,
                    "spool full: holding records in memory until the collector acknowledges"
                );
            }
            st.full = true;
            st.refused += 1;
            return Err(SpoolError::Full {
                bytes: st.bytes,
                max_bytes: self.opts.max_bytes,
            });
        }
        let first = st.next_seq;
        let last = first
            .checked_add(records.len() as u64 - 1)
            .filter(|l| *l < u64::MAX)
            .ok_or(SpoolError::SeqExhausted)?;
        let mut batch = sled::Batch::default();
        let mut added = 0u64;
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = first + i as u64;
            let v = r.encode_to_vec();
            added += (9 + v.len()) as u64;
            batch.insert(&record_key(r.seq), v);
        }
        batch.insert(NEXT_SEQ_KEY, &(last + 1).to_be_bytes());
        if let Some(pos) = virtual_pos {
            batch.insert(VIRTUAL_POS_KEY, &pos.to_be_bytes());
        }
        if let Err(e) = self.db.apply_batch(batch) {
            // A sled batch is atomic: nothing of it was applied, so the records stay the
            // caller's, to be appended again later under the same numbers.
            for r in records.iter_mut() {
                r.seq = 0;
            }
            return Err(self.storage(e));
        }
        // The batch is in the tree, so the records are the spool's from here on, durable or
        // not: the state follows it, and an error must not make the caller append them again.
        let flushed = self.sync(&mut st, Some(last + 1));
        st.next_seq = last + 1;
        st.first_seq.get_or_insert(first);
        st.records += records.len() as u64;
        st.bytes += added;
        st.full = false;
        if over_cap && st.bytes > self.opts.max_bytes {
            st.over_cap_records += records.len() as u64;
        }
        let high_water = self.high_water_bytes();
        if st.bytes >= high_water && !st.warned_high_water {
            st.warned_high_water = true;
            tracing::warn!(
                bytes = st.bytes,
                max_bytes = self.opts.max_bytes,
                "spool above its high-water mark: is the collector reachable?"
            );
        }
        drop(st);
        self.appended.send_replace(last);
        match flushed {
            Ok(()) => Ok(Some(first..=last)),
            Err(source) => Err(SpoolError::NotDurable {
                first,
                last,
                source,
            }),
        }
    }

    /// Flushes under the durability rule and, when that made everything durable, moves the
    /// guard to `next` (the next number to assign, as of this change). A failure is counted,
    /// and logged once: after it nothing is reported durable until restart.
    fn sync(&self, st: &mut State, next: Option<u64>) -> Result<(), FlushError> {
        match self.flusher.flush() {
            Ok(()) => {
                if let Some(next) = next {
                    self.guard.record(next);
                }
                Ok(())
            }
            Err(e) => {
                st.flush_errors += 1;
                if matches!(e, FlushError::Failed(_)) && st.flush_errors == 1 {
                    tracing::error!(
                        error = %e,
                        dir = %self.path.display(),
                        "spool fsync failed: from now on nothing the spool stores is reported \
                         durable (records are still stored and sent); repair the disk and \
                         restart the agent once the spool is empty"
                    );
                }
                Err(e)
            }
        }
    }

    fn not_durable(&self, source: FlushError) -> SpoolError {
        SpoolError::Flush {
            path: self.path.clone(),
            source,
        }
    }

    fn high_water_bytes(&self) -> u64 {
        (self.opts.max_bytes as f64 * self.opts.high_water_ratio) as u64
    }

    /// Deletes every record with a sequence number at or below `through`, durably, and
    /// returns how many were deleted. An ack at or below an earlier one is a no-op (duplicate
    /// acks are normal after reconnects). An ack at or beyond the next number to assign
    /// cannot be for these records (contract 8): they are renumbered above `through`, none is
    /// deleted, and `Ok(0)` is returned.
    pub fn ack(&self, through: u64) -> Result<u64, SpoolError> {
        let mut st = self.state();
        if through >= st.next_seq {
            return self.renumber_above(&mut st, through).map(|()| 0);
        }
        if through <= st.acked_through {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let (mut removed, mut freed) = (0u64, 0u64);
        for kv in self
            .db
            .range(record_key(st.first_seq.unwrap_or(0))..=record_key(through))
        {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            removed += 1;
            freed += (k.len() + v.len()) as u64;
            batch.remove(k);
        }
        batch.insert(ACKED_THROUGH_KEY, &through.to_be_bytes());
        self.db.apply_batch(batch).map_err(|e| self.storage(e))?;
        // From here the deletion is applied; the state follows it whatever the fsync says.
        let flushed = self.sync(&mut st, None);
        st.acked_through = through;
        st.records = st.records.saturating_sub(removed);
        st.bytes = st.bytes.saturating_sub(freed);
        st.first_seq = if st.records == 0 {
            None
        } else {
            self.db
                .range(record_key(through.saturating_add(1))..=record_key(u64::MAX))
                .keys()
                .next()
                .transpose()
                .map_err(|e| self.storage(e))?
                .and_then(|k| seq_of_key(&k))
        };
        if st.bytes < self.high_water_bytes() {
            st.warned_high_water = false;
        }
        if st.bytes < self.opts.max_bytes {
            st.full = false;
        }
        // A deletion that is not durable can only bring records back after a crash, to be
        // sent again and re-acknowledged (contract 3): the ack stands, `sync` counted it.
        drop(flushed);
        Ok(removed)
    }

    /// Contract 8: the collector holds numbers through `mark` that this spool's counter never
    /// reached, so every held record moves, in order, to `mark + 1...`, with the counters, in
    /// one batch.
    fn renumber_above(&self, st: &mut State, mark: u64) -> Result<(), SpoolError> {
        let mut held = Vec::new();
        for kv in self.db.range(record_key(0)..=record_key(u64::MAX)) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if let Some(seq) = seq_of_key(&k) {
                held.push((k, seq, v));
            }
        }
        let n = held.len() as u64;
        let next = mark
            .checked_add(n)
            .and_then(|l| l.checked_add(1))
            .filter(|n| *n < u64::MAX)
            .ok_or(SpoolError::SeqExhausted)?;
        let mut batch = sled::Batch::default();
        let (mut bytes, mut corrupt) = (0u64, 0u64);
        for (i, (k, old, v)) in held.iter().enumerate() {
            let new = mark + 1 + i as u64;
            batch.remove(k.clone());
            let rec = match IntervalRecord::decode(v.as_ref()) {
                Ok(r) if r.seq == *old => IntervalRecord { seq: new, ..r },
                _ => {
                    batch.insert(quarantine_key(k), v.clone());
                    corrupt += 1;
                    placeholder(new)
                }
            };
            let enc = rec.encode_to_vec();
            bytes += (9 + enc.len()) as u64;
            batch.insert(&record_key(new), enc);
        }
        batch.insert(NEXT_SEQ_KEY, &next.to_be_bytes());
        batch.insert(ACKED_THROUGH_KEY, &mark.to_be_bytes());
        self.db.apply_batch(batch).map_err(|e| self.storage(e))?;
        // Not durable, the old numbering may come back after a crash, and the next Welcome
        // renumbers again: nothing to report beyond what `sync` counts.
        let _ = self.sync(st, Some(next));
        tracing::warn!(
            dir = %self.path.display(),
            collector_high_water_mark = mark,
            spool_next_seq = st.next_seq,
            renumbered = n,
            "the collector already holds sequence numbers this spool never assigned (the spool \
             was wiped or replaced): held records are renumbered above its high-water mark \
             instead of being taken as acknowledged"
        );
        st.next_seq = next;
        st.acked_through = mark;
        st.records = n;
        st.bytes = bytes;
        st.first_seq = (n > 0).then_some(mark + 1);
        st.corrupt_records += corrupt;
        st.quarantined += corrupt;
        self.appended.send_replace(next - 1);
        Ok(())
    }

    /// Up to `max_records` records with sequence numbers `from` and above, in order, stopping
    /// early once `max_bytes` of encoded records have been read (at least one record is
    /// returned whatever its size). A record that does not decode, or whose key is malformed,
    /// is quarantined on the way (contract 7) and its placeholder returned in its place.
    pub fn read_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<IntervalRecord>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in self.db.range(record_key(from)..=record_key(u64::MAX)) {
            if out.len() >= max_records || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            bytes += v.len();
            let seq = seq_of_key(&k);
            match (seq, IntervalRecord::decode(v.as_ref())) {
                (Some(seq), Ok(r)) if r.seq == seq => out.push(r),
                (seq, decoded) => {
                    let why = match decoded {
                        Err(e) => e.to_string(),
                        Ok(r) if seq.is_some() => {
                            format!("it decodes with sequence number {}", r.seq)
                        }
                        Ok(_) => "its key is not a record key".into(),
                    };
                    if let Some(p) = self.quarantine(&k, &v, &why)? {
                        out.push(p);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Moves a damaged value to the quarantine and, for a well-formed record key, puts the
    /// placeholder under its number, in one batch. `None` when there is nothing to send in its
    /// place (a malformed key, or the record was acknowledged meanwhile).
    fn quarantine(
        &self,
        key: &[u8],
        value: &sled::IVec,
        why: &str,
    ) -> Result<Option<IntervalRecord>, SpoolError> {
        let mut st = self.state();
        // The state lock keeps `ack` out; re-read so a record it deleted is not resurrected.
        if self.db.get(key).map_err(|e| self.storage(e))?.as_ref() != Some(value) {
            return Ok(None);
        }
        let seq = seq_of_key(key);
        let mut batch = sled::Batch::default();
        batch.insert(quarantine_key(key), value.clone());
        let replacement = seq.map(placeholder);
        match &replacement {
            Some(p) => {
                let enc = p.encode_to_vec();
                st.bytes = (st.bytes + (key.len() + enc.len()) as u64)
                    .saturating_sub((key.len() + value.len()) as u64);
                batch.insert(key, enc);
            }
            None => batch.remove(key),
        }
        self.db.apply_batch(batch).map_err(|e| self.storage(e))?;
        // Not durable, the damaged value may come back after a crash and be quarantined
        // again: `sync` counts it, the stream goes on.
        let next = st.next_seq;
        let _ = self.sync(&mut st, Some(next));
        st.corrupt_records += 1;
        st.quarantined += 1;
        tracing::error!(
            dir = %self.path.display(),
            key = ?String::from_utf8_lossy(key),
            seq,
            reason = why,
            "spool record is damaged: moved to the spool's quarantine (key prefix 'q') and \
             replaced by an empty placeholder the collector rejects (bad-interval), so the \
             stream goes on; counted in flopmeter_agent_spool_corrupt_records_total"
        );
        Ok(replacement)
    }

    /// Makes sure the next appended record gets a number at least `min_next`, durably. Used
    /// when a collector's high-water mark is at or above the spool's counter.
    pub fn raise_next_seq(&self, min_next: u64) -> Result<(), SpoolError> {
        let mut st = self.state();
        if min_next <= st.next_seq {
            return Ok(());
        }
        self.db
            .insert(NEXT_SEQ_KEY, &min_next.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        tracing::warn!(
            from = st.next_seq,
            to = min_next,
            "sequence counter raised past the collector's high-water mark"
        );
        st.next_seq = min_next;
        self.sync(&mut st, Some(min_next))
            .map_err(|source| self.not_durable(source))
    }

    /// The current state.
    pub fn stats(&self) -> SpoolStats {
        let st = self.state();
        SpoolStats {
            records: st.records,
            bytes: st.bytes,
            max_bytes: self.opts.max_bytes,
            first_seq: st.first_seq,
            next_seq: st.next_seq,
            acked_through: st.acked_through,
            above_high_water: st.bytes >= self.high_water_bytes(),
            full: st.full,
            refused: st.refused,
            over_cap_records: st.over_cap_records,
            flush_errors: st.flush_errors,
            durable: self.flusher.durable(),
            corrupt_records: st.corrupt_records,
            quarantined: st.quarantined,
        }
    }

    /// A receiver that changes whenever records are appended; its value is the last sequence
    /// number assigned (0 before any). The shipper waits on it instead of polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// The directory the spool lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
