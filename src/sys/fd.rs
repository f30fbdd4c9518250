//! Taking ownership of a descriptor a process was started with.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, fcntl};

/// Claims descriptor `fd`, inherited across exec by contract with the parent (the waiter gets
/// its request on fd 3). `None` if it is not open.
pub fn take_inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only queries the flags of `fd`; it fails with EBADF if `fd` is not open.
    let open = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(open, FcntlArg::F_GETFD).ok()?;
    // SAFETY: `fd` is open (checked above) and, by the exec contract, nothing else in this
    // process owns it: this is the only place that claims it, once, at start-up.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
