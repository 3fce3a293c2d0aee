//! Builds the core's [`ModelEvidence`] from the ledger: registry (role, base compute, plan),
//! runs (stage, declaration) and their event-time FLOP as **hourly buckets**.
//!
//! Buckets come from the ledger's raw batches and hourly rollups. Why hourly and not the
//! aggregates: the measured crossing (clock reason c) is dated at the event time the
//! cumulative total passed the level, which needs the work over event time, not only its sum.
//! One hour per (run, stage, method) keeps the evidence small (a year-long run is ~9k
//! buckets) while dating a crossing to within the hour, refined linearly inside it by the
//! core.
//!
//! Raw batches are immutable once written and an agent's are applied in sequence order, so
//! [`BucketCache`] decodes each one once: it remembers, per agent, the high-water mark up to
//! which it counted, and a pass fetches only the batches above it for the agents whose mark
//! moved ([`LedgerStore::raw_batches_between`]): one mark per agent plus what arrived, not a
//! scan of every batch held (which grew with retention: 0.5 s per pass at 400k batches on
//! PostgreSQL). When raw batches were rolled up ([`LedgerStore::rollup_generation`]), it
//! rebuilds from rollups plus raw batches, which hold the same totals.

use std::collections::{BTreeMap, HashMap};

use flopmeter_core::evidence::{DeclaredPlan, FlopBucket, ModelEvidence, ModelRole, RunEvidence};
use flopmeter_core::stage::Stage;
use flopmeter_core::units::{FlopBand, FlopTotal, Method};
use flopmeter_proto::v1::IntervalRecord;

use crate::ledger::aggregate::{Attribution, attribution, method_of, stage_of};
use crate::ledger::keys::HOUR_MS;
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::{LedgerStore, SeqRange, StoreError};

/// Raw batches fetched per [`LedgerStore::raw_batches_between`] call: one round trip each
/// on a remote store, and at most this many decoded batches held at once.
const FETCH_CHUNK: usize = 1024;

/// Agents asked for per call.
const AGENTS_PER_FETCH: usize = 512;

/// (model, run, stage, method, hour).
type BucketKey = (String, String, String, String, i64);

/// Accumulated FLOP of one bucket and its event-time span.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    flop: FlopTotal,
    start: i64,
    end: i64,
}

impl Acc {
    fn add(&mut self, flop: FlopTotal, start: i64, end: i64) {
        if self.flop == FlopTotal::default() && self.start == 0 && self.end == 0 {
            self.start = start;
            self.end = end;
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
        self.flop.add_total(flop);
    }
}

/// Hourly event-time buckets of every run, kept up to date incrementally.
#[derive(Debug, Default)]
pub struct BucketCache {
    /// Per agent, the mark up to which its raw batches are counted.
    covered: HashMap<String, u64>,
    /// The store's rollup generation the buckets started from (none: start over).
    generation: Option<u64>,
    buckets: BTreeMap<BucketKey, Acc>,
}

impl BucketCache {
    fn add_record(&mut self, rec: &IntervalRecord) {
        let Attribution::Run { model, run } = attribution(rec) else {
            return;
        };
        let hour = rec.start_unix_ms.div_euclid(HOUR_MS);
        let mut t = FlopTotal::default();
        t.add_band(FlopBand {
            low: rec.flop_low,
            central: rec.flop_central,
            high: rec.flop_high,
        });
        self.buckets
            .entry((
                model.to_string(),
                run.to_string(),
                stage_of(rec),
                method_of(rec).to_string(),
                hour,
            ))
            .or_default()
            .add(t, rec.start_unix_ms, rec.end_unix_ms);
    }

    /// Brings the cache up to date with the ledger's raw batches and rollups: reads each
    /// agent's high-water mark, fetches the raw batches above what it counted for the agents
    /// whose mark moved (a chunk per call), and starts over from the rollups when the
    /// store's rollup generation changed (a batch may have been rolled up before it was
    /// counted). A pass costs one mark per agent plus what arrived since the last one.
    pub fn refresh(&mut self, ledger: &dyn LedgerStore) -> Result<(), StoreError> {
        let generation = ledger.rollup_generation()?;
        if self.generation != Some(generation) {
            self.generation = None;
            self.covered.clear();
            self.buckets.clear();
            self.add_rollups(ledger)?;
            self.generation = Some(generation);
        }
        // Every raw batch of an agent with a first sequence number at or below a mark read
        // now is committed (it moved the mark there): counting up to the mark read, and
        // no further, misses nothing and counts nothing twice.
        let mut ranges: Vec<SeqRange> = ledger
            .high_water_marks()?
            .into_iter()
            .filter_map(|(agent_id, upto)| {
                let after = self.covered.get(&agent_id).copied().unwrap_or(0);
                (upto > after).then_some(SeqRange {
                    agent_id,
                    after,
                    upto,
                })
            })
            .collect();
        ranges.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut next = 0;
        while next < ranges.len() {
            let asked = &ranges[next..ranges.len().min(next + AGENTS_PER_FETCH)];
            let got = ledger.raw_batches_between(asked, FETCH_CHUNK)?;
            for (_, batch) in &got {
                for rec in &batch.records {
                    self.add_record(rec);
                }
            }
            // In (agent, first sequence) order: the ranges before the last batch's agent are
            // done; that agent's is done up to the last batch, unless the answer was whole.
            let (done, partly) = match got.last() {
                Some((last, _)) if got.len() >= FETCH_CHUNK => {
                    let at = asked
                        .iter()
                        .position(|r| r.agent_id == last.agent_id)
                        .ok_or(StoreError::Corrupt {
                            what: "raw batch",
                            source: crate::ledger::Malformed::Shape(
                                "the store answered with an agent that was not asked for",
                            ),
                        })?;
                    (at, Some(last.clone()))
                }
                _ => (asked.len(), None),
            };
            for r in &asked[..done] {
                self.covered.insert(r.agent_id.clone(), r.upto);
            }
            next += done;
            if let Some(last) = partly {
                self.covered.insert(last.agent_id, last.first_seq);
                ranges[next].after = last.first_seq;
            }
        }
        Ok(())
    }

    /// Counts every hourly rollup (what rolled-up raw batches left behind).
    fn add_rollups(&mut self, ledger: &dyn LedgerStore) -> Result<(), StoreError> {
        for r in ledger.run_rollups()? {
            for (stage, st) in &r.rollup.aggregate.stages {
                // A rollup keeps the central FLOP per method but one band per stage: the
                // bucket takes the dominant method.
                let method = st
                    .methods
                    .iter()
                    .max_by_key(|(_, f)| **f)
                    .map_or("unspecified".to_string(), |(m, _)| m.clone());
                let start = st.first_event_unix_ms.unwrap_or(r.hour * HOUR_MS);
                let end = st.last_event_unix_ms.unwrap_or((r.hour + 1) * HOUR_MS);
                self.buckets
                    .entry((
                        r.model.clone(),
                        r.run.clone(),
                        stage.clone(),
                        method,
                        r.hour,
                    ))
                    .or_default()
                    .add(st.flop, start, end);
            }
        }
        Ok(())
    }

    /// Builds the evidence of every model the ledger knows at `now_ms`, one model at a time:
    /// what a pass holds at once is one model's evidence, not every model's (at 100,000
    /// models the whole list was tens of MiB at every pass). A run counts as active while it
    /// reported within `idle_ms` before `now_ms` and has not reached its declared end.
    pub fn for_each_evidence<E: From<StoreError>>(
        &self,
        store: &dyn LedgerStore,
        now_ms: i64,
        idle_ms: i64,
        mut f: impl FnMut(ModelEvidence) -> Result<(), E>,
    ) -> Result<(), E> {
        for model in store.model_names()? {
            f(self.model_evidence(store, model, now_ms, idle_ms)?)?;
        }
        Ok(())
    }

    /// The evidence of one model (see [`BucketCache::evidence`]); a model the ledger does not
    /// know has a provider role and no runs.
    pub fn model_evidence(
        &self,
        store: &dyn LedgerStore,
        model: String,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<ModelEvidence, StoreError> {
        let entry = store.model_entry(&model)?;
        let role = match &entry {
            Some(e) if e.role == Some(crate::ledger::Role::Modifier) => ModelRole::Modifier {
                base_model: e.declared.base_model.clone().unwrap_or_default(),
                base_compute: e.base_flop,
                base_compute_source: e.base_flop_source.clone(),
                // As declared; else a known compute above 10^25 says so; else not, which
                // is the lower (conservative) fallback while the status is unknown.
                base_systemic: e.base_systemic_risk.unwrap_or_else(|| {
                    e.base_flop
                        .is_some_and(|f| f > flopmeter_core::threshold::pow10(25))
                }),
                base_systemic_declared: e.base_systemic_risk.is_some(),
            },
            _ => ModelRole::Provider,
        };
        // Every version of every plan, dated when it became known
        // (`crate::ledger::plans`). Ledgers written before plan histories have none: their
        // latest figures stand in, dated as those versions dated them.
        let histories = store.plan_histories(&model)?;
        let mut plans = plan_versions(&model, &histories);
        let has_registry = histories.iter().any(|(s, _)| *s == PlanScope::Registry);
        if let Some(e) = &entry
            && !has_registry
            && (e.declared.planned_flop.is_some() || e.declared.params.is_some())
        {
            plans.push(DeclaredPlan {
                plan_id: format!("registry:{model}"),
                run_id: None,
                registered_at_ms: e.updated_unix_ms,
                figures: e.plan(),
                declared_by: e
                    .updated_by
                    .as_ref()
                    .map(|a| format!("{a} via the model registry")),
            });
        }
        let model_end = entry.as_ref().and_then(|e| e.declared.planned_end_unix_ms);
        let mut runs = Vec::new();
        for r in store.runs(&model)? {
            let decl = r.declaration.clone().unwrap_or_default();
            let has_history = histories
                .iter()
                .any(|(s, _)| matches!(s, PlanScope::Run(run) if *run == r.run));
            if !has_history && (decl.planned_flop.is_some() || decl.params.is_some()) {
                plans.push(DeclaredPlan {
                    plan_id: format!("run:{model}/{}", r.run),
                    run_id: Some(r.run.clone()),
                    registered_at_ms: r
                        .aggregate
                        .stages
                        .values()
                        .filter_map(|s| s.first_event_unix_ms)
                        .min()
                        .unwrap_or(0),
                    figures: decl.plan(),
                    declared_by: None,
                });
            }
            let precision = decl.precision;
            for stage in r.aggregate.stages.keys() {
                let lo = (
                    model.clone(),
                    r.run.clone(),
                    stage.clone(),
                    String::new(),
                    i64::MIN,
                );
                let buckets: Vec<FlopBucket> = self
                    .buckets
                    .range(lo..)
                    .take_while(|((m, run, s, _, _), _)| *m == model && *run == r.run && s == stage)
                    .map(|((_, _, _, method, _), acc)| FlopBucket {
                        start_ms: acc.start,
                        end_ms: acc.end.max(acc.start + 1),
                        flop: acc.flop,
                        method: method.parse::<Method>().unwrap_or(Method::UtilMfu),
                    })
                    .collect();
                runs.push(RunEvidence {
                    run_id: if r.aggregate.stages.len() > 1 {
                        format!("{}#{stage}", r.run)
                    } else {
                        r.run.clone()
                    },
                    stage: Stage::parse(stage),
                    // A run is active until its declared end; without one, while it
                    // reported within the last rate window (decided by the projection).
                    active: {
                        let last = buckets.iter().map(|b| b.end_ms).max().unwrap_or(0);
                        last >= now_ms - idle_ms
                            && decl
                                .planned_end_unix_ms
                                .or(model_end)
                                .is_none_or(|end| last < end)
                    },
                    planned_end_ms: decl.planned_end_unix_ms.or(model_end),
                    precision,
                    buckets,
                });
            }
        }
        Ok(ModelEvidence {
            model,
            role,
            plans,
            runs,
        })
    }
}

/// The versions of a model's plan histories as the core's declared plans: one per version,
/// registered when it became known, citing who declared it.
fn plan_versions(model: &str, histories: &[(PlanScope, PlanHistory)]) -> Vec<DeclaredPlan> {
    let mut out = Vec::new();
    for (scope, h) in histories {
        let (plan_id, run_id) = match scope {
            PlanScope::Registry => (format!("registry:{model}"), None),
            PlanScope::Run(run) => (format!("run:{model}/{run}"), Some(run.clone())),
        };
        for v in &h.versions {
            out.push(DeclaredPlan {
                plan_id: plan_id.clone(),
                run_id: run_id.clone(),
                registered_at_ms: v.declared_at_ms,
                figures: v.figures(),
                declared_by: Some(v.by.describe()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use flopmeter_proto::v1::{AttributionSource, Method as ProtoMethod, WorkloadIdentity};

    use super::*;
    use crate::ledger::memory_store::MemoryStore;
    use crate::ledger::{CheckedRecord, IncomingBatch};

    const C: u64 = 1_000_000;
    const T0: i64 = 1_780_000_000_000;

    fn batch(agent: &str, seq: u64) -> IncomingBatch {
        let end = T0 + seq as i64 * 10_000;
        let record = IntervalRecord {
            seq,
            start_unix_ms: end - 10_000,
            end_unix_ms: end,
            gpu_uuid: "GPU-0".into(),
            gpu_type: "h100-sxm".into(),
            flop_low: C / 2,
            flop_central: C,
            flop_high: C * 2,
            gpu_ms: 10_000,
            method: ProtoMethod::GpmTensor as i32,
            identity: Some(WorkloadIdentity {
                model: "m".into(),
                run: "r".into(),
                source: AttributionSource::ProcessEnv as i32,
                ..WorkloadIdentity::default()
            }),
            ..IntervalRecord::default()
        };
        IncomingBatch {
            agent_id: agent.into(),
            node: format!("node-{agent}"),
            received_unix_ms: end,
            records: vec![CheckedRecord::new(record, None)],
        }
    }

    fn counted(cache: &BucketCache) -> u128 {
        cache.buckets.values().map(|a| a.flop.central).sum()
    }

    /// More batches than one call returns, for more agents than one call asks for, then
    /// new arrivals, then a roll-up: every batch counted once, whatever the path.
    #[test]
    fn refresh_counts_every_batch_once_across_chunks_arrivals_and_rollups() {
        let store = MemoryStore::new();
        let agents: Vec<String> = (0..AGENTS_PER_FETCH + 3)
            .map(|i| format!("a{i:04}"))
            .collect();
        let mut applied = 0u128;
        let mut apply = |agent: &str, seqs: std::ops::RangeInclusive<u64>| {
            for seq in seqs {
                store.apply_batch(&batch(agent, seq)).unwrap();
                applied += u128::from(C);
            }
            applied
        };
        // One agent alone holds more than a call returns; the others a batch or two.
        apply(&agents[1], 1..=(FETCH_CHUNK as u64 * 2 + 5));
        for a in agents.iter().filter(|a| **a != agents[1]) {
            apply(a, 1..=2);
        }
        let expected = apply(&agents[0], 3..=3);
        let mut cache = BucketCache::default();
        cache.refresh(&store).unwrap();
        assert_eq!(counted(&cache), expected);
        cache.refresh(&store).unwrap();
        assert_eq!(
            counted(&cache),
            expected,
            "nothing new, nothing counted twice"
        );

        let last = agents.last().unwrap();
        apply(
            &agents[1],
            (FETCH_CHUNK as u64 * 2 + 6)..=(FETCH_CHUNK as u64 * 2 + 9),
        );
        let expected = apply(last, 3..=4);
        cache.refresh(&store).unwrap();
        assert_eq!(counted(&cache), expected, "arrivals since the last pass");

        let before = store.rollup_generation().unwrap();
        let rolled = store.roll_up(T0 + 100 * 10_000, 50).unwrap();
        assert!(rolled.batches > 0);
        assert_ne!(store.rollup_generation().unwrap(), before);
        cache.refresh(&store).unwrap();
        assert_eq!(counted(&cache), expected, "rolled up: rebuilt, same total");
    }
}
