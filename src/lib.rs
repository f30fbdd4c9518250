//! lowsched: a per-node scheduler that keeps a latency-critical service inside its SLO while
//! best-effort batch jobs use the cores it does not need.
//!
//! Data flows one way: samplers → state → policy → commands → actuator.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod actuator;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod controller;
pub mod cpuset;
pub mod credentials;
pub mod daemon;
pub mod doorbell;
pub mod eventlog;
pub mod exit;
pub mod inventory;
pub mod job;
pub mod jobfile;
pub mod jobstate;
pub mod journal;
pub mod latency;
pub mod loadgen;
pub mod log;
pub mod memcache;
pub mod pmqos;
pub mod policy;
pub mod probe;
pub mod procstat;
pub mod protocol;
pub mod queue;
pub mod resources;
pub mod sampler;
pub mod sdnotify;
pub mod seqcell;
pub mod service;
pub mod shim;
pub mod statedir;
pub mod statsdump;
pub mod sys;
