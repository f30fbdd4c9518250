//! The cgroup layer: finds the host's hierarchies (pure v2, hybrid or v1-only), keeps lowsched's
//! subtree (`daemon/`, `service/`, `batch/job-<id>/`) and acts on one group at a time: cores,
//! freeze and thaw, kill, memory limit, removal. Hot-path writes go through held descriptors.
//!
//! Why this is written here and not with cgroups-rs: see cgroups/DESIGN.md.

mod group;
mod knob;
mod mountinfo;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use group::{JobGroup, JobPaths, Mode};
pub use knob::{Knob, keyed, parse_pids, read_path, write_path};
pub use mountinfo::{CgroupMount, Layout, parse_mountinfo, parse_proc_cgroup};
pub use tree::{RootName, ServiceGroup, Tree, TreeConfig};

/// Kernel file names.
pub const PROCS: &str = "cgroup.procs";
pub const EVENTS: &str = "cgroup.events";
pub const FREEZE: &str = "cgroup.freeze";
pub const KILL: &str = "cgroup.kill";
pub const CONTROLLERS: &str = "cgroup.controllers";
pub const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
pub const CPUSET_CPUS: &str = "cpuset.cpus";
pub const CPUSET_MEMS: &str = "cpuset.mems";
pub const MEMORY_MAX: &str = "memory.max";
pub const PIDS_MAX: &str = "pids.max";
pub const CPU_IDLE: &str = "cpu.idle";
pub const FREEZER_STATE: &str = "freezer.state";
/// v2 CPU statistics of a group (`usage_usec`), present in every v2 group.
pub const CPU_STAT: &str = "cpu.stat";
/// v2 peak memory use of a group (Linux 5.19+, with the memory controller).
pub const MEMORY_PEAK: &str = "memory.peak";

/// Names inside lowsched's root.
pub const DAEMON: &str = "daemon";
pub const SERVICE: &str = "service";
pub const BATCH: &str = "batch";
/// The leaf under a job's unified group that holds the job's processes (its waiter stays in
/// the job group itself, so killing the job's processes never kills the waiter).
pub const TASK: &str = "task";
pub const JOB_PREFIX: &str = "job-";

/// Controllers lowsched enables for its children on pure v2, where available.
pub const WANTED_CONTROLLERS: [&str; 4] = ["cpuset", "cpu", "memory", "pids"];

/// How long a freeze, thaw or kill may take before it is reported as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong, with the path and, for writes, the data.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot write {} to {path}: {source}", crate::model::text::quoted(.data))]
    Write {
        path: PathBuf,
        data: String,
        source: io::Error,
    },
    #[error("{path}: gave up after {} waiting for {what}", crate::model::text::span(.waited))]
    Timeout {
        path: PathBuf,
        what: String,
        waited: Duration,
    },
    #[error("{path}: unexpected content {}: {what}", crate::model::text::quoted(.text))]
    Parse {
        path: PathBuf,
        text: String,
        what: String,
    },
    #[error("no usable cgroup layout: {0}")]
    Layout(String),
    #[error("{path} still has processes: {what}")]
    Busy { path: PathBuf, what: String },
    #[error("refusing to set an empty CPU set on {path}")]
    NoCores { path: PathBuf },
}

impl CgroupError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn write(path: &Path, data: &str, source: io::Error) -> Self {
        Self::Write {
            path: path.to_path_buf(),
            data: data.to_string(),
            source,
        }
    }

    /// The OS error behind this failure, if there is one.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            Self::Io { source, .. } | Self::Write { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True when the group (or its file) does not exist: the job is already gone.
    pub fn is_missing(&self) -> bool {
        self.os_error().and_then(io::Error::raw_os_error) == Some(libc::ENOENT)
            || self.os_error().and_then(io::Error::raw_os_error) == Some(libc::ENODEV)
    }
}

/// mkdir that accepts an existing directory. cgroupfs fills a new directory with its files.
pub(crate) fn ensure_dir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CgroupError::io("create", path, e)),
    }
}

/// rmdir that accepts a missing directory.
pub(crate) fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests;
