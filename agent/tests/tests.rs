//! The agent's integration tests, in one test binary (ripgrep's `tests/tests.rs` pattern:
//! the crate sets `autotests = false` and each file below is a module), so the suite links
//! one executable instead of one per file. `support` is their shared harness (with the
//! workspace's HTTP client, process helpers and proptest seed from `tests/support/`), and
//! `collector_fake` the in-test collector several of them stream to.
//!
//! Run one file's tests with its module name as the filter, e.g.
//! `cargo test -p flopmeter-agent --test integration shipper::`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod collector_fake;
mod support;

mod agent_fake_nvml;
mod agent_run;
mod attribution;
mod kubernetes;
mod mig;
mod never_undercount;
mod nvml_source;
mod probe;
mod shipper;
mod spool;
mod spool_corrupt;
