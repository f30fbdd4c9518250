//! The daemon's state directory: per-job output directories (`jobs/<id>/`, owned by the job's
//! user) and the waiters' exit records (`exits/<id>`, root only).
//!
//! Job outputs may live elsewhere ([`StateDir::with_output_dir`]): a job writing without end
//! to its default output fills that filesystem, and the journal beside it must keep working.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::model::job::JobId;

pub const JOBS: &str = "jobs";
pub const EXITS: &str = "exits";
/// What a collected exit record is renamed to (kept for people reading the state dir).
pub const REPORTED_SUFFIX: &str = ".reported";

/// Why the state directory could not be prepared or read.
#[derive(Debug, thiserror::Error)]
#[error("state dir {path}: cannot {op}: {source}")]
pub struct StateDirError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Paths in the state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
    /// Where `<id>/` output directories are made: `root/jobs` unless configured.
    output: PathBuf,
}

impl StateDir {
    /// Creates the directory layout if missing: the root and `jobs/` world-traversable (users
    /// read their outputs there), `exits/` root only.
    pub fn create(root: &Path) -> Result<Self, StateDirError> {
        for (dir, mode) in [
            (root.to_path_buf(), 0o755),
            (root.join(JOBS), 0o755),
            (root.join(EXITS), 0o700),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .map_err(|source| StateDirError {
                    op: "create",
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            output: root.join(JOBS),
        })
    }

    /// As [`StateDir::create`], with default job outputs under `output` (created root-owned,
    /// world-traversable, like `jobs/`) instead of `root/jobs`.
    pub fn with_output_dir(root: &Path, output: &Path) -> Result<Self, StateDirError> {
        let mut dir = Self::create(root)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(output)
            .map_err(|source| StateDirError {
                op: "create",
                path: output.to_path_buf(),
                source,
            })?;
        dir.output = output.to_path_buf();
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `jobs/<id>/` (or `<output_dir>/<id>/`): the default home of a job's stdout and stderr.
    pub fn job_dir(&self, id: JobId) -> PathBuf {
        self.output.join(id.0.to_string())
    }

    /// `exits/<id>`: empty while the job runs, one line once it ended.
    pub fn exit_record(&self, id: JobId) -> PathBuf {
        self.root.join(EXITS).join(id.0.to_string())
    }

    /// Ids with an uncollected exit record, ascending.
    pub fn recorded_jobs(&self) -> Result<Vec<JobId>, StateDirError> {
        let dir = self.root.join(EXITS);
        let entries = std::fs::read_dir(&dir).map_err(|source| StateDirError {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        let mut ids: Vec<JobId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse().ok().map(JobId))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Marks job `id`'s record as collected (renamed, so a later adoption skips it).
    pub fn collect(&self, id: JobId) -> Result<(), StateDirError> {
        let from = self.exit_record(id);
        let mut to = from.clone().into_os_string();
        to.push(REPORTED_SUFFIX);
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateDirError {
                op: "rename",
                path: from,
                source,
            }),
        }
    }
}
