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
//! - [`threshold`]: regulatory thresholds as data; [`threshold_config`]: the operator's
//!   changes to them (add, change, disable, deciding bound), versioned.
//! - [`stage`]: training stages and which count toward the regulatory total.
//! - [`duration`]: durations as humans write them in flags and config (`10s`, `90d`).
//! - [`size`]: sizes as humans write them (`256MiB`, `1GiB`).
//! - [`format`](mod@format): figures as regulators ask for them (two significant figures, more near a
//!   threshold, plain days and MWh, deadlines); [`exact`]: JSON with `u128` as decimal
//!   strings, for clients that read numbers as doubles.
//! - [`utc`]: time as `i64` Unix milliseconds, UTC only: the one hour and day, the one
//!   parser of times people write (dates, RFC 3339, Unix ms) and the UTC formats.
//! - [`agent_id::AgentId`]: an agent's name, one rule (a DNS name a certificate can carry)
//!   for the agent, `certs dev`, ingest and mutual TLS.
//! - [`declaration::Declaration`]: what a run or the registry declares (plan, precision, base
//!   model, planned end), one type from job label to compliance engine;
//!   [`declaration::PlanFigures::total`] the one rule for a plan's FLOP.
//! - [`evidence`]: what is known about a model: role, declared plans, runs' counted FLOP over
//!   event time.
//! - [`projection`]: per model, the larger of the plan and the observed rate extrapolated to
//!   each run's end; the projected crossing date.
//! - [`clock`]: the Art. 52(1) notification clock: when it starts, why, and on what evidence.
//! - [`alert`]: alert lifecycle (forecast → clock started → reminders → overdue, until
//!   acknowledged or dismissed), with idempotency keys and the alert's text.
//! - [`audit`]: the append-only SHA-256 hash chain and its verification.
//! - [`text`]: characters a name must not hide (controls, bidi, invisible, look-alikes) and
//!   escaping any string for a terminal.
//!
//! Architecture invariant: this crate never touches the outside world. No tokio, tonic, sled,
//! NVML, filesystem or clock; time is always a parameter. That keeps every rule here
//! exhaustively testable and lets an auditor recompute any figure from its inputs.

pub mod agent_id;
pub mod alert;
pub mod audit;
pub mod catalogue;
pub mod clock;
pub mod declaration;
pub mod duration;
pub mod energy;
pub mod estimator;
pub mod evidence;
pub mod exact;
pub mod format;
pub mod plan;
pub mod projection;
pub mod size;
pub mod stage;
pub mod text;
pub mod threshold;
pub mod threshold_config;
pub mod units;
pub mod utc;
