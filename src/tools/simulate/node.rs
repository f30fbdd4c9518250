//! The simulated node: one run of a load trace and a batch job list through either the real SLO
//! controller or a static partition, with the real batch policy deciding where jobs run.
//!
//! Time advances in fixed steps (`step_ms`). Each step: the offered load is drawn, the service's
//! latency for its current allocation is modelled, batch jobs progress on the cores they hold,
//! and the controller runs every `period_ms` or at once when a reading crosses a grow trigger
//! (the daemon's early wake). The policy runs whenever batch cores change or a job ends. A
//! decision takes effect from the next step (the daemon applies one within milliseconds).

use std::collections::VecDeque;
use std::time::Duration;

use crate::decide::controller::{Allocation, Controller, Inputs};
use crate::decide::policy::{ActiveJob, Command, JobView, Policy, Rank, Snapshot};
use crate::model::cpuset::CpuSet;
use crate::model::inventory::{GpuSet, Inventory};
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::JobState;
use crate::model::resources::Bytes;

use super::latency::Period;
use super::trace::{Rng, Trace};
use super::{SimConfig, SimError};

/// Who decides the service's cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The SLO controller.
    Lowsched,
    /// The service alone on the first `k` cores, batch on the rest, nothing moves.
    Static(usize),
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub mode: Mode,
    /// 1 s windows simulated, and those whose p95 exceeded the SLO.
    pub windows: u64,
    pub windows_over: u64,
    /// When the last batch job ended; `None` if some had not by the end of the run.
    pub makespan_s: Option<f64>,
    /// CPU time batch could use over the trace's first pass (cores × seconds; a shared core
    /// counts what the service leaves of it).
    pub batch_core_s: f64,
    /// Controller changes (grows, shrinks, undos and share moves).
    pub changes: u64,
    /// The worst window p95, µs.
    pub worst_p95_us: f64,
}

struct SimJob {
    id: JobId,
    spec: JobSpec,
    rank: Rank,
    left_core_s: f64,
    state: JobState,
    cores: CpuSet,
    started_ms: u64,
    done_s: Option<f64>,
}

/// The model's state for one run.
pub struct Node<'a> {
    cfg: &'a SimConfig,
    trace: &'a Trace,
    policy: &'a dyn Policy,
    inventory: Inventory,
    controller: Option<Controller>,
    alloc: Allocation,
    jobs: Vec<SimJob>,
    rng: Rng,
    recent: VecDeque<Period>,
    window: Vec<Period>,
    dirty: bool,
}

impl<'a> Node<'a> {
    pub fn new(
        cfg: &'a SimConfig,
        trace: &'a Trace,
        policy: &'a dyn Policy,
        mode: Mode,
    ) -> Result<Node<'a>, SimError> {
        let cores = CpuSet::range(0, cfg.cores).map_err(|e| SimError::Config(e.to_string()))?;
        let (controller, alloc) = match mode {
            Mode::Lowsched => {
                let max = if cfg.service.max_cores == 0 {
                    cfg.cores.saturating_sub(1).max(1)
                } else {
                    cfg.service.max_cores.min(cfg.cores)
                };
                let c = Controller::new(
                    cfg.controller.clone(),
                    cfg.slo_p95_us,
                    cores,
                    cfg.service.min_cores.clamp(1, max),
                    max,
                )
                .map_err(|e| SimError::Config(e.to_string()))?;
                let a = c.allocation().clone();
                (Some(c), a)
            }
            Mode::Static(k) => {
                let service = cores.lowest(k);
                let a = Allocation {
                    rung: 0,
                    service,
                    batch: cores.difference(&service),
                    exclusive: true,
                };
                (None, a)
            }
        };
        let jobs = cfg
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let mut spec = JobSpec::new(vec![j.name.clone()]);
                spec.name = j.name.clone();
                spec.cores = j.cores;
                spec.priority = j.priority;
                let id = JobId(i as u64 + 1);
                let view = JobView {
                    id,
                    spec: &spec,
                    submitted: Timestamp::from_millis(0),
                    seq: id.0,
                    owner: 0,
                };
                let rank = policy.rank(&view);
                SimJob {
                    id,
                    rank,
                    spec,
                    left_core_s: j.work_core_s,
                    state: JobState::Pending,
                    cores: CpuSet::new(),
                    started_ms: 0,
                    done_s: None,
                }
            })
            .collect();
        Ok(Node {
            cfg,
            trace,
            policy,
            inventory: Inventory::simple(cores, Bytes(cfg.memory_bytes)),
            controller,
            alloc,
            jobs,
            rng: Rng::new(cfg.seed),
            recent: VecDeque::new(),
            window: Vec::new(),
            dirty: true,
        })
    }

    /// Runs until the trace has played once and every job has ended (or `max_s`).
    pub fn run(mut self, mode: Mode) -> Outcome {
        let step_ms = self.cfg.step_ms.max(1);
        let dt = step_ms as f64 / 1000.0;
        let steps_per_window = (1000 / step_ms).max(1);
        let recent_steps = (self.cfg.recent_ms / step_ms).max(1) as usize;
        let period_steps = (self.cfg.controller.period_ms / step_ms).max(1);
        let end_s = self.trace.duration_s();
        let mut out = Outcome {
            mode,
            windows: 0,
            windows_over: 0,
            makespan_s: None,
            batch_core_s: 0.0,
            changes: 0,
            worst_p95_us: 0.0,
        };
        let mut step: u64 = 0;
        loop {
            let t = step as f64 * dt;
            let all_done = self.jobs.iter().all(|j| j.done_s.is_some());
            let window_edge = step % steps_per_window == 0;
            // A partition that leaves batch no core never finishes it: one pass of the trace.
            let stuck = self.controller.is_none() && self.alloc.batch.is_empty();
            if window_edge && ((t >= end_s && (all_done || stuck)) || t >= self.cfg.max_s) {
                break;
            }
            let now_ms = step * step_ms;
            if self.dirty {
                self.decide(now_ms);
            }
            let qps = (self.trace.qps(t)
                * (1.0 + self.cfg.latency.load_jitter * self.rng.signed()))
            .max(0.0);
            let share = self.share();
            let period = self
                .cfg
                .latency
                .period(qps, self.alloc.service.len(), share);
            self.recent.push_back(period);
            if self.recent.len() > recent_steps {
                self.recent.pop_front();
            }
            self.window.push(period);
            let offered = self.progress(t, dt, qps);
            if t < end_s {
                out.batch_core_s += offered * dt;
            }
            if (step + 1) % steps_per_window == 0 {
                out.windows += 1;
                let over = self.cfg.latency.over(&self.window, self.cfg.slo_p95_us) > 0.05;
                out.windows_over += u64::from(over);
                if let Some(p) = self.cfg.latency.p95(&self.window) {
                    out.worst_p95_us = out.worst_p95_us.max(p);
                }
                self.window.clear();
            }
            if self.controller.is_some() {
                let on_period = (step + 1) % period_steps == 0;
                if self.control(now_ms + step_ms, qps, on_period) {
                    out.changes += 1;
                }
            }
            step += 1;
        }
        out.makespan_s = self
            .jobs
            .iter()
            .map(|j| j.done_s)
            .try_fold(0.0f64, |m, d| d.map(|d| m.max(d)));
        out
    }

    /// Fraction of the service's cores' time batch may take now.
    fn share(&self) -> f64 {
        if self.alloc.exclusive || self.alloc.service.is_empty() {
            0.0
        } else {
            self.controller
                .as_ref()
                .map_or(1.0, Controller::share_quota)
        }
    }

    /// Moves batch work forward by `dt`; returns the cores' worth batch could use.
    fn progress(&mut self, t: f64, dt: f64, qps: f64) -> f64 {
        let service = self.alloc.service;
        let busy = self.cfg.latency.busy_cores(qps) / service.len().max(1) as f64;
        let left_on_shared = (1.0 - busy).clamp(0.0, 1.0).min(self.share().max(0.0));
        let rate_of = |cores: &CpuSet| -> f64 {
            cores
                .iter()
                .map(|c| {
                    if service.contains(c) {
                        left_on_shared
                    } else {
                        1.0
                    }
                })
                .sum()
        };
        let offered = rate_of(&self.alloc.batch);
        for j in self
            .jobs
            .iter_mut()
            .filter(|j| j.state == JobState::Running)
        {
            let rate = rate_of(&j.cores);
            if rate <= 0.0 {
                continue;
            }
            if j.left_core_s <= rate * dt {
                j.done_s = Some(t + j.left_core_s / rate);
                j.left_core_s = 0.0;
                j.state = JobState::Succeeded;
                j.cores = CpuSet::new();
                self.dirty = true;
            } else {
                j.left_core_s -= rate * dt;
            }
        }
        offered
    }

    /// Runs the controller if its period is due or a reading crosses a grow trigger. Returns
    /// whether the allocation changed.
    fn control(&mut self, now_ms: u64, qps: f64, on_period: bool) -> bool {
        let recent: Vec<Period> = self.recent.iter().copied().collect();
        let model = &self.cfg.latency;
        let err = model.probe_error;
        let p95_recent = model
            .p95(&recent)
            .map(|p| p * (1.0 + err * self.rng.signed()));
        let n = self.alloc.service.len().max(1) as f64;
        let service_cpu = model.busy_cores(qps).min(n);
        let Some(ctl) = self.controller.as_mut() else {
            return false;
        };
        let woken = ctl
            .grow_triggers()
            .is_some_and(|(cpu, p95)| service_cpu > cpu || p95_recent.is_some_and(|p| p > p95));
        if !on_period && !woken {
            return false;
        }
        let p95_window = model
            .p95(&self.window)
            .map(|p| p * (1.0 + err * self.rng.signed()));
        let now = Duration::from_millis(now_ms);
        let inputs = Inputs {
            now,
            sampled_at: now,
            p95_recent_us: p95_recent,
            p95_window_us: p95_window.or(p95_recent),
            service_cpu: Some(service_cpu),
            service_core_util: Some(if self.alloc.exclusive {
                service_cpu / n
            } else {
                1.0
            }),
            qps: Some(qps),
            ..Inputs::default()
        };
        let d = ctl.step(&inputs);
        let changed = d.alloc != self.alloc || d.change.is_some();
        if d.alloc.batch != self.alloc.batch {
            self.dirty = true;
        }
        self.alloc = d.alloc;
        changed
    }

    /// Runs the batch policy on the current state and applies its commands.
    fn decide(&mut self, now_ms: u64) {
        self.dirty = false;
        let commands = {
            let active: Vec<ActiveJob<'_>> = self
                .jobs
                .iter()
                .filter(|j| matches!(j.state, JobState::Running | JobState::Paused))
                .map(|j| ActiveJob {
                    job: view(j),
                    state: j.state,
                    cores: j.cores,
                    gpus: GpuSet::default(),
                    started: Timestamp::from_millis(j.started_ms),
                    ran: Default::default(),
                    held: false,
                })
                .collect();
            let mut queue: Vec<&SimJob> = self
                .jobs
                .iter()
                .filter(|j| j.state == JobState::Pending)
                .collect();
            queue.sort_by_key(|j| (j.rank, j.id.0));
            let queue: Vec<JobView<'_>> = queue.into_iter().map(view).collect();
            let snap = Snapshot {
                now: Timestamp::from_millis(now_ms),
                node: &self.inventory,
                batch_cores: self.alloc.batch,
                service_cores: self.alloc.service,
                active: &active,
                queue: &queue,
                users: &crate::decide::fairshare::NO_USAGE,
            };
            self.policy.decide(&snap)
        };
        for c in commands {
            let Some(j) = self.jobs.iter_mut().find(|j| j.id == c.job()) else {
                continue;
            };
            match c {
                Command::Run { cores, .. } | Command::Resume { cores, .. } => {
                    j.state = JobState::Running;
                    j.cores = cores;
                    j.started_ms = now_ms;
                }
                Command::Resize { cores, .. } => j.cores = cores,
                Command::Pause { .. } => {
                    j.state = JobState::Paused;
                    j.cores = CpuSet::new();
                }
                Command::Kill { .. }
                | Command::MarkUnschedulable { .. }
                | Command::TimeOut { .. } => {
                    j.state = JobState::Failed;
                    j.cores = CpuSet::new();
                    j.done_s = Some(now_ms as f64 / 1000.0);
                }
            }
        }
    }
}

fn view(j: &SimJob) -> JobView<'_> {
    JobView {
        id: j.id,
        spec: &j.spec,
        submitted: Timestamp::from_millis(0),
        seq: j.id.0,
        owner: 0,
    }
}
