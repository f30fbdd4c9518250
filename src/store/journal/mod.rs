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

mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

pub use record::{Ending, JournaledJob, Owner, Record, Replay, read};
use record::{encode, has_torn_tail};

/// The journal's file name inside the state dir.
pub const JOURNAL_FILE: &str = "journal";
const JOURNAL_TMP: &str = "journal.compact";
/// Root only: the journal holds every job's environment, which only root and the job's owner
/// may see.
const JOURNAL_MODE: u32 = 0o600;
/// Finished jobs kept across a compaction (for `status` and `wait` after the fact).
pub const DEFAULT_KEEP_FINISHED: usize = 10_000;

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

#[cfg(test)]
mod tests;
