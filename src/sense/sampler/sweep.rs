//! The sweeper: one thread that reads `/proc/stat` once per unwatched period and publishes
//! every core nobody watches, so their own threads can sleep.
//!
//! Problem: with one thread per core, each reading the whole `/proc/stat` for its own line, a
//! node with N CPUs makes N reads per period of a file whose length (and the kernel's cost of
//! formatting it) also grows with N: O(N²), 3.5 % of a core at 256 CPUs on a fake root.
//! Approach: the controller acts only on the service's cores (and the ones it may grow onto),
//! which it watches; their pinned threads keep the short period. Every other core's thread is
//! parked, and this one thread parses all CPU lines of a single read per `unwatched_period`,
//! so the cost of the unwatched cores is one read per period whatever N is.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::percpu::{MAX_STAT_BUF, next_deadline};
use super::reading::{self, Reading};
use super::{SamplerConfig, Shared};
use crate::sense::procstat;
use crate::sys::clock::{monotonic_ns, thread_cpu_ns};
use crate::sys::uring::DeadlineReads;

/// One core as the sweeper knows it.
struct Swept {
    reading: Reading,
    /// Whether its own thread had it at the last sweep (then the sweeper takes over from what
    /// the thread published, with a fresh baseline).
    was_watched: bool,
}

pub(super) fn run(shared: Arc<Shared>, cfg: SamplerConfig) {
    let hz = reading::user_hz();
    let mut cores: Vec<Swept> = shared
        .slots
        .iter()
        .map(|s| Swept {
            reading: Reading::new(s.cpu, hz),
            was_watched: true,
        })
        .collect();
    let top = shared.slots.iter().map(|s| s.cpu).max().unwrap_or(0);
    let path = cfg.proc_root.join(procstat::PROC_STAT);
    let period_ns = cfg.unwatched_period.as_nanos() as u64;
    let mut ring = None;
    let mut stat: Option<File> = None;
    let mut next = monotonic_ns();
    while !shared.stop.load(Ordering::Acquire) {
        let unwatched = shared
            .slots
            .iter()
            .any(|s| !s.watched.load(Ordering::Relaxed));
        if ring.is_none() {
            ring = DeadlineReads::new(1, 4096 + 160 * (top + 2)).ok();
        }
        if stat.is_none() && unwatched {
            stat = File::open(&path).ok();
        }
        let read = match (ring.as_mut(), stat.as_ref(), unwatched) {
            (Some(r), Some(f), true) => r.run(Some(next), &[f.as_fd()]).is_ok(),
            (Some(r), _, _) => {
                let _ = r.run(Some(next), &[]);
                false
            }
            (None, _, _) => {
                std::thread::sleep(std::time::Duration::from_nanos(period_ns));
                false
            }
        };
        let now = monotonic_ns();
        if let (true, Some(r)) = (read, ring.as_mut()) {
            match sweep(&shared, &mut cores, r, now, &cfg) {
                Sweep::Done => {}
                Sweep::Grow(cap) => r.set_capacity(0, cap),
                Sweep::Reopen => stat = None,
            }
        } else {
            mark_watched(&shared, &mut cores);
        }
        shared
            .sweep_cpu_ns
            .store(thread_cpu_ns(), Ordering::Relaxed);
        shared.sweeps.fetch_add(u64::from(read), Ordering::Relaxed);
        next = next_deadline(next, now, period_ns);
    }
}

enum Sweep {
    Done,
    /// The read filled the buffer: read again into one this large.
    Grow(usize),
    /// The read failed: reopen the file.
    Reopen,
}

/// Publishes every unwatched core from one read.
fn sweep(
    shared: &Shared,
    cores: &mut [Swept],
    ring: &DeadlineReads,
    now: u64,
    cfg: &SamplerConfig,
) -> Sweep {
    let cap = ring.capacity(0);
    let parsed = match ring.result(0) {
        Ok(buf) if buf.len() >= cap => return Sweep::Grow((cap * 2).min(MAX_STAT_BUF)),
        Ok(buf) => procstat::parse_all(buf),
        Err(_) => {
            for (slot, c) in shared.slots.iter().zip(cores.iter_mut()) {
                if !slot.watched.load(Ordering::Relaxed) {
                    c.reading.out.errors += 1;
                    slot.cell.publish(&c.reading.out);
                }
            }
            return Sweep::Reopen;
        }
    };
    // Both lists are in ascending CPU order: walk them together.
    let lines = parsed.as_ref().map(|p| p.cpus.as_slice()).unwrap_or(&[]);
    let mut at = 0;
    for (slot, c) in shared.slots.iter().zip(cores.iter_mut()) {
        while at < lines.len() && lines[at].0 < slot.cpu {
            at += 1;
        }
        let watched = slot.watched.load(Ordering::Relaxed);
        if watched {
            c.was_watched = true;
            continue;
        }
        if c.was_watched {
            c.reading.resume(slot.cell.load());
            c.was_watched = false;
        }
        if parsed.is_err() {
            c.reading.out.anomalies += 1;
        } else {
            let times = lines.get(at).filter(|l| l.0 == slot.cpu).map(|l| l.1);
            c.reading.observe(times, now, cfg.smoothing);
        }
        slot.cell.publish(&c.reading.out);
    }
    Sweep::Done
}

/// Notes which cores their own threads have, when there was nothing to read.
fn mark_watched(shared: &Shared, cores: &mut [Swept]) {
    for (slot, c) in shared.slots.iter().zip(cores.iter_mut()) {
        if slot.watched.load(Ordering::Relaxed) {
            c.was_watched = true;
        }
    }
}
