//! Scenario TOML written by code: the one place tests describe a fake node.
//!
//! Tests used to paste the same H100 entry (name, PCI id, SMs, clocks, a training process)
//! into their own TOML strings, each a little different. A builder keeps the hardware in one
//! place, so a test states only what it is about (how busy, which PID, how many GPUs), and
//! what it writes is read back by [`Scenario::parse`], so the fake, the test and the ground
//! truth all see the same scenario.
//!
//! ```
//! use fake_nvml::builder::{GpuBuilder, ScenarioBuilder};
//!
//! let toml = ScenarioBuilder::new()
//!     .gpu(GpuBuilder::h100().count(2).uuid("GPU-node-a-{index}").training(4242, 45.0, 1755))
//!     .toml();
//! let scenario = fake_nvml::Scenario::parse(&toml, "example").unwrap();
//! assert_eq!(scenario.gpus.len(), 2);
//! ```
//!
//! Keys are the scenario format's own (`fake-nvml/README.md`); the builder adds no meaning of
//! its own, and anything it has no method for goes in with `set`, `metric` or `raw`.

use toml::Value;

use crate::scenario::{Scenario, ScenarioError};

/// The driver every built scenario reports unless told otherwise.
const DRIVER: &str = "550.90.07";

/// One `[section]`: keys in the order they were given, so the TOML reads like a hand-written
/// scenario.
#[derive(Debug, Clone, Default)]
struct Section(Vec<(String, Value)>);

impl Section {
    fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    fn write(&self, out: &mut String) {
        for (k, v) in &self.0 {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
}

/// A whole scenario: top-level keys, `[truth]`, the GPUs in order, and raw TOML after them.
#[derive(Debug, Clone)]
pub struct ScenarioBuilder {
    top: Section,
    truth: Section,
    gpus: Vec<GpuBuilder>,
    raw: String,
}

impl Default for ScenarioBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ScenarioBuilder {
    /// No GPUs yet; driver 550.90.07; the truth counts BF16 on Hopper's tensor pipe
    /// (4096 FLOP per clock per SM, `shared/reference/gpu-peaks.md` §2).
    pub fn new() -> Self {
        let mut top = Section::default();
        top.set("driver_version", Value::from(DRIVER));
        let mut truth = Section::default();
        truth.set("precision", Value::from("bf16"));
        truth.set("tensor_flop_per_clk_per_sm", Value::from(4096));
        ScenarioBuilder {
            top,
            truth,
            gpus: Vec::new(),
            raw: String::new(),
        }
    }

    /// A top-level key (`epoch_unix_us`, `process_count_protocol`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.top.set(key, value.into());
        self
    }

    /// A `[truth]` key (`precision`, `fp32_flop_per_clk_per_sm`, ...).
    pub fn truth(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.truth.set(key, value.into());
        self
    }

    /// Appends a `[[gpu]]` entry.
    pub fn gpu(mut self, gpu: GpuBuilder) -> Self {
        self.gpus.push(gpu);
        self
    }

    /// TOML appended after the GPUs, verbatim: `[[faults.*]]`, `[[driver_reload]]`, or
    /// `[[gpu.mig]]` for the last GPU.
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push('\n');
        self.raw.push_str(toml);
        self
    }

    /// The scenario file's text.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        self.top.write(&mut out);
        out.push_str("\n[truth]\n");
        self.truth.write(&mut out);
        for g in &self.gpus {
            g.write(&mut out);
        }
        out.push_str(&self.raw);
        out
    }

    /// The scenario as the fake reads it, for its ground truth.
    pub fn scenario(&self) -> Result<Scenario, ScenarioError> {
        Scenario::parse(&self.toml(), "ScenarioBuilder")
    }
}

/// One `[[gpu]]` entry with its `[gpu.metrics]` curves and `[[gpu.processes]]`.
#[derive(Debug, Clone)]
pub struct GpuBuilder {
    gpu: Section,
    metrics: Section,
    processes: Vec<Section>,
}

impl GpuBuilder {
    /// A GPU of this name, PCI device id, SM count and maximum SM clock, without GPM, with
    /// 80 GB of memory, idle.
    pub fn new(name: &str, pci_device_id: u16, sm_count: u32, max_sm_clock_mhz: u32) -> Self {
        let mut gpu = Section::default();
        gpu.set("name", Value::from(name));
        gpu.set("pci_device_id", Value::from(i64::from(pci_device_id)));
        gpu.set("sm_count", Value::from(i64::from(sm_count)));
        gpu.set("max_sm_clock_mhz", Value::from(i64::from(max_sm_clock_mhz)));
        gpu.set("gpm", Value::from(false));
        gpu.set("memory_total_mib", Value::from(81_559));
        GpuBuilder {
            gpu,
            metrics: Section::default(),
            processes: Vec::new(),
        }
    }

    /// An H100 SXM (PCI 0x2330, 132 SMs, 1980 MHz, GPM), as NVML names it, idle.
    pub fn h100() -> Self {
        Self::new("NVIDIA H100 80GB HBM3", 0x2330, 132, 1980).set("gpm", true)
    }

    /// This many identical GPUs (`{index}` in the UUID becomes each one's NVML index).
    pub fn count(self, n: u32) -> Self {
        self.set("count", i64::from(n))
    }

    /// The UUID (with `{index}` for several GPUs).
    pub fn uuid(self, uuid: &str) -> Self {
        self.set("uuid", uuid)
    }

    /// Any `[[gpu]]` key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.gpu.set(key, value.into());
        self
    }

    /// A `[gpu.metrics]` curve: a number, or [`steps`] / [`ramp`].
    pub fn metric(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metrics.set(key, value.into());
        self
    }

    /// A `[[gpu.processes]]` entry, with any keys beyond the PID (`sm_share`, `from`, ...).
    pub fn process_with(mut self, pid: u32, keys: &[(&str, Value)]) -> Self {
        let mut p = Section::default();
        p.set("pid", Value::from(i64::from(pid)));
        for (k, v) in keys {
            p.set(k, v.clone());
        }
        self.processes.push(p);
        self
    }

    /// A training process: `pid` holds the whole GPU (60 GB, all of its SM activity).
    pub fn process(self, pid: u32) -> Self {
        self.process_with(
            pid,
            &[
                ("used_memory_mib", Value::from(60_000)),
                ("sm_share", Value::from(1.0)),
            ],
        )
    }

    /// The steady training job most tests meter: `pid` on the GPU at `tensor_util` percent
    /// tensor activity and a constant SM clock, the GPU 99% busy at 600 W.
    pub fn training(self, pid: u32, tensor_util: f64, sm_clock_mhz: u32) -> Self {
        self.metric("sm_clock_mhz", i64::from(sm_clock_mhz))
            .metric("tensor_util", tensor_util)
            .metric("gpu_util", 99.0)
            .metric("power_w", 600.0)
            .process(pid)
    }

    fn write(&self, out: &mut String) {
        out.push_str("\n[[gpu]]\n");
        self.gpu.write(out);
        if !self.metrics.0.is_empty() {
            out.push_str("[gpu.metrics]\n");
            self.metrics.write(out);
        }
        for p in &self.processes {
            out.push_str("[[gpu.processes]]\n");
            p.write(out);
        }
    }
}

/// A step curve: each value holds from its time until the next point's.
pub fn steps(points: &[(f64, f64)]) -> Value {
    curve("steps", points)
}

/// A piecewise-linear curve through the points, constant outside them.
pub fn ramp(points: &[(f64, f64)]) -> Value {
    curve("ramp", points)
}

fn curve(kind: &str, points: &[(f64, f64)]) -> Value {
    let pts: Vec<Value> = points
        .iter()
        .map(|&(t, v)| Value::Array(vec![Value::from(t), Value::from(v)]))
        .collect();
    let mut t = toml::Table::new();
    t.insert(kind.to_string(), Value::Array(pts));
    Value::Table(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the builder writes is the scenario the test meant: hardware, curves, processes
    /// and truth, read back by the fake's own parser.
    #[test]
    fn writes_what_the_parser_reads() {
        let b = ScenarioBuilder::new()
            .set("epoch_unix_us", 1_700_000_000_000_000_i64)
            .gpu(
                GpuBuilder::h100()
                    .count(2)
                    .uuid("GPU-b-{index}")
                    .training(4242, 45.0, 1755)
                    .metric("fp32_util", steps(&[(0.0, 10.0), (5.0, 30.0)])),
            )
            .gpu(GpuBuilder::new("NVIDIA Future GPU", 0x2B00, 100, 1500).uuid("GPU-f"))
            .raw("[[faults.lost]]\ngpu = 2\nat = 5.0\n");
        let s = b.scenario().unwrap();
        assert_eq!(s.gpus.len(), 3);
        assert_eq!(s.gpus[1].uuid, "GPU-b-1");
        assert_eq!(s.gpus[0].pci_device_id, 0x2330);
        assert_eq!(s.gpus[2].sm_count, 100);
        assert!(s.gpus[0].gpm && !s.gpus[2].gpm);
        assert_eq!(s.gpus[0].processes[0].pid, 4242);
        assert!(s.is_lost(2, 6.0) && !s.is_lost(2, 4.0));
        // 45% of 132 SMs × 4096 FLOP/clk at 1755 MHz, for one second.
        let t = s.true_flop(0, 0.0, 1.0).unwrap();
        let want = 0.45 * 132.0 * 4096.0 * 1755e6;
        assert!((t - want).abs() / want < 1e-12, "{t} vs {want}");
        // The step curve: 10% then 30% of FP32 (no FP32 rate in [truth], so no FLOP) is
        // visible through the GPM mean.
        assert_eq!(s.gpus[0].metrics.fp32_util.at(6.0), 30.0);
    }
}
