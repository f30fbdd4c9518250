//! Clocks read with `clock_gettime`: monotonic time (the clock io_uring timeouts use) and the CPU
//! time of this thread or process.

/// Nanoseconds of `CLOCK_MONOTONIC`: comparable across threads, and the clock of absolute
/// io_uring timeouts.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// CPU time this thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time this process (all its threads) has used, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    read(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Nanoseconds of `CLOCK_REALTIME` (the clock of kernel receive timestamps).
pub fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// Wall-clock seconds since the Unix epoch (for log headers only; never for intervals).
pub fn unix_time_s() -> f64 {
    let ns = read(libc::CLOCK_REALTIME);
    ns as f64 / 1e9
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec owned by this frame; clock_gettime writes only
    // into it and keeps no pointer after returning.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        // Only an unknown clock id fails, and these ids exist on every Linux this runs on.
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_advances_and_cpu_time_is_counted() {
        let a = monotonic_ns();
        let c0 = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..200_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(monotonic_ns() > a);
        assert!(thread_cpu_ns() > c0);
        assert!(process_cpu_ns() >= thread_cpu_ns());
        assert!(unix_time_s() > 1.6e9);
    }
}
