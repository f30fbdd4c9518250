//! lowsched's subtree: creating `daemon/`, `service/` and `batch/` under its root in every
//! hierarchy it uses, enabling v2 controllers, naming job groups, and the protected service's
//! group.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;

use super::group::{JobGroup, JobPaths, Mode};
use super::knob::{Knob, parse_pids, read_path, write_path};
use super::mountinfo::{CgroupMount, Layout, parse_proc_cgroup};
use super::{
    BATCH, CONTROLLERS, CPU_IDLE, CPUSET_CPUS, CPUSET_MEMS, CgroupError, DAEMON, JOB_PREFIX, PROCS,
    SERVICE, SUBTREE_CONTROL, TASK, WANTED_CONTROLLERS, ensure_dir, remove_dir,
};
use crate::model::cpuset::CpuSet;
use crate::model::job::JobId;

/// Which group is lowsched's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootName {
    /// The group the process already is in: its systemd-delegated group (`Delegate=yes`).
    Own,
    /// `<mount>/<name>` in every hierarchy, created if missing: for running by hand.
    Named(String),
}

/// How to open the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeConfig {
    pub root: RootName,
    /// Drive a hybrid host through the v1 freezer instead of its unified tree.
    pub legacy_freezer: bool,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            root: RootName::Named("lowsched".into()),
            legacy_freezer: false,
        }
    }
}

/// lowsched's groups on this host. Cheap to share: paths only.
#[derive(Clone, Debug)]
pub struct Tree {
    layout: Layout,
    mode: Mode,
    /// lowsched's root in the unified tree (unified and hybrid modes).
    unified: Option<PathBuf>,
    /// lowsched's root in the v1 cpuset hierarchy (hybrid and legacy).
    cpuset: Option<PathBuf>,
    /// lowsched's root in the v1 freezer hierarchy (legacy).
    freezer: Option<PathBuf>,
    /// v1 memory nodes every cpuset group gets.
    mems: Option<String>,
    /// Controllers enabled for job groups (unified mode).
    controllers: Vec<String>,
    /// `pids.max` every job group gets where the pids controller is on.
    job_pids_max: Option<u64>,
}

/// Where lowsched's root group sits in one hierarchy (`mount`, the one carrying `controller`,
/// or cgroup2 for `None`): the named directory under the mount, or this process's own group as
/// `<proc_root>/self/cgroup` lists it.
fn root_dir(
    root: &RootName,
    mount: &CgroupMount,
    controller: Option<&str>,
    proc_root: &Path,
) -> Result<PathBuf, CgroupError> {
    match root {
        RootName::Named(name) => {
            if name.is_empty() || name.contains("..") {
                return Err(CgroupError::Layout(format!(
                    "bad root name {}",
                    crate::model::text::quoted(name)
                )));
            }
            Ok(mount.point.join(name))
        }
        RootName::Own => {
            let text = read_path(&proc_root.join("self/cgroup"))?;
            let line = parse_proc_cgroup(&text)
                .into_iter()
                .find(|(id, ctl, _)| match controller {
                    None => *id == 0 && ctl.is_empty(),
                    Some(c) => ctl.iter().any(|x| x == c),
                });
            let group = line.map(|l| l.2).ok_or_else(|| {
                CgroupError::Layout(format!(
                    "this process has no {} group in /proc/self/cgroup",
                    controller.unwrap_or("cgroup2")
                ))
            })?;
            mount.dir_of(&group).ok_or_else(|| {
                CgroupError::Layout(format!(
                    "own group {group} is outside the mount at {}",
                    mount.point.display()
                ))
            })
        }
    }
}

impl Tree {
    /// Creates (or reuses) the root and its `daemon/`, `service/` and `batch/` groups, and on
    /// pure v2 enables the wanted controllers along the way. With [`RootName::Own`] on pure v2
    /// the processes already in the root (the daemon) move to `daemon/` first: a v2 group that
    /// hands controllers to children may hold no processes. `proc_root` is normally `/proc`.
    pub fn open(layout: Layout, cfg: &TreeConfig, proc_root: &Path) -> Result<Self, CgroupError> {
        let layout = if cfg.legacy_freezer {
            layout.as_legacy()?
        } else {
            layout
        };
        let root_of = |mount: &CgroupMount, controller: Option<&str>| {
            root_dir(&cfg.root, mount, controller, proc_root)
        };
        let mut tree = match &layout {
            Layout::Unified { mount } => Self {
                mode: Mode::Unified,
                unified: Some(root_of(mount, None)?),
                cpuset: None,
                freezer: None,
                layout: layout.clone(),
                mems: None,
                controllers: Vec::new(),
                job_pids_max: None,
            },
            Layout::Hybrid {
                unified, cpuset, ..
            } => Self {
                mode: Mode::Hybrid,
                unified: Some(root_of(unified, None)?),
                cpuset: Some(root_of(cpuset, Some("cpuset"))?),
                freezer: None,
                layout: layout.clone(),
                mems: None,
                controllers: Vec::new(),
                job_pids_max: None,
            },
            Layout::Legacy { cpuset, freezer } => Self {
                mode: Mode::Legacy,
                unified: None,
                cpuset: Some(root_of(cpuset, Some("cpuset"))?),
                freezer: Some(root_of(freezer, Some("freezer"))?),
                layout: layout.clone(),
                mems: None,
                controllers: Vec::new(),
                job_pids_max: None,
            },
        };
        let named = matches!(cfg.root, RootName::Named(_));
        if let Some(root) = tree.unified.clone() {
            tree.setup_unified(&root, named)?;
        }
        if let Some(root) = tree.cpuset.clone() {
            tree.setup_cpuset(&root, named)?;
        }
        if let Some(root) = tree.freezer.clone() {
            ensure_dir(&root)?;
            ensure_dir(&root.join(BATCH))?;
        }
        Ok(tree)
    }

    fn setup_unified(&mut self, root: &Path, named: bool) -> Result<(), CgroupError> {
        ensure_dir(root)?;
        ensure_dir(&root.join(DAEMON))?;
        if self.mode == Mode::Unified {
            if !named {
                // Delegated root: move whatever runs in it (the daemon) into daemon/.
                for pid in parse_pids(&read_path(&root.join(PROCS))?) {
                    write_path(&root.join(DAEMON).join(PROCS), &pid.to_string())?;
                }
            } else if let Some(parent) = root.parent() {
                // By hand: make sure the parent hands the controllers down (best effort; a
                // parent we may not touch is reported by the checks below).
                let _ = enable_controllers(parent);
            }
            enable_controllers(root)?;
        }
        ensure_dir(&root.join(SERVICE))?;
        ensure_dir(&root.join(BATCH))?;
        if self.mode == Mode::Unified {
            self.controllers = enable_controllers(&root.join(BATCH))?;
            if !self.controllers.iter().any(|c| c == "cpuset") {
                return Err(CgroupError::Layout(format!(
                    "the cpuset controller is not available in {}: cannot place jobs on cores",
                    root.join(BATCH).display()
                )));
            }
        }
        Ok(())
    }

    fn setup_cpuset(&mut self, root: &Path, named: bool) -> Result<(), CgroupError> {
        let created = ensure_dir(root)?;
        // A new v1 cpuset group starts with empty cpus and mems: copy the parent's.
        if named && (created || read_path(&root.join(CPUSET_CPUS))?.trim().is_empty()) {
            if let Some(parent) = root.parent() {
                copy_cpuset(parent, root)?;
            }
        }
        self.mems = Some(read_path(&root.join(CPUSET_MEMS))?.trim().to_string());
        for leaf in [DAEMON, SERVICE, BATCH] {
            let dir = root.join(leaf);
            ensure_dir(&dir)?;
            if read_path(&dir.join(CPUSET_CPUS))?.trim().is_empty() {
                copy_cpuset(root, &dir)?;
            }
        }
        Ok(())
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether job memory limits are enforced (pure v2 with the memory controller only).
    pub fn memory_enforced(&self) -> bool {
        self.mode == Mode::Unified && self.controllers.iter().any(|c| c == "memory")
    }

    /// Whether job process counts are capped (pure v2 with the pids controller only: hybrid
    /// hosts have pids only in v1, which lowsched does not manage).
    pub fn pids_enforced(&self) -> bool {
        self.mode == Mode::Unified && self.controllers.iter().any(|c| c == "pids")
    }

    /// The `pids.max` every job group created from now on gets (`None`: the kernel's "max").
    pub fn set_job_pids_max(&mut self, max: Option<u64>) {
        self.job_pids_max = max;
    }

    /// Makes `batch/` an idle CPU group (`cpu.idle`, kernel 5.15+), or a normal one again.
    /// Jobs run at SCHED_IDLE, but the kernel ranks that only among tasks of one CPU cgroup:
    /// with the cpu controller on, `batch/` as a whole would get the same share of a core as
    /// `daemon/` or `service/` (measured in a pure-v2 guest: a SCHED_IDLE loop in a sibling
    /// group took half of the core from a normal one; with `cpu.idle` 1 it took 0.3%). Returns
    /// false where `batch/` has no such file (no cpu controller, hybrid and v1 hosts, older
    /// kernels).
    pub fn set_batch_idle(&self, idle: bool) -> Result<bool, CgroupError> {
        let Some(root) = &self.unified else {
            return Ok(false);
        };
        let path = root.join(BATCH).join(CPU_IDLE);
        if !path.exists() {
            return Ok(false);
        }
        write_path(&path, if idle { "1" } else { "0" })?;
        Ok(true)
    }

    /// Controllers enabled for job groups (pure v2).
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// The cores lowsched's root may use (v1: its cpuset; v2: the effective cpuset).
    pub fn root_cores(&self) -> Result<CpuSet, CgroupError> {
        let path = match (&self.cpuset, &self.unified) {
            (Some(c), _) => c.join(CPUSET_CPUS),
            (None, Some(u)) => u.join("cpuset.cpus.effective"),
            (None, None) => return Err(CgroupError::Layout("no cpuset hierarchy".into())),
        };
        let text = read_path(&path)?;
        text.parse()
            .map_err(|e: crate::model::cpuset::CpuSetError| CgroupError::Parse {
                path,
                text,
                what: e.to_string(),
            })
    }

    /// lowsched's root in the hierarchy that holds its job groups.
    pub fn root(&self) -> &Path {
        self.unified
            .as_deref()
            .or(self.cpuset.as_deref())
            .unwrap_or(Path::new("/"))
    }

    /// Where job `id`'s groups are (whether or not they exist).
    pub fn job_paths(&self, id: JobId) -> JobPaths {
        let name = format!("{JOB_PREFIX}{}", id.0);
        let under = |root: &Option<PathBuf>| root.as_ref().map(|r| r.join(BATCH).join(&name));
        let unified = under(&self.unified);
        let v1 = under(&self.cpuset);
        match self.mode {
            Mode::Unified => {
                let u = unified.unwrap_or_default();
                JobPaths {
                    mode: self.mode,
                    task: u.join(TASK),
                    cpuset: u.clone(),
                    unified: Some(u),
                }
            }
            Mode::Hybrid => {
                let u = unified.unwrap_or_default();
                JobPaths {
                    mode: self.mode,
                    task: u.join(TASK),
                    cpuset: v1.unwrap_or_default(),
                    unified: Some(u),
                }
            }
            Mode::Legacy => JobPaths {
                mode: self.mode,
                unified: None,
                task: under(&self.freezer).unwrap_or_default(),
                cpuset: v1.unwrap_or_default(),
            },
        }
    }

    /// Creates job `id`'s groups on `cores`, with a memory limit where enforced.
    pub fn create_job(
        &self,
        id: JobId,
        cores: &CpuSet,
        memory: Option<u64>,
    ) -> Result<JobGroup, CgroupError> {
        let memory = memory.filter(|_| self.memory_enforced());
        let pids = self.job_pids_max.filter(|_| self.pids_enforced());
        JobGroup::create(
            self.job_paths(id),
            cores,
            self.mems.as_deref(),
            memory,
            pids,
        )
    }

    /// Opens an existing job's groups.
    pub fn open_job(&self, id: JobId) -> Result<JobGroup, CgroupError> {
        JobGroup::open(self.job_paths(id))
    }

    /// The ids of the job groups present under `batch/`, ascending.
    pub fn job_ids(&self) -> Result<Vec<JobId>, CgroupError> {
        let batch = self.root().join(BATCH);
        let entries = std::fs::read_dir(&batch).map_err(|e| CgroupError::io("list", &batch, e))?;
        let mut ids: Vec<JobId> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?
                    .strip_prefix(JOB_PREFIX)?
                    .parse()
                    .ok()
                    .map(JobId)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Moves `pid` into `daemon/` in every hierarchy used. `Pid 0` means the caller.
    pub fn move_to_daemon(&self, pid: Pid) -> Result<(), CgroupError> {
        self.move_into(DAEMON, pid)
    }

    fn move_into(&self, leaf: &str, pid: Pid) -> Result<(), CgroupError> {
        for root in [&self.unified, &self.cpuset].into_iter().flatten() {
            write_path(&root.join(leaf).join(PROCS), &pid.as_raw().to_string())?;
        }
        Ok(())
    }

    /// The protected service's group, with its `cpuset.cpus` held open.
    pub fn service(&self) -> Result<ServiceGroup, CgroupError> {
        let cores_root = self.cpuset.as_ref().or(self.unified.as_ref());
        let cpus = match cores_root {
            Some(r) => Knob::open_write(r.join(SERVICE).join(CPUSET_CPUS))?,
            None => return Err(CgroupError::Layout("no cpuset hierarchy".into())),
        };
        let procs = [&self.unified, &self.cpuset]
            .into_iter()
            .flatten()
            .map(|r| r.join(SERVICE).join(PROCS))
            .collect();
        Ok(ServiceGroup {
            procs,
            cpus: Arc::new(cpus),
        })
    }

    /// Removes every job group (killing what runs there) and, for a named root, the whole
    /// tree. Fails if `service/` or `daemon/` still hold processes. For tests and uninstall.
    pub fn destroy(&self, timeout: Duration) -> Result<(), CgroupError> {
        for id in self.job_ids()? {
            self.open_job(id)?.remove(timeout)?;
        }
        for root in [&self.unified, &self.cpuset, &self.freezer]
            .into_iter()
            .flatten()
        {
            for leaf in [BATCH, SERVICE, DAEMON] {
                let dir = root.join(leaf);
                if dir.join(PROCS).exists() && !parse_pids(&read_path(&dir.join(PROCS))?).is_empty()
                {
                    return Err(CgroupError::Busy {
                        path: dir,
                        what: "cannot remove".into(),
                    });
                }
                remove_dir(&dir)?;
            }
            remove_dir(root)?;
        }
        Ok(())
    }
}

/// Enables the wanted controllers that `dir` offers for its children; returns what is enabled.
fn enable_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let offered = read_path(&dir.join(CONTROLLERS))?;
    let enabled = read_path(&dir.join(SUBTREE_CONTROL))?;
    let missing: Vec<String> = WANTED_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !missing.is_empty() {
        write_path(&dir.join(SUBTREE_CONTROL), &missing.join(" "))?;
    }
    let now = read_path(&dir.join(SUBTREE_CONTROL))?;
    Ok(now
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect())
}

/// Gives a v1 cpuset group its parent's memory nodes and cores.
fn copy_cpuset(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    for file in [CPUSET_MEMS, CPUSET_CPUS] {
        let value = read_path(&parent.join(file))?;
        write_path(&child.join(file), value.trim())?;
    }
    Ok(())
}

/// The protected service's group: where its processes go and the cores it gets. Cloneable and
/// shareable between threads; `set_cores` writes through a held descriptor.
#[derive(Clone, Debug)]
pub struct ServiceGroup {
    procs: Vec<PathBuf>,
    cpus: Arc<Knob>,
}

impl ServiceGroup {
    /// Moves `pid` (a whole process) into the service group in every hierarchy.
    pub fn add(&self, pid: Pid) -> Result<(), CgroupError> {
        for p in &self.procs {
            write_path(p, &pid.as_raw().to_string())?;
        }
        Ok(())
    }

    /// Sets the service's cores (the SLO controller widens and shrinks it through this).
    pub fn set_cores(&self, cores: &CpuSet) -> Result<(), CgroupError> {
        if cores.is_empty() {
            return Err(CgroupError::NoCores {
                path: self.cpus.path().to_path_buf(),
            });
        }
        self.cpus.write(&cores.to_string())
    }

    /// The processes in the service group.
    pub fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        match self.procs.first() {
            Some(p) => Ok(parse_pids(&read_path(p)?)),
            None => Ok(Vec::new()),
        }
    }
}
