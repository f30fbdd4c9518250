//! A job's lifecycle states and the only moves allowed between them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. The last five are terminal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
    Unschedulable,
    /// Killed at its run-time limit (`submit --time`), like Slurm's TIMEOUT.
    Timeout,
}

/// A move the lifecycle does not allow, e.g. resuming a finished job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot become {to}")]
pub struct IllegalTransition {
    pub from: JobState,
    pub to: JobState,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Pending,
        JobState::Running,
        JobState::Paused,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Unschedulable,
        JobState::Timeout,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Unschedulable | Self::Timeout
        )
    }

    /// True while the job has processes on the node (frozen or not).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// Whether `self → next` is a legal move.
    ///
    /// - Pending starts (Running), is cancelled, times out (Unschedulable) or fails to launch.
    /// - Running and Paused swap, and either can end: its processes exit (Succeeded or Failed,
    ///   a frozen job can still be SIGKILLed), it is cancelled, or it is killed at its run-time
    ///   limit (Timeout).
    /// - Terminal states never change.
    pub fn can_move_to(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Pending, Running | Cancelled | Unschedulable | Failed)
                | (Running, Paused)
                | (Paused, Running)
                | (Running | Paused, Succeeded | Failed | Cancelled | Timeout)
        )
    }

    /// The transition function: `next` if the move is legal, an error naming both ends otherwise.
    pub fn move_to(self, next: JobState) -> Result<JobState, IllegalTransition> {
        if self.can_move_to(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                from: self,
                to: next,
            })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Unschedulable => "unschedulable",
            Self::Timeout => "timeout",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state {}", super::text::quoted(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::*;
    use super::*;

    #[test]
    fn legal_moves() {
        for (a, b) in [
            (Pending, Running),
            (Pending, Cancelled),
            (Pending, Unschedulable),
            (Pending, Failed),
            (Running, Paused),
            (Paused, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
            (Paused, Cancelled),
            (Paused, Failed),
            (Running, Timeout),
            (Paused, Timeout),
        ] {
            assert_eq!(a.move_to(b), Ok(b), "{a} -> {b}");
        }
    }

    #[test]
    fn illegal_moves_are_rejected() {
        for (a, b) in [
            (Pending, Paused),
            (Pending, Succeeded),
            (Running, Pending),
            (Running, Unschedulable),
            (Paused, Pending),
            (Running, Running),
            (Pending, Timeout),
        ] {
            let err = a.move_to(b).unwrap_err();
            assert_eq!(err, IllegalTransition { from: a, to: b });
            assert!(err.to_string().contains(a.as_str()));
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for t in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for next in JobState::ALL {
                assert!(t.move_to(next).is_err(), "{t} -> {next}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
