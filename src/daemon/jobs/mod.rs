//! The one door for job changes: every change of a job — accepted, started, paused, resumed,
//! resized, held, finished, adopted after a restart — goes through [`Jobs`], which takes the
//! steps in one fixed order:
//!
//! 1. check the move against the job's lifecycle (an illegal move changes nothing);
//! 2. make it durable in the journal where it must survive a restart (submits, starts, holds,
//!    ends), refusing the change when the record cannot be written;
//! 3. let the node act where it must come after the record ([`Jobs::apply_with`]: a launch, the
//!    release of an exit record), then update the job table (what `status` and the policy see);
//! 4. write the event log;
//! 5. wake the waiters (`lowsched wait`).
//!
//! Nothing else writes the table, the journal's job records or the job events: readers get the
//! table through [`Jobs::table`], which hands out no way to change it.

mod table;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::decide::policy::Rank;
use crate::decide::queue::{JobQueue, Queued};
use crate::model::cpuset::CpuSet;
use crate::model::credentials::Credentials;
use crate::model::exit::ExitStatus;
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, Timestamp};
use crate::model::jobstate::JobState;
use crate::store::eventlog::{Event, EventLog, Kind};
use crate::store::journal::{Ending, Journal, JournalError, Owner, Record, Ticket};

pub use table::{JobRecord, JobTable, TableError};

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("job {id} is {state}: cannot {what}")]
    NotApplicable {
        id: JobId,
        state: JobState,
        what: &'static str,
    },
    #[error("job not accepted: {0}")]
    Journal(#[from] JournalError),
    /// The change's journal record could not be made durable: the change was not made.
    #[error("job {id}: cannot record that it was {done}: {source}")]
    NotRecorded {
        id: JobId,
        done: &'static str,
        source: JournalError,
    },
    /// The node's side of a durable change failed (a launch): the table was not changed.
    #[error("job {id}: {why}")]
    Node { id: JobId, why: String },
}

/// One change of one job, as the control loop or recovery carries it out on the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Launched on `cores`.
    Started {
        cores: CpuSet,
        gpus: GpuSet,
        reason: String,
    },
    /// Frozen; `held` when its owner asked (it then stays paused, across restarts too).
    Paused { reason: String, held: bool },
    /// Thawed on `cores`.
    Resumed { cores: CpuSet, reason: String },
    /// Its cpuset rewritten while it runs.
    Resized { cores: CpuSet, reason: String },
    /// The owner's hold set or released on a job that is already paused.
    Held { held: bool, by: String },
    /// Ended: exited, killed, cancelled, given up on, or lost.
    Finished {
        state: JobState,
        exit: Option<ExitStatus>,
        reason: Option<String>,
    },
    /// Found running or paused on the node after a restart.
    Adopted {
        paused: bool,
        cores: CpuSet,
        pids: Vec<u32>,
    },
}

impl Change {
    /// What was done, for log lines.
    fn done(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Paused { .. } => "paused",
            Self::Resumed { .. } => "resumed",
            Self::Resized { .. } => "resized",
            Self::Held { .. } => "held or released",
            Self::Finished { .. } => "ended",
            Self::Adopted { .. } => "adopted",
        }
    }

    /// What the change is, for refusals.
    fn what(&self) -> &'static str {
        match self {
            Self::Started { .. } => "start it",
            Self::Paused { .. } => "pause it",
            Self::Resumed { .. } => "resume it",
            Self::Resized { .. } => "resize it",
            Self::Held { .. } => "hold it",
            Self::Finished { .. } => "end it",
            Self::Adopted { .. } => "adopt it",
        }
    }
}

/// Submits journaled but not yet durable; [`Jobs::accept`] makes them durable and visible.
#[derive(Debug, Default)]
pub struct Staged {
    last: Option<Ticket>,
    jobs: Vec<(JobRecord, Credentials)>,
}

impl Staged {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// How many staged jobs run as `uid`, and how many there are in all.
    pub fn counts(&self, uid: u32) -> (usize, usize) {
        let mine = self.jobs.iter().filter(|(_, c)| c.uid == uid).count();
        (mine, self.jobs.len())
    }
}

/// The job table with its journal, event log, queue and waiters: the one door for changes.
#[derive(Debug)]
pub struct Jobs {
    table: Mutex<JobTable>,
    changed: Condvar,
    queue: JobQueue<()>,
    journal: Journal,
    events: EventLog,
    /// Who each job runs as, resolved at submit or again from its owner after a restart.
    credentials: Mutex<HashMap<JobId, Credentials>>,
}

/// Read access to the job table.
#[derive(Debug)]
pub struct TableRead<'a>(MutexGuard<'a, JobTable>);

impl Deref for TableRead<'_> {
    type Target = JobTable;
    fn deref(&self) -> &JobTable {
        &self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Jobs {
    pub fn new(journal: Journal, events: EventLog) -> Self {
        Self {
            table: Mutex::new(JobTable::default()),
            changed: Condvar::new(),
            queue: JobQueue::new(),
            journal,
            events,
            credentials: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps only the `keep` most recently finished jobs in the table (`[journal]
    /// keep_finished`, as a compaction does in the journal), so memory stays bounded.
    pub fn keep_finished(&self, keep: usize) {
        lock(&self.table).set_keep_finished(keep);
    }

    /// How many finished jobs left the table since the last call.
    pub fn take_pruned(&self) -> usize {
        lock(&self.table).take_pruned()
    }

    pub fn table(&self) -> TableRead<'_> {
        TableRead(lock(&self.table))
    }

    /// The pending jobs in the policy's order.
    pub fn queue(&self) -> &JobQueue<()> {
        &self.queue
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Records a decision or an event of no job (the service, the scheduler).
    pub fn record_event(&self, ev: Event) {
        self.events.record(ev);
    }

    /// Step 2 of a submit: journals a new job, not yet durable nor visible.
    pub fn stage(
        &self,
        staged: &mut Staged,
        rec: JobRecord,
        creds: Credentials,
    ) -> Result<(), JobsError> {
        let ticket = self.journal.append(&Record::Submitted {
            id: rec.id,
            spec: Box::new(rec.spec.clone()),
            owner: rec.owner.clone(),
            submitted: rec.submitted,
        })?;
        staged.last = Some(ticket);
        staged.jobs.push((rec, creds));
        Ok(())
    }

    /// Makes staged submits durable (one sync for all), then visible: table, queue (at
    /// `rank`), event log. On a journal error none of them is accepted.
    pub fn accept(
        &self,
        staged: &mut Staged,
        rank: impl Fn(&JobRecord) -> Rank,
    ) -> Result<(), JobsError> {
        self.admit(staged, Some(&rank))
    }

    /// [`Jobs::accept`]'s steps; jobs go in the queue only with a `rank`.
    fn admit(
        &self,
        staged: &mut Staged,
        rank: Option<&dyn Fn(&JobRecord) -> Rank>,
    ) -> Result<(), JobsError> {
        let jobs = std::mem::take(&mut staged.jobs);
        let Some(ticket) = staged.last.take() else {
            return Ok(());
        };
        self.journal.sync(ticket)?;
        let mut names = Vec::with_capacity(jobs.len());
        {
            let mut creds = lock(&self.credentials);
            let mut table = lock(&self.table);
            for (rec, c) in jobs {
                creds.insert(rec.id, c);
                if let Some(rank) = rank {
                    let r = rank(&rec);
                    self.queue.push(rec.id, (), |_, _, _| r);
                }
                names.push((rec.spec.name.clone(), rec.id, rec.owner.user.clone()));
                table.insert(rec);
            }
        }
        for (name, id, user) in names {
            self.events.record(
                Event::new(
                    name,
                    Some(id),
                    Kind::Custom {
                        text: "accepted".into(),
                    },
                )
                .because(format!("submitted by {user}")),
            );
        }
        self.changed.notify_all();
        Ok(())
    }

    /// A job another scheduler already started (a Slurm job found on the node): journaled
    /// durably and shown as accepted like a submit, but never queued, then started on `cores`
    /// through [`Jobs::apply`].
    pub fn accept_started(
        &self,
        rec: JobRecord,
        creds: Credentials,
        cores: CpuSet,
        reason: String,
        at: Timestamp,
    ) -> Result<(), JobsError> {
        let id = rec.id;
        let mut staged = Staged::default();
        self.stage(&mut staged, rec, creds)?;
        self.admit(&mut staged, None)?;
        self.apply(
            id,
            Change::Started {
                cores,
                gpus: GpuSet::default(),
                reason,
            },
            at,
        )
    }

    /// Puts a job read back from the journal into the table as it was (recovery): no journal
    /// record and no event, since nothing changed. With a `rank`, a pending one goes back in
    /// the queue; without, recovery moves it on through [`Jobs::apply`].
    pub fn restore(&self, rec: JobRecord, rank: Option<Rank>) {
        if let (JobState::Pending, Some(r)) = (rec.state, rank) {
            self.queue.push(rec.id, (), |_, _, _| r);
        }
        lock(&self.table).insert(rec);
    }

    /// Carries out `change` of job `id` at `at`, in the door's order.
    pub fn apply(&self, id: JobId, change: Change, at: Timestamp) -> Result<(), JobsError> {
        self.apply_with(id, change, at, || Ok(()))
    }

    /// [`Jobs::apply`] with the node's side of the change put in the door's order: `node` runs
    /// once the change's record is durable and before the table shows it. So a job's launch
    /// comes after its Started record (its command never runs unrecorded), and the release of
    /// a waiter's exit record after the Ended record (an end is never lost in between). A
    /// record that cannot be written refuses the change before `node` runs
    /// ([`JobsError::NotRecorded`]); an error of `node` leaves the table as it was.
    pub fn apply_with(
        &self,
        id: JobId,
        change: Change,
        at: Timestamp,
        node: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), JobsError> {
        let target = {
            let table = lock(&self.table);
            let target = check(&table, id, &change)?;
            self.make_durable(id, &change, target, at)?;
            target
        };
        node().map_err(|why| JobsError::Node { id, why })?;
        let event = {
            let mut table = lock(&self.table);
            let rec = table.get(id).ok_or(TableError::NotFound(id))?;
            let name = rec.spec.name.clone();
            update(&mut table, id, &change, target, at)?;
            if let Change::Finished { .. } = change {
                table.prune_finished();
            }
            events(name, id, &change, target)
        };
        if let Change::Finished { .. } = change {
            lock(&self.credentials).remove(&id);
            self.queue.remove(id);
        }
        for ev in event {
            self.events.record(ev);
        }
        self.changed.notify_all();
        Ok(())
    }

    /// Puts a pending job back in the queue at `rank` (a start that could not be recorded).
    pub fn requeue(&self, id: JobId, rank: Rank) {
        let pending = lock(&self.table)
            .get(id)
            .is_some_and(|r| r.state == JobState::Pending);
        if pending {
            self.queue.push(id, (), |_, _, _| rank);
        }
    }

    /// Step 2: the journal record a change needs, durable before the node and the table act on
    /// it: a start (before the launch), an owner's hold (before the owner is answered), an end
    /// (before the waiter's exit record is released). A record that cannot be written refuses
    /// the change; the caller keeps what the node has (the exit record, the unlaunched job)
    /// and tries again later.
    fn make_durable(
        &self,
        id: JobId,
        change: &Change,
        target: JobState,
        at: Timestamp,
    ) -> Result<(), JobsError> {
        let record = match change {
            Change::Started { cores, .. } => Record::Started {
                id,
                at,
                cores: *cores,
            },
            Change::Paused { held: true, .. } => Record::Held { id, held: true },
            Change::Held { held, .. } => Record::Held { id, held: *held },
            Change::Finished { exit, reason, .. } => {
                let (exit_code, signal) = exit_fields(exit.as_ref());
                let ending = Ending {
                    state: target,
                    exit_code,
                    signal,
                    reason: reason.clone(),
                    at,
                };
                Record::Ended { id, ending }
            }
            _ => return Ok(()),
        };
        self.journal
            .append_durable(&record)
            .map_err(|source| JobsError::NotRecorded {
                id,
                done: change.done(),
                source,
            })
    }

    /// Refreshes the pids `status` shows (not a change of the job).
    pub fn set_pids(&self, pids: Vec<(JobId, Vec<u32>)>) {
        let mut table = lock(&self.table);
        for (id, p) in pids {
            table.set_pids(id, p);
        }
    }

    /// Who job `id` runs as: as resolved at submit, or again from its journaled owner.
    pub fn credentials(&self, id: JobId) -> Option<Credentials> {
        if let Some(c) = lock(&self.credentials).get(&id) {
            return Some(c.clone());
        }
        let owner: Owner = lock(&self.table).get(id)?.owner.clone();
        Some(Credentials::of_ids(owner.uid, owner.gid))
    }

    /// Takes a pending job out of the queue as the policy starts it or gives up on it.
    pub fn dequeue(&self, item: &Queued<()>) -> bool {
        self.queue.take(item)
    }

    /// Waits until job `id` ends, `timeout` passes or `stop()` turns true; returns what `view`
    /// makes of the job then and whether it had ended.
    pub fn wait<T>(
        &self,
        id: JobId,
        timeout: Duration,
        stop: impl Fn() -> bool,
        view: impl Fn(&JobRecord) -> T,
    ) -> Result<(bool, T), TableError> {
        let deadline = Instant::now() + timeout;
        let mut table = lock(&self.table);
        loop {
            let rec = table.get(id).ok_or(TableError::NotFound(id))?;
            let done = rec.state.is_terminal();
            let left = deadline.saturating_duration_since(Instant::now());
            if done || left.is_zero() || stop() {
                return Ok((done, view(rec)));
            }
            table = self
                .changed
                .wait_timeout(table, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wakes every waiter (at shutdown).
    pub fn wake_waiters(&self) {
        self.changed.notify_all();
    }
}

/// Step 1: the state `change` leads job `id` to, if its lifecycle allows it; nothing changes.
fn check(table: &JobTable, id: JobId, change: &Change) -> Result<JobState, JobsError> {
    let state = table.get(id).ok_or(TableError::NotFound(id))?.state;
    let target = target_state(state, change).ok_or(JobsError::NotApplicable {
        id,
        state,
        what: change.what(),
    })?;
    // An adopted job is found paused, but its life went through running first.
    let first = match change {
        Change::Adopted { .. } => JobState::Running,
        _ => target,
    };
    if !matches!(change, Change::Resized { .. } | Change::Held { .. }) {
        state
            .move_to(first)
            .map_err(|source| TableError::Illegal { id, source })?;
    }
    Ok(target)
}

/// The state a change leads to, or `None` where it does not apply to a job in `state`.
fn target_state(state: JobState, change: &Change) -> Option<JobState> {
    match change {
        Change::Started { .. } | Change::Resumed { .. } => Some(JobState::Running),
        Change::Paused { .. } => Some(JobState::Paused),
        Change::Resized { .. } => (state == JobState::Running).then_some(state),
        Change::Held { .. } => (state == JobState::Paused).then_some(state),
        Change::Finished { state: to, .. } => to.is_terminal().then_some(*to),
        Change::Adopted { paused, .. } => (state == JobState::Pending).then_some(if *paused {
            JobState::Paused
        } else {
            JobState::Running
        }),
    }
}

fn exit_fields(exit: Option<&ExitStatus>) -> (Option<i32>, Option<i32>) {
    match exit {
        Some(ExitStatus::Exited(c)) => (Some(*c), None),
        Some(ExitStatus::Signaled(s)) => (None, Some(*s)),
        _ => (None, None),
    }
}

/// Step 3: the table's side of a change already checked and made durable.
fn update(
    table: &mut JobTable,
    id: JobId,
    change: &Change,
    target: JobState,
    at: Timestamp,
) -> Result<(), TableError> {
    let from = table.get(id).map(|r| r.state);
    if let Change::Adopted { paused: true, .. } = change {
        table.transition(id, JobState::Running, at)?;
    }
    let rec = if from == Some(target) {
        table.get_mut(id).ok_or(TableError::NotFound(id))?
    } else {
        table.transition(id, target, at)?
    };
    match change {
        Change::Started { cores, gpus, .. } => {
            rec.cores = *cores;
            rec.gpus = *gpus;
        }
        Change::Resumed { cores, .. } | Change::Resized { cores, .. } => rec.cores = *cores,
        Change::Paused { held, .. } => rec.held = *held,
        Change::Held { held, .. } => rec.held = *held,
        Change::Finished { exit, reason, .. } => {
            let (code, signal) = exit_fields(exit.as_ref());
            rec.exit_code = code;
            rec.signal = signal;
            rec.reason = reason.clone();
        }
        Change::Adopted {
            paused,
            cores,
            pids,
        } => {
            rec.cores = if *paused { CpuSet::new() } else { *cores };
            rec.pids = pids.clone();
        }
    }
    Ok(())
}

/// Step 4: the event log's lines for a change.
fn events(name: String, id: JobId, change: &Change, target: JobState) -> Vec<Event> {
    let ev = |kind| Event::new(name.clone(), Some(id), kind);
    match change {
        Change::Started { cores, reason, .. } => vec![
            ev(Kind::Start {
                cores: *cores,
                threads: cores.len(),
            })
            .because(reason.clone()),
        ],
        Change::Paused { reason, .. } => vec![ev(Kind::Pause).because(reason.clone())],
        Change::Resumed { cores, reason } => vec![
            ev(Kind::Unpause).because(reason.clone()),
            ev(Kind::UpdateCores { cores: *cores }).because(reason.clone()),
        ],
        Change::Resized { cores, reason } => {
            vec![ev(Kind::UpdateCores { cores: *cores }).because(reason.clone())]
        }
        Change::Held { held, by } => vec![
            ev(Kind::Custom {
                text: if *held { "held" } else { "released" }.into(),
            })
            .because(by.clone()),
        ],
        Change::Finished { reason, .. } => vec![ev(Kind::End).because(match reason {
            Some(r) => format!("{target}: {r}"),
            None => target.to_string(),
        })],
        Change::Adopted { .. } => vec![
            ev(Kind::Custom {
                text: "adopted".into(),
            })
            .because(format!("found {target} after a restart")),
        ],
    }
}

#[cfg(test)]
mod tests;
