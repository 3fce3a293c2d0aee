//! The facts a ledger write records beside totals: plan versions declared in records or the
//! registry, and the audit records that enter the chain in the same transaction.
//!
//! Why here and not in a store: every [`super::LedgerStore`] must record the same versions
//! and append byte-identical audit payloads for the same writes, or two stores of one
//! history would end with different chain heads. The stores only read and write; what a
//! write means is decided once, in these pure functions.

use std::collections::BTreeMap;

use flopmeter_core::audit::{AuditKind, to_json as audit_json};
use flopmeter_proto::v1::IntervalRecord;

use super::codec::Declaration;
use super::plans::{MAX_VERSIONS, PlanHistory, PlanSource, PlanVersion, Recorded};
use super::{ApplyOutcome, CheckedRecord, ModelEntry, StoreError};
use crate::compliance::chain::AuditRecord;

/// A run's records declaring a plan: one per change of the declared figures within a batch,
/// in record order (a run sends the same declaration with every record, so consecutive
/// equal ones are one statement). The figures were parsed at the door (`CheckedRecord::new`):
/// nothing is parsed here, inside the transaction.
pub(crate) struct PlanStatement<'a> {
    decl: &'a Declaration,
    rec: &'a IntervalRecord,
}

/// The statements of one batch's applied records, per (model, run), in record order.
pub(crate) type Statements<'a> = BTreeMap<(&'a str, &'a str), Vec<PlanStatement<'a>>>;

impl<'a> PlanStatement<'a> {
    fn figures(d: &Declaration) -> (Option<u128>, Option<u128>, Option<u128>) {
        (d.planned_flop, d.params, d.tokens)
    }

    /// Adds what an applied record of `(model, run)` declares, if it states a plan other than
    /// the run's previous statement in the batch.
    pub(crate) fn push(
        statements: &mut Statements<'a>,
        model: &'a str,
        run: &'a str,
        cr: &'a CheckedRecord,
    ) {
        let Some(d) = &cr.declaration else {
            return;
        };
        let run_said = statements.entry((model, run)).or_default();
        let figures = Self::figures(d);
        // Silence is not a withdrawal: a record without plan figures says nothing about one.
        let states_a_plan = figures != (None, None, None);
        if states_a_plan
            && run_said
                .last()
                .is_none_or(|p| Self::figures(p.decl) != figures)
        {
            run_said.push(PlanStatement {
                decl: d,
                rec: &cr.record,
            });
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

/// Records one run's statements of a batch in its plan history: counts the versions added
/// in `out.plans_declared` and pushes their audit records onto `facts`. Returns whether the
/// history changed (and must be written).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_statements(
    history: &mut PlanHistory,
    said: &[PlanStatement<'_>],
    (model, run): (&str, &str),
    (agent, node): (&str, &str),
    received_unix_ms: i64,
    out: &mut ApplyOutcome,
    facts: &mut Vec<AuditRecord>,
) -> Result<bool, StoreError> {
    let mut changed = false;
    for st in said {
        let Some(v) = st.version(agent, node, received_unix_ms) else {
            continue;
        };
        match history.record(v.clone()) {
            Recorded::Added => {
                changed = true;
                out.plans_declared += 1;
                facts.push(plan_fact(model, run, &v, received_unix_ms)?);
            }
            Recorded::Unchanged => {}
            Recorded::Full => tracing::warn!(
                model,
                run,
                agent,
                "run declares more than {MAX_VERSIONS} plan versions: further ones are not \
                 recorded"
            ),
        }
    }
    Ok(changed)
}

/// The audit record of a plan version declared in records.
fn plan_fact(
    model: &str,
    run: &str,
    v: &PlanVersion,
    received: i64,
) -> Result<AuditRecord, StoreError> {
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
        payload: audit_json(&PlanDeclared {
            model,
            run,
            version: v,
        })
        .map_err(StoreError::AuditPayload)?,
    })
}

/// A registry change as the ledger records it: the entry checked, its actor, and the plan
/// version it states.
pub(crate) struct RegistryChange<'a> {
    /// The new entry.
    pub entry: &'a ModelEntry,
    /// Who made it (`admin` when the credential names no one).
    pub actor: String,
    /// The registry plan it states, dated at the change.
    pub version: PlanVersion,
}

impl<'a> RegistryChange<'a> {
    /// Checks the entry and builds the change.
    pub(crate) fn new(entry: &'a ModelEntry) -> Result<RegistryChange<'a>, StoreError> {
        if entry.model.is_empty() || entry.model.contains('\0') {
            return Err(StoreError::Invalid(
                "a model name must be non-empty, without NUL",
            ));
        }
        let actor = entry.updated_by.clone().unwrap_or_else(|| "admin".into());
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
        Ok(RegistryChange {
            entry,
            actor,
            version,
        })
    }

    /// Records its plan version in the model's registry plan history; returns the version
    /// when it was added (the history changed and must be written).
    pub(crate) fn record_plan(&self, history: &mut PlanHistory) -> Option<&PlanVersion> {
        match history.record(self.version.clone()) {
            Recorded::Added => Some(&self.version),
            Recorded::Unchanged | Recorded::Full => None,
        }
    }

    /// Its audit record: the entry before and after, and the plan version it added.
    pub(crate) fn fact(
        &self,
        before: Option<&ModelEntry>,
        plan: Option<&PlanVersion>,
    ) -> Result<AuditRecord, StoreError> {
        #[derive(serde::Serialize)]
        struct RegistryChange<'a> {
            model: &'a str,
            entry: &'a ModelEntry,
            before: Option<&'a ModelEntry>,
            /// The plan version this change declared, if it changed the plan.
            plan: Option<&'a PlanVersion>,
        }
        Ok(AuditRecord {
            time_ms: self.entry.updated_unix_ms,
            actor: self.actor.clone(),
            kind: AuditKind::RegistryChange,
            payload: audit_json(&RegistryChange {
                model: &self.entry.model,
                entry: self.entry,
                before,
                plan,
            })
            .map_err(StoreError::AuditPayload)?,
        })
    }
}
