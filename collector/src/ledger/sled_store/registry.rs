//! The model registry and plan versions: a registry change is written with its plan
//! version and its audit entry in one transaction.

use sled::Transactional;

use super::{SledStore, abort, chain, tx_error};
use crate::ledger::codec::{from_json, to_json};
use crate::ledger::facts::RegistryChange;
use crate::ledger::keys::{self};
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::{ModelEntry, StoreError};

pub(super) fn set_model_entry(store: &SledStore, entry: &ModelEntry) -> Result<(), StoreError> {
    let change = RegistryChange::new(entry)?;
    let value = to_json(entry, "model entry")?;
    let plan_key = PlanScope::Registry.key(&entry.model);
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
            let plan = change.record_plan(&mut history);
            if plan.is_some() {
                plans.insert(
                    plan_key.as_slice(),
                    abort(to_json(&history, "plan history"))?,
                )?;
            }
            models.insert(entry.model.as_bytes(), value.as_slice())?;
            let fact = abort(change.fact(before.as_ref(), plan))?;
            chain::append(log, head, &[fact])?;
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
