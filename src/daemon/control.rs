//! The control loop: the one thread that changes jobs on the node. Each turn it takes in exits
//! and user requests, lets the SLO controller set the service's and batch's cores, asks the
//! policy for commands and carries them out through the actuator, recording every change in
//! the job table, the journal and the event log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::api::protocol::{ErrorCode, JobStatus, ProtocolError};
use crate::daemon::sdnotify::Notifier;
use crate::decide::controller::Move;
use crate::decide::policy::{Command, JobView, Snapshot};
use crate::decide::queue::Queued;
use crate::model::cpuset::CpuSet;
use crate::model::credentials::Credentials;
use crate::model::exit::{ExitEvent, ExitStatus};
use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::node::actuator::{Actuator, LaunchRequest};
use crate::store::eventlog::{Event, Kind};
use crate::store::journal::Record;

use super::server::Caller;
use super::shared::{Op, Shared, now};
use super::slo::SloLoop;

/// How often job pids shown by `status` are refreshed.
const PIDS_EVERY: Duration = Duration::from_millis(500);
/// How often systemd's STATUS= line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Most pending jobs whose groups are made ahead.
const PREPARE_AHEAD: usize = 8;

pub(super) type Reply = crossbeam_channel::Sender<Result<JobStatus, ProtocolError>>;

/// The control loop's state. Built by the daemon's start-up, run on its own thread.
pub struct Control {
    pub shared: Arc<Shared>,
    pub actuator: Actuator,
    pub exits: Receiver<ExitEvent>,
    pub ops: Receiver<Op>,
    /// Rung by a sensor whose reading crossed a grow threshold: run the controller now.
    pub bell: Receiver<()>,
    pub slo: Option<SloLoop>,
    /// All cores lowsched manages.
    pub managed: CpuSet,
    pub batch_cores: CpuSet,
    pub service_cores: CpuSet,
    pub policy_tick: Duration,
    pub notifier: Notifier,
    pub watchdog: Option<Duration>,
    pub compact_after: usize,
    pub keep_finished: usize,
    /// Jobs being cancelled: their exit is recorded as Cancelled.
    pub cancelling: HashSet<JobId>,
    pub dirty: bool,
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
            self.control_step();
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
        if self.shared.journal.records_since_compaction() >= self.compact_after {
            if let Err(e) = self.shared.journal.compact(self.keep_finished) {
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
        let mut table = self.shared.table();
        for (id, p) in pids {
            if let Some(r) = table.get_mut(id) {
                r.pids = p;
            }
        }
    }

    pub(super) fn record_event(&self, ev: Event) {
        self.shared.events.record(ev);
    }

    /// Records that a job ended: table, journal (durable before its groups go), event, waiters.
    pub(super) fn finish(
        &mut self,
        id: JobId,
        state: JobState,
        exit: Option<&ExitStatus>,
        reason: Option<String>,
    ) {
        let at = now();
        let name;
        {
            let mut table = self.shared.table();
            let Some(rec) = table.get(id) else { return };
            if rec.state.is_terminal() {
                return;
            }
            name = rec.spec.name.clone();
            match table.transition(id, state, at) {
                Ok(rec) => {
                    match exit {
                        Some(ExitStatus::Exited(c)) => rec.exit_code = Some(*c),
                        Some(ExitStatus::Signaled(s)) => rec.signal = Some(*s),
                        _ => {}
                    }
                    rec.reason = reason.clone();
                    if let Some(ending) = rec.ending() {
                        let r = Record::Ended { id, ending };
                        if let Err(e) = self.shared.journal.append_sync(&r) {
                            crate::log::error(&format!("job {id}: cannot journal its end: {e}"));
                        }
                    }
                }
                Err(e) => {
                    crate::log::error(&format!("job {id}: {e}"));
                    return;
                }
            }
        }
        self.shared
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let mut ev = Event::new(name, Some(id), Kind::End).because(format!("{state}"));
        if let Some(r) = &reason {
            ev = ev.because(format!("{state}: {r}"));
        }
        self.record_event(ev);
        self.shared.changed.notify_all();
        self.dirty = true;
    }

    /// Records a job's exit (from the watcher, or found at start-up) and cleans up its groups.
    pub fn exit(&mut self, ev: ExitEvent) {
        let id = ev.job;
        let known = self.shared.table().get(id).map(|r| r.state);
        match known {
            Some(s) if s.is_terminal() => {}
            Some(_) if self.cancelling.contains(&id) => {
                self.finish(
                    id,
                    JobState::Cancelled,
                    Some(&ev.status),
                    Some("cancelled".into()),
                );
            }
            Some(_) => {
                let (state, reason) = match &ev.status {
                    ExitStatus::Exited(0) => (JobState::Succeeded, None),
                    ExitStatus::Exited(c) => (JobState::Failed, Some(format!("exited with {c}"))),
                    ExitStatus::Signaled(s) => {
                        (JobState::Failed, Some(format!("killed by signal {s}")))
                    }
                    ExitStatus::NotStarted(why) => {
                        (JobState::Failed, Some(format!("could not start: {why}")))
                    }
                    ExitStatus::Lost(why) => {
                        (JobState::Failed, Some(format!("end not observed: {why}")))
                    }
                };
                self.finish(id, state, Some(&ev.status), reason);
            }
            None => {}
        }
        self.cancelling.remove(&id);
        if let Err(e) = self.actuator.release(id) {
            crate::log::warn(&format!("job {id}: cleanup after exit: {e}"));
        }
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
            self.place_service(step);
            self.decide();
        } else {
            self.place_service(step);
            self.decide();
        }
    }

    /// Before a grow: moves every running batch job off the service's cores with one cpuset
    /// write each (µs), onto its other cores or else onto the batch cores, where it may share a
    /// core with another job until the policy, run right after the service is placed, pauses
    /// what no longer fits. Pausing first made the service wait for the freeze to complete,
    /// which took 9-75 ms for a job still starting up in the e2e runs.
    fn evacuate(&mut self, service: &CpuSet) {
        let batch = self.batch_cores;
        let moves: Vec<(JobId, CpuSet, String)> = self
            .shared
            .table()
            .active()
            .filter(|r| r.state == JobState::Running && !r.cores.intersection(service).is_empty())
            .filter_map(|r| {
                let rest = r.cores.difference(service);
                let to = if rest.is_empty() { batch } else { rest };
                (!to.is_empty()).then(|| (r.id, to, r.spec.name.clone()))
            })
            .collect();
        for (id, to, name) in moves {
            match self.actuator.resize(id, to) {
                Ok(()) => {
                    if let Some(r) = self.shared.table().get_mut(id) {
                        r.cores = to;
                    }
                    self.record_event(
                        Event::new(name, Some(id), Kind::UpdateCores { cores: to })
                            .because("off the service's cores for its grow"),
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
                .queue
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

    /// Runs the policy on the current snapshot and carries out its commands in order.
    pub fn decide(&mut self) {
        self.dirty = false;
        let (commands, mut handles) = {
            let table = self.shared.table();
            let active = table.active_views();
            let mut handles: HashMap<JobId, Queued<()>> = HashMap::new();
            let mut queue: Vec<JobView<'_>> = Vec::new();
            for item in self.shared.queue.iter() {
                let Some(rec) = table
                    .get(item.id())
                    .filter(|r| r.state == JobState::Pending)
                else {
                    continue;
                };
                queue.push(JobView {
                    id: rec.id,
                    spec: &rec.spec,
                    submitted: rec.submitted,
                    seq: item.seq(),
                });
                handles.insert(item.id(), item);
            }
            let snap = Snapshot {
                now: now(),
                node: &self.shared.node,
                batch_cores: self.batch_cores,
                service_cores: self.service_cores,
                active: &active,
                queue: &queue,
            };
            (self.shared.policy.decide(&snap), handles)
        };
        for cmd in commands {
            // A job leaves the queue when the policy starts it or gives up on it.
            if matches!(cmd, Command::Run { .. } | Command::MarkUnschedulable { .. }) {
                if let Some(h) = handles.remove(&cmd.job()) {
                    self.shared.queue.take(&h);
                }
            }
            self.apply(cmd);
        }
    }

    fn credentials_for(&self, id: JobId) -> Option<Credentials> {
        if let Some(c) = self
            .shared
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Some(c.clone());
        }
        // Submitted before a restart: resolve the owner again.
        let owner = self.shared.table().get(id)?.owner.clone();
        let mut c = Credentials::by_uid(owner.uid)
            .unwrap_or_else(|_| Credentials::from_ids(owner.uid, owner.gid));
        c.gid = owner.gid;
        if !c.groups.contains(&owner.gid) {
            c.groups.push(owner.gid);
        }
        Some(c)
    }

    fn apply(&mut self, cmd: Command) {
        let id = cmd.job();
        let Some(name) = self.shared.table().get(id).map(|r| r.spec.name.clone()) else {
            return;
        };
        let at = now();
        match &cmd {
            Command::Run {
                cores,
                gpus,
                reason,
                ..
            } => {
                // Two statements: the table guard must be gone before `credentials_for`,
                // which locks the table again for jobs submitted before a restart.
                let spec = self.shared.table().get(id).map(|r| r.spec.clone());
                let creds = self.credentials_for(id);
                let (Some(spec), Some(creds)) = (spec, creds) else {
                    return;
                };
                let req = LaunchRequest {
                    id,
                    spec: &spec,
                    user: &creds,
                    gpus: *gpus,
                };
                match self.actuator.run(&req, *cores) {
                    Ok(_) => {
                        if let Ok(rec) = self.shared.table().transition(id, JobState::Running, at) {
                            rec.cores = *cores;
                            rec.gpus = *gpus;
                        }
                        let _ = self.shared.journal.append(&Record::Started {
                            id,
                            at,
                            cores: *cores,
                        });
                        self.record_event(
                            Event::new(
                                name,
                                Some(id),
                                Kind::Start {
                                    cores: *cores,
                                    threads: cores.len(),
                                },
                            )
                            .because(reason.clone()),
                        );
                        self.shared.changed.notify_all();
                    }
                    Err(e) => {
                        let _ = self.actuator.release(id);
                        self.finish(
                            id,
                            JobState::Failed,
                            None,
                            Some(format!("launch failed: {e}")),
                        );
                    }
                }
            }
            Command::Pause { reason, .. } => match self.actuator.pause(id) {
                Ok(()) => {
                    let _ = self.shared.table().transition(id, JobState::Paused, at);
                    self.record_event(
                        Event::new(name, Some(id), Kind::Pause).because(reason.clone()),
                    );
                }
                Err(e) => self.failed_command(&name, &cmd, &e),
            },
            Command::Resume { cores, reason, .. } => match self.actuator.resume(id, *cores) {
                Ok(()) => {
                    if let Ok(rec) = self.shared.table().transition(id, JobState::Running, at) {
                        rec.cores = *cores;
                    }
                    self.record_event(
                        Event::new(name.clone(), Some(id), Kind::Unpause).because(reason.clone()),
                    );
                    self.record_event(
                        Event::new(name, Some(id), Kind::UpdateCores { cores: *cores })
                            .because(reason.clone()),
                    );
                }
                Err(e) => self.failed_command(&name, &cmd, &e),
            },
            Command::Resize { cores, reason, .. } => match self.actuator.resize(id, *cores) {
                Ok(()) => {
                    if let Some(rec) = self.shared.table().get_mut(id) {
                        rec.cores = *cores;
                    }
                    self.record_event(
                        Event::new(name, Some(id), Kind::UpdateCores { cores: *cores })
                            .because(reason.clone()),
                    );
                }
                Err(e) => self.failed_command(&name, &cmd, &e),
            },
            Command::Kill { reason, .. } => {
                self.cancelling.insert(id);
                match self.actuator.kill(id) {
                    Ok(()) => self.finish(id, JobState::Cancelled, None, Some(reason.clone())),
                    Err(e) => {
                        self.cancelling.remove(&id);
                        self.failed_command(&name, &cmd, &e);
                    }
                }
            }
            Command::MarkUnschedulable { reason, .. } => {
                self.finish(id, JobState::Unschedulable, None, Some(reason.clone()));
                self.release_prepared(id);
            }
        }
    }

    /// Drops the groups made ahead for a job that will not run.
    pub(super) fn release_prepared(&mut self, id: JobId) {
        if let Err(e) = self.actuator.release(id) {
            crate::log::warn(&format!("job {id}: cannot remove its prepared groups: {e}"));
        }
    }

    /// A command the node refused: the job keeps its state; say so in the log and event log.
    fn failed_command(
        &mut self,
        name: &str,
        cmd: &Command,
        e: &crate::node::actuator::ActuationError,
    ) {
        crate::log::error(&format!("{cmd}: failed: {e}"));
        self.record_event(
            Event::new(
                name,
                Some(cmd.job()),
                Kind::Custom {
                    text: format!("{} failed", cmd.verb()),
                },
            )
            .because(e.to_string()),
        );
    }
}
