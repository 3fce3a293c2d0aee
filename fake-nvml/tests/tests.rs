//! The fake's integration tests, in one test binary (ripgrep's `tests/tests.rs` pattern:
//! `autotests = false`, each file a module), so the suite links one executable, not three.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod abi;
mod foreign_client;
mod through_nvml_wrapper;
