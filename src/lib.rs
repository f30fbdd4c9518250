//! lowsched: a per-node scheduler that keeps a latency-critical service inside its SLO while
//! best-effort batch jobs use the cores it does not need.
//!
//! Data flows one way: samplers → state → policy → commands → actuator.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cpuset;
pub mod inventory;
pub mod job;
pub mod jobfile;
pub mod jobstate;
pub mod policy;
pub mod queue;
pub mod resources;
