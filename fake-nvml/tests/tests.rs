//! The fake's integration tests, in one test binary (ripgrep's `tests/tests.rs` pattern:
//! `autotests = false`, each file a module), so the suite links one executable, not three.

mod abi;
mod foreign_client;
mod through_nvml_wrapper;
