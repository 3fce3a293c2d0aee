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
//!
//! Layout, one sled tree (so a `Batch` is atomic across records and counters):
//! `r` + seq (u64 big-endian) → the prost-encoded `IntervalRecord` with its `seq` set;
//! `m/next_seq` and `m/acked_through` → u64 big-endian.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use flopmeter_proto::v1::IntervalRecord;
use prost::Message;

const RECORD_PREFIX: u8 = b'r';
const NEXT_SEQ_KEY: &[u8] = b"m/next_seq";
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
    /// sled failed (I/O error, corruption).
    #[error("spool storage at {path}: {source}")]
    Storage {
        /// The spool directory.
        path: PathBuf,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
    /// A stored value could not be decoded.
    #[error("spool record {seq} at {path} is corrupt: {source}")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// The spool directory.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: prost::DecodeError,
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
}

/// The durable record spool. See the module docs for its contract.
#[derive(Debug)]
pub struct Spool {
    db: sled::Db,
    path: PathBuf,
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
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and resumes from what it holds.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        let path = dir.to_path_buf();
        let storage = |source| SpoolError::Storage {
            path: path.clone(),
            source,
        };
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::LowSpace)
            // Durability comes from the explicit flush after every change; the background
            // flusher only adds wake-ups.
            .flush_every_ms(None);
        // sled holds an exclusive file lock. A previous `Spool` of this process may still be
        // releasing it (sled's background threads drop their handles shortly after the
        // `Db`); another live agent on the same directory keeps it, and is refused below.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("lock") && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(40));
                }
                Err(e) => return Err(storage(e)),
            }
        };
        let stored_next = u64_of(db.get(NEXT_SEQ_KEY).map_err(storage)?);
        let acked_through = u64_of(db.get(ACKED_THROUGH_KEY).map_err(storage)?);
        let (mut records, mut bytes, mut first_seq, mut last_seq) = (0u64, 0u64, None, 0u64);
        for kv in db.range(record_key(0)..=record_key(u64::MAX)) {
            let (k, v) = kv.map_err(storage)?;
            let Some(seq) = seq_of_key(&k) else { continue };
            records += 1;
            bytes += (k.len() + v.len()) as u64;
            first_seq.get_or_insert(seq);
            last_seq = seq;
        }
        let next_seq = stored_next
            .max(last_seq.saturating_add(1))
            .max(acked_through.saturating_add(1))
            .max(1);
        let (appended, _) = tokio::sync::watch::channel(next_seq - 1);
        let spool = Spool {
            db,
            path,
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
        self.append_inner(records, false)
    }

    /// Like [`Spool::append`] but writes past the cap. For a caller that can no longer hold
    /// the records in memory: the cap is exceeded (and counted) rather than data dropped.
    pub fn append_over_cap(
        &self,
        records: &mut [IntervalRecord],
    ) -> Result<Option<RangeInclusive<u64>>, SpoolError> {
        self.append_inner(records, true)
    }

    fn append_inner(
        &self,
        records: &mut [IntervalRecord],
        over_cap: bool,
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

    fn high_water_bytes(&self) -> u64 {
        (self.opts.max_bytes as f64 * self.opts.high_water_ratio) as u64
    }

    /// Deletes every record with a sequence number at or below `through`, durably, and
    /// returns how many were deleted. An ack at or below an earlier one is a no-op (duplicate
    /// acks are normal after reconnects). An ack beyond the last assigned number is clamped
    /// to it: numbers not yet assigned cannot have been acknowledged.
    pub fn ack(&self, through: u64) -> Result<u64, SpoolError> {
        let mut st = self.state();
        let through = through.min(st.next_seq - 1);
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
        st.records -= removed;
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

    /// Up to `max_records` records with sequence numbers `from` and above, in order, stopping
    /// early once `max_bytes` of encoded records have been read (at least one record is
    /// returned whatever its size).
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
            let Some(seq) = seq_of_key(&k) else { break };
            bytes += v.len();
            let r = IntervalRecord::decode(v.as_ref()).map_err(|source| SpoolError::Corrupt {
                seq,
                path: self.path.clone(),
                source,
            })?;
            out.push(r);
        }
        Ok(out)
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
    fn raise_next_seq_and_clamped_ack() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.raise_next_seq(100).unwrap();
        let mut a = vec![rec(1)];
        assert_eq!(s.append(&mut a).unwrap(), Some(100..=100));
        // An ack beyond what exists cannot acknowledge numbers not yet assigned.
        s.ack(1_000).unwrap();
        assert_eq!(s.stats().acked_through, 100);
        let mut b = vec![rec(2)];
        assert_eq!(s.append(&mut b).unwrap(), Some(101..=101));
        drop(s);
        assert_eq!(open(dir.path(), 1 << 20).stats().next_seq, 102);
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
