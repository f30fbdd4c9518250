//! Giving freed heap memory back to the kernel (glibc's `malloc_trim`): the specs of jobs that
//! left the daemon's table are freed into the allocator's arenas, and without a trim the
//! daemon's resident size would stay at its peak.

/// Returns the allocator's free memory to the kernel; whether any was released. A no-op where
/// the C library is not glibc.
#[cfg(target_env = "gnu")]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers; it walks the allocator's own free lists under the
    // allocator's locks, which any thread may do at any time (this is not a signal handler).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the allocator's free memory to the kernel; whether any was released. A no-op where
/// the C library is not glibc.
#[cfg(not(target_env = "gnu"))]
pub fn trim() -> bool {
    false
}
