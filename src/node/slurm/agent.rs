//! The Slurm agent the daemon's control loop drives: it keeps the Slurm jobs of this node
//! (found in Slurm's cgroups, completed by what `squeue` and `scontrol` say), carries out the
//! squeeze planner's actions on their groups, and reports every change for the daemon to
//! record.
//!
//! Pause order: lowsched freezes the job's process groups first (µs: the service is protected
//! at once), then asks Slurm to suspend it (`scontrol suspend`, seconds, on the worker thread).
//! Resume order: cores first, then `scontrol resume` (Slurm thaws and sends SIGCONT), then
//! lowsched thaws too, so a Slurm that does not answer cannot keep the job frozen. A job that
//! someone else suspended in Slurm is never resumed by lowsched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::decide::slurm::{SlurmAction, SlurmJobView};
use crate::model::cpuset::CpuSet;
use crate::model::job::Timestamp;
use crate::node::cgroup::{DEFAULT_TIMEOUT, Layout};

use super::discover::{DiscoverError, SlurmJobGroups, SlurmRoots, discover};
use super::drain::Drainer;
use super::scontrol::{JobEnd, Tools};
use super::worker::{Answer, Request, Worker};
use super::{SlurmConfig, group};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Slurm jobs: no Slurm cgroup layout on this host (a hybrid host without a v1 freezer)")]
    NoLayout,
    #[error("Slurm jobs: cannot read this node's name from {path}: {source}")]
    NodeName {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("Slurm jobs: cannot start the worker thread: {0}")]
    Thread(std::io::Error),
}

/// One Slurm job on this node, as the agent knows it.
#[derive(Clone, Debug)]
pub struct SlurmJob {
    pub id: u64,
    pub uid: Option<u32>,
    pub groups: SlurmJobGroups,
    /// The cores Slurm allocated: the job group's cpuset when first seen, replaced by
    /// `scontrol show job -d`'s CPU_IDs when those cover it (after a restart the group may be
    /// narrowed already).
    pub allocation: CpuSet,
    pub cores: CpuSet,
    /// Frozen by lowsched.
    pub paused: bool,
    /// lowsched asked Slurm to suspend it and has not resumed it since.
    pub suspended_by_us: bool,
    /// Suspended in Slurm by someone else.
    pub held_by_other: bool,
    pub priority: Option<u64>,
    /// When lowsched first saw it.
    pub started: Timestamp,
    /// Requests for this job still at the worker: Slurm's state is not judged meanwhile.
    in_flight: u32,
}

/// What changed, for the daemon to record (job table, journal, event log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlurmChange {
    Appeared {
        id: u64,
        uid: Option<u32>,
        cores: CpuSet,
    },
    Resized {
        id: u64,
        cores: CpuSet,
    },
    Paused {
        id: u64,
    },
    Resumed {
        id: u64,
        cores: CpuSet,
    },
    /// Suspended (or resumed) in Slurm by someone else.
    HeldByOther {
        id: u64,
        held: bool,
    },
    /// Its group is gone: Slurm ended it; `end` is Slurm's record of how, or why it is not
    /// known.
    Ended {
        id: u64,
        end: Result<JobEnd, String>,
    },
    /// Something failed; the agent goes on (the service stays protected).
    Failed {
        id: Option<u64>,
        what: String,
    },
    /// The node was drained (true) or resumed (false) in Slurm by lowsched.
    Drain {
        drained: bool,
    },
}

/// The agent.
#[derive(Debug)]
pub struct SlurmAgent {
    roots: SlurmRoots,
    node: String,
    suspend: bool,
    jobs: BTreeMap<u64, SlurmJob>,
    worker: Worker,
    drainer: Option<Drainer>,
    freeze_timeout: Duration,
    /// Ended jobs Slurm still called live: when to ask again, and how often it was asked.
    ends_due: BTreeMap<u64, (Instant, u32)>,
}

/// How long after Slurm called an ended job live it is asked again, and how often at most.
const END_RETRY: Duration = Duration::from_millis(500);
const END_TRIES: u32 = 20;

impl SlurmAgent {
    pub fn start(
        cfg: &SlurmConfig,
        layout: &Layout,
        proc_root: &std::path::Path,
    ) -> Result<Self, AgentError> {
        let roots = SlurmRoots::for_layout(layout).ok_or(AgentError::NoLayout)?;
        let node = cfg.node(proc_root).map_err(|source| AgentError::NodeName {
            path: proc_root.join(super::HOSTNAME),
            source,
        })?;
        Self::with_roots(cfg, roots, node)
    }

    /// The agent on explicit cgroup roots and node name (tests use temp-dir fakes).
    pub fn with_roots(
        cfg: &SlurmConfig,
        roots: SlurmRoots,
        node: String,
    ) -> Result<Self, AgentError> {
        let tools = Tools {
            bin_dir: cfg.bin_dir.clone(),
            timeout: Duration::from_millis(cfg.command_timeout_ms),
        };
        let worker = Worker::start(tools, node.clone(), Duration::from_millis(cfg.poll_ms))
            .map_err(AgentError::Thread)?;
        Ok(Self {
            roots,
            node,
            suspend: cfg.suspend,
            jobs: BTreeMap::new(),
            worker,
            drainer: cfg.drain_hold().map(Drainer::new),
            freeze_timeout: DEFAULT_TIMEOUT,
            ends_due: BTreeMap::new(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn roots(&self) -> &SlurmRoots {
        &self.roots
    }

    pub fn jobs(&self) -> impl Iterator<Item = &SlurmJob> {
        self.jobs.values()
    }

    /// The planner's snapshot of the jobs.
    pub fn views(&self) -> Vec<SlurmJobView> {
        self.jobs
            .values()
            .map(|j| SlurmJobView {
                id: j.id,
                allocation: j.allocation,
                cores: j.cores,
                paused: j.paused,
                held_by_other: j.held_by_other,
                priority: j.priority,
                started: j.started,
            })
            .collect()
    }

    /// Looks at Slurm's cgroups and takes in the worker's answers: new jobs, ended jobs,
    /// allocations, priorities, and suspensions made by someone else.
    pub fn scan(&mut self, now: Timestamp) -> Vec<SlurmChange> {
        let mut changes = Vec::new();
        match discover(&self.roots, &self.node) {
            Ok(found) => self.merge(found, now, &mut changes),
            Err(e @ DiscoverError::List { .. }) => changes.push(SlurmChange::Failed {
                id: None,
                what: e.to_string(),
            }),
        }
        let at = Instant::now();
        for (&id, (due, _)) in &mut self.ends_due {
            if *due <= at {
                self.worker.send(Request::End(id));
                // Not again before this answer: it sets the next time.
                *due = at + END_RETRY * END_TRIES;
            }
        }
        for answer in self.worker.answers() {
            self.absorb(answer, now, &mut changes);
        }
        changes
    }

    /// Slurm's record of an ended job, or `None` while Slurm still calls it live (asked again
    /// after `END_RETRY`, up to `END_TRIES` times; then the live state is what is recorded).
    fn settled_end(
        &mut self,
        id: u64,
        end: Result<JobEnd, String>,
    ) -> Option<Result<JobEnd, String>> {
        let live = end.as_ref().is_ok_and(JobEnd::still_live);
        let tries = self.ends_due.get(&id).map_or(0, |&(_, n)| n);
        if live && tries < END_TRIES {
            self.ends_due
                .insert(id, (Instant::now() + END_RETRY, tries + 1));
            return None;
        }
        self.ends_due.remove(&id);
        Some(end)
    }

    fn merge(&mut self, found: Vec<SlurmJobGroups>, now: Timestamp, out: &mut Vec<SlurmChange>) {
        let ids: Vec<u64> = found.iter().map(|g| g.job).collect();
        let gone: Vec<u64> = self
            .jobs
            .keys()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.jobs.remove(&id);
            self.worker.send(Request::End(id));
        }
        for groups in found {
            if let Some(job) = self.jobs.get_mut(&groups.job) {
                job.groups = groups;
                continue;
            }
            // A job whose steps are not there yet is picked up at the next scan.
            if groups.cpuset_steps.is_empty() {
                continue;
            }
            let Ok(cores) = group::cores(&groups) else {
                continue;
            };
            let paused = group::is_frozen(&groups).unwrap_or(false);
            let id = groups.job;
            self.worker.send(Request::Allocation(id));
            self.jobs.insert(
                id,
                SlurmJob {
                    id,
                    uid: groups.uid,
                    groups: groups.clone(),
                    allocation: cores,
                    cores,
                    paused: false,
                    suspended_by_us: false,
                    held_by_other: paused,
                    priority: None,
                    started: now,
                    in_flight: 1,
                },
            );
            out.push(SlurmChange::Appeared {
                id,
                uid: groups.uid,
                cores,
            });
        }
    }

    fn absorb(&mut self, answer: Answer, now: Timestamp, out: &mut Vec<SlurmChange>) {
        match answer {
            Answer::Allocation(id, result) => {
                let Some(job) = self.jobs.get_mut(&id) else {
                    return;
                };
                job.in_flight = job.in_flight.saturating_sub(1);
                match result {
                    Ok(Some(cpus)) if job.cores.is_subset(&cpus) => job.allocation = cpus,
                    Ok(_) => {}
                    Err(what) => out.push(SlurmChange::Failed { id: Some(id), what }),
                }
            }
            Answer::Done(request, result) => self.done(&request, result, out),
            Answer::End(id, end) => {
                let end =
                    end.and_then(|e| e.ok_or_else(|| format!("Slurm no longer knows job {id}")));
                if let Some(end) = self.settled_end(id, end) {
                    out.push(SlurmChange::Ended { id, end });
                }
            }
            Answer::Jobs(Ok(queued)) => {
                for q in queued {
                    let Some(job) = self.jobs.get_mut(&q.id) else {
                        continue;
                    };
                    job.priority = q.priority;
                    job.uid = job.uid.or(q.uid);
                    if job.in_flight > 0 {
                        continue;
                    }
                    judge_slurm_state(job, q.suspended(), out);
                }
            }
            Answer::Node(Ok(status)) => {
                if let Some(d) = &mut self.drainer {
                    d.observe(&status, now);
                }
            }
            Answer::Jobs(Err(what)) | Answer::Node(Err(what)) => {
                out.push(SlurmChange::Failed { id: None, what });
            }
        }
    }

    fn done(&mut self, request: &Request, result: Result<(), String>, out: &mut Vec<SlurmChange>) {
        let ok = result.is_ok();
        match request {
            Request::End(_) => {}
            Request::Suspend(id) | Request::Resume(id) | Request::Allocation(id) => {
                if let Some(job) = self.jobs.get_mut(id) {
                    job.in_flight = job.in_flight.saturating_sub(1);
                }
            }
            Request::Drain(_) | Request::Undrain => {
                if let Some(d) = &mut self.drainer {
                    d.answered(request, ok);
                }
                if ok {
                    out.push(SlurmChange::Drain {
                        drained: matches!(request, Request::Drain(_)),
                    });
                }
            }
        }
        if let Err(what) = result {
            let id = match request {
                Request::Suspend(id) | Request::Resume(id) | Request::Allocation(id) => Some(*id),
                _ => None,
            };
            out.push(SlurmChange::Failed {
                id,
                what: format!("{request}: {what}"),
            });
        }
    }

    /// Carries out the planner's actions in order; a job whose group vanished meanwhile is
    /// reported as ended.
    pub fn carry_out(&mut self, actions: &[SlurmAction]) -> Vec<SlurmChange> {
        let mut out = Vec::new();
        for action in actions {
            let id = action.job();
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            let result = match *action {
                SlurmAction::Resize { to, .. } => {
                    group::resize(&job.groups, job.cores, to).map(|()| {
                        job.cores = to;
                        SlurmChange::Resized { id, cores: to }
                    })
                }
                SlurmAction::Pause { .. } => {
                    group::set_frozen(&job.groups, true, self.freeze_timeout).map(|()| {
                        job.paused = true;
                        if self.suspend {
                            job.suspended_by_us = true;
                            job.in_flight += 1;
                            self.worker.send(Request::Suspend(id));
                        }
                        SlurmChange::Paused { id }
                    })
                }
                SlurmAction::Resume { cores, .. } => {
                    resume(job, cores, &self.worker, self.freeze_timeout)
                }
            };
            match result {
                Ok(change) => out.push(change),
                // Ended under our hands: its end is asked of Slurm like any other's.
                Err(_) if !group::exists(&job.groups) => {
                    self.jobs.remove(&id);
                    self.worker.send(Request::End(id));
                }
                Err(e) => out.push(SlurmChange::Failed {
                    id: Some(id),
                    what: e.to_string(),
                }),
            }
        }
        out
    }

    /// When the daemon stops: gives every job its whole allocation back, thaws and resumes in
    /// Slurm what lowsched paused (never what someone else suspended), and resumes the node if
    /// lowsched drained it. Slurm's jobs must not depend on lowsched running. The Slurm calls
    /// are finished when the agent is dropped.
    pub fn release_all(&mut self) -> Vec<SlurmChange> {
        let actions: Vec<SlurmAction> = self
            .jobs
            .values()
            .filter(|j| !j.held_by_other)
            .filter_map(|j| {
                if j.paused {
                    Some(SlurmAction::Resume {
                        job: j.id,
                        cores: j.allocation,
                    })
                } else {
                    (j.cores != j.allocation).then_some(SlurmAction::Resize {
                        job: j.id,
                        from: j.cores,
                        to: j.allocation,
                    })
                }
            })
            .collect();
        let changes = self.carry_out(&actions);
        if self.drainer.as_ref().is_some_and(Drainer::drained) {
            self.worker.send(Request::Undrain);
        }
        changes
    }

    /// Asks Slurm how job `id` ended (answered as [`SlurmChange::Ended`] by a later scan).
    pub fn ask_end(&self, id: u64) {
        self.worker.send(Request::End(id));
    }

    /// Tells the drain side whether batch has a core now; sends a drain or undrain when due.
    pub fn update_drain(&mut self, batch_has_core: bool, now: Timestamp) {
        if let Some(d) = &mut self.drainer
            && let Some(request) = d.update(batch_has_core, now)
        {
            self.worker.send(request);
        }
    }
}

fn resume(
    job: &mut SlurmJob,
    cores: CpuSet,
    worker: &Worker,
    timeout: Duration,
) -> Result<SlurmChange, crate::node::cgroup::CgroupError> {
    if job.cores != cores {
        group::resize(&job.groups, job.cores, cores)?;
        job.cores = cores;
    }
    if job.suspended_by_us {
        job.suspended_by_us = false;
        job.in_flight += 1;
        worker.send(Request::Resume(job.id));
    }
    group::set_frozen(&job.groups, false, timeout)?;
    job.paused = false;
    Ok(SlurmChange::Resumed { id: job.id, cores })
}

/// Compares Slurm's view of a job with lowsched's: a suspension lowsched did not ask for is
/// someone else's hold; lowsched's own suspension lifted by someone else means Slurm thawed
/// the job, which the planner may pause again.
fn judge_slurm_state(job: &mut SlurmJob, suspended: bool, out: &mut Vec<SlurmChange>) {
    let id = job.id;
    if suspended && !job.suspended_by_us && !job.held_by_other {
        job.held_by_other = true;
        out.push(SlurmChange::HeldByOther { id, held: true });
    } else if !suspended && job.held_by_other {
        job.held_by_other = false;
        out.push(SlurmChange::HeldByOther { id, held: false });
    } else if !suspended && job.suspended_by_us {
        job.suspended_by_us = false;
        job.paused = false;
        out.push(SlurmChange::Resumed {
            id,
            cores: job.cores,
        });
    }
}

#[cfg(test)]
mod tests;
