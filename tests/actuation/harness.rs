//! The actuation tests' harness: a private cgroup tree and state dir per test, jobs, and
//! reading what the kernel says about a process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use lowsched::model::credentials::Credentials;
use lowsched::model::exit::ExitEvent;
use lowsched::model::inventory::GpuSet;
use lowsched::model::job::{JobId, JobSpec};
use lowsched::node::actuator::{Actuator, ActuatorConfig, LaunchRequest, SHIM_ENV};
use lowsched::node::cgroup::{Layout, RootName, TreeConfig};
use nix::unistd::Pid;

use super::common;

/// One test's private tree (`lowsched-test-act-<pid>-<name>`), removed on drop.
pub struct Env {
    pub act: Option<Actuator>,
    pub events: Receiver<ExitEvent>,
    pub cfg: ActuatorConfig,
    pub tmp: tempfile::TempDir,
    pub waiters: Vec<Pid>,
}

pub fn shim() -> PathBuf {
    std::env::var_os(SHIM_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lowsched-shim")))
}

pub fn has_v1_freezer() -> bool {
    matches!(
        Layout::detect(Path::new("/proc")),
        Ok(Layout::Hybrid {
            freezer: Some(_),
            ..
        } | Layout::Legacy { .. })
    )
}

impl Env {
    /// `None` when the test cannot run here (not root, or the v1 freezer asked for on a host
    /// without one); under the test command that is a failure instead (`skip_unless`).
    pub fn new(name: &str, legacy: bool) -> Option<Self> {
        Self::with(name, legacy, |_, _| {})
    }

    /// As `new`, letting `edit` change the configuration (given the test's temp dir).
    pub fn with(
        name: &str,
        legacy: bool,
        edit: impl FnOnce(&mut ActuatorConfig, &Path),
    ) -> Option<Self> {
        if common::skip_unless(common::is_root(), "actuation tests need root (cgroups)") {
            return None;
        }
        // Stage 40 (pure v2, no v1 freezer) leaves these variants out by name and lists them as
        // not run; anywhere else under the test command a missing v1 freezer is a failure.
        if legacy
            && common::skip_unless(
                has_v1_freezer(),
                "the v1-freezer variants need a v1 freezer hierarchy (hybrid or v1 host)",
            )
        {
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        // Job users must be able to reach their output files under the state dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = ActuatorConfig::new(state.path().join("state"));
        cfg.tree = TreeConfig {
            root: RootName::Named(format!(
                "lowsched-test-act-{}-{name}{}",
                std::process::id(),
                if legacy { "-v1" } else { "" }
            )),
            legacy_freezer: legacy,
        };
        cfg.shim = shim();
        edit(&mut cfg, state.path());
        let (act, events) = Actuator::open(&cfg).unwrap();
        Some(Self {
            act: Some(act),
            events,
            cfg,
            tmp: state,
            waiters: Vec::new(),
        })
    }

    pub fn act(&mut self) -> &mut Actuator {
        self.act.as_mut().unwrap()
    }

    pub fn run(&mut self, id: u64, argv: &[&str], cores: &str) -> JobId {
        self.run_as(id, argv, cores, &root(), |_| {})
    }

    pub fn run_as(
        &mut self,
        id: u64,
        argv: &[&str],
        cores: &str,
        user: &Credentials,
        edit: impl FnOnce(&mut JobSpec),
    ) -> JobId {
        let mut spec = JobSpec::new(argv.iter().map(|s| s.to_string()).collect());
        edit(&mut spec);
        let req = LaunchRequest {
            id: JobId(id),
            spec: &spec,
            user,
            gpus: GpuSet::default(),
        };
        let waiter = self.act().run(&req, cores.parse().unwrap()).unwrap();
        self.waiters.push(waiter);
        JobId(id)
    }

    /// The next exit event, within 60 s (generous: under TCG on a loaded host a kill right
    /// after a launch waits for the waiter to start first).
    pub fn exit(&self) -> ExitEvent {
        self.events
            .recv_timeout(Duration::from_secs(60))
            .expect("no exit event within 60 s")
    }

    /// The job's processes once there are at least `n`.
    pub fn pids(&mut self, id: JobId, n: usize) -> Vec<Pid> {
        let start = Instant::now();
        loop {
            let pids = self.act().pids(id).unwrap();
            if pids.len() >= n {
                return pids;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "job {id} has {pids:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Two distinct cores to use (the last two the tree may use; one if there is only one).
    pub fn cores(&mut self) -> (String, String) {
        let all = self.act().tree().root_cores().unwrap().to_vec();
        let last = all[all.len() - 1];
        let other = all[all.len().saturating_sub(2)];
        (last.to_string(), other.to_string())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let act = self
            .act
            .take()
            .or_else(|| Actuator::open(&self.cfg).ok().map(|(a, _)| a));
        if let Some(act) = act {
            let tree = act.tree().clone();
            drop(act);
            if let Err(e) = tree.destroy(Duration::from_secs(5)) {
                eprintln!("cleanup: {e}");
            }
        }
        for w in &self.waiters {
            let _ = nix::sys::wait::waitpid(*w, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}

pub fn status_field(pid: Pid, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .to_string()
}

pub fn cpu_time_ns(pid: Pid) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Root, also in a minimal guest without a passwd file.
pub fn root() -> Credentials {
    Credentials::by_uid(0).unwrap_or_else(|_| Credentials::from_ids(0, 0))
}

/// `nobody`, or uid 65534 where no passwd entry names it.
pub fn nobody() -> Credentials {
    Credentials::by_name("nobody")
        .or_else(|_| Credentials::by_uid(65534))
        .unwrap_or_else(|_| Credentials::from_ids(65534, 65534))
}
