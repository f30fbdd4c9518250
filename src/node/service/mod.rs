//! The protected service: its configuration, finding its processes, and pinning their threads
//! to the cores the SLO controller gives it.

pub mod discover;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::cpuset::CpuSet;

pub use discover::{Found, FoundBy, ProcessId};

/// Whether a protected service is managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Enabled {
    /// Manage it if it is configured or a local process of `process_name` is found.
    #[default]
    Auto,
    /// Always manage it (wait for it to appear).
    Yes,
    /// Never: batch may use every core.
    No,
}

/// How lowsched confines the service to its cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Move it into lowsched's `service/` cgroup where it may (pure v2, not owned by another
    /// systemd unit), else set its threads' affinity.
    #[default]
    Auto,
    /// Always set thread affinity, as `taskset -a` does.
    Affinity,
}

/// The `[service]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub enabled: Enabled,
    /// Name used in logs and the event log (the course format calls it `memcached`).
    pub name: String,
    /// A pid file naming the service's main process.
    pub pid_file: Option<PathBuf>,
    /// The service's processes' command name (`/proc/PID/comm`). Default: `name`, but only
    /// when neither `pid_file` nor `cgroup` is set (a configured pid file or cgroup must not
    /// fall back to some other process of that name).
    pub process_name: Option<String>,
    /// Users whose processes discovery by `process_name` accepts (names; missing users are
    /// ignored). Any local user can name a process `memcached`: without this, theirs would
    /// get the service's cores and its protection.
    pub process_users: Vec<String>,
    /// An existing cgroup holding the service, relative to the unified mount, e.g.
    /// `/system.slice/memcached.service`.
    pub cgroup: Option<PathBuf>,
    /// Where the latency probe connects (memcached text protocol).
    pub address: String,
    /// Fewest cores the service ever gets.
    pub min_cores: usize,
    /// Most cores it may get (0: all managed cores but one, so batch always keeps one).
    pub max_cores: usize,
    pub placement: Placement,
    /// How often to look for the service again (it may be restarted or replaced), ms.
    pub rescan_ms: u64,
    /// The resume-latency limit on the service's cores (see [`crate::node::pmqos`]): 0 makes an
    /// idle service core poll instead of halting, N allows idle states left within N µs, -1
    /// leaves the cores' limits alone.
    pub resume_latency_us: i64,
}

impl ServiceConfig {
    /// The uids of `process_users` that exist on this host.
    pub fn process_uids(&self) -> Vec<u32> {
        self.process_users
            .iter()
            .filter_map(|n| crate::model::credentials::Credentials::by_name(n).ok())
            .map(|c| c.uid)
            .collect()
    }

    /// The command name to look for, if any (see `process_name`).
    pub fn process_name(&self) -> Option<&str> {
        match (&self.process_name, &self.pid_file, &self.cgroup) {
            (Some(n), _, _) => Some(n),
            (None, None, None) => Some(&self.name),
            _ => None,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            name: "memcached".into(),
            pid_file: None,
            process_name: None,
            process_users: vec!["root".into(), "memcache".into(), "memcached".into()],
            cgroup: None,
            address: "127.0.0.1:11211".into(),
            min_cores: 1,
            max_cores: 0,
            placement: Placement::Auto,
            rescan_ms: 1_000,
            resume_latency_us: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("pid file {path} does not hold a pid: {}", crate::model::text::quoted(.text))]
    BadPidFile { path: PathBuf, text: String },
    #[error("cannot set the CPU affinity of thread {tid} of pid {pid} to [{cores}]: {source}")]
    Affinity {
        pid: u32,
        tid: u32,
        cores: String,
        source: io::Error,
    },
}

/// Sets the affinity of every thread of `pid` to `cores`, as `taskset -a -p` does. Threads the
/// process starts meanwhile inherit the mask of the thread that creates them, so a second pass
/// catches any created from a not-yet-updated thread. Threads that exit meanwhile are skipped.
/// Returns how many threads were set.
pub fn pin_threads(proc_root: &Path, pid: u32, cores: &CpuSet) -> Result<usize, ServiceError> {
    let mut mask = nix::sched::CpuSet::new();
    for c in cores.iter() {
        mask.set(c).map_err(|e| ServiceError::Affinity {
            pid,
            tid: pid,
            cores: cores.to_string(),
            source: io::Error::from(e),
        })?;
    }
    let mut done = std::collections::BTreeSet::new();
    for _pass in 0..2 {
        for tid in discover::threads(proc_root, pid)? {
            if !done.insert(tid) {
                continue;
            }
            let t = nix::unistd::Pid::from_raw(tid as i32);
            match nix::sched::sched_setaffinity(t, &mask) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(ServiceError::Affinity {
                        pid,
                        tid,
                        cores: cores.to_string(),
                        source: io::Error::from(e),
                    });
                }
            }
        }
    }
    Ok(done.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_every_thread_of_a_real_process() {
        // Our own test process has several threads; pin them to one allowed core and back.
        let me = std::process::id();
        let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        let first = (0..1024)
            .find(|&c| before.is_set(c).unwrap_or(false))
            .unwrap();
        let one: CpuSet = [first].into_iter().collect();
        let all: CpuSet = (0..1024)
            .filter(|&c| before.is_set(c).unwrap_or(false))
            .collect();
        let n = pin_threads(Path::new("/proc"), me, &one).unwrap();
        assert!(n >= 1);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(
            allowed.split_whitespace().nth(1).unwrap(),
            first.to_string()
        );
        pin_threads(Path::new("/proc"), me, &all).unwrap();
    }
}
