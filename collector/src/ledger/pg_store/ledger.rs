//! [`LedgerStore`] on PostgreSQL: the writes are in `apply.rs`, `registry.rs` and
//! `rollup.rs`; the reads are plain queries, here.

use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1::IntervalRecord;

use super::PgStore;
use super::work::{num, parse_u64};
use crate::ledger::aggregate::Aggregate;
use crate::ledger::codec::{
    AgentInfo, StoredBatch, StoredRejection, from_json, from_proto, to_json,
};
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::verify::{VerifyCut, VerifyReport, VerifyScan};
use crate::ledger::{
    ApplyOutcome, IncomingBatch, LedgerStore, ModelEntry, RawBatchId, RejectedEntry, RollupStats,
    RunEntry, RunRollup, SeqRange, StoreError, UnattributedBucket,
};

/// Every table of the store, for [`LedgerStore::size_on_disk`].
const TABLES: &[&str] = &[
    "ledger_hwm",
    "ledger_raw",
    "ledger_rejected",
    "ledger_run_agg",
    "ledger_model_agg",
    "ledger_unattributed",
    "ledger_run_agents",
    "ledger_run_nodes",
    "ledger_model_agents",
    "ledger_model_nodes",
    "ledger_declarations",
    "ledger_run_rollups",
    "ledger_unattributed_rollups",
    "ledger_registry",
    "ledger_plans",
    "ledger_agents",
    "ledger_meta",
    "compliance_clocks",
    "compliance_alerts",
    "compliance_outbox",
    "compliance_meta",
    "audit_log",
    "audit_head",
];

impl LedgerStore for PgStore {
    fn high_water_mark(&self, agent_id: &str) -> Result<u64, StoreError> {
        let rows = self.rows::<StoreError>(
            "SELECT seq::text AS seq_text FROM ledger_hwm WHERE agent = $1",
            vec![Box::new(agent_id.to_string())],
        )?;
        match rows.first() {
            Some(r) => parse_u64(r.get(0), "high-water mark"),
            None => Ok(0),
        }
    }

    fn high_water_marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        // A mark of 0 is a row a refused batch (a gap) locked: no mark, as for the others.
        self.rows::<StoreError>(
            "SELECT agent, seq::text AS seq_text FROM ledger_hwm WHERE seq > 0 ORDER BY agent",
            vec![],
        )?
        .iter()
        .map(|r| Ok((r.get(0), parse_u64(r.get(1), "high-water mark")?)))
        .collect()
    }

    fn high_water_marks_of(
        &self,
        agents: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut marks: std::collections::HashMap<String, u64> =
            agents.iter().map(|a| (a.clone(), 0)).collect();
        for r in self.rows::<StoreError>(
            "SELECT agent, seq::text AS seq_text FROM ledger_hwm WHERE agent = ANY($1::text[])",
            vec![Box::new(agents.to_vec())],
        )? {
            marks.insert(r.get(0), parse_u64(r.get(1), "high-water mark")?);
        }
        Ok(marks)
    }

    fn apply_batch(&self, batch: &IncomingBatch) -> Result<ApplyOutcome, StoreError> {
        self.apply_many(&[batch])
            .pop()
            .expect("one batch, one outcome")
    }

    fn apply_group(&self, batches: &[&IncomingBatch]) -> Vec<Result<ApplyOutcome, StoreError>> {
        self.apply_many(batches)
    }

    fn recent_records(
        &self,
        agent_id: &str,
        max_batches: usize,
    ) -> Result<(Vec<IntervalRecord>, bool), StoreError> {
        Ok(self
            .recent_records_of(&[agent_id.to_string()], max_batches)?
            .remove(agent_id)
            .unwrap_or_default())
    }

    fn recent_records_of(
        &self,
        agents: &[String],
        max_batches: usize,
    ) -> Result<std::collections::HashMap<String, (Vec<IntervalRecord>, bool)>, StoreError> {
        let limit = i64::try_from(max_batches).unwrap_or(i64::MAX - 1);
        let rows = self.rows::<StoreError>(
            "SELECT u.a, r.batch FROM unnest($1::text[]) AS u(a) \
             CROSS JOIN LATERAL (SELECT batch, first_seq FROM ledger_raw WHERE agent = u.a \
             ORDER BY first_seq DESC LIMIT $2::bigint + 1) r \
             ORDER BY u.a, r.first_seq DESC",
            vec![Box::new(agents.to_vec()), Box::new(limit)],
        )?;
        // Newest first per agent, as `recent_records` reads them.
        let mut newest_first: std::collections::HashMap<String, Vec<StoredBatch>> =
            agents.iter().map(|a| (a.clone(), Vec::new())).collect();
        for r in &rows {
            let agent: String = r.get(0);
            let batch = from_proto::<StoredBatch>(r.get(1), "raw batch")?;
            newest_first.entry(agent).or_default().push(batch);
        }
        Ok(newest_first
            .into_iter()
            .map(|(agent, mut batches)| {
                let truncated = batches.len() > max_batches;
                batches.truncate(max_batches);
                batches.reverse();
                let records = batches.into_iter().flat_map(|b| b.records).collect();
                (agent, (records, truncated))
            })
            .collect())
    }

    /// Nothing to do: every write returned only after its COMMIT, and commits are durable
    /// (`synchronous_commit` on, PostgreSQL's default; a server run with it off, or with
    /// fsync off, gives up the durability the contract promises). A write whose COMMIT was
    /// not answered returned a write failure, so nothing a flush would cover is in doubt.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn record_agent(&self, info: &AgentInfo) -> Result<(), StoreError> {
        self.rows::<StoreError>(
            "INSERT INTO ledger_agents (agent, doc) VALUES ($1, $2) \
             ON CONFLICT (agent) DO UPDATE SET doc = EXCLUDED.doc",
            vec![
                Box::new(info.agent_id.clone()),
                Box::new(to_json(info, "agent")?),
            ],
        )?;
        Ok(())
    }

    fn record_agents(&self, infos: &[AgentInfo]) -> Result<(), StoreError> {
        // One row per agent per statement (ON CONFLICT may not touch a row twice): the
        // latest Hello of each.
        let mut latest: std::collections::BTreeMap<&str, &AgentInfo> = Default::default();
        for info in infos {
            latest.insert(&info.agent_id, info);
        }
        let agents: Vec<String> = latest.keys().map(|a| a.to_string()).collect();
        let docs = latest
            .values()
            .map(|info| to_json(*info, "agent"))
            .collect::<Result<Vec<Vec<u8>>, _>>()?;
        self.rows::<StoreError>(
            "INSERT INTO ledger_agents (agent, doc) \
             SELECT a, d FROM unnest($1::text[], $2::bytea[]) AS u(a, d) \
             ON CONFLICT (agent) DO UPDATE SET doc = EXCLUDED.doc",
            vec![Box::new(agents), Box::new(docs)],
        )?;
        Ok(())
    }

    fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.rows::<StoreError>("SELECT doc FROM ledger_agents ORDER BY agent", vec![])?
            .iter()
            .map(|r| from_json(r.get(0), "agent"))
            .collect()
    }

    fn model_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rows::<StoreError>(
                "SELECT model FROM ledger_model_agg UNION SELECT model FROM ledger_registry \
                 ORDER BY 1",
                vec![],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn model_aggregate(&self, model: &str) -> Result<Option<Aggregate>, StoreError> {
        self.rows::<StoreError>(
            "SELECT doc FROM ledger_model_agg WHERE model = $1",
            vec![Box::new(model.to_string())],
        )?
        .first()
        .map(|r| from_json(r.get(0), "model aggregate"))
        .transpose()
    }

    fn run_exists(&self, model: &str, run: &str) -> Result<bool, StoreError> {
        let key = (model.to_string(), run.to_string());
        if self.known_runs().contains(&key) {
            return Ok(true);
        }
        let exists = !self
            .rows::<StoreError>(
                "SELECT 1 FROM ledger_run_agg WHERE model = $1 AND run = $2",
                vec![Box::new(key.0.clone()), Box::new(key.1.clone())],
            )?
            .is_empty();
        if exists {
            self.known_runs().insert(key);
        }
        Ok(exists)
    }

    fn run_aggregate(&self, model: &str, run: &str) -> Result<Option<Aggregate>, StoreError> {
        self.rows::<StoreError>(
            "SELECT doc FROM ledger_run_agg WHERE model = $1 AND run = $2",
            vec![Box::new(model.to_string()), Box::new(run.to_string())],
        )?
        .first()
        .map(|r| from_json(r.get(0), "run aggregate"))
        .transpose()
    }

    fn runs(&self, model: &str) -> Result<Vec<RunEntry>, StoreError> {
        self.rows::<StoreError>(
            "SELECT a.run, a.doc, d.doc FROM ledger_run_agg a \
             LEFT JOIN ledger_declarations d ON d.model = a.model AND d.run = a.run \
             WHERE a.model = $1 ORDER BY a.run",
            vec![Box::new(model.to_string())],
        )?
        .iter()
        .map(|r| {
            Ok(RunEntry {
                model: model.to_string(),
                run: r.get(0),
                aggregate: from_json(r.get(1), "run aggregate")?,
                declaration: r
                    .get::<_, Option<&[u8]>>(2)
                    .map(|d| from_json(d, "run declaration"))
                    .transpose()?,
            })
        })
        .collect()
    }

    fn model_nodes(&self, model: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .rows::<StoreError>(
                "SELECT node FROM ledger_model_nodes WHERE model = $1 ORDER BY node",
                vec![Box::new(model.to_string())],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn unattributed(
        &self,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<UnattributedBucket>, StoreError> {
        self.rows::<StoreError>(
            "SELECT node, gpu_type, day, doc FROM ledger_unattributed \
             WHERE day BETWEEN $1 AND $2 ORDER BY node, gpu_type, day",
            vec![Box::new(first_day), Box::new(last_day)],
        )?
        .iter()
        .map(|r| {
            Ok(UnattributedBucket {
                node: r.get(0),
                gpu_type: r.get(1),
                day: r.get(2),
                aggregate: from_json(r.get(3), "unattributed aggregate")?,
            })
        })
        .collect()
    }

    fn model_entry(&self, model: &str) -> Result<Option<ModelEntry>, StoreError> {
        self.rows::<StoreError>(
            "SELECT doc FROM ledger_registry WHERE model = $1",
            vec![Box::new(model.to_string())],
        )?
        .first()
        .map(|r| from_json(r.get(0), "model entry"))
        .transpose()
    }

    fn set_model_entry(&self, entry: &ModelEntry) -> Result<(), StoreError> {
        self.write_model_entry(entry)
    }

    fn plan_histories(&self, model: &str) -> Result<Vec<(PlanScope, PlanHistory)>, StoreError> {
        self.rows::<StoreError>(
            "SELECT scope, run, doc FROM ledger_plans WHERE model = $1 ORDER BY scope, run",
            vec![Box::new(model.to_string())],
        )?
        .iter()
        .map(|r| {
            let scope = match r.get::<_, i16>(0) {
                0 => PlanScope::Registry,
                _ => PlanScope::Run(r.get(1)),
            };
            Ok((scope, from_json(r.get(2), "plan history")?))
        })
        .collect()
    }

    fn rejections(
        &self,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RejectedEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.rows::<StoreError>(
            "SELECT agent, seq::text AS seq_text, rejection FROM ledger_rejected \
             WHERE $1::text IS NULL OR agent = $1 ORDER BY agent, seq LIMIT $2",
            vec![Box::new(agent_id.map(str::to_string)), Box::new(limit)],
        )?
        .iter()
        .map(|r| {
            let stored: StoredRejection = from_proto(r.get(2), "rejected record")?;
            Ok(RejectedEntry {
                agent_id: r.get(0),
                node: stored.node,
                seq: parse_u64(r.get(1), "rejected record's sequence number")?,
                reason: stored.reason,
                detail: stored.detail,
                received_unix_ms: stored.received_unix_ms,
            })
        })
        .collect()
    }

    fn roll_up(&self, cutoff_unix_ms: i64, max_batches: usize) -> Result<RollupStats, StoreError> {
        self.roll_up_raw(cutoff_unix_ms, max_batches)
    }

    /// The whole verification, in one snapshot (`verify.rs`).
    fn verify_scan(&self, cut: VerifyCut) -> Result<VerifyScan, StoreError> {
        Ok(VerifyScan {
            cut,
            finished: Some(self.verify_snapshot()?),
            ..VerifyScan::default()
        })
    }

    fn verify_finish(&self, scan: VerifyScan) -> Result<VerifyReport, StoreError> {
        match scan.finished {
            Some(report) => Ok(report),
            None => self.verify_snapshot(),
        }
    }

    fn stage_policy(&self) -> Result<Option<StagePolicy>, StoreError> {
        self.rows::<StoreError>(
            "SELECT doc FROM ledger_meta WHERE name = 'stage_policy'",
            vec![],
        )?
        .first()
        .map(|r| from_json(r.get(0), "stage policy"))
        .transpose()
    }

    fn set_stage_policy(&self, policy: &StagePolicy) -> Result<(), StoreError> {
        self.rows::<StoreError>(
            "INSERT INTO ledger_meta (name, doc) VALUES ('stage_policy', $1) \
             ON CONFLICT (name) DO UPDATE SET doc = EXCLUDED.doc",
            vec![Box::new(to_json(policy, "stage policy")?)],
        )?;
        Ok(())
    }

    /// What the store's tables and their indexes and TOAST occupy in the database.
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        let rows = self.rows::<StoreError>(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
             WHERE c.relname = ANY($1::text[]) AND c.relkind = 'r' \
               AND c.relnamespace = current_schema()::regnamespace",
            vec![Box::new(tables)],
        )?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    fn raw_batches_between(
        &self,
        ranges: &[SeqRange],
        limit: usize,
    ) -> Result<Vec<(RawBatchId, StoredBatch)>, StoreError> {
        let ranges: Vec<&SeqRange> = ranges.iter().filter(|r| r.after < r.upto).collect();
        if ranges.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let agents: Vec<String> = ranges.iter().map(|r| r.agent_id.clone()).collect();
        let after: Vec<String> = ranges.iter().map(|r| num(r.after)).collect();
        let upto: Vec<String> = ranges.iter().map(|r| num(r.upto)).collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.rows::<StoreError>(
            // LATERAL, so each range is its own index range scan: as a join, once the
            // table's statistics were analysed, the planner chose to scan ledger_raw (213 ms
            // a call at 1.2 M batches, where this is well under a millisecond).
            "SELECT u.a, r.first_seq::text AS first_text, r.batch \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u(a, f, t) \
             CROSS JOIN LATERAL (SELECT first_seq, batch FROM ledger_raw \
                 WHERE agent = u.a AND first_seq > u.f::numeric AND first_seq <= u.t::numeric \
                 ORDER BY first_seq LIMIT $4::bigint) r \
             ORDER BY u.a COLLATE \"C\", r.first_seq LIMIT $4::bigint",
            vec![
                Box::new(agents),
                Box::new(after),
                Box::new(upto),
                Box::new(limit),
            ],
        )?
        .iter()
        .map(|r| {
            Ok((
                RawBatchId {
                    agent_id: r.get(0),
                    first_seq: parse_u64(r.get(1), "raw batch's first sequence number")?,
                },
                from_proto(r.get(2), "raw batch")?,
            ))
        })
        .collect()
    }

    fn rollup_generation(&self) -> Result<u64, StoreError> {
        self.rows::<StoreError>(
            "SELECT doc FROM ledger_meta WHERE name = 'rollup_generation'",
            vec![],
        )?
        .first()
        .map_or(Ok(0), |r| from_json(r.get(0), "rollup generation"))
    }

    fn run_rollups(&self) -> Result<Vec<RunRollup>, StoreError> {
        self.rows::<StoreError>(
            "SELECT model, run, hour, doc FROM ledger_run_rollups ORDER BY model, run, hour",
            vec![],
        )?
        .iter()
        .map(|r| {
            Ok(RunRollup {
                model: r.get(0),
                run: r.get(1),
                hour: r.get(2),
                rollup: from_json(r.get(3), "run rollup")?,
            })
        })
        .collect()
    }
}
