//! What the journal holds and how it reads back: the record types, the line format
//! (`<crc32 hex> <json>`), and replay into the jobs the records describe.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::JournalError;
use crate::model::cpuset::CpuSet;
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::JobState;

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
        }
    }

    /// The records that recreate this state.
    pub(super) fn records(&self) -> Vec<Record> {
        let mut out = vec![Record::Header {
            next_id: self.next_id,
        }];
        for j in self.jobs.values() {
            out.push(Record::Submitted {
                id: j.id,
                spec: Box::new(j.spec.clone()),
                owner: j.owner.clone(),
                submitted: j.submitted,
            });
            if let Some(at) = j.started {
                out.push(Record::Started {
                    id: j.id,
                    at,
                    cores: CpuSet::new(),
                });
            }
            if j.held {
                out.push(Record::Held {
                    id: j.id,
                    held: true,
                });
            }
            if let Some(e) = &j.ending {
                out.push(Record::Ended {
                    id: j.id,
                    ending: e.clone(),
                });
            }
        }
        out
    }

    /// Drops all but the `keep` most recently ended finished jobs.
    pub(super) fn prune(&mut self, keep: usize) {
        let mut finished: Vec<(Timestamp, JobId)> = self
            .jobs
            .values()
            .filter_map(|j| j.ending.as_ref().map(|e| (e.at, j.id)))
            .collect();
        if finished.len() <= keep {
            return;
        }
        finished.sort();
        let drop = finished.len() - keep;
        for (_, id) in finished.into_iter().take(drop) {
            self.jobs.remove(&id);
        }
    }
}

pub(super) fn encode(rec: &Record) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_vec(rec)?;
    let mut line = format!("{:08x} ", crc32(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

pub(super) fn decode(line: &[u8]) -> Result<Record, String> {
    if line.len() < 10 || line[8] != b' ' {
        return Err("no checksum prefix".into());
    }
    let want = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("bad checksum prefix")?;
    let body = &line[9..];
    if crc32(body) != want {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Replays the journal at `path` (missing file: empty state).
pub fn read(path: &Path) -> Result<Replay, JournalError> {
    let mut replay = Replay::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(replay),
        Err(source) => {
            return Err(JournalError::Open {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let got = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| JournalError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if got == 0 {
            break;
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            break; // torn tail: the crash interrupted this write; it was never acknowledged
        }
        line.pop();
        match decode(&line) {
            Ok(rec) => replay.apply(rec),
            Err(why) => replay.corrupt.push((n, why)),
        }
    }
    Ok(replay)
}

pub(super) fn has_torn_tail(path: &Path) -> bool {
    fs::read(path)
        .map(|b| !b.is_empty() && b.last() != Some(&b'\n'))
        .unwrap_or(false)
}

/// CRC-32 (IEEE), bitwise: records are small and this runs once per record.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
