//! Acting on the node: the cgroup layer (both layouts), the actuator that carries out the
//! policy's commands, the per-job waiter (shim), the protected service and the PM QoS of its
//! cores.
//!
//! The only stage that changes the kernel's view of jobs and the service. May use `model/`,
//! `decide/` (the command types), `store/` (per-job directories) and `sys/`.

pub mod actuator;
pub mod cgroup;
pub mod pmqos;
pub mod service;
pub mod shim;
pub mod slurm;
