//! The job journal: an append-only, fsynced record of accepted jobs and how they ended.
//!
//! Every line is `<crc32 hex> <json>\n`. On start-up the journal is replayed into the jobs it
//! describes; a torn last line (crash mid-write) and corrupt lines are copied to
//! `journal.corrupt`, reported, and left out of the rewritten journal. Submits are acknowledged
//! only after their record is on disk.
//!
//! Failed writes (a full state dir above all): the problem is that a batch may be half written
//! and its writers told "not recorded", yet a later write or compaction must not bring it back,
//! and one failure must not stop the journal for good. The approach: the file is cut back to its
//! last durable length after a failed write (or, if even that fails, before the next write);
//! the journal's in-memory index takes a record only once it is durable; each failed batch's
//! tickets are remembered so their waiters get the error (`no space left on the state dir` when
//! the filesystem is full). Every later write simply tries again.
//!
//! Group commit: appenders write into a shared buffer and get a ticket; `sync(ticket)` makes one
//! caller the leader, which writes the buffer and runs one `fdatasync` for everybody queued behind
//! it while the others wait on a condvar. Throughput scales with concurrent submitters instead of
//! being capped at one fsync per submit.
//!
//! Compaction copies the lines of live jobs and of the most recent finished ones from the file
//! itself into a new file, then renames it over the old one. Only durable records are in the
//! file; queued ones stay queued. In memory the journal keeps only each job's end time, not a
//! second copy of every spec.

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
}

/// Journal failures; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The state dir's filesystem is full (or the quota reached). Nothing of the refused
    /// records was kept; writes work again as soon as space is freed.
    #[error("no space left on the state dir {dir} (journal {path}); nothing was recorded")]
    NoSpace { dir: PathBuf, path: PathBuf },
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
    /// A write of this record's batch failed (the message says why); nothing of it was kept.
    #[error("journal write failed, nothing was recorded: {0}")]
    Failed(String),
}

impl JournalError {
    /// Whether this is [`JournalError::NoSpace`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::NoSpace { .. })
    }
}

fn is_enospc(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A durability ticket: the record is on disk once `sync(ticket)` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the journal keeps in memory about each job: only when it ended (`None`: live), which is
/// all compaction needs. The specs live in the file (and in the daemon's table), not here.
#[derive(Debug, Default)]
struct Index {
    jobs: BTreeMap<JobId, Option<Timestamp>>,
    next_id: u64,
}

impl Index {
    fn from_replay(r: &Replay) -> Self {
        Self {
            jobs: r
                .jobs
                .values()
                .map(|j| (j.id, j.ending.as_ref().map(|e| e.at)))
                .collect(),
            next_id: r.next_id,
        }
    }

    fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Header { next_id } => self.next_id = self.next_id.max(*next_id),
            Record::Submitted { id, .. } => {
                self.next_id = self.next_id.max(id.0 + 1);
                self.jobs.insert(*id, None);
            }
            Record::Ended { id, ending } => {
                if let Some(e) = self.jobs.get_mut(id) {
                    e.get_or_insert(ending.at);
                }
            }
            Record::Started { .. } | Record::Held { .. } => {}
        }
    }

    /// Drops all but the `keep` most recently ended finished jobs.
    fn prune(&mut self, keep: usize) {
        let mut finished: Vec<(Timestamp, JobId)> = self
            .jobs
            .iter()
            .filter_map(|(id, at)| at.map(|at| (at, *id)))
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

/// Tickets of a failed batch and why, kept so that their waiters learn it.
#[derive(Debug, Clone)]
struct Refused {
    from: u64,
    to: u64,
    no_space: bool,
    why: String,
}

/// How many failed batches are remembered for their waiters.
const REFUSED_KEPT: usize = 1024;

#[derive(Debug)]
struct Inner {
    file: File,
    /// Bytes of the file known to be complete and durable: after a failed write the file is cut
    /// back to this length, so a half-written record never stays.
    good_len: u64,
    /// A failed write could not be cut back yet: the next writer repairs the file first.
    damaged: bool,
    /// Encoded lines not yet written, and their records (applied to `index` once durable).
    pending: Vec<u8>,
    pending_records: Vec<Record>,
    appended: u64,
    durable: u64,
    syncing: bool,
    /// Records since the last compaction.
    since_compaction: usize,
    index: Index,
    refused: std::collections::VecDeque<Refused>,
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
    /// Opens (creating if needed) the journal in `dir` and replays it. Corrupt lines and a torn
    /// tail are appended to `journal.corrupt` (with their line numbers) before the journal is
    /// rewritten without them; `Replay::corrupt` reports them.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let (replay, aside) = read_with_aside(&path)?;
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
        let good_len = file.metadata().map_err(open_err)?.len();
        let journal = Journal {
            path,
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                good_len,
                damaged: false,
                pending: Vec::new(),
                pending_records: Vec::new(),
                appended: 0,
                durable: 0,
                syncing: false,
                since_compaction: replay.jobs.len(),
                index: Index::from_replay(&replay),
                refused: std::collections::VecDeque::new(),
            }),
            synced: Condvar::new(),
        };
        if !aside.is_empty() {
            keep_aside(&dir.join(CORRUPT_FILE), &aside).map_err(|source| {
                JournalError::Compact {
                    path: dir.join(CORRUPT_FILE),
                    source,
                }
            })?;
            // A torn tail must not prefix the next record: rewrite the file from what was read.
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

    /// Queues a record; it is durable once [`Journal::sync`] returns `Ok` for the ticket, and
    /// only then part of the journal's state (what a compaction writes).
    pub fn append(&self, rec: &Record) -> Result<Ticket, JournalError> {
        let line = encode(rec)?;
        let mut inner = self.lock();
        inner.pending.extend_from_slice(&line);
        inner.pending_records.push(rec.clone());
        inner.appended += 1;
        Ok(Ticket(inner.appended))
    }

    /// Appends and returns once the record is on disk (written and fdatasync'ed), sharing the
    /// fsync with concurrent callers. On `Err` nothing of the record was kept, in the file or
    /// in memory: the caller must treat the change as not made. A full state dir gives
    /// [`JournalError::NoSpace`]; the next call tries again, so writes resume by themselves
    /// once space is freed.
    pub fn append_durable(&self, rec: &Record) -> Result<(), JournalError> {
        let t = self.append(rec)?;
        self.sync(t)
    }

    /// The same as [`Journal::append_durable`] (its older name).
    pub fn append_sync(&self, rec: &Record) -> Result<(), JournalError> {
        self.append_durable(rec)
    }

    /// The error for ticket `t` if its batch failed.
    fn refusal(&self, inner: &Inner, t: u64) -> Option<JournalError> {
        let r = inner
            .refused
            .iter()
            .find(|r| (r.from..=r.to).contains(&t))?;
        Some(if r.no_space {
            JournalError::NoSpace {
                dir: self.dir.clone(),
                path: self.path.clone(),
            }
        } else {
            JournalError::Failed(r.why.clone())
        })
    }

    /// Blocks until every record up to `ticket` is written and fdatasync'ed, or its batch
    /// failed (then `Err`, and none of that batch's records was kept).
    pub fn sync(&self, ticket: Ticket) -> Result<(), JournalError> {
        let mut inner = self.lock();
        loop {
            if let Some(e) = self.refusal(&inner, ticket.0) {
                return Err(e);
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
            let records = std::mem::take(&mut inner.pending_records);
            let from = inner.durable.max(inner.refused.back().map_or(0, |r| r.to)) + 1;
            let upto = inner.appended;
            let (good_len, damaged) = (inner.good_len, inner.damaged);
            let file = inner.file.try_clone();
            drop(inner);
            let result = match file {
                Ok(f) => self.lead(&f, &buf, good_len, damaged),
                Err(source) => Err((
                    JournalError::Open {
                        path: self.path.clone(),
                        source,
                    },
                    damaged,
                )),
            };
            inner = self.lock();
            inner.syncing = false;
            match result {
                Ok(()) => {
                    inner.good_len = good_len + buf.len() as u64;
                    inner.damaged = false;
                    inner.durable = inner.durable.max(upto);
                    for rec in &records {
                        inner.index.apply(rec);
                    }
                    inner.since_compaction += records.len();
                }
                Err((e, still_damaged)) => {
                    inner.damaged = still_damaged;
                    inner.refused.push_back(Refused {
                        from,
                        to: upto,
                        no_space: e.is_no_space(),
                        why: e.to_string(),
                    });
                    while inner.refused.len() > REFUSED_KEPT {
                        inner.refused.pop_front();
                    }
                }
            }
            self.synced.notify_all();
        }
    }

    /// The leader's write: repair a damaged file first, then write `buf` and fdatasync. On
    /// failure the file is cut back to `good_len`; the error says whether it still is damaged
    /// (the cut failed too).
    fn lead(
        &self,
        file: &File,
        buf: &[u8],
        good_len: u64,
        damaged: bool,
    ) -> Result<(), (JournalError, bool)> {
        if damaged {
            self.repair(file, good_len).map_err(|e| (e, true))?;
        }
        write_and_sync(file, buf, &self.path).map_err(|e| {
            let e = self.no_space_or(e);
            (e, self.repair(file, good_len).is_err())
        })
    }

    /// Cuts the file back to its last good length and syncs that.
    fn repair(&self, file: &File, good_len: u64) -> Result<(), JournalError> {
        file.set_len(good_len)
            .and_then(|()| file.sync_data())
            .map_err(|source| {
                self.no_space_or(JournalError::Sync {
                    path: self.path.clone(),
                    source,
                })
            })
    }

    /// Turns a write or sync error caused by a full filesystem into [`JournalError::NoSpace`].
    fn no_space_or(&self, e: JournalError) -> JournalError {
        let full = match &e {
            JournalError::Write { source, .. }
            | JournalError::Sync { source, .. }
            | JournalError::Compact { source, .. } => is_enospc(source),
            _ => false,
        };
        if full {
            JournalError::NoSpace {
                dir: self.dir.clone(),
                path: self.path.clone(),
            }
        } else {
            e
        }
    }

    /// Records appended since the last compaction; the daemon compacts when this grows large.
    pub fn records_since_compaction(&self) -> usize {
        self.lock().since_compaction
    }

    /// Rewrites the journal with the lines of its live jobs and of the `keep_finished` most
    /// recently finished ones, copied from the file itself (only durable records are there, so a
    /// record whose writer was told "not recorded" can never come back). Atomic: a crash leaves
    /// either the old or the new file. Records queued but not yet synced stay queued.
    pub fn compact(&self, keep_finished: usize) -> Result<(), JournalError> {
        let mut inner = self.lock();
        // Wait out an in-flight leader so its bytes land in the old file before we replace it.
        while inner.syncing {
            inner = self.synced.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        if inner.damaged {
            let file = inner
                .file
                .try_clone()
                .map_err(|source| JournalError::Open {
                    path: self.path.clone(),
                    source,
                })?;
            self.repair(&file, inner.good_len)?;
            inner.damaged = false;
        }
        let mut index = Index {
            jobs: inner.index.jobs.clone(),
            next_id: inner.index.next_id,
        };
        index.prune(keep_finished);
        let tmp = self.dir.join(JOURNAL_TMP);
        let len = self.rewrite(&tmp, &index).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.no_space_or(e)
        })?;
        inner.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| JournalError::Open {
                path: self.path.clone(),
                source,
            })?;
        inner.good_len = len;
        inner.index = index;
        inner.since_compaction = inner.index.jobs.len();
        Ok(())
    }

    /// Writes the header and the kept jobs' lines of the current file to `tmp`, syncs it and
    /// renames it over the journal. Returns the new file's length.
    fn rewrite(&self, tmp: &Path, index: &Index) -> Result<u64, JournalError> {
        let cerr = |source| JournalError::Compact {
            path: tmp.to_path_buf(),
            source,
        };
        let mut out = io::BufWriter::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(JOURNAL_MODE)
                .open(tmp)
                .map_err(cerr)?,
        );
        out.get_ref()
            .set_permissions(fs::Permissions::from_mode(JOURNAL_MODE))
            .map_err(cerr)?;
        let header = encode(&Record::Header {
            next_id: index.next_id,
        })?;
        out.write_all(&header).map_err(cerr)?;
        let mut len = header.len() as u64;
        for_each_line(&self.path, |_, line| {
            let keep = match decode(line) {
                Ok(rec) => rec.job().is_some_and(|id| index.jobs.contains_key(&id)),
                Err(_) => false,
            };
            if keep {
                out.write_all(line)?;
                out.write_all(b"\n")?;
                len += line.len() as u64 + 1;
            }
            Ok(())
        })
        .map_err(|e| match e {
            JournalError::Read { source, .. } => cerr(source),
            other => other,
        })?;
        let f = out.into_inner().map_err(|e| cerr(e.into_error()))?;
        f.sync_all().map_err(cerr)?;
        fs::rename(tmp, &self.path).map_err(cerr)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(cerr)?;
        Ok(len)
    }
}

/// Where lines that failed their checksum (and a torn tail) are kept, with their line numbers,
/// before the journal is rewritten without them.
pub const CORRUPT_FILE: &str = "journal.corrupt";

/// A line kept aside: its number and raw bytes.
type AsideLine = (usize, Vec<u8>);

/// Appends `(line number, raw bytes)` entries to `path` (root only) and syncs it.
fn keep_aside(path: &Path, lines: &[AsideLine]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(JOURNAL_MODE)
        .open(path)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (n, raw) in lines {
        writeln!(
            f,
            "# line {n} of the journal, set aside at unix time {stamp}"
        )?;
        f.write_all(raw)?;
        f.write_all(b"\n")?;
    }
    f.sync_all()
}

impl Record {
    /// The job a record is about (`None` for the header).
    pub fn job(&self) -> Option<JobId> {
        match self {
            Self::Header { .. } => None,
            Self::Submitted { id, .. }
            | Self::Started { id, .. }
            | Self::Held { id, .. }
            | Self::Ended { id, .. } => Some(*id),
        }
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

/// Calls `f(line number, line without its newline)` for every complete line of the file at
/// `path` (missing file: none); returns the bytes of a torn tail (a last line without newline).
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> io::Result<()>,
) -> Result<Option<Vec<u8>>, JournalError> {
    let rerr = |source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
        let got = reader.read_until(b'\n', &mut line).map_err(rerr)?;
        if got == 0 {
            return Ok(None);
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            // Torn tail: the crash interrupted this write; it was never acknowledged.
            return Ok(Some(line));
        }
        line.pop();
        f(n, &line).map_err(rerr)?;
    }
}

/// Replays the journal at `path` (missing file: empty state).
pub fn read(path: &Path) -> Result<Replay, JournalError> {
    read_with_aside(path).map(|(r, _)| r)
}

/// Replays the journal and returns the lines to keep aside: corrupt ones and a torn tail.
fn read_with_aside(path: &Path) -> Result<(Replay, Vec<AsideLine>), JournalError> {
    let mut replay = Replay::default();
    let mut aside = Vec::new();
    let mut lines = 0;
    let torn = for_each_line(path, |n, line| {
        lines = n;
        match decode(line) {
            Ok(rec) => replay.apply(rec),
            Err(why) => {
                replay.corrupt.push((n, why));
                aside.push((n, line.to_vec()));
            }
        }
        Ok(())
    })?;
    if let Some(t) = torn {
        aside.push((lines + 1, t));
    }
    Ok((replay, aside))
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

    /// A tmpfs of `kib` KiB mounted on a fresh temp dir (root only), unmounted on drop.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(kib: u32) -> Option<Self> {
            if !nix::unistd::geteuid().is_root() {
                assert!(
                    std::env::var_os("LOWSCHED_NO_SKIP").is_none(),
                    "needs root to mount a small tmpfs"
                );
                eprintln!("skipped: needs root to mount a small tmpfs");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={kib}k,mode=0755"),
                    "lowsched-test",
                ])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount tmpfs");
            Some(Self(dir))
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        /// Fills the filesystem; returns the filler's path.
        fn fill(&self) -> PathBuf {
            let p = self.path().join("filler");
            let mut f = File::create(&p).unwrap();
            let chunk = vec![b'x'; 4096];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.write_all(b"x");
            p
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn a_full_disk_refuses_only_what_it_must_and_recovers_by_itself() {
        let Some(fs) = SmallFs::mount(256) else {
            return;
        };
        let (j, _) = Journal::open(fs.path()).unwrap();
        j.append_durable(&submitted(1)).unwrap();
        let filler = fs.fill();
        let mut refused = 0;
        let mut want = vec![JobId(1)];
        for id in 2..=40 {
            match j.append_durable(&submitted(id)) {
                Ok(()) => want.push(JobId(id)),
                Err(e) => {
                    assert!(e.is_no_space(), "{e}");
                    assert!(
                        e.to_string().contains("no space left on the state dir"),
                        "{e}"
                    );
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "the filled tmpfs refused nothing");
        // A compaction while full fails cleanly (or fits); neither keeps a refused record.
        let _ = j.compact(usize::MAX);
        fs::remove_file(&filler).unwrap();
        // Space is back: the same journal accepts again, no restart.
        j.append_durable(&submitted(100)).unwrap();
        j.append_durable(&ended(1, 5)).unwrap();
        j.compact(usize::MAX).unwrap();
        j.append_durable(&submitted(101)).unwrap();
        drop(j);
        let r = read(&fs.path().join(JOURNAL_FILE)).unwrap();
        assert!(r.corrupt.is_empty(), "{:?}", r.corrupt);
        let accepted = 40 - refused; // ids 1..=40
        assert_eq!(r.jobs.len() as u64, accepted + 2, "{:?}", r.jobs.keys());
        want.extend([JobId(100), JobId(101)]);
        assert_eq!(r.jobs.keys().copied().collect::<Vec<_>>(), want);
        assert_eq!(r.jobs[&JobId(1)].ending.as_ref().unwrap().at, Timestamp(5));
    }

    #[test]
    fn refused_records_never_reach_the_state_a_compaction_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.append_durable(&submitted(1)).unwrap();
        // Queued, never synced: not durable, so a compaction must not write it...
        let t = j.append(&submitted(2)).unwrap();
        j.compact(usize::MAX).unwrap();
        let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(r.jobs.keys().copied().collect::<Vec<_>>(), vec![JobId(1)]);
        // ...but it stays queued and lands with its sync.
        j.sync(t).unwrap();
        let r = read(&dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(r.jobs.len(), 2);
    }

    #[test]
    fn corrupt_lines_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = encode(&submitted(1)).unwrap();
        let mut bad = encode(&submitted(2)).unwrap();
        bad[20] ^= 1;
        bytes.extend_from_slice(&bad);
        bytes.extend_from_slice(b"0000 torn");
        fs::write(&path, &bytes).unwrap();
        let (_j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.corrupt.len(), 1);
        let aside = fs::read(dir.path().join(CORRUPT_FILE)).unwrap();
        let text = String::from_utf8_lossy(&aside);
        assert!(text.contains("# line 2 of the journal"), "{text}");
        assert!(
            aside
                .windows(bad.len() - 1)
                .any(|w| w == &bad[..bad.len() - 1])
        );
        assert!(
            text.contains("# line 3") && text.contains("0000 torn"),
            "{text}"
        );
        let mode = fs::metadata(dir.path().join(CORRUPT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
