//! The Slurm side of the control loop: each turn it lets the Slurm agent look for jobs, asks
//! the squeeze planner what to do with them given the cores batch may use, has the agent do it,
//! and carries every change of a Slurm job through the door (a Slurm job is a job of origin
//! `slurm`: same table, journal and event log as lowsched's own).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::decide::slurm::plan;
use crate::model::cpuset::CpuSet;
use crate::model::credentials::Credentials;
use crate::model::exit::ExitStatus;
use crate::model::job::{JobId, JobSpec, Origin};
use crate::model::jobstate::JobState;
use crate::node::cgroup::Layout;
use crate::node::service::Enabled;
use crate::node::slurm::scontrol::JobEnd;
use crate::node::slurm::{SlurmAgent, SlurmChange, SlurmConfig};
use crate::store::eventlog::{Event, Kind};
use crate::store::journal::Owner;

use super::jobs::{Change, JobRecord};
use super::shared::{Shared, now};

/// The agent, and which lowsched job each Slurm job is.
#[derive(Debug)]
pub struct SlurmSide {
    agent: SlurmAgent,
    ids: HashMap<u64, JobId>,
    /// Slurm jobs the journal knew before this start, not yet found again.
    unsettled: Vec<u64>,
    scan_every: Duration,
    last_scan: Option<Instant>,
    last_failure: Option<String>,
}

impl SlurmSide {
    /// The Slurm side when `[slurm]` wants it here; `None` (after saying why) otherwise.
    /// `restored` are the Slurm jobs recovery found unfinished in the journal.
    pub fn start(
        cfg: &SlurmConfig,
        layout: &Layout,
        shared: &Shared,
        restored: &[JobId],
        proc_root: &Path,
    ) -> Option<Self> {
        if !cfg.wanted(proc_root) {
            return None;
        }
        let agent = match SlurmAgent::start(cfg, layout, proc_root) {
            Ok(a) => a,
            Err(e) => {
                crate::log::error(&format!("{e}; Slurm's jobs are left alone"));
                return None;
            }
        };
        let mut ids = HashMap::new();
        let mut unsettled = Vec::new();
        let table = shared.table();
        for id in restored {
            if let Some(Origin::Slurm(n)) = table.get(*id).map(|r| r.spec.origin) {
                ids.insert(n, *id);
                unsettled.push(n);
            }
        }
        drop(table);
        crate::log::info(&format!(
            "Slurm jobs as batch: node {}, {} layout, {} known from the journal",
            agent.node(),
            agent.roots().name(),
            unsettled.len()
        ));
        Some(Self {
            agent,
            ids,
            unsettled,
            scan_every: Duration::from_millis(cfg.scan_ms),
            last_scan: None,
            last_failure: None,
        })
    }

    /// One turn: look for jobs when due (or at once when `urgent`, a grow), then squeeze them
    /// off `forbidden` (the managed cores batch may not use now; `None` before the service is
    /// placed: nothing is squeezed yet) and tell the drain side whether batch has a core.
    pub fn turn(
        &mut self,
        shared: &Shared,
        forbidden: Option<CpuSet>,
        batch_has_core: bool,
        urgent: bool,
    ) {
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.scan_every);
        if due || urgent {
            let first = self.last_scan.is_none();
            self.last_scan = Some(Instant::now());
            let changes = self.agent.scan(now());
            self.record(shared, changes);
            if first {
                self.settle_restored();
            }
        }
        let Some(forbidden) = forbidden else { return };
        let actions = plan(&self.agent.views(), &forbidden);
        if !actions.is_empty() {
            let changes = self.agent.carry_out(&actions);
            self.record(shared, changes);
        }
        self.agent.update_drain(batch_has_core, now());
    }

    /// At stop: Slurm's jobs get their allocations back and the node is resumed if lowsched
    /// drained it (see `SlurmAgent::release_all`).
    pub fn stop(mut self, shared: &Shared) {
        let changes = self.agent.release_all();
        self.record(shared, changes);
    }

    /// Jobs the journal knew that the first scan did not find ended while no daemon watched:
    /// Slurm is asked how.
    fn settle_restored(&mut self) {
        let found: Vec<u64> = self.agent.jobs().map(|j| j.id).collect();
        for n in std::mem::take(&mut self.unsettled) {
            if !found.contains(&n) {
                self.agent.ask_end(n);
            }
        }
    }

    fn record(&mut self, shared: &Shared, changes: Vec<SlurmChange>) {
        for change in changes {
            self.record_one(shared, change);
        }
    }

    fn record_one(&mut self, shared: &Shared, change: SlurmChange) {
        let (n, door) = match change {
            SlurmChange::Appeared { id, uid, cores } => return self.appeared(shared, id, uid, cores),
            SlurmChange::Resized { id, cores } => (
                id,
                Change::Resized {
                    cores,
                    reason: "its Slurm allocation minus the service's cores".into(),
                },
            ),
            SlurmChange::Paused { id } => (
                id,
                Change::Paused {
                    reason: "no core of its Slurm allocation is left beside the service; suspended in Slurm"
                        .into(),
                    held: false,
                },
            ),
            SlurmChange::Resumed { id, cores } => (
                id,
                Change::Resumed {
                    cores,
                    reason: "cores of its Slurm allocation are free again".into(),
                },
            ),
            SlurmChange::HeldByOther { id, held } => (id, self.held_by_other(shared, id, held)),
            SlurmChange::Ended { id, end } => (id, finished(end)),
            SlurmChange::Failed { id, what } => return self.failed(id, &what),
            SlurmChange::Drain { drained } => {
                let text = if drained { "drain" } else { "undrain" };
                let ev = Event::new(self.agent.node().to_string(), None, Kind::Custom { text: text.into() })
                    .because(if drained {
                        "batch has had no core for the drain hold: new Slurm jobs go elsewhere"
                    } else {
                        "batch has a core again"
                    });
                shared.jobs.record_event(ev);
                return;
            }
        };
        let Some(&id) = self.ids.get(&n) else { return };
        if matches!(door, Change::Finished { .. }) {
            self.ids.remove(&n);
        }
        if let Err(e) = shared.jobs.apply(id, door, now()) {
            crate::log::error(&format!("Slurm job {n} (job {id}): {e}"));
        }
    }

    fn appeared(&mut self, shared: &Shared, n: u64, uid: Option<u32>, cores: CpuSet) {
        if let Some(&id) = self.ids.get(&n) {
            let adopt = Change::Adopted {
                paused: false,
                cores,
                pids: Vec::new(),
            };
            if let Err(e) = shared.jobs.apply(id, adopt, now()) {
                crate::log::error(&format!("Slurm job {n} (job {id}): cannot adopt it: {e}"));
            }
            return;
        }
        let uid = uid.unwrap_or(0);
        let creds = Credentials::by_uid(uid).unwrap_or_else(|_| Credentials::of_ids(uid, uid));
        let owner = Owner {
            uid,
            gid: creds.gid,
            user: creds.name.clone(),
        };
        let mut spec = JobSpec::new(vec!["slurm".into(), "job".into(), n.to_string()]);
        spec.name = format!("slurm:{n}");
        spec.origin = Origin::Slurm(n);
        let id = shared.allocate_id();
        let rec = JobRecord::new(id, spec, owner, now());
        let reason = format!("found in Slurm's cgroups on [{cores}]");
        match shared.jobs.accept_started(rec, creds, cores, reason, now()) {
            Ok(()) => {
                self.ids.insert(n, id);
            }
            Err(e) => crate::log::error(&format!("Slurm job {n}: cannot record it: {e}")),
        }
    }

    fn held_by_other(&self, shared: &Shared, n: u64, held: bool) -> Change {
        let paused = self
            .ids
            .get(&n)
            .and_then(|id| shared.table().get(*id).map(|r| r.state == JobState::Paused))
            .unwrap_or(false);
        let by = "suspended or resumed in Slurm by someone else".to_string();
        match (held, paused) {
            (true, false) => Change::Paused {
                reason: "suspended in Slurm by someone else: lowsched will not resume it".into(),
                held: true,
            },
            (false, true) => {
                let cores = self
                    .agent
                    .jobs()
                    .find(|j| j.id == n)
                    .map_or_else(CpuSet::new, |j| j.cores);
                Change::Resumed {
                    cores,
                    reason: "resumed in Slurm by someone else".into(),
                }
            }
            _ => Change::Held { held, by },
        }
    }

    /// Logs a failure once until a different one comes (slurmctld down fails every poll).
    fn failed(&mut self, id: Option<u64>, what: &str) {
        let text = match id {
            Some(n) => format!("Slurm job {n}: {what}"),
            None => format!("Slurm: {what}"),
        };
        if self.last_failure.as_deref() != Some(text.as_str()) {
            crate::log::warn(&format!("{text}; the service stays protected"));
            self.last_failure = Some(text);
        }
    }
}

/// The door's record of a Slurm job's end, from Slurm's own record when it has one.
fn finished(end: Result<JobEnd, String>) -> Change {
    match end {
        Ok(e) => {
            let exit = match (e.exit_code, e.signal) {
                (_, Some(s)) => Some(ExitStatus::Signaled(s)),
                (Some(c), None) => Some(ExitStatus::Exited(c)),
                (None, None) => None,
            };
            let state = match e.state.as_str() {
                "COMPLETED" | "COMPLETING" if exit == Some(ExitStatus::Exited(0)) => {
                    JobState::Succeeded
                }
                "CANCELLED" => JobState::Cancelled,
                "TIMEOUT" => JobState::Timeout,
                _ => JobState::Failed,
            };
            Change::Finished {
                state,
                exit,
                reason: Some(format!("Slurm: {}", e.state)),
            }
        }
        Err(why) => Change::Finished {
            state: JobState::Failed,
            exit: None,
            reason: Some(format!("ended in Slurm; how is not known: {why}")),
        },
    }
}

/// How often `enabled = "auto"` looks again for a slurmd that was not running at start.
const AUTO_RETRY: Duration = Duration::from_secs(5);

/// The Slurm side, or, with `enabled = "auto"` and no slurmd yet, the wait for one: at boot
/// lowsched may start before slurmd (or slurmd may fail and be started by hand later), and
/// `auto` must not mean "only if slurmd won the race".
#[derive(Debug)]
pub struct SlurmSlot {
    side: Option<SlurmSide>,
    waiting: Option<Waiting>,
}

/// What starting the side later needs.
#[derive(Debug)]
struct Waiting {
    cfg: SlurmConfig,
    layout: Layout,
    restored: Vec<JobId>,
    proc_root: std::path::PathBuf,
    next_try: Instant,
}

impl Waiting {
    /// Whether slurmd runs now; looked at once per `AUTO_RETRY`.
    fn slurmd_appeared(&mut self, now: Instant) -> bool {
        if now < self.next_try {
            return false;
        }
        self.next_try = now + AUTO_RETRY;
        crate::node::slurm::slurmd_running(&self.proc_root)
    }
}

impl SlurmSlot {
    /// The side if `[slurm]` wants it now; with `auto` and no slurmd, a wait for one.
    pub fn start(
        cfg: &SlurmConfig,
        layout: Option<Layout>,
        shared: &Shared,
        restored: &[JobId],
        proc_root: &Path,
    ) -> Self {
        if cfg.enabled == Enabled::No && crate::node::slurm::slurmd_running(proc_root) {
            crate::log::warn(
                "slurmd runs on this node but [slurm] enabled = \"no\": Slurm's jobs may run \
                 on the service's cores unchecked; enabled = \"auto\" makes lowsched their node agent",
            );
        }
        let Some(layout) = layout else {
            return Self::off();
        };
        let side = SlurmSide::start(cfg, &layout, shared, restored, proc_root);
        let waiting = (side.is_none()
            && cfg.enabled == Enabled::Auto
            && !crate::node::slurm::slurmd_running(proc_root))
        .then(|| {
            crate::log::info("Slurm jobs: no slurmd on this node yet; looking again every 5 s");
            Waiting {
                cfg: cfg.clone(),
                layout,
                restored: restored.to_vec(),
                proc_root: proc_root.to_path_buf(),
                next_try: Instant::now() + AUTO_RETRY,
            }
        });
        Self { side, waiting }
    }

    pub fn off() -> Self {
        Self {
            side: None,
            waiting: None,
        }
    }

    /// The side, started first if slurmd has appeared since.
    pub fn side(&mut self, shared: &Shared) -> Option<&mut SlurmSide> {
        if self.side.is_none()
            && let Some(w) = self.waiting.as_mut()
            && w.slurmd_appeared(Instant::now())
        {
            let w = self.waiting.take()?;
            crate::log::info("Slurm jobs: slurmd runs now");
            self.side = SlurmSide::start(&w.cfg, &w.layout, shared, &w.restored, &w.proc_root);
        }
        self.side.as_mut()
    }

    pub fn take(&mut self) -> Option<SlurmSide> {
        self.waiting = None;
        self.side.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(state: &str, code: Option<i32>, signal: Option<i32>) -> Result<JobEnd, String> {
        Ok(JobEnd {
            state: state.into(),
            exit_code: code,
            signal,
        })
    }

    fn state_of(c: &Change) -> JobState {
        match c {
            Change::Finished { state, .. } => *state,
            other => panic!("not an end: {other:?}"),
        }
    }

    #[test]
    fn slurms_record_decides_how_a_job_ended() {
        assert_eq!(
            state_of(&finished(end("COMPLETED", Some(0), None))),
            JobState::Succeeded
        );
        assert_eq!(
            state_of(&finished(end("COMPLETING", Some(0), None))),
            JobState::Succeeded
        );
        assert_eq!(
            state_of(&finished(end("COMPLETED", Some(3), None))),
            JobState::Failed
        );
        assert_eq!(
            state_of(&finished(end("FAILED", Some(1), None))),
            JobState::Failed
        );
        assert_eq!(
            state_of(&finished(end("TIMEOUT", Some(0), Some(15)))),
            JobState::Timeout
        );
        assert_eq!(
            state_of(&finished(end("CANCELLED", Some(0), Some(15)))),
            JobState::Cancelled
        );
        let c = finished(end("COMPLETED", Some(0), None));
        assert!(matches!(
            c,
            Change::Finished {
                exit: Some(ExitStatus::Exited(0)),
                ..
            }
        ));
    }

    #[test]
    fn an_end_slurm_cannot_tell_is_a_failure_that_says_why() {
        let c = finished(Err("slurmctld down".into()));
        match c {
            Change::Finished {
                state,
                exit,
                reason,
            } => {
                assert_eq!(state, JobState::Failed);
                assert_eq!(exit, None);
                assert!(reason.unwrap().contains("slurmctld down"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auto_looks_again_for_a_slurmd_that_starts_later() {
        let t = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut w = Waiting {
            cfg: SlurmConfig::default(),
            layout: Layout::Unified {
                mount: crate::node::cgroup::CgroupMount {
                    point: t.path().join("cgroup"),
                    root: "/".into(),
                    controllers: None,
                },
            },
            restored: Vec::new(),
            proc_root: t.path().to_path_buf(),
            next_try: start + AUTO_RETRY,
        };
        assert!(!w.slurmd_appeared(start + AUTO_RETRY), "no slurmd yet");
        std::fs::create_dir_all(t.path().join("77")).unwrap();
        std::fs::write(t.path().join("77/comm"), "slurmd\n").unwrap();
        assert!(
            !w.slurmd_appeared(start + AUTO_RETRY + Duration::from_secs(1)),
            "not looked at again before AUTO_RETRY"
        );
        assert!(w.slurmd_appeared(start + AUTO_RETRY * 2));
    }
}
