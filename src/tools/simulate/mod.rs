//! `lowsched simulate`: what-if runs of the real SLO controller and batch policy on a model of
//! a node with any number of cores, and replays of what a running daemon recorded.
//!
//! The controller and the policies are pure (readings and the time in, decisions out), so the
//! simulator drives the very code the daemon runs; only the node is modelled: the service's
//! latency ([`latency`]), batch progress (a job's work in core-seconds, done at one core-second
//! per second per core it holds, less what the service uses of a shared core) and the load
//! ([`trace`]). Runs are deterministic for a seed. Two uses:
//! - `run`: one trace and job list under lowsched and under every static partition (service
//!   alone on k cores, batch on the rest; k up to N-1, or N when `service.max_cores` allows
//!   it), compared by windows over the SLO and makespan;
//! - `replay`: the controller turns a daemon recorded (`controller.record_turns`) run through
//!   a controller with the recorded or new thresholds, listing its decisions.

pub mod latency;
mod node;
pub mod replay;
pub mod trace;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::decide::controller::ControllerConfig;
use crate::decide::policy::{PolicyConfig, by_name};
use crate::model::resources::CoreRange;

pub use latency::LatencyModel;
pub use node::{Mode, Outcome};
pub use trace::{Trace, TraceConfig};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad simulator config {path}: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("bad trace {path} (line {line}): {why}")]
    Trace {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("bad recording {path} (line {line}): {why}")]
    Recording {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("simulator config: {0}")]
    Config(String),
}

/// The service's core range (as in the daemon's `[service]`): 0 max = every core but one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceCores {
    pub min_cores: usize,
    pub max_cores: usize,
}

impl Default for ServiceCores {
    fn default() -> Self {
        Self {
            min_cores: 1,
            max_cores: 0,
        }
    }
}

/// One batch job: its work and the cores it can use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub name: String,
    /// CPU work, core-seconds.
    pub work_core_s: f64,
    /// `N` or `MIN:MAX` cores.
    #[serde(with = "core_range")]
    pub cores: CoreRange,
    #[serde(default)]
    pub priority: i32,
}

/// `count` jobs named `batch-N` of `work_core_s` each, on `cores` cores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub count: usize,
    pub work_core_s: f64,
    #[serde(with = "core_range")]
    pub cores: CoreRange,
}

/// The simulator's TOML config. Every field but `trace` has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Cores of the node (all managed).
    pub cores: usize,
    pub seed: u64,
    pub slo_p95_us: f64,
    /// Model step, ms.
    pub step_ms: u64,
    /// The probe's recent-latency span, ms (the daemon's `probe.fast_horizon_ms`).
    pub recent_ms: u64,
    /// Stop here even if batch has not finished, s.
    pub max_s: f64,
    pub memory_bytes: u64,
    pub policy: String,
    pub latency: LatencyModel,
    pub controller: ControllerConfig,
    pub service: ServiceCores,
    pub trace: TraceConfig,
    /// Jobs listed one by one (`[[job]]`), then `batch` generated ones.
    #[serde(rename = "job")]
    pub jobs: Vec<JobConfig>,
    pub batch: Option<BatchConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            cores: 16,
            seed: 1,
            slo_p95_us: 800.0,
            step_ms: 10,
            recent_ms: 200,
            max_s: 1.0e6,
            memory_bytes: 1 << 40,
            policy: "fifo".into(),
            latency: LatencyModel::default(),
            controller: ControllerConfig::default(),
            service: ServiceCores::default(),
            trace: TraceConfig::Constant {
                qps: 1_000.0,
                duration_s: 60.0,
            },
            jobs: Vec::new(),
            batch: None,
        }
    }
}

impl SimConfig {
    pub fn load(path: &std::path::Path) -> Result<SimConfig, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: SimConfig = toml::from_str(&text).map_err(|e| SimError::Parse {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        cfg.expand();
        Ok(cfg)
    }

    /// Appends the generated `batch` jobs to the listed ones.
    pub fn expand(&mut self) {
        if let Some(b) = self.batch.take() {
            let start = self.jobs.len();
            self.jobs.extend((0..b.count).map(|i| JobConfig {
                name: format!("batch-{}", start + i + 1),
                work_core_s: b.work_core_s,
                cores: b.cores,
                priority: 0,
            }));
        }
    }
}

/// Every mode's outcome for one config: lowsched first, then the static partitions.
#[derive(Clone, Debug)]
pub struct Report {
    pub cores: usize,
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn lowsched(&self) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.mode == Mode::Lowsched)
    }

    /// The static partition with the shortest makespan among those with no window over.
    pub fn best_static(&self) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.mode, Mode::Static(_)) && o.windows_over == 0)
            .filter(|o| o.makespan_s.is_some())
            .min_by(|a, b| {
                a.makespan_s
                    .partial_cmp(&b.makespan_s)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    }

    /// A table: one line per mode.
    pub fn table(&self) -> String {
        let best = self.best_static().and_then(|b| b.makespan_s);
        let mut out = format!(
            "{:<12} {:>14} {:>12} {:>10} {:>14} {:>12} {:>8}\n",
            "mode", "windows over", "makespan s", "vs best", "batch core-s", "worst p95", "changes"
        );
        for o in &self.outcomes {
            let mode = match o.mode {
                Mode::Lowsched => "lowsched".to_string(),
                Mode::Static(k) => format!("static {k}"),
            };
            let ms = o
                .makespan_s
                .map_or("unfinished".into(), |m| format!("{m:.1}"));
            let vs = match (o.makespan_s, best) {
                (Some(m), Some(b)) => format!("{:.3}x", m / b),
                _ => "-".into(),
            };
            let p95 = if o.worst_p95_us >= latency::NEVER_US {
                "overload".to_string()
            } else {
                format!("{:.0}us", o.worst_p95_us)
            };
            out.push_str(&format!(
                "{mode:<12} {:>14} {ms:>12} {vs:>10} {:>14.0} {p95:>12} {:>8}\n",
                format!("{}/{}", o.windows_over, o.windows),
                o.batch_core_s,
                o.changes
            ));
        }
        match best {
            Some(_) => out
                .push_str("vs best: makespan over the best static partition with 0 windows over\n"),
            None => out.push_str("no static partition held the SLO in every window\n"),
        }
        out
    }
}

/// Runs lowsched and every static partition on `cfg`.
pub fn run(cfg: &SimConfig) -> Result<Report, SimError> {
    let trace = Trace::load(&cfg.trace)?;
    let policy = by_name(&cfg.policy, &PolicyConfig::default())
        .map_err(|e| SimError::Config(e.to_string()))?;
    if cfg.cores < 2 {
        return Err(SimError::Config(format!(
            "cores = {}: a node needs at least 2 (one for the service, one for batch)",
            cfg.cores
        )));
    }
    // Partitions of 1..N-1 cores, and all N when the service may have them all.
    let widest = if cfg.service.max_cores >= cfg.cores {
        cfg.cores
    } else {
        cfg.cores - 1
    };
    let mut modes = vec![Mode::Lowsched];
    modes.extend((1..=widest).map(Mode::Static));
    let outcomes = modes
        .into_iter()
        .map(|m| Ok(node::Node::new(cfg, &trace, policy.as_ref(), m)?.run(m)))
        .collect::<Result<Vec<_>, SimError>>()?;
    Ok(Report {
        cores: cfg.cores,
        outcomes,
    })
}

/// Serde for a `CoreRange` written as `N` or `"MIN:MAX"`.
mod core_range {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::resources::CoreRange;

    pub fn serialize<S: Serializer>(r: &CoreRange, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", r.min, r.max))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u32),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CoreRange, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(CoreRange::exactly(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests;
