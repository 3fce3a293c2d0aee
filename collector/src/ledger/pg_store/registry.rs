//! The model registry: a change is written with its registry plan version and its audit
//! entry in one transaction.
//!
//! Changes of one model are serialised by a transaction-level advisory lock on the model's
//! name, taken first: the entry "before" that the audit entry records is then the one the
//! change replaced, even when two replicas change a model never seen before at once (there
//! is no row yet to lock). The audit head is locked last, as everywhere.

use std::sync::Arc;

use super::PgStore;
use super::chain;
use super::work::{self, CommitSent, commit_failure};
use crate::ledger::codec::{from_json, to_json};
use crate::ledger::facts::RegistryChange;
use crate::ledger::plans::PlanHistory;
use crate::ledger::{ModelEntry, StoreError};

/// The first key of the registry's advisory locks ("flopreg" in ASCII); the second is a hash
/// of the model's name.
const REGISTRY_LOCK: i32 = 0x666c_6f70;

impl PgStore {
    pub(super) fn write_model_entry(&self, entry: &ModelEntry) -> Result<(), StoreError> {
        // Checked before any transaction.
        RegistryChange::new(entry)?;
        let entry = Arc::new(entry.clone());
        work::run(&self.db, move |mut conn, sent: CommitSent| {
            let entry = entry.clone();
            async move {
                let change = RegistryChange::new(&entry)?;
                let value = to_json(&*entry, "model entry")?;
                let tx = conn.transaction().await?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&REGISTRY_LOCK, &entry.model],
                )
                .await?;
                let before: Option<ModelEntry> = tx
                    .query_opt(
                        "SELECT doc FROM ledger_registry WHERE model = $1 FOR UPDATE",
                        &[&entry.model],
                    )
                    .await?
                    .map(|r| from_json(r.get(0), "model entry"))
                    .transpose()?;
                let row = tx
                    .query_opt(
                        "SELECT doc FROM ledger_plans WHERE model = $1 AND scope = 0 AND run = '' \
                         FOR UPDATE",
                        &[&entry.model],
                    )
                    .await?;
                let mut history: PlanHistory = match row {
                    Some(r) => from_json(r.get(0), "plan history")?,
                    None => PlanHistory::default(),
                };
                let plan = change.record_plan(&mut history);
                if plan.is_some() {
                    tx.execute(
                        "INSERT INTO ledger_plans (model, scope, run, doc) VALUES ($1, 0, '', $2) \
                         ON CONFLICT (model, scope, run) DO UPDATE SET doc = EXCLUDED.doc",
                        &[&entry.model, &to_json(&history, "plan history")?],
                    )
                    .await?;
                }
                tx.execute(
                    "INSERT INTO ledger_registry (model, doc) VALUES ($1, $2) \
                     ON CONFLICT (model) DO UPDATE SET doc = EXCLUDED.doc",
                    &[&entry.model, &value],
                )
                .await?;
                let fact = change.fact(before.as_ref(), plan)?;
                chain::append::<StoreError>(&tx, &[fact]).await?;
                super::apply::notify_ledger_changed(&tx).await?;
                sent.mark();
                tx.commit()
                    .await
                    .map_err(|e| commit_failure::<StoreError>(e.into()))?;
                Ok(())
            }
        })
        .map_err(StoreError::from)
    }
}
