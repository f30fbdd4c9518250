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
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::model::job::{JobId, Timestamp};

/// The journal's file name inside the state dir.
pub const JOURNAL_FILE: &str = "journal";
const JOURNAL_TMP: &str = "journal.compact";
/// Root only: the journal holds every job's environment, which only root and the job's owner
/// may see.
const JOURNAL_MODE: u32 = 0o600;
/// Finished jobs kept across a compaction (for `status` and `wait` after the fact).
pub const DEFAULT_KEEP_FINISHED: usize = 10_000;

mod line;
mod record;

#[cfg(test)]
use line::crc32;
pub use line::{CORRUPT_FILE, read};
use line::{decode, encode, for_each_line, keep_aside, read_with_aside};
pub use record::{Ending, JournaledJob, Owner, Record, Replay};

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
    /// Unit tests' fault injection: every write fails as on a full filesystem while set.
    refuse_writes: std::sync::atomic::AtomicBool,
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
            refuse_writes: std::sync::atomic::AtomicBool::new(false),
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
        if self
            .refuse_writes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let source = io::Error::from_raw_os_error(libc::ENOSPC);
            let e = JournalError::Write {
                path: self.path.clone(),
                bytes: buf.len(),
                source,
            };
            return Err((self.no_space_or(e), false));
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

    /// Makes every later write fail as on a full state dir (`on`), or work again: for tests of
    /// what the daemon does when a record cannot be written.
    #[cfg(test)]
    pub(crate) fn refuse_writes(&self, on: bool) {
        self.refuse_writes
            .store(on, std::sync::atomic::Ordering::Relaxed);
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

#[cfg(test)]
mod tests;
