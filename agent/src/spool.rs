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
//!    records are durable; when it returns `Err`, none of them is.
//! 2. **Sequence numbers never repeat**, across restarts too: the counter is persisted in the
//!    same atomic batch as the records, and on open the next number is the larger of the
//!    stored counter and the highest stored record + 1. [`Spool::raise_next_seq`] lets the
//!    shipper move it past a collector's high-water mark (a spool that was wiped while the
//!    collector remembers the agent), so new records are never mistaken for old ones.
//! 3. **Delete only after an ack.** Only [`Spool::ack`] deletes, and only records at or below
//!    the acknowledged sequence. The deletion and the new acked-through mark are one batch,
//!    fsynced before `ack` returns, so an acknowledged record never reappears after a crash.
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

use std::io::ErrorKind;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

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
    /// The spool's files cannot be opened as a database: damaged or truncated, or not a
    /// spool at all. The agent refuses to start rather than guess.
    #[error(
        "the spool at {path} cannot be opened: {detail}. Recovery: stop the agent, move the \
         directory aside (e.g. `mv {path} {path}.damaged`) and start it again with an empty \
         spool; keep the agent-id file in the parent directory, so the collector recognises \
         the agent and its Welcome high-water mark moves new sequence numbers past every number \
         already used. Records in the damaged spool that the collector had not acknowledged \
         are not sent"
    )]
    Damaged {
        /// The spool directory.
        path: PathBuf,
        /// What sled (or the file system) said.
        detail: String,
    },
    /// The spool directory cannot be created or opened (a file in its place, permissions, a
    /// read-only file system).
    #[error(
        "cannot open the spool at {path}: {source}; it must be a directory the agent can create, \
         read and write (check --spool-dir, ownership and permissions)"
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
         with the same --spool-dir? ({source})"
    )]
    Locked {
        /// The spool directory.
        path: PathBuf,
        /// The lock error.
        #[source]
        source: sled::Error,
    },
    /// sled failed (I/O error, corruption).
    #[error("spool storage at {path}: {source}")]
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
    /// Records written past the cap because the caller's memory ceiling was reached.
    pub over_cap_records: u64,
    /// fsyncs that failed after a write had been applied (retried by the next write).
    pub flush_errors: u64,
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
    /// The truncation guard: see [`Spool::write_guard`].
    guard: PathBuf,
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

/// The truncation guard's file, beside sled's own in the spool directory.
const GUARD_FILE: &str = "flopmeter-assigned";

/// The guard's value: the next sequence number as of the last durable change. Missing or
/// unreadable reads as none (a spool from before the guard, or a torn write): the guard only
/// adds a check.
fn read_guard(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

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

/// Opens sled, mapping its failures (and its panics on some damaged files) to errors that
/// say what to do.
fn open_db(dir: &Path, config: &sled::Config) -> Result<sled::Db, SpoolError> {
    let path = dir.to_path_buf();
    // sled holds an exclusive file lock. A previous `Spool` of this process may still be
    // releasing it (sled's background threads drop their handles shortly after the `Db`);
    // another live agent on the same directory keeps it, and is refused below.
    let mut attempts = 0;
    loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("lock") => {
                if attempts < 50 {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(40));
                    continue;
                }
                return Err(SpoolError::Locked {
                    path,
                    source: sled::Error::Io(e),
                });
            }
            Ok(Err(sled::Error::Io(e)))
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied
                        | ErrorKind::NotADirectory
                        | ErrorKind::AlreadyExists
                        | ErrorKind::NotFound
                        | ErrorKind::ReadOnlyFilesystem
                        | ErrorKind::IsADirectory
                ) =>
            {
                return Err(SpoolError::Unusable { path, source: e });
            }
            Ok(Err(e)) => {
                return Err(SpoolError::Damaged {
                    path,
                    detail: e.to_string(),
                });
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                return Err(SpoolError::Damaged {
                    path,
                    detail: format!("the storage engine failed reading it ({what})"),
                });
            }
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and resumes from what it holds.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        let path = dir.to_path_buf();
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::LowSpace)
            // Durability comes from the explicit flush after every change; the background
            // flusher only adds wake-ups.
            .flush_every_ms(None);
        let db = open_db(dir, &config)?;
        let damaged = |source: sled::Error| SpoolError::Damaged {
            path: path.clone(),
            detail: source.to_string(),
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
        let guard = dir.join(GUARD_FILE);
        if let Some(assigned) = read_guard(&guard)
            && next_seq < assigned
        {
            // sled recovers a truncated log as the prefix it can read, silently: without
            // this, records and the counter would vanish without a word.
            return Err(SpoolError::Damaged {
                path,
                detail: format!(
                    "it accounts for sequence numbers up to {} only, but had assigned up to {} \
                     ({GUARD_FILE}): its files were truncated or replaced by an older copy, and \
                     records it held may be lost",
                    next_seq - 1,
                    assigned - 1
                ),
            });
        }
        let (appended, _) = tokio::sync::watch::channel(next_seq - 1);
        let spool = Spool {
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
        spool.write_guard(next_seq);
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
            let _guard = self.state();
            self.db
                .insert(VIRTUAL_POS_KEY, &virtual_pos.to_be_bytes())
                .and_then(|_| self.db.flush().map(|_| ()))
                .map_err(|e| self.storage(e))?;
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
        if let Err(e) = self.db.flush() {
            // The batch is in the tree and the next successful flush persists it. Reporting
            // failure here would make the caller append the records a second time and
            // double-count them, so the append stands and the failure is logged and counted.
            st.flush_errors += 1;
            tracing::error!(error = %e, "spool fsync failed; records kept, retried on next write");
        } else {
            self.write_guard(last + 1);
        }
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
        Ok(Some(first..=last))
    }

    /// Records, after sled's fsync, that numbers below `next` were assigned: written to a
    /// temporary file, fsynced and renamed, so it is never ahead of what sled made durable
    /// and a torn write leaves the old value. A failure only weakens the check: logged.
    fn write_guard(&self, next: u64) {
        let tmp = self.guard.with_extension("tmp");
        let written = (|| {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{next}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.guard)
        })();
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.guard.display(), "cannot update the spool's truncation guard");
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
        let flushed = self.db.flush();
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
        if let Err(e) = flushed {
            // Not durable yet: after a crash these records would come back and be resent,
            // which the collector ignores and re-acknowledges. Retried by the next write.
            st.flush_errors += 1;
            return Err(self.storage(e));
        }
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
        match self.db.flush() {
            Ok(_) => self.write_guard(next),
            Err(e) => {
                st.flush_errors += 1;
                tracing::error!(error = %e, "spool fsync failed; retried on next write");
            }
        }
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
        if let Err(e) = self.db.flush() {
            st.flush_errors += 1;
            tracing::error!(error = %e, "spool fsync failed; retried on next write");
        }
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
            .and_then(|_| self.db.flush().map(|_| ()))
            .map_err(|e| self.storage(e))?;
        tracing::warn!(
            from = st.next_seq,
            to = min_next,
            "sequence counter raised past the collector's high-water mark"
        );
        self.write_guard(min_next);
        st.next_seq = min_next;
        Ok(())
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
            over_cap_records: st.over_cap_records,
            flush_errors: st.flush_errors,
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
mod tests {
    use super::*;

    pub(crate) fn rec(flop: u64) -> IntervalRecord {
        IntervalRecord {
            flop_central: flop,
            gpu_uuid: "GPU-test".into(),
            ..IntervalRecord::default()
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> Spool {
        Spool::open(
            dir,
            SpoolOptions {
                max_bytes,
                ..SpoolOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn append_ack_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 1 << 20);
            let mut a = vec![rec(1), rec(2), rec(3)];
            assert_eq!(s.append(&mut a).unwrap(), Some(1..=3));
            assert_eq!(a[2].seq, 3);
            assert_eq!(s.ack(2).unwrap(), 2);
            assert_eq!(s.ack(1).unwrap(), 0, "duplicate ack is a no-op");
            let left = s.read_from(0, 10, 1 << 20).unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!((left[0].seq, left[0].flop_central), (3, 3));
        }
        let s = open(dir.path(), 1 << 20);
        let st = s.stats();
        assert_eq!((st.records, st.first_seq, st.next_seq), (1, Some(3), 4));
        let mut b = vec![rec(4)];
        assert_eq!(s.append(&mut b).unwrap(), Some(4..=4));
        // Everything acked: the counter still never goes back.
        s.ack(4).unwrap();
        drop(s);
        let s = open(dir.path(), 1 << 20);
        assert_eq!(s.stats().next_seq, 5);
        assert_eq!(s.stats().records, 0);
    }

    #[test]
    fn full_spool_refuses_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 100);
        let mut big: Vec<_> = (0..10).map(rec).collect();
        s.append(&mut big).unwrap();
        let mut more = vec![rec(99)];
        assert!(matches!(s.append(&mut more), Err(SpoolError::Full { .. })));
        assert!(s.stats().full);
        assert_eq!(more[0].seq, 0, "refused records keep no number");
        // Over the cap on purpose: counted.
        s.append_over_cap(&mut more).unwrap();
        assert_eq!(s.stats().over_cap_records, 1);
        s.ack(11).unwrap();
        assert!(!s.stats().full);
        let mut again = vec![rec(5)];
        assert_eq!(s.append(&mut again).unwrap(), Some(12..=12));
    }

    #[test]
    fn raise_next_seq_and_ack_beyond_the_counter() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.raise_next_seq(100).unwrap();
        let mut a = vec![rec(1)];
        assert_eq!(s.append(&mut a).unwrap(), Some(100..=100));
        // An ack beyond what exists cannot be for record 100: it is renumbered, not deleted.
        assert_eq!(s.ack(1_000).unwrap(), 0);
        let st = s.stats();
        assert_eq!(
            (st.acked_through, st.records, st.first_seq),
            (1_000, 1, Some(1_001))
        );
        let held = s.read_from(0, 10, 1 << 20).unwrap();
        assert_eq!((held[0].seq, held[0].flop_central), (1_001, 1));
        let mut b = vec![rec(2)];
        assert_eq!(s.append(&mut b).unwrap(), Some(1_002..=1_002));
        drop(s);
        assert_eq!(open(dir.path(), 1 << 20).stats().next_seq, 1_003);
    }

    #[test]
    fn read_from_respects_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let mut a: Vec<_> = (0..50).map(rec).collect();
        s.append(&mut a).unwrap();
        assert_eq!(s.read_from(10, 5, 1 << 20).unwrap().len(), 5);
        assert_eq!(s.read_from(10, 5, 1 << 20).unwrap()[0].seq, 10);
        assert_eq!(s.read_from(0, 100, 1).unwrap().len(), 1);
        assert_eq!(s.read_from(51, 100, 1 << 20).unwrap().len(), 0);
    }
}
