//! Online and offline verification: the scan of everything stored at a cut, then what was
//! applied since, compared with the aggregates as they are now.

use std::collections::{BTreeMap, BTreeSet};

use super::{SledStore, malformed};
use crate::ledger::aggregate::{Aggregate, Attribution, attribution, gpu_type_of};
use crate::ledger::codec::{Rollup, StoredBatch, from_json, from_proto};
use crate::ledger::keys::{self, DAY_MS, ROLLUP_RUN, ROLLUP_UNATTRIBUTED, Seen};
use crate::ledger::verify::{
    VerifyCut, VerifyReport, VerifyScan, compare, compare_marks, compare_seen,
};
use crate::ledger::{LedgerStore, StoreError};

pub(super) fn verify_scan(store: &SledStore, cut: VerifyCut) -> Result<VerifyScan, StoreError> {
    let mut scan = VerifyScan {
        cut,
        ..VerifyScan::default()
    };
    // A key numbered above the cut was written after it (step 3 reads it); one of an
    // agent without a mark is remembered, to tell a new agent from damage in step 3.
    let below_cut =
        |scan: &mut VerifyScan, k: &[u8]| -> Result<Option<(String, u64)>, StoreError> {
            let (agent, seq) = keys::split_agent_seq(k)
                .ok_or_else(|| malformed("raw batch or rejection key", "not agent/sequence"))?;
            match scan.cut.marks.get(&agent) {
                Some(&at_cut) => Ok((seq <= at_cut).then_some((agent, seq))),
                None => {
                    let m = scan.unmarked.entry(agent).or_default();
                    *m = (*m).max(seq);
                    Ok(None)
                }
            }
        };
    for kv in store.raw.iter() {
        let (k, v) = kv?;
        let Some((agent, _)) = below_cut(&mut scan, &k)? else {
            continue;
        };
        let batch: StoredBatch = from_proto(&v, "raw batch")?;
        if let Some(last) = batch.records.last() {
            let m = scan.max_seq.entry(agent).or_default();
            *m = (*m).max(last.seq);
        }
        scan.recomputed.add_raw(&batch);
    }
    for k in store.rejected.iter().keys() {
        if let Some((agent, seq)) = below_cut(&mut scan, &k?)? {
            let m = scan.max_seq.entry(agent).or_default();
            *m = (*m).max(seq);
        }
    }
    for kv in store.rollups.iter() {
        let (k, v) = kv?;
        let r: Rollup = from_json(&v, "rollup")?;
        let rc = &mut scan.recomputed;
        match keys::split_bucket(&k, 3) {
            Some((p, _)) if p[0] == ROLLUP_RUN => rc.add_run_rollup(&p[1], &p[2], &r),
            Some((p, hour)) if p[0] == ROLLUP_UNATTRIBUTED => {
                rc.add_unattributed_rollup(&p[1], &p[2], hour, &r)
            }
            _ => scan.mismatches.push(format!(
                "rollup key {k:?} is not a run or unattributed scope"
            )),
        }
    }
    for kv in store.run_agg.iter() {
        let (k, v) = kv?;
        let p = keys::split(&k);
        let id = (p[0].clone(), p.get(1).cloned().unwrap_or_default());
        scan.runs
            .insert(id, from_json::<Aggregate>(&v, "run aggregate")?);
    }
    for kv in store.model_agg.iter() {
        let (k, v) = kv?;
        let m = String::from_utf8_lossy(&k).into_owned();
        scan.models
            .insert(m, from_json::<Aggregate>(&v, "model aggregate")?);
    }
    for kv in store.unattributed.iter() {
        let (k, v) = kv?;
        let (p, day) = keys::split_bucket(&k, 2)
            .ok_or_else(|| malformed("unattributed key", "not node/gpu-type/day"))?;
        scan.unattributed.insert(
            (p[0].clone(), p[1].clone(), day),
            from_json::<Aggregate>(&v, "unattributed aggregate")?,
        );
    }
    for k in store.seen.iter().keys() {
        scan.seen.insert(k?.to_vec());
    }
    Ok(scan)
}

pub(super) fn verify_finish(
    store: &SledStore,
    mut scan: VerifyScan,
) -> Result<VerifyReport, StoreError> {
    // What was applied since the cut: raw batches and rejections numbered above it.
    let mut touched_runs = BTreeSet::new();
    let mut touched_models = BTreeSet::new();
    let mut touched_buckets = BTreeSet::new();
    let marks_now = store.high_water_marks()?;
    for (agent, seq) in &scan.unmarked {
        if !marks_now.iter().any(|(a, _)| a == agent) {
            scan.mismatches.push(format!(
                "agent {agent}: record {seq} is stored but the agent has no high-water mark"
            ));
        }
    }
    for (agent, now) in marks_now {
        let at_cut = scan.cut.marks.get(&agent).copied().unwrap_or(0);
        if now <= at_cut {
            continue;
        }
        let from = keys::agent_seq(&agent, at_cut + 1);
        let to = keys::agent_seq(&agent, u64::MAX);
        for kv in store.raw.range(from.clone()..=to.clone()) {
            let (_, v) = kv?;
            let batch: StoredBatch = from_proto(&v, "raw batch")?;
            if let Some(last) = batch.records.last() {
                let m = scan.max_seq.entry(agent.clone()).or_default();
                *m = (*m).max(last.seq);
            }
            for rec in &batch.records {
                match attribution(rec) {
                    Attribution::Run { model, run } => {
                        touched_runs.insert((model.to_string(), run.to_string()));
                        touched_models.insert(model.to_string());
                    }
                    Attribution::Unattributed => {
                        touched_buckets.insert((
                            batch.node.clone(),
                            gpu_type_of(rec).to_string(),
                            rec.start_unix_ms.div_euclid(DAY_MS),
                        ));
                    }
                }
            }
            scan.recomputed.add_raw(&batch);
        }
        for k in store.rejected.range(from..=to).keys() {
            if let Some((a, seq)) = keys::split_agent_seq(&k?) {
                let m = scan.max_seq.entry(a).or_default();
                *m = (*m).max(seq);
            }
        }
    }
    // Read again what those batches touched, as it is now.
    for id in &touched_runs {
        match SledStore::get_json(
            &store.run_agg,
            &keys::join(&[&id.0, &id.1]),
            "run aggregate",
        )? {
            Some(a) => scan.runs.insert(id.clone(), a),
            None => scan.runs.remove(id),
        };
    }
    for m in &touched_models {
        match SledStore::get_json(&store.model_agg, m.as_bytes(), "model aggregate")? {
            Some(a) => scan.models.insert(m.clone(), a),
            None => scan.models.remove(m),
        };
        for tag in [
            Seen::RunAgent,
            Seen::RunNode,
            Seen::ModelAgent,
            Seen::ModelNode,
        ] {
            let prefix = tag.prefix(&[m]);
            let stale: Vec<Vec<u8>> = scan
                .seen
                .range(prefix.clone()..)
                .take_while(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in stale {
                scan.seen.remove(&k);
            }
            for k in store.seen.scan_prefix(&prefix).keys() {
                scan.seen.insert(k?.to_vec());
            }
        }
    }
    for (node, gpu, day) in &touched_buckets {
        let key = keys::with_bucket(&[node, gpu], *day);
        let id = (node.clone(), gpu.clone(), *day);
        match SledStore::get_json(&store.unattributed, &key, "unattributed aggregate")? {
            Some(a) => scan.unattributed.insert(id, a),
            None => scan.unattributed.remove(&id),
        };
    }

    let mut rc = scan.recomputed;
    rc.finish();
    let mut report = VerifyReport {
        mismatches: scan.mismatches,
        ..VerifyReport::default()
    };
    let m = &mut report.mismatches;
    compare("run", &scan.runs, &rc.runs, |(a, b)| format!("{a}/{b}"), m);
    compare("model", &scan.models, &rc.models, |a| a.clone(), m);
    compare(
        "unattributed",
        &scan.unattributed,
        &rc.unattributed,
        |(n, g, d)| format!("{n}/{g}/day {d}"),
        m,
    );

    compare_seen(&scan.seen, &rc, m);
    let marks = scan
        .max_seq
        .keys()
        .map(|a| Ok((a.clone(), store.high_water_mark(a)?)))
        .collect::<Result<BTreeMap<_, _>, StoreError>>()?;
    compare_marks(
        scan.max_seq.iter().map(|(a, s)| (a.as_str(), *s)),
        &marks,
        m,
    );
    report.raw_batches = rc.raw_batches;
    report.raw_records = rc.raw_records;
    report.rollups = rc.rollups;
    report.runs = scan.runs.len() as u64;
    report.models = scan.models.len() as u64;
    report.unattributed_buckets = scan.unattributed.len() as u64;
    Ok(report)
}
