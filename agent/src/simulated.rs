//! A simulated [`GpuSource`]: GPUs of a catalogue model running a steady workload, for tests
//! and demos.
//!
//! Why besides the fake NVML library: the fake exercises the real NVML path but plays in real
//! time (its curves are functions of seconds since `nvmlInit`). The simulation is driven
//! entirely by the `now` the sampler passes, so with [`crate::time_source::VirtualTime`] it plays
//! weeks of training in seconds, with event-time records, and it needs no shared library.
//!
//! A workload is a small TOML document:
//!
//! ```toml
//! gpu = "h100-sxm"        # catalogue id
//! count = 8
//! tensor_util = 0.45      # any-tensor activity, 0..1 (GPM GPUs)
//! gpu_util = 0.97         # utilization.gpu, 0..1 (default: 1 when busy)
//! # sm_clock_mhz = 1830   # default: the catalogue's tensor reference clock
//! # power_watts = 560     # default: 80% of TDP when busy
//!
//! [[process]]
//! pid = 4242              # a real PID, or a synthetic one with `env` below
//! gpus = [0, 1, 2, 3]     # default: every GPU
//! sm_share = 1.0          # relative SM share when several processes share a GPU
//! from_seconds = 0        # active window, seconds since the first read
//! # until_seconds = 3600
//! [process.env]
//! FLOPMETER_MODEL = "demo-7b"
//! ```
//!
//! Processes with an `env` table can be materialised as a fixture proc tree
//! ([`Workload::write_proc_tree`]) for the attributor's `--proc-root`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flopmeter_core::catalogue::{self, GpuModel, Lookup, MatchedBy};
use serde::Deserialize;

use crate::gpu::{
    GpmMetrics, GpuInfo, GpuProcess, GpuReading, GpuSource, GpuStatus, Inventory, Tick,
};

/// Errors loading a workload.
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The file could not be read.
    #[error("reading workload {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed.
    #[error("parsing workload: {0}")]
    Parse(#[from] toml::de::Error),
    /// A workload file is not valid (names the file; the cause names the key).
    #[error("workload file {path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: Box<SimulationError>,
    },
    /// The GPU is not a catalogue id.
    #[error("unknown GPU {0:?} in workload: use a catalogue id (`flopmeter gpus`)")]
    UnknownGpu(String),
    /// A value is out of range.
    #[error("workload: {0}")]
    Invalid(String),
    /// Writing the proc tree failed.
    #[error("writing proc tree: {0}")]
    Io(#[from] std::io::Error),
}

/// Most GPUs a simulated node may have (a large node has 8 to 16).
pub const MAX_GPUS: u32 = 1024;

/// A simulated process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimProcess {
    /// PID (real, or synthetic for a materialised proc tree).
    pub pid: u32,
    /// GPU indices it runs on; empty means all.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Relative SM share among the processes of a GPU.
    #[serde(default = "one")]
    pub sm_share: f64,
    /// Active from this many seconds after the first read.
    #[serde(default)]
    pub from_seconds: f64,
    /// Active until this many seconds after the first read.
    #[serde(default)]
    pub until_seconds: Option<f64>,
    /// Environment for a materialised proc tree.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `/proc/<pid>/cgroup` content for a materialised proc tree.
    #[serde(default)]
    pub cgroup: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// A steady workload on identical GPUs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Catalogue id of the GPUs.
    pub gpu: String,
    /// Number of GPUs.
    pub count: u32,
    /// Any-tensor activity while a process is active, 0..1.
    pub tensor_util: f64,
    /// `utilization.gpu` while a process is active, 0..1 (default 1).
    #[serde(default)]
    pub gpu_util: Option<f64>,
    /// SM clock (default: the model's tensor reference clock).
    #[serde(default)]
    pub sm_clock_mhz: Option<u32>,
    /// Power while busy (default: 80% of TDP, or 500 W).
    #[serde(default)]
    pub power_watts: Option<f64>,
    /// The processes.
    #[serde(default, rename = "process")]
    pub processes: Vec<SimProcess>,
}

impl Workload {
    /// Parses a workload.
    pub fn from_toml(text: &str) -> Result<Workload, SimulationError> {
        let w: Workload = toml::from_str(text)?;
        w.validate()?;
        Ok(w)
    }

    /// Reads and parses a workload file.
    pub fn load(path: &Path) -> Result<Workload, SimulationError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimulationError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| SimulationError::InFile {
            path: path.display().to_string(),
            source: Box::new(e),
        })
    }

    fn validate(&self) -> Result<(), SimulationError> {
        catalogue::find(&self.gpu).ok_or_else(|| SimulationError::UnknownGpu(self.gpu.clone()))?;
        // One record stream and one energy counter per GPU are allocated up front: a count
        // from a typo must be refused, not allocated.
        if !(1..=MAX_GPUS).contains(&self.count) {
            return Err(SimulationError::Invalid(format!(
                "count = {} is not in 1..={MAX_GPUS}",
                self.count
            )));
        }
        let finite = |name: &str, v: Option<f64>, min: f64| match v {
            Some(v) if !(v.is_finite() && v >= min) => Err(SimulationError::Invalid(format!(
                "{name} = {v} must be a finite number of at least {min}"
            ))),
            _ => Ok(()),
        };
        finite("power_watts", self.power_watts, 0.0)?;
        for p in &self.processes {
            let at = |k: &str| format!("process {}: {k}", p.pid);
            finite(&at("sm_share"), Some(p.sm_share), 0.0)?;
            finite(&at("from_seconds"), Some(p.from_seconds), 0.0)?;
            finite(&at("until_seconds"), p.until_seconds, 0.0)?;
            if let Some(g) = p.gpus.iter().find(|g| **g >= self.count) {
                return Err(SimulationError::Invalid(format!(
                    "{}: GPU {g} is not among the {} GPUs",
                    at("gpus"),
                    self.count
                )));
            }
        }
        for (name, v) in [
            ("tensor_util", Some(self.tensor_util)),
            ("gpu_util", self.gpu_util),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(SimulationError::Invalid(format!(
                    "{name} = {v} is not in 0..1"
                )));
            }
        }
        Ok(())
    }

    /// Writes `<root>/<pid>/{environ,stat,cgroup}` for every process, so the attributor can
    /// read them with `--proc-root <root>`.
    pub fn write_proc_tree(&self, root: &Path) -> Result<(), SimulationError> {
        for p in &self.processes {
            let dir = root.join(p.pid.to_string());
            std::fs::create_dir_all(&dir)?;
            let mut environ = Vec::new();
            for (k, v) in &p.env {
                environ.extend_from_slice(format!("{k}={v}").as_bytes());
                environ.push(0);
            }
            std::fs::write(dir.join("environ"), environ)?;
            std::fs::write(dir.join("stat"), fake_stat(p.pid, u64::from(p.pid) + 1000))?;
            std::fs::write(
                dir.join("cgroup"),
                p.cgroup.clone().unwrap_or_else(|| "0::/\n".into()),
            )?;
        }
        Ok(())
    }
}

/// A `/proc/<pid>/stat` line with the given start time in field 22 (and a `comm` with a
/// space and a parenthesis, as real ones can have).
pub fn fake_stat(pid: u32, start_time: u64) -> String {
    format!(
        "{pid} (python3 (rank 0)) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 8 0 {start_time} 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
    )
}

/// The simulated source.
#[derive(Debug)]
pub struct SimulatedSource {
    workload: Workload,
    model: &'static GpuModel,
    inventory: Inventory,
    first: Option<Duration>,
    last: Option<Duration>,
    energy_mj: Vec<f64>,
}

impl SimulatedSource {
    /// A source playing `workload`.
    pub fn new(workload: Workload) -> Result<SimulatedSource, SimulationError> {
        workload.validate()?;
        let model = catalogue::find(&workload.gpu)
            .ok_or_else(|| SimulationError::UnknownGpu(workload.gpu.clone()))?;
        let gpus = (0..workload.count)
            .map(|i| GpuInfo {
                index: i,
                uuid: Some(sim_uuid(i)),
                name: model
                    .nvml_names
                    .first()
                    .map(|n| n.to_string())
                    .or(Some(model.name.to_string())),
                pci_device_id: model.pci_device_ids.first().copied(),
                catalogue: Lookup::Known(model, MatchedBy::PciDeviceId),
                max_sm_clock_mhz: model.max_sm_clock_mhz,
                max_mem_clock_mhz: None,
                memory_total_bytes: Some(80 << 30),
                gpm_supported: model.gpm,
                ..GpuInfo::unidentified(i)
            })
            .collect();
        Ok(SimulatedSource {
            energy_mj: vec![1_000_000.0; workload.count as usize],
            inventory: Inventory {
                driver_version: Some("simulated".into()),
                nvml_version: Some("simulated".into()),
                gpus,
            },
            workload,
            model,
            first: None,
            last: None,
        })
    }

    fn active(&self, p: &SimProcess, gpu: u32, t: f64) -> bool {
        (p.gpus.is_empty() || p.gpus.contains(&gpu))
            && t >= p.from_seconds
            && p.until_seconds.is_none_or(|u| t < u)
    }
}

/// The UUID of simulated GPU `i`.
pub fn sim_uuid(i: u32) -> String {
    format!("GPU-5151a7ed-0000-4000-8000-{i:012x}")
}

impl GpuSource for SimulatedSource {
    fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    fn read(&mut self, now: Duration) -> Tick {
        let first = *self.first.get_or_insert(now);
        let t = now.saturating_sub(first).as_secs_f64();
        let dt = self.last.map(|l| now.saturating_sub(l).as_secs_f64());
        self.last = Some(now);
        let w = &self.workload;
        let clock = w
            .sm_clock_mhz
            .or(self.model.tensor_ref_clock_mhz)
            .or(self.model.max_sm_clock_mhz)
            .unwrap_or(1500);
        let busy_w = w
            .power_watts
            .unwrap_or_else(|| self.model.tdp_watts.map_or(500.0, |t| 0.8 * f64::from(t)));
        let mut gpus = Vec::with_capacity(w.count as usize);
        for i in 0..w.count {
            let procs: Vec<GpuProcess> = w
                .processes
                .iter()
                .filter(|p| self.active(p, i, t))
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: Some(40 << 30),
                    sm_util_percent: Some(100.0 * p.sm_share),
                })
                .collect();
            let busy = !procs.is_empty();
            let power_w = if busy { busy_w } else { 70.0 };
            if let Some(dt) = dt {
                self.energy_mj[i as usize] += power_w * 1000.0 * dt;
            }
            let tensor = if busy { 100.0 * w.tensor_util } else { 0.0 };
            gpus.push(GpuReading {
                index: i,
                uuid: Some(sim_uuid(i)),
                status: GpuStatus::Ok,
                interval_seconds: dt,
                gpm_supported: self.model.gpm,
                gpm: (self.model.gpm && dt.is_some()).then_some(GpmMetrics {
                    any_tensor: Some(tensor),
                    hmma: Some(tensor),
                    fp64: Some(0.0),
                    fp32: Some(0.0),
                    fp16: Some(0.0),
                    sm_util: Some(if busy { 100.0 } else { 0.0 }),
                }),
                sm_clock_mhz: Some(clock),
                mean_sm_clock_mhz: dt.map(|_| f64::from(clock)),
                gpu_util_percent: Some(if busy {
                    (100.0 * w.gpu_util.unwrap_or(1.0)).round() as u32
                } else {
                    0
                }),
                power_mw: Some((power_w * 1000.0) as u32),
                energy_mj: Some(self.energy_mj[i as usize] as u64),
                memory_used_bytes: Some(if busy { 40 << 30 } else { 0 }),
                processes: Some(procs),
                mig: None,
                unavailable: Vec::new(),
            });
        }
        Tick {
            at_seconds: now.as_secs_f64(),
            gpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_a_workload_in_virtual_time() {
        let w = Workload::from_toml(
            r#"
            gpu = "h100-sxm"
            count = 2
            tensor_util = 0.5
            [[process]]
            pid = 10
            gpus = [1]
            until_seconds = 5
            [process.env]
            FLOPMETER_MODEL = "m"
            "#,
        )
        .unwrap();
        let mut s = SimulatedSource::new(w).unwrap();
        assert_eq!(s.inventory().gpus.len(), 2);
        let t0 = s.read(Duration::from_secs(100));
        assert_eq!(t0.gpus[0].interval_seconds, None, "baseline");
        let t1 = s.read(Duration::from_secs(101));
        assert_eq!(t1.gpus[1].interval_seconds, Some(1.0));
        assert_eq!(t1.gpus[1].processes.as_ref().unwrap()[0].pid, 10);
        assert!(t1.gpus[0].processes.as_ref().unwrap().is_empty());
        assert_eq!(t1.gpus[1].gpm.unwrap().any_tensor, Some(50.0));
        let t2 = s.read(Duration::from_secs(106));
        assert!(t2.gpus[1].processes.as_ref().unwrap().is_empty(), "ended");
        assert!(t2.gpus[1].energy_mj > t1.gpus[1].energy_mj);
    }

    #[test]
    fn proc_tree_round_trips_through_the_attributor() {
        let w = Workload::from_toml(
            r#"
            gpu = "a100-sxm"
            count = 1
            tensor_util = 0.0
            [[process]]
            pid = 77
            [process.env]
            FLOPMETER_MODEL = "demo-7b"
            FLOPMETER_RUN = "r1"
            "#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        w.write_proc_tree(dir.path()).unwrap();
        let mut a = crate::attribution::Attributor::new(dir.path(), None);
        let got = a.attribute(77);
        assert_eq!(got.identity.model, "demo-7b");
        assert_eq!(got.identity.run, "r1");
        assert!(Workload::from_toml("gpu = \"h999\"\ncount = 1\ntensor_util = 0.1").is_err());
    }
}
