//! The end-to-end tests, in one test binary (ripgrep's `tests/tests.rs` pattern: the crate
//! sets `autotests = false` and each file below is a module), so the suite links one
//! executable instead of one per file. `support` is their shared harness.
//!
//! Run one file's tests with its module name as the filter, e.g.
//! `cargo test --test integration e2e_two_nodes::`.
//!
//! Not here: `fault_campaign.rs`, its own binary, which runs only when
//! `FLOPMETER_FAULT_CAMPAIGN=1` and then wants the machine to itself.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

// Shared by the `fuzz_*` targets (and by the collector's, which include it the same way).
#[path = "../collector/tests/fuzz_support/mod.rs"]
mod fuzz_support;

mod agent_cli;
mod agent_memory;
mod cli;
mod cli_terminal;
mod collector_cli;
mod collector_crash;
mod collector_disk_full;
mod collector_durable_mark;
mod config_errors;
mod console_browser;
mod damaged_state;
mod e2e_agent_collector;
mod e2e_two_nodes;
mod fuzz_config_parse;
mod fuzz_flop_amount;
mod hostile_client;
mod ledger_migrate;
mod pg_replicas;
mod probe_cli;
mod slurm;
mod tls;
mod two_collectors;
