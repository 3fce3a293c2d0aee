//! flopmeter-sim: tools that drive a collector from outside. None of this is the system of
//! record: the collector library (`flopmeter-collector`) is, and the product build of a
//! collector needs nothing here.
//!
//! - [`agent`]: [`agent::SimAgent`], the one simulated agent: a protocol client that keeps
//!   what it generated until acknowledged, follows Welcome, Ack and Resend, reconnects, and
//!   produces deterministic records (an H100 fleet for load, GB200 racks for the demo).
//! - [`loadgen`]: `flopmeter loadgen`, many simulated agents against a collector, with
//!   throughput, ack latency and the collector's memory.
//! - [`demo`]: `flopmeter demo`, the compliance story on an embedded collector and a
//!   virtual clock.
//!
//! The agent's own replay mode (hidden `--virtual-*` flags) stays in the agent: it is the
//! real sampler and spool on a virtual clock, which the fault campaign relies on (see
//! ARCHITECTURE.md).

pub mod agent;
pub mod demo;
pub mod loadgen;
