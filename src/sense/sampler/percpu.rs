//! One sampler thread: pinned to its core, one io_uring submission per period (absolute timeout
//! hard-linked to the reads), parse its own `cpuN` line, publish.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::service::{CgroupCounter, PidCounter, ServiceError, ServiceKind, ServiceSource};
use super::{CoreUtil, PID_RESCAN_PERIODS, SamplerConfig, ServiceCpu, Shared, ewma};
use crate::sense::procstat::{self, CpuLineFinder, CpuTimes};
use crate::sys::clock::{monotonic_ns, thread_cpu_ns};
use crate::sys::uring::DeadlineReads;

/// Largest `/proc/stat` read buffer (a host with thousands of CPUs and IRQs).
const MAX_STAT_BUF: usize = 16 << 20;
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
    let unwatched_ns = cfg.unwatched_period.as_nanos() as u64;
    let user_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&v| v > 0)
        .map_or(100, |v| v as u64);
    let stat_path = cfg.proc_root.join(procstat::PROC_STAT);
    let finder = CpuLineFinder::new(cpu);
    let mut out = CoreUtil {
        cpu,
        ..CoreUtil::default()
    };
    let pin = |out: &mut CoreUtil| {
        if cfg.pin {
            out.pinned = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        }
    };
    pin(&mut out);
    let mut service = service_rx.as_ref().map(|_| ServiceState {
        source: ServiceSource::None,
        counter: Counter::None,
        last_open_try: 0,
        prev: None,
        out: ServiceCpu::default(),
    });
    let mut ring = loop {
        match DeadlineReads::new(2, 4096 + 160 * (cpu + 2)) {
            Ok(r) => break r,
            Err(_) => {
                out.errors += 1;
                slot.cell.publish(&out);
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    };
    let mut stat: Option<File> = None;
    let mut last_open_try = 0u64;
    let mut prev: Option<(CpuTimes, u64)> = None;
    let mut next = monotonic_ns();
    while !shared.stop.load(Ordering::Relaxed) {
        if stat.is_none() && (last_open_try == 0 || next - last_open_try >= REOPEN_NS) {
            last_open_try = next.max(1);
            stat = File::open(&stat_path).ok();
            if stat.is_none() {
                out.errors += 1;
                out.online = false;
                slot.cell.publish(&out);
            }
        }
        if let (Some(rx), Some(svc)) = (&service_rx, service.as_mut()) {
            if let Some(src) = rx.try_iter().last() {
                svc.source = src;
                svc.out.generation += 1;
                svc.out.smoothed = None;
                svc.out.cores = None;
                svc.open(&cfg, next.max(1));
                shared.service.publish(&svc.out);
            } else if matches!(svc.counter, Counter::None)
                && svc.source != ServiceSource::None
                && next.saturating_sub(svc.last_open_try) >= REOPEN_NS
            {
                svc.open(&cfg, next);
            }
        }
        let cg_fd: Option<BorrowedFd<'_>> = match service.as_ref().map(|s| &s.counter) {
            Some(Counter::Cgroup(c)) => Some(c.file.as_fd()),
            _ => None,
        };
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(2);
        // Keep slot 0 for /proc/stat and slot 1 for the cgroup counter.
        let stat_slot = stat.as_ref().map(|f| {
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
            out.errors += 1;
        }
        if let (true, Some(s)) = (ring_ok, stat_slot) {
            let cap = ring.capacity(s);
            match ring.result(s) {
                Ok(buf) => match finder.find(buf, buf.len() >= cap) {
                    Ok(Some(times)) => {
                        if !out.online {
                            pin(&mut out); // back from offline: the kernel may have moved us
                        }
                        out.online = true;
                        if let Some((p, t0)) = prev {
                            let dt = now.saturating_sub(t0);
                            let d = procstat::delta(&p, &times, procstat::max_ticks(dt, user_hz));
                            out.anomalies += d.anomalies;
                            out.utilization = d.utilization();
                            if let Some(u) = out.utilization {
                                out.smoothed = Some(ewma(out.smoothed, u, dt, cfg.smoothing));
                                out.period_ns = dt;
                            }
                        }
                        prev = Some((times, now));
                        out.at_ns = now;
                    }
                    Ok(None) => {
                        out.online = false;
                        out.utilization = None;
                        out.smoothed = None;
                        out.at_ns = now;
                        prev = None;
                    }
                    Err(procstat::ProcStatError::Truncated { .. }) => {
                        ring.set_capacity(s, (cap * 2).min(MAX_STAT_BUF));
                    }
                    Err(_) => out.anomalies += 1,
                },
                Err(_) => {
                    out.errors += 1;
                    stat = None;
                }
            }
            slot.cell.publish(&out);
        }
        if let Some(svc) = service.as_mut() {
            let read = match &mut svc.counter {
                Counter::None => None,
                Counter::Cgroup(c) => Some(match cg_slot.filter(|_| ring_ok) {
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
            };
            match read {
                Some(Ok(usage)) => {
                    svc.observe(usage, now, &cfg);
                    if let (Some(alarm), Some(cores)) = (&cfg.service_alarm, svc.out.cores) {
                        alarm.check((cores * 1000.0) as u64, now);
                    }
                }

                Some(Err(e)) => {
                    svc.fail(&e);
                    svc.last_open_try = now;
                }
                None => {}
            }
            svc.out.kind = svc.kind();
            shared.service.publish(&svc.out);
        }
        slot.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
        slot.periods.fetch_add(1, Ordering::Relaxed);
        let period_ns = if slot.watched.load(Ordering::Relaxed) {
            watched_ns
        } else {
            unwatched_ns
        };
        next += period_ns;

        if next <= now {
            // Fell behind (suspended, starved): skip the missed periods, stay on the grid.
            next += (now - next) / period_ns * period_ns + period_ns;
        }
    }
}
