//! Tools that ship with lowsched but are not part of the daemon: `lowsched loadgen`.
//!
//! Nothing under `daemon/`, `node/`, `decide/` or `store/` may use this folder (the architecture
//! test checks it).

pub mod loadgen;
