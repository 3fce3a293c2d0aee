//! flopmeter-core: the domain of a training-compute meter, with no I/O.
//!
//! The principal types:
//! - [`catalogue::GpuModel`] and [`catalogue::lookup`]: dense datasheet peaks per GPU model,
//!   keyed by PCI device id with the NVML name as a fallback; an unknown device is
//!   [`catalogue::Lookup::Unknown`], never a neighbour's numbers.
//! - [`estimator::estimate`]: FLOP for one GPU over one interval, as a
//!   [`units::FlopBand`] `[low, central, high]` with a [`units::Method`] tag.
//! - [`units::FlopTotal`]: exact, order-independent `u128` aggregates of bands.
//! - [`energy::EnergyCounter`]: energy deltas from NVML's millijoule counter that survive
//!   driver reloads and wraps.
//! - [`plan`]: the what-if planner behind `flopmeter estimate`.
//! - [`threshold`]: regulatory thresholds as data.
//! - [`stage`]: training stages and which count toward the regulatory total.
//! - [`format`]: figures as regulators ask for them (two significant figures, MWh, days).
//!
//! Architecture invariant: this crate never touches the outside world. No tokio, tonic, sled,
//! NVML, filesystem or clock; time is always a parameter. That keeps every rule here
//! exhaustively testable and lets an auditor recompute any figure from its inputs.

pub mod catalogue;
pub mod energy;
pub mod estimator;
pub mod format;
pub mod plan;
pub mod stage;
pub mod threshold;
pub mod units;
