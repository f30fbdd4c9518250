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
}

impl ChildStage {
    fn from_u32(v: u32) -> Option<Self> {
        use ChildStage::*;
        [
            JoinCgroup, NewSession, SetGroups, SetGid, SetUid, Chdir, Open, Dup, Signals, Exec,
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

/// Everything the child does, in this order: write "0" to each `join` fd (a `cgroup.procs`
/// file: the writer moves itself), `setsid`, drop to `creds`, `chdir(cwd)`, `opens`, `dups`
/// (`dup2(src, dst)`; `src` must not be the `dst` of an earlier entry), reset signal
/// dispositions and unblock all signals if `reset_signals`, then execve each of `programs` in
/// turn (a PATH search done in advance) with `argv` and `envp`.
#[derive(Debug, Default)]
pub struct ChildPlan {
    pub join: Vec<RawFd>,
    pub new_session: bool,
    pub creds: Option<RawCreds>,
    pub cwd: Option<CString>,
    pub opens: Vec<OpenSpec>,
    pub dups: Vec<(RawFd, RawFd)>,
    pub reset_signals: bool,
    pub programs: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// A plan with its argv/envp pointer arrays, ready for the child. Built in the parent.
pub(crate) struct Prepared<'a> {
    pub plan: &'a ChildPlan,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    pub report: RawFd,
}

impl<'a> Prepared<'a> {
    pub fn new(plan: &'a ChildPlan, report: RawFd) -> Self {
        let ptrs = |v: &'a [CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Self {
            plan,
            argv: ptrs(&plan.argv),
            envp: ptrs(&plan.envp),
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
/// until the child execs or exits (the parent is suspended under `CLONE_VFORK`, or the child
/// has its own copy after a fork).
pub(crate) extern "C" fn child_main(arg: *mut c_void) -> ! {
    // SAFETY: the caller passes a pointer to a live `Prepared` (see above); the child only
    // reads through it.
    let prep = unsafe { &*(arg as *const Prepared<'_>) };
    let Err((stage, errno, index)) = run(prep);
    let mut buf = [0u8; 12];
    buf[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&errno.to_ne_bytes());
    buf[8..].copy_from_slice(&index.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is on this stack. A failed
    // report write cannot be reported anywhere, so its result is ignored.
    unsafe {
        libc::write(prep.report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    Errno::last_raw()
}

fn check(ret: libc::c_long, stage: ChildStage, index: u32) -> Result<(), (ChildStage, i32, u32)> {
    if ret < 0 {
        Err((stage, errno(), index))
    } else {
        Ok(())
    }
}

fn run(prep: &Prepared<'_>) -> Result<Infallible, (ChildStage, i32, u32)> {
    let plan = prep.plan;
    for (i, &fd) in plan.join.iter().enumerate() {
        // SAFETY: `fd` is an open cgroup.procs descriptor owned by the parent and inherited;
        // the one-byte buffer is a static string.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        check(n as libc::c_long, ChildStage::JoinCgroup, i as u32)?;
    }
    if plan.new_session {
        // SAFETY: setsid takes no arguments; it fails only if already a group leader.
        let r = unsafe { libc::setsid() };
        check(r as libc::c_long, ChildStage::NewSession, 0)?;
    }
    if let Some(c) = &plan.creds {
        // Raw syscalls: glibc's setgroups/setresgid/setresuid broadcast to every thread of the
        // process (setxid), which is wrong and unsafe in a CLONE_VM child. This child is a
        // single-threaded process, so changing the calling thread changes the whole process.
        // SAFETY: `c.groups` is a live slice the child only reads; the kernel copies it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                c.groups.len() as libc::size_t,
                c.groups.as_ptr(),
            )
        };
        check(r, ChildStage::SetGroups, 0)?;
        // SAFETY: plain integer arguments.
        let r = unsafe { libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) };
        check(r, ChildStage::SetGid, 0)?;
        // SAFETY: plain integer arguments.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) };
        check(r, ChildStage::SetUid, 0)?;
    }
    if let Some(cwd) = &plan.cwd {
        // SAFETY: `cwd` is a NUL-terminated string owned by the plan.
        let r = unsafe { libc::chdir(cwd.as_ptr()) };
        check(r as libc::c_long, ChildStage::Chdir, 0)?;
    }
    for (i, o) in plan.opens.iter().enumerate() {
        // SAFETY: `o.path` is NUL-terminated and owned by the plan; open is async-signal-safe.
        let fd = unsafe { libc::open(o.path.as_ptr(), o.flags | libc::O_CLOEXEC, o.mode) };
        check(fd as libc::c_long, ChildStage::Open, i as u32)?;
        if fd != o.target {
            // SAFETY: both are descriptor numbers; dup2 clears close-on-exec on the target.
            let r = unsafe { libc::dup2(fd, o.target) };
            check(r as libc::c_long, ChildStage::Open, i as u32)?;
        }
    }
    for (i, &(src, dst)) in plan.dups.iter().enumerate() {
        // SAFETY: descriptor numbers only. dup2(fd, fd) would keep close-on-exec, so the
        // same-number case clears the flag instead.
        let r = unsafe {
            if src == dst {
                libc::fcntl(src, libc::F_SETFD, 0)
            } else {
                libc::dup2(src, dst)
            }
        };
        check(r as libc::c_long, ChildStage::Dup, i as u32)?;
    }
    if plan.reset_signals {
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: signal(2) through sigaction is async-signal-safe. glibc refuses its two
            // internal signals (EINVAL); their handlers are reset by exec anyway.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        // SAFETY: `empty` is a local sigset initialised by sigemptyset before use.
        let r = unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
        };
        check(r as libc::c_long, ChildStage::Signals, 0)?;
    }
    // Like execvp: a missing candidate moves on to the next; a permission error is remembered
    // and reported if nothing else works; any other error stops at once.
    let mut saved = (libc::ENOENT, 0u32);
    for (i, prog) in plan.programs.iter().enumerate() {
        // SAFETY: `prog` and the argv/envp arrays are NUL-terminated and owned by the parent,
        // which is suspended (vfork) or was copied (fork); execve only reads them.
        unsafe { libc::execve(prog.as_ptr(), prep.argv.as_ptr(), prep.envp.as_ptr()) };
        let e = errno();
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
