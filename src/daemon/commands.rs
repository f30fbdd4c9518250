//! Carrying out the policy's commands and the node's exits: each goes to the actuator (one
//! dispatcher, `Actuator::apply`), then through the door (`super::jobs`) as a job change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::decide::policy::{Command, JobView, Snapshot, hold, timelimit};
use crate::decide::queue::Queued;
use crate::model::exit::{ExitEvent, ExitStatus};
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, JobSpec};
use crate::model::jobstate::JobState;
use crate::node::actuator::{ActuationError, Actuator, LaunchRequest};
use crate::store::eventlog::{Event, Kind};

use super::control::Control;
use super::jobs::{Change, JobsError};
use super::shared::now;

/// The job change a command makes once the node has carried it out.
fn change_of(cmd: &Command) -> Change {
    match cmd {
        Command::Run {
            cores,
            gpus,
            reason,
            ..
        } => Change::Started {
            cores: *cores,
            gpus: *gpus,
            reason: reason.clone(),
        },
        Command::Pause { reason, .. } => Change::Paused {
            reason: reason.clone(),
            held: false,
        },
        Command::Resume { cores, reason, .. } => Change::Resumed {
            cores: *cores,
            reason: reason.clone(),
        },
        Command::Resize { cores, reason, .. } => Change::Resized {
            cores: *cores,
            reason: reason.clone(),
        },
        Command::Kill { reason, .. } => Change::Finished {
            state: JobState::Cancelled,
            exit: None,
            reason: Some(reason.clone()),
        },
        Command::MarkUnschedulable { reason, .. } => Change::Finished {
            state: JobState::Unschedulable,
            exit: None,
            reason: Some(reason.clone()),
        },
        Command::TimeOut { reason, .. } => Change::Finished {
            state: JobState::Timeout,
            exit: None,
            reason: Some(reason.clone()),
        },
    }
}

/// Microseconds since `t`: the daemon's own record of how long a launch (the request to the
/// job running in its groups) or a freeze (written to the kernel's report of it frozen) took,
/// kept in the change's event as `launch_us` / `freeze_us`.
pub(super) fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

impl Control {
    pub(super) fn record_event(&self, ev: Event) {
        self.shared.jobs.record_event(ev);
    }

    /// Carries a job change through the door; one the lifecycle refuses is logged.
    pub(super) fn change(&mut self, id: JobId, change: Change) -> bool {
        self.change_then(id, change, |_| Ok(None)).is_ok()
    }

    /// [`Control::change`] with the node's side after the record ([`super::jobs::Jobs::apply_with`]);
    /// a refusal is logged and returned.
    fn change_then(
        &mut self,
        id: JobId,
        change: Change,
        node: impl FnOnce(&mut Actuator) -> Result<Option<serde_json::Value>, String>,
    ) -> Result<(), JobsError> {
        let finished = matches!(change, Change::Finished { .. });
        let shared = Arc::clone(&self.shared);
        let actuator = &mut self.actuator;
        match shared.jobs.apply_with(id, change, now(), || node(actuator)) {
            Ok(()) => {
                if finished {
                    self.dirty = true;
                }
                Ok(())
            }
            Err(e) => {
                crate::log::error(&format!("job {id}: {e}"));
                Err(e)
            }
        }
    }

    /// Records that a job ended, unless it already has (then `Ok`).
    pub(super) fn finish(
        &mut self,
        id: JobId,
        state: JobState,
        exit: Option<&ExitStatus>,
        reason: Option<String>,
    ) -> Result<(), JobsError> {
        self.end(id, state, exit, reason, false)
    }

    /// [`Control::finish`]; with `release`, the job's groups and exit record go once the end is
    /// durable, not before.
    fn end(
        &mut self,
        id: JobId,
        state: JobState,
        exit: Option<&ExitStatus>,
        reason: Option<String>,
        release: bool,
    ) -> Result<(), JobsError> {
        let ended = self
            .shared
            .table()
            .get(id)
            .is_none_or(|r| r.state.is_terminal());
        if ended {
            return Ok(());
        }
        let change = Change::Finished {
            state,
            exit: exit.cloned(),
            reason,
        };
        self.change_then(id, change, |actuator| {
            if release {
                release_quietly(actuator, id);
            }
            Ok(None)
        })
    }

    /// Records a job's exit (from the watcher, or found at start-up), then cleans up its groups
    /// and collects its exit record. An end that cannot be recorded (a full state dir) keeps
    /// the exit record, the waiter's word on how the job ended, and is tried again on a later
    /// turn ([`Control::retry_exits`]): collecting it first would lose the end at a restart.
    pub fn exit(&mut self, ev: ExitEvent) {
        let id = ev.job;
        let known = self.shared.table().get(id).map(|r| r.state);
        let killed = self.cancelling.get(&id).cloned();
        // Read before the end releases the job's groups.
        let usage = self.actuator.usage(id);
        let recorded = match (known, killed) {
            (Some(s), Some((state, why))) if !s.is_terminal() => {
                self.end(id, state, Some(&ev.status), Some(why), true)
            }
            (Some(s), None) if !s.is_terminal() => {
                let (state, reason) = ending_of(&ev.status);
                self.end(id, state, Some(&ev.status), reason, true)
            }
            // Already ended (a cancel recorded it) or unknown: only the cleanup is left.
            _ => {
                release_quietly(&mut self.actuator, id);
                Ok(())
            }
        };
        match recorded {
            Ok(()) => {
                self.cancelling.remove(&id);
                self.account(id, usage);
            }
            Err(_) => self.unrecorded.push(ev),
        }
    }

    /// Records what an ended job used (CPU time, peak memory) where its cgroup reported it.
    fn account(&mut self, id: JobId, usage: Option<crate::model::usage::Usage>) {
        let Some(usage) = usage else { return };
        let ended = self
            .shared
            .table()
            .get(id)
            .is_some_and(|r| r.state.is_terminal() && r.usage.is_none());
        if ended {
            self.change(id, Change::Accounted { usage });
        }
    }

    /// Tries again the exits whose end could not be recorded (at most once a second, so a
    /// full state dir does not fill the log).
    pub(super) fn retry_exits(&mut self) {
        if self.unrecorded.is_empty() || self.last_retry.elapsed() < RETRY_EVERY {
            return;
        }
        self.last_retry = std::time::Instant::now();
        for ev in std::mem::take(&mut self.unrecorded) {
            self.exit(ev);
        }
    }

    /// The turn's commands: kills of jobs past their run-time limit first (within one policy
    /// tick of it; the policy's commands for them are dropped, their cores are free at the next
    /// decision), then the policy's, then the give-ups on jobs whose dependencies can never
    /// be met.
    fn commands_for(&self, snap: &Snapshot<'_>, never: Vec<Command>) -> Vec<Command> {
        let mut commands = timelimit::expired(snap);
        let expired: Vec<JobId> = commands.iter().map(Command::job).collect();
        commands.extend(
            self.shared
                .policy()
                .decide(snap)
                .into_iter()
                .filter(|c| !expired.contains(&c.job())),
        );
        commands.extend(never);
        commands
    }

    /// Runs the policy on the current snapshot and carries out its commands in order.
    pub fn decide(&mut self) {
        self.dirty = false;
        let (commands, mut handles) = {
            let table = self.shared.table();
            let active = table.active_views();
            let at = now();
            let running = active
                .iter()
                .filter(|a| a.state == JobState::Running)
                .map(|a| (a.job.owner, a.cores.len()));
            self.usage.advance(at, running);
            self.users = self.usage.order();
            let mut handles: HashMap<JobId, Queued<()>> = HashMap::new();
            let mut queue: Vec<JobView<'_>> = Vec::new();
            for item in self.shared.jobs.queue().iter() {
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
                    owner: rec.owner.uid,
                });
                handles.insert(item.id(), item);
            }
            // Jobs waiting for others or for room in their array are not offered to the
            // policy; those whose dependencies can never be met are given up on.
            let states = |id: JobId| table.states(id);
            let screened = hold::screen(&queue, &active, &states);
            let snap = Snapshot {
                now: at,
                node: &self.shared.node,
                batch_cores: self.batch_cores,
                service_cores: self.service_cores,
                active: &active,
                queue: &screened.ready,
                users: &self.users,
            };
            (self.commands_for(&snap, screened.never), handles)
        };
        for cmd in commands {
            // A job leaves the queue when the policy starts it or gives up on it.
            if matches!(cmd, Command::Run { .. } | Command::MarkUnschedulable { .. }) {
                if let Some(h) = handles.remove(&cmd.job()) {
                    self.shared.jobs.dequeue(&h);
                }
            }
            self.apply(cmd);
        }
    }

    /// Carries out one of the policy's commands through the actuator's dispatcher, then
    /// records what it changed through the door.
    fn apply(&mut self, cmd: Command) {
        let id = cmd.job();
        let Some((name, spec)) = self
            .shared
            .table()
            .get(id)
            .map(|r| (r.spec.name.clone(), r.spec.clone()))
        else {
            return;
        };
        if let Command::Run { gpus, .. } = &cmd {
            self.launch(&cmd, &spec, *gpus);
            return;
        }
        match &cmd {
            Command::Kill { reason, .. } => {
                self.cancelling
                    .insert(id, (JobState::Cancelled, reason.clone()));
            }
            Command::TimeOut { reason, .. } => {
                self.cancelling
                    .insert(id, (JobState::Timeout, reason.clone()));
            }
            _ => {}
        }
        let t = Instant::now();
        let done = self.actuator.apply(&cmd, None);
        let took_us = micros(t);
        match (done, &cmd) {
            (Ok(()), Command::MarkUnschedulable { reason, .. }) => {
                match self.finish(id, JobState::Unschedulable, None, Some(reason.clone())) {
                    Ok(()) => self.release_prepared(id),
                    Err(_) => self.requeue(id),
                }
            }
            // Only started: the job's exit event records it as cancelled (or timed out).
            (Ok(()), Command::Kill { .. } | Command::TimeOut { .. }) => {}
            (Ok(()), Command::Pause { .. }) => {
                let timing = json!({ "freeze_us": took_us });
                let _ = self.change_then(id, change_of(&cmd), |_| Ok(Some(timing)));
            }
            (Ok(()), _) => {
                self.change(id, change_of(&cmd));
            }
            (Err(e), _) => {
                self.cancelling.remove(&id);
                self.failed_command(&name, &cmd, &e);
            }
        }
    }

    /// Starts a job in the door's order: its Started record durable, then the launch, so the
    /// job's command never runs unrecorded. A start that cannot be recorded launches nothing:
    /// the job stays pending, back in the queue for a later turn. A failed launch ends it.
    fn launch(&mut self, cmd: &Command, spec: &JobSpec, gpus: GpuSet) {
        let id = cmd.job();
        let Some(user) = self.shared.jobs.credentials(id) else {
            let why = ActuationError::NoRequest(id).to_string();
            self.launch_failed(id, why);
            return;
        };
        let req = LaunchRequest {
            id,
            spec,
            user: &user,
            gpus,
        };
        let started = self.change_then(id, change_of(cmd), |actuator| {
            let t = Instant::now();
            actuator
                .apply(cmd, Some(&req))
                .map_err(|e| format!("launch failed: {e}"))?;
            Ok(Some(json!({ "launch_us": micros(t) })))
        });
        match started {
            Ok(()) => {}
            Err(JobsError::NotRecorded { .. }) => self.requeue(id),
            Err(JobsError::Node { why, .. }) => self.launch_failed(id, why),
            Err(_) => {}
        }
    }

    /// A job whose launch failed: its groups go, it ends as failed.
    fn launch_failed(&mut self, id: JobId, why: String) {
        let _ = self.actuator.release(id);
        if self.finish(id, JobState::Failed, None, Some(why)).is_err() {
            self.requeue(id);
        }
    }

    /// Puts a job the policy took out of the queue back in, when what it decided could not be
    /// recorded: the policy decides again on a later turn.
    fn requeue(&mut self, id: JobId) {
        let rank = {
            let table = self.shared.table();
            table.get(id).map(|r| self.shared.policy().rank(&r.view()))
        };
        if let Some(rank) = rank {
            self.shared.jobs.requeue(id, rank);
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

/// How often ends that could not be recorded are tried again.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The end an exit status means, and why when it is not a success.
fn ending_of(status: &ExitStatus) -> (JobState, Option<String>) {
    match status {
        ExitStatus::Exited(0) => (JobState::Succeeded, None),
        ExitStatus::Exited(c) => (JobState::Failed, Some(format!("exited with {c}"))),
        ExitStatus::Signaled(s) => (JobState::Failed, Some(format!("killed by signal {s}"))),
        ExitStatus::NotStarted(why) => (JobState::Failed, Some(format!("could not start: {why}"))),
        ExitStatus::Lost(why) => (JobState::Failed, Some(format!("end not observed: {why}"))),
    }
}

/// Removes an ended job's groups and collects its exit record; a failure is only logged.
fn release_quietly(actuator: &mut Actuator, id: JobId) {
    if let Err(e) = actuator.release(id) {
        crate::log::warn(&format!("job {id}: cleanup after exit: {e}"));
    }
}
