//! The SLO controller: decides which cores the protected service gets, and so which cores batch
//! may use, from the service's latency and CPU use. Pure: readings and the time go in, an
//! allocation comes out; no I/O, no clock.
//!
//! The problem: grow fast enough that a load step never breaks the SLO, give cores back to batch
//! when load falls, and not oscillate. The approach is a ladder of allocations (see
//! [`ladder`]), from "service on its minimum cores, shared with batch" to "service alone on its
//! maximum cores". The controller
//! - climbs at once when the recent p95 or the service's CPU use crosses its grow threshold
//!   (two rungs when the SLO itself is already broken), at most once per `grow_cooldown`;
//! - steps down one rung only after `hold_down` without change, and only while latency, CPU use
//!   and QPS are all comfortably low — QPS below what it was when that rung had to be climbed;
//! - undoes a step down that hurt latency within `undo_window`, doubling that rung's hold-down
//!   (up to `max_hold_down`) so a bad step down is not retried at the same pace;
//! - learns where sharing pays ([`share`]): a step down to the shared rung starts as a partial
//!   share (a CPU quota for batch on the service's cores), narrowed when latency rises and
//!   undone when narrowing is not enough, widened when it holds; the outcome is remembered per
//!   load level and batch job, so shares that keep failing stop and shares that held are
//!   retried at the quota that held.

mod ladder;
pub mod record;
pub mod share;
mod sharing;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::cpuset::CpuSet;

pub use ladder::{Allocation, LadderError, ladder};
use share::{Limits, ShareMemory};

/// Controller settings (the `[controller]` config section). Fractions are of the SLO's p95.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// How often the controller runs, in ms (it also runs at once when a sampler sees overload).
    pub period_ms: u64,
    /// Climb when the recent p95 exceeds this fraction of the SLO target.
    pub grow_p95_frac: f64,
    /// Climb when the service uses more than this fraction of the cores it holds.
    pub grow_util: f64,
    /// Step down only while the recent and window p95 are below this fraction of the SLO.
    pub shrink_p95_frac: f64,
    /// Step down only if the service would use less than this fraction of the smaller set.
    pub shrink_util: f64,
    /// Step down only if QPS is below this fraction of the QPS at which the rung was climbed.
    pub shrink_qps_frac: f64,
    /// Minimum time between climbs, ms (lets the last climb take effect on the readings).
    pub grow_cooldown_ms: u64,
    /// Minimum time without change before stepping down, ms.
    pub hold_down_ms: u64,
    /// A step down followed within this many ms by latency over the grow threshold is undone.
    pub undo_window_ms: u64,
    /// Upper bound for a rung's hold-down after repeated undos, ms.
    pub max_hold_down_ms: u64,
    /// Let batch share the service's cores while the service is nearly idle (the bottom rung).
    pub share_when_idle: bool,
    /// Quota (fraction of the service's cores' time) a share with no record starts at; 1 means
    /// all-or-nothing shares.
    pub share_quota: f64,
    /// A share that would be narrowed below this quota is undone instead.
    pub share_quota_min: f64,
    /// A share that lasts this long without latency rising counts as held, ms.
    pub share_proof_ms: u64,
    /// Records (load level, batch job) kept about shares.
    pub share_memory: usize,
    /// Held and undone counts halve every this many ms.
    pub share_half_life_ms: u64,
    /// Undone shares (decayed) at which a load level and job are no longer shared.
    pub share_give_up: f64,
    /// The daemon writes every turn's inputs and answer to `events.jsonl` (for `lowsched
    /// simulate --replay`; ~200 bytes per turn).
    pub record_turns: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            period_ms: 50,
            grow_p95_frac: 0.5,
            grow_util: 0.7,
            shrink_p95_frac: 0.25,
            shrink_util: 0.35,
            shrink_qps_frac: 0.8,
            grow_cooldown_ms: 60,
            hold_down_ms: 2_000,
            undo_window_ms: 1_000,
            max_hold_down_ms: 30_000,
            share_when_idle: true,
            share_quota: 0.25,
            share_quota_min: 0.05,
            share_proof_ms: 1_000,
            share_memory: 64,
            share_half_life_ms: 600_000,
            share_give_up: 1.5,
            record_turns: false,
        }
    }
}

/// What the controller reads each period. `None` means "no reading" (e.g. the probe is down):
/// the controller then never steps down on that basis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// Monotonic time of this step.
    pub now: Duration,
    /// When the newest reading was taken (for reaction-time records).
    pub sampled_at: Duration,
    /// p95 of the most recent probe samples (tens of ms), µs.
    pub p95_recent_us: Option<f64>,
    /// p95 of the current SLO window so far, µs.
    pub p95_window_us: Option<f64>,
    /// The service's CPU use over the last sampler period, in cores (cgroup or per-pid counters).
    pub service_cpu: Option<f64>,
    /// Mean /proc/stat utilization (0–1) of the service's cores; used only while they are
    /// exclusive (shared cores are busy with batch by design).
    pub service_core_util: Option<f64>,
    pub qps: Option<f64>,
    /// Names of the running batch jobs that could share the service's cores, in the order
    /// the policy would keep them.
    pub batch_jobs: Vec<String>,
}

/// Which way the allocation moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Move {
    Grow,
    Shrink,
    /// A grow that reverses a recent shrink (or gives up a share).
    Undo,
    /// A smaller quota for batch on the service's cores.
    Narrow,
    /// A larger quota for batch on the service's cores.
    Widen,
}

impl Move {
    pub fn verb(self) -> &'static str {
        match self {
            Move::Grow => "grow",
            Move::Shrink => "shrink",
            Move::Undo => "undo",
            Move::Narrow => "narrow",
            Move::Widen => "widen",
        }
    }
}

/// A change of allocation, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: Move,
    pub from: usize,
    pub to: usize,
    pub reason: String,
    /// When the reading that triggered it was taken.
    pub triggered_by_sample_at: Duration,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, from, to) = (self.kind.verb(), self.from, self.to);
        write!(f, "{verb} rung {from}->{to}: {}", self.reason)
    }
}

/// Batch's share of the service's cores on the shared rung.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    /// Fraction of the cores' time batch may take (1 = all it wants, at idle priority).
    pub quota: f64,
    /// The batch job to put there first (least interfering); empty for any.
    pub job: String,
}

/// The controller's answer for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub alloc: Allocation,
    pub change: Option<Change>,
    /// Set while batch shares the service's cores.
    pub share: Option<Share>,
    /// A decision not to act, said once (e.g. a share the memory advises against).
    pub note: Option<String>,
}

/// A share in force: what it is, and what it is recorded under.
#[derive(Clone, Debug)]
struct Sharing {
    share: Share,
    level: i32,
    since: Duration,
    proven: bool,
}

/// The SLO controller's state.
#[derive(Clone, Debug)]
pub struct Controller {
    cfg: ControllerConfig,
    slo_p95_us: f64,
    rungs: Vec<Allocation>,
    level: usize,
    last_change: Option<Duration>,
    last_grow: Option<Duration>,
    /// QPS when each rung was last climbed to (index = rung).
    qps_at_climb: Vec<Option<f64>>,
    /// Hold-down per rung, grown by undos.
    hold_down: Vec<Duration>,
    /// The last step down: (rung it left, when).
    last_shrink: Option<(usize, Duration)>,
    /// The rung the last climb started from: while its hold-down runs, the QPS peak seen is
    /// recorded as the load that needed the rungs above it (QPS readings lag a load step).
    climbed_from: Option<usize>,
    sharing: Option<Sharing>,
    memory: ShareMemory,
    /// The last refusal noted, so it is said once.
    refused: Option<String>,
}

impl Controller {
    /// A controller for a service that may hold `min..=max` of `cores`, starting on the top rung
    /// (safe until readings show the service can spare cores).
    pub fn new(
        cfg: ControllerConfig,
        slo_p95_us: f64,
        cores: CpuSet,
        min: usize,
        max: usize,
    ) -> Result<Controller, LadderError> {
        let rungs = ladder(cores, min, max, cfg.share_when_idle)?;
        let top = rungs.len() - 1;
        let hold = Duration::from_millis(cfg.hold_down_ms);
        Ok(Controller {
            qps_at_climb: vec![None; rungs.len()],
            hold_down: vec![hold; rungs.len()],
            cfg,
            slo_p95_us,
            rungs,
            level: top,
            last_change: None,
            last_grow: None,
            last_shrink: None,
            climbed_from: None,
            sharing: None,
            memory: ShareMemory::default(),
            refused: None,
        })
    }

    pub fn allocation(&self) -> &Allocation {
        &self.rungs[self.level]
    }

    pub fn rungs(&self) -> &[Allocation] {
        &self.rungs
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// Takes new thresholds (a config reload), keeping the rung it is on and what it learnt.
    /// `share_when_idle` shaped the ladder when it was built, so it keeps its old value.
    pub fn set_config(&mut self, cfg: ControllerConfig) {
        self.cfg = ControllerConfig {
            share_when_idle: self.cfg.share_when_idle,
            ..cfg
        };
    }

    /// Fraction of the service's cores' time batch may take now: 0 while they are exclusive.
    pub fn share_quota(&self) -> f64 {
        match &self.sharing {
            Some(s) => s.share.quota,
            None if self.rungs[self.level].exclusive => 0.0,
            None => 1.0,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            first_quota: self.cfg.share_quota.clamp(0.0, 1.0),
            min_quota: self.cfg.share_quota_min.clamp(0.0, 1.0),
            give_up: self.cfg.share_give_up,
            half_life: Duration::from_millis(self.cfg.share_half_life_ms),
            capacity: self.cfg.share_memory,
        }
    }

    /// How busy the service is relative to the cores it holds on `rung` (0 = idle, 1 = all).
    /// The cores `busy` divides the service's CPU use by on `rung`.
    fn service_cores(&self, rung: usize) -> f64 {
        self.rungs[rung].service.len().max(1) as f64
    }

    /// The recent p95 (µs) above which the controller climbs.
    pub fn grow_p95_us(&self) -> f64 {
        self.cfg.grow_p95_frac * self.slo_p95_us
    }

    /// The readings above which the current rung climbs: the service's CPU use in cores and
    /// the recent p95 in µs, for sensors that wake the controller early. `None` on the top
    /// rung, where nothing climbs.
    pub fn grow_triggers(&self) -> Option<(f64, f64)> {
        (self.level + 1 < self.rungs.len()).then(|| {
            (
                self.cfg.grow_util * self.service_cores(self.level),
                self.grow_p95_us(),
            )
        })
    }

    fn busy(&self, inp: &Inputs, rung: usize) -> Option<f64> {
        let a = &self.rungs[rung];
        let n = self.service_cores(rung);
        match (inp.service_cpu, inp.service_core_util) {
            (Some(cpu), _) => Some(cpu / n),
            (None, Some(util)) if a.exclusive => Some(util),
            _ => None,
        }
    }

    /// One control step.
    pub fn step(&mut self, inp: &Inputs) -> Decision {
        self.learn_load(inp);
        let mut change = self.decide(inp);
        if change.is_none() {
            change = self.settle_share(inp);
        }
        if let Some(c) = &change {
            self.apply(c, inp);
        }
        let note = self.note_refusal(inp, change.is_some());
        Decision {
            alloc: self.rungs[self.level].clone(),
            change,
            share: self.sharing.as_ref().map(|s| s.share.clone()),
            note,
        }
    }

    /// On the rung above the shared one with nothing else to do, says once why it does not
    /// share (when the memory is the reason).
    fn note_refusal(&mut self, inp: &Inputs, changed: bool) -> Option<String> {
        let above_share = self.level == 1 && !self.rungs[0].exclusive;
        let why = (above_share && !changed)
            .then(|| self.share_refusal(inp))
            .flatten();
        let key = why
            .as_ref()
            .map(|w| w.split(':').next().unwrap_or("").to_string());
        if key == self.refused {
            return None;
        }
        self.refused = key;
        why
    }

    /// While settling after a climb, keeps the highest QPS seen as the climbed rungs' load.
    fn learn_load(&mut self, inp: &Inputs) {
        let (Some(from), Some(q), Some(at)) = (self.climbed_from, inp.qps, self.last_change) else {
            return;
        };
        if inp.now.saturating_sub(at) > self.hold_down[self.level] {
            self.climbed_from = None;
            return;
        }
        for rung in from + 1..=self.level {
            let slot = &mut self.qps_at_climb[rung];
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }

    fn decide(&self, inp: &Inputs) -> Option<Change> {
        let slo = self.slo_p95_us;
        let top = self.rungs.len() - 1;
        let grow_p95 = self.grow_p95_us();
        let since = |t: Option<Duration>| t.map(|t| inp.now.saturating_sub(t));
        let hot_latency = inp.p95_recent_us.filter(|&p| p > grow_p95);
        let busy = self.busy(inp, self.level);
        let hot_cpu = busy.filter(|&b| b > self.cfg.grow_util);
        let change = |kind, to, reason: String| {
            Some(Change {
                kind,
                from: self.level,
                to,
                reason,
                triggered_by_sample_at: inp.sampled_at,
            })
        };

        if let Some(c) = self.decide_share(inp, hot_latency) {
            return Some(c);
        }

        // Undo: a recent step down made latency worse.
        if let (Some((left, at)), Some(p)) = (self.last_shrink, hot_latency) {
            if self.level < left
                && inp.now.saturating_sub(at) <= Duration::from_millis(self.cfg.undo_window_ms)
            {
                let reason = format!(
                    "undo step down: recent p95 {p:.0}us > {grow_p95:.0}us within {}ms of it",
                    self.cfg.undo_window_ms
                );
                return change(Move::Undo, left, reason);
            }
        }

        // Grow at once when a threshold is crossed.
        let cooled = since(self.last_grow)
            .is_none_or(|d| d >= Duration::from_millis(self.cfg.grow_cooldown_ms));
        if self.level < top && cooled && (hot_latency.is_some() || hot_cpu.is_some()) {
            let broken = hot_latency.is_some_and(|p| p > slo);
            let to = if broken {
                (self.level + 2).min(top)
            } else {
                self.level + 1
            };
            let why = match (hot_latency, hot_cpu) {
                (Some(p), _) if broken => format!("recent p95 {p:.0}us > SLO {slo:.0}us"),
                (Some(p), _) => format!("recent p95 {p:.0}us > {grow_p95:.0}us"),
                (None, Some(b)) => {
                    format!(
                        "service busy {:.0}% > {:.0}%",
                        b * 100.0,
                        self.cfg.grow_util * 100.0
                    )
                }
                (None, None) => String::new(),
            };
            return change(Move::Grow, to, why);
        }

        self.decide_step_down(inp)
    }

    /// Steps down only when everything is comfortably low, after the hold-down; onto a shared
    /// rung through a share, else a plain shrink.
    fn decide_step_down(&self, inp: &Inputs) -> Option<Change> {
        let slo = self.slo_p95_us;
        let since = |t: Option<Duration>| t.map(|t| inp.now.saturating_sub(t));
        let change = |kind, to, reason: String| {
            Some(Change {
                kind,
                from: self.level,
                to,
                reason,
                triggered_by_sample_at: inp.sampled_at,
            })
        };
        if self.level == 0 {
            return None;
        }
        let held = since(self.last_change).is_none_or(|d| d >= self.hold_down[self.level]);
        let low_p95 = self.cfg.shrink_p95_frac * slo;
        let calm_latency = matches!((inp.p95_recent_us, inp.p95_window_us),
            (Some(r), Some(w)) if r < low_p95 && w < low_p95);
        let next = self.level - 1;
        let calm_cpu = self
            .busy(inp, next)
            .is_some_and(|b| b < self.cfg.shrink_util);
        let calm_qps = match (inp.qps, self.qps_at_climb[self.level]) {
            (Some(q), Some(at)) => q < self.cfg.shrink_qps_frac * at,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if held && calm_latency && calm_cpu && calm_qps {
            let reason = format!(
                "calm for {}ms: p95 {:.0}us/{:.0}us < {low_p95:.0}us, service would be {:.0}% busy",
                self.hold_down[self.level].as_millis(),
                inp.p95_recent_us.unwrap_or(0.0),
                inp.p95_window_us.unwrap_or(0.0),
                self.busy(inp, next).unwrap_or(0.0) * 100.0
            );
            if !self.rungs[next].exclusive {
                return self.decide_share_start(inp, reason);
            }
            return change(Move::Shrink, next, reason);
        }
        None
    }

    fn apply(&mut self, c: &Change, inp: &Inputs) {
        self.apply_share(c, inp);
        match c.kind {
            Move::Narrow | Move::Widen => {
                self.last_change = Some(inp.now);
                return;
            }
            Move::Grow => {
                self.last_grow = Some(inp.now);
                // The load that needed these rungs: learned from here through the hold-down
                // (`learn_load`), so a step down waits for the load to fall below it.
                for rung in c.from + 1..=c.to {
                    self.qps_at_climb[rung] = inp.qps;
                }
                self.climbed_from = Some(self.climbed_from.map_or(c.from, |f| f.min(c.from)));
                self.last_shrink = None;
            }
            Move::Undo => {
                // The load did not change, the allocation did: back off in time, not in QPS,
                // so interference that has nothing to do with load cannot pin the rung forever.
                self.last_grow = Some(inp.now);
                let max = Duration::from_millis(self.cfg.max_hold_down_ms);
                let h = &mut self.hold_down[c.to];
                *h = (*h * 2).min(max);
                self.last_shrink = None;
            }
            Move::Shrink => {
                self.qps_at_climb[c.from] = None;
                self.climbed_from = None;
                self.last_shrink = Some((c.from, inp.now));
            }
        }
        self.level = c.to;
        self.last_change = Some(inp.now);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_share;
