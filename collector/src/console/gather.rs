//! Reads what each page shows, only through the collector's own read paths: the
//! [`LedgerStore`] trait, the report ([`report::build`]) and the compliance engine's views
//! (assessments, alert views, clocks, audit entries, outbox, evidence). Never a storage tree:
//! another store behind the same trait, on any replica, serves the same console.
//!
//! Blocking (storage reads): handlers call these on the blocking pool.

use std::sync::Arc;

use flopmeter_core::stage::StagePolicy;

use super::ConsoleError;
use super::chart::Chart;
use super::model::{self, AuditPage, ModelInput, ModelsInput, Verification};
use crate::compliance::Engine;
use crate::compliance::admin::describe_link;
use crate::ledger::LedgerStore;
use crate::report;

/// Where the console reads from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The ledger.
    pub store: Arc<dyn LedgerStore>,
    /// The compliance engine.
    pub engine: Arc<Engine>,
    /// The stage policy in force.
    pub policy: StagePolicy,
}

/// Latest audit entries on the audit page.
const RECENT_AUDIT: usize = 100;

impl Sources {
    /// A model's report, stamped with the wall clock as the API's is (so a download equals
    /// `/api/v1/models/{m}/report`).
    fn report(&self, model: &str) -> Result<Option<report::Report>, ConsoleError> {
        Ok(report::build(
            self.store.as_ref(),
            model,
            &self.policy,
            crate::now_unix_ms(),
        )?)
    }

    /// What the landing page is built from.
    pub fn models(&self) -> Result<ModelsInput, ConsoleError> {
        let mut reports = Vec::new();
        for m in self.store.model_names()? {
            reports.extend(self.report(&m)?);
        }
        Ok(ModelsInput {
            now_ms: self.engine.now(),
            thresholds: self.engine.thresholds().to_vec(),
            reports,
            pairs: self.engine.pair_views(),
            bound: self.engine.decision_bound(),
            alerts: self.engine.alert_views()?,
        })
    }

    /// What the page of `name` is built from; `None` when the ledger does not know it.
    pub fn model(&self, name: &str) -> Result<Option<ModelInput>, ConsoleError> {
        let Some(report) = self.report(name)? else {
            return Ok(None);
        };
        let now = self.engine.now();
        let assessments = self.engine.assess_model(name)?;
        let alerts: Vec<_> = self
            .engine
            .alert_views()?
            .into_iter()
            .filter(|a| a.model == name)
            .collect();
        let store = self.engine.store();
        let mut clocks = Vec::new();
        for a in &alerts {
            clocks.extend(store.clock(name, &a.threshold)?);
        }
        let audit = store
            .audit_entries()?
            .into_iter()
            .filter(|e| model::entry_is_about(e, name, None))
            .collect();
        let outbox = store
            .outbox()?
            .into_iter()
            .filter(|o| o.event.model == name)
            .collect();
        let chart = match self.engine.model_evidence(name)? {
            Some(ev) => Chart::build(
                &ev,
                &self.policy,
                assessments.first().map(|a| &a.projection),
                assessments
                    .iter()
                    .map(|a| (a.threshold.id.clone(), a.level.flop))
                    .collect(),
                now,
            ),
            None => None,
        };
        Ok(Some(ModelInput {
            now_ms: now,
            report,
            assessments,
            alerts,
            clocks,
            audit,
            outbox,
            chart,
        }))
    }

    /// The audit page; `verify` runs the whole chain check.
    pub fn audit(&self, verify: bool) -> Result<AuditPage, ConsoleError> {
        let store = self.engine.store();
        let verification = if verify {
            Some(match store.verify_audit()? {
                Ok(n) => Verification::Ok(n),
                Err(b) => Verification::Broken(b.index, describe_link(&b.reason)),
            })
        } else {
            None
        };
        Ok(model::audit_page(
            store.head()?,
            store.audit_entries()?,
            verification,
            RECENT_AUDIT,
        ))
    }

    /// The audit log since `since_ms` as JSON lines, as `flopmeter audit export` writes it.
    pub fn audit_export(&self, since_ms: i64) -> Result<String, ConsoleError> {
        let mut out = String::new();
        for e in self.engine.store().audit_entries()? {
            if e.time_ms >= since_ms {
                out.push_str(&serde_json::to_string(&e).map_err(ConsoleError::Encode)?);
                out.push('\n');
            }
        }
        Ok(out)
    }
}
