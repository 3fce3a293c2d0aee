//! Shared by the `fuzz_*` targets: the committed corpus, the case count, byte-level
//! mutations, and the invariants an accepted record must satisfy. See `fuzz/README.md`.
#![allow(dead_code)]

use std::path::PathBuf;

use flopmeter_collector::ingest::validate::{self, Inventory, Limits, MAX_NAME_LEN, RejectReason};
use flopmeter_core::catalogue::{self, GpuModel};
use flopmeter_proto::v1::{GpuInventory, IntervalRecord};
use proptest::prelude::*;

/// The collector's clock in every target (mid-2026), so a corpus entry means the same on
/// every run.
pub const NOW: i64 = 1_780_000_000_000;

/// Generated cases per target: `FLOPMETER_FUZZ_CASES`, else `default` (sized so the target
/// takes a few seconds in a debug build).
pub fn cases(default: u32) -> u32 {
    std::env::var("FLOPMETER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// proptest's configuration for a target: the case count, this run's seed (new per run and
/// printed, or `FLOPMETER_FUZZ_SEED` to replay one: `tests/support/seed.rs`), no regression
/// files (the corpus is the regression file).
pub fn config(default_cases: u32) -> ProptestConfig {
    let mut c = crate::support::seed::config(cases(default_cases));
    c.failure_persistence = None;
    c.max_shrink_iters = 2_000;
    c
}

/// `fuzz/corpus/<target>`.
pub fn corpus_dir(target: &str) -> PathBuf {
    // The collector's tests and the root crate's both include this module.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if here.join("fuzz").is_dir() {
        here
    } else {
        here.join("..")
    };
    root.join("fuzz/corpus").join(target)
}

/// Every corpus file of `target`, sorted by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Hex, for a failing input to be pasted into the corpus (`xxd -r -p`).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `f`, turning a panic into an error that carries the input, so proptest shrinks it
/// and reports the smallest input that panics.
pub fn no_panic<T>(input: &[u8], f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        TestCaseError::fail(format!(
            "PANIC {what:?} on input (hex; add it to the corpus with `xxd -r -p`): {}",
            hex(input)
        ))
    })
}

/// One byte-level edit.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    Flip { at: usize, bit: u8 },
    /// Overwrite one byte with a value (interesting values are likelier).
    Set { at: usize, byte: u8 },
    /// Insert bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Delete a range.
    Delete { at: usize, len: usize },
    /// Replace the tail from `at` with the tail of another corpus entry from `from`.
    Splice {
        at: usize,
        other: usize,
        from: usize,
    },
    /// Repeat a range (varint/length confusion).
    Duplicate { at: usize, len: usize },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(0x00u8),
        Just(0xff),
        Just(0x80),
        Just(0x7f),
        Just(0x01),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), prop::collection::vec(byte, 1..12))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, other, from)| Mutation::Splice { at, other, from }),
        (any::<usize>(), 1usize..24).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

/// Applies `muts` to `seed`; `corpus` feeds splices.
pub fn mutate(seed: &[u8], muts: &[Mutation], corpus: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << bit,
            Mutation::Set { at, byte } if n > 0 => b[at % n] = *byte,
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } if n > 0 => {
                let at = at % n;
                b.drain(at..(at + len).min(n));
            }
            Mutation::Splice { at, other, from } if !corpus.is_empty() => {
                let o = &corpus[other % corpus.len()].1;
                let at = at % (n + 1);
                let from = from % (o.len() + 1);
                b.truncate(at);
                b.extend_from_slice(&o[from..]);
            }
            Mutation::Duplicate { at, len } if n > 0 => {
                let at = at % n;
                let piece: Vec<u8> = b[at..(at + len).min(n)].to_vec();
                b.splice(at..at, piece);
            }
            _ => {}
        }
    }
    b
}

/// The uncatalogued GPUs of the inventory every target validates against: one with an
/// operator peak, and declared peaks that must be ignored (NaN, infinite, negative, zero).
pub fn hello_gpus() -> Vec<GpuInventory> {
    [
        ("GPU-op", 400.0),
        ("GPU-nan", f64::NAN),
        ("GPU-inf", f64::INFINITY),
        ("GPU-neg", -1.0),
        ("GPU-zero", 0.0),
        ("GPU-huge", 1e300),
    ]
    .into_iter()
    .map(|(uuid, p)| GpuInventory {
        uuid: uuid.into(),
        operator_peak_tflops: p,
        ..GpuInventory::default()
    })
    .collect()
}

/// Every GPU the targets' Hello declares: [`hello_gpus`] and a catalogued H100, `GPU-1`.
/// Records on any other GPU are `undeclared-gpu`.
pub fn declared_gpus() -> Vec<GpuInventory> {
    let mut g = hello_gpus();
    g.push(GpuInventory {
        uuid: "GPU-1".into(),
        catalogue_id: "h100-sxm".into(),
        ..GpuInventory::default()
    });
    g
}

pub fn inventory() -> Inventory {
    Inventory::from_hello(&declared_gpus())
}

/// The physical ceiling of the record's GPU in FLOP/s, computed from the catalogue and the
/// Hello directly rather than through the validator.
fn ceiling(rec: &IntervalRecord) -> Option<f64> {
    if !rec.gpu_type.is_empty()
        && let Some(m) = catalogue::find(&rec.gpu_type)
    {
        return Some(m.ceiling_flop_per_s());
    }
    hello_gpus()
        .into_iter()
        .find(|g| {
            g.uuid == rec.gpu_uuid
                && g.operator_peak_tflops.is_finite()
                && g.operator_peak_tflops > 0.0
                && g.operator_peak_tflops <= validate::max_operator_peak_tflops()
        })
        .map(|g| GpuModel::operator_supplied(g.operator_peak_tflops).ceiling_flop_per_s())
}

fn name_ok(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control)
}

/// The property of every target that validates records: a verdict exists (accepted or a
/// known reason with a detail), and an accepted record satisfies the invariants.
pub fn check_verdict(
    rec: &IntervalRecord,
    verdict: Option<&(String, String)>,
    limits: &Limits,
) -> Result<(), String> {
    if let Some((reason, detail)) = verdict {
        if RejectReason::parse(reason).is_none() {
            return Err(format!("unknown rejection reason {reason:?}"));
        }
        if detail.trim().is_empty() {
            return Err(format!("rejection {reason} without a detail"));
        }
        return Ok(());
    }
    let fail = |what: &str| Err(format!("accepted a record with {what}: {rec:?}"));
    if !declared_gpus().iter().any(|g| g.uuid == rec.gpu_uuid) {
        return fail("a GPU the Hello did not declare");
    }
    if rec.start_unix_ms < NOW - limits.max_backfill_ms {
        return fail("an event time before the backfill window");
    }
    if !(rec.flop_low <= rec.flop_central && rec.flop_central <= rec.flop_high) {
        return fail("low ≤ central ≤ high violated");
    }
    if rec.start_unix_ms <= 0 || rec.end_unix_ms <= rec.start_unix_ms {
        return fail("an empty, negative or pre-epoch interval");
    }
    let interval_ms = rec.end_unix_ms - rec.start_unix_ms;
    if interval_ms > limits.max_interval_ms {
        return fail("an interval above the maximum");
    }
    if rec.end_unix_ms > NOW + limits.max_future_ms {
        return fail("an end in the future");
    }
    let Some(ceiling) = ceiling(rec) else {
        return fail("no known ceiling");
    };
    let seconds = interval_ms as f64 / 1000.0;
    if rec.flop_high as f64 > ceiling * seconds * limits.peak_tolerance {
        return fail("FLOP above the physical ceiling");
    }
    if rec.gpu_ms as f64 > interval_ms as f64 * limits.peak_tolerance {
        return fail("more GPU time than the interval");
    }
    if !(rec.mean_tensor_util.is_finite() && (0.0..=1.0).contains(&rec.mean_tensor_util)) {
        return fail("tensor activity outside 0..1");
    }
    if !name_ok(&rec.gpu_type) {
        return fail("a bad GPU type");
    }
    if let Some(id) = &rec.identity
        && !(name_ok(&id.model) && name_ok(&id.run) && name_ok(&id.stage))
    {
        return fail("a bad identity");
    }
    Ok(())
}
