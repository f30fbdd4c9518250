//! The `lowsched daemon`: wires samplers → state → policy → commands → actuator into one process,
//! and serves the socket.
//!
//! Threads: the control loop (owns the actuator and the SLO controller), the socket acceptor
//! and one thread per connection, one sampler per core, the latency probe, the exit watcher,
//! and a signal thread that turns SIGTERM/SIGINT into an orderly stop. On stop the daemon stops
//! accepting, logs `end scheduler`, compacts the journal and exits 0; jobs keep running and the
//! next daemon adopts them.

pub mod config;
pub mod control;
pub mod handler;
pub mod recovery;
pub mod relax;
mod requests;
pub mod sdnotify;
pub mod server;
pub mod shared;
pub mod slo;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::daemon::sdnotify::{Notifier, watchdog_interval};
use crate::decide::queue::JobQueue;
use crate::model::cpuset::CpuSet;
use crate::model::inventory::Inventory;
use crate::node::actuator::{Actuator, ActuatorConfig};
use crate::node::cgroup::{Layout, Mode, RootName, TreeConfig};
use crate::node::pmqos::ResumeLatency;
use crate::sense::doorbell::{DISARMED, Doorbell, Tripwire};
use crate::sense::probe::ProbeConfig;
use crate::sense::sampler::{SamplerConfig, SamplerSet};
use crate::store::eventlog::EventLog;
use crate::store::journal::Journal;

use config::{Config, Overrides};
use control::Control;
use server::{Limits, Server};
use shared::Shared;
use table::JobTable;

/// Why the daemon could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("lowsched daemon must run as root: it creates cgroups and runs jobs as their users")]
    NotRoot,
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::store::journal::JournalError),
    #[error(transparent)]
    EventLog(#[from] crate::store::eventlog::EventLogError),
    #[error("cannot read the node's inventory: {0}")]
    Inventory(String),
    #[error("bad policy: {0}")]
    Policy(String),
    #[error(transparent)]
    Actuation(#[from] crate::node::actuator::ActuationError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot start the samplers: {0}")]
    Sampler(String),
    #[error("protected service: {0}")]
    Service(String),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot block termination signals: {0}")]
    Signals(nix::errno::Errno),
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
fn inventory(cfg: &Config) -> Result<Inventory, DaemonError> {
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
fn resume_latency(cfg: &Config) -> Option<ResumeLatency> {
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

/// The signals that stop the daemon (SIGHUP is taken and ignored).
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Starts the thread that turns SIGTERM/SIGINT into a stop. The signals must already be
/// blocked in every thread ([`run`] blocks them before starting any), so only `sigwait` here
/// receives them.
fn signal_thread(
    shared: Arc<Shared>,
    stop_server: Arc<AtomicBool>,
    socket: PathBuf,
) -> Result<(), DaemonError> {
    let set = stop_signals();
    std::thread::Builder::new()
        .name("lowsched-signals".into())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(Signal::SIGHUP) => crate::log::info(
                        "SIGHUP: nothing to reload; restart to apply config changes",
                    ),
                    Ok(sig) => {
                        crate::log::notice(&format!("{sig}: stopping (jobs keep running)"));
                        shared.stopping.store(true, Ordering::Relaxed);
                        stop_server.store(true, Ordering::Relaxed);
                        // Wakes the accept thread out of its poll to see the flag.
                        let _ = std::os::unix::net::UnixStream::connect(&socket);
                        shared.wake();
                        shared.changed.notify_all();
                        return;
                    }
                    Err(_) => continue,
                }
            }
        })
        .map(|_| ())
        .map_err(DaemonError::Thread)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(o: &Overrides) -> Result<(), DaemonError> {
    let (cfg, used) = Config::load(o)?;
    crate::log::set_level(
        crate::log::parse_level(&cfg.log_level).unwrap_or(crate::log::Level::Info),
    );
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    // Before any thread starts, so every thread inherits the mask and only the signal
    // thread's sigwait sees SIGTERM/SIGINT.
    stop_signals()
        .thread_block()
        .map_err(DaemonError::Signals)?;
    let notifier = Notifier::from_env();
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| DaemonError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
    match &used {
        Some(p) => crate::log::info(&format!("config {}", p.display())),
        None => crate::log::info("no config file: built-in defaults"),
    }

    let (journal, replay) = Journal::open(&cfg.state_dir)?;
    for (line, why) in &replay.corrupt {
        crate::log::error(&format!(
            "journal line {line} is corrupt and was skipped: {why}"
        ));
    }
    let events = EventLog::open(&cfg.state_dir)?;
    let node = inventory(&cfg)?;
    let policy_cfg = cfg.policy.policy_config().map_err(DaemonError::Policy)?;
    let policy = crate::decide::policy::by_name(&cfg.policy.name, &policy_cfg)
        .map_err(|e| DaemonError::Policy(e.to_string()))?;

    let layout = Layout::detect(Path::new("/proc"))
        .map_err(|e| DaemonError::Actuation(crate::node::actuator::ActuationError::Tree(e)))?;
    let mut acfg = ActuatorConfig::new(&cfg.state_dir);
    acfg.tree = TreeConfig {
        root: cgroup_root(&cfg.cgroup_root, &layout),
        ..TreeConfig::default()
    };
    acfg.layout = Some(layout);
    acfg.idle_priority = cfg.batch.idle_priority;
    let (mut actuator, exits) = Actuator::open(&acfg)?;
    actuator.enter_daemon_group()?;
    let mode = actuator.tree().mode();
    crate::log::info(&format!(
        "cgroup root {} ({mode:?}), cores [{}], {} memory, {} GPUs, policy {}",
        actuator.tree().root().display(),
        node.cores,
        node.memory,
        node.gpus.len(),
        policy.name()
    ));

    // Rebuild the job table: journal + what the node says.
    let adoption = actuator.adopt()?;
    let mut table = JobTable::default();
    let recovered = recovery::recover(
        &replay,
        adoption,
        &mut actuator,
        &journal,
        &events,
        &mut table,
    );
    // Adopted jobs whose cpuset was reset (a systemd restart relaxed the subtree) wait paused
    // until the policy gives them cores again; memory limits are put back.
    let mut repause = Vec::new();
    for rec in table.active() {
        if let Some(m) = rec
            .spec
            .memory
            .filter(|_| actuator.tree().memory_enforced())
        {
            if let Err(e) = actuator.limit_memory(rec.id, m.get()) {
                crate::log::warn(&format!(
                    "job {}: cannot restore its memory limit: {e}",
                    rec.id
                ));
            }
        }
        if rec.state == crate::model::jobstate::JobState::Running
            && (rec.cores.is_empty() || !rec.cores.is_subset(&node.cores))
        {
            repause.push(rec.id);
        }
    }
    for id in repause {
        if actuator.pause(id).is_ok() {
            let _ = table.transition(id, crate::model::jobstate::JobState::Paused, shared::now());
        }
    }
    crate::log::info(&format!(
        "recovered {} jobs: {} pending, {} adopted, {} ended while down, {} lost, {} unknown killed",
        table.len(),
        recovered.pending.len(),
        recovered.adopted,
        recovered.ended_while_down.len(),
        recovered.lost,
        recovered.unknown_killed
    ));

    let service_on = cfg.service.enabled != crate::node::service::Enabled::No;
    let capacity = if service_on {
        node.cores.len().saturating_sub(cfg.service.min_cores)
    } else {
        node.cores.len()
    };
    let (ops_tx, ops_rx) = crossbeam_channel::unbounded();
    let queue = JobQueue::new();
    let shared = Arc::new(Shared {
        table: Mutex::new(table),
        changed: Condvar::new(),
        queue,
        journal,
        events,
        policy,
        node: node.clone(),
        batch_capacity: AtomicUsize::new(capacity.max(1)),
        next_id: AtomicU64::new(replay.next_id.max(1)),
        credentials: Mutex::new(HashMap::new()),
        ops: ops_tx,
        probe: Arc::new(Mutex::new(None)),
        stopping: AtomicBool::new(false),
    });
    {
        let table = shared.table();
        for id in &recovered.pending {
            if let Some(rec) = table.get(*id) {
                let rank = shared.policy.rank(&rec.view());
                shared.queue.push(*id, (), |_, _, _| rank);
            }
        }
    }

    let server = Server::bind(
        &cfg.socket,
        Limits {
            max_connections: cfg.server.max_connections,
            idle_timeout: Duration::from_millis(cfg.server.idle_timeout_ms),
            ..Limits::default()
        },
    )?;
    signal_thread(shared.clone(), server.stop_flag(), cfg.socket.clone())?;

    // Sensors wake the control loop when a reading crosses a grow threshold.
    let (bell, bell_rx) = Doorbell::new();
    let cpu_alarm = Tripwire::new(bell.clone(), DISARMED, slo::RING_SPACING);
    let sampler = SamplerSet::start(SamplerConfig {
        cores: Some(node.cores),
        period: Duration::from_millis(cfg.sampler.period_ms),
        unwatched_period: Duration::from_millis(cfg.sampler.batch_period_ms),
        smoothing: Duration::from_millis(cfg.sampler.smoothing_ms),
        service_alarm: service_on.then(|| cpu_alarm.clone()),
        ..SamplerConfig::default()
    })
    .map_err(|e| DaemonError::Sampler(e.to_string()))?;
    let slo = if service_on {
        let unified = match actuator.tree().layout() {
            Layout::Unified { mount } => Some(mount.point.clone()),
            Layout::Hybrid { unified, .. } => Some(unified.point.clone()),
            Layout::Legacy { .. } => None,
        };
        let setup = slo::SloSetup {
            cfg: cfg.service.clone(),
            controller: cfg.controller.clone(),
            slo_p95_us: cfg.slo.p95_us,
            probe: ProbeConfig {
                server: cfg.service.address.clone(),
                rate: cfg.probe.rate,
                calm_rate: cfg.probe.calm_rate,
                calm_below_us: (cfg.probe.calm_p95_frac * cfg.slo.p95_us as f64) as u64,
                window: Duration::from_millis(cfg.slo.window_ms),
                slo: crate::sense::latency::Slo {
                    limit_us: cfg.slo.p95_us,
                    ..crate::sense::latency::Slo::default()
                },
                fast_horizon: Duration::from_millis(cfg.probe.fast_horizon_ms),
                realtime: (cfg.probe.realtime_priority > 0).then_some(cfg.probe.realtime_priority),
                ..ProbeConfig::default()
            },
            managed: node.cores,
            proc_root: PathBuf::from("/proc"),
            service_dir: (mode == Mode::Unified).then(|| actuator.tree().root().join("service")),
            unified,
            group: actuator.service()?,
            may_move: mode == Mode::Unified,
            sampler: sampler.handle(),
            probe_slot: shared.probe.clone(),
            cpu_alarm: Some(cpu_alarm),
            bell: Some(bell),
            pm_qos: resume_latency(&cfg),
            shared: Some(shared.clone()),
        };
        Some(slo::SloLoop::new(setup).map_err(DaemonError::Service)?)
    } else {
        None
    };

    let serve_shared = shared.clone();
    let handler = Arc::new(handler::RequestHandler::new(serve_shared));
    let server = Arc::new(server);
    let serve = {
        let server = server.clone();
        std::thread::Builder::new()
            .name("lowsched-accept".into())
            .spawn(move || server.serve(handler))
            .map_err(DaemonError::Thread)?
    };

    let mut control = Control {
        shared: shared.clone(),
        actuator,
        exits,
        ops: ops_rx,
        bell: bell_rx,
        slo,
        managed: node.cores,
        batch_cores: if service_on {
            CpuSet::new()
        } else {
            node.cores
        },
        service_cores: CpuSet::new(),
        policy_tick: Duration::from_millis(cfg.policy.tick_ms),
        notifier,
        watchdog: watchdog_interval(),
        compact_after: cfg.journal.compact_after,
        keep_finished: cfg.journal.keep_finished,
        cancelling: HashSet::new(),
        dirty: true,
    };
    // Exits that happened while no daemon watched go through the normal exit path.
    for ev in recovered.ended_while_down {
        control.exit(ev);
    }
    // The first allocation (service found and placed, adopted jobs given cores, what fits
    // started), so READY=1 comes with a status that says where things run.
    control.prime();
    let ready = format!(
        "listening on {}; {}",
        cfg.socket.display(),
        control.status_line()
    );
    crate::log::notice(&format!("ready: {ready}"));
    if let Err(e) = control.notifier.ready(&ready) {
        crate::log::warn(&e.to_string());
    }
    let notifier = Notifier::from_env();
    control.run();

    let _ = notifier.stopping();
    let _ = serve.join();
    sampler.stop();
    shared.events.close();
    if let Err(e) = shared.journal.compact(cfg.journal.keep_finished) {
        crate::log::error(&format!("journal compaction at exit failed: {e}"));
    }
    crate::log::notice("stopped");
    Ok(())
}
