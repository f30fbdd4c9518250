//! Carrying out the policy's commands and the node's exits: each goes to the actuator (one
//! dispatcher, `Actuator::apply`), then through the door (`super::jobs`) as a job change.

use std::collections::HashMap;

use crate::decide::policy::{Command, JobView, Snapshot};
use crate::decide::queue::Queued;
use crate::model::exit::{ExitEvent, ExitStatus};
use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::node::actuator::LaunchRequest;
use crate::store::eventlog::{Event, Kind};

use super::control::Control;
use super::jobs::Change;
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
    }
}

impl Control {
    pub(super) fn record_event(&self, ev: Event) {
        self.shared.jobs.record_event(ev);
    }

    /// Carries a job change through the door; one the lifecycle refuses is logged.
    pub(super) fn change(&mut self, id: JobId, change: Change) -> bool {
        let finished = matches!(change, Change::Finished { .. });
        match self.shared.jobs.apply(id, change, now()) {
            Ok(()) => {
                if finished {
                    self.dirty = true;
                }
                true
            }
            Err(e) => {
                crate::log::error(&format!("job {id}: {e}"));
                false
            }
        }
    }

    /// Records that a job ended, unless it already has.
    pub(super) fn finish(
        &mut self,
        id: JobId,
        state: JobState,
        exit: Option<&ExitStatus>,
        reason: Option<String>,
    ) {
        let ended = self
            .shared
            .table()
            .get(id)
            .is_none_or(|r| r.state.is_terminal());
        if ended {
            return;
        }
        self.change(
            id,
            Change::Finished {
                state,
                exit: exit.cloned(),
                reason,
            },
        );
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
            let snap = Snapshot {
                now: at,
                node: &self.shared.node,
                batch_cores: self.batch_cores,
                service_cores: self.service_cores,
                active: &active,
                queue: &queue,
                users: &self.users,
            };
            (self.shared.policy().decide(&snap), handles)
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
        let creds = match &cmd {
            Command::Run { .. } => self.shared.jobs.credentials(id),
            _ => None,
        };
        if let Command::Kill { .. } = cmd {
            self.cancelling.insert(id);
        }
        let launch = match (&cmd, &creds) {
            (Command::Run { gpus, .. }, Some(user)) => Some(LaunchRequest {
                id,
                spec: &spec,
                user,
                gpus: *gpus,
            }),
            _ => None,
        };
        let done = self.actuator.apply(&cmd, launch.as_ref());
        match (done, &cmd) {
            (Ok(()), Command::MarkUnschedulable { reason, .. }) => {
                self.finish(id, JobState::Unschedulable, None, Some(reason.clone()));
                self.release_prepared(id);
            }
            (Ok(()), _) => {
                self.change(id, change_of(&cmd));
            }
            (Err(e), Command::Run { .. }) => {
                let _ = self.actuator.release(id);
                let why = format!("launch failed: {e}");
                self.finish(id, JobState::Failed, None, Some(why));
            }
            (Err(e), _) => {
                self.cancelling.remove(&id);
                self.failed_command(&name, &cmd, &e);
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
