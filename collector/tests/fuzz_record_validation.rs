//! Fuzz target `record_validation`: structured arbitrary `IntervalRecord`s (every field,
//! with its extremes: 0, u64::MAX, i64::MIN/MAX, NaN and infinities, huge strings, control
//! characters, catalogue ids in odd spellings) → `validate::check_record` / `verdict`.
//!
//! Property: nothing panics; every record is accepted or rejected with a known reason and a
//! detail; an accepted record satisfies the invariants (`fuzz_support::check_verdict`). The
//! same with tight and with loose limits.
//!
//! Inputs: every file of `fuzz/corpus/record_validation` (an encoded `IntervalRecord`
//! each), then `FLOPMETER_FUZZ_CASES` (default 600) generated records.

use crate::fuzz_support;

use flopmeter_collector::ingest::validate::{self, Limits};
use flopmeter_proto::v1::{IntervalRecord, MigInstance, WorkloadDeclaration, WorkloadIdentity};
use fuzz_support::{NOW, check_verdict, corpus, inventory, no_panic};
use proptest::prelude::*;
use prost::Message as _;

const TARGET: &str = "record_validation";

fn limits() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            peak_tolerance: 1.0,
            max_interval_ms: 1,
            max_future_ms: 0,
            max_gpu_watts: 0.0,
            max_backfill_ms: 0,
        },
    ]
}

fn check(rec: &IntervalRecord) -> Result<(), TestCaseError> {
    let input = rec.encode_to_vec();
    for limits in limits() {
        let verdict = no_panic(&input, || {
            let inv = inventory();
            let a = validate::check_record(rec, &inv, &limits, NOW);
            let b = validate::verdict(rec, &inv, &limits, NOW);
            (a, b)
        })?;
        let (checked, verdict) = verdict;
        let v = verdict.map(|r| (r.reason, r.detail));
        prop_assert_eq!(
            checked.as_ref().map(|(r, _)| r.as_str().to_string()),
            v.as_ref().map(|(r, _)| r.clone()),
            "check_record and verdict disagree"
        );
        check_verdict(rec, v.as_ref(), &limits).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

fn time() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(NOW),
        (NOW - 4_000_000)..(NOW + 400_000),
        any::<i64>(),
    ]
}

fn big() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1u64 << 63),
        0u64..20_000_000_000_000_000,
        0u64..100_000,
        any::<u64>(),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MIN_POSITIVE),
        Just(1.0 + f64::EPSILON),
        0.0f64..=1.0,
        any::<f64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("h100-sxm".to_string()),
        Just(" H100-SXM ".to_string()),
        Just("0x2330".to_string()),
        Just("a100-sxm4-80gb".to_string()),
        Just("GPU-op".to_string()),
        Just("GPU-1".to_string()),
        Just("\0".to_string()),
        Just("\u{1b}[2J".to_string()),
        Just("x".repeat(256)),
        Just("x".repeat(257)),
        Just("é".repeat(200)),
        Just("\u{202e}rtl".to_string()),
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..3000).prop_map(String::from_iter),
    ]
}

fn identity() -> impl Strategy<Value = Option<WorkloadIdentity>> {
    prop::option::of(
        (
            text(),
            text(),
            text(),
            any::<i32>(),
            text(),
            text(),
            text(),
            text(),
            text(),
        )
            .prop_map(
                |(model, run, stage, source, namespace, job, cluster, user, process)| {
                    WorkloadIdentity {
                        model,
                        run,
                        stage,
                        source,
                        namespace,
                        job,
                        cluster,
                        user,
                        process,
                    }
                },
            ),
    )
}

fn mig() -> impl Strategy<Value = Option<MigInstance>> {
    prop::option::of(
        (
            text(),
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(uuid, profile, gpu_instance_id, compute_instance_id, sm_count, gpu_sm_count)| {
                    MigInstance {
                        uuid,
                        profile,
                        gpu_instance_id,
                        compute_instance_id,
                        sm_count,
                        gpu_sm_count,
                    }
                },
            ),
    )
}

fn declaration() -> impl Strategy<Value = Option<WorkloadDeclaration>> {
    prop::option::of(
        (any::<i32>(), text(), text(), text(), text(), time()).prop_map(
            |(precision, planned_flop, params, tokens, base_model, end)| WorkloadDeclaration {
                precision,
                planned_flop,
                params,
                tokens,
                base_model,
                planned_end_unix_ms: end,
            },
        ),
    )
}

prop_compose! {
    fn record()(
        seq in big(),
        (start_unix_ms, end_unix_ms) in (time(), time()),
        gpu_uuid in text(),
        gpu_type in text(),
        (flop_low, flop_central, flop_high) in (big(), big(), big()),
        gpu_ms in big(),
        energy_mj in big(),
        mean_sm_clock_mhz in any::<u32>(),
        mean_tensor_util in float(),
        (method, precision) in (any::<i32>(), any::<i32>()),
        (precision_declared, approximate, unknown_peak) in (any::<bool>(), any::<bool>(), any::<bool>()),
        identity in identity(),
        declaration in declaration(),
        (no_estimate_reason, peak_conflict, energy_from_power) in (text(), any::<bool>(), any::<bool>()),
        mig in mig(),
    ) -> IntervalRecord {
        IntervalRecord {
            seq, start_unix_ms, end_unix_ms, gpu_uuid, gpu_type, flop_low, flop_central,
            flop_high, gpu_ms, energy_mj, mean_sm_clock_mhz, mean_tensor_util, method,
            precision, precision_declared, identity, approximate, declaration, unknown_peak,
            no_estimate_reason, peak_conflict, mig, energy_from_power,
        }
    }
}

/// Records near acceptance: a plausible interval ending now, a sorted band, so the ceiling,
/// GPU-time and energy rules are reached (random fields mostly stop at the first rule).
fn near_valid() -> impl Strategy<Value = IntervalRecord> {
    (
        1i64..3_700_000,
        0i64..400_000,
        prop::collection::vec(big(), 3),
        big(),
        big(),
        float(),
        text(),
        text(),
    )
        .prop_map(
            |(len, ahead, mut band, gpu_ms, energy_mj, util, gpu_type, gpu_uuid)| {
                band.sort_unstable();
                IntervalRecord {
                    seq: 1,
                    start_unix_ms: NOW + ahead - len,
                    end_unix_ms: NOW + ahead,
                    gpu_uuid,
                    gpu_type,
                    flop_low: band[0],
                    flop_central: band[1],
                    flop_high: band[2],
                    gpu_ms,
                    energy_mj,
                    mean_tensor_util: util,
                    ..IntervalRecord::default()
                }
            },
        )
}

#[test]
fn record_validation_corpus_replays() {
    let c = corpus(TARGET);
    assert!(c.len() >= 5, "the corpus is missing");
    for (name, bytes) in &c {
        let rec = IntervalRecord::decode(bytes.as_slice())
            .unwrap_or_else(|e| panic!("corpus entry {name} is not an IntervalRecord: {e}"));
        if let Err(e) = check(&rec) {
            panic!("corpus entry {name}: {e}");
        }
    }
}

proptest! {
    #![proptest_config(fuzz_support::config(600))]

    #[test]
    fn record_validation_arbitrary_records(rec in record()) {
        check(&rec)?;
    }

    #[test]
    fn record_validation_near_valid_records(rec in near_valid()) {
        check(&rec)?;
    }
}
