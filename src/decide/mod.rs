//! Deciding: the scheduling policies, the SLO controller and the pending-job queue.
//!
//! Pure code: a snapshot and the time go in, commands come out. No I/O, no clock, no threads of
//! its own. May use `model/` only (the architecture test checks it).

pub mod controller;
pub mod fairshare;
pub mod policy;
pub mod queue;
pub mod slurm;
pub mod users;
