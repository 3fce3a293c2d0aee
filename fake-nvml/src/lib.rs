//! A fake `libnvidia-ml.so` for testing the real NVML code path on machines without a GPU.
//!
//! Built as a cdylib, it exports the NVML C functions flopmeter's agent reaches through
//! nvml-wrapper 0.13 (see [`scenario::FUNCTIONS`]), so nvml-wrapper loads it with `dlopen`
//! exactly as it loads NVIDIA's library. What the fake GPUs report comes from a TOML
//! [scenario] (format in the module docs and in `README.md`), which also carries the ground
//! truth: [`Scenario::true_flop`] gives the FLOP a GPU really executed over any window, from
//! the scenario's own arithmetic and never from the estimator under test.
//!
//! # Where the scenario comes from
//! At `nvmlInit`, the file [`SCENARIO_FILE_NAME`] in the directory of the loaded library (found
//! with `dladdr`) if present, else the path in [`SCENARIO_ENV`]. One `dlopen` instance exists
//! per file, so parallel tests each copy the library into their own directory with their own
//! scenario ([`harness::FakeNvml`]).
//!
//! # Time
//! Scenario time is seconds since `nvmlInit` on a monotonic clock, unless a clock file
//! ([`CLOCK_FILE_NAME`] beside the library, or the path in [`CLOCK_ENV`]) exists: then its
//! content, a decimal number of seconds, is the current time, read on every call. Tests use
//! it for deterministic virtual time.
//!
//! # Semantics
//! - `utilization.gpu`, clocks, power and temperature are the curves' instantaneous values.
//! - GPM metrics between two samples are the exact time-average of the curve over the
//!   samples' times (the instantaneous value if both were taken at the same time).
//! - The energy counter is the exact integral of power since init, in mJ.
//! - Faults: an init error code; per-function error codes (per GPU or global, optionally in a
//!   time window); GPUs lost at a time (every call for them returns 15, `GPU_IS_LOST`) and
//!   optionally recovered; per-metric GPM errors. A *missing* function is made by
//!   [`harness::FakeNvml::without_symbols`].

pub mod abi;
pub mod builder;
pub mod curve;
mod ffi;
pub mod harness;
pub mod scenario;

pub use scenario::{Scenario, ScenarioError, Truth, TruthError};

/// The scenario file looked for beside the loaded library.
pub const SCENARIO_FILE_NAME: &str = "fake-nvml-scenario.toml";
/// The environment variable naming the scenario file when none is beside the library.
pub const SCENARIO_ENV: &str = "FAKE_NVML_SCENARIO";
/// The clock file looked for beside the loaded library.
pub const CLOCK_FILE_NAME: &str = "fake-nvml-clock";
/// The environment variable naming a clock file when none is beside the library.
pub const CLOCK_ENV: &str = "FAKE_NVML_CLOCK_FILE";
