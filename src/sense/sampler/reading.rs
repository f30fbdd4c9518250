//! One core's counters turned into its published utilization: the delta from the previous
//! read, the EWMA, offline and anomaly bookkeeping. Shared by a core's own thread and the
//! sweeper that reads the unwatched cores.

use std::time::Duration;

use super::{CoreUtil, ewma};
use crate::sense::procstat::{self, CpuTimes};

/// What one reader knows of one core between reads.
#[derive(Debug)]
pub(super) struct Reading {
    user_hz: u64,
    prev: Option<(CpuTimes, u64)>,
    pub out: CoreUtil,
}

/// `CLK_TCK`, the unit of `/proc/stat`'s counters (100 where sysconf cannot tell).
pub(super) fn user_hz() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&v| v > 0)
        .map_or(100, |v| v as u64)
}

impl Reading {
    pub fn new(cpu: usize, user_hz: u64) -> Self {
        Self {
            user_hz,
            prev: None,
            out: CoreUtil {
                cpu,
                ..CoreUtil::default()
            },
        }
    }

    /// Takes over a core another reader published until now (`last`): its figures carry on,
    /// but the next read only sets a new baseline, since this reader's own previous counters
    /// are from before the hand-over.
    pub fn resume(&mut self, last: CoreUtil) {
        let pinned = self.out.pinned;
        self.out = CoreUtil {
            cpu: self.out.cpu,
            pinned,
            ..last
        };
        self.prev = None;
    }

    /// Takes in this core's counters at `now` (`None`: its line is absent, it is offline).
    /// Returns whether it came back online with this read.
    pub fn observe(&mut self, times: Option<CpuTimes>, now: u64, smoothing: Duration) -> bool {
        let Some(times) = times else {
            self.out.online = false;
            self.out.utilization = None;
            self.out.smoothed = None;
            self.out.at_ns = now;
            self.prev = None;
            return false;
        };
        let back = !self.out.online;
        self.out.online = true;
        if let Some((p, t0)) = self.prev {
            let dt = now.saturating_sub(t0);
            let d = procstat::delta(&p, &times, procstat::max_ticks(dt, self.user_hz));
            self.out.anomalies += d.anomalies;
            self.out.utilization = d.utilization();
            if let Some(u) = self.out.utilization {
                self.out.smoothed = Some(ewma(self.out.smoothed, u, dt, smoothing));
                self.out.period_ns = dt;
            }
        }
        self.prev = Some((times, now));
        self.out.at_ns = now;
        back
    }
}
