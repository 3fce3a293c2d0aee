//! The model registry and plan versions: a registry change is written with its plan
//! version and its audit entry in one transaction.

use sled::Transactional;

use super::{SledStore, abort, tx_error};
use crate::compliance::chain::{self, AuditRecord};
use crate::ledger::codec::{from_json, to_json};
use crate::ledger::keys::{self};
use crate::ledger::plans::{PlanHistory, PlanScope, PlanSource, PlanVersion, Recorded};
use crate::ledger::{ModelEntry, StoreError};
use flopmeter_core::audit::{AuditKind, to_json as audit_json};

pub(super) fn set_model_entry(store: &SledStore, entry: &ModelEntry) -> Result<(), StoreError> {
    if entry.model.is_empty() || entry.model.contains('\0') {
        return Err(StoreError::Invalid(
            "a model name must be non-empty, without NUL".into(),
        ));
    }
    let actor = entry.updated_by.clone().unwrap_or_else(|| "admin".into());
    let value = to_json(entry, "model entry")?;
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
    (
        &store.models,
        &store.plans,
        &store.audit_log,
        &store.audit_head,
    )
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
                    plans.insert(
                        plan_key.as_slice(),
                        abort(to_json(&history, "plan history"))?,
                    )?;
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
                .map_err(StoreError::AuditPayload),
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
            )?;
            Ok(())
        })
        .map_err(tx_error)
}

pub(super) fn plan_histories(
    store: &SledStore,
    model: &str,
) -> Result<Vec<(PlanScope, PlanHistory)>, StoreError> {
    let mut out = Vec::new();
    for kv in store.plans.scan_prefix(keys::prefix(&[model])) {
        let (k, v) = kv?;
        if let Some((m, scope)) = PlanScope::from_key(&k)
            && m == model
        {
            out.push((scope, from_json(&v, "plan history")?));
        }
    }
    Ok(out)
}
