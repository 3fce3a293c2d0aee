//! flopmeter-agent: the node agent. It reads the GPUs, estimates the FLOP each process
//! executes, attributes it to runs and models, keeps interval records durably until the
//! collector acknowledges them, and streams them there.
//!
//! Data flow (one thread for NVML, a small tokio runtime for the rest):
//!
//! ```text
//! GpuSource (gpu::nvml | simulated) ─► sampler ─► spool (sled) ─► shipper ─gRPC─► collector
//!                                       ▲   │                        ◄── acks ──
//!                        attribution ───┘   └─► metrics (/metrics, /healthz)
//! ```
//!
//! - [`run`]: the whole agent, as `flopmeter agent` runs it; [`run_with`] lets tests and
//!   demos swap the GPU source, the time source and the Kubernetes client.
//! - [`gpu`]: the `GpuSource` trait and its NVML implementation; [`simulated`]: a simulated
//!   source for tests and demos; [`probe`]: `flopmeter probe`.
//! - [`sampler`], [`attribution`], [`spool`], [`shipper`], [`metrics`]: the stages above.
//! - [`config`]: the `flopmeter agent` options; [`time_source`]: real and virtual time.

pub mod agent_id;
pub mod attribution;
pub mod cluster;
pub mod config;
pub mod gpu;
pub mod metrics;
pub mod probe;
mod runtime;
pub mod sampler;
pub mod shipper;
pub mod simulated;
pub mod spool;
pub mod time_source;

/// The time sources under the names they had before "clock" was kept for the Art. 52
/// notification clock. Kept so code written against the old names still builds; removed
/// once every branch uses [`time_source`].
pub mod clock {
    pub use crate::time_source::{
        RealTime as RealClock, StopSignal, TimeSource as Clock, VirtualTime as VirtualClock,
        unix_ms,
    };
}

pub use config::AgentArgs;
pub use runtime::{AgentError, Ready, RunOptions, SourceSpec, run, run_with};
