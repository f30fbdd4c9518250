//! The only place with `unsafe`: thin wrappers over the syscalls the safe crates do not cover.

pub mod clock;
pub mod epoll;
pub mod sched;
pub mod uring;
