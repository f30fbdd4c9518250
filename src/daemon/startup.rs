//! The daemon's start-up steps: subsystem settings built from the config (`From<&Config>`),
//! the node's inventory, the cgroup root and the actuator, and the job table rebuilt from the
//! journal and the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::cpuset::CpuSet;
use crate::model::inventory::Inventory;
use crate::model::jobstate::JobState;
use crate::node::actuator::{ActuationError, Actuator, ActuatorConfig};
use crate::node::cgroup::{Layout, RootName, TreeConfig};
use crate::node::pmqos::ResumeLatency;
use crate::node::service::Enabled;
use crate::sense::latency::Slo;
use crate::sense::probe::ProbeConfig;
use crate::sense::sampler::SamplerConfig;

use super::DaemonError;
use super::config::{self, Config};
use super::jobs::{Change, Jobs};
use super::recovery::{self, Recovered};
use super::server::Limits;
use super::shared::now;

impl From<&Config> for Limits {
    fn from(cfg: &Config) -> Self {
        Limits {
            max_connections: cfg.server.max_connections,
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
    replay: &crate::store::journal::Replay,
    actuator: &mut Actuator,
    jobs: &Jobs,
    policy: &dyn crate::decide::policy::Policy,
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
        "recovered {} jobs: {} pending, {} adopted, {} ended while down, {} lost, {} unknown killed",
        jobs.table().len(),
        recovered.pending.len(),
        recovered.adopted,
        recovered.ended_while_down.len(),
        recovered.lost,
        recovered.unknown_killed
    ));
    Ok(recovered)
}
