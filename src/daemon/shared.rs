//! State shared between the socket threads and the control loop, and the messages between them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use crate::api::protocol::{JobStatus, ProtocolError};
use crate::decide::policy::Policy;
use crate::decide::policy::fit::ServiceClaim;
use crate::decide::users::SubmitLimits;
use crate::model::inventory::Inventory;
use crate::model::job::{JobId, Timestamp};
use crate::sense::probe::ProbeHandle;

use super::jobs::{Jobs, TableRead};
use super::server::Caller;

/// A request that changes a running job, carried out by the control loop (which owns the
/// actuator) and answered on `reply`.
#[derive(Debug)]
pub enum Op {
    /// Something changed (a submit): run the policy.
    Wake,
    Cancel {
        id: JobId,
        caller: Caller,
        reply: Sender<Result<JobStatus, ProtocolError>>,
    },
    Pause {
        id: JobId,
        caller: Caller,
        reply: Sender<Result<JobStatus, ProtocolError>>,
    },
    Resume {
        id: JobId,
        caller: Caller,
        reply: Sender<Result<JobStatus, ProtocolError>>,
    },
    /// SIGHUP: the control loop's part of a config reload.
    Reload(Box<super::reload::LiveControl>),
}

/// Everything the socket threads and the control loop share.
#[derive(Debug)]
pub struct Shared {
    /// The job table, queue, journal and event log, changed only through this door.
    pub jobs: Jobs,
    /// The policy; a reload (SIGHUP) replaces it. Jobs queued before keep their queue rank
    /// (the engine orders by the new policy's rank in each decision).
    pub policy: RwLock<Arc<dyn Policy>>,
    pub node: Inventory,
    /// How the configured service may claim cores: a job wider than batch can ever be is
    /// refused at submit (see [`crate::decide::policy::fit`]).
    pub service_claim: ServiceClaim,
    /// The limits checked at submit; a reload (SIGHUP) replaces them.
    pub limits: RwLock<SubmitLimits>,
    pub next_id: AtomicU64,
    pub ops: Sender<Op>,
    /// The latency probe, once the protected service is found (for `lowsched stats`).
    pub probe: Arc<Mutex<Option<ProbeHandle>>>,
    pub stopping: AtomicBool,
    /// What `/metrics` and `lowsched metrics` show.
    pub metrics: Arc<super::metrics::MetricsBoard>,
    /// Bumped by SIGHUP: the observer starts a new latency history segment (new files).
    pub history_generation: AtomicU64,
}

impl Shared {
    pub fn table(&self) -> TableRead<'_> {
        self.jobs.table()
    }

    pub fn wake(&self) {
        let _ = self.ops.send(Op::Wake);
    }

    pub fn allocate_id(&self) -> JobId {
        JobId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_policy(&self, policy: Arc<dyn Policy>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// Asks the observer to reopen the latency history (SIGHUP).
    pub fn reopen_history(&self) {
        self.history_generation.fetch_add(1, Ordering::Relaxed);
    }

    pub fn limits(&self) -> SubmitLimits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn probe(&self) -> Option<ProbeHandle> {
        self.probe.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Wall-clock now as a [`Timestamp`].
pub fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}
