//! How a job ended, and the one-line exit record its waiter writes in the state dir so that
//! the outcome survives a daemon restart.

use std::fmt;

use nix::sys::wait::WaitStatus;
use serde::{Deserialize, Serialize};

use crate::model::job::JobId;

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Its main process exited with this code.
    Exited(i32),
    /// Its main process was killed by this signal.
    Signaled(i32),
    /// It never ran: its waiter could not set it up (which step, which path, the OS error).
    NotStarted(String),
    /// Its end was not observed (its waiter died without a record, or its groups vanished).
    Lost(String),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == Self::Exited(0)
    }

    /// From a wait status of the job's main process; `None` while it has not ended.
    pub fn from_wait(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self::Exited(code)),
            WaitStatus::Signaled(_, sig, _) => Some(Self::Signaled(sig as i32)),
            _ => None,
        }
    }

    /// The record line: `exited N`, `signaled N`, `not-started TEXT` or `lost TEXT`.
    pub fn to_record(&self) -> String {
        let one_line = |s: &str| s.replace('\n', " ");
        match self {
            Self::Exited(c) => format!("exited {c}\n"),
            Self::Signaled(s) => format!("signaled {s}\n"),
            Self::NotStarted(why) => format!("not-started {}\n", one_line(why)),
            Self::Lost(why) => format!("lost {}\n", one_line(why)),
        }
    }

    /// Parses a record: its last line decides. An empty record (the waiter is setting the job
    /// up) or a `started PID` line (the job runs) means "not ended yet": `Ok(None)`.
    pub fn from_record(text: &str) -> Result<Option<Self>, String> {
        let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
            return Ok(None);
        };
        if line.starts_with("started ") {
            return Ok(None);
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let number = || {
            rest.trim().parse::<i32>().map_err(|_| {
                format!(
                    "bad exit record {}: expected a number",
                    super::text::quoted(line)
                )
            })
        };
        match word {
            "exited" => Ok(Some(Self::Exited(number()?))),
            "signaled" => Ok(Some(Self::Signaled(number()?))),
            "not-started" => Ok(Some(Self::NotStarted(rest.to_string()))),
            "lost" => Ok(Some(Self::Lost(rest.to_string()))),
            _ => Err(format!("bad exit record {}", super::text::quoted(line))),
        }
    }
}

/// The record line a waiter writes once the job has exec'd.
pub fn started_line(pid: i32) -> String {
    format!("started {pid}\n")
}

/// Whether a record says the job was started (or already ended): anything but empty.
pub fn record_shows_start(text: &str) -> bool {
    !text.trim().is_empty()
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exited with code {c}"),
            Self::Signaled(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Self::NotStarted(why) => write!(f, "did not start: {why}"),
            Self::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

/// A job's end, as the actuator reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    pub job: JobId,
    pub status: ExitStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for s in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(-1),
            ExitStatus::Signaled(9),
            ExitStatus::NotStarted("exec /x: No such file or directory (os error 2)".into()),
            ExitStatus::Lost("waiter gone".into()),
        ] {
            assert_eq!(ExitStatus::from_record(&s.to_record()), Ok(Some(s)));
        }
        assert_eq!(ExitStatus::from_record(""), Ok(None));
        assert_eq!(ExitStatus::from_record(&started_line(42)), Ok(None));
        let both = started_line(42) + &ExitStatus::Exited(3).to_record();
        assert_eq!(
            ExitStatus::from_record(&both),
            Ok(Some(ExitStatus::Exited(3)))
        );
        assert!(record_shows_start(&started_line(1)) && !record_shows_start(""));
        assert!(
            ExitStatus::from_record("exited x")
                .unwrap_err()
                .contains("exited x")
        );
        assert!(ExitStatus::from_record("vanished 3").is_err());
        assert_eq!(ExitStatus::Signaled(9).to_string(), "killed by SIGKILL");
        assert!(ExitStatus::Exited(0).success());
    }
}
