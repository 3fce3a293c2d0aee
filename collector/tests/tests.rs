//! The collector's integration tests, in one test binary (ripgrep's `tests/tests.rs`
//! pattern: the crate sets `autotests = false` and each file below is a module), so the
//! suite links one executable instead of one per file. `support` is their shared harness
//! (with the workspace's HTTP client, process helpers and proptest seed from
//! `tests/support/`), `fuzz_support` that of the `fuzz_*` targets (`fuzz/README.md`).
//!
//! Run one file's tests with its module name as the filter, e.g.
//! `cargo test -p flopmeter-collector --test integration fuzz_batch_decode::`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod fuzz_support;
mod support;

mod bounds;
mod compliance;
mod compliance_store;
mod console_access;
mod fuzz_batch_decode;
mod fuzz_record_validation;
mod http_report;
mod ingest;
mod pg_rollup_race;
mod pg_store;
mod replay;
mod store_model;
mod unestimated;
mod verify;
mod verify_online;
