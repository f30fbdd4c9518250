//! Tools that ship with lowsched but are not part of the daemon: `lowsched loadgen` and
//! `lowsched simulate`.
//!
//! Only `cli/` may use this folder: nothing the daemon runs depends on it (the architecture test
//! checks it).

pub mod loadgen;
pub mod simulate;
