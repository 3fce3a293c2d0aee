//! proptest's seed for every property test and fuzz target of the workspace (`#[path]`-
//! included by `agent/tests` and `collector/tests`; see `fuzz/README.md`).
//!
//! A fixed seed makes every run explore the same inputs, so CI never finds anything new.
//! Each run therefore draws a new seed, prints it (shown with a failure's output), and takes
//! `FLOPMETER_FUZZ_SEED` instead when set, to replay a failing run exactly.
#![allow(dead_code)]

use std::sync::OnceLock;

use proptest::test_runner::{Config, RngSeed};

/// The environment variable that fixes the seed.
pub const SEED_ENV: &str = "FLOPMETER_FUZZ_SEED";

/// This run's seed: `FLOPMETER_FUZZ_SEED` (decimal or `0x` hex), else a new one per process.
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var(SEED_ENV) {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{SEED_ENV}={s:?}: a u64 (decimal or 0x hex)"))
        }
        // std's hasher keys are random per process: a seed without another dependency.
        Err(_) => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        }
    })
}

/// proptest's configuration with `cases` cases and this run's seed, which it prints (the
/// test harness shows it with the output of a test that fails).
pub fn config(cases: u32) -> Config {
    let seed = seed();
    println!("proptest seed: {SEED_ENV}={seed} reproduces this run");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}
