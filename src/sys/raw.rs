//! Raw system calls that never touch errno or any thread-local: the only calls a `CLONE_VM`
//! child that runs beside its parent may make (errno lives in the parent thread's TLS).

/// A raw syscall: returns the kernel's result, `-errno` on failure.
///
/// # Safety
/// The caller guarantees the arguments are valid for syscall `nr` (pointers to live memory
/// of the right size for as long as the kernel reads or writes it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn syscall(nr: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 syscall convention: number in rax, arguments in rdi, rsi, rdx, r10,
    // r8, r9; the kernel clobbers rcx and r11 and returns in rax. Argument validity is the
    // caller's contract.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere: libc's syscall(), which sets errno (fine in fork-style children, the only kind
/// used there).
///
/// # Safety
/// As above.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn syscall(nr: libc::c_long, a: [usize; 6]) -> isize {
    // SAFETY: argument validity is the caller's contract.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        -(nix::errno::Errno::last_raw() as isize)
    } else {
        r as isize
    }
}
