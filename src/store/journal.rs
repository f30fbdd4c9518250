//! The job journal: an append-only, fsynced record of accepted jobs and how they ended.
//!
//! Every line is `<crc32 hex> <json>\n`. On start-up the journal is replayed into the jobs it
//! describes; a torn last line (crash mid-write) is dropped, a corrupt line elsewhere is reported
//! and skipped. Submits are acknowledged only after their record is on disk.
//!
//! Group commit: appenders write into a shared buffer and get a ticket; `sync(ticket)` makes one
//! caller the leader, which writes the buffer and runs one `fdatasync` for everybody queued behind
//! it while the others wait on a condvar. Throughput scales with concurrent submitters instead of
//! being capped at one fsync per submit.
//!
//! Compaction rewrites the file from the journal's own replayed state (so a record appended
//! concurrently can never be lost): live jobs plus the most recent finished ones, then an atomic
//! rename.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::model::cpuset::CpuSet;
use crate::model::job::{JobId, JobSpec, Timestamp};
use crate::model::jobstate::JobState;

/// The journal's file name inside the state dir.
pub const JOURNAL_FILE: &str = "journal";
const JOURNAL_TMP: &str = "journal.compact";
/// Root only: the journal holds every job's environment, which only root and the job's owner
/// may see.
const JOURNAL_MODE: u32 = 0o600;
/// Finished jobs kept across a compaction (for `status` and `wait` after the fact).
pub const DEFAULT_KEEP_FINISHED: usize = 10_000;

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
    fn apply(&mut self, rec: Record) {
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
    fn records(&self) -> Vec<Record> {
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
    fn prune(&mut self, keep: usize) {
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

/// Journal failures; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {bytes} bytes to journal {path}: {source}")]
    Write {
        path: PathBuf,
        bytes: usize,
        source: io::Error,
    },
    #[error("cannot fsync journal {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot compact journal into {path}: {source}")]
    Compact { path: PathBuf, source: io::Error },
    #[error("cannot encode a journal record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the journal failed earlier and refuses writes until restart: {0}")]
    Poisoned(String),
}

/// A durability ticket: the record is on disk once `sync(ticket)` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug)]
struct Inner {
    file: File,
    /// Encoded lines not yet written.
    pending: Vec<u8>,
    appended: u64,
    written: u64,
    durable: u64,
    syncing: bool,
    /// Records since the last compaction.
    since_compaction: usize,
    state: Replay,
    failed: Option<String>,
}

/// The open journal. Shared by reference between socket threads and the controller.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    dir: PathBuf,
    inner: Mutex<Inner>,
    synced: Condvar,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let replay = read(&path)?;
        let open_err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(JOURNAL_MODE)
            .open(&path)
            .map_err(open_err)?;
        // A journal written by an older build may still be world-readable.
        file.set_permissions(fs::Permissions::from_mode(JOURNAL_MODE))
            .map_err(open_err)?;
        let journal = Journal {
            path,
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                pending: Vec::new(),
                appended: 0,
                written: 0,
                durable: 0,
                syncing: false,
                since_compaction: replay.jobs.len(),
                state: replay.clone(),
                failed: None,
            }),
            synced: Condvar::new(),
        };
        // A torn tail must not prefix the next record: rewrite the file from what was read.
        if !replay.corrupt.is_empty() || has_torn_tail(&journal.path) {
            journal.compact(usize::MAX)?;
        }
        Ok((journal, replay))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a record; it is durable once [`Journal::sync`] returns for the ticket.
    pub fn append(&self, rec: &Record) -> Result<Ticket, JournalError> {
        let line = encode(rec)?;
        let mut inner = self.lock();
        if let Some(why) = &inner.failed {
            return Err(JournalError::Poisoned(why.clone()));
        }
        inner.pending.extend_from_slice(&line);
        inner.appended += 1;
        inner.since_compaction += 1;
        inner.state.apply(rec.clone());
        Ok(Ticket(inner.appended))
    }

    /// Appends and waits until the record is on disk.
    pub fn append_sync(&self, rec: &Record) -> Result<(), JournalError> {
        let t = self.append(rec)?;
        self.sync(t)
    }

    /// Blocks until every record up to `ticket` is written and fdatasync'ed.
    pub fn sync(&self, ticket: Ticket) -> Result<(), JournalError> {
        let mut inner = self.lock();
        loop {
            if let Some(why) = &inner.failed {
                return Err(JournalError::Poisoned(why.clone()));
            }
            if inner.durable >= ticket.0 {
                return Ok(());
            }
            if inner.syncing {
                inner = self.synced.wait(inner).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Become the leader: write everything queued, then one fdatasync for all of it.
            inner.syncing = true;
            let buf = std::mem::take(&mut inner.pending);
            let upto = inner.appended;
            let file = match inner.file.try_clone() {
                Ok(f) => f,
                Err(source) => {
                    return Err(self.fail(
                        inner,
                        JournalError::Open {
                            path: self.path.clone(),
                            source,
                        },
                    ));
                }
            };
            drop(inner);
            let result = write_and_sync(&file, &buf, &self.path);
            inner = self.lock();
            inner.syncing = false;
            match result {
                Ok(()) => {
                    inner.written = inner.written.max(upto);
                    inner.durable = inner.durable.max(upto);
                    self.synced.notify_all();
                }
                Err(e) => return Err(self.fail(inner, e)),
            }
        }
    }

    /// Records a failure so later writers fail fast rather than pretend durability.
    fn fail(&self, mut inner: MutexGuard<'_, Inner>, e: JournalError) -> JournalError {
        inner.failed = Some(e.to_string());
        inner.syncing = false;
        self.synced.notify_all();
        e
    }

    /// Records appended since the last compaction; the daemon compacts when this grows large.
    pub fn records_since_compaction(&self) -> usize {
        self.lock().since_compaction
    }

    /// Rewrites the journal as the minimal record of its current state, keeping the `keep` most
    /// recently finished jobs. Atomic: a crash leaves either the old or the new file.
    pub fn compact(&self, keep_finished: usize) -> Result<(), JournalError> {
        let mut inner = self.lock();
        // Wait out an in-flight leader so its bytes land in the old file before we replace it.
        while inner.syncing {
            inner = self.synced.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        inner.state.prune(keep_finished);
        let tmp = self.dir.join(JOURNAL_TMP);
        let cerr = |source| JournalError::Compact {
            path: tmp.clone(),
            source,
        };
        let mut out = Vec::new();
        for rec in inner.state.records() {
            out.extend_from_slice(&encode(&rec)?);
        }
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(JOURNAL_MODE)
                .open(&tmp)
                .map_err(cerr)?;
            f.set_permissions(fs::Permissions::from_mode(JOURNAL_MODE))
                .map_err(cerr)?;
            f.write_all(&out).map_err(cerr)?;
            f.sync_all().map_err(cerr)?;
        }
        fs::rename(&tmp, &self.path).map_err(cerr)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(cerr)?;
        inner.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| JournalError::Open {
                path: self.path.clone(),
                source,
            })?;
        inner.pending.clear();
        inner.written = inner.appended;
        inner.durable = inner.appended;
        inner.since_compaction = inner.state.jobs.len();
        self.synced.notify_all();
        Ok(())
    }
}

fn write_and_sync(mut file: &File, buf: &[u8], path: &Path) -> Result<(), JournalError> {
    if !buf.is_empty() {
        file.write_all(buf).map_err(|source| JournalError::Write {
            path: path.to_path_buf(),
            bytes: buf.len(),
            source,
        })?;
    }
    file.sync_data().map_err(|source| JournalError::Sync {
        path: path.to_path_buf(),
        source,
    })
}

fn encode(rec: &Record) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_vec(rec)?;
    let mut line = format!("{:08x} ", crc32(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn decode(line: &[u8]) -> Result<Record, String> {
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

fn has_torn_tail(path: &Path) -> bool {
    fs::read(path)
        .map(|b| !b.is_empty() && b.last() != Some(&b'\n'))
        .unwrap_or(false)
}

/// CRC-32 (IEEE), bitwise: records are small and this runs once per record.
fn crc32(data: &[u8]) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            uid: 1000,
            gid: 1000,
            user: "alice".into(),
        }
    }

    fn submitted(id: u64) -> Record {
        Record::Submitted {
            id: JobId(id),
            spec: Box::new(JobSpec::new(vec!["true".into()])),
            owner: owner(),
            submitted: Timestamp(id * 10),
        }
    }

    fn ended(id: u64, at: u64) -> Record {
        Record::Ended {
            id: JobId(id),
            ending: Ending {
                state: JobState::Succeeded,
                exit_code: Some(0),
                signal: None,
                reason: None,
                at: Timestamp(at),
            },
        }
    }

    #[test]
    fn the_journal_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mode = || fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // An older, world-readable journal is tightened on open.
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(mode(), 0o600);
        j.append_sync(&submitted(1)).unwrap();
        j.compact(10).unwrap();
        assert_eq!(mode(), 0o600);
        drop(j);
        fs::remove_file(&path).unwrap();
        let _ = Journal::open(dir.path()).unwrap();
        assert_eq!(mode(), 0o600);
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn appended_records_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (j, r) = Journal::open(dir.path()).unwrap();
        assert!(r.jobs.is_empty());
        for id in 1..=3 {
            j.append_sync(&submitted(id)).unwrap();
        }
        j.append_sync(&Record::Held {
            id: JobId(2),
            held: true,
        })
        .unwrap();
        j.append_sync(&ended(3, 99)).unwrap();
        drop(j);
        let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(r.jobs.len(), 3);
        assert_eq!(r.next_id, 4);
        assert!(r.jobs[&JobId(2)].held);
        assert_eq!(
            r.jobs[&JobId(3)].ending.as_ref().unwrap().state,
            JobState::Succeeded
        );
        assert!(r.corrupt.is_empty());
    }

    #[test]
    fn torn_tail_is_dropped_and_corruption_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = encode(&submitted(1)).unwrap();
        let mut bad = encode(&submitted(2)).unwrap();
        bad[20] ^= 1; // flip a bit in the body
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(&encode(&submitted(3)).unwrap());
        let torn = encode(&submitted(4)).unwrap();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        fs::write(&path, &bytes).unwrap();
        let (j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            r.jobs.keys().copied().collect::<Vec<_>>(),
            vec![JobId(1), JobId(3)]
        );
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].0, 2);
        // The file was rewritten, so the next record starts on a line of its own.
        j.append_sync(&submitted(5)).unwrap();
        let r = read(&path).unwrap();
        assert!(r.corrupt.is_empty());
        assert!(r.jobs.contains_key(&JobId(5)));
    }

    #[test]
    fn compaction_keeps_live_and_recent_jobs_and_ids_advance() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        for id in 1..=10 {
            j.append_sync(&submitted(id)).unwrap();
        }
        for id in 1..=8 {
            j.append_sync(&ended(id, 100 + id)).unwrap();
        }
        j.compact(3).unwrap();
        j.append_sync(&submitted(11)).unwrap();
        drop(j);
        let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
        let ids: Vec<u64> = r.jobs.keys().map(|k| k.0).collect();
        assert_eq!(ids, vec![6, 7, 8, 9, 10, 11]);
        assert_eq!(r.next_id, 12);
        // Everything finished was dropped: the id counter still survives via the header.
        let (j, _) = Journal::open(dir.path()).unwrap();
        for id in 9..=11 {
            j.append_sync(&ended(id, 200)).unwrap();
        }
        j.compact(0).unwrap();
        drop(j);
        let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
        assert!(r.jobs.is_empty());
        assert_eq!(r.next_id, 12);
    }

    /// What a process can show: with group commit, each record is in the file by the time its
    /// `append_sync` returns, whoever led the write. That the file is on the disk (the
    /// fdatasync) only a crash of the whole machine can show: `.ci/stages/55-vm-crash.sh`.
    #[test]
    fn concurrent_appenders_find_their_record_in_the_file_when_append_sync_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (j, path) = (&j, &path);
                s.spawn(move || {
                    for i in 0..50 {
                        let id = 1 + t * 100 + i;
                        j.append_sync(&submitted(id)).unwrap();
                        let r = read(path).unwrap();
                        assert!(r.jobs.contains_key(&JobId(id)), "job {id} not in the file");
                    }
                });
            }
        });
        drop(j);
        let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(r.jobs.len(), 200);
    }
}
