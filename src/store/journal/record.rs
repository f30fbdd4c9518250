//! The journal's records (what a line says) and their replay into the jobs they describe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::cpuset::CpuSet;
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::JobState;
use crate::model::usage::Usage;

/// Who submitted a job, resolved by the daemon from the caller's credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
}

/// How a job ended, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: Timestamp,
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Record {
    /// Written first by a compaction: ids below `next_id` are never reused.
    Header {
        next_id: u64,
    },
    Submitted {
        id: JobId,
        spec: Box<JobSpec>,
        owner: Owner,
        submitted: Timestamp,
    },
    /// The job was launched (informational; the cgroup tree is the truth about running jobs).
    Started {
        id: JobId,
        at: Timestamp,
        cores: CpuSet,
    },
    /// The owner paused (`held: true`) or resumed it; a held job stays paused across restarts.
    Held {
        id: JobId,
        held: bool,
    },
    Ended {
        id: JobId,
        ending: Ending,
    },
    /// What its cgroup reported once it ended (for `history`; informational, not synced).
    Accounted {
        id: JobId,
        usage: Usage,
    },
}

/// A job as the journal knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct JournaledJob {
    pub id: JobId,
    pub spec: JobSpec,
    pub owner: Owner,
    pub submitted: Timestamp,
    pub started: Option<Timestamp>,
    pub held: bool,
    pub ending: Option<Ending>,
    pub usage: Option<Usage>,
}

/// What replay found.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub jobs: BTreeMap<JobId, JournaledJob>,
    pub next_id: u64,
    /// Lines that failed their checksum or did not parse (line number, why), torn tail excluded.
    pub corrupt: Vec<(usize, String)>,
}

impl Replay {
    pub(super) fn apply(&mut self, rec: Record) {
        match rec {
            Record::Header { next_id } => self.next_id = self.next_id.max(next_id),
            Record::Submitted {
                id,
                spec,
                owner,
                submitted,
            } => {
                self.next_id = self.next_id.max(id.0 + 1);
                self.jobs.insert(
                    id,
                    JournaledJob {
                        id,
                        spec: *spec,
                        owner,
                        submitted,
                        started: None,
                        held: false,
                        ending: None,
                        usage: None,
                    },
                );
            }
            Record::Started { id, at, .. } => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.started.get_or_insert(at);
                }
            }
            Record::Held { id, held } => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.held = held;
                }
            }
            Record::Ended { id, ending } => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.ending.get_or_insert(ending);
                }
            }
            Record::Accounted { id, usage } => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.usage = Some(usage);
                }
            }
        }
    }
}
