//! The compliance engine's durable state, in the collector's sled database.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `compliance_clocks` | model \0 threshold | [`ClockState`] (JSON) |
//! | `compliance_alerts` | model \0 threshold | [`Alert`] (JSON) |
//! | `audit_log` | seq (u64 BE) | [`AuditEntry`] (JSON) |
//! | `audit_head` | `head` | [`ChainHead`] (JSON) |
//! | `outbox` | sink \0 idempotency key | [`OutboxItem`] (JSON) |
//! | `compliance_meta` | name | JSON (applied thresholds, last seen registry entries) |
//!
//! Every change the engine or a person makes is one [`Change`], written in **one sled
//! transaction** over all six trees: the new clock and alert states, the audit entries that
//! record them (chained onto the head read inside the transaction) and the outbox items that
//! will announce them. After a crash either all of it is there or none; the engine flushes
//! before it tells anyone (ack only after durable). The chain head is kept apart from the log
//! so that cutting entries off the end is detected too ([`audit::verify_with_head`]).
//!
//! A recorded clock start is never moved: [`ComplianceStore::commit`] refuses a clock state
//! whose start differs from the stored one (the core never produces one; this is the last
//! line of defence against a bug).

use std::sync::{Arc, Mutex};

use flopmeter_durable::Flusher;

use flopmeter_core::alert::{Alert, AlertContent, AlertEvent};
use flopmeter_core::audit::{self, AuditEntry, BrokenLink, ChainHead};
use flopmeter_core::clock::ClockState;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::chain::ChainError;
use crate::ledger::keys;
use crate::ledger::{BackendError, sled_store::SledStore};

/// Errors of the compliance store.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceStoreError {
    /// The storage engine failed reading or writing, or a flush did not make the writes
    /// durable (after a failed flush none is trusted until restart, as for the ledger).
    #[error("compliance storage error: {0}")]
    Storage(#[source] BackendError),
    /// A stored value does not decode as its type.
    #[error("the compliance store holds a corrupt {what}: {source}")]
    Corrupt {
        /// What the value is (`clock`, `alert`, a metadata name...).
        what: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value cannot be encoded for storage.
    #[error("cannot encode {what} for the compliance store: {source}")]
    Encode {
        /// What the value is.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// Appending to the audit chain failed (its head does not decode, an entry does not
    /// encode).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A write would have moved a recorded clock start.
    #[error("refusing to move the recorded clock start of {model} / {threshold}")]
    StartMoved {
        /// The model.
        model: String,
        /// The threshold.
        threshold: String,
    },
}

impl From<sled::Error> for ComplianceStoreError {
    fn from(e: sled::Error) -> Self {
        ComplianceStoreError::Storage(Box::new(e))
    }
}

impl From<TransactionError<ComplianceStoreError>> for ComplianceStoreError {
    fn from(e: TransactionError<ComplianceStoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

/// Delivery state of one outbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not yet delivered; retried with backoff.
    Pending,
    /// The sink accepted it.
    Delivered,
}

/// One message for one sink, kept until delivered (and afterwards, as delivery history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Creation order (assigned when first stored): delivery follows it, so a receiver
    /// sees an alert's events in the order they happened.
    #[serde(default)]
    pub seq: u64,
    /// Sink name (`alertmanager`, `webhook:<name>`, `log`).
    pub sink: String,
    /// The core event's idempotency key (sent to sinks so they can drop duplicates).
    pub key: String,
    /// The event.
    pub event: AlertEvent,
    /// What the alert said when the event happened.
    pub content: AlertContent,
    /// Whether the alert was active (firing) at the event: Alertmanager resolves otherwise.
    pub active: bool,
    /// Delivery state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u32,
    /// Earliest next attempt, wall-clock Unix ms (backoff).
    pub next_attempt_unix_ms: i64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When delivered, wall-clock Unix ms.
    pub delivered_unix_ms: Option<i64>,
}

pub use super::chain::AuditRecord;

/// What verifying the audit chain found: the real counts, whether it holds or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// Entries present in the log.
    pub entries: u64,
    /// Entries the separately stored head accounts for.
    pub head_entries: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

impl ChainStatus {
    /// Whether every link verifies and the chain reaches the head.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }

    /// Entries that verify: all of them, or those before the first broken link.
    pub fn verified(&self) -> u64 {
        self.broken
            .as_ref()
            .map_or(self.entries, |b| (b.index as u64).min(self.entries))
    }
}

/// Everything one engine step or one person's action changes, written atomically.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// New clock state (model, threshold, state).
    pub clock: Option<ClockState>,
    /// New alert state.
    pub alert: Option<Alert>,
    /// Audit entries to append, in order.
    pub audit: Vec<AuditRecord>,
    /// Outbox items to enqueue (existing keys are left alone: idempotent).
    pub outbox: Vec<OutboxItem>,
    /// Metadata to set (name, JSON bytes).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Outbox items to overwrite (delivery progress).
    pub outbox_update: Vec<OutboxItem>,
}

impl Change {
    /// True when nothing would be written.
    pub fn is_empty(&self) -> bool {
        self.clock.is_none()
            && self.alert.is_none()
            && self.audit.is_empty()
            && self.outbox.is_empty()
            && self.meta.is_empty()
            && self.outbox_update.is_empty()
    }
}

/// The compliance trees of one sled database.
#[derive(Debug)]
pub struct ComplianceStore {
    db: sled::Db,
    clocks: sled::Tree,
    alerts: sled::Tree,
    audit: sled::Tree,
    head: sled::Tree,
    outbox: sled::Tree,
    meta: sled::Tree,
    /// The ledger's flusher: the durability rule is per database.
    flusher: Arc<Flusher>,
    /// Serializes writers (engine, admin actions, outbox): the audit head is a single chain.
    write: Mutex<()>,
}

use super::chain::{self, HEAD_KEY};

fn enc<T: Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>, ComplianceStoreError> {
    serde_json::to_vec(v).map_err(|source| ComplianceStoreError::Encode { what, source })
}

fn dec<T: DeserializeOwned>(v: &[u8], what: &str) -> Result<T, ComplianceStoreError> {
    serde_json::from_slice(v).map_err(|source| ComplianceStoreError::Corrupt {
        what: what.to_string(),
        source,
    })
}

/// The key of a (model, threshold) pair.
pub fn pair_key(model: &str, threshold: &str) -> Vec<u8> {
    keys::join(&[model, threshold])
}

fn outbox_key(sink: &str, key: &str) -> Vec<u8> {
    keys::join(&[sink, key])
}

impl ComplianceStore {
    /// Opens (creates) the compliance trees in the ledger's database: one database, so one
    /// flush covers both, and one durability rule (a failed flush of either poisons both).
    pub fn open(ledger: &SledStore) -> Result<ComplianceStore, ComplianceStoreError> {
        let db = ledger.db();
        Ok(ComplianceStore {
            clocks: db.open_tree("compliance_clocks")?,
            alerts: db.open_tree("compliance_alerts")?,
            audit: db.open_tree(chain::LOG_TREE)?,
            head: db.open_tree(chain::HEAD_TREE)?,
            outbox: db.open_tree("outbox")?,
            meta: db.open_tree("compliance_meta")?,
            db: db.clone(),
            flusher: ledger.flusher(),
            write: Mutex::new(()),
        })
    }

    /// The database (for the evidence builder, which reads the ledger's raw trees).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes everything written durable (with the ledger's writes in the same database).
    pub fn flush(&self) -> Result<(), ComplianceStoreError> {
        self.flusher
            .flush()
            .map_err(|e| ComplianceStoreError::Storage(Box::new(e)))
    }

    /// The clock of a pair.
    pub fn clock(
        &self,
        model: &str,
        threshold: &str,
    ) -> Result<Option<ClockState>, ComplianceStoreError> {
        self.clocks
            .get(pair_key(model, threshold))?
            .map(|v| dec(&v, "clock"))
            .transpose()
    }

    /// Every clock.
    pub fn clocks(&self) -> Result<Vec<ClockState>, ComplianceStoreError> {
        self.clocks
            .iter()
            .values()
            .map(|v| dec(&v?, "clock"))
            .collect()
    }

    /// The alert of a pair.
    pub fn alert(
        &self,
        model: &str,
        threshold: &str,
    ) -> Result<Option<Alert>, ComplianceStoreError> {
        self.alerts
            .get(pair_key(model, threshold))?
            .map(|v| dec(&v, "alert"))
            .transpose()
    }

    /// Every alert.
    pub fn alerts(&self) -> Result<Vec<Alert>, ComplianceStoreError> {
        self.alerts
            .iter()
            .values()
            .map(|v| dec(&v?, "alert"))
            .collect()
    }

    /// A metadata value.
    pub fn meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ComplianceStoreError> {
        self.meta.get(name)?.map(|v| dec(&v, name)).transpose()
    }

    /// Every outbox item (pending and delivered), in creation order.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, ComplianceStoreError> {
        let mut items: Vec<OutboxItem> = self
            .outbox
            .iter()
            .values()
            .map(|v| dec(&v?, "outbox item"))
            .collect::<Result<_, _>>()?;
        items.sort_by_key(|i| i.seq);
        Ok(items)
    }

    /// The stored chain head.
    pub fn head(&self) -> Result<ChainHead, ComplianceStoreError> {
        Ok(self
            .head
            .get(HEAD_KEY)?
            .map(|v| dec(&v, "audit head"))
            .transpose()?
            .unwrap_or_default())
    }

    /// Audit entries in key order (which is `seq` order unless the log was tampered with).
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.audit
            .iter()
            .values()
            .map(|v| dec(&v?, "audit entry"))
            .collect()
    }

    /// The raw audit tree, for tamper tests and repair tools.
    pub fn audit_tree(&self) -> &sled::Tree {
        &self.audit
    }

    /// Verifies the whole chain against the stored head; returns the entry count or the
    /// first broken link.
    pub fn verify_audit(&self) -> Result<Result<u64, BrokenLink>, ComplianceStoreError> {
        let s = self.chain_status()?;
        Ok(match s.broken {
            None => Ok(s.entries),
            Some(b) => Err(b),
        })
    }

    /// Verifies the whole chain against the stored head and says how many entries there
    /// are, how many the head accounts for, and where it breaks.
    pub fn chain_status(&self) -> Result<ChainStatus, ComplianceStoreError> {
        // The head first: an entry appended meanwhile then only lengthens the log past it,
        // which verifies, instead of looking like a log cut short.
        let head = self.head()?;
        let entries = self.audit_entries()?;
        Ok(ChainStatus {
            entries: entries.len() as u64,
            head_entries: head.next_seq,
            broken: audit::verify_with_head(&entries, &head).err(),
        })
    }

    /// Verifies the entries appended after `from` (a head already verified), against the
    /// stored head: the incremental check of a running collector. Returns the new head.
    pub fn verify_since(
        &self,
        from: &ChainHead,
    ) -> Result<Result<ChainHead, BrokenLink>, ComplianceStoreError> {
        // The head first, then the entries it accounts for (see `chain_status`).
        let stored = self.head()?;
        let entries: Vec<AuditEntry> = self
            .audit
            .range(from.next_seq.to_be_bytes()..stored.next_seq.max(from.next_seq).to_be_bytes())
            .values()
            .map(|v| dec(&v?, "audit entry"))
            .collect::<Result<_, _>>()?;
        Ok(match audit::verify_segment(&entries, from) {
            Err(mut b) => {
                b.index += from.next_seq as usize;
                Err(b)
            }
            Ok(h) if h != stored => Err(BrokenLink {
                index: h.next_seq as usize,
                reason: audit::LinkError::Truncated {
                    expected: stored.next_seq,
                    found: h.next_seq,
                },
            }),
            Ok(h) => Ok(h),
        })
    }

    /// Writes a [`Change`] atomically and returns the audit entries it appended.
    pub fn commit(&self, change: &Change) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        if change.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let clock = change
            .clock
            .as_ref()
            .map(|c| {
                Ok::<_, ComplianceStoreError>((
                    pair_key(&c.model, &c.threshold_id),
                    enc(c, "clock")?,
                    c,
                ))
            })
            .transpose()?;
        let alert = change
            .alert
            .as_ref()
            .map(|a| {
                Ok::<_, ComplianceStoreError>((
                    pair_key(&a.model, &a.threshold_id),
                    enc(a, "alert")?,
                ))
            })
            .transpose()?;
        let outbox: Vec<(Vec<u8>, Vec<u8>)> = change
            .outbox
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.seq = self.db.generate_id()?;
                Ok((outbox_key(&o.sink, &o.key), enc(&o, "outbox item")?))
            })
            .collect::<Result<_, ComplianceStoreError>>()?;
        let updates: Vec<(Vec<u8>, Vec<u8>)> = change
            .outbox_update
            .iter()
            .map(|o| Ok((outbox_key(&o.sink, &o.key), enc(o, "outbox item")?)))
            .collect::<Result<_, ComplianceStoreError>>()?;
        let abort = |e: ComplianceStoreError| ConflictableTransactionError::Abort(e);
        let written = (
            &self.clocks,
            &self.alerts,
            &self.audit,
            &self.head,
            &self.outbox,
            &self.meta,
        )
            .transaction(|(clocks, alerts, log, head, ob, meta)| {
                if let Some((k, v, c)) = &clock {
                    if let Some(old) = clocks.get(k)? {
                        let old: ClockState = dec(&old, "clock").map_err(abort)?;
                        if old.start != c.start {
                            return Err(abort(ComplianceStoreError::StartMoved {
                                model: c.model.clone(),
                                threshold: c.threshold_id.clone(),
                            }));
                        }
                    }
                    clocks.insert(k.as_slice(), v.as_slice())?;
                }
                if let Some((k, v)) = &alert {
                    alerts.insert(k.as_slice(), v.as_slice())?;
                }
                let out = chain::append(log, head, &change.audit)?;
                for (k, v) in &outbox {
                    if ob.get(k)?.is_none() {
                        ob.insert(k.as_slice(), v.as_slice())?;
                    }
                }
                for (k, v) in &updates {
                    ob.insert(k.as_slice(), v.as_slice())?;
                }
                for (name, v) in &change.meta {
                    meta.insert(name.as_bytes(), v.as_slice())?;
                }
                Ok(out)
            })?;
        Ok(written)
    }

    /// Appends audit records alone (threshold config changes, registry changes).
    pub fn append_audit(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.commit(&Change {
            audit: records,
            ..Change::default()
        })
    }
}

/// JSON bytes for [`Change::meta`].
pub fn meta_value<T: Serialize>(v: &T) -> Result<Vec<u8>, ComplianceStoreError> {
    enc(v, "metadata")
}
