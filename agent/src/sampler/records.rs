//! Closing an interval: the accumulators as interval records, appended to the spool with any
//! held ones, and what happens when the spool refuses.

use super::*;
use std::time::Duration;

use flopmeter_proto::v1;

use crate::attribution::Source;
use crate::spool::SpoolError;

impl Sampler {
    /// Turns the accumulators into records and appends them, with any records held from
    /// earlier refusals, to the spool. With `last` (shutdown) a refusing spool is written past
    /// its cap: the process is about to exit and memory would be lost.
    pub fn flush(&mut self, now_ms: i64, last: bool) -> FlushOutcome {
        if self.open.is_empty() && self.held.is_empty() {
            self.metrics.sampler_held_series.set(0);
            if self.cfg.replay.is_some()
                && let Err(e) = self.spool.append_replay(&mut [], now_ms, false)
            {
                // Only the position: the next boundary writes it again.
                tracing::warn!(error = %e, "could not record the replay position");
            }
            return FlushOutcome::Empty;
        }
        let held = self.held.len();
        let mut records = std::mem::take(&mut self.held);
        records.extend(self.records());
        let total = records.len();
        let mut result = self.append_chunked(&mut records, now_ms, false);
        if let Err(e) = &result {
            let over_ceiling = records.len() > self.cfg.max_held_records;
            if last || over_ceiling {
                tracing::error!(
                    error = %e,
                    records = records.len(),
                    "spool refused records and they can no longer be held in memory; \
                     writing past the spool cap"
                );
                result = self.append_chunked(&mut records, now_ms, true);
            }
        }
        let written = total - records.len();
        self.metrics.records_spooled_total.inc_by(written as u64);
        match result {
            Ok(()) => {
                self.metrics.sampler_held_series.set(0);
                self.open.clear();
                FlushOutcome::Written(written)
            }
            Err(e) => {
                if !matches!(e, SpoolError::Full { .. }) {
                    tracing::error!(error = %e, "spool append failed; holding records in memory");
                }
                // Keep accumulating into the open interval, unless it already spans as much
                // as one record may (the collector rejects longer ones): then close it into
                // the held queue and start a new one.
                let open_since = self
                    .open
                    .values()
                    .map(|a| a.start_ms)
                    .min()
                    .unwrap_or(now_ms);
                let span = Duration::from_millis(u64::try_from(now_ms - open_since).unwrap_or(0));
                // Also closed when some of this interval's records were written already (a
                // chunked write that failed part-way): the rest must not be booked twice.
                if span >= self.cfg.max_record_span || written > held {
                    self.open.clear();
                } else {
                    records.truncate(held - written);
                }
                for r in &mut records {
                    r.seq = 0;
                }
                self.held = records;
                let n = self.held.len() + self.open.len();
                self.metrics
                    .sampler_held_series
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                FlushOutcome::Held
            }
        }
    }

    /// Appends `records`, removing from the front what was written. Many records (held ones)
    /// go in chunks of [`SPOOL_CHUNK`]: sled 0.34 keeps much of a huge batch's memory after
    /// writing it (a 10 000-record batch cost ~30 MB of resident memory, measured), which
    /// would defeat the ceiling the spill exists for. Replay mode without holding writes one
    /// batch, since an interval's records and its position must be one atomic write (it
    /// never holds more than one interval).
    fn append_chunked(
        &self,
        records: &mut Vec<v1::IntervalRecord>,
        now_ms: i64,
        over_cap: bool,
    ) -> Result<(), SpoolError> {
        let chunk = match self.cfg.replay {
            Some(r) if !r.hold_when_full => records.len().max(1),
            _ => SPOOL_CHUNK,
        };
        while !records.is_empty() {
            let n = records.len().min(chunk);
            match self.append(&mut records[..n], now_ms, over_cap) {
                Ok(_) => {}
                // Stored under their numbers and sent from the spool, only not durable (the
                // spool logs it and `flopmeter_agent_spool_durable` shows it): appending them
                // again would count them twice, and holding them would only delay them.
                Err(SpoolError::NotDurable { .. }) => {}
                Err(e) => return Err(e),
            }
            records.drain(..n);
        }
        Ok(())
    }

    fn append(
        &self,
        records: &mut [v1::IntervalRecord],
        now_ms: i64,
        over_cap: bool,
    ) -> Result<Option<std::ops::RangeInclusive<u64>>, SpoolError> {
        match (self.cfg.replay, over_cap) {
            (Some(_), _) => self.spool.append_replay(records, now_ms, over_cap),
            (None, false) => self.spool.append(records),
            (None, true) => self.spool.append_over_cap(records),
        }
    }

    /// The records the accumulators stand for, in a stable order (GPU, then identity).
    fn records(&self) -> Vec<v1::IntervalRecord> {
        let mut entries: Vec<(&Key, &Acc)> = self.open.iter().collect();
        entries.sort_by(|(a, _), (b, _)| {
            (
                a.gpu,
                &a.mig,
                &a.who.identity,
                a.method,
                a.precision,
                a.no_estimate,
            )
                .cmp(&(
                    b.gpu,
                    &b.mig,
                    &b.who.identity,
                    b.method,
                    b.precision,
                    b.no_estimate,
                ))
        });
        entries
            .into_iter()
            .map(|(k, a)| to_record(k, a, &self.cfg.cluster))
            .collect()
    }
}

fn to_record(k: &Key, a: &Acc, cluster: &ClusterName) -> v1::IntervalRecord {
    let id = &k.who.identity;
    let d = &k.who.declaration;
    let source = match id.source {
        Source::ProcessEnv => v1::AttributionSource::ProcessEnv,
        Source::Kubernetes => v1::AttributionSource::Kubernetes,
        Source::Slurm => v1::AttributionSource::Slurm,
        Source::Unattributed => v1::AttributionSource::Unattributed,
    };
    let declaration = (!d.is_empty()).then(|| flopmeter_proto::convert::declaration_to_wire(d));
    v1::IntervalRecord {
        seq: 0,
        start_unix_ms: a.start_ms,
        end_unix_ms: a.end_ms,
        gpu_uuid: a.uuid.clone(),
        gpu_type: a.gpu_type.to_string(),
        flop_low: a.low,
        flop_central: a.central,
        flop_high: a.high,
        gpu_ms: a.gpu_ms.round() as u64,
        energy_mj: a.energy_mj.round() as u64,
        mean_sm_clock_mhz: if a.clock_s > 0.0 {
            (a.clock_mhz_s / a.clock_s).round() as u32
        } else {
            0
        },
        mean_tensor_util: if a.seconds > 0.0 {
            a.tensor_s / a.seconds
        } else {
            0.0
        },
        method: v1::Method::from(k.method) as i32,
        precision: v1::Precision::from(k.precision) as i32,
        precision_declared: k.precision_declared,
        identity: Some(v1::WorkloadIdentity {
            model: id.model.clone(),
            run: id.run.clone(),
            stage: id.stage.clone(),
            source: source as i32,
            namespace: id.namespace.clone(),
            job: id.job.clone(),
            cluster: cluster.of_record(&id.cluster),
            user: id.user.clone(),
            process: id.process.clone(),
        }),
        approximate: a.approximate,
        declaration,
        unknown_peak: a.unknown_peak,
        no_estimate_reason: k.no_estimate.unwrap_or_default().to_string(),
        peak_conflict: a.peak_conflict,
        mig: a.mig.clone(),
        energy_from_power: a.energy_from_power,
    }
}
