//! One job's groups: the cores it may use, its processes, and the freeze, kill and removal of
//! them. The same type serves the daemon (launch, pause, resize, kill) and the job's waiter
//! (killing stragglers after the job's main process ended).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode as FileMode;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::knob::{Knob, keyed, parse_pids, read_path, write_path};
use super::{
    CPU_STAT, CPUSET_CPUS, CPUSET_MEMS, CgroupError, EVENTS, FREEZE, FREEZER_STATE, KILL,
    MEMORY_MAX, MEMORY_PEAK, PIDS_MAX, PROCS, ensure_dir, remove_dir,
};
use crate::model::cpuset::CpuSet;
use crate::model::usage::Usage;

/// Which kernel interfaces a group uses (see [`super::Layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Pure v2: everything in the unified tree.
    Unified,
    /// Unified tree for placement, freeze and kill; v1 cpuset for cores.
    Hybrid,
    /// v1 cpuset for cores, v1 freezer for pause and kill.
    Legacy,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Unified => "unified",
            Mode::Hybrid => "hybrid",
            Mode::Legacy => "legacy",
        })
    }
}

/// Where one job's groups are. Serializable: the waiter gets it in its launch request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPaths {
    pub mode: Mode,
    /// The job's unified group (`.../batch/job-<id>`): its waiter lives here and the job's
    /// processes in `task/` below. `None` in legacy mode.
    pub unified: Option<PathBuf>,
    /// The group holding exactly the job's processes: `<unified>/task`, or in legacy mode the
    /// v1 freezer group.
    pub task: PathBuf,
    /// The group whose `cpuset.cpus` is the job's cores: the unified group on pure v2, the v1
    /// cpuset group otherwise (which the waiter and the job both join).
    pub cpuset: PathBuf,
}

impl JobPaths {
    /// Directories to create, parents first.
    fn dirs(&self) -> Vec<&PathBuf> {
        match self.mode {
            Mode::Unified => vec![&self.cpuset, &self.task],
            Mode::Hybrid => vec![
                &self.cpuset,
                self.unified.as_ref().unwrap_or(&self.task),
                &self.task,
            ],
            Mode::Legacy => vec![&self.cpuset, &self.task],
        }
    }
}

/// A job's groups with their hot-path files held open.
#[derive(Debug)]
pub struct JobGroup {
    paths: JobPaths,
    cpus: Knob,
    freeze: Option<Knob>,
    events: Option<Knob>,
}

impl JobGroup {
    /// Creates the groups (an existing, empty group is reused) and sets cores, and on v1 the
    /// memory nodes `mems`; on pure v2 also `memory.max` and `pids.max` when given. On failure
    /// nothing is left behind.
    pub fn create(
        paths: JobPaths,
        cores: &CpuSet,
        mems: Option<&str>,
        memory: Option<u64>,
        pids: Option<u64>,
    ) -> Result<Self, CgroupError> {
        if cores.is_empty() {
            return Err(CgroupError::NoCores {
                path: paths.cpuset.join(CPUSET_CPUS),
            });
        }
        let mut made = Vec::new();
        let result = (|| {
            for dir in paths.dirs() {
                if ensure_dir(dir)? {
                    made.push(dir.clone());
                }
            }
            if paths.mode != Mode::Unified {
                if let Some(mems) = mems {
                    write_path(&paths.cpuset.join(CPUSET_MEMS), mems)?;
                }
            }
            let group = Self::open(paths.clone())?;
            group.set_cores(cores)?;
            if let (Mode::Unified, Some(bytes)) = (paths.mode, memory) {
                write_path(&paths.cpuset.join(MEMORY_MAX), &bytes.to_string())?;
            }
            if let (Mode::Unified, Some(n)) = (paths.mode, pids) {
                write_path(&paths.cpuset.join(PIDS_MAX), &n.to_string())?;
            }
            Ok(group)
        })();
        if result.is_err() {
            for dir in made.iter().rev() {
                let _ = remove_dir(dir);
            }
        }
        result
    }

    /// Opens an existing job's groups (after a restart, or in the waiter).
    pub fn open(paths: JobPaths) -> Result<Self, CgroupError> {
        let cpus = Knob::open_write(paths.cpuset.join(CPUSET_CPUS))?;
        Ok(Self {
            paths,
            cpus,
            freeze: None,
            events: None,
        })
    }

    pub fn paths(&self) -> &JobPaths {
        &self.paths
    }

    /// Rewrites the job's cores through the held `cpuset.cpus` descriptor.
    pub fn set_cores(&self, cores: &CpuSet) -> Result<(), CgroupError> {
        if cores.is_empty() {
            return Err(CgroupError::NoCores {
                path: self.cpus.path().to_path_buf(),
            });
        }
        self.cpus.write(&cores.to_string())
    }

    /// Writes `memory.max` (pure v2 only; other modes do not enforce memory).
    pub fn set_memory_max(&self, bytes: u64) -> Result<(), CgroupError> {
        if self.paths.mode != Mode::Unified {
            return Ok(());
        }
        write_path(&self.paths.cpuset.join(MEMORY_MAX), &bytes.to_string())
    }

    /// The cores the group is set to.
    pub fn cores(&self) -> Result<CpuSet, CgroupError> {
        let path = self.paths.cpuset.join(CPUSET_CPUS);
        let text = read_path(&path)?;
        text.parse()
            .map_err(|e: crate::model::cpuset::CpuSetError| CgroupError::Parse {
                path,
                text,
                what: e.to_string(),
            })
    }

    fn freeze_knob(&mut self) -> Result<&Knob, CgroupError> {
        if self.freeze.is_none() {
            self.freeze = Some(match self.paths.mode {
                Mode::Legacy => Knob::open_rw(self.paths.task.join(FREEZER_STATE))?,
                _ => Knob::open_write(self.paths.task.join(FREEZE))?,
            });
        }
        self.freeze
            .as_ref()
            .ok_or_else(|| CgroupError::Layout("freeze file not open".into()))
    }

    fn events_knob(&mut self) -> Result<&Knob, CgroupError> {
        if self.events.is_none() {
            self.events = Some(Knob::open_read(self.paths.task.join(EVENTS))?);
        }
        self.events
            .as_ref()
            .ok_or_else(|| CgroupError::Layout("events file not open".into()))
    }

    /// Freezes the job's processes and returns once the kernel reports them frozen: v2 waits
    /// for `frozen 1` in `cgroup.events` (POLLPRI), v1 re-reads `freezer.state`.
    pub fn freeze(&mut self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(true, timeout)
    }

    /// Asks the kernel to freeze the job's processes and returns at once (see `is_frozen`).
    pub fn freeze_now(&mut self) -> Result<(), CgroupError> {
        let value = if self.paths.mode == Mode::Legacy {
            "FROZEN"
        } else {
            "1"
        };
        self.freeze_knob()?.write(value)
    }

    /// Thaws the job's processes and waits until the kernel reports them thawed.
    pub fn thaw(&mut self, timeout: Duration) -> Result<(), CgroupError> {
        self.set_frozen(false, timeout)
    }

    fn set_frozen(&mut self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        if self.paths.mode == Mode::Legacy {
            let want = if frozen { "FROZEN" } else { "THAWED" };
            let knob = self.freeze_knob()?;
            knob.write(want)?;
            return knob.wait_value(want, timeout);
        }
        self.freeze_knob()?.write(if frozen { "1" } else { "0" })?;
        let want = if frozen { "1" } else { "0" };
        self.events_knob()?.wait_key("frozen", want, timeout)
    }

    /// Whether the job's processes are frozen now.
    pub fn is_frozen(&mut self) -> Result<bool, CgroupError> {
        if self.paths.mode == Mode::Legacy {
            return Ok(self.freeze_knob()?.read()?.trim() == "FROZEN");
        }
        let knob = self.events_knob()?;
        Ok(super::keyed(&knob.read()?, "frozen") == Some("1"))
    }

    /// The job's processes (not its waiter).
    pub fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        Ok(parse_pids(&read_path(&self.paths.task.join(PROCS))?))
    }

    /// What the kernel reports of the job's use (call before removing the groups): CPU time
    /// from the task group's v2 `cpu.stat`, peak memory from its `memory.peak` where the memory
    /// controller is on (pure v2). Legacy mode (no unified group) reports neither.
    pub fn usage(&self) -> Usage {
        if self.paths.mode == Mode::Legacy {
            return Usage::default();
        }
        let cpu_us = read_path(&self.paths.task.join(CPU_STAT))
            .ok()
            .and_then(|t| keyed(&t, "usage_usec").and_then(|v| v.parse().ok()));
        let memory_peak = read_path(&self.paths.task.join(MEMORY_PEAK))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        Usage {
            cpu_us,
            memory_peak,
        }
    }

    /// The processes in the job's groups that are not the job's: its waiter.
    pub fn waiter_pids(&self) -> Result<Vec<Pid>, CgroupError> {
        let outer = match (&self.paths.unified, self.paths.mode) {
            (Some(u), Mode::Unified | Mode::Hybrid) => u.join(PROCS),
            _ => self.paths.cpuset.join(PROCS),
        };
        let task = self.pids()?;
        Ok(parse_pids(&read_path(&outer)?)
            .into_iter()
            .filter(|p| !task.contains(p))
            .collect())
    }

    /// Kills every process of the job, forked children and grandchildren included, and waits
    /// until none is left. v2: `cgroup.kill`, then `populated 0`. v1: SIGKILL every pid, thaw
    /// (a frozen v1 task dies only once thawed), repeat until the group is empty.
    pub fn kill(&mut self, timeout: Duration) -> Result<(), CgroupError> {
        if self.paths.mode != Mode::Legacy {
            write_path(&self.paths.task.join(KILL), "1")?;
            return self.events_knob()?.wait_key("populated", "0", timeout);
        }
        let start = std::time::Instant::now();
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(CgroupError::Timeout {
                    path: self.paths.task.join(PROCS),
                    what: format!("{} processes to die", pids.len()),
                    waited: start.elapsed(),
                });
            }
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let knob = self.freeze_knob()?;
            if knob.read()?.trim() != "THAWED" {
                knob.write("THAWED")?;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Writes `cgroup.kill` and returns without waiting for the processes to be gone: of the
    /// job's processes (`task/`), or with `waiter` of the whole job group, its waiter too.
    /// Unified and hybrid modes (legacy has no `cgroup.kill`: use [`JobGroup::kill`]).
    pub fn kill_now(&self, waiter: bool) -> Result<(), CgroupError> {
        let dir = match (&self.paths.unified, waiter) {
            (Some(group), true) => group,
            _ => &self.paths.task,
        };
        write_path(&dir.join(KILL), "1")
    }

    /// A directory descriptor on the job's unified group, for clone3(CLONE_INTO_CGROUP).
    pub fn unified_dir(&self) -> Result<Option<OwnedFd>, CgroupError> {
        self.paths
            .unified
            .as_ref()
            .map(|dir| {
                open(
                    dir,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    FileMode::empty(),
                )
                .map_err(|e| CgroupError::io("open", dir, e.into()))
            })
            .transpose()
    }

    /// Kills what is left of the job (if anything) and removes its groups, children first.
    pub fn remove(mut self, timeout: Duration) -> Result<(), CgroupError> {
        if self.paths.task.exists() && !self.pids()?.is_empty() {
            self.kill(timeout)?;
        }
        if self.paths.mode == Mode::Legacy && self.paths.task.exists() {
            // A v1 group removed while frozen stays frozen for nobody; thaw for tidiness.
            let _ = self.freeze_knob().and_then(|k| k.write("THAWED"));
        }
        let JobGroup { paths, .. } = self;
        let mut dirs = paths.dirs();
        dirs.dedup();
        let start = std::time::Instant::now();
        for dir in dirs.iter().rev() {
            // A process that was just killed (or a waiter finishing its record) may take a
            // moment to leave the group: rmdir says EBUSY until then.
            loop {
                match remove_dir(dir) {
                    Err(e)
                        if e.os_error().and_then(std::io::Error::raw_os_error)
                            == Some(libc::EBUSY)
                            && start.elapsed() < timeout =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    other => break other?,
                }
            }
        }
        Ok(())
    }
}
