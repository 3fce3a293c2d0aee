//! Taking a whole store verbatim (`flopmeter ledger migrate`, [`Import`]): each chunk of
//! items is one transaction of multi-row upserts (`INSERT ... SELECT FROM unnest(...) ON
//! CONFLICT DO UPDATE`), one statement per table the chunk touches, so a chunk costs a few
//! round trips whatever its size.
//!
//! Documents are encoded as the store itself encodes them (JSON through serde, protobuf for
//! raw batches and quarantined records) and the typed columns beside them are filled the way
//! the store's own writes fill them ([`Headline`] for aggregates), so a migrated row cannot
//! be told from one the collector wrote. Upserts, because a re-run after a migration that
//! stopped half-way writes every item again (see `crate::storage::transfer`).

use std::sync::Arc;

use prost::Message as _;
use tokio_postgres::types::ToSql;

use super::apply::Headline;
use super::chain::seq_index;
use super::work::{self, CommitSent, TxError, commit_failure, num};
use super::{Param, PgStore};
use crate::compliance::store::{ComplianceStoreError, encode};
use crate::ledger::StoreError;
use crate::ledger::aggregate::Aggregate;
use crate::ledger::codec::to_json;
use crate::ledger::plans::PlanScope;
use crate::storage::transfer::{Import, Item, SeenEntry, TransferError};

/// Whether anything but the genesis head `PgStore::open` writes is stored: every table of
/// migration 2 but `audit_head`, which is read apart.
const ANY_ROW: &str = "SELECT EXISTS (SELECT 1 FROM ledger_hwm) \
    OR EXISTS (SELECT 1 FROM ledger_raw) OR EXISTS (SELECT 1 FROM ledger_rejected) \
    OR EXISTS (SELECT 1 FROM ledger_run_agg) OR EXISTS (SELECT 1 FROM ledger_model_agg) \
    OR EXISTS (SELECT 1 FROM ledger_unattributed) OR EXISTS (SELECT 1 FROM ledger_run_agents) \
    OR EXISTS (SELECT 1 FROM ledger_run_nodes) OR EXISTS (SELECT 1 FROM ledger_model_agents) \
    OR EXISTS (SELECT 1 FROM ledger_model_nodes) OR EXISTS (SELECT 1 FROM ledger_declarations) \
    OR EXISTS (SELECT 1 FROM ledger_run_rollups) \
    OR EXISTS (SELECT 1 FROM ledger_unattributed_rollups) \
    OR EXISTS (SELECT 1 FROM ledger_registry) OR EXISTS (SELECT 1 FROM ledger_plans) \
    OR EXISTS (SELECT 1 FROM ledger_agents) OR EXISTS (SELECT 1 FROM ledger_meta) \
    OR EXISTS (SELECT 1 FROM compliance_clocks) OR EXISTS (SELECT 1 FROM compliance_alerts) \
    OR EXISTS (SELECT 1 FROM compliance_outbox) OR EXISTS (SELECT 1 FROM compliance_meta) \
    OR EXISTS (SELECT 1 FROM audit_log)";

/// The headline columns' upsert, shared by the three aggregate tables.
const SET_HEADLINE: &str = "doc = EXCLUDED.doc, flop_low = EXCLUDED.flop_low, \
    flop_central = EXCLUDED.flop_central, flop_high = EXCLUDED.flop_high, \
    gpu_ms = EXCLUDED.gpu_ms, energy_mj = EXCLUDED.energy_mj, records = EXCLUDED.records";

/// One statement of a chunk's transaction.
struct Statement {
    sql: String,
    params: Vec<Param>,
}

fn write(e: StoreError) -> TransferError {
    TransferError::Write(Box::new(e))
}

fn write_compliance(e: ComplianceStoreError) -> TransferError {
    TransferError::WriteCompliance(Box::new(e))
}

fn p<T: ToSql + Send + Sync + 'static>(v: T) -> Param {
    Box::new(v)
}

/// Raw batches' columns: agent, first seq, last event ms, node, record count, batch.
type RawRows = (
    Vec<String>,
    Vec<String>,
    Vec<i64>,
    Vec<String>,
    Vec<i32>,
    Vec<Vec<u8>>,
);

/// The rows of one chunk, column by column, per table.
#[derive(Default)]
struct Columns {
    raw: RawRows,
    hwm: (Vec<String>, Vec<String>),
    runs: (Vec<String>, Vec<String>, Vec<Aggregate>),
    models: (Vec<String>, Vec<Aggregate>),
    unattributed: (Vec<String>, Vec<String>, Vec<i64>, Vec<Aggregate>),
    run_agents: (Vec<String>, Vec<String>, Vec<String>),
    run_nodes: (Vec<String>, Vec<String>, Vec<String>),
    model_agents: (Vec<String>, Vec<String>),
    model_nodes: (Vec<String>, Vec<String>),
    declarations: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    rejected: (Vec<String>, Vec<String>, Vec<String>, Vec<Vec<u8>>),
    run_rollups: (Vec<String>, Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    unattributed_rollups: (Vec<String>, Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    registry: (Vec<String>, Vec<Vec<u8>>),
    plans: (Vec<String>, Vec<i16>, Vec<String>, Vec<Vec<u8>>),
    agents: (Vec<String>, Vec<Vec<u8>>),
    ledger_meta: (Vec<String>, Vec<Vec<u8>>),
    clocks: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    alerts: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    outbox: (Vec<String>, Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    compliance_meta: (Vec<String>, Vec<Vec<u8>>),
    audit: (Vec<i64>, Vec<Vec<u8>>),
    head: Option<Vec<u8>>,
}

impl Columns {
    fn add(&mut self, item: Item) -> Result<(), TransferError> {
        match item {
            Item::RawBatch { id, batch } => {
                let r = &mut self.raw;
                r.0.push(id.agent_id);
                r.1.push(num(id.first_seq));
                // The latest event, as the store's own write computes it (rollups select
                // on it).
                r.2.push(
                    batch
                        .records
                        .iter()
                        .map(|x| x.end_unix_ms)
                        .fold(0, i64::max),
                );
                r.3.push(batch.node.clone());
                r.4.push(i32::try_from(batch.records.len()).unwrap_or(i32::MAX));
                r.5.push(batch.encode_to_vec());
            }
            Item::HighWaterMark { agent, seq } => {
                self.hwm.0.push(agent);
                self.hwm.1.push(num(seq));
            }
            Item::RunAggregate {
                model,
                run,
                aggregate,
            } => {
                self.runs.0.push(model);
                self.runs.1.push(run);
                self.runs.2.push(aggregate);
            }
            Item::ModelAggregate { model, aggregate } => {
                self.models.0.push(model);
                self.models.1.push(aggregate);
            }
            Item::Unattributed {
                node,
                gpu_type,
                day,
                aggregate,
            } => {
                let u = &mut self.unattributed;
                u.0.push(node);
                u.1.push(gpu_type);
                u.2.push(day);
                u.3.push(aggregate);
            }
            Item::Seen(SeenEntry::RunAgent { model, run, agent }) => {
                let s = &mut self.run_agents;
                s.0.push(model);
                s.1.push(run);
                s.2.push(agent);
            }
            Item::Seen(SeenEntry::RunNode { model, run, node }) => {
                let s = &mut self.run_nodes;
                s.0.push(model);
                s.1.push(run);
                s.2.push(node);
            }
            Item::Seen(SeenEntry::ModelAgent { model, agent }) => {
                self.model_agents.0.push(model);
                self.model_agents.1.push(agent);
            }
            Item::Seen(SeenEntry::ModelNode { model, node }) => {
                self.model_nodes.0.push(model);
                self.model_nodes.1.push(node);
            }
            Item::Declaration {
                model,
                run,
                declaration,
            } => {
                let d = &mut self.declarations;
                d.0.push(model);
                d.1.push(run);
                d.2.push(to_json(&declaration, "run declaration").map_err(write)?);
            }
            Item::Rejected {
                agent,
                seq,
                rejection,
            } => {
                let r = &mut self.rejected;
                r.0.push(agent);
                r.1.push(num(seq));
                r.2.push(rejection.reason.clone());
                r.3.push(rejection.encode_to_vec());
            }
            Item::RunRollup {
                model,
                run,
                hour,
                rollup,
            } => {
                let r = &mut self.run_rollups;
                r.0.push(model);
                r.1.push(run);
                r.2.push(hour);
                r.3.push(to_json(&rollup, "rollup").map_err(write)?);
            }
            Item::UnattributedRollup {
                node,
                gpu_type,
                hour,
                rollup,
            } => {
                let r = &mut self.unattributed_rollups;
                r.0.push(node);
                r.1.push(gpu_type);
                r.2.push(hour);
                r.3.push(to_json(&rollup, "rollup").map_err(write)?);
            }
            Item::ModelEntry(e) => {
                self.registry
                    .1
                    .push(to_json(&e, "model entry").map_err(write)?);
                self.registry.0.push(e.model);
            }
            Item::PlanHistory {
                model,
                scope,
                history,
            } => {
                let (scope, run) = match scope {
                    PlanScope::Registry => (0, String::new()),
                    PlanScope::Run(run) => (1, run),
                };
                let pl = &mut self.plans;
                pl.0.push(model);
                pl.1.push(scope);
                pl.2.push(run);
                pl.3.push(to_json(&history, "plan history").map_err(write)?);
            }
            Item::Agent(a) => {
                self.agents.1.push(to_json(&a, "agent").map_err(write)?);
                self.agents.0.push(a.agent_id);
            }
            Item::StagePolicy(policy) => {
                self.ledger_meta.0.push("stage_policy".into());
                self.ledger_meta
                    .1
                    .push(to_json(&policy, "stage policy").map_err(write)?);
            }
            Item::Clock(c) => {
                self.clocks
                    .2
                    .push(encode(&c, "clock").map_err(write_compliance)?);
                self.clocks.0.push(c.model);
                self.clocks.1.push(c.threshold_id);
            }
            Item::Alert(a) => {
                self.alerts
                    .2
                    .push(encode(&a, "alert").map_err(write_compliance)?);
                self.alerts.0.push(a.model);
                self.alerts.1.push(a.threshold_id);
            }
            Item::Outbox(o) => {
                let doc = encode(&o, "outbox item").map_err(write_compliance)?;
                let ob = &mut self.outbox;
                ob.2.push(seq_index(o.seq));
                ob.3.push(doc);
                ob.0.push(o.sink);
                ob.1.push(o.key);
            }
            Item::ComplianceMeta { name, value } => {
                self.compliance_meta.0.push(name);
                self.compliance_meta.1.push(value);
            }
            Item::AuditEntry(e) => {
                self.audit.0.push(seq_index(e.seq));
                self.audit
                    .1
                    .push(encode(&e, "audit entry").map_err(write_compliance)?);
            }
            Item::AuditHead(h) => {
                self.head = Some(encode(&h, "audit head").map_err(write_compliance)?);
            }
        }
        Ok(())
    }

    /// The chunk's statements, one per table it touches.
    fn statements(self) -> Result<Vec<Statement>, TransferError> {
        let mut out = Vec::new();
        let mut push = |sql: String, params: Vec<Param>| out.push(Statement { sql, params });
        let Columns {
            raw,
            hwm,
            runs,
            models,
            unattributed,
            run_agents,
            run_nodes,
            model_agents,
            model_nodes,
            declarations,
            rejected,
            run_rollups,
            unattributed_rollups,
            registry,
            plans,
            agents,
            ledger_meta,
            clocks,
            alerts,
            outbox,
            compliance_meta,
            audit,
            head,
        } = self;
        if let Some(h) = head {
            push(
                "INSERT INTO audit_head (only_row, head) VALUES (true, $1) \
                 ON CONFLICT (only_row) DO UPDATE SET head = EXCLUDED.head"
                    .into(),
                vec![p(h)],
            );
        }
        if !raw.0.is_empty() {
            push(
                "INSERT INTO ledger_raw (agent, first_seq, last_event_ms, node, records, batch) \
                 SELECT a, f::numeric, l, n, c, b FROM unnest($1::text[], $2::text[], \
                     $3::bigint[], $4::text[], $5::int[], $6::bytea[]) AS u(a, f, l, n, c, b) \
                 ON CONFLICT (agent, first_seq) DO UPDATE SET \
                     last_event_ms = EXCLUDED.last_event_ms, node = EXCLUDED.node, \
                     records = EXCLUDED.records, batch = EXCLUDED.batch"
                    .into(),
                vec![p(raw.0), p(raw.1), p(raw.2), p(raw.3), p(raw.4), p(raw.5)],
            );
        }
        if !hwm.0.is_empty() {
            push(
                "INSERT INTO ledger_hwm (agent, seq) \
                 SELECT a, s::numeric FROM unnest($1::text[], $2::text[]) AS u(a, s) \
                 ON CONFLICT (agent) DO UPDATE SET seq = EXCLUDED.seq"
                    .into(),
                vec![p(hwm.0), p(hwm.1)],
            );
        }
        let headline = |aggs: &[Aggregate], what| -> Result<Vec<Param>, TransferError> {
            let h = Headline::of(aggs.iter(), what).map_err(write)?;
            Ok(vec![
                p(h.docs),
                p(h.low),
                p(h.central),
                p(h.high),
                p(h.gpu_ms),
                p(h.energy),
                p(h.records),
            ])
        };
        if !runs.0.is_empty() {
            let mut params = vec![p(runs.0), p(runs.1)];
            params.extend(headline(&runs.2, "run aggregate")?);
            push(
                format!(
                    "INSERT INTO ledger_run_agg (model, run, doc, flop_low, flop_central, \
                         flop_high, gpu_ms, energy_mj, records) \
                     SELECT m, r, doc, fl::numeric, fc::numeric, fh::numeric, g::numeric, \
                         e::numeric, n \
                     FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::text[], $9::bigint[]) \
                         AS u(m, r, doc, fl, fc, fh, g, e, n) \
                     ON CONFLICT (model, run) DO UPDATE SET {SET_HEADLINE}"
                ),
                params,
            );
        }
        if !models.0.is_empty() {
            let mut params = vec![p(models.0)];
            params.extend(headline(&models.1, "model aggregate")?);
            push(
                format!(
                    "INSERT INTO ledger_model_agg (model, doc, flop_low, flop_central, \
                         flop_high, gpu_ms, energy_mj, records) \
                     SELECT m, doc, fl::numeric, fc::numeric, fh::numeric, g::numeric, \
                         e::numeric, n \
                     FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::bigint[]) AS u(m, doc, fl, fc, fh, g, e, n) \
                     ON CONFLICT (model) DO UPDATE SET {SET_HEADLINE}"
                ),
                params,
            );
        }
        if !unattributed.0.is_empty() {
            let mut params = vec![p(unattributed.0), p(unattributed.1), p(unattributed.2)];
            params.extend(headline(&unattributed.3, "unattributed aggregate")?);
            push(
                format!(
                    "INSERT INTO ledger_unattributed (node, gpu_type, day, doc, flop_low, \
                         flop_central, flop_high, gpu_ms, energy_mj, records) \
                     SELECT nd, gt, d, doc, fl::numeric, fc::numeric, fh::numeric, \
                         g::numeric, e::numeric, n \
                     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], \
                         $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                         $10::bigint[]) AS u(nd, gt, d, doc, fl, fc, fh, g, e, n) \
                     ON CONFLICT (node, gpu_type, day) DO UPDATE SET {SET_HEADLINE}"
                ),
                params,
            );
        }
        for (table, cols, rows) in [
            ("ledger_run_agents", "model, run, agent", run_agents),
            ("ledger_run_nodes", "model, run, node", run_nodes),
        ] {
            if !rows.0.is_empty() {
                push(
                    format!(
                        "INSERT INTO {table} ({cols}) \
                         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
                         ON CONFLICT DO NOTHING"
                    ),
                    vec![p(rows.0), p(rows.1), p(rows.2)],
                );
            }
        }
        for (table, cols, rows) in [
            ("ledger_model_agents", "model, agent", model_agents),
            ("ledger_model_nodes", "model, node", model_nodes),
        ] {
            if !rows.0.is_empty() {
                push(
                    format!(
                        "INSERT INTO {table} ({cols}) \
                         SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
                    ),
                    vec![p(rows.0), p(rows.1)],
                );
            }
        }
        // (table, key columns, value column, rows) of the tables keyed by two texts.
        for (table, keys, value, rows) in [
            ("ledger_declarations", "model, run", "doc", declarations),
            ("compliance_clocks", "model, threshold", "doc", clocks),
            ("compliance_alerts", "model, threshold", "doc", alerts),
        ] {
            if !rows.0.is_empty() {
                push(
                    format!(
                        "INSERT INTO {table} ({keys}, {value}) \
                         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                         ON CONFLICT ({keys}) DO UPDATE SET {value} = EXCLUDED.{value}"
                    ),
                    vec![p(rows.0), p(rows.1), p(rows.2)],
                );
            }
        }
        // The tables keyed by one text.
        for (table, key, value, rows) in [
            ("ledger_registry", "model", "doc", registry),
            ("ledger_agents", "agent", "doc", agents),
            ("ledger_meta", "name", "doc", ledger_meta),
            ("compliance_meta", "name", "value", compliance_meta),
        ] {
            if !rows.0.is_empty() {
                push(
                    format!(
                        "INSERT INTO {table} ({key}, {value}) \
                         SELECT * FROM unnest($1::text[], $2::bytea[]) \
                         ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
                    ),
                    vec![p(rows.0), p(rows.1)],
                );
            }
        }
        if !rejected.0.is_empty() {
            push(
                "INSERT INTO ledger_rejected (agent, seq, reason, rejection) \
                 SELECT a, s::numeric, r, d FROM unnest($1::text[], $2::text[], $3::text[], \
                     $4::bytea[]) AS u(a, s, r, d) \
                 ON CONFLICT (agent, seq) DO UPDATE SET reason = EXCLUDED.reason, \
                     rejection = EXCLUDED.rejection"
                    .into(),
                vec![p(rejected.0), p(rejected.1), p(rejected.2), p(rejected.3)],
            );
        }
        for (table, cols, rows) in [
            ("ledger_run_rollups", "model, run", run_rollups),
            (
                "ledger_unattributed_rollups",
                "node, gpu_type",
                unattributed_rollups,
            ),
        ] {
            if !rows.0.is_empty() {
                push(
                    format!(
                        "INSERT INTO {table} ({cols}, hour, doc) \
                         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], \
                             $4::bytea[]) \
                         ON CONFLICT ({cols}, hour) DO UPDATE SET doc = EXCLUDED.doc"
                    ),
                    vec![p(rows.0), p(rows.1), p(rows.2), p(rows.3)],
                );
            }
        }
        if !plans.0.is_empty() {
            push(
                "INSERT INTO ledger_plans (model, scope, run, doc) \
                 SELECT * FROM unnest($1::text[], $2::smallint[], $3::text[], $4::bytea[]) \
                 ON CONFLICT (model, scope, run) DO UPDATE SET doc = EXCLUDED.doc"
                    .into(),
                vec![p(plans.0), p(plans.1), p(plans.2), p(plans.3)],
            );
        }
        if !outbox.0.is_empty() {
            push(
                "INSERT INTO compliance_outbox (sink, key, seq, doc) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[]) \
                 ON CONFLICT (sink, key) DO UPDATE SET seq = EXCLUDED.seq, doc = EXCLUDED.doc"
                    .into(),
                vec![p(outbox.0), p(outbox.1), p(outbox.2), p(outbox.3)],
            );
        }
        if !audit.0.is_empty() {
            push(
                "INSERT INTO audit_log (idx, entry) \
                 SELECT * FROM unnest($1::bigint[], $2::bytea[]) \
                 ON CONFLICT (idx) DO UPDATE SET entry = EXCLUDED.entry"
                    .into(),
                vec![p(audit.0), p(audit.1)],
            );
        }
        Ok(out)
    }
}

impl Import for PgStore {
    fn is_empty(&self) -> Result<bool, TransferError> {
        let rows = self.rows::<StoreError>(ANY_ROW, vec![]).map_err(write)?;
        let any: bool = rows.first().is_some_and(|r| r.get(0));
        let head =
            crate::compliance::store::ComplianceStore::head(self).map_err(write_compliance)?;
        Ok(!any && head == flopmeter_core::audit::ChainHead::genesis())
    }

    fn import(&self, items: Vec<Item>) -> Result<(), TransferError> {
        let mut columns = Columns::default();
        for item in items {
            columns.add(item)?;
        }
        let statements = Arc::new(columns.statements()?);
        work::run(&self.db, move |mut conn, sent: CommitSent| {
            let statements = statements.clone();
            async move {
                let tx = conn.transaction().await?;
                for s in statements.iter() {
                    let refs: Vec<&(dyn ToSql + Sync)> = s
                        .params
                        .iter()
                        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                        .collect();
                    tx.execute(s.sql.as_str(), &refs).await?;
                }
                sent.mark();
                tx.commit().await.map_err(|e| commit_failure(e.into()))?;
                Ok::<_, TxError<StoreError>>(())
            }
        })
        .map_err(|e| write(e.into()))
    }

    /// Nothing to do: each chunk's transaction was durable when its COMMIT returned.
    fn finish(&self) -> Result<(), TransferError> {
        Ok(())
    }
}
