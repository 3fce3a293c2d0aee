//! Time sources for the sampler and the shipper: real time, or virtual time so tests and the
//! demo can play weeks of event time in seconds. ("Clock" in flopmeter means the Art. 52
//! notification clock, `flopmeter_core::clock`; these are time sources.)
//!
//! Why a trait and not `Instant::now()` sprinkled through the sampler: the sampler's output is
//! a function of event time (interval boundaries, record timestamps, FLOP = rate × Δt), and a
//! test that had to wait ten real seconds per report interval could not exercise days of
//! accumulation, spool back-pressure or reconnects. Both sources give two views of time:
//! a monotonic one for measuring Δt between samples (immune to wall-clock steps) and Unix
//! milliseconds for the event time written into records.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A stop flag a blocking thread can sleep on: raising it wakes every sleeper at once, so a
/// SIGTERM never waits for the rest of a sample interval.
#[derive(Clone, Default)]
pub struct StopSignal {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopSignal")
            .field("raised", &self.is_raised())
            .finish()
    }
}

impl StopSignal {
    /// A signal that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal and wakes all sleepers.
    pub fn raise(&self) {
        let (lock, cv) = &*self.inner;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    /// Whether the signal has been raised.
    pub fn is_raised(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `timeout` (real time); returns `false` if the signal was raised.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.inner;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |raised| !*raised)
            .unwrap_or_else(|e| e.into_inner());
        !*guard
    }
}

/// A source of time for the sampler.
pub trait TimeSource: Send + Sync + fmt::Debug {
    /// Event time now, as Unix milliseconds.
    fn now_unix_ms(&self) -> i64;
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn monotonic(&self) -> Duration;
    /// Blocks until [`TimeSource::monotonic`] reaches `deadline` or `stop` is raised. Returns
    /// `false` when stopped.
    fn sleep_until(&self, deadline: Duration, stop: &StopSignal) -> bool;
}

/// The machine's time: `Instant` for Δt, `SystemTime` for event time.
#[derive(Debug, Clone, Copy)]
pub struct RealTime {
    origin: Instant,
}

impl RealTime {
    /// Real time whose monotonic origin is now.
    pub fn new() -> Self {
        RealTime {
            origin: Instant::now(),
        }
    }
}

impl Default for RealTime {
    fn default() -> Self {
        Self::new()
    }
}

impl TimeSource for RealTime {
    fn now_unix_ms(&self) -> i64 {
        unix_ms(SystemTime::now())
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep_until(&self, deadline: Duration, stop: &StopSignal) -> bool {
        loop {
            let now = self.monotonic();
            if now >= deadline {
                return !stop.is_raised();
            }
            if !stop.wait_timeout(deadline - now) {
                return false;
            }
        }
    }
}

/// Milliseconds since the Unix epoch (negative before it, which no record ever is).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Time that only moves when someone sleeps on it (or calls [`VirtualTime::advance`]).
///
/// `sleep_until` returns at once, having moved time to the deadline, so a sampler on a
/// virtual time runs as fast as the CPU allows ([`VirtualTime::paced`]: a fixed multiple
/// of real time). Clones share the same time, so a
/// [`crate::simulated::SimulatedSource`] and the sampler see one timeline.
#[derive(Debug, Clone)]
pub struct VirtualTime {
    start_unix_ms: i64,
    elapsed_ns: Arc<AtomicU64>,
    speed: Option<f64>,
}

impl VirtualTime {
    /// Virtual time starting at `start_unix_ms` event time.
    pub fn new(start_unix_ms: i64) -> Self {
        VirtualTime {
            start_unix_ms,
            elapsed_ns: Arc::new(AtomicU64::new(0)),
            speed: None,
        }
    }

    /// Virtual time that runs `speed` times faster than real time instead of as fast as
    /// possible: for demos, where event time must not run ahead of what a collector accepts
    /// (it rejects events far in its future) and a human should watch it happen.
    pub fn paced(start_unix_ms: i64, speed: f64) -> Self {
        VirtualTime {
            speed: (speed.is_finite() && speed > 0.0).then_some(speed),
            ..Self::new(start_unix_ms)
        }
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_add(ns, Ordering::SeqCst);
    }

    /// The event time it started at.
    pub fn start_unix_ms(&self) -> i64 {
        self.start_unix_ms
    }
}

impl TimeSource for VirtualTime {
    fn now_unix_ms(&self) -> i64 {
        let ms = self.monotonic().as_millis();
        self.start_unix_ms
            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: Duration, stop: &StopSignal) -> bool {
        if stop.is_raised() {
            return false;
        }
        if let Some(speed) = self.speed {
            // Paced: really wait the virtual gap divided by the speed-up.
            let gap = deadline.saturating_sub(self.monotonic());
            if !gap.is_zero() && !stop.wait_timeout(gap.div_f64(speed)) {
                return false;
            }
        }
        let target = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_max(target, Ordering::SeqCst);
        // Let the shipper and other threads run: a virtual sampler would otherwise spin a
        // core flat out and starve the threads that drain its output.
        std::thread::yield_now();
        !stop.is_raised()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_jumps_and_is_shared() {
        let c = VirtualTime::new(1_000_000);
        let c2 = c.clone();
        let stop = StopSignal::new();
        assert!(c.sleep_until(Duration::from_secs(10), &stop));
        assert_eq!(c2.now_unix_ms(), 1_010_000);
        // Sleeping to a past deadline never moves time backwards.
        assert!(c.sleep_until(Duration::from_secs(5), &stop));
        assert_eq!(c.monotonic(), Duration::from_secs(10));
        stop.raise();
        assert!(!c.sleep_until(Duration::from_secs(20), &stop));
    }

    #[test]
    fn paced_virtual_time_moves_by_the_deadline() {
        let c = VirtualTime::paced(0, 1e6);
        let stop = StopSignal::new();
        assert!(c.sleep_until(Duration::from_secs(60), &stop));
        assert_eq!(c.now_unix_ms(), 60_000);
    }

    #[test]
    fn real_time_wakes_on_stop() {
        let c = RealTime::new();
        let stop = StopSignal::new();
        let s2 = stop.clone();
        let t = std::thread::spawn(move || c.sleep_until(Duration::from_secs(3600), &s2));
        stop.raise();
        assert!(!t.join().unwrap());
    }
}
