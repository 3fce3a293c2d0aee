//! Energy from NVML's total-energy counter (millijoules since the driver loaded).
//!
//! The counter resets when the driver reloads and, in principle, wraps at `u64::MAX`. A
//! meter that subtracted naively would book a reset as ~1.8e16 J, or panic. [`EnergyCounter`]
//! tells the two apart by plausibility: a wrap yields a small delta, a reset does not.

use serde::{Deserialize, Serialize};

/// How a delta was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnergySource {
    /// Difference of two counter readings.
    Counter,
    /// The counter wrapped past `u64::MAX`.
    CounterWrapped,
    /// The counter went backwards (driver reload): the interval is estimated from power.
    ResetFromPower,
    /// The counter went backwards and no power reading exists: the new reading (energy since
    /// the reset, a lower bound for the interval) is used.
    ResetFromCounter,
    /// No counter reading: power × time.
    Power,
    /// The counter did not move although power read at least 1 W·s worth over the
    /// interval (a stuck counter): power × time stands in.
    StuckFromPower,
    /// Nothing to measure with.
    None,
}

/// Tracks one GPU's energy counter across readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnergyCounter {
    last_mj: Option<u64>,
}

/// The largest plausible power of one GPU (W), used to tell a wrap from a reset: the
/// largest catalogued TDP is 1,400 W; 5 kW leaves room for modules and spikes.
const MAX_PLAUSIBLE_WATTS: f64 = 5_000.0;

impl EnergyCounter {
    /// A counter that has seen no reading.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next reading and returns the energy (mJ) since the previous one.
    ///
    /// - `counter_mj`: NVML's total energy counter, if it could be read this tick.
    /// - `power_mw`: instantaneous power, for the fallback.
    /// - `seconds`: time since the previous reading.
    ///
    /// The first reading yields power × time (or nothing): there is no previous counter.
    pub fn delta(
        &mut self,
        counter_mj: Option<u64>,
        power_mw: Option<u64>,
        seconds: f64,
    ) -> (u64, EnergySource) {
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        let from_power = power_mw.map(|p| (p as f64 * seconds).round() as u64);
        let previous = self.last_mj;
        if let Some(now) = counter_mj {
            self.last_mj = Some(now);
        }
        match (previous, counter_mj) {
            // A counter that stands still while the board draws power is stuck, not idle:
            // at least 1 J by power is far above the counter's millijoule resolution.
            (Some(prev), Some(now)) if now == prev && from_power.is_some_and(|p| p >= 1_000) => {
                (from_power.unwrap_or(0), EnergySource::StuckFromPower)
            }
            (Some(prev), Some(now)) if now >= prev => (now - prev, EnergySource::Counter),
            (Some(prev), Some(now)) => {
                let wrapped = u128::from(now) + u128::from(u64::MAX - prev) + 1;
                let plausible = (MAX_PLAUSIBLE_WATTS * 1e3 * seconds.max(1.0)) as u128;
                if wrapped <= plausible {
                    (wrapped as u64, EnergySource::CounterWrapped)
                } else if let Some(p) = from_power {
                    (p, EnergySource::ResetFromPower)
                } else {
                    (now, EnergySource::ResetFromCounter)
                }
            }
            _ => match from_power {
                Some(p) => (p, EnergySource::Power),
                None => (0, EnergySource::None),
            },
        }
    }
}

/// Millijoules in a megawatt-hour (3.6e9 J): the one conversion every report, metric and
/// page uses, since NVML counts millijoules and the AI Act's documentation asks for MWh.
pub const MJ_PER_MWH: f64 = 3.6e12;

/// Joules to megawatt-hours.
pub fn joules_to_mwh(joules: f64) -> f64 {
    joules * 1e3 / MJ_PER_MWH
}

/// Millijoules (the ledger's integer unit) to megawatt-hours.
pub fn mj_to_mwh(mj: u128) -> f64 {
    mj as f64 / MJ_PER_MWH
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_deltas_and_survives_reset_and_wrap() {
        let mut c = EnergyCounter::new();
        assert_eq!(
            c.delta(Some(1_000), Some(500_000), 1.0),
            (500_000, EnergySource::Power)
        );
        assert_eq!(
            c.delta(Some(701_000), Some(700_000), 1.0),
            (700_000, EnergySource::Counter)
        );
        // Driver reload: counter restarts near zero. Power × time stands in.
        assert_eq!(
            c.delta(Some(3_000), Some(650_000), 1.0),
            (650_000, EnergySource::ResetFromPower)
        );
        assert_eq!(
            c.delta(Some(603_000), None, 1.0),
            (600_000, EnergySource::Counter)
        );
        // Wrap: from 1,000 mJ below the top to 699,000 past zero = 700,000 mJ.
        let mut w = EnergyCounter {
            last_mj: Some(u64::MAX - 999),
        };
        assert_eq!(
            w.delta(Some(699_000), None, 1.0),
            (700_000, EnergySource::CounterWrapped)
        );
        // Reset with no power reading: the counter since the reset is the best lower bound.
        let mut r = EnergyCounter {
            last_mj: Some(5_000_000),
        };
        assert_eq!(
            r.delta(Some(42), None, 1.0),
            (42, EnergySource::ResetFromCounter)
        );
    }

    /// A counter stuck at 5,000 mJ while power reads 600 W for 1 s: 600,000 mJ from power.
    #[test]
    fn a_stuck_counter_is_replaced_by_power() {
        let mut c = EnergyCounter::new();
        c.delta(Some(5_000), Some(600_000), 1.0);
        assert_eq!(
            c.delta(Some(5_000), Some(600_000), 1.0),
            (600_000, EnergySource::StuckFromPower)
        );
        // An idle board (no power) with a still counter is just idle.
        assert_eq!(
            c.delta(Some(5_000), Some(0), 1.0),
            (0, EnergySource::Counter)
        );
    }

    #[test]
    fn mwh() {
        assert!((joules_to_mwh(3.6e9) - 1.0).abs() < 1e-12);
        assert_eq!(mj_to_mwh(36 * 10u128.pow(11)), 1.0);
    }

    proptest! {
        /// Whatever the counter does, a delta never exceeds what 5 kW could draw in the
        /// interval, unless the counter itself (not a reset artefact) says so.
        #[test]
        fn resets_and_wraps_never_book_absurd_energy(
            readings in proptest::collection::vec((any::<u64>(), 0u64..2_000_000), 1..50),
        ) {
            let mut c = EnergyCounter::new();
            let mut prev: Option<u64> = None;
            for (mj, power_mw) in readings {
                let (d, src) = c.delta(Some(mj), Some(power_mw), 1.0);
                match src {
                    EnergySource::Counter => prop_assert_eq!(d, mj - prev.unwrap()),
                    EnergySource::CounterWrapped => prop_assert!(d <= 5_000_000),
                    EnergySource::ResetFromPower | EnergySource::Power | EnergySource::StuckFromPower => prop_assert_eq!(d, power_mw),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
                prev = Some(mj);
            }
        }
    }
}
