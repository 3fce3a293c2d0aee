//! The compliance store on sled: its trees live in the ledger's database, so one flush
//! covers both and a registry change's audit entry shares the ledger's transaction.
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
//! A [`Change`] is one sled transaction over all six trees.

use flopmeter_core::alert::Alert;
use flopmeter_core::audit::{AuditEntry, ChainHead};
use flopmeter_core::clock::ClockState;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::SledStore;
use super::chain::{self, HEAD_KEY};
use crate::compliance::store::{
    Change, ComplianceStore, ComplianceStoreError, OutboxItem, check_start, decode, encode,
};
use crate::ledger::keys;

pub(super) const CLOCKS_TREE: &str = "compliance_clocks";
pub(super) const ALERTS_TREE: &str = "compliance_alerts";
pub(super) const OUTBOX_TREE: &str = "outbox";
pub(super) const META_TREE: &str = "compliance_meta";

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

/// The key of a (model, threshold) pair.
fn pair_key(model: &str, threshold: &str) -> Vec<u8> {
    keys::join(&[model, threshold])
}

fn outbox_key(sink: &str, key: &str) -> Vec<u8> {
    keys::join(&[sink, key])
}

impl SledStore {
    /// The raw audit tree, for tamper tests and repair tools.
    pub fn audit_tree(&self) -> &sled::Tree {
        &self.audit_log
    }
}

impl ComplianceStore for SledStore {
    fn clock(
        &self,
        model: &str,
        threshold: &str,
    ) -> Result<Option<ClockState>, ComplianceStoreError> {
        self.clocks
            .get(pair_key(model, threshold))?
            .map(|v| decode(&v, "clock"))
            .transpose()
    }

    fn clocks(&self) -> Result<Vec<ClockState>, ComplianceStoreError> {
        self.clocks
            .iter()
            .values()
            .map(|v| decode(&v?, "clock"))
            .collect()
    }

    fn alert(&self, model: &str, threshold: &str) -> Result<Option<Alert>, ComplianceStoreError> {
        self.alerts
            .get(pair_key(model, threshold))?
            .map(|v| decode(&v, "alert"))
            .transpose()
    }

    fn alerts(&self) -> Result<Vec<Alert>, ComplianceStoreError> {
        self.alerts
            .iter()
            .values()
            .map(|v| decode(&v?, "alert"))
            .collect()
    }

    fn meta_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, ComplianceStoreError> {
        Ok(self.compliance_meta.get(name)?.map(|v| v.to_vec()))
    }

    fn outbox(&self) -> Result<Vec<OutboxItem>, ComplianceStoreError> {
        let mut items: Vec<OutboxItem> = self
            .outbox
            .iter()
            .values()
            .map(|v| decode(&v?, "outbox item"))
            .collect::<Result<_, _>>()?;
        items.sort_by_key(|i| i.seq);
        Ok(items)
    }

    fn head(&self) -> Result<ChainHead, ComplianceStoreError> {
        Ok(self
            .audit_head
            .get(HEAD_KEY)?
            .map(|v| decode(&v, "audit head"))
            .transpose()?
            .unwrap_or_default())
    }

    fn audit_entries(&self) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.audit_log
            .iter()
            .values()
            .map(|v| decode(&v?, "audit entry"))
            .collect()
    }

    fn audit_range(&self, from: u64, to: u64) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.audit_log
            .range(from.to_be_bytes()..to.to_be_bytes())
            .values()
            .map(|v| decode(&v?, "audit entry"))
            .collect()
    }

    fn commit(&self, change: &Change) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        if change.is_empty() {
            return Ok(Vec::new());
        }
        // Serializes writers (engine, admin actions, outbox): the audit head is one chain.
        let _guard = self
            .compliance_write
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let clock = change
            .clock
            .as_ref()
            .map(|c| {
                Ok::<_, ComplianceStoreError>((
                    pair_key(&c.model, &c.threshold_id),
                    encode(c, "clock")?,
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
                    encode(a, "alert")?,
                ))
            })
            .transpose()?;
        let outbox: Vec<(Vec<u8>, Vec<u8>)> = change
            .outbox
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.seq = self.db.generate_id()?;
                Ok((outbox_key(&o.sink, &o.key), encode(&o, "outbox item")?))
            })
            .collect::<Result<_, ComplianceStoreError>>()?;
        let updates: Vec<(Vec<u8>, Vec<u8>)> = change
            .outbox_update
            .iter()
            .map(|o| Ok((outbox_key(&o.sink, &o.key), encode(o, "outbox item")?)))
            .collect::<Result<_, ComplianceStoreError>>()?;
        let abort = |e: ComplianceStoreError| ConflictableTransactionError::Abort(e);
        let written = (
            &self.clocks,
            &self.alerts,
            &self.audit_log,
            &self.audit_head,
            &self.outbox,
            &self.compliance_meta,
        )
            .transaction(|(clocks, alerts, log, head, ob, meta)| {
                if let Some((k, v, c)) = &clock {
                    let recorded: Option<ClockState> = match clocks.get(k)? {
                        Some(old) => Some(decode(&old, "clock").map_err(abort)?),
                        None => None,
                    };
                    check_start(recorded.as_ref(), c).map_err(abort)?;
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

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn flush(&self) -> Result<(), ComplianceStoreError> {
        self.guard
            .flusher
            .flush()
            .map_err(|e| ComplianceStoreError::Storage(Box::new(e)))
    }
}
