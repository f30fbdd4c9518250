//! Tools that ship with lowsched but are not part of the daemon: `lowsched loadgen` and
//! `lowsched simulate`.
//!
//! Nothing under `daemon/`, `node/`, `decide/` or `store/` may use this folder (the architecture
//! test checks it).

pub mod loadgen;
pub mod simulate;
