//! Starting a child with clone3: a pidfd from birth, optionally born inside a cgroup
//! (`CLONE_INTO_CGROUP`), and for big multi-threaded parents without copying the address space
//! (`CLONE_VM | CLONE_VFORK`, like posix_spawn).

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
/// The vfork child's stack: it runs a few raw syscalls and execve.
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
    /// the child execs or exits. Cheap however big the caller is (~40 µs vs ~160 µs here).
    /// Falls back to `Fork` on architectures without the clone trampoline.
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
    plan: &ChildPlan,
    mode: SpawnMode,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<Spawned, SpawnError> {
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let prep = Prepared::new(plan, wr.as_raw_fd());
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // Block every signal so that no handler of the caller runs in the child (with CLONE_VM it
    // would run on shared memory). The child keeps them blocked up to exec unless the plan
    // resets them; exec turns caught signals back to their defaults.
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .map_err(SpawnError::Clone)?;
    let ret = match mode {
        SpawnMode::Vfork => clone_vm(&mut args, &prep),
        SpawnMode::Fork => clone_fork(&mut args, &prep),
    };
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(wr);
    let pid = ret?;
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor in `pidfd` when clone3
    // succeeded, and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // EOF: the child exec'd (its copy of the write end was closed on exec). A report: it failed.
    let mut buf = [0u8; 12];
    let mut got = 0;
    while got < buf.len() {
        match read(&rd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SpawnError::Pipe(e)),
        }
    }
    if got == 0 {
        return Ok(Spawned { pid, pidfd });
    }
    let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
    Err(decode_report(&buf[..got]).unwrap_or(SpawnError::Pipe(Errno::EIO)))
}

fn clone_fork(args: &mut CloneArgs, prep: &Prepared<'_>) -> Result<Pid, SpawnError> {
    // SAFETY: fork-style clone3 (no CLONE_VM, no stack): the child gets a copy of this process
    // and returns here with 0, then runs only `child_main`, which is async-signal-safe and never
    // returns. `args` is a live, correctly sized clone_args.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        child_main(prep as *const Prepared<'_> as *mut c_void);
    }
    if ret < 0 {
        return Err(SpawnError::Clone(Errno::last()));
    }
    Ok(Pid::from_raw(ret as libc::pid_t))
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_vm(args: &mut CloneArgs, prep: &Prepared<'_>) -> Result<Pid, SpawnError> {
    clone_fork(args, prep)
}

#[cfg(target_arch = "x86_64")]
fn clone_vm(args: &mut CloneArgs, prep: &Prepared<'_>) -> Result<Pid, SpawnError> {
    let stack = Stack::new()?;
    args.flags |= CLONE_VM | CLONE_VFORK;
    args.stack = stack.base as u64;
    args.stack_size = CHILD_STACK as u64;
    let entry: extern "C" fn(*mut c_void) -> ! = child_main;
    let arg = prep as *const Prepared<'_> as *mut c_void;
    let ret: i64;
    // The child of a CLONE_VM clone starts on the new stack, so it cannot return through Rust
    // code (or libc's syscall()), whose frames live on the parent's stack. The trampoline makes
    // the syscall itself; in the child (rax == 0) it calls `entry(arg)` on the fresh stack,
    // which never returns. The parent falls through with the child's pid or -errno.
    // SAFETY: `args` is a live clone_args whose stack is a mapping of CHILD_STACK bytes that
    // outlives the child's use of it (CLONE_VFORK suspends this thread until the child execs or
    // exits, and `stack` is dropped only after). The kernel sets the child's rsp to
    // stack + stack_size, 16-byte aligned as the call requires. r12/r13 survive the syscall in
    // both processes; rcx and r11 are clobbered by `syscall`.
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
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    drop(stack);
    if ret < 0 {
        return Err(SpawnError::Clone(Errno::from_raw(-ret as i32)));
    }
    Ok(Pid::from_raw(ret as libc::pid_t))
}

/// An anonymous mapping used as the vfork child's stack, lowest page a guard.
#[cfg(target_arch = "x86_64")]
struct Stack {
    base: *mut c_void,
}

#[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of a CHILD_STACK-byte mapping owned by this value; the
        // child no longer runs on it (it exec'd or exited before the parent resumed).
        unsafe { libc::munmap(self.base, CHILD_STACK) };
    }
}
