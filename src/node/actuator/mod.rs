//! The actuator: carries out the policy's commands on the node. Jobs run as processes in their
//! own cgroups, each under a small waiter that records its exit; the actuator starts, pauses,
//! resumes, resizes and kills them, reports every exit on a channel, and after a daemon
//! restart adopts the jobs it finds in the cgroup tree and the state dir.
//!
//! Every failure is returned with the path and OS error and leaves the job's record here
//! matching the kernel: a failed pause leaves it running, a failed resize keeps the old cores.

mod adopt;
mod launch;
mod reaper;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Receiver;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode as FileMode;
use nix::unistd::Pid;

pub use adopt::{AdoptedJob, Adoption};
pub use launch::{LaunchRequest, job_env, shim_request};
pub use reaper::read_record;

use crate::decide::policy::Command;
use crate::model::cpuset::CpuSet;
use crate::model::exit::ExitEvent;
use crate::model::job::{JobError, JobId, JobSpec};
use crate::model::limits::JobLimits;
use crate::node::cgroup::{
    CgroupError, DEFAULT_TIMEOUT, JobGroup, Layout, Mode, ServiceGroup, Tree, TreeConfig,
};
use crate::store::statedir::{StateDir, StateDirError};
use crate::sys::SpawnError;
use reaper::{Reaper, Watch};

/// Environment variable naming the waiter binary (default: `lowsched-shim` next to the
/// running executable).
pub const SHIM_ENV: &str = "LOWSCHED_SHIM";

/// Why an actuation failed.
#[derive(Debug, thiserror::Error)]
pub enum ActuationError {
    #[error("job {0} is not on this node")]
    UnknownJob(JobId),
    #[error("job {0} is already on this node")]
    AlreadyRunning(JobId),
    #[error("job {0}: the daemon has no launch request for it")]
    NoRequest(JobId),
    #[error("job {job}: bad spec: {source}")]
    BadSpec { job: JobId, source: JobError },
    #[error("job {job}: {source}")]
    Cgroup { job: JobId, source: CgroupError },
    #[error("job {job}: cannot start its waiter {shim}: {source}")]
    Launch {
        job: JobId,
        shim: PathBuf,
        source: SpawnError,
    },
    #[error("job {job}: cannot hand its request to the waiter: {what}")]
    Request { job: JobId, what: String },
    #[error("cgroup tree: {0}")]
    Tree(CgroupError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("cannot start the exit watcher: {0}")]
    Reaper(std::io::Error),
    #[error("cannot open /dev/null: {0}")]
    DevNull(nix::errno::Errno),
    #[error(
        "the job waiter {0} is not a file (set {SHIM_ENV} or install lowsched-shim next to lowsched)"
    )]
    NoShim(PathBuf),
}

impl ActuationError {
    pub(crate) fn cgroup(job: JobId, source: CgroupError) -> Self {
        Self::Cgroup { job, source }
    }
}

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct ActuatorConfig {
    /// The host's layout; `None` detects it from `<proc_root>/self/mountinfo`.
    pub layout: Option<Layout>,
    pub tree: TreeConfig,
    pub proc_root: PathBuf,
    pub state_dir: PathBuf,
    /// The waiter binary.
    pub shim: PathBuf,
    /// Longest wait for a freeze, thaw or kill to be confirmed.
    pub timeout: Duration,
    /// Make `run` wait until the waiter has exec'd (CLONE_VFORK), so that a waiter that cannot
    /// be exec'd is an error of `run` rather than a `NotStarted` exit event. Slower: see
    /// cgroups/DESIGN.md.
    pub wait_for_exec: bool,
    /// Run jobs at `SCHED_IDLE` (see [`crate::sys::sched::set_idle`]), and make `batch/` an
    /// idle CPU group where the cpu controller is on ([`Tree::set_batch_idle`]).
    pub idle_priority: bool,
    /// Umask, rlimits and no_new_privs of every job.
    pub limits: JobLimits,
    /// `pids.max` of every job group (pure v2 with the pids controller).
    pub pids_max: Option<u64>,
    /// `memory.max` of a job that names no memory (pure v2 with the memory controller).
    pub memory_max: Option<u64>,
    /// Where default job outputs go (`None`: `<state_dir>/jobs`).
    pub output_dir: Option<PathBuf>,
}

impl ActuatorConfig {
    /// Defaults for a daemon: detected layout, root `lowsched`, the waiter from
    /// [`default_shim`].
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            layout: None,
            tree: TreeConfig::default(),
            proc_root: PathBuf::from("/proc"),
            state_dir: state_dir.into(),
            shim: default_shim(),
            timeout: DEFAULT_TIMEOUT,
            wait_for_exec: false,
            idle_priority: false,
            limits: JobLimits::default(),
            pids_max: Some(crate::model::limits::DEFAULT_PIDS_MAX),
            memory_max: None,
            output_dir: None,
        }
    }
}

/// `$LOWSCHED_SHIM`, else `lowsched-shim` in the running executable's directory.
pub fn default_shim() -> PathBuf {
    if let Some(p) = std::env::var_os(SHIM_ENV) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("lowsched-shim")))
        .unwrap_or_else(|| PathBuf::from("/usr/libexec/lowsched/lowsched-shim"))
}

/// One job on the node.
#[derive(Debug)]
struct Job {
    group: Option<JobGroup>,
    paused: bool,
    cores: CpuSet,
}

/// Carries out commands on the node. Single-owner (`&mut self`); exits arrive on the channel
/// returned by [`Actuator::open`].
#[derive(Debug)]
pub struct Actuator {
    tree: Tree,
    state: StateDir,
    shim: PathBuf,
    null: OwnedFd,
    timeout: Duration,
    wait_for_exec: bool,
    idle_priority: bool,
    limits: JobLimits,
    memory_max: Option<u64>,
    jobs: HashMap<JobId, Job>,
    /// Groups made ahead of a start ([`Actuator::prepare`]).
    prepared: HashMap<JobId, JobGroup>,
    reaper: Reaper,
    timings: Timings,
}

/// How long recent launches and freezes took (µs), kept until the metrics take them.
#[derive(Debug, Default)]
pub struct Timings {
    pub launch_us: Vec<u64>,
    pub freeze_us: Vec<u64>,
}

/// Most samples kept between two takes: a reader that never comes costs bounded memory.
const TIMINGS_KEPT: usize = 4096;

fn keep_timing(v: &mut Vec<u64>, started: std::time::Instant) {
    if v.len() < TIMINGS_KEPT {
        v.push(started.elapsed().as_micros() as u64);
    }
}

/// How long a kill waits for a job's waiter to start it before killing what is there.
const START_WAIT: Duration = Duration::from_secs(20);

impl Actuator {
    /// Opens the cgroup tree and the state dir and starts the exit watcher. Running jobs are
    /// not touched: call [`Actuator::adopt`] to take them over.
    pub fn open(cfg: &ActuatorConfig) -> Result<(Self, Receiver<ExitEvent>), ActuationError> {
        if !cfg.shim.is_file() {
            return Err(ActuationError::NoShim(cfg.shim.clone()));
        }
        let layout = match &cfg.layout {
            Some(l) => l.clone(),
            None => Layout::detect(&cfg.proc_root).map_err(ActuationError::Tree)?,
        };
        let mut tree =
            Tree::open(layout, &cfg.tree, &cfg.proc_root).map_err(ActuationError::Tree)?;
        tree.set_job_pids_max(cfg.pids_max);
        tree.set_batch_idle(cfg.idle_priority)
            .map_err(ActuationError::Tree)?;
        let state = match &cfg.output_dir {
            Some(out) => StateDir::with_output_dir(&cfg.state_dir, out)?,
            None => StateDir::create(&cfg.state_dir)?,
        };
        let null = open(
            "/dev/null",
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )
        .map_err(ActuationError::DevNull)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let reaper = Reaper::start(tx).map_err(ActuationError::Reaper)?;
        let actuator = Self {
            tree,
            state,
            shim: cfg.shim.clone(),
            null,
            timeout: cfg.timeout,
            wait_for_exec: cfg.wait_for_exec,
            idle_priority: cfg.idle_priority,
            limits: cfg.limits.clone(),
            memory_max: cfg.memory_max,
            jobs: HashMap::new(),
            prepared: HashMap::new(),
            reaper,
            timings: Timings::default(),
        };
        Ok((actuator, rx))
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// Moves the calling process (the daemon) into `daemon/`.
    pub fn enter_daemon_group(&self) -> Result<(), ActuationError> {
        self.tree
            .move_to_daemon(Pid::from_raw(0))
            .map_err(ActuationError::Tree)
    }

    /// The protected service's group (cloneable; `set_cores` uses a held descriptor).
    pub fn service(&self) -> Result<ServiceGroup, ActuationError> {
        self.tree.service().map_err(ActuationError::Tree)
    }

    /// Starts job `req.id` on `cores`. Returns once its waiter runs inside the job's group
    /// (the job counts as running from here); the job's own exec follows within a millisecond
    /// or so, and if it cannot start (no such program, permission denied) its exit event says
    /// so: [`crate::model::exit::ExitStatus::NotStarted`]. Returns the waiter's pid.
    pub fn run(&mut self, req: &LaunchRequest<'_>, cores: CpuSet) -> Result<Pid, ActuationError> {
        let started = std::time::Instant::now();
        let pid = self.launch(req, cores)?;
        keep_timing(&mut self.timings.launch_us, started);
        Ok(pid)
    }

    /// The launch and freeze times recorded since the last call.
    pub fn take_timings(&mut self) -> Timings {
        std::mem::take(&mut self.timings)
    }

    fn launch(&mut self, req: &LaunchRequest<'_>, cores: CpuSet) -> Result<Pid, ActuationError> {
        let job = req.id;
        if self.jobs.contains_key(&job) {
            return Err(ActuationError::AlreadyRunning(job));
        }
        req.spec
            .validate()
            .map_err(|source| ActuationError::BadSpec { job, source })?;
        let group = match self.prepared.remove(&job) {
            Some(group) => match group.set_cores(&cores) {
                Ok(()) => group,
                Err(e) => {
                    let _ = group.remove(self.timeout);
                    return Err(ActuationError::cgroup(job, e));
                }
            },
            None => self
                .tree
                .create_job(job, &cores, self.job_memory(req.spec))
                .map_err(|e| ActuationError::cgroup(job, e))?,
        };
        let request = launch::shim_request(
            req,
            &self.state,
            group.paths().clone(),
            self.idle_priority,
            &self.limits,
        );
        match launch::start_waiter(
            &self.shim,
            self.null.as_fd(),
            &group,
            &request,
            self.wait_for_exec,
        ) {
            Ok((spawned, pending)) => {
                self.reaper.watch(Watch {
                    pending,
                    shim: self.shim.clone(),
                    ..Watch::new(job, spawned.pidfd, request.record)
                });
                self.jobs.insert(
                    job,
                    Job {
                        group: Some(group),
                        paused: false,
                        cores,
                    },
                );
                Ok(spawned.pid)
            }
            Err(e) => {
                let _ = group.remove(self.timeout);
                Err(e)
            }
        }
    }

    /// Creates job `id`'s groups ahead of [`Actuator::run`] (on all of lowsched's cores, with
    /// the spec's memory limit), so that starting it only sets its cores and clones: creating
    /// groups is most of a launch's cost. Call it for the jobs about to start; undo with
    /// [`Actuator::release`].
    pub fn prepare(&mut self, job: JobId, spec: &JobSpec) -> Result<(), ActuationError> {
        if self.jobs.contains_key(&job) {
            return Err(ActuationError::AlreadyRunning(job));
        }
        if self.prepared.contains_key(&job) {
            return Ok(());
        }
        let cores = self.tree.root_cores().map_err(ActuationError::Tree)?;
        let group = self
            .tree
            .create_job(job, &cores, self.job_memory(spec))
            .map_err(|e| ActuationError::cgroup(job, e))?;
        self.prepared.insert(job, group);
        Ok(())
    }

    /// The job's memory limit: its own, else the configured default.
    fn job_memory(&self, spec: &JobSpec) -> Option<u64> {
        spec.memory.map(|m| m.get()).or(self.memory_max)
    }

    fn group(&mut self, job: JobId) -> Result<(&mut Job, Duration), ActuationError> {
        let timeout = self.timeout;
        match self.jobs.get_mut(&job) {
            Some(j) if j.group.is_some() => Ok((j, timeout)),
            _ => Err(ActuationError::UnknownJob(job)),
        }
    }

    /// Freezes the job; returns once the kernel reports it frozen. A failed or unconfirmed
    /// freeze is undone (thawed) so the job stays running.
    pub fn pause(&mut self, job: JobId) -> Result<(), ActuationError> {
        let started = std::time::Instant::now();
        self.freeze(job)?;
        keep_timing(&mut self.timings.freeze_us, started);
        Ok(())
    }

    fn freeze(&mut self, job: JobId) -> Result<(), ActuationError> {
        let (j, timeout) = self.group(job)?;
        let Some(group) = j.group.as_mut() else {
            return Err(ActuationError::UnknownJob(job));
        };
        if let Err(e) = group.freeze(timeout) {
            let _ = group.thaw(timeout);
            return Err(ActuationError::cgroup(job, e));
        }
        j.paused = true;
        Ok(())
    }

    /// Starts freezing the job and returns at once, so the control loop never waits on it;
    /// [`Actuator::frozen`] says when the kernel has it frozen.
    pub fn freeze_now(&mut self, job: JobId) -> Result<(), ActuationError> {
        let (j, _) = self.group(job)?;
        let group = j.group.as_mut().ok_or(ActuationError::UnknownJob(job))?;
        group
            .freeze_now()
            .map_err(|e| ActuationError::cgroup(job, e))?;
        j.paused = true;
        Ok(())
    }

    /// Whether the kernel reports the job frozen.
    pub fn frozen(&mut self, job: JobId) -> Result<bool, ActuationError> {
        let (j, _) = self.group(job)?;
        let group = j.group.as_mut().ok_or(ActuationError::UnknownJob(job))?;
        group
            .is_frozen()
            .map_err(|e| ActuationError::cgroup(job, e))
    }

    /// Sets the job's cores, then thaws it. If the cores cannot be set it stays paused.
    pub fn resume(&mut self, job: JobId, cores: CpuSet) -> Result<(), ActuationError> {
        let (j, timeout) = self.group(job)?;
        let Some(group) = j.group.as_mut() else {
            return Err(ActuationError::UnknownJob(job));
        };
        group
            .set_cores(&cores)
            .map_err(|e| ActuationError::cgroup(job, e))?;
        j.cores = cores;
        group
            .thaw(timeout)
            .map_err(|e| ActuationError::cgroup(job, e))?;
        j.paused = false;
        Ok(())
    }

    /// Moves a running (or paused) job to `cores`.
    pub fn resize(&mut self, job: JobId, cores: CpuSet) -> Result<(), ActuationError> {
        let (j, _) = self.group(job)?;
        let Some(group) = j.group.as_ref() else {
            return Err(ActuationError::UnknownJob(job));
        };
        group
            .set_cores(&cores)
            .map_err(|e| ActuationError::cgroup(job, e))?;
        j.cores = cores;
        Ok(())
    }

    /// Kills every process of the job (frozen or not, descendants included) and returns once
    /// none is left. Its exit event (signaled 9) follows from the waiter.
    ///
    /// Right after `run` the waiter may not have started the job yet (task/ still empty):
    /// killing then would miss the job, so this first waits (up to [`START_WAIT`]) until the
    /// waiter's record shows the job started or ended.
    pub fn kill(&mut self, job: JobId) -> Result<(), ActuationError> {
        let record = self.state.exit_record(job);
        let started = || {
            std::fs::read_to_string(&record)
                .is_ok_and(|t| crate::model::exit::record_shows_start(&t))
        };
        let (j, timeout) = self.group(job)?;
        if !started() {
            // Paused before its waiter could start it: the job would be born frozen and the
            // waiter stuck until a thaw, so thaw first.
            if let (true, Some(group)) = (j.paused, j.group.as_mut()) {
                let _ = group.thaw(timeout);
                j.paused = false;
            }
            // A kill that found `task/` still empty would miss the job, which then starts and
            // runs to its end; on an overloaded host (a TCG guest, say) a waiter can take
            // seconds to start it, so wait for its start longer than for a cgroup write.
            let start = std::time::Instant::now();
            let deadline = timeout.max(START_WAIT);
            let mut pause = Duration::from_micros(50);
            while start.elapsed() < deadline && !started() {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
        let Some(group) = j.group.as_mut() else {
            return Err(ActuationError::UnknownJob(job));
        };
        group
            .kill(timeout)
            .map_err(|e| ActuationError::cgroup(job, e))?;
        j.paused = false;
        Ok(())
    }

    /// Starts the kill of every process of the job and returns at once, waiting neither for
    /// them to be gone nor for the job to start: the control loop never waits on a kill. The
    /// job's exit event says when it is over. A job its waiter has not started yet is killed
    /// together with its waiter (the whole group; `cgroup.kill` also takes what is forked
    /// meanwhile), so nothing of it runs later; its exit event then says the waiter ended
    /// without a record. Legacy hosts (v1 freezer, no `cgroup.kill`): [`Actuator::kill`].
    pub fn kill_now(&mut self, job: JobId) -> Result<(), ActuationError> {
        let legacy = self
            .jobs
            .get(&job)
            .and_then(|j| j.group.as_ref())
            .is_some_and(|g| g.paths().mode == Mode::Legacy);
        if legacy {
            return self.kill(job);
        }
        let record = self.state.exit_record(job);
        let started = std::fs::read_to_string(&record)
            .is_ok_and(|t| crate::model::exit::record_shows_start(&t));
        let (j, _) = self.group(job)?;
        let Some(group) = j.group.as_ref() else {
            return Err(ActuationError::UnknownJob(job));
        };
        group
            .kill_now(!started)
            .map_err(|e| ActuationError::cgroup(job, e))?;
        j.paused = false;
        Ok(())
    }

    /// Carries out one policy command on the node: the one place that maps a [`Command`] to
    /// the actuator's operations. `launch` is the launch request a `Run` needs (ignored for the
    /// other commands); `MarkUnschedulable` has nothing to do on the node; a `Kill` is only
    /// started ([`Actuator::kill_now`]), its end is the job's exit event. The caller records
    /// the outcome (job table, journal, event log) right after each command, so a crash between
    /// two commands leaves the records matching the node.
    pub fn apply(
        &mut self,
        cmd: &Command,
        launch: Option<&LaunchRequest<'_>>,
    ) -> Result<(), ActuationError> {
        match cmd {
            Command::Run { job, cores, .. } => match launch {
                Some(req) if req.id == *job => self.run(req, *cores).map(|_| ()),
                _ => Err(ActuationError::NoRequest(*job)),
            },
            Command::Pause { job, .. } => self.pause(*job),
            Command::Resume { job, cores, .. } => self.resume(*job, *cores),
            Command::Resize { job, cores, .. } => self.resize(*job, *cores),
            Command::Kill { job, .. } => self.kill_now(*job),
            Command::MarkUnschedulable { .. } => Ok(()),
        }
    }

    /// Sets the job's memory limit (pure v2 with the memory controller; elsewhere memory is not
    /// enforced and this does nothing). Used to put limits back after a daemon restart.
    pub fn limit_memory(&mut self, job: JobId, bytes: u64) -> Result<(), ActuationError> {
        if !self.tree.memory_enforced() {
            return Ok(());
        }
        let (j, _) = self.group(job)?;
        let Some(group) = j.group.as_ref() else {
            return Err(ActuationError::UnknownJob(job));
        };
        group
            .set_memory_max(bytes)
            .map_err(|e| ActuationError::cgroup(job, e))
    }

    /// The job's processes (not its waiter).
    pub fn pids(&self, job: JobId) -> Result<Vec<Pid>, ActuationError> {
        match self.jobs.get(&job).and_then(|j| j.group.as_ref()) {
            Some(g) => g.pids().map_err(|e| ActuationError::cgroup(job, e)),
            None => Err(ActuationError::UnknownJob(job)),
        }
    }

    /// Whether the job is on the node and paused, as the actuator last set it.
    pub fn is_paused(&self, job: JobId) -> Option<bool> {
        self.jobs.get(&job).map(|j| j.paused)
    }

    /// The cores the job was last given.
    pub fn cores(&self, job: JobId) -> Option<CpuSet> {
        self.jobs.get(&job).map(|j| j.cores)
    }

    /// After a job's exit event (and after the daemon has recorded it): kills any stragglers,
    /// removes the job's groups and marks its exit record collected. Also drops the groups of
    /// a prepared job that will not run.
    pub fn release(&mut self, job: JobId) -> Result<(), ActuationError> {
        if let Some(group) = self.prepared.remove(&job) {
            group
                .remove(self.timeout)
                .map_err(|e| ActuationError::cgroup(job, e))?;
        }
        if let Some(j) = self.jobs.remove(&job) {
            if let Some(group) = j.group {
                group
                    .remove(self.timeout)
                    .map_err(|e| ActuationError::cgroup(job, e))?;
            }
        }
        self.state.collect(job)?;
        Ok(())
    }

    /// The waiter binary this actuator starts.
    pub fn shim(&self) -> &Path {
        &self.shim
    }
}
