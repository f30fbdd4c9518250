//! Per-core samplers: one pinned thread per core, each with its own io_uring, reads `/proc/stat`
//! once a period and publishes its core's utilization through a seqlock; the thread on the
//! service core also reads the protected service's CPU counter. Cores the controller does not
//! watch are read by one sweeper thread instead, once per unwatched period for all of them,
//! while their own threads sleep (see `sweep.rs` for why).
//!
//! Threading: [`SamplerSet::start`] spawns the threads; they run until the set is stopped or
//! dropped. Readers ([`SamplerHandle`], cheap to clone, `Send + Sync`) never block a sampler and
//! are never blocked by one: every read is a seqlock copy of a few words.
//!
//! Defaults (measured, see README "Sensing"): a 50 ms period. A wake-up with its read costs
//! ~80–110 µs of CPU on this kind of VM, so 50 ms keeps a sampler near 0.2 % of a core (20 ms
//! came to ~0.45 %, too close to the 0.5 % goal); and `/proc/stat` advances in 10 ms ticks, so a
//! shorter period mostly adds quantization noise. The service's cgroup counter has µs resolution
//! and is exact at any period. Smoothing: an EWMA with a 150 ms time constant, about three
//! periods, which averages the tick quantization out while still following a change within a
//! few hundred milliseconds.

mod percpu;
mod reading;
pub mod service;
mod sweep;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::cpuset::CpuSet;
use crate::sense::doorbell::Tripwire;
use crate::sense::seqcell::{Packed, SeqCell};
pub use service::{ServiceKind, ServiceSource};

/// Default sampling period.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(50);
/// Default EWMA time constant for the smoothed figures.
pub const DEFAULT_SMOOTHING: Duration = Duration::from_millis(150);
/// How often the per-pid fallback relists the service's threads, in periods (1 s by default).
pub const PID_RESCAN_PERIODS: u32 = 20;

/// The CPUs the kernel could ever bring online, under the sysfs root.
pub const CPU_POSSIBLE: &str = "devices/system/cpu/possible";

/// How the samplers run. All roots are injectable.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// Where procfs is mounted (`/proc`).
    pub proc_root: PathBuf,
    /// Where sysfs is mounted (`/sys`).
    pub sys_root: PathBuf,
    /// Cores to sample; `None` samples every possible CPU (sysfs `cpu/possible`, or the CPUs
    /// `/proc/stat` lists when that file is missing), so a CPU hot-plugged later already has
    /// its sampler: until it comes online it reports `online: false`.
    pub cores: Option<CpuSet>,
    pub period: Duration,
    /// Period of the cores not watched (see [`SamplerHandle::watch`]): their figures are shown,
    /// not acted on, so on a large node they need not cost a wake-up every `period`; one
    /// sweeper thread reads them all at this period.
    pub unwatched_period: Duration,
    /// EWMA time constant of the `smoothed` figures.
    pub smoothing: Duration,
    /// Where the service's CPU use is read first; change it with [`SamplerHandle::set_service`].
    pub service: ServiceSource,
    /// The core whose sampler reads the service; `None`: the first sampled core.
    pub service_core: Option<usize>,
    /// Pin each thread to its core (off only for tests on fake roots).
    pub pin: bool,
    /// Checked against the service's CPU use in milli-cores at every read, so a busy service
    /// wakes the controller at once.
    pub service_alarm: Option<Tripwire>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            cores: None,
            period: DEFAULT_PERIOD,
            unwatched_period: DEFAULT_PERIOD,
            smoothing: DEFAULT_SMOOTHING,
            service: ServiceSource::None,
            service_core: None,
            pin: true,
            service_alarm: None,
        }
    }
}

/// Why the samplers could not start.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    ProcStat(#[from] crate::sense::procstat::ProcStatError),
    #[error("no CPU to sample")]
    NoCores,
    #[error("bad sampler setting: {0}")]
    Config(&'static str),
    #[error("cannot start a sampler thread: {0}")]
    Spawn(std::io::Error),
    #[error("the service sampler has stopped")]
    Stopped,
}

/// One core's latest sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreUtil {
    pub cpu: usize,
    /// False while the CPU's line is missing from `/proc/stat` (offline).
    pub online: bool,
    /// Whether the thread runs pinned to its core.
    pub pinned: bool,
    /// Busy fraction over the last period; `None` before two samples, after a counter reset, or
    /// when no tick elapsed.
    pub utilization: Option<f64>,
    /// EWMA of `utilization`.
    pub smoothed: Option<f64>,
    /// `CLOCK_MONOTONIC` ns of the read (0: nothing published yet).
    pub at_ns: u64,
    /// Time the last `utilization` covers.
    pub period_ns: u64,
    /// Counter anomalies absorbed so far (regressions, resets, malformed lines).
    pub anomalies: u32,
    /// Reads that failed so far.
    pub errors: u32,
}

fn opt_bits(v: Option<f64>) -> (u64, u64) {
    v.map_or((0, 0), |v| (1, v.to_bits()))
}

impl Packed<6> for CoreUtil {
    fn pack(&self) -> [u64; 6] {
        let (hu, u) = opt_bits(self.utilization);
        let (hs, s) = opt_bits(self.smoothed);
        let flags = u64::from(self.online) | hu << 1 | hs << 2 | u64::from(self.pinned) << 3;
        [
            self.cpu as u64 | flags << 32,
            u,
            s,
            self.at_ns,
            self.period_ns,
            u64::from(self.anomalies) | u64::from(self.errors) << 32,
        ]
    }

    fn unpack(w: [u64; 6]) -> Self {
        let flags = w[0] >> 32;
        Self {
            cpu: (w[0] & 0xffff_ffff) as usize,
            online: flags & 1 != 0,
            pinned: flags & 8 != 0,
            utilization: (flags & 2 != 0).then(|| f64::from_bits(w[1])),
            smoothed: (flags & 4 != 0).then(|| f64::from_bits(w[2])),
            at_ns: w[3],
            period_ns: w[4],
            anomalies: w[5] as u32,
            errors: (w[5] >> 32) as u32,
        }
    }
}

/// The service's latest CPU use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceCpu {
    pub kind: ServiceKind,
    /// Cumulative CPU time in ns as read (for the pid fallback: summed thread deltas).
    pub usage_ns: u64,
    /// Cores used over the last period (1.0 = one core busy); `None` before two reads, after a
    /// counter reset or source change, or while the source is unreadable.
    pub cores: Option<f64>,
    /// EWMA of `cores`.
    pub smoothed: Option<f64>,
    /// `CLOCK_MONOTONIC` ns of the read.
    pub at_ns: u64,
    pub period_ns: u64,
    /// errno of the last failed read (0: the last read worked).
    pub errno: i32,
    /// Bumped on every source change, so a reader can tell old figures from new.
    pub generation: u64,
    pub errors: u64,
}

impl Default for ServiceCpu {
    fn default() -> Self {
        Self {
            kind: ServiceKind::None,
            usage_ns: 0,
            cores: None,
            smoothed: None,
            at_ns: 0,
            period_ns: 0,
            errno: 0,
            generation: 0,
            errors: 0,
        }
    }
}

impl Packed<8> for ServiceCpu {
    fn pack(&self) -> [u64; 8] {
        let (hc, c) = opt_bits(self.cores);
        let (hs, s) = opt_bits(self.smoothed);
        [
            self.kind as u64 | hc << 8 | hs << 9 | u64::from(self.errno as u32) << 32,
            self.usage_ns,
            c,
            s,
            self.at_ns,
            self.period_ns,
            self.generation,
            self.errors,
        ]
    }

    fn unpack(w: [u64; 8]) -> Self {
        Self {
            kind: ServiceKind::from_code(w[0] & 0xff),
            usage_ns: w[1],
            cores: (w[0] >> 8 & 1 != 0).then(|| f64::from_bits(w[2])),
            smoothed: (w[0] >> 9 & 1 != 0).then(|| f64::from_bits(w[3])),
            at_ns: w[4],
            period_ns: w[5],
            errno: (w[0] >> 32) as u32 as i32,
            generation: w[6],
            errors: w[7],
        }
    }
}

/// A sampler thread's own cost, for the overhead goal (≤ 0.5 % of a core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplerCost {
    pub cpu: usize,
    /// CPU time the thread used since it started.
    pub cpu_ns: u64,
    /// Periods completed.
    pub periods: u64,
}

#[derive(Debug)]
struct Slot {
    cpu: usize,
    cell: SeqCell<6>,
    cpu_ns: AtomicU64,
    periods: AtomicU64,
    /// Sampled every `period` (else every `unwatched_period`).
    watched: AtomicBool,
}

#[derive(Debug)]
struct Shared {
    slots: Vec<Slot>,
    /// The core whose thread reads the service's counter.
    service_cpu: usize,
    service: SeqCell<8>,
    stop: AtomicBool,
    service_tx: crossbeam_channel::Sender<ServiceSource>,
    /// The per-core threads, in slot order, to wake one whose core becomes watched (and all at
    /// the stop).
    threads: OnceLock<Vec<Thread>>,
    /// The sweeper's CPU time so far.
    sweep_cpu_ns: AtomicU64,
    sweeps: AtomicU64,
}

impl Shared {
    fn wake_all(&self) {
        for t in self.threads.get().into_iter().flatten() {
            t.unpark();
        }
    }
}

/// What the controller holds: lock-free reads of every core and of the service.
#[derive(Clone, Debug)]
pub struct SamplerHandle {
    shared: Arc<Shared>,
}

impl SamplerHandle {
    /// The sampled cores, in ascending order.
    pub fn cpus(&self) -> Vec<usize> {
        self.shared.slots.iter().map(|s| s.cpu).collect()
    }

    /// One core's latest sample; `None` when it is not sampled.
    pub fn core(&self, cpu: usize) -> Option<CoreUtil> {
        let slot = self.shared.slots.iter().find(|s| s.cpu == cpu)?;
        let mut u: CoreUtil = slot.cell.load();
        u.cpu = cpu;
        Some(u)
    }

    /// Every core's latest sample, written into `out` (cleared first) so the controller's loop
    /// does not allocate.
    pub fn cores_into(&self, out: &mut Vec<CoreUtil>) {
        out.clear();
        for slot in &self.shared.slots {
            let mut u: CoreUtil = slot.cell.load();
            u.cpu = slot.cpu;
            out.push(u);
        }
    }

    pub fn cores(&self) -> Vec<CoreUtil> {
        let mut v = Vec::with_capacity(self.shared.slots.len());
        self.cores_into(&mut v);
        v
    }

    /// The service's latest CPU use.
    pub fn service(&self) -> ServiceCpu {
        self.shared.service.load()
    }

    /// Samples `cores` every period, each on its own thread, and the others every unwatched
    /// period, all from one sweeper read. The core that reads the service's CPU counter is
    /// always watched. A core newly watched gets its thread back at once; its first reading
    /// after that sets a baseline, so its utilization is fresh one period later.
    pub fn watch(&self, cores: &CpuSet) {
        let threads = self.shared.threads.get();
        for (i, s) in self.shared.slots.iter().enumerate() {
            let on = cores.contains(s.cpu) || s.cpu == self.shared.service_cpu;
            let was = s.watched.swap(on, Ordering::AcqRel);
            // Only a newly watched core's thread is asleep and must wake; one no longer
            // watched parks by itself at the end of its period.
            if on && !was {
                if let Some(t) = threads.and_then(|t| t.get(i)) {
                    t.unpark();
                }
            }
        }
    }

    /// Points the service sampler at a new source (service restarted or moved). Takes effect at
    /// the next period; figures from the new source carry a higher `generation`.
    pub fn set_service(&self, source: ServiceSource) -> Result<(), SamplerError> {
        self.shared
            .service_tx
            .send(source)
            .map_err(|_| SamplerError::Stopped)
    }

    /// Each sampler thread's own CPU time so far.
    pub fn costs(&self) -> Vec<SamplerCost> {
        self.shared
            .slots
            .iter()
            .map(|s| SamplerCost {
                cpu: s.cpu,
                cpu_ns: s.cpu_ns.load(Ordering::Relaxed),
                periods: s.periods.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The sweeper's own CPU time so far, and its sweeps (reads of `/proc/stat`).
    pub fn sweeper_cost(&self) -> (u64, u64) {
        (
            self.shared.sweep_cpu_ns.load(Ordering::Relaxed),
            self.shared.sweeps.load(Ordering::Relaxed),
        )
    }
}

/// The running samplers. Dropping the set stops and joins its threads.
#[derive(Debug)]
pub struct SamplerSet {
    handle: SamplerHandle,
    threads: Vec<JoinHandle<()>>,
}

impl SamplerSet {
    /// Starts one thread per core and the sweeper.
    pub fn start(cfg: SamplerConfig) -> Result<Self, SamplerError> {
        if cfg.period < Duration::from_millis(1) || cfg.period > Duration::from_secs(60) {
            return Err(SamplerError::Config("period must be between 1 ms and 60 s"));
        }
        if cfg.unwatched_period < cfg.period || cfg.unwatched_period > Duration::from_secs(60) {
            return Err(SamplerError::Config(
                "unwatched_period must be between period and 60 s",
            ));
        }

        let cpus = sampled_cpus(&cfg)?;
        let Some(&first) = cpus.first() else {
            return Err(SamplerError::NoCores);
        };
        let service_cpu = cfg.service_core.unwrap_or(first);
        if !cpus.contains(&service_cpu) {
            return Err(SamplerError::Config("service_core is not a sampled core"));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        if cfg.service != ServiceSource::None {
            let _ = tx.send(cfg.service.clone());
        }
        let shared = Arc::new(Shared {
            slots: cpus
                .iter()
                .map(|&cpu| Slot {
                    cpu,
                    cell: SeqCell::new(),
                    cpu_ns: AtomicU64::new(0),
                    periods: AtomicU64::new(0),
                    watched: AtomicBool::new(true),
                })
                .collect(),
            service_cpu,
            service: SeqCell::new(),
            stop: AtomicBool::new(false),
            service_tx: tx,
            threads: OnceLock::new(),
            sweep_cpu_ns: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
        });
        let mut set = Self {
            handle: SamplerHandle {
                shared: shared.clone(),
            },
            threads: Vec::new(),
        };
        for (index, &cpu) in cpus.iter().enumerate() {
            let ctx = percpu::Ctx {
                shared: shared.clone(),
                index,
                cpu,
                cfg: cfg.clone(),
                service_rx: (cpu == service_cpu).then(|| rx.clone()),
            };
            let t = std::thread::Builder::new()
                .name(format!("sampler-{cpu}"))
                .spawn(move || percpu::run(ctx))
                .map_err(SamplerError::Spawn)?;
            set.threads.push(t);
        }
        let _ = shared
            .threads
            .set(set.threads.iter().map(|t| t.thread().clone()).collect());
        let sweeper = {
            let (shared, cfg) = (shared.clone(), cfg.clone());
            std::thread::Builder::new()
                .name("sampler-sweep".into())
                .spawn(move || sweep::run(shared, cfg))
                .map_err(SamplerError::Spawn)?
        };
        set.threads.push(sweeper);
        Ok(set)
    }

    pub fn handle(&self) -> SamplerHandle {
        self.handle.clone()
    }

    /// Stops and joins the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle.shared.stop.store(true, Ordering::Release);
        self.handle.shared.wake_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SamplerSet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::ops::Deref for SamplerSet {
    type Target = SamplerHandle;
    fn deref(&self) -> &SamplerHandle {
        &self.handle
    }
}

/// The cores to sample: the configured ones, else every possible CPU (sysfs), else the CPUs
/// `/proc/stat` lists.
fn sampled_cpus(cfg: &SamplerConfig) -> Result<Vec<usize>, SamplerError> {
    let possible = std::fs::read_to_string(cfg.sys_root.join(CPU_POSSIBLE))
        .ok()
        .and_then(|t| t.trim().parse::<CpuSet>().ok());
    let cpus: Vec<usize> = match (&cfg.cores, possible) {
        (Some(set), _) => set.iter().collect(),
        (None, Some(set)) if !set.is_empty() => set.iter().collect(),
        (None, _) => {
            let path = cfg.proc_root.join(crate::sense::procstat::PROC_STAT);
            let text = std::fs::read(&path).map_err(|source| SamplerError::Io {
                path: path.clone(),
                source,
            })?;
            crate::sense::procstat::parse_all(&text)?
                .cpus
                .iter()
                .map(|(c, _)| *c)
                .collect()
        }
    };
    Ok(cpus)
}

/// EWMA step: the weight of a new sample after `dt` with time constant `tau`.
pub fn ewma(prev: Option<f64>, sample: f64, dt_ns: u64, tau: Duration) -> f64 {
    match prev {
        None => sample,
        Some(p) => {
            let tau_ns = tau.as_nanos().max(1) as f64;
            let alpha = 1.0 - (-(dt_ns as f64) / tau_ns).exp();
            p + alpha * (sample - p)
        }
    }
}

#[cfg(test)]
mod tests;
