//! The control loop: the one thread that changes jobs on the node. Each turn it takes in exits
//! and user requests, lets the SLO controller set the service's and batch's cores, asks the
//! policy for commands and carries them out through the actuator, recording every change in
//! the job table, the journal and the event log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::api::protocol::{ErrorCode, JobStatus, ProtocolError};
use crate::daemon::config::JournalConfig;
use crate::daemon::sdnotify::Notifier;
use crate::decide::controller::Move;
use crate::decide::fairshare::{Usage, UserOrder};
use crate::model::cpuset::CpuSet;
use crate::model::exit::ExitEvent;
use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::node::actuator::Actuator;
use crate::store::eventlog::{Event, Kind};

use super::jobs::Change;
use super::server::Caller;
use super::shared::{Op, Shared};
use super::slo::SloLoop;
use super::slurm::SlurmSlot;

/// How often job pids shown by `status` are refreshed.
const PIDS_EVERY: Duration = Duration::from_millis(500);
/// How often systemd's STATUS= line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How soon the loop looks again at a freeze it started. A v2 freeze completes in 2-12 µs here
/// (p99 8-34 µs; v1's FROZEN reads back in 85-180 µs), so the first look, in the same turn,
/// often comes too soon; at 1 ms the owner's pause was answered a millisecond late every time
/// (its recorded freeze p50 1.13 ms). A look every 50 µs costs a few loop turns per pause.
const FREEZE_POLL: Duration = Duration::from_micros(50);
/// Most pending jobs whose groups are made ahead.
const PREPARE_AHEAD: usize = 8;

pub(super) type Reply = crossbeam_channel::Sender<Result<JobStatus, ProtocolError>>;

/// What the control loop is built from, by the daemon's start-up.
#[derive(Debug)]
pub struct ControlSetup {
    pub shared: Arc<Shared>,
    pub actuator: Actuator,
    pub exits: Receiver<ExitEvent>,
    pub ops: Receiver<Op>,
    /// Rung by a sensor whose reading crossed a grow threshold: run the controller now.
    pub bell: Receiver<()>,
    pub slo: Option<SloLoop>,
    /// All cores lowsched manages.
    pub managed: CpuSet,
    pub policy_tick: Duration,
    pub notifier: Notifier,
    pub watchdog: Option<Duration>,
    pub journal: JournalConfig,
    /// Slurm's jobs on this node, when `[slurm]` is on (or waiting for slurmd, with `auto`).
    pub slurm: SlurmSlot,
    /// Half-life of users' recent core usage (fair share).
    pub fair_share_half_life: Duration,
}

/// The control loop's state, run on its own thread.
pub struct Control {
    pub(super) shared: Arc<Shared>,
    pub(super) actuator: Actuator,
    exits: Receiver<ExitEvent>,
    ops: Receiver<Op>,
    bell: Receiver<()>,
    pub(super) slo: Option<SloLoop>,
    pub(super) batch_cores: CpuSet,
    pub(super) service_cores: CpuSet,
    managed: CpuSet,
    slurm: SlurmSlot,
    pub(super) policy_tick: Duration,
    notifier: Notifier,
    watchdog: Option<Duration>,
    journal: JournalConfig,
    /// Jobs being killed, and why: their exit is recorded as Cancelled.
    /// Jobs killed and waiting for their exit: the state they end in and why.
    pub(super) cancelling: HashMap<JobId, (JobState, String)>,
    /// Users' cancels whose kill is under way: answered once the job's end is recorded.
    pub(super) awaiting: Vec<(JobId, Reply, Caller, Instant)>,
    /// Users' pauses whose freeze is under way: answered once the kernel has the job frozen.
    pub(super) freezing: Vec<super::requests::Freezing>,
    /// Exits whose end could not be recorded yet (their exit records kept), tried again later.
    pub(super) unrecorded: Vec<ExitEvent>,
    pub(super) last_retry: Instant,
    pub(super) dirty: bool,
    /// Users' recent core usage, charged on every decision (fair share).
    pub(super) usage: Usage,
    /// The order `usage` gives, as the last decision saw it.
    pub(super) users: UserOrder,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("batch_cores", &self.batch_cores)
            .finish_non_exhaustive()
    }
}

pub(super) fn refuse(code: ErrorCode, msg: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, msg)
}

impl Control {
    pub fn new(s: ControlSetup) -> Self {
        Self {
            // Until a service is found and placed, batch has every core, as without one.
            batch_cores: if s.slo.is_some() {
                CpuSet::new()
            } else {
                s.managed
            },
            service_cores: CpuSet::new(),
            managed: s.managed,
            slurm: s.slurm,
            shared: s.shared,
            actuator: s.actuator,
            exits: s.exits,
            ops: s.ops,
            bell: s.bell,
            slo: s.slo,
            policy_tick: s.policy_tick,
            notifier: s.notifier,
            watchdog: s.watchdog,
            journal: s.journal,
            cancelling: HashMap::new(),
            awaiting: Vec::new(),
            freezing: Vec::new(),
            unrecorded: Vec::new(),
            last_retry: Instant::now(),
            dirty: true,
            usage: Usage::new(s.fair_share_half_life),
            users: UserOrder::default(),
        }
    }

    /// Before the loop: exits that happened while no daemon watched go through the normal
    /// exit path; then the first allocation (service found and placed, adopted jobs given
    /// cores, what fits started), so READY=1 comes with a status that says where things run.
    pub fn start(&mut self, ended_while_down: Vec<ExitEvent>, socket: &std::path::Path) {
        for ev in ended_while_down {
            self.exit(ev);
        }
        self.prime();
        let ready = format!("listening on {}; {}", socket.display(), self.status_line());
        crate::log::notice(&format!("ready: {ready}"));
        if let Err(e) = self.notifier.ready(&ready) {
            crate::log::warn(&e.to_string());
        }
    }

    /// Runs until the daemon is asked to stop.
    pub fn run(mut self) {
        let mut last_decide = Instant::now();
        let mut decide_cost = Duration::ZERO;
        let mut last_pids = Instant::now();
        let mut last_status = Instant::now() - STATUS_EVERY;
        let mut last_watchdog = Instant::now();
        let mut replies: Vec<(Reply, Result<JobId, ProtocolError>, Caller)> = Vec::new();
        while !self
            .shared
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // A decide walks the whole queue: with a long queue and a stream of submits (each
            // batch marks the state dirty) deciding back to back would take a whole core and
            // starve the socket threads. A change waits until twice the last decide's cost has
            // passed since it ended: nothing with a short queue, a bounded share with a long one.
            let gap = (decide_cost * 2).saturating_sub(last_decide.elapsed());
            let mut period = self.slo.as_ref().map_or(self.policy_tick, |s| s.period());
            if self.dirty {
                period = period.min(gap);
            }
            // A freeze is confirmed in µs: look again soon rather than at the next tick.
            if !self.freezing.is_empty() {
                period = period.min(FREEZE_POLL);
            }
            select! {
                recv(self.ops) -> op => if let Ok(op) = op { self.op(op, &mut replies) },
                recv(self.exits) -> ev => if let Ok(ev) = ev { self.exit(ev) },
                // Every sensor gone (no service protected): never wake for it again.
                recv(self.bell) -> r => if r.is_err() { self.bell = crossbeam_channel::never() },
                default(period) => {},
            }
            while let Ok(ev) = self.exits.try_recv() {
                self.exit(ev);
            }
            while let Ok(op) = self.ops.try_recv() {
                self.op(op, &mut replies);
            }
            self.retry_exits();
            self.settle_awaiting(&mut replies);
            self.settle_freezing(&mut replies);
            self.control_step();
            self.publish_metrics();
            self.slurm_turn(false);
            let since = last_decide.elapsed();
            if (self.dirty && since >= decide_cost * 2) || since >= self.policy_tick {
                let started = Instant::now();
                self.decide();
                last_decide = Instant::now();
                decide_cost = last_decide - started;
                self.prepare_next();
            }
            for (reply, result, caller) in replies.drain(..) {
                let answer = result.and_then(|id| {
                    self.shared
                        .table()
                        .get(id)
                        .map(|r| r.status(caller.uid))
                        .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no job {id}")))
                });
                let _ = reply.send(answer);
            }
            if last_pids.elapsed() >= PIDS_EVERY {
                self.refresh_pids();
                last_pids = Instant::now();
            }
            if let Some(every) = self.watchdog {
                if last_watchdog.elapsed() >= every {
                    let _ = self.notifier.watchdog();
                    last_watchdog = Instant::now();
                }
            }
            if last_status.elapsed() >= STATUS_EVERY {
                let _ = self.notifier.status(&self.status_line());
                self.maybe_compact();
                last_status = Instant::now();
            }
        }
        if let Some(side) = self.slurm.take() {
            side.stop(&self.shared);
        }
    }

    /// Settles the first allocation (and starts what fits) before the daemon reports ready.
    pub fn prime(&mut self) {
        self.control_step();
        self.decide();
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let counts = self.shared.table().counts();
        let n = |s| counts.get(&s).copied().unwrap_or(0);
        let mut line = format!(
            "{} pending, {} running, {} paused; batch cores [{}]",
            n(JobState::Pending),
            n(JobState::Running),
            n(JobState::Paused),
            self.batch_cores
        );
        if let Some(slo) = &self.slo {
            line.push_str(&format!("; {}", slo.summary()));
        }
        line
    }

    fn maybe_compact(&self) {
        // Finished jobs left the table: give their memory back (a trim walks the heap, so at
        // most every STATUS_EVERY, and only then).
        if self.shared.jobs.take_pruned() > 0 {
            crate::sys::heap::trim();
        }
        let journal = self.shared.jobs.journal();
        if journal.records_since_compaction() >= self.journal.compact_after {
            if let Err(e) = journal.compact(self.journal.keep_finished) {
                crate::log::error(&format!("journal compaction failed: {e}"));
            }
        }
    }

    fn refresh_pids(&mut self) {
        let ids: Vec<JobId> = self.shared.table().active().map(|r| r.id).collect();
        let pids: Vec<(JobId, Vec<u32>)> = ids
            .into_iter()
            .filter_map(|id| {
                let p = self.actuator.pids(id).ok()?;
                Some((id, p.into_iter().map(|p| p.as_raw() as u32).collect()))
            })
            .collect();
        self.shared.jobs.set_pids(pids);
    }

    /// Lets the SLO controller move cores between the service and batch. A grow moves batch off
    /// the service's cores first (so they are free when it gets them), a shrink narrows the
    /// service first.
    fn control_step(&mut self) {
        let Some(slo) = self.slo.as_mut() else { return };
        let Some(step) = slo.step() else { return };
        let grow = step.alloc.service.len() > self.service_cores.len()
            || step.alloc.batch.len() < self.batch_cores.len();
        self.batch_cores = step.alloc.batch;
        if grow {
            self.evacuate(&step.alloc.service);
            self.service_cores = step.alloc.service;
            self.slurm_turn(true);
            self.place_service(step);
            self.decide();
        } else {
            self.place_service(step);
            self.decide();
        }
    }

    /// The Slurm side's turn: Slurm's jobs are kept off the managed cores batch may not use
    /// (nothing is squeezed before the service is placed); `urgent` on a grow, before the
    /// service takes its new cores.
    fn slurm_turn(&mut self, urgent: bool) {
        let Some(side) = self.slurm.side(&self.shared) else {
            return;
        };
        let placed = self.slo.is_none() || !self.service_cores.is_empty();
        let forbidden = placed.then(|| self.managed.difference(&self.batch_cores));
        side.turn(
            &self.shared,
            forbidden,
            !self.batch_cores.is_empty(),
            urgent,
        );
    }

    /// Before a grow: moves every running batch job off the service's cores with one cpuset
    /// write each (µs), onto its other cores or else onto the batch cores, where it may share a
    /// core with another job until the policy, run right after the service is placed, pauses
    /// what no longer fits. Pausing first made the service wait for the freeze to complete,
    /// which took 9-75 ms for a job still starting up in the e2e runs.
    fn evacuate(&mut self, service: &CpuSet) {
        let batch = self.batch_cores;
        let moves: Vec<(JobId, CpuSet)> = self
            .shared
            .table()
            .active()
            .filter(|r| r.state == JobState::Running && !r.cores.intersection(service).is_empty())
            .filter_map(|r| {
                let rest = r.cores.difference(service);
                let to = if rest.is_empty() { batch } else { rest };
                (!to.is_empty()).then_some((r.id, to))
            })
            .collect();
        for (id, to) in moves {
            match self.actuator.resize(id, to) {
                Ok(()) => {
                    self.change(
                        id,
                        Change::Resized {
                            cores: to,
                            reason: "off the service's cores for its grow".into(),
                        },
                    );
                }
                // The policy pauses it instead, after the service is placed.
                Err(e) => {
                    crate::log::warn(&format!("job {id}: cannot move it off [{service}]: {e}"))
                }
            }
        }
    }

    fn place_service(&mut self, step: super::slo::Step) {
        let Some(slo) = self.slo.as_mut() else { return };
        slo.place(&step.alloc.service);
        self.service_cores = step.alloc.service;
        let Some(change) = step.change else { return };
        let mut inputs = step.inputs;
        if matches!(change.kind, Move::Grow | Move::Undo) {
            // Reaction time: from the reading that crossed the threshold to the service's new
            // allocation in force (batch moved off first, then the service's cpuset written).
            let done = Duration::from_nanos(crate::sys::clock::monotonic_ns());
            let us = done
                .saturating_sub(change.triggered_by_sample_at)
                .as_micros() as u64;
            inputs["reaction_us"] = us.into();
        }
        inputs["batch_cores"] = self.batch_cores.to_string().into();
        inputs["rung"] = change.to.into();
        let what = change.kind.verb();
        let name = slo.name().to_string();
        self.record_event(
            Event::new(
                name,
                None,
                Kind::UpdateCores {
                    cores: step.alloc.service,
                },
            )
            .because(format!(
                "{what} rung {}->{}: {}",
                change.from, change.to, change.reason
            ))
            .with_inputs(inputs),
        );
    }

    /// Creates the groups of the next pending jobs ahead, so starting one only sets its cores
    /// and clones: group creation is half of a launch (398 µs against 192 µs prepared, on the
    /// test VM). As many as there are batch cores, at most [`PREPARE_AHEAD`]; a job that leaves
    /// the queue without running has its groups released.
    fn prepare_next(&mut self) {
        let n = self.batch_cores.len().clamp(1, PREPARE_AHEAD);
        let next: Vec<(JobId, crate::model::job::JobSpec)> = {
            let table = self.shared.table();
            self.shared
                .jobs
                .queue()
                .iter()
                .filter_map(|item| table.get(item.id()))
                .filter(|r| r.state == JobState::Pending)
                .take(n)
                .map(|r| (r.id, r.spec.clone()))
                .collect()
        };
        for (id, spec) in next {
            if let Err(e) = self.actuator.prepare(id, &spec) {
                // The launch creates them then.
                crate::log::debug(&format!("job {id}: cannot prepare its groups: {e}"));
            }
        }
    }
}
