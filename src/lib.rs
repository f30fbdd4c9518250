//! lowsched: a per-node scheduler that keeps a latency-critical service inside its SLO while
//! best-effort batch jobs use the cores it does not need.
//!
//! Data flows one way, and the folders are its stages:
//!
//! - [`sense`]: samplers and the latency probe measure the node and the service;
//! - [`model`]: the state they describe: jobs, states, resources, cpusets, the inventory;
//! - [`decide`]: pure policies and the SLO controller turn a snapshot into commands;
//! - [`node`]: the actuator carries the commands out in cgroups, jobs and the service;
//! - [`store`]: the journal and the event log keep what must survive a restart;
//! - [`daemon`]: wires the stages into one process and serves the socket ([`api`]);
//! - [`cli`]: the `lowsched` command; [`tools`]: the load generator;
//! - [`sys`]: every `unsafe` system call, each with the invariant it relies on.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod cli;
pub mod daemon;
pub mod decide;
pub mod log;
pub mod model;
pub mod node;
pub mod sense;
pub mod store;
pub mod sys;
pub mod tools;
