//! The memcached monitor: a probe connection sends small `get`s at a steady rate and times each
//! from its *scheduled* send time (no coordinated omission) into windowed HDR histograms; a
//! second connection polls `stats` for the service's QPS.
//!
//! Threading: [`Probe::start`] spawns one thread that owns the sockets and the histograms. The
//! controller reads [`ProbeHandle::signal`] — a seqlock copy, never blocking the probe — for the
//! fast signal (last ~50 ms) and the current window; the daemon's `stats` command reads
//! [`ProbeHandle::report`], refreshed once per window.

pub mod report;
mod run;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sense::doorbell::Tripwire;
use crate::sense::latency::{FastLatency, Percentiles, Slo, WindowSummary};

use crate::sense::probe::report::StatsReport;
use crate::sense::seqcell::{Packed, SeqCell};

/// How the probe runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// memcached's `HOST:PORT`, resolved at every (re)connect.
    pub server: String,
    /// Probe `get`s per second.
    pub rate: u32,
    /// The slower rate while memcached is calm: the recent p95 below `calm_below_us` and no
    /// recent probe failed. A recent p95 at or over it brings `rate` back at the next send.
    pub calm_rate: u32,
    /// 0: never calm (always `rate`).
    pub calm_below_us: u64,
    pub key: String,
    pub window: Duration,
    pub slo: Slo,
    /// Span of the fast signal.
    pub fast_horizon: Duration,
    /// How often `stats` is polled for QPS.
    pub stats_interval: Duration,
    /// A request unanswered this long means memcached is stuck: the connection is dropped and
    /// its requests count as failures.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Reconnect back-off, doubling from `backoff_min` up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Completed windows kept (with histograms) for the stats dump.
    pub history: usize,
    /// Pin the probe thread to this CPU.
    pub cpu: Option<usize>,
    /// Run the probe thread `SCHED_FIFO` at this priority, so its own scheduling delays stay
    /// out of the measurement (a failure to switch is reported in `last_error`).
    pub realtime: Option<i32>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            server: "127.0.0.1:11211".into(),
            rate: 1000,
            calm_rate: 1000,
            calm_below_us: 0,
            key: "lowsched:probe".into(),
            window: Duration::from_secs(1),
            slo: Slo::default(),
            fast_horizon: Duration::from_millis(50),
            stats_interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(200),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            history: 300,
            cpu: None,
            realtime: None,
        }
    }
}

/// Why the probe could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bad probe setting: {0}")]
    Config(String),
    #[error("cannot start the probe thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot create the probe's epoll set: {0}")]
    Epoll(std::io::Error),
}

/// What the probe knows about memcached right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Not connected yet.
    #[default]
    Starting,
    /// Answering.
    Up,
    /// Cannot connect or the connection broke; retrying with back-off.
    Down,
    /// Connected but a request went unanswered past the timeout.
    Stalled,
    /// Answered something that is not memcached's protocol.
    Garbage,
}

impl std::fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Up => "up",
            Self::Down => "down",
            Self::Stalled => "stalled",
            Self::Garbage => "garbage",
        })
    }
}

impl ProbeStatus {
    fn from_code(c: u64) -> Self {
        match c {
            1 => Self::Up,
            2 => Self::Down,
            3 => Self::Stalled,
            4 => Self::Garbage,
            _ => Self::Starting,
        }
    }
}

/// The controller's view, published lock-free by the probe thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeSignal {
    /// `CLOCK_MONOTONIC` ns of publication (0: nothing yet).
    pub at_ns: u64,
    pub status: ProbeStatus,
    /// Last `fast_horizon` of probes; requests still waiting count at their age.
    pub fast: FastLatency,
    /// Age of the oldest unanswered probe (0 when none waits).
    pub oldest_waiting_us: u64,
    /// The window in progress (refreshed every ~100 ms).
    pub window_index: u64,
    /// The window in progress's latency (answered probes; failures in `errors`).
    pub window: Percentiles,
    /// SLO limit minus the window's SLO quantile (failures counted); negative: over;
    /// `i64::MIN` when the quantile falls on a failure.
    pub slack_us: i64,
    /// The last completed window's SLO quantile and verdict.
    pub last_p95_us: u64,
    pub last_over: bool,
    pub windows_over: u64,
    pub windows_total: u64,
    /// memcached's `cmd_get + cmd_set` per second (the probe's own gets included).
    pub qps: Option<f64>,
}

impl Packed<19> for ProbeSignal {
    fn pack(&self) -> [u64; 19] {
        let (f, w) = (&self.fast, &self.window);
        let (hq, q) = self.qps.map_or((0, 0), |v| (1, v.to_bits()));
        [
            self.at_ns,
            self.status as u64 | u64::from(self.last_over) << 8 | hq << 9,
            u64::from(f.samples) | u64::from(f.errors) << 32,
            f.p50_us,
            f.p95_us,
            f.max_us,
            self.oldest_waiting_us,
            self.window_index,
            w.count,
            w.errors,
            w.p50_us,
            w.p95_us | w.p99_us << 32,
            w.max_us,
            self.slack_us as u64,
            self.last_p95_us,
            self.windows_over,
            self.windows_total,
            q,
            w.p90_us | w.p999_us << 32,
        ]
    }

    fn unpack(w: [u64; 19]) -> Self {
        Self {
            at_ns: w[0],
            status: ProbeStatus::from_code(w[1] & 0xff),
            last_over: w[1] >> 8 & 1 != 0,
            qps: (w[1] >> 9 & 1 != 0).then(|| f64::from_bits(w[17])),
            fast: FastLatency {
                samples: w[2] as u32,
                errors: (w[2] >> 32) as u32,
                p50_us: w[3],
                p95_us: w[4],
                max_us: w[5],
            },
            oldest_waiting_us: w[6],
            window_index: w[7],
            window: Percentiles {
                count: w[8],
                errors: w[9],
                p50_us: w[10],
                p90_us: w[18] & 0xffff_ffff,
                p95_us: w[11] & 0xffff_ffff,
                p99_us: w[11] >> 32,
                p999_us: w[18] >> 32,
                max_us: w[12],
            },
            slack_us: w[13] as i64,
            last_p95_us: w[14],
            windows_over: w[15],
            windows_total: w[16],
        }
    }
}

#[derive(Debug)]
struct Shared {
    signal: SeqCell<19>,
    report: Mutex<StatsReport>,
    stop: AtomicBool,
}

/// Cheap, cloneable read access to a running probe.
#[derive(Clone, Debug)]
pub struct ProbeHandle {
    shared: Arc<Shared>,
}

impl ProbeHandle {
    /// The latest signal. Lock-free; never blocks the probe.
    pub fn signal(&self) -> ProbeSignal {
        self.shared.signal.load()
    }

    /// The monitor's start (Unix seconds, window starts are relative to it) and the completed
    /// windows numbered above `after` (all kept ones for `None`), with their histograms: what a
    /// reader that follows every window needs, without copying the whole report.
    pub fn windows_after(&self, after: Option<u64>) -> (f64, Vec<WindowSummary>) {
        let r = match self.shared.report.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let new = r
            .windows
            .iter()
            .filter(|w| after.is_none_or(|a| w.index > a))
            .cloned()
            .collect();
        (r.started_unix_s, new)
    }

    /// The objective the probe judges windows against.
    pub fn slo(&self) -> Slo {
        match self.shared.report.lock() {
            Ok(g) => g.slo,
            Err(poisoned) => poisoned.into_inner().slo,
        }
    }

    /// The stats report (refreshed at every window's end), with the current window, status and
    /// QPS patched in from the latest signal.
    pub fn report(&self) -> StatsReport {
        let mut r = match self.shared.report.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let s = self.signal();
        r.status = s.status;
        r.qps = s.qps.or(r.qps);
        r.current.index = s.window_index;
        r.current.latency = s.window;
        r
    }
}

/// A running probe; dropping it stops the thread.
#[derive(Debug)]
pub struct Probe {
    handle: ProbeHandle,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    pub fn start(cfg: ProbeConfig) -> Result<Self, ProbeError> {
        Self::start_with_alarm(cfg, None)
    }

    /// Starts the probe; it checks every recent p95 it publishes against `alarm`, so the
    /// control loop hears of a latency rise as soon as the probe sees it.
    pub fn start_with_alarm(cfg: ProbeConfig, alarm: Option<Tripwire>) -> Result<Self, ProbeError> {
        if cfg.rate == 0 || cfg.rate > 1_000_000 {
            return Err(ProbeError::Config(format!(
                "rate {} must be 1..=1000000 per second",
                cfg.rate
            )));
        }
        if cfg.calm_below_us > 0 && !(1..=cfg.rate).contains(&cfg.calm_rate) {
            return Err(ProbeError::Config(format!(
                "calm rate {} must be 1..={} (the full rate) per second",
                cfg.calm_rate, cfg.rate
            )));
        }
        crate::sense::memcache::proto::check_key(&cfg.key)
            .map_err(|e| ProbeError::Config(e.to_string()))?;
        if cfg.window < Duration::from_millis(10) {
            return Err(ProbeError::Config("window must be at least 10 ms".into()));
        }
        if !(0.0..1.0).contains(&cfg.slo.quantile) || cfg.slo.quantile <= 0.0 {
            return Err(ProbeError::Config("SLO quantile must be in (0, 1)".into()));
        }
        let shared = Arc::new(Shared {
            signal: SeqCell::new(),
            report: Mutex::new(StatsReport::empty(&cfg)),
            stop: AtomicBool::new(false),
        });
        let epoll = crate::sys::epoll::Epoll::new(8).map_err(ProbeError::Epoll)?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || run::run(cfg, s, epoll, alarm))
            .map_err(ProbeError::Spawn)?;
        Ok(Self {
            handle: ProbeHandle { shared },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> ProbeHandle {
        self.handle.clone()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::ops::Deref for Probe {
    type Target = ProbeHandle;
    fn deref(&self) -> &ProbeHandle {
        &self.handle
    }
}

#[cfg(test)]
mod tests;
