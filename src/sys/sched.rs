//! Scheduling knobs for the calling thread: real-time priority and timer slack.

use std::io;

/// Puts the calling thread in `SCHED_FIFO` at `priority` (1..=99). Needs root or CAP_SYS_NICE.
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a live sched_param for the duration of the call; pid 0 names the
    // calling thread, so no other task's state is touched.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the calling thread in `SCHED_IDLE`: it runs only when nothing of normal priority wants
/// the CPU, and a normal thread waking on its core preempts it at once. Inherited across fork.
pub fn set_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param for the duration of the call; pid 0 names the
    // calling thread, so no other task's state is touched.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's timer slack (default 50 µs) so short sleeps end on time.
pub fn set_timer_slack_ns(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument and affects only the calling
    // thread; no pointers are passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
