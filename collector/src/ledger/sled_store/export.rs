//! Listing everything the sled store holds as [`Item`]s, for `flopmeter ledger migrate`:
//! every tree of the table in the module docs and `compliance.rs`, decoded, except what is
//! sled's own (the format version, and `raw_index`, which a target derives from the raw
//! batches if it needs one).
//!
//! Trees are read one after another with sled's iterators, which see a consistent view per
//! tree only: the collector on the directory must be stopped (sled lets one process open it
//! anyway), so nothing changes during the export.

use super::SledStore;
use super::chain::HEAD_KEY;
use crate::compliance::store::{ComplianceStoreError, decode};
use crate::ledger::StoreError;
use crate::ledger::codec::{StoredRejection, from_json, from_proto};
use crate::ledger::keys::{self, ROLLUP_RUN, ROLLUP_UNATTRIBUTED, Seen};
use crate::ledger::plans::PlanScope;
use crate::ledger::{RawBatchId, StoredBatch};
use crate::storage::transfer::{Counts, Export, Item, ItemKind, SeenEntry, TransferError};

type Sink<'a> = &'a mut dyn FnMut(Item) -> Result<(), TransferError>;

fn read(e: sled::Error) -> TransferError {
    ledger(e.into())
}

fn ledger(e: StoreError) -> TransferError {
    TransferError::ReadLedger(Box::new(e))
}

fn compliance(e: ComplianceStoreError) -> TransferError {
    TransferError::ReadCompliance(Box::new(e))
}

fn bad_key(what: &'static str, k: &[u8]) -> TransferError {
    TransferError::SourceKey {
        what,
        key: String::from_utf8_lossy(k).replace('\0', "/"),
    }
}

/// The two string parts of a `model \0 run` key.
fn pair(k: &[u8], what: &'static str) -> Result<(String, String), TransferError> {
    match <[String; 2]>::try_from(keys::split(k)) {
        Ok([a, b]) => Ok((a, b)),
        Err(_) => Err(bad_key(what, k)),
    }
}

fn utf8(k: &[u8], what: &'static str) -> Result<String, TransferError> {
    String::from_utf8(k.to_vec()).map_err(|_| bad_key(what, k))
}

impl SledStore {
    fn export_ledger(&self, sink: Sink<'_>) -> Result<(), TransferError> {
        for kv in self.raw.iter() {
            let (k, v) = kv.map_err(read)?;
            let (agent_id, first_seq) =
                keys::split_agent_seq(&k).ok_or_else(|| bad_key("raw batch", &k))?;
            let batch: StoredBatch = from_proto(&v, "raw batch").map_err(ledger)?;
            sink(Item::RawBatch {
                id: RawBatchId {
                    agent_id,
                    first_seq,
                },
                batch,
            })?;
        }
        for kv in self.hwm.iter() {
            let (k, v) = kv.map_err(read)?;
            sink(Item::HighWaterMark {
                agent: utf8(&k, "high-water mark")?,
                seq: super::decode_u64(&v).map_err(ledger)?,
            })?;
        }
        for kv in self.run_agg.iter() {
            let (k, v) = kv.map_err(read)?;
            let (model, run) = pair(&k, "run aggregate")?;
            let aggregate = from_json(&v, "run aggregate").map_err(ledger)?;
            sink(Item::RunAggregate {
                model,
                run,
                aggregate,
            })?;
        }
        for kv in self.model_agg.iter() {
            let (k, v) = kv.map_err(read)?;
            sink(Item::ModelAggregate {
                model: utf8(&k, "model aggregate")?,
                aggregate: from_json(&v, "model aggregate").map_err(ledger)?,
            })?;
        }
        for kv in self.unattributed.iter() {
            let (k, v) = kv.map_err(read)?;
            let (parts, day) =
                keys::split_bucket(&k, 2).ok_or_else(|| bad_key("unattributed bucket", &k))?;
            let [node, gpu_type] =
                <[String; 2]>::try_from(parts).map_err(|_| bad_key("unattributed bucket", &k))?;
            sink(Item::Unattributed {
                node,
                gpu_type,
                day,
                aggregate: from_json(&v, "unattributed aggregate").map_err(ledger)?,
            })?;
        }
        for k in self.seen.iter().keys() {
            let k = k.map_err(read)?;
            let (kind, parts) = Seen::parse(&k).ok_or_else(|| bad_key("agent/node entry", &k))?;
            let mut p = parts.into_iter();
            let mut next = || p.next().unwrap_or_default();
            let entry = match kind {
                Seen::RunAgent => SeenEntry::RunAgent {
                    model: next(),
                    run: next(),
                    agent: next(),
                },
                Seen::RunNode => SeenEntry::RunNode {
                    model: next(),
                    run: next(),
                    node: next(),
                },
                Seen::ModelAgent => SeenEntry::ModelAgent {
                    model: next(),
                    agent: next(),
                },
                Seen::ModelNode => SeenEntry::ModelNode {
                    model: next(),
                    node: next(),
                },
            };
            sink(Item::Seen(entry))?;
        }
        for kv in self.run_meta.iter() {
            let (k, v) = kv.map_err(read)?;
            let (model, run) = pair(&k, "run declaration")?;
            sink(Item::Declaration {
                model,
                run,
                declaration: from_json(&v, "declaration").map_err(ledger)?,
            })?;
        }
        for kv in self.rejected.iter() {
            let (k, v) = kv.map_err(read)?;
            let (agent, seq) =
                keys::split_agent_seq(&k).ok_or_else(|| bad_key("quarantined record", &k))?;
            let rejection: StoredRejection = from_proto(&v, "rejected record").map_err(ledger)?;
            sink(Item::Rejected {
                agent,
                seq,
                rejection,
            })?;
        }
        for kv in self.rollups.iter() {
            let (k, v) = kv.map_err(read)?;
            let (parts, hour) = keys::split_bucket(&k, 3).ok_or_else(|| bad_key("rollup", &k))?;
            let [scope, a, b] =
                <[String; 3]>::try_from(parts).map_err(|_| bad_key("rollup", &k))?;
            let rollup = from_json(&v, "rollup").map_err(ledger)?;
            sink(match scope.as_str() {
                ROLLUP_RUN => Item::RunRollup {
                    model: a,
                    run: b,
                    hour,
                    rollup,
                },
                ROLLUP_UNATTRIBUTED => Item::UnattributedRollup {
                    node: a,
                    gpu_type: b,
                    hour,
                    rollup,
                },
                _ => return Err(bad_key("rollup", &k)),
            })?;
        }
        for v in self.models.iter().values() {
            let v = v.map_err(read)?;
            sink(Item::ModelEntry(
                from_json(&v, "model entry").map_err(ledger)?,
            ))?;
        }
        for kv in self.plans.iter() {
            let (k, v) = kv.map_err(read)?;
            let (model, scope) = PlanScope::from_key(&k).ok_or_else(|| bad_key("plan", &k))?;
            sink(Item::PlanHistory {
                model,
                scope,
                history: from_json(&v, "plan history").map_err(ledger)?,
            })?;
        }
        for v in self.agents.iter().values() {
            let v = v.map_err(read)?;
            sink(Item::Agent(from_json(&v, "agent").map_err(ledger)?))?;
        }
        if let Some(p) = crate::ledger::LedgerStore::stage_policy(self).map_err(ledger)? {
            sink(Item::StagePolicy(p))?;
        }
        Ok(())
    }

    fn export_compliance(&self, sink: Sink<'_>) -> Result<(), TransferError> {
        let rd = compliance;
        let rd_sled = |e: sled::Error| compliance(e.into());
        for v in self.clocks.iter().values() {
            sink(Item::Clock(
                decode(&v.map_err(rd_sled)?, "clock").map_err(rd)?,
            ))?;
        }
        for v in self.alerts.iter().values() {
            sink(Item::Alert(
                decode(&v.map_err(rd_sled)?, "alert").map_err(rd)?,
            ))?;
        }
        for v in self.outbox.iter().values() {
            sink(Item::Outbox(
                decode(&v.map_err(rd_sled)?, "outbox item").map_err(rd)?,
            ))?;
        }
        for kv in self.compliance_meta.iter() {
            let (k, v) = kv.map_err(rd_sled)?;
            sink(Item::ComplianceMeta {
                name: utf8(&k, "compliance metadata")?,
                value: v.to_vec(),
            })?;
        }
        for v in self.audit_log.iter().values() {
            sink(Item::AuditEntry(
                decode(&v.map_err(rd_sled)?, "audit entry").map_err(rd)?,
            ))?;
        }
        Ok(())
    }
}

impl Export for SledStore {
    fn counts(&self) -> Result<Counts, TransferError> {
        let mut c = Counts::default();
        let prefixed = |p: &str| self.rollups.scan_prefix(keys::prefix(&[p])).count() as u64;
        for (kind, n) in [
            (ItemKind::RawBatch, self.raw.len() as u64),
            (ItemKind::HighWaterMark, self.hwm.len() as u64),
            (ItemKind::RunAggregate, self.run_agg.len() as u64),
            (ItemKind::ModelAggregate, self.model_agg.len() as u64),
            (ItemKind::Unattributed, self.unattributed.len() as u64),
            (ItemKind::Seen, self.seen.len() as u64),
            (ItemKind::Declaration, self.run_meta.len() as u64),
            (ItemKind::Rejected, self.rejected.len() as u64),
            (ItemKind::RunRollup, prefixed(ROLLUP_RUN)),
            (ItemKind::UnattributedRollup, prefixed(ROLLUP_UNATTRIBUTED)),
            (ItemKind::ModelEntry, self.models.len() as u64),
            (ItemKind::PlanHistory, self.plans.len() as u64),
            (ItemKind::Agent, self.agents.len() as u64),
            (
                ItemKind::StagePolicy,
                u64::from(self.meta.contains_key("stage_policy").map_err(read)?),
            ),
            (ItemKind::Clock, self.clocks.len() as u64),
            (ItemKind::Alert, self.alerts.len() as u64),
            (ItemKind::Outbox, self.outbox.len() as u64),
            (ItemKind::ComplianceMeta, self.compliance_meta.len() as u64),
            (ItemKind::AuditEntry, self.audit_log.len() as u64),
            (
                ItemKind::AuditHead,
                u64::from(self.audit_head.contains_key(HEAD_KEY).map_err(read)?),
            ),
        ] {
            c.add(kind, n);
        }
        Ok(c)
    }

    fn export(&self, sink: Sink<'_>) -> Result<Counts, TransferError> {
        let mut counts = Counts::default();
        let mut counting = |item: Item| {
            counts.add(item.kind(), 1);
            sink(item)
        };
        // The head first, the entries last (`export_compliance` ends with them): see
        // `storage::transfer`.
        if let Some(v) = self.audit_head.get(HEAD_KEY).map_err(read)? {
            let head = decode(&v, "audit head").map_err(compliance)?;
            counting(Item::AuditHead(head))?;
        }
        self.export_ledger(&mut counting)?;
        self.export_compliance(&mut counting)?;
        Ok(counts)
    }
}
