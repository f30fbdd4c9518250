//! Starting a child with clone3: a pidfd from birth, optionally born inside a cgroup
//! (`CLONE_INTO_CGROUP`), and for big multi-threaded parents without copying the address space
//! (`CLONE_VM`, like posix_spawn), either waiting for its exec or not.

use std::ffi::c_void;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{Pid, pipe2, read};

use super::child::{ChildPlan, Prepared, SpawnError, child_main, decode_report};

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// The shared-memory child's stack: it runs a few raw syscalls and execve.
const CHILD_STACK: usize = 64 * 1024;

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How to create the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnMode {
    /// `CLONE_VM | CLONE_VFORK`: shares the caller's memory and suspends the calling thread until
    /// the child execs or exits. Cheap however big the caller is. Falls back to `Fork` on
    /// architectures without the clone trampoline.
    Vfork,
    /// Copy-on-write copy of the caller, as fork(2). For small single-threaded callers.
    Fork,
}

/// A started child: its pid and a pidfd on it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

/// Runs `plan` in a new child process (see [`ChildPlan`] for the steps) and returns once the
/// child has exec'd. Any failure before exec comes back as [`SpawnError::Child`] with the step
/// and errno (the classic close-on-exec error pipe); the failed child is reaped here.
/// With `cgroup`, the child is born in that cgroup (a directory fd of a cgroup2 group).
pub fn spawn(
    plan: ChildPlan,
    mode: SpawnMode,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<Spawned, SpawnError> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let prep = Prepared::new(plan, wr.as_raw_fd());
    let (pid, pidfd) = match mode {
        SpawnMode::Vfork if cfg!(target_arch = "x86_64") => {
            let stack = Stack::new()?;
            let r = clone_vm(CLONE_VFORK, &prep, &stack, cgroup);
            drop(stack);
            r
        }
        _ => clone_fork(&prep, cgroup),
    }?;
    drop(wr);
    match wait_exec(&rd) {
        Ok(()) => Ok(Spawned { pid, pidfd }),
        Err(e) => {
            let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
            Err(e)
        }
    }
}

/// Reads the error pipe until EOF: the child's copy of the write end closes when it execs
/// (close-on-exec) or when it exits. A report before EOF means it failed.
///
/// Reading on to EOF after a report matters for children that share our memory: the child
/// still runs (on the stack we own) between writing its report and exiting. EOF comes only
/// once it closed its descriptors at exit, which the kernel does after it has left our address
/// space; and at exec, after it has switched to the new program's.
fn wait_exec(rd: &OwnedFd) -> Result<(), SpawnError> {
    let mut buf = [0u8; 12];
    let mut got = 0;
    loop {
        let mut scratch = [0u8; 16];
        let into: &mut [u8] = if got < buf.len() {
            &mut buf[got..]
        } else {
            &mut scratch
        };
        match read(rd, into) {
            Ok(0) => break,
            Ok(n) if got < buf.len() => got += n,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SpawnError::Pipe(e)),
        }
    }
    if got == 0 {
        return Ok(());
    }
    Err(decode_report(&buf[..got]).unwrap_or(SpawnError::Pipe(Errno::EIO)))
}

/// A child started by [`spawn_async`] that may not have exec'd yet: it still runs on memory
/// this value owns. Poll [`PendingSpawn::fd`] for readability, then call
/// [`PendingSpawn::finish`]. Dropping it first waits for the child to exec or exit.
#[derive(Debug)]
pub struct PendingSpawn {
    prep: Option<Box<Prepared>>,
    stack: Option<Stack>,
    rd: OwnedFd,
}

impl PendingSpawn {
    /// Readable once the child has exec'd (EOF) or reported a failure.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.rd.as_fd()
    }

    /// Waits for the outcome (at once if `fd` polled readable) and frees the child's memory.
    pub fn finish(mut self) -> Result<(), SpawnError> {
        let r = wait_exec(&self.rd);
        self.prep.take();
        self.stack.take();
        r
    }
}

impl Drop for PendingSpawn {
    fn drop(&mut self) {
        if self.prep.is_some() {
            // The child may still be reading the plan or running on the stack.
            let _ = wait_exec(&self.rd);
        }
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prepared({:?})", self.plan.argv)
    }
}

/// Like [`spawn`] with `Vfork`, but returns as soon as the child exists (in `cgroup` when
/// given), without waiting for it to be scheduled and exec: `CLONE_VM` without
/// `CLONE_VFORK`. The child runs beside the caller on memory the returned [`PendingSpawn`]
/// owns, making only raw syscalls. Where the trampoline is missing this is a fork-style clone.
pub fn spawn_async(
    plan: ChildPlan,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<(Spawned, PendingSpawn), SpawnError> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let prep = Box::new(Prepared::new(plan, wr.as_raw_fd()));
    let (spawned, stack) = if cfg!(target_arch = "x86_64") {
        let stack = Stack::new()?;
        let (pid, pidfd) = clone_vm(0, &prep, &stack, cgroup)?;
        (Spawned { pid, pidfd }, Some(stack))
    } else {
        let (pid, pidfd) = clone_fork(&prep, cgroup)?;
        (Spawned { pid, pidfd }, None)
    };
    drop(wr);
    Ok((
        spawned,
        PendingSpawn {
            prep: Some(prep),
            stack,
            rd,
        },
    ))
}

fn clone_args(flags: u64, pidfd: &mut libc::c_int, cgroup: Option<BorrowedFd<'_>>) -> CloneArgs {
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | flags,
        pidfd: std::ptr::addr_of_mut!(*pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    args
}

/// Blocks every signal in the calling thread for the duration of `f`, so that no handler of the
/// caller runs in the child (with CLONE_VM it would run on shared memory). The child keeps them
/// blocked up to exec unless its plan resets them; exec turns caught signals to defaults.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> Result<T, SpawnError> {
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(SpawnError::Clone)?;
    let r = f();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    Ok(r)
}

fn own_pidfd(pid: isize, pidfd: libc::c_int) -> Result<(Pid, OwnedFd), SpawnError> {
    if pid < 0 {
        return Err(SpawnError::Clone(Errno::from_raw(-pid as i32)));
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd` when clone3
    // succeeded, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((Pid::from_raw(pid as libc::pid_t), fd))
}

fn clone_fork(
    prep: &Prepared,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<(Pid, OwnedFd), SpawnError> {
    let mut pidfd: libc::c_int = -1;
    let mut args = clone_args(0, &mut pidfd, cgroup);
    let ret = with_signals_blocked(|| {
        // SAFETY: fork-style clone3 (no CLONE_VM, no stack): the child gets a copy of this
        // process and returns here with 0, then runs only `child_main`, which makes raw
        // syscalls and never returns. `args` is a live, correctly sized clone_args.
        let ret = unsafe {
            super::raw::syscall(
                libc::SYS_clone3,
                [
                    std::ptr::addr_of_mut!(args) as usize,
                    std::mem::size_of::<CloneArgs>(),
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
        if ret == 0 {
            child_main(prep as *const Prepared as *mut c_void);
        }
        ret
    })?;
    own_pidfd(ret, pidfd)
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_vm(
    _extra: u64,
    prep: &Prepared,
    _stack: &Stack,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<(Pid, OwnedFd), SpawnError> {
    clone_fork(prep, cgroup)
}

#[cfg(target_arch = "x86_64")]
fn clone_vm(
    extra: u64,
    prep: &Prepared,
    stack: &Stack,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<(Pid, OwnedFd), SpawnError> {
    let mut pidfd: libc::c_int = -1;
    let mut args = clone_args(CLONE_VM | extra, &mut pidfd, cgroup);
    args.stack = stack.base as u64;
    args.stack_size = CHILD_STACK as u64;
    let entry: extern "C" fn(*mut c_void) -> ! = child_main;
    let arg = prep as *const Prepared as *mut c_void;
    let ret = with_signals_blocked(|| {
        let ret: isize;
        // The child of a CLONE_VM clone starts on the new stack, so it cannot return through
        // Rust code (or libc's syscall()), whose frames live on the parent's stack. The
        // trampoline makes the syscall itself; in the child (rax == 0) it calls `entry(arg)`
        // on the fresh stack, which never returns. The parent falls through with the child's
        // pid or -errno.
        // SAFETY: `args` is a live clone_args whose stack is a mapping of CHILD_STACK bytes
        // that outlives the child's use of it: with CLONE_VFORK this thread is suspended until
        // the child execs or exits; without it the caller keeps `stack` and `prep` until the
        // error pipe reports the exec (PendingSpawn). The kernel sets the child's rsp to
        // stack + stack_size, 16-byte aligned as the call requires. r12/r13 survive the
        // syscall in both processes; rcx and r11 are clobbered by `syscall`.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 as isize => ret,
                in("rdi") std::ptr::addr_of_mut!(args),
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") entry,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    })?;
    own_pidfd(ret, pidfd)
}

/// An anonymous mapping used as a shared-memory child's stack, lowest page a guard.
#[derive(Debug)]
pub(crate) struct Stack {
    base: *mut c_void,
}

// SAFETY: the mapping is owned by this value alone; moving it to another thread (the reaper
// frees it there) moves that ownership.
unsafe impl Send for Stack {}

impl Stack {
    fn new() -> Result<Self, SpawnError> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHILD_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(SpawnError::Stack(Errno::last()));
        }
        // SAFETY: the first page lies inside the mapping just created; making it inaccessible
        // turns a stack overflow into a fault instead of silent corruption.
        unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) };
        Ok(Self { base })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of a CHILD_STACK-byte mapping owned by this value; the
        // child no longer runs on it (it exec'd or exited before this is dropped).
        unsafe { libc::munmap(self.base, CHILD_STACK) };
    }
}
