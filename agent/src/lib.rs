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
//!   demos swap the GPU source, the clock and the Kubernetes client.
//! - [`gpu`]: the `GpuSource` trait and its NVML implementation; [`simulated`]: a simulated
//!   source for tests and demos; [`probe`]: `flopmeter probe`.
//! - [`sampler`], [`attribution`], [`spool`], [`shipper`], [`metrics`]: the stages above.
//! - [`config`]: the `flopmeter agent` options; [`clock`]: real and virtual time.

pub mod agent_id;
pub mod attribution;
pub mod clock;
pub mod config;
pub mod gpu;
pub mod metrics;
pub mod probe;
mod runtime;
pub mod sampler;
pub mod shipper;
pub mod simulated;
pub mod spool;

pub use config::AgentArgs;
pub use runtime::{AgentError, Ready, RunOptions, SourceSpec, run, run_with};
