//! One sampler thread: pinned to its core, one io_uring submission per period (absolute timeout
//! hard-linked to the reads), parse its own `cpuN` line, publish; parked while its core is not
//! watched (the sweeper reads it then).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::reading::{self, Reading};
use super::service::{CgroupCounter, PidCounter, ServiceError, ServiceKind, ServiceSource};
use super::{CoreUtil, PID_RESCAN_PERIODS, SamplerConfig, ServiceCpu, Shared, ewma};
use crate::sense::procstat::{self, CpuLineFinder};
use crate::sys::clock::{monotonic_ns, thread_cpu_ns};
use crate::sys::uring::DeadlineReads;

/// Largest `/proc/stat` read buffer (a host with thousands of CPUs and IRQs).
pub(super) const MAX_STAT_BUF: usize = 16 << 20;
/// Reopen a vanished file at most this often.
const REOPEN_NS: u64 = 1_000_000_000;

pub(super) struct Ctx {
    pub shared: Arc<Shared>,
    pub index: usize,
    pub cpu: usize,
    pub cfg: SamplerConfig,
    pub service_rx: Option<crossbeam_channel::Receiver<ServiceSource>>,
}

enum Counter {
    None,
    Cgroup(CgroupCounter),
    Pid(PidCounter),
}

struct ServiceState {
    source: ServiceSource,
    counter: Counter,
    last_open_try: u64,
    prev: Option<(u64, u64)>, // (usage_ns, at_ns)
    out: ServiceCpu,
}

impl ServiceState {
    fn kind(&self) -> ServiceKind {
        match &self.counter {
            Counter::Cgroup(c) => c.kind,
            Counter::Pid(_) => ServiceKind::Pid,
            Counter::None => match self.source {
                ServiceSource::None => ServiceKind::None,
                ServiceSource::Pid(_) => ServiceKind::Pid,
                ServiceSource::Cgroup(_) => ServiceKind::CgroupV2,
            },
        }
    }

    fn open(&mut self, cfg: &SamplerConfig, now: u64) {
        self.last_open_try = now;
        self.prev = None;
        let r = match &self.source {
            ServiceSource::None => Ok(Counter::None),
            ServiceSource::Cgroup(dir) => CgroupCounter::open(dir).map(Counter::Cgroup),
            ServiceSource::Pid(pid) => {
                PidCounter::new(&cfg.proc_root, *pid, PID_RESCAN_PERIODS).map(Counter::Pid)
            }
        };
        match r {
            Ok(c) => {
                self.counter = c;
                self.out.errno = 0;
            }
            Err(e) => self.fail(&e),
        }
        self.out.kind = self.kind();
    }

    fn fail(&mut self, e: &ServiceError) {
        self.counter = Counter::None;
        self.prev = None;
        self.out.errno = e.errno().max(1);
        self.out.errors += 1;
        self.out.cores = None;
    }

    fn observe(&mut self, usage_ns: u64, now: u64, cfg: &SamplerConfig) {
        self.out.errno = 0;
        self.out.usage_ns = usage_ns;
        self.out.at_ns = now;
        match self.prev {
            Some((u0, t0)) if usage_ns >= u0 && now > t0 => {
                let dt = now - t0;
                let cores = (usage_ns - u0) as f64 / dt as f64;
                self.out.cores = Some(cores);
                self.out.smoothed = Some(ewma(self.out.smoothed, cores, dt, cfg.smoothing));
                self.out.period_ns = dt;
            }
            // First read, or the counter went backwards (service restarted in place).
            _ => self.out.cores = None,
        }
        self.prev = Some((usage_ns, now));
    }
}

impl ServiceState {
    fn new() -> Self {
        Self {
            source: ServiceSource::None,
            counter: Counter::None,
            last_open_try: 0,
            prev: None,
            out: ServiceCpu::default(),
        }
    }

    /// Takes a new source from the daemon (counting a new generation), or retries opening the
    /// current one once [`REOPEN_NS`] has passed since the last try.
    fn follow(
        &mut self,
        rx: &crossbeam_channel::Receiver<ServiceSource>,
        cfg: &SamplerConfig,
        now: u64,
        shared: &Shared,
    ) {
        if let Some(src) = rx.try_iter().last() {
            self.source = src;
            self.out.generation += 1;
            self.out.smoothed = None;
            self.out.cores = None;
            self.open(cfg, now.max(1));
            shared.service.publish(&self.out);
        } else if matches!(self.counter, Counter::None)
            && self.source != ServiceSource::None
            && now.saturating_sub(self.last_open_try) >= REOPEN_NS
        {
            self.open(cfg, now);
        }
    }

    /// This period's usage: a cgroup counter from its ring slot, a pid counter read directly.
    fn read(
        &mut self,
        ring: &DeadlineReads,
        slot: Option<usize>,
    ) -> Option<Result<u64, ServiceError>> {
        match &mut self.counter {
            Counter::None => None,
            Counter::Cgroup(c) => Some(match slot {
                Some(s) => match ring.result(s) {
                    Ok(buf) => c.parse(buf),
                    Err(source) => Err(ServiceError::Io {
                        path: c.path.clone(),
                        source,
                    }),
                },
                None => Err(ServiceError::Io {
                    path: c.path.clone(),
                    source: std::io::Error::other("io_uring wait failed"),
                }),
            }),
            Counter::Pid(p) => Some(p.read()),
        }
    }

    /// Records a read (rings the alarm if the service is busy enough) and publishes.
    fn record(
        &mut self,
        read: Option<Result<u64, ServiceError>>,
        now: u64,
        cfg: &SamplerConfig,
        shared: &Shared,
    ) {
        match read {
            Some(Ok(usage)) => {
                self.observe(usage, now, cfg);
                if let (Some(alarm), Some(cores)) = (&cfg.service_alarm, self.out.cores) {
                    alarm.check((cores * 1000.0) as u64, now);
                }
            }
            Some(Err(e)) => {
                self.fail(&e);
                self.last_open_try = now;
            }
            None => {}
        }
        self.out.kind = self.kind();
        shared.service.publish(&self.out);
    }
}

/// The core's own reading: `/proc/stat` (kept open), its `cpuN` line, and what was published.
struct CoreState {
    finder: CpuLineFinder,
    pin: bool,
    stat_path: std::path::PathBuf,
    stat: Option<File>,
    last_open_try: u64,
    reading: Reading,
}

impl CoreState {
    fn new(cpu: usize, cfg: &SamplerConfig) -> Self {
        let mut core = Self {
            finder: CpuLineFinder::new(cpu),
            pin: cfg.pin,
            stat_path: cfg.proc_root.join(procstat::PROC_STAT),
            stat: None,
            last_open_try: 0,
            reading: Reading::new(cpu, reading::user_hz()),
        };
        core.pin();
        core
    }

    fn out(&mut self) -> &mut CoreUtil {
        &mut self.reading.out
    }

    fn pin(&mut self) {
        if self.pin {
            let id = core_affinity::CoreId {
                id: self.reading.out.cpu,
            };
            self.reading.out.pinned = core_affinity::set_for_current(id);
        }
    }

    /// Opens `/proc/stat` when it is closed and the last try is [`REOPEN_NS`] old; false when
    /// that failed (the core is then published as offline).
    fn reopen(&mut self, now: u64) -> bool {
        if self.stat.is_some() || (self.last_open_try != 0 && now - self.last_open_try < REOPEN_NS)
        {
            return true;
        }
        self.last_open_try = now.max(1);
        self.stat = File::open(&self.stat_path).ok();
        if self.stat.is_none() {
            self.out().errors += 1;
            self.out().online = false;
        }
        self.stat.is_some()
    }

    /// Takes in one read of `/proc/stat` (`cap`: the buffer it was read into). Returns a larger
    /// capacity when the read was truncated.
    fn take(
        &mut self,
        read: std::io::Result<&[u8]>,
        cap: usize,
        now: u64,
        smoothing: std::time::Duration,
    ) -> Option<usize> {
        let buf = match read {
            Ok(buf) => buf,
            Err(_) => {
                self.out().errors += 1;
                self.stat = None;
                return None;
            }
        };
        match self.finder.find(buf, buf.len() >= cap) {
            Ok(times) => {
                if self.reading.observe(times, now, smoothing) {
                    self.pin(); // back from offline: the kernel may have moved us
                }
            }
            Err(procstat::ProcStatError::Truncated { .. }) => {
                return Some((cap * 2).min(MAX_STAT_BUF));
            }
            Err(_) => self.out().anomalies += 1,
        }
        None
    }
}

/// The thread's ring: retried every second (counted as errors) until it opens or the sampler
/// stops.
fn open_ring(
    cpu: usize,
    core: &mut CoreState,
    slot: &super::Slot,
    shared: &Shared,
) -> Option<DeadlineReads> {
    loop {
        match DeadlineReads::new(2, 4096 + 160 * (cpu + 2)) {
            Ok(r) => return Some(r),
            Err(_) => {
                core.out().errors += 1;
                slot.cell.publish(&core.reading.out);
                if shared.stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// The deadline after `next`: one period on, or, when the thread fell behind (suspended,
/// starved), the first one after `now` on the same grid.
pub(super) fn next_deadline(next: u64, now: u64, period_ns: u64) -> u64 {
    let next = next + period_ns;
    if next <= now {
        next + (now - next) / period_ns * period_ns + period_ns
    } else {
        next
    }
}

pub(super) fn run(ctx: Ctx) {
    let Ctx {
        shared,
        index,
        cpu,
        cfg,
        service_rx,
    } = ctx;
    let slot = &shared.slots[index];
    let watched_ns = cfg.period.as_nanos() as u64;
    let mut core = CoreState::new(cpu, &cfg);
    let mut service = service_rx.as_ref().map(|_| ServiceState::new());
    let Some(mut ring) = open_ring(cpu, &mut core, slot, &shared) else {
        return;
    };
    let mut next = monotonic_ns();
    while !shared.stop.load(Ordering::Relaxed) {
        if !core.reopen(next) {
            slot.cell.publish(&core.reading.out);
        }
        if let (Some(rx), Some(svc)) = (&service_rx, service.as_mut()) {
            svc.follow(rx, &cfg, next, &shared);
        }
        let cg_fd: Option<BorrowedFd<'_>> = match service.as_ref().map(|s| &s.counter) {
            Some(Counter::Cgroup(c)) => Some(c.file.as_fd()),
            _ => None,
        };
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(2);
        // Keep slot 0 for /proc/stat and slot 1 for the cgroup counter.
        let stat_slot = core.stat.as_ref().map(|f| {
            fds.push(f.as_fd());
            0
        });
        let cg_slot = cg_fd.map(|fd| {
            fds.push(fd);
            fds.len() - 1
        });
        let ring_ok = ring.run(Some(next), &fds).is_ok();
        drop(fds);
        let now = monotonic_ns();
        if !ring_ok {
            core.out().errors += 1;
        }
        if let (true, Some(s)) = (ring_ok, stat_slot) {
            let cap = ring.capacity(s);
            if let Some(bigger) = core.take(ring.result(s), cap, now, cfg.smoothing) {
                ring.set_capacity(s, bigger);
            }
            slot.cell.publish(&core.reading.out);
        }
        if let Some(svc) = service.as_mut() {
            let read = svc.read(&ring, cg_slot.filter(|_| ring_ok));
            svc.record(read, now, &cfg, &shared);
        }
        slot.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
        slot.periods.fetch_add(1, Ordering::Relaxed);
        if service.is_none() && !slot.watched.load(Ordering::Relaxed) {
            // The sweeper reads this core while it is unwatched; this thread costs nothing
            // until the core is watched again.
            park_until_watched(slot, &shared);
            core.reading.resume(slot.cell.load());
            next = monotonic_ns();
            continue;
        }
        next = next_deadline(next, now, watched_ns);
    }
}

/// Sleeps until the core is watched again or the samplers stop ([`super::SamplerHandle::watch`]
/// and the stop unpark every thread).
fn park_until_watched(slot: &super::Slot, shared: &Shared) {
    while !slot.watched.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
        std::thread::park();
    }
}
