//! The controller's inputs and answers as the daemon records them in `events.jsonl` (with
//! `controller.record_turns`), so that `lowsched simulate --replay` can run the same turns
//! through a controller with other thresholds. One header per daemon start, one line per turn.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ControllerConfig, Decision, Inputs};
use crate::model::cpuset::CpuSet;

/// `event` of the header line.
pub const HEADER_EVENT: &str = "controller";
/// `event` of a turn line.
pub const TURN_EVENT: &str = "controller_turn";

/// What a controller was built with: enough to build the same one again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub event: String,
    pub slo_p95_us: f64,
    pub cores: CpuSet,
    pub min: usize,
    pub max: usize,
    pub config: ControllerConfig,
}

/// One turn: the inputs exactly as the controller saw them (times in ns, so they round-trip),
/// and the rung, share and change it answered with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub event: String,
    pub now_ns: u64,
    pub sampled_ns: u64,
    pub p95_recent_us: Option<f64>,
    pub p95_window_us: Option<f64>,
    pub service_cpu: Option<f64>,
    pub service_core_util: Option<f64>,
    pub qps: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_jobs: Vec<String>,
    pub rung: usize,
    /// The share quota batch had on the service's cores after the turn (0 when exclusive).
    #[serde(default)]
    pub share: f64,
    /// `grow 0->1: reason`, when the turn changed something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

impl Header {
    pub fn new(
        cfg: &ControllerConfig,
        slo_p95_us: f64,
        cores: CpuSet,
        min: usize,
        max: usize,
    ) -> Self {
        Header {
            event: HEADER_EVENT.into(),
            slo_p95_us,
            cores,
            min,
            max,
            config: cfg.clone(),
        }
    }
}

impl Turn {
    pub fn new(inp: &Inputs, d: &Decision) -> Turn {
        Turn {
            event: TURN_EVENT.into(),
            now_ns: inp.now.as_nanos() as u64,
            sampled_ns: inp.sampled_at.as_nanos() as u64,
            p95_recent_us: inp.p95_recent_us,
            p95_window_us: inp.p95_window_us,
            service_cpu: inp.service_cpu,
            service_core_util: inp.service_core_util,
            qps: inp.qps,
            batch_jobs: inp.batch_jobs.clone(),
            rung: d.alloc.rung,
            share: d.share.as_ref().map_or(0.0, |s| s.quota),
            change: d.change.as_ref().map(ToString::to_string),
        }
    }

    /// The inputs to feed a controller to replay this turn.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            now: Duration::from_nanos(self.now_ns),
            sampled_at: Duration::from_nanos(self.sampled_ns),
            p95_recent_us: self.p95_recent_us,
            p95_window_us: self.p95_window_us,
            service_cpu: self.service_cpu,
            service_core_util: self.service_core_util,
            qps: self.qps,
            batch_jobs: self.batch_jobs.clone(),
        }
    }
}
