//! Time as devices see it: nanoseconds on a clock the machine provides.

use std::cell::Cell;
use std::time::Instant;

pub trait Clock {
    /// Nanoseconds since the machine was created; never goes backwards.
    fn now_ns(&self) -> u64;
    /// Wall-clock time (ns since the Unix epoch) at which `now_ns()` was 0; the RTC's
    /// starting point.
    fn epoch_unix_ns(&self) -> u64;
}

/// The host's monotonic clock.
pub struct HostClock {
    start: Instant,
    epoch: u64,
}

impl HostClock {
    pub fn new() -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            start: Instant::now(),
            epoch,
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn epoch_unix_ns(&self) -> u64 {
        self.epoch
    }
}

/// A clock that moves only when told to: device tests, and later `--deterministic`, where
/// the machine advances it from the guest instruction count.
#[derive(Default)]
pub struct ManualClock {
    now: Cell<u64>,
    epoch: u64,
}

impl ManualClock {
    pub fn new(epoch_unix_ns: u64) -> Self {
        Self {
            now: Cell::new(0),
            epoch: epoch_unix_ns,
        }
    }
    pub fn set(&self, ns: u64) {
        assert!(ns >= self.now.get(), "clock may not go backwards");
        self.now.set(ns);
    }
    pub fn advance(&self, ns: u64) {
        self.now.set(self.now.get() + ns);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.get()
    }
    fn epoch_unix_ns(&self) -> u64 {
        self.epoch
    }
}
