//! The daemon's start-up steps: subsystem settings built from the config (`From<&Config>`),
//! the node's inventory, the cgroup root and the actuator, and the job table rebuilt from the
//! journal and the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::decide::policy::Policy;
use crate::decide::policy::fit::ServiceClaim;
use crate::model::cpuset::CpuSet;
use crate::model::inventory::Inventory;
use crate::model::jobstate::JobState;
use crate::node::actuator::{ActuationError, Actuator, ActuatorConfig};
use crate::node::cgroup::{Layout, Mode, RootName, TreeConfig};
use crate::node::pmqos::ResumeLatency;
use crate::node::service::Enabled;
use crate::sense::doorbell::{DISARMED, Doorbell, Tripwire};
use crate::sense::latency::Slo;
use crate::sense::probe::ProbeConfig;
use crate::sense::sampler::{SamplerConfig, SamplerSet};
use crate::store::eventlog::EventLog;
use crate::store::journal::{Journal, Replay};

use super::DaemonError;
use super::config::{self, Config};
use super::jobs::{Change, Jobs};
use super::recovery::{self, Recovered};
use super::server::Limits;
use super::shared::{Shared, now};
use super::slo::{self, SloLoop, SloSetup};

impl From<&Config> for Limits {
    fn from(cfg: &Config) -> Self {
        Limits {
            max_connections: cfg.server.max_connections,
            max_per_user: cfg.server.max_connections_per_user,
            idle_timeout: Duration::from_millis(cfg.server.idle_timeout_ms),
            ..Limits::default()
        }
    }
}

impl From<&Config> for ProbeConfig {
    fn from(cfg: &Config) -> Self {
        ProbeConfig {
            server: cfg.service.address.clone(),
            rate: cfg.probe.rate,
            calm_rate: cfg.probe.calm_rate,
            calm_below_us: (cfg.probe.calm_p95_frac * cfg.slo.p95_us as f64) as u64,
            window: Duration::from_millis(cfg.slo.window_ms),
            slo: Slo {
                limit_us: cfg.slo.p95_us,
                ..Slo::default()
            },
            fast_horizon: Duration::from_millis(cfg.probe.fast_horizon_ms),
            realtime: (cfg.probe.realtime_priority > 0).then_some(cfg.probe.realtime_priority),
            ..ProbeConfig::default()
        }
    }
}

/// The samplers' periods; the cores and the service's alarm are the node's and the loop's.
impl From<&Config> for SamplerConfig {
    fn from(cfg: &Config) -> Self {
        SamplerConfig {
            period: Duration::from_millis(cfg.sampler.period_ms),
            unwatched_period: Duration::from_millis(cfg.sampler.batch_period_ms),
            smoothing: Duration::from_millis(cfg.sampler.smoothing_ms),
            ..SamplerConfig::default()
        }
    }
}

/// Where jobs run and how; the host's cgroup layout is detected by [`actuator`].
impl From<&Config> for ActuatorConfig {
    fn from(cfg: &Config) -> Self {
        let mut a = ActuatorConfig::new(&cfg.state_dir);
        a.idle_priority = cfg.batch.idle_priority;
        a
    }
}

/// Whether a protected service is configured (it may still be absent).
pub fn service_on(cfg: &Config) -> bool {
    cfg.service.enabled != Enabled::No
}

/// Under systemd with `Delegate=`, on pure cgroup v2, the unit's own group is lowsched's root:
/// run by systemd (`$INVOCATION_ID`), in a `.service` group, and delegated. systemd 251+ marks
/// every unit's group with `user.invocation_id` and a delegated one with `trusted.delegate`
/// (and `user.delegate`); where those marks exist they decide, so a `lowsched daemon` started
/// from some other service does not take over that service's group. Older systemd sets no
/// `user.` marks: there a `.service` group is taken as delegated.
fn cgroup_root(name: &str, layout: &Layout) -> RootName {
    let named = || RootName::Named(name.to_string());
    if name != config::DEFAULT_CGROUP_ROOT || std::env::var_os("INVOCATION_ID").is_none() {
        return named();
    }
    let Layout::Unified { mount } = layout else {
        return named();
    };
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|g| g.trim_end().to_string())
        });
    let Some(dir) = own
        .filter(|g| g.ends_with(".service"))
        .and_then(|g| mount.dir_of(&g))
    else {
        return named();
    };
    if delegation_marked(&dir) == Some(false) {
        crate::log::notice(&format!(
            "{} is not delegated (no Delegate= in its unit): using {}/{name} as if run by hand",
            dir.display(),
            mount.point.display()
        ));
        return named();
    }
    RootName::Own
}

/// Whether systemd marked the cgroup `dir` as delegated; `None` where it sets no marks at all.
fn delegation_marked(dir: &Path) -> Option<bool> {
    let xattr = |name: &str| crate::sys::xattr::get(dir, name).ok().flatten();
    let one = |name: &str| xattr(name).is_some_and(|v| v.trim_ascii() == b"1");
    if one("trusted.delegate") || one("user.delegate") {
        return Some(true);
    }
    xattr("user.invocation_id").map(|_| false)
}

/// The node's inventory: detected, then the config's overrides.
pub fn inventory(cfg: &Config) -> Result<Inventory, DaemonError> {
    let mut node = crate::model::inventory::detect(Path::new("/sys"), Path::new("/proc"))
        .map_err(|e| DaemonError::Inventory(e.to_string()))?;
    if let Some(cores) = &cfg.node.cores {
        let want: CpuSet = cores
            .parse()
            .map_err(|e| DaemonError::Inventory(format!("node.cores: {e}")))?;
        let missing = want.difference(&node.cores);
        if !missing.is_empty() {
            return Err(DaemonError::Inventory(format!(
                "node.cores names CPUs [{missing}] that are not online"
            )));
        }
        node.cores = want;
    }
    if let Some(m) = cfg.node.memory {
        node.memory = m;
    }
    if let Some(g) = &cfg.node.gpus {
        node.gpus = g.clone();
    }
    Ok(node)
}

/// The service cores' idle-state limit, unless configured off. A saved-limits file that cannot
/// be read turns it off for this run (with the file named), rather than guess what to restore.
pub fn resume_latency(cfg: &Config) -> Option<ResumeLatency> {
    let limit = u32::try_from(cfg.service.resume_latency_us).ok()?;
    match ResumeLatency::open("/sys", &cfg.state_dir, limit) {
        Ok(q) => Some(q),
        Err(e) => {
            crate::log::error(&format!(
                "service cores keep their idle states: {e}; remove the file once the cores' \
                 power/pm_qos_resume_latency_us values are checked"
            ));
            None
        }
    }
}

/// The actuator on the host's cgroup layout, with the daemon in its own group.
pub fn actuator(
    cfg: &Config,
    node: &Inventory,
) -> Result<
    (
        Actuator,
        crossbeam_channel::Receiver<crate::model::exit::ExitEvent>,
    ),
    DaemonError,
> {
    let layout = Layout::detect(Path::new("/proc"))
        .map_err(|e| DaemonError::Actuation(ActuationError::Tree(e)))?;
    let mut acfg = ActuatorConfig::from(cfg);
    acfg.tree = TreeConfig {
        root: cgroup_root(&cfg.cgroup_root, &layout),
        ..TreeConfig::default()
    };
    acfg.layout = Some(layout);
    jobs_config(&mut acfg, cfg, node)?;
    let (actuator, exits) = Actuator::open(&acfg)?;
    actuator.enter_daemon_group()?;
    Ok((actuator, exits))
}

/// The unified mount the service's cgroup paths are under, where the host has one.
pub fn unified_mount(actuator: &Actuator) -> Option<PathBuf> {
    match actuator.tree().layout() {
        Layout::Unified { mount } => Some(mount.point.clone()),
        Layout::Hybrid { unified, .. } => Some(unified.point.clone()),
        Layout::Legacy { .. } => None,
    }
}

/// Rebuilds the job table from the journal and the node. Adopted jobs get their memory
/// limits back; those whose cpuset was reset (a systemd restart relaxed the subtree) wait
/// paused until the policy gives them cores again.
pub fn recover(
    replay: &Replay,
    actuator: &mut Actuator,
    jobs: &Jobs,
    policy: &dyn Policy,
    node: &Inventory,
) -> Result<Recovered, DaemonError> {
    let adoption = actuator.adopt()?;
    let recovered = recovery::recover(replay, adoption, actuator, jobs, |r| policy.rank(&r.view()));
    let active: Vec<_> = jobs
        .table()
        .active()
        .map(|r| (r.id, r.state, r.cores, r.spec.memory))
        .collect();
    for (id, state, cores, memory) in active {
        if let Some(m) = memory.filter(|_| actuator.tree().memory_enforced()) {
            if let Err(e) = actuator.limit_memory(id, m.get()) {
                crate::log::warn(&format!("job {id}: cannot restore its memory limit: {e}"));
            }
        }
        let reset = cores.is_empty() || !cores.is_subset(&node.cores);
        if state == JobState::Running && reset && actuator.pause(id).is_ok() {
            let change = Change::Paused {
                reason: "its cores were reset while no daemon ran".into(),
                held: false,
            };
            if let Err(e) = jobs.apply(id, change, now()) {
                crate::log::error(&format!("job {id}: {e}"));
            }
        }
    }
    crate::log::info(&format!(
        "recovered {} jobs: {} pending, {} adopted, {} ended while down, {} never launched (pending again), {} unknown killed",
        jobs.table().len(),
        recovered.pending.len(),
        recovered.adopted,
        recovered.ended_while_down.len(),
        recovered.unlaunched,
        recovered.unknown_killed
    ));
    Ok(recovered)
}

/// The journal (its corrupt lines reported) and the event log behind the door.
pub fn open_store(cfg: &Config) -> Result<(Jobs, Replay), DaemonError> {
    let (journal, replay) = Journal::open(&cfg.state_dir)?;
    for (line, why) in &replay.corrupt {
        crate::log::error(&format!(
            "journal line {line} is corrupt and was skipped: {why}"
        ));
    }
    let events = EventLog::open_with_group(&cfg.state_dir, super::server::socket_gid())?;
    let jobs = Jobs::new(journal, events);
    jobs.keep_finished(cfg.journal.keep_finished);
    Ok((jobs, replay))
}

/// The configured scheduling policy.
pub fn policy(cfg: &Config) -> Result<Box<dyn Policy>, DaemonError> {
    let policy_cfg = cfg.policy.policy_config().map_err(DaemonError::Policy)?;
    crate::decide::policy::by_name(&cfg.policy.name, &policy_cfg)
        .map_err(|e| DaemonError::Policy(e.to_string()))
}

/// How the configured service may claim cores, for the submit-time fit check (see
/// [`crate::decide::policy::fit`] for what "can never fit" means with each setting).
pub fn service_claim(cfg: &Config) -> ServiceClaim {
    match cfg.service.enabled {
        Enabled::No => ServiceClaim::None,
        Enabled::Auto => ServiceClaim::Optional,
        Enabled::Yes => ServiceClaim::Always {
            min_cores: cfg.service.min_cores,
        },
    }
}

/// The sensors: per-core samplers, and with a protected service its SLO loop (probe,
/// controller, placement); both ring `bell` when a reading crosses a grow threshold.
#[derive(Debug)]
pub struct Sensors {
    pub sampler: SamplerSet,
    pub slo: Option<SloLoop>,
    pub bell: crossbeam_channel::Receiver<()>,
}

pub fn sense(
    cfg: &Config,
    node: &Inventory,
    actuator: &Actuator,
    shared: &std::sync::Arc<Shared>,
) -> Result<Sensors, DaemonError> {
    let service_on = service_on(cfg);
    let (bell, bell_rx) = Doorbell::new();
    let cpu_alarm = Tripwire::new(bell.clone(), DISARMED, slo::RING_SPACING);
    let sampler = SamplerSet::start(SamplerConfig {
        cores: Some(node.cores),
        service_alarm: service_on.then(|| cpu_alarm.clone()),
        ..SamplerConfig::from(cfg)
    })
    .map_err(|e| DaemonError::Sampler(e.to_string()))?;
    if !service_on {
        return Ok(Sensors {
            sampler,
            slo: None,
            bell: bell_rx,
        });
    }
    let unified_tree = actuator.tree().mode() == Mode::Unified;
    let setup = SloSetup {
        cfg: cfg.service.clone(),
        controller: cfg.controller.clone(),
        slo_p95_us: cfg.slo.p95_us,
        probe: ProbeConfig::from(cfg),
        managed: node.cores,
        proc_root: PathBuf::from("/proc"),
        service_dir: unified_tree.then(|| actuator.tree().root().join("service")),
        unified: unified_mount(actuator),
        group: actuator.service()?,
        may_move: unified_tree,
        sampler: sampler.handle(),
        probe_slot: shared.probe.clone(),
        cpu_alarm: Some(cpu_alarm),
        bell: Some(bell),
        pm_qos: resume_latency(cfg),
        shared: Some(shared.clone()),
    };
    let slo = SloLoop::new(setup).map_err(DaemonError::Service)?;
    Ok(Sensors {
        sampler,
        slo: Some(slo),
        bell: bell_rx,
    })
}

/// What every job gets: limits, caps, where its default output goes.
fn jobs_config(
    acfg: &mut ActuatorConfig,
    cfg: &Config,
    node: &Inventory,
) -> Result<(), DaemonError> {
    acfg.limits = cfg.jobs.limits().map_err(DaemonError::Policy)?;
    acfg.pids_max = Some(cfg.jobs.pids_max).filter(|&n| n > 0);
    acfg.memory_max = Some(
        cfg.jobs
            .memory_max
            .map_or(node.memory.get() / 10 * 9, |b| b.get()),
    );
    acfg.output_dir = cfg.jobs.output_dir.clone();
    Ok(())
}
