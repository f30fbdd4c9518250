//! The program a new child runs between clone and exec: join cgroups, start a session, become
//! the user, enter the working directory, open its files, reset signals, exec.
//!
//! The plan is built (allocated) in the parent; the child only reads it and makes raw,
//! async-signal-safe calls: no allocation, no locks, no panics. With `CLONE_VM` the child runs
//! on the parent's memory while the parent is suspended, so it also must not write to anything
//! but its own stack (and errno, which is the suspended parent thread's).

use std::convert::Infallible;
use std::ffi::{CString, c_char, c_void};
use std::fmt;
use std::os::fd::RawFd;

use nix::errno::Errno;

use super::raw::syscall as sys;

/// Which step of the child program failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum ChildStage {
    JoinCgroup = 1,
    NewSession = 2,
    SetGroups = 3,
    SetGid = 4,
    SetUid = 5,
    Chdir = 6,
    Open = 7,
    Dup = 8,
    Signals = 9,
    Exec = 10,
    Limits = 11,
    NoNewPrivs = 12,
    CloseFds = 13,
}

impl ChildStage {
    fn from_u32(v: u32) -> Option<Self> {
        use ChildStage::*;
        [
            JoinCgroup, NewSession, SetGroups, SetGid, SetUid, Chdir, Open, Dup, Signals, Exec,
            Limits, NoNewPrivs, CloseFds,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

impl fmt::Display for ChildStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::JoinCgroup => "join its cgroup",
            Self::NewSession => "start a new session",
            Self::SetGroups => "set supplementary groups",
            Self::SetGid => "set group id",
            Self::SetUid => "set user id",
            Self::Chdir => "enter working directory",
            Self::Open => "open file",
            Self::Dup => "set up file descriptors",
            Self::Signals => "reset signals",
            Self::Exec => "exec",
            Self::Limits => "set a resource limit",
            Self::NoNewPrivs => "set no_new_privs",
            Self::CloseFds => "close inherited descriptors",
        })
    }
}

/// Why a child could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the child's error pipe: {0}")]
    Pipe(Errno),
    #[error("cannot map the child's stack: {0}")]
    Stack(Errno),
    #[error("clone3 failed: {0}")]
    Clone(Errno),
    /// The child reported a failure before exec. `index` says which open (for `Open`) or which
    /// program candidate (for `Exec`) failed.
    #[error("child could not {stage}: {errno}")]
    Child {
        stage: ChildStage,
        errno: Errno,
        index: u32,
    },
}

/// A file the child opens after it has become the user, then moves to `target`.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    pub path: CString,
    pub flags: libc::c_int,
    pub mode: libc::mode_t,
    pub target: RawFd,
}

/// Credentials to switch to, with supplementary groups precomputed (getgrouplist) because
/// initgroups is not async-signal-safe.
#[derive(Debug, Clone)]
pub struct RawCreds {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// A resource limit for prlimit64: `RLIMIT_*` number, soft and hard (`u64::MAX`: infinity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the child does, in this order: write "0" to each `join` fd (a `cgroup.procs`
/// file: the writer moves itself), `setsid`, set `limits` (as root: may raise), drop to
/// `creds`, set `user_limits` (as the user: may only lower the hard limit), set `umask`,
/// `chdir(cwd)`, `opens`, `dups` (`dup2(src, dst)`; `src` must not be the `dst` of an earlier
/// entry), mark every descriptor from `close_from` up close-on-exec (so the job gets none of
/// the descriptors its parent was started with), set `no_new_privs`, reset signal
/// dispositions and unblock all signals if `reset_signals`, then execve each of `programs` in
/// turn (a PATH search done in advance) with `argv` and `envp`.
#[derive(Clone, Debug, Default)]
pub struct ChildPlan {
    pub join: Vec<RawFd>,
    pub new_session: bool,
    pub limits: Vec<RawRlimit>,
    pub creds: Option<RawCreds>,
    pub user_limits: Vec<RawRlimit>,
    pub umask: Option<libc::mode_t>,
    pub cwd: Option<CString>,
    pub opens: Vec<OpenSpec>,
    pub dups: Vec<(RawFd, RawFd)>,
    pub close_from: Option<RawFd>,
    pub no_new_privs: bool,
    pub reset_signals: bool,
    pub programs: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// A plan with its argv/envp pointer arrays, ready for the child. Built in the parent; the
/// pointers point into the plan's own strings, whose heap buffers do not move with this value.
pub(crate) struct Prepared {
    pub plan: ChildPlan,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    pub report: RawFd,
}

// SAFETY: the raw pointers point into the plan's own strings, which move with it; nothing
// else aliases them, so the whole value can move to another thread (the reaper frees it there).
unsafe impl Send for Prepared {}

impl Prepared {
    pub fn new(plan: ChildPlan, report: RawFd) -> Self {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv = ptrs(&plan.argv);
        let envp = ptrs(&plan.envp);
        Self {
            plan,
            argv,
            envp,
            report,
        }
    }
}

/// Decodes the 12-byte report a failed child writes: stage, errno, index.
pub(crate) fn decode_report(buf: &[u8]) -> Option<SpawnError> {
    let word = |i: usize| {
        buf.get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let stage = ChildStage::from_u32(word(0)?)?;
    let errno = Errno::from_raw(i32::try_from(word(1)?).ok()?);
    Some(SpawnError::Child {
        stage,
        errno,
        index: word(2)?,
    })
}

/// The child's entry point. `arg` points to a [`Prepared`] that stays valid and unchanged
/// until the child execs or exits (the parent is suspended under `CLONE_VFORK`, owns it until
/// the error pipe closes in the asynchronous mode, or the child has its own copy after a fork).
/// Only raw syscalls from here on: no errno, no thread-locals, no allocation.
pub(crate) extern "C" fn child_main(arg: *mut c_void) -> ! {
    // SAFETY: the caller passes a pointer to a live `Prepared` (see above); the child only
    // reads through it.
    let prep = unsafe { &*(arg as *const Prepared) };
    let Err((stage, errno, index)) = run(prep);
    let mut buf = [0u8; 12];
    buf[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&errno.to_ne_bytes());
    buf[8..].copy_from_slice(&index.to_ne_bytes());
    // SAFETY: write(2) and exit_group(2) with a buffer on this stack. A failed report write
    // cannot be reported anywhere, so its result is ignored.
    unsafe {
        sys(
            libc::SYS_write,
            [
                prep.report as usize,
                buf.as_ptr() as usize,
                buf.len(),
                0,
                0,
                0,
            ],
        );
        sys(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

fn check(ret: isize, stage: ChildStage, index: u32) -> Result<(), Failure> {
    if ret < 0 {
        Err((stage, -ret as i32, index))
    } else {
        Ok(())
    }
}

/// The kernel's `struct sigaction` for rt_sigaction: SIG_DFL, no flags, empty mask.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// What a failed step returns: the stage, the errno and the index of the item that failed.
type Failure = (ChildStage, i32, u32);

/// The child's steps, in order, each through raw syscalls only (see the module documentation);
/// returns only on failure.
fn run(prep: &Prepared) -> Result<Infallible, Failure> {
    let plan = &prep.plan;
    join_cgroups(plan)?;
    if plan.new_session {
        // SAFETY: setsid takes no arguments.
        let r = unsafe { sys(libc::SYS_setsid, [0; 6]) };
        check(r, ChildStage::NewSession, 0)?;
    }
    set_limits(&plan.limits, 0)?;
    if let Some(c) = &plan.creds {
        become_user(c)?;
    }
    // Reported after `limits` in the index: one numbering over both lists.
    set_limits(&plan.user_limits, plan.limits.len())?;
    if let Some(mask) = plan.umask {
        // SAFETY: plain integer argument; umask cannot fail.
        unsafe { sys(libc::SYS_umask, [mask as usize & 0o777, 0, 0, 0, 0, 0]) };
    }
    if let Some(cwd) = &plan.cwd {
        // SAFETY: `cwd` is a NUL-terminated string owned by the plan.
        let r = unsafe { sys(libc::SYS_chdir, [cwd.as_ptr() as usize, 0, 0, 0, 0, 0]) };
        check(r, ChildStage::Chdir, 0)?;
    }
    open_files(plan)?;
    dup_fds(plan)?;
    if let Some(from) = plan.close_from {
        close_from(from)?;
    }
    if plan.no_new_privs {
        // SAFETY: plain integer arguments.
        let r = unsafe {
            sys(
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as usize, 1, 0, 0, 0, 0],
            )
        };
        check(r, ChildStage::NoNewPrivs, 0)?;
    }
    if plan.reset_signals {
        reset_signals()?;
    }
    exec(prep)
}

/// Writes "0" (this process) to every cgroup.procs descriptor of the plan.
fn join_cgroups(plan: &ChildPlan) -> Result<(), Failure> {
    for (i, &fd) in plan.join.iter().enumerate() {
        // SAFETY: `fd` is an open cgroup.procs descriptor inherited from the parent; the
        // one-byte buffer is a static string.
        let n = unsafe {
            sys(
                libc::SYS_write,
                [fd as usize, b"0".as_ptr() as usize, 1, 0, 0, 0],
            )
        };
        check(n, ChildStage::JoinCgroup, i as u32)?;
    }
    Ok(())
}

/// Sets groups, then gid, then uid (uid last: it gives up the right to change the others).
fn become_user(c: &RawCreds) -> Result<(), Failure> {
    // Raw syscalls: glibc's setgroups/setresgid/setresuid broadcast to every thread of the
    // process (setxid), which is wrong and unsafe in a CLONE_VM child. This child is a
    // single-threaded process, so changing the calling thread changes the whole process.
    // SAFETY: `c.groups` is a live slice the child only reads; the kernel copies it.
    let r = unsafe {
        sys(
            libc::SYS_setgroups,
            [c.groups.len(), c.groups.as_ptr() as usize, 0, 0, 0, 0],
        )
    };
    check(r, ChildStage::SetGroups, 0)?;
    let g = c.gid as usize;
    // SAFETY: plain integer arguments.
    let r = unsafe { sys(libc::SYS_setresgid, [g, g, g, 0, 0, 0]) };
    check(r, ChildStage::SetGid, 0)?;
    let u = c.uid as usize;
    // SAFETY: plain integer arguments.
    let r = unsafe { sys(libc::SYS_setresuid, [u, u, u, 0, 0, 0]) };
    check(r, ChildStage::SetUid, 0)
}

/// Opens the plan's files onto their target descriptors.
fn open_files(plan: &ChildPlan) -> Result<(), Failure> {
    for (i, o) in plan.opens.iter().enumerate() {
        let flags = (o.flags | libc::O_CLOEXEC) as usize;
        // SAFETY: `o.path` is NUL-terminated and owned by the plan.
        let fd = unsafe {
            sys(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as usize,
                    o.path.as_ptr() as usize,
                    flags,
                    o.mode as usize,
                    0,
                    0,
                ],
            )
        };
        check(fd, ChildStage::Open, i as u32)?;
        if fd as RawFd != o.target {
            // SAFETY: descriptor numbers only; dup3 without flags clears close-on-exec.
            let r = unsafe { sys(libc::SYS_dup3, [fd as usize, o.target as usize, 0, 0, 0, 0]) };
            check(r, ChildStage::Open, i as u32)?;
        }
    }
    Ok(())
}

/// Puts inherited descriptors where the job expects them, without close-on-exec.
fn dup_fds(plan: &ChildPlan) -> Result<(), Failure> {
    for (i, &(src, dst)) in plan.dups.iter().enumerate() {
        // SAFETY: descriptor numbers only. dup3 refuses src == dst, and a descriptor kept in
        // place must lose close-on-exec instead.
        let r = unsafe {
            if src == dst {
                sys(
                    libc::SYS_fcntl,
                    [src as usize, libc::F_SETFD as usize, 0, 0, 0, 0],
                )
            } else {
                sys(libc::SYS_dup3, [src as usize, dst as usize, 0, 0, 0, 0])
            }
        };
        check(r, ChildStage::Dup, i as u32)?;
    }
    Ok(())
}

/// Every catchable signal back to its default action, and an empty signal mask.
fn reset_signals() -> Result<(), Failure> {
    let dfl = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64usize {
        if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
            continue;
        }
        // SAFETY: `dfl` lives on this stack; the old action is not asked for.
        unsafe {
            sys(
                libc::SYS_rt_sigaction,
                [sig, &dfl as *const _ as usize, 0, 8, 0, 0],
            );
        }
    }
    let empty: u64 = 0;
    // SAFETY: `empty` is an 8-byte kernel sigset on this stack.
    let r = unsafe {
        sys(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                0,
                8,
                0,
                0,
            ],
        )
    };
    check(r, ChildStage::Signals, 0)
}

/// Tries each candidate program in turn; returns only when none could be executed.
fn exec(prep: &Prepared) -> Result<Infallible, Failure> {
    let plan = &prep.plan;
    // Like execvp: a missing candidate moves on to the next; a permission error is remembered
    // and reported if nothing else works; any other error stops at once.
    let mut saved = (libc::ENOENT, 0u32);
    for (i, prog) in plan.programs.iter().enumerate() {
        // SAFETY: `prog` and the argv/envp arrays are NUL-terminated and owned by `prep`,
        // which outlives the child's use of it; execve only reads them.
        let r = unsafe {
            sys(
                libc::SYS_execve,
                [
                    prog.as_ptr() as usize,
                    prep.argv.as_ptr() as usize,
                    prep.envp.as_ptr() as usize,
                    0,
                    0,
                    0,
                ],
            )
        };
        let e = -r as i32;
        match e {
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            libc::EACCES => saved = (e, i as u32),
            _ => return Err((ChildStage::Exec, e, i as u32)),
        }
        if saved.0 != libc::EACCES {
            saved = (e, i as u32);
        }
    }
    Err((ChildStage::Exec, saved.0, saved.1))
}

/// Sets each limit on this process with prlimit64(0, ...); a failure's index is `base + i`.
fn set_limits(limits: &[RawRlimit], base: usize) -> Result<(), Failure> {
    for (i, l) in limits.iter().enumerate() {
        let new = [l.soft, l.hard];
        // SAFETY: `new` is a `struct rlimit64` (two u64) on this stack; the old value is not
        // asked for.
        let r = unsafe {
            sys(
                libc::SYS_prlimit64,
                [0, l.resource as usize, new.as_ptr() as usize, 0, 0, 0],
            )
        };
        check(r, ChildStage::Limits, (base + i) as u32)?;
    }
    Ok(())
}

/// Marks every descriptor from `from` up close-on-exec: close_range(CLOSE_RANGE_CLOEXEC)
/// (Linux 5.11), else one fcntl per descriptor up to the open-files limit. Marking instead of
/// closing keeps the error pipe working until exec (it is close-on-exec already).
fn close_from(from: RawFd) -> Result<(), Failure> {
    const CLOSE_RANGE_CLOEXEC: usize = 1 << 2;
    // SAFETY: descriptor numbers and flags only.
    let r = unsafe {
        sys(
            libc::SYS_close_range,
            [
                from as usize,
                u32::MAX as usize,
                CLOSE_RANGE_CLOEXEC,
                0,
                0,
                0,
            ],
        )
    };
    if r == 0 {
        return Ok(());
    }
    if r != -(libc::ENOSYS as isize) && r != -(libc::EINVAL as isize) {
        return check(r, ChildStage::CloseFds, 0);
    }
    let mut lim = [0u64; 2];
    // SAFETY: `lim` is a `struct rlimit64` on this stack the kernel writes.
    let r = unsafe {
        sys(
            libc::SYS_prlimit64,
            [
                0,
                libc::RLIMIT_NOFILE as usize,
                0,
                lim.as_mut_ptr() as usize,
                0,
                0,
            ],
        )
    };
    check(r, ChildStage::CloseFds, 0)?;
    let top = lim[0].min(1 << 20) as usize;
    for fd in from as usize..top {
        // SAFETY: descriptor numbers only; EBADF for descriptors that are not open is fine.
        unsafe {
            sys(
                libc::SYS_fcntl,
                [
                    fd,
                    libc::F_SETFD as usize,
                    libc::FD_CLOEXEC as usize,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
    Ok(())
}
