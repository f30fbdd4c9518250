//! Sensing, the first stage: per-core CPU samplers on `/proc/stat` (io_uring), the service's CPU
//! use, the memcached latency probe with its HDR histograms and its report, and the doorbell that
//! wakes the control loop when a reading crosses a threshold.
//!
//! Sensors publish snapshots (seqlocks, reports); they never act. May use `model/` and `sys/`,
//! never `decide/`, `node/`, `store/`, `daemon/` or `cli/`.

pub mod doorbell;
pub mod latency;
pub mod memcache;
pub mod probe;
pub mod procstat;
pub mod sampler;
pub mod seqcell;
