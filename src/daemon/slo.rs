//! The protected service in the daemon: finds it (and finds it again after a restart), confines
//! it to the cores the SLO controller gives it, and turns the samplers' and the probe's readings
//! into the controller's inputs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::decide::controller::record::{Header, Turn};
use crate::decide::controller::{Allocation, Change, Controller, ControllerConfig, Inputs};
use crate::model::cpuset::CpuSet;
use crate::model::jobstate::JobState;
use crate::node::cgroup::ServiceGroup;
use crate::node::pmqos::ResumeLatency;
use crate::node::service::{self, Found, ServiceConfig};
use crate::sense::doorbell::{DISARMED, Doorbell, Tripwire};
use crate::sense::latency::NO_ANSWER_US;
use crate::sense::probe::{Probe, ProbeConfig, ProbeHandle, ProbeStatus};
use crate::sense::sampler::{SamplerHandle, ServiceSource};
use crate::store::eventlog::{Event, Kind};
use crate::sys::clock::monotonic_ns;

use super::shared::Shared;

/// A sensor over its grow threshold wakes the control loop at most this often.
pub const RING_SPACING: Duration = Duration::from_millis(10);

/// Latency the controller sees for requests that failed or never came back: far over any SLO.
const FAILED_US: f64 = 1_000_000.0;

/// One controller turn's outcome.
#[derive(Debug)]
pub struct Step {
    pub alloc: Allocation,
    pub change: Option<Change>,
    /// The readings behind it, for the event log.
    pub inputs: serde_json::Value,
}

/// Where the service's processes are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// In lowsched's `service/` cgroup: one cpuset write moves it.
    Group,
    /// Thread affinity of every process.
    Affinity,
}

#[derive(Debug)]
pub struct SloLoop {
    cfg: ServiceConfig,
    proc_root: PathBuf,
    /// The unified mount (for `service.cgroup` paths) and lowsched's `service/` group there.
    unified: Option<PathBuf>,
    service_dir: Option<PathBuf>,
    group: ServiceGroup,
    /// Pure v2: the service may be moved into `service/`.
    may_move: bool,
    controller: Controller,
    sampler: SamplerHandle,
    probe_cfg: ProbeConfig,
    probe: Option<Probe>,
    found: Option<(Found, Placement)>,
    last_scan: Instant,
    applied: Option<Allocation>,
    /// The rung in force while no service has been found: batch gets every core.
    idle: Allocation,
    /// The last discovery problem reported.
    last_error: Option<String>,
    /// Where `lowsched stats` reads from, set once the probe starts.
    pub probe_slot: std::sync::Arc<std::sync::Mutex<Option<ProbeHandle>>>,
    /// Early wake-ups: the service sampler's (milli-cores) and the probe's (recent p95, µs).
    cpu_alarm: Option<Tripwire>,
    latency_alarm: Option<Tripwire>,
    /// Keeps the service's cores out of slow idle states; `None` when off or unavailable.
    pm_qos: Option<ResumeLatency>,
    /// The event log (the controller's notes and, with `record_turns`, every turn) and the
    /// job table (the batch jobs that could share the service's cores).
    shared: Option<Arc<Shared>>,
}

/// Everything [`SloLoop::new`] needs.
#[derive(Debug)]
pub struct SloSetup {
    pub cfg: ServiceConfig,
    pub controller: ControllerConfig,
    pub slo_p95_us: u64,
    pub probe: ProbeConfig,
    pub managed: CpuSet,
    pub proc_root: PathBuf,
    pub unified: Option<PathBuf>,
    pub service_dir: Option<PathBuf>,
    pub group: ServiceGroup,
    pub may_move: bool,
    pub sampler: SamplerHandle,
    pub probe_slot: std::sync::Arc<std::sync::Mutex<Option<ProbeHandle>>>,
    /// The tripwire the samplers were started with (its level is set here), and the doorbell
    /// the probe's tripwire rings.
    pub cpu_alarm: Option<Tripwire>,
    pub bell: Option<Doorbell>,
    pub pm_qos: Option<ResumeLatency>,
    pub shared: Option<Arc<Shared>>,
}

/// Partial shares need a CPU quota on the job sharing the service's cores, which the actuator
/// does not set yet: until it does, shares are all-or-nothing (still learned).
fn all_or_nothing(cfg: ControllerConfig) -> ControllerConfig {
    ControllerConfig {
        share_quota: 1.0,
        share_quota_min: 1.0,
        ..cfg
    }
}

impl SloLoop {
    /// Takes the controller's new thresholds (SIGHUP).
    pub fn set_controller(&mut self, cfg: ControllerConfig) {
        self.controller.set_config(all_or_nothing(cfg));
    }

    pub fn new(s: SloSetup) -> Result<SloLoop, String> {
        // 0: every managed core but one, so batch always keeps a core to make progress on (a
        // 2-core node would otherwise hand a single-threaded memcached both cores and starve
        // the batch for no gain). An explicit count may take them all.
        let max = if s.cfg.max_cores == 0 {
            s.managed.len().saturating_sub(1).max(1)
        } else {
            s.cfg.max_cores
        };
        let ctl_cfg = all_or_nothing(s.controller.clone());
        let (min, max) = (
            s.cfg.min_cores.min(s.managed.len()),
            max.min(s.managed.len()),
        );
        let slo_us = s.slo_p95_us as f64;
        let controller = Controller::new(ctl_cfg.clone(), slo_us, s.managed, min, max)
            .map_err(|e| format!("service cores: {e}"))?;
        if let Some(sh) = s.shared.as_ref().filter(|_| ctl_cfg.record_turns) {
            let header = Header::new(&ctl_cfg, slo_us, s.managed, min, max);
            if let Ok(v) = serde_json::to_value(header) {
                sh.jobs.events().record_json(&v);
            }
        }
        let idle = Allocation {
            rung: 0,
            service: CpuSet::new(),
            batch: s.managed,
            exclusive: false,
        };
        let slo = SloLoop {
            cfg: s.cfg,
            proc_root: s.proc_root,
            unified: s.unified,
            service_dir: s.service_dir,
            group: s.group,
            may_move: s.may_move,
            controller,
            sampler: s.sampler,
            probe_cfg: s.probe,
            probe: None,
            found: None,
            last_scan: Instant::now() - Duration::from_secs(3600),
            applied: None,
            idle,
            last_error: None,
            probe_slot: s.probe_slot,
            cpu_alarm: s.cpu_alarm,
            latency_alarm: s.bell.map(|b| Tripwire::new(b, DISARMED, RING_SPACING)),
            pm_qos: s.pm_qos,
            shared: s.shared,
        };
        slo.arm();
        Ok(slo)
    }

    /// Sets the tripwires to the controller's grow triggers for the current rung, or disarms
    /// them on the top rung, where a rise cannot be answered with more cores.
    fn arm(&self) {
        let triggers = self.controller.grow_triggers();
        if let Some(w) = &self.cpu_alarm {
            w.set_level(triggers.map_or(DISARMED, |(cores, _)| (cores * 1000.0) as u64));
        }
        if let Some(w) = &self.latency_alarm {
            w.set_level(triggers.map_or(DISARMED, |(_, p95_us)| p95_us as u64));
        }
    }

    pub fn period(&self) -> Duration {
        Duration::from_millis(self.controller.config().period_ms)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn found(&self) -> bool {
        self.found.is_some()
    }

    /// One line for status: where the service runs and how its latency is doing.
    pub fn summary(&self) -> String {
        match (&self.found, &self.applied, &self.probe) {
            (Some((f, _)), Some(a), Some(p)) => {
                let s = p.handle().signal();
                format!(
                    "{} pid {} on [{}], window p95 {} us, {}/{} windows over SLO",
                    self.cfg.name,
                    f.processes.first().map_or(0, |p| p.pid),
                    a.service,
                    s.window.p95_us,
                    s.windows_over,
                    s.windows_total
                )
            }
            _ => format!("{}: not found", self.cfg.name),
        }
    }

    fn unit_of(&self, pid: u32) -> Option<String> {
        let text =
            std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_string)
    }

    /// Looks for the service if it is not known or its processes are gone.
    fn rescan(&mut self) {
        if self.last_scan.elapsed() < Duration::from_millis(self.cfg.rescan_ms) {
            return;
        }
        self.last_scan = Instant::now();
        if let Some((f, _)) = &self.found {
            let alive = f
                .processes
                .iter()
                .any(|p| service::discover::alive(&self.proc_root, *p));
            if alive && !service::discover::pid_file_moved(&self.proc_root, f) {
                return;
            }
            crate::log::warn(&format!(
                "{}: its processes are gone or replaced; looking for it again",
                self.cfg.name
            ));
            self.found = None;
        }
        let unified = self
            .unified
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let found = match service::discover::find(&self.cfg, &self.proc_root, &unified) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                // Once per distinct problem, not once per rescan.
                let msg = format!("{}: {e}", self.cfg.name);
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    crate::log::warn(&msg);
                    self.last_error = Some(msg);
                }
                return;
            }
        };
        self.last_error = None;
        self.follow(found);
    }

    /// Starts protecting a service just found: confines it (its group or its threads' affinity),
    /// samples its CPU use, and starts the latency probe if none runs.
    fn follow(&mut self, found: Found) {
        let pid = found.processes[0].pid;
        let placement = self.placement_for(&found);
        let source = match (placement, &self.service_dir) {
            (Placement::Group, Some(dir)) => ServiceSource::Cgroup(dir.clone()),
            _ => ServiceSource::Pid(pid),
        };
        if let Err(e) = self.sampler.set_service(source) {
            crate::log::warn(&format!(
                "{}: cannot sample its CPU use: {e}",
                self.cfg.name
            ));
        }
        crate::log::notice(&format!(
            "protecting {} (pid {pid}, found by {}) by {}",
            self.cfg.name,
            found.by,
            if placement == Placement::Group {
                "moving it into lowsched's service cgroup"
            } else {
                "pinning its threads"
            }
        ));
        if self.probe.is_none() {
            match Probe::start_with_alarm(self.probe_cfg.clone(), self.latency_alarm.clone()) {
                Ok(p) => {
                    *self.probe_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.handle());
                    self.probe = Some(p);
                }
                Err(e) => crate::log::error(&format!(
                    "{}: cannot start the latency probe: {e}",
                    self.cfg.name
                )),
            }
        }
        self.found = Some((found, placement));
        // Confine the (new) processes to the current allocation right away.
        if let Some(a) = self.applied.clone() {
            self.place(&a.service);
        }
    }

    /// Into lowsched's `service/` group where that may be done (pure v2, placement auto, not
    /// owned by another systemd service, whose manager moving it out would confuse); else its
    /// threads are pinned.
    fn placement_for(&self, found: &Found) -> Placement {
        let pid = found.processes[0].pid;
        let foreign_unit = self.unit_of(pid).is_some_and(|p| p.ends_with(".service"));
        if !self.may_move || self.cfg.placement != service::Placement::Auto || foreign_unit {
            return Placement::Affinity;
        }
        let moved = found.processes.iter().all(|p| {
            self.group
                .add(nix::unistd::Pid::from_raw(p.pid as i32))
                .is_ok()
        });
        if moved {
            Placement::Group
        } else {
            Placement::Affinity
        }
    }

    /// Reads the sensors and runs the controller. Returns the allocation when it differs from
    /// the one last placed (or on the first call).
    pub fn step(&mut self) -> Option<Step> {
        self.rescan();
        if self.found.is_none() && self.applied.as_ref().is_none_or(|a| a.service.is_empty()) {
            // Never found: batch may use every core.
            if self.applied.as_ref() == Some(&self.idle) {
                return None;
            }
            return Some(Step {
                alloc: self.idle.clone(),
                change: None,
                inputs: json!({"service": "not found"}),
            });
        }
        let (inputs, json) = self.inputs();
        let decision = self.controller.step(&inputs);
        self.record_turn(&inputs, &decision);
        if self.applied.as_ref() == Some(&decision.alloc) && decision.change.is_none() {
            return None;
        }
        Some(Step {
            alloc: decision.alloc,
            change: decision.change,
            inputs: json,
        })
    }

    /// With `record_turns`, writes the turn to `events.jsonl`; a note (a decision not to act)
    /// always goes to the event log.
    fn record_turn(&self, inputs: &Inputs, d: &crate::decide::controller::Decision) {
        let Some(sh) = &self.shared else { return };
        if self.controller.config().record_turns {
            if let Ok(v) = serde_json::to_value(Turn::new(inputs, d)) {
                sh.jobs.events().record_json(&v);
            }
        }
        if let Some(note) = &d.note {
            let text = "controller note".to_string();
            let ev = Event::new(self.cfg.name.clone(), None, Kind::Custom { text });
            sh.jobs.record_event(ev.because(note.clone()));
        }
    }

    /// Names of the running batch jobs, oldest first: the candidates for a share.
    fn batch_jobs(&self) -> Vec<String> {
        let Some(sh) = &self.shared else {
            return Vec::new();
        };
        let table = sh.table();
        let mut running: Vec<(u64, String)> = table
            .active()
            .filter(|r| r.state == JobState::Running)
            .map(|r| (r.id.0, r.spec.name.clone()))
            .collect();
        running.sort();
        running.into_iter().map(|(_, n)| n).collect()
    }

    fn inputs(&self) -> (Inputs, serde_json::Value) {
        let now = monotonic_ns();
        let service = self.sampler.service();
        let sig = self.probe.as_ref().map(|p| p.handle().signal());
        let alloc = self.controller.allocation();
        let util: Vec<f64> = alloc
            .service
            .iter()
            .filter_map(|c| self.sampler.core(c).and_then(|u| u.utilization))
            .collect();
        let core_util = (!util.is_empty()).then(|| util.iter().sum::<f64>() / util.len() as f64);
        let usable = sig.filter(|s| matches!(s.status, ProbeStatus::Up | ProbeStatus::Stalled));
        let fast = usable.filter(|s| s.fast.samples > 0).map(|s| {
            if s.fast.p95_us == NO_ANSWER_US {
                FAILED_US
            } else {
                s.fast.p95_us as f64
            }
        });
        let window = usable.filter(|s| s.window.count > 0).map(|s| {
            if s.slack_us == i64::MIN {
                FAILED_US
            } else {
                s.window.p95_us as f64
            }
        });
        // The reading a climb would react to: latency first (it is what the SLO is about).
        let grow_at = self.controller.grow_p95_us();
        let sampled_ns = match (fast, sig) {
            (Some(p), Some(s)) if p > grow_at => s.at_ns,
            _ if service.at_ns > 0 => service.at_ns,
            _ => now,
        };
        let inputs = Inputs {
            now: Duration::from_nanos(now),
            sampled_at: Duration::from_nanos(sampled_ns),
            p95_recent_us: fast,
            p95_window_us: window,
            service_cpu: service.cores,
            service_core_util: core_util,
            qps: sig.and_then(|s| s.qps),
            batch_jobs: self.batch_jobs(),
        };
        let json = json!({
            "p95_recent_us": fast, "p95_window_us": window, "service_cpu": service.cores,
            "service_core_util": core_util, "qps": inputs.qps,
            "probe": sig.map(|s| s.status.to_string()),
        });
        (inputs, json)
    }

    /// Confines the service to `cores` and remembers the allocation as placed.
    pub fn place(&mut self, cores: &CpuSet) {
        if let (Some((found, placement)), false) = (&self.found, cores.is_empty()) {
            let result = match placement {
                Placement::Group => self.group.set_cores(cores).map_err(|e| e.to_string()),
                Placement::Affinity => found
                    .processes
                    .iter()
                    .try_for_each(|p| {
                        service::pin_threads(&self.proc_root, p.pid, cores).map(|_| ())
                    })
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                crate::log::error(&format!(
                    "{}: cannot confine it to [{cores}]: {e}",
                    self.cfg.name
                ));
            }
        }
        let alloc = if self.found.is_some() || self.applied.is_some() {
            let mut a = self.controller.allocation().clone();
            a.service = *cores;
            a
        } else {
            self.idle.clone()
        };
        self.applied = Some(alloc);
        self.arm();
        self.sampler.watch(cores);
        if let Some(q) = self.pm_qos.as_mut() {
            if let Err(e) = q.apply(cores) {
                crate::log::warn(&format!(
                    "{}: cannot limit its cores' resume latency, leaving idle states alone: {e}",
                    self.cfg.name
                ));
                // Dropping it gives back what it already changed.
                self.pm_qos = None;
            }
        }
    }

    /// Marks the idle allocation (no service found) as placed.
    pub fn place_idle(&mut self) {
        self.applied = Some(self.idle.clone());
    }
}
