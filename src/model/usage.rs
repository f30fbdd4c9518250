//! What a job's cgroup reported about its use once it ended (`lowsched history`): CPU time and
//! peak memory, each only where the kernel reports it for the job's own group.

use serde::{Deserialize, Serialize};

/// A finished job's use of the node.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of all its processes, µs (v2 `cpu.stat` usage_usec, v1 `cpuacct.usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    /// Peak memory, bytes (v2 `memory.peak`). None on hybrid hosts: the v1 memory hierarchy
    /// holds the machine's own groups and is not lowsched's to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
}
