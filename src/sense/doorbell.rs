//! The control loop's early wake-up: a sensor whose reading crosses the controller's grow
//! threshold rings the doorbell, so a grow waits neither for the controller's next period nor
//! for anything else.
//!
//! The control loop sleeps on the [`Receiver`] between its periodic turns. A [`Tripwire`] pairs
//! the doorbell with a level the controller sets (it moves with the service's core count, and
//! is lifted out of reach when a grow is impossible) and the sensor compares readings against.
//! Each tripwire rings at most once per `min_gap`, so a sustained overload wakes the loop at a
//! bounded rate; the channel holds one ring, so rings while the loop is busy merge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// A level no reading reaches: the tripwire is disarmed.
pub const DISARMED: u64 = u64::MAX;

/// Wakes the control loop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Doorbell {
    tx: Sender<()>,
}

impl Doorbell {
    /// A doorbell and the receiver the control loop waits on.
    pub fn new() -> (Self, Receiver<()>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (Self { tx }, rx)
    }

    pub fn ring(&self) {
        // Full: a ring is already waiting for the loop, which is as good.
        let _ = self.tx.try_send(());
    }
}

/// A doorbell with a level: rings when a reading exceeds it, at most once per `min_gap`.
/// Clones share the level and the spacing; separate tripwires do not share the spacing, so
/// one sensor's ring (which may have led to nothing) never holds back another's.
#[derive(Clone, Debug)]
pub struct Tripwire {
    bell: Doorbell,
    level: Arc<AtomicU64>,
    /// `CLOCK_MONOTONIC` ns of the last ring (0: never).
    last_ns: Arc<AtomicU64>,
    min_gap_ns: u64,
}

impl Tripwire {
    pub fn new(bell: Doorbell, level: u64, min_gap: Duration) -> Self {
        Self {
            bell,
            level: Arc::new(AtomicU64::new(level)),
            last_ns: Arc::new(AtomicU64::new(0)),
            min_gap_ns: min_gap.as_nanos() as u64,
        }
    }

    /// Moves the level for every clone; [`DISARMED`] turns it off.
    pub fn set_level(&self, level: u64) {
        self.level.store(level, Ordering::Relaxed);
    }

    pub fn level(&self) -> u64 {
        self.level.load(Ordering::Relaxed)
    }

    /// Rings if `reading` is above the level and the last ring is `min_gap` old. True if it rang.
    pub fn check(&self, reading: u64, now_ns: u64) -> bool {
        let level = self.level();
        if level == DISARMED || reading <= level {
            return false;
        }
        let last = self.last_ns.load(Ordering::Relaxed);
        if last != 0 && now_ns.saturating_sub(last) < self.min_gap_ns {
            return false;
        }
        // Two clones crossing at once: one rings.
        if self
            .last_ns
            .compare_exchange(last, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.bell.ring();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn rings_are_spaced_by_the_minimum_gap() {
        let (bell, rx) = Doorbell::new();
        let wire = Tripwire::new(bell, 0, Duration::from_millis(10));
        assert!(wire.check(1, 100 * MS));
        assert!(rx.try_recv().is_ok());
        assert!(!wire.check(1, 105 * MS), "5 ms after a ring");
        assert!(rx.try_recv().is_err());
        assert!(wire.check(1, 110 * MS));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn rings_while_the_loop_is_busy_merge_into_one() {
        let (bell, rx) = Doorbell::new();
        bell.ring();
        bell.ring();
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn one_sensors_ring_does_not_hold_back_anothers() {
        let (bell, rx) = Doorbell::new();
        let cpu = Tripwire::new(bell.clone(), 700, Duration::from_millis(60));
        let latency = Tripwire::new(bell, 400, Duration::from_millis(60));
        assert!(cpu.check(800, 100 * MS));
        assert!(rx.try_recv().is_ok());
        assert!(latency.check(500, 101 * MS));
        assert!(
            !latency.clone().check(500, 102 * MS),
            "clones share the spacing"
        );
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn tripwire_rings_only_above_its_level_and_not_when_disarmed() {
        let (bell, rx) = Doorbell::new();
        let wire = Tripwire::new(bell, 400, Duration::ZERO);
        assert!(!wire.check(400, MS), "at the level is not above it");
        assert!(wire.check(401, 2 * MS));
        assert!(rx.try_recv().is_ok());
        let clone = wire.clone();
        clone.set_level(DISARMED);
        assert!(!wire.check(u64::MAX, 3 * MS), "disarmed through a clone");
        assert!(rx.try_recv().is_err());
    }
}
