//! What each job change does: the state it leads to, its lifecycle check, its update of the
//! table and its events. Pure over the table; the door (`super::Jobs`) runs them in its order.

use crate::model::cpuset::CpuSet;
use crate::model::exit::ExitStatus;
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, Timestamp};
use crate::model::jobstate::JobState;
use crate::model::usage::Usage;
use crate::store::eventlog::{Event, Kind};

use super::JobsError;
use super::table::{JobTable, TableError};

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
    /// What its cgroup reported of its use, read once it ended (before its groups go).
    Accounted { usage: Usage },
    /// Found running or paused on the node after a restart.
    Adopted {
        paused: bool,
        cores: CpuSet,
        pids: Vec<u32>,
    },
}

impl Change {
    /// What was done, for log lines.
    pub(super) fn done(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Paused { .. } => "paused",
            Self::Resumed { .. } => "resumed",
            Self::Resized { .. } => "resized",
            Self::Held { .. } => "held or released",
            Self::Finished { .. } => "ended",
            Self::Accounted { .. } => "accounted",
            Self::Adopted { .. } => "adopted",
        }
    }

    /// What the change is, for refusals.
    pub(super) fn what(&self) -> &'static str {
        match self {
            Self::Started { .. } => "start it",
            Self::Paused { .. } => "pause it",
            Self::Resumed { .. } => "resume it",
            Self::Resized { .. } => "resize it",
            Self::Held { .. } => "hold it",
            Self::Finished { .. } => "end it",
            Self::Accounted { .. } => "account it",
            Self::Adopted { .. } => "adopt it",
        }
    }
}

/// Step 1: the state `change` leads job `id` to, if its lifecycle allows it; nothing changes.
pub(super) fn check(table: &JobTable, id: JobId, change: &Change) -> Result<JobState, JobsError> {
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
    let keeps_state = matches!(
        change,
        Change::Resized { .. } | Change::Held { .. } | Change::Accounted { .. }
    );
    if !keeps_state {
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
        Change::Accounted { .. } => state.is_terminal().then_some(state),
        Change::Adopted { paused, .. } => (state == JobState::Pending).then_some(if *paused {
            JobState::Paused
        } else {
            JobState::Running
        }),
    }
}

pub(super) fn exit_fields(exit: Option<&ExitStatus>) -> (Option<i32>, Option<i32>) {
    match exit {
        Some(ExitStatus::Exited(c)) => (Some(*c), None),
        Some(ExitStatus::Signaled(s)) => (None, Some(*s)),
        _ => (None, None),
    }
}

/// Step 3: the table's side of a change already checked and made durable.
pub(super) fn update(
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
        Change::Accounted { usage } => rec.usage = Some(*usage),
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
pub(super) fn events(name: String, id: JobId, change: &Change, target: JobState) -> Vec<Event> {
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
        Change::Accounted { .. } => Vec::new(),
        Change::Adopted { .. } => vec![
            ev(Kind::Custom {
                text: "adopted".into(),
            })
            .because(format!("found {target} after a restart")),
        ],
    }
}
