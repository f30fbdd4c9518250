//! The probe's report: the monitor's state as serde data, what `lowsched stats` shows and the
//! daemon sends over its socket.

use serde::{Deserialize, Serialize};

use super::{ProbeConfig, ProbeStatus};
use crate::sense::latency::{EncodedHistogram, Percentiles, Slo, WindowSummary};

/// memcached's own view (from `stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub pid: u64,
    pub uptime_s: u64,
    pub threads: u64,
    pub curr_connections: u64,
}

/// Everything the stats dump shows; what the daemon sends over its socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub server: String,
    /// Wall-clock start of the monitor (seconds since the Unix epoch); window starts are
    /// relative to it.
    pub started_unix_s: f64,
    pub uptime_s: f64,
    pub window_s: f64,
    pub slo: Slo,
    pub probe_rate: u32,
    /// The slower rate while memcached is calm, when the probe has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_calm_rate: Option<u32>,
    pub status: ProbeStatus,
    pub last_error: Option<String>,
    pub cumulative: Percentiles,
    pub cumulative_hist: Option<EncodedHistogram>,
    /// The window in progress.
    pub current: WindowSummary,
    /// Completed windows, oldest first, with their histograms.
    pub windows: Vec<WindowSummary>,
    pub windows_over: u64,
    pub windows_total: u64,
    /// memcached's `cmd_get + cmd_set` per second.
    pub qps: Option<f64>,
    pub memcached: Option<ServerInfo>,
}

impl StatsReport {
    /// The report of a monitor that has measured nothing yet.
    pub fn empty(cfg: &ProbeConfig) -> Self {
        Self {
            server: cfg.server.clone(),
            started_unix_s: crate::sys::clock::unix_time_s(),
            uptime_s: 0.0,
            window_s: cfg.window.as_secs_f64(),
            slo: cfg.slo,
            probe_rate: cfg.rate,
            probe_calm_rate: (cfg.calm_below_us > 0 && cfg.calm_rate < cfg.rate)
                .then_some(cfg.calm_rate),
            status: ProbeStatus::Starting,
            last_error: None,
            cumulative: Percentiles::default(),
            cumulative_hist: None,
            current: WindowSummary {
                index: 0,
                start_s: 0.0,
                duration_s: cfg.window.as_secs_f64(),
                latency: Percentiles::default(),
                slo_value_us: None,
                over_slo: false,
                hist: None,
            },
            windows: Vec::new(),
            windows_over: 0,
            windows_total: 0,
            qps: None,
            memcached: None,
        }
    }
}
