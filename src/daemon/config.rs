//! The daemon's configuration: built-in defaults, an optional TOML file, command-line overrides.
//! Every key, its meaning and its default is listed in systemd/lowsched.toml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decide::controller::ControllerConfig;
use crate::decide::policy::config::PolicyConfig;
use crate::model::inventory::Gpu;
use crate::model::limits::{JobLimits, Rlimit};
use crate::model::resources::Bytes;
use crate::model::text::quoted;
use crate::node::service::ServiceConfig;
use crate::node::slurm::SlurmConfig;

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/lowsched/lowsched.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lowsched";
/// `cgroup_root` value meaning "the systemd-delegated group when run as a unit, else
/// `<cgroup mount>/lowsched`".
pub const DEFAULT_CGROUP_ROOT: &str = "lowsched";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration. Every section and key may be left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket clients connect to.
    pub socket: PathBuf,
    /// Journal, event logs, job outputs and exit records.
    pub state_dir: PathBuf,
    /// cgroup root: `lowsched` (the default) means the unit's delegated group under systemd,
    /// else `<mount>/lowsched`; any other name or relative path is taken under the mount.
    pub cgroup_root: String,
    /// `error`, `warning`, `notice`, `info` or `debug`.
    pub log_level: String,
    pub server: ServerConfig,
    pub journal: JournalConfig,
    pub node: NodeConfig,
    pub policy: PolicySection,
    pub batch: BatchConfig,
    pub jobs: JobsConfig,
    pub service: ServiceConfig,
    pub slo: SloConfig,
    pub controller: ControllerConfig,
    pub sampler: SamplerSection,
    pub probe: ProbeSection,
    pub history: HistorySection,
    pub metrics: MetricsSection,
    pub slurm: SlurmConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(crate::api::client::DEFAULT_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
            log_level: "info".into(),
            server: ServerConfig::default(),
            journal: JournalConfig::default(),
            node: NodeConfig::default(),
            policy: PolicySection::default(),
            batch: BatchConfig::default(),
            jobs: JobsConfig::default(),
            service: ServiceConfig::default(),
            slo: SloConfig::default(),
            controller: ControllerConfig::default(),
            sampler: SamplerSection::default(),
            probe: ProbeSection::default(),
            history: HistorySection::default(),
            metrics: MetricsSection::default(),
            slurm: SlurmConfig::default(),
        }
    }
}

/// `[server]`: limits on clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Connections served at once; the next gets a `busy` error.
    pub max_connections: usize,
    /// Connections one non-root user may hold at once; root is never refused for this.
    pub max_connections_per_user: usize,
    /// A client silent this long, or this slow to finish a request, is disconnected (ms).
    pub idle_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 128,
            max_connections_per_user: 16,
            idle_timeout_ms: 60_000,
        }
    }
}

/// `[jobs]`: what every job's processes get, and how many jobs may wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Umask (octal text) of a job whose request names none.
    pub umask: String,
    /// Resource limits set on every job before it drops to its user (`nofile = "1024:4096"`).
    pub rlimits: BTreeMap<String, Rlimit>,
    /// Set `no_new_privs` on jobs: no privilege gain through setuid programs (sudo breaks).
    pub no_new_privs: bool,
    /// `pids.max` of every job (pure v2); 0: no cap.
    pub pids_max: u64,
    /// `memory.max` of a job that names no memory (pure v2); default: 90% of `node.memory`.
    pub memory_max: Option<Bytes>,
    /// Jobs one non-root user may have pending, running or paused; a submit over it is refused.
    /// (`max_queued_per_user`, its old name, counted pending jobs only.)
    #[serde(alias = "max_queued_per_user")]
    pub max_jobs_per_user: usize,
    /// Pending jobs in all; a submit over it is refused.
    pub max_queued: usize,
    /// Where default job outputs (`<dir>/<id>/stdout`) go; default `<state_dir>/jobs`. Put it
    /// on another filesystem than `state_dir` so that a job's output cannot fill the journal's.
    pub output_dir: Option<PathBuf>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            umask: "0022".into(),
            rlimits: BTreeMap::new(),
            no_new_privs: false,
            pids_max: crate::model::limits::DEFAULT_PIDS_MAX,
            memory_max: None,
            max_jobs_per_user: 10_000,
            max_queued: 100_000,
            output_dir: None,
        }
    }
}

impl JobsConfig {
    /// The umask as a number.
    pub fn umask_value(&self) -> Result<u32, String> {
        let v = u32::from_str_radix(self.umask.trim(), 8).map_err(|_| {
            format!(
                "jobs.umask {}: expected octal like \"0022\"",
                quoted(&self.umask)
            )
        })?;
        crate::model::limits::check_umask(v).map_err(|e| format!("jobs.umask: {e}"))?;
        Ok(v)
    }

    /// What every job's processes get.
    pub fn limits(&self) -> Result<JobLimits, String> {
        crate::model::limits::check_rlimits(&self.rlimits)
            .map_err(|e| format!("jobs.rlimits: {e}"))?;
        Ok(JobLimits {
            umask: self.umask_value()?,
            rlimits: self.rlimits.clone(),
            no_new_privs: self.no_new_privs,
        })
    }
}

/// `[journal]`: durability and compaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Compact once this many records were appended since the last compaction.
    pub compact_after: usize,
    /// Finished jobs kept through a compaction and in the daemon's job table (for status and
    /// wait); older ones leave memory as later ones end.
    pub keep_finished: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            compact_after: 50_000,
            keep_finished: crate::store::journal::DEFAULT_KEEP_FINISHED,
        }
    }
}

/// `[node]`: overrides of what is read from the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Cores lowsched manages, in list format (`0-7`); default: every online CPU.
    pub cores: Option<String>,
    /// Memory batch jobs may claim in total (`64G`); default: MemTotal.
    pub memory: Option<Bytes>,
    /// GPUs, e.g. `[{ index = 0, variant = "A100" }]`; default: detected NVIDIA GPUs.
    pub gpus: Option<Vec<Gpu>>,
}

/// `[policy]`: which policy and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// `fifo`, `priority`, `sjf`, `ljf`, `edf` or `adaptive`.
    pub name: String,
    /// Seconds a pending job may wait before it reserves the resources it needs.
    pub starvation_age_s: f64,
    /// `adaptive`: seconds of slack below which a deadline counts as at risk.
    pub deadline_slack_s: f64,
    /// `adaptive`: pending jobs with estimates that switch it to `sjf`.
    pub sjf_backlog: usize,
    /// How often the policy runs even when nothing changed (timeouts, starvation), ms.
    pub tick_ms: u64,
    /// Interleave users' jobs of equal rank, least recent use of cores first.
    pub fair_share: bool,
    /// Seconds after which a user's past core usage counts half (fair share).
    pub fair_share_half_life_s: f64,
    /// Highest priority a user other than root may set; a higher one is refused at submit.
    pub max_user_priority: i32,
}

impl Default for PolicySection {
    fn default() -> Self {
        let p = PolicyConfig::default();
        Self {
            name: "priority".into(),
            starvation_age_s: p.starvation_age.as_secs_f64(),
            deadline_slack_s: p.deadline_slack.as_secs_f64(),
            sjf_backlog: p.sjf_backlog,
            tick_ms: 250,
            fair_share: p.fair_share,
            fair_share_half_life_s: 3600.0,
            max_user_priority: 100,
        }
    }
}

impl PolicySection {
    pub fn policy_config(&self) -> Result<PolicyConfig, String> {
        let secs = |name: &str, v: f64| {
            std::time::Duration::try_from_secs_f64(v)
                .map_err(|_| format!("policy.{name} = {v} is not a number of seconds >= 0"))
        };
        Ok(PolicyConfig {
            starvation_age: secs("starvation_age_s", self.starvation_age_s)?,
            deadline_slack: secs("deadline_slack_s", self.deadline_slack_s)?,
            sjf_backlog: self.sjf_backlog,
            fair_share: self.fair_share,
        })
    }

    /// The half-life of users' core usage.
    pub fn fair_share_half_life(&self) -> Result<std::time::Duration, String> {
        std::time::Duration::try_from_secs_f64(self.fair_share_half_life_s).map_err(|_| {
            format!(
                "policy.fair_share_half_life_s = {} is not a number of seconds >= 0",
                self.fair_share_half_life_s
            )
        })
    }
}

/// `[batch]`: how batch jobs run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Run batch jobs at idle CPU priority (SCHED_IDLE), so on a core shared with the service
    /// the service preempts them at once.
    pub idle_priority: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            idle_priority: true,
        }
    }
}

/// `[slo]`: the protected service's latency objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloConfig {
    /// Target 95th-percentile latency, µs.
    pub p95_us: u64,
    /// Window over which the p95 is judged, ms.
    pub window_ms: u64,
}

impl Default for SloConfig {
    fn default() -> Self {
        Self {
            p95_us: 800,
            window_ms: 1_000,
        }
    }
}

/// `[sampler]`: per-core utilization sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerSection {
    /// Sampling period of the service's cores, ms (/proc/stat moves in 10 ms ticks; shorter
    /// periods are noise).
    pub period_ms: u64,
    /// Sampling period of the other cores, ms: their figures are shown, not acted on.
    pub batch_period_ms: u64,
    /// Time constant of the utilization EWMA, ms.
    pub smoothing_ms: u64,
}

impl Default for SamplerSection {
    fn default() -> Self {
        Self {
            period_ms: 50,
            batch_period_ms: 250,
            smoothing_ms: 150,
        }
    }
}

/// `[probe]`: the latency probe of the protected service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSection {
    /// Probe requests per second.
    pub rate: u32,
    /// Probe requests per second while the service is calm: its recent p95 below
    /// `calm_p95_frac` of the SLO target and no recent probe failed.
    pub calm_rate: u32,
    pub calm_p95_frac: f64,
    /// Span of the recent-latency signal the controller reacts to, ms.
    pub fast_horizon_ms: u64,
    /// Run the probe thread SCHED_FIFO at this priority (1-99), so its own scheduling delay
    /// stays out of the measurement; 0 = normal priority.
    pub realtime_priority: i32,
}

impl Default for ProbeSection {
    fn default() -> Self {
        Self {
            // Measured on the 2-vCPU test VM: a probe's wake-up costs 100-140 µs of CPU, so
            // the rate is most of the daemon's own CPU use: 100/s is ~1 % of a core and still
            // puts 20 samples in the 200 ms recent signal (its p95 is the 2nd highest); a calm
            // service is probed at a quarter of that.
            rate: 100,
            calm_rate: 25,

            calm_p95_frac: 0.5,
            fast_horizon_ms: 200,
            realtime_priority: 0,
        }
    }
}

/// `[history]`: the probe's windows for the whole run, under `<state_dir>/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySection {
    pub enabled: bool,
    /// Start a new segment once the interval log reaches this many bytes (0: never by size).
    pub max_bytes: u64,
    /// Start a new segment once the current one is this many seconds old (0: never by age).
    pub max_age_s: u64,
    /// Segments kept, the current one included (0: keep all).
    pub keep: usize,
}

impl Default for HistorySection {
    fn default() -> Self {
        let r = crate::store::history::Rotation::default();
        Self {
            enabled: true,
            max_bytes: r.max_bytes,
            max_age_s: r.max_age.as_secs(),
            keep: r.keep,
        }
    }
}

impl HistorySection {
    pub fn rotation(&self) -> crate::store::history::Rotation {
        crate::store::history::Rotation {
            max_bytes: self.max_bytes,
            max_age: std::time::Duration::from_secs(self.max_age_s),
            keep: self.keep,
        }
    }
}

/// `[metrics]`: Prometheus metrics (off by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// `HOST:PORT` to serve `GET /metrics` on, e.g. `127.0.0.1:9480`; empty: no endpoint.
    pub listen: String,
    /// A node_exporter textfile-collector file to write the metrics to (`*.prom`, written to a
    /// temporary file and renamed); empty: none.
    pub textfile: String,
    /// How often the textfile is rewritten, ms.
    pub textfile_interval_ms: u64,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: String::new(),
            textfile: String::new(),
            textfile_interval_ms: 15_000,
        }
    }
}

/// Command-line overrides (`lowsched daemon --socket … --state-dir … --cgroup-root …`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub cgroup_root: Option<String>,
}

impl Config {
    /// The limits checked at submit.
    pub fn submit_limits(&self) -> crate::decide::users::SubmitLimits {
        crate::decide::users::SubmitLimits {
            max_user_priority: self.policy.max_user_priority,
            max_jobs_per_user: self.jobs.max_jobs_per_user,
            max_queued: self.jobs.max_queued,
        }
    }

    /// Parses a TOML text (`path` names it in errors) and checks it.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Defaults, then the config file (the given one, which must exist, or the default path if
    /// present), then the overrides.
    pub fn load(o: &Overrides) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let (mut cfg, used) = match &o.config {
            Some(p) => (Self::read(p)?, Some(p.clone())),
            None if Path::new(DEFAULT_CONFIG).exists() => (
                Self::read(Path::new(DEFAULT_CONFIG))?,
                Some(PathBuf::from(DEFAULT_CONFIG)),
            ),
            None => (Config::default(), None),
        };
        if let Some(s) = &o.socket {
            cfg.socket = s.clone();
        }
        if let Some(s) = &o.state_dir {
            cfg.state_dir = s.clone();
        }
        if let Some(s) = &o.cgroup_root {
            cfg.cgroup_root = s.clone();
        }
        cfg.check(used.as_deref().unwrap_or(Path::new("(command line)")))?;
        Ok((cfg, used))
    }

    fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if crate::log::parse_level(&self.log_level).is_none() {
            return Err(bad(format!(
                "log_level {}: expected error, warning, notice, info or debug",
                quoted(&self.log_level)
            )));
        }
        crate::decide::policy::config::by_name(&self.policy.name, &PolicyConfig::default())
            .map_err(|e| bad(format!("policy.name: {e}")))?;
        self.policy.policy_config().map_err(bad)?;
        self.policy.fair_share_half_life().map_err(bad)?;
        if let Some(c) = &self.node.cores {
            c.parse::<crate::model::cpuset::CpuSet>()
                .map_err(|e| bad(format!("node.cores: {e}")))?;
        }
        if self.service.min_cores == 0 {
            return Err(bad("service.min_cores must be at least 1".into()));
        }
        if self.service.max_cores != 0 && self.service.max_cores < self.service.min_cores {
            return Err(bad(
                "service.max_cores must be 0 (all) or >= service.min_cores".into(),
            ));
        }
        if !(-1..=1_000_000).contains(&self.service.resume_latency_us) {
            return Err(bad(format!(
                "service.resume_latency_us is {}: use -1 (leave alone), 0 (poll) or up to 1000000",
                self.service.resume_latency_us
            )));
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(format!(
                "metrics.listen {}: expected HOST:PORT with a numeric address, e.g. 127.0.0.1:9480",
                quoted(&self.metrics.listen)
            )));
        }
        if self.metrics.textfile_interval_ms == 0 {
            return Err(bad("metrics.textfile_interval_ms must be positive".into()));
        }
        if self.slo.p95_us == 0 || self.slo.window_ms == 0 {
            return Err(bad("slo.p95_us and slo.window_ms must be positive".into()));
        }
        self.check_control().map_err(bad)?;
        self.slurm.check().map_err(bad)?;
        if self.server.max_connections == 0 || self.server.max_connections_per_user == 0 {
            return Err(bad(
                "server.max_connections and max_connections_per_user must be positive".into(),
            ));
        }
        self.jobs.limits().map_err(bad)?;
        if self.jobs.max_queued == 0 || self.jobs.max_jobs_per_user == 0 {
            return Err(bad(
                "jobs.max_queued and jobs.max_jobs_per_user must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The controller's thresholds, the samplers' periods and the probe's rates.
    fn check_control(&self) -> Result<(), String> {
        let c = &self.controller;
        if c.period_ms == 0 || !(c.grow_p95_frac > c.shrink_p95_frac && c.grow_util > c.shrink_util)
        {
            return Err(
                "controller: period_ms must be positive and the grow thresholds above the shrink ones"
                    .into(),
            );
        }
        if !(0.0 < c.share_quota_min && c.share_quota_min <= c.share_quota && c.share_quota <= 1.0)
        {
            return Err(format!(
                "controller: need 0 < share_quota_min ({}) <= share_quota ({}) <= 1",
                c.share_quota_min, c.share_quota
            ));
        }
        if self.sampler.batch_period_ms < self.sampler.period_ms {
            return Err(format!(
                "sampler.batch_period_ms ({}) must be at least sampler.period_ms ({})",
                self.sampler.batch_period_ms, self.sampler.period_ms
            ));
        }
        if self.sampler.period_ms == 0 || self.probe.rate == 0 {
            return Err("sampler.period_ms and probe.rate must be positive".into());
        }
        if !(1..=self.probe.rate).contains(&self.probe.calm_rate)
            || !(0.0..1.0).contains(&self.probe.calm_p95_frac)
        {
            return Err(format!(
                "probe.calm_rate must be 1..=probe.rate ({}) and probe.calm_p95_frac in [0, 1)",
                self.probe.rate
            ));
        }
        if !(0..=99).contains(&self.probe.realtime_priority) {
            return Err("probe.realtime_priority must be 0 (off) or 1-99".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
