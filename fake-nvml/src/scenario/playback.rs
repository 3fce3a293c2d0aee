//! What a scenario plays at a given time, and the ground truth it stands for: the true FLOP
//! of a GPU or MIG instance over an interval (the scenario's own arithmetic, never the
//! estimator under test), GPM means, energy, faults.

use super::*;

impl Scenario {
    /// The true FLOP GPU `gpu` executed over scenario time `[t0, t1]`:
    /// `∫ Σ_pipe util_pipe(t)/100 · SMs · rate_pipe · f_SM(t)·10^6 dt`, integrated exactly.
    /// For a GPU in MIG mode, the sum over its instances ([`Scenario::true_flop_mig`]).
    pub fn true_flop(&self, gpu: usize, t0: f64, t1: f64) -> Result<f64, TruthError> {
        let g = self.gpus.get(gpu).ok_or(TruthError::NoGpu(gpu))?;
        if g.mig_enabled() {
            return (0..g.mig.len())
                .map(|i| self.true_flop_mig(gpu, i, t0, t1))
                .sum();
        }
        let truth = g.truth.as_ref().ok_or(TruthError::NoTruth(gpu))?;
        Ok(pipe_flop(
            truth,
            &g.metrics,
            &g.metrics.sm_clock_mhz,
            g.sm_count,
            t0,
            t1,
        ))
    }

    /// The true FLOP MIG instance `instance` (index in the GPU's `[[gpu.mig]]` list) of GPU
    /// `gpu` executed over `[t0, t1]`: its own activity curves over its own SMs, at the
    /// GPU's clock, during its lifetime only.
    pub fn true_flop_mig(
        &self,
        gpu: usize,
        instance: usize,
        t0: f64,
        t1: f64,
    ) -> Result<f64, TruthError> {
        let g = self.gpus.get(gpu).ok_or(TruthError::NoGpu(gpu))?;
        let truth = g.truth.as_ref().ok_or(TruthError::NoTruth(gpu))?;
        let m = g.mig.get(instance).ok_or(TruthError::NoGpu(gpu))?;
        let a = t0.max(m.from.unwrap_or(f64::NEG_INFINITY));
        let b = t1.min(m.until.unwrap_or(f64::INFINITY));
        if b <= a {
            return Ok(0.0);
        }
        Ok(pipe_flop(
            truth,
            &m.metrics,
            &g.metrics.sm_clock_mhz,
            m.sm_count,
            a,
            b,
        ))
    }

    /// The mean of a GPM metric over `[t0, t1]` as NVML reports it, or `None` for a metric
    /// the fake does not compute. `instance`: a MIG instance's own metric (percent of its
    /// SMs). For the whole GPU in MIG mode: the SM-weighted sum over the instances (each
    /// counting only while it exists), which is what an all-SM average measures.
    pub fn gpm_mean(
        &self,
        gpu: usize,
        instance: Option<usize>,
        metric: u32,
        t0: f64,
        t1: f64,
    ) -> Option<f64> {
        let g = self.gpus.get(gpu)?;
        let mean_over_life = |m: &MigInstance| -> Option<f64> {
            let c = metric_curve(&m.metrics, metric)?;
            if t1 <= t0 {
                return Some(if m.exists_at(t0) { c.at(t0) } else { 0.0 });
            }
            let a = t0.max(m.from.unwrap_or(f64::NEG_INFINITY));
            let b = t1.min(m.until.unwrap_or(f64::INFINITY));
            Some(if b > a {
                c.integral(a, b) / (t1 - t0)
            } else {
                0.0
            })
        };
        match instance {
            Some(i) => mean_over_life(g.mig.get(i)?),
            None if g.mig_enabled() => {
                let mut sum = 0.0;
                for m in &g.mig {
                    sum += mean_over_life(m)? * f64::from(m.sm_count) / f64::from(g.sm_count);
                }
                Some(sum)
            }
            None => Some(metric_curve(&g.metrics, metric)?.mean(t0, t1)),
        }
    }

    /// The curve behind a GPM metric id, if the fake computes that metric.
    pub fn gpm_curve(&self, gpu: usize, metric: u32) -> Option<&Curve> {
        metric_curve(&self.gpus.get(gpu)?.metrics, metric)
    }

    /// The scenario time of the last driver reload at or before `t` (0 if none).
    pub fn last_reload(&self, t: f64) -> f64 {
        self.driver_reloads
            .iter()
            .map(|r| r.at)
            .filter(|&at| at <= t)
            .fold(0.0, f64::max)
    }
}

fn pipe_flop(truth: &Truth, m: &Metrics, clock: &Curve, sm_count: u32, t0: f64, t1: f64) -> f64 {
    let per_percent_mhz = f64::from(sm_count) * 1e6 / 100.0;
    let pipes = [
        (&m.tensor_util, truth.tensor_flop_per_clk_per_sm),
        (&m.fp32_util, truth.fp32_flop_per_clk_per_sm),
        (&m.fp16_util, truth.fp16_flop_per_clk_per_sm),
        (&m.fp64_util, truth.fp64_flop_per_clk_per_sm),
    ];
    pipes
        .iter()
        .filter(|(_, rate)| *rate != 0.0)
        .map(|(util, rate)| rate * per_percent_mhz * integral_of_product(util, clock, t0, t1))
        .sum()
}

fn metric_curve(m: &Metrics, metric: u32) -> Option<&Curve> {
    Some(match metric {
        gpm_metric::GRAPHICS_UTIL => &m.gpu_util,
        gpm_metric::SM_UTIL => &m.sm_util,
        gpm_metric::ANY_TENSOR_UTIL => &m.tensor_util,
        gpm_metric::DFMA_TENSOR_UTIL => &m.dfma_util,
        gpm_metric::HMMA_TENSOR_UTIL => &m.hmma_util,
        gpm_metric::IMMA_TENSOR_UTIL => &m.imma_util,
        gpm_metric::FP64_UTIL => &m.fp64_util,
        gpm_metric::FP32_UTIL => &m.fp32_util,
        gpm_metric::FP16_UTIL => &m.fp16_util,
        _ => return None,
    })
}

impl Scenario {
    /// The energy counter in millijoules: the exact integral of power since init, or since
    /// the last driver reload (`[[driver_reload]]`), which restarts the counter as a real
    /// driver does.
    pub fn energy_mj(&self, gpu: usize, t: f64) -> Option<u64> {
        let g = self.gpus.get(gpu)?;
        let mut t = t.max(0.0);
        if let Some(f) = self
            .faults
            .energy_frozen
            .iter()
            .find(|f| f.gpu as usize == gpu && t >= f.from && f.until.is_none_or(|u| t < u))
        {
            t = f.from;
        }
        let joules = g.metrics.power_w.integral(self.last_reload(t), t);
        Some((joules * 1e3).max(0.0).floor() as u64)
    }

    /// The error code injected for `function` on `gpu` (None for system calls) at `t`.
    pub fn function_fault(&self, function: &str, gpu: Option<u32>, t: f64) -> Option<u32> {
        self.faults
            .errors
            .iter()
            .find(|f| {
                f.function == function
                    && (f.gpu.is_none() || f.gpu == gpu)
                    && f.from.is_none_or(|from| t >= from)
                    && f.until.is_none_or(|until| t < until)
            })
            .map(|f| f.code)
    }

    /// Whether `gpu` is off the bus at `t`.
    pub fn is_lost(&self, gpu: u32, t: f64) -> bool {
        self.faults
            .lost
            .iter()
            .any(|l| l.gpu == gpu && t >= l.at && l.recovered_at.is_none_or(|r| t < r))
    }

    /// The per-metric error injected for a GPM metric on `gpu`.
    pub fn gpm_metric_fault(&self, gpu: u32, metric: u32) -> Option<u32> {
        self.faults
            .gpm_metric_errors
            .iter()
            .find(|m| m.metric == metric && m.gpu.is_none_or(|g| g == gpu))
            .map(|m| m.code)
    }
}
