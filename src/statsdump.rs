//! The stats dump (`lowsched stats`): the monitor's state as serde data, rendered as a table,
//! as JSON, or as an HdrHistogram interval log (V2 compressed) that standard tools read.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use serde::{Deserialize, Serialize};

use crate::latency::{EncodedHistogram, LatencyError, Percentiles, Slo, WindowSummary};
use crate::probe::{ProbeConfig, ProbeStatus};

/// How many recent windows the table shows.
pub const TABLE_WINDOWS: usize = 20;
const BAR_WIDTH: usize = 40;

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsDumpError {
    #[error("cannot write {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Histogram(#[from] LatencyError),
    #[error("cannot write the interval log: {0}")]
    Hlog(String),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

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

/// `lowsched stats`: the options the daemon's command will take.
#[derive(argh::FromArgs, Debug, Clone, PartialEq, Eq, Default)]
#[argh(subcommand, name = "stats")]
/// Show the protected service's latency: percentiles, recent windows against the SLO, QPS.
pub struct StatsArgs {
    /// print JSON instead of a table
    #[argh(switch)]
    pub json: bool,
    /// also write the windows as an HdrHistogram interval log (V2 compressed) to FILE
    #[argh(option)]
    pub hlog: Option<PathBuf>,
}

/// Renders `report` as `args` ask: JSON or the table to `out`, and the interval log to a file.
pub fn dump(
    report: &StatsReport,
    args: &StatsArgs,
    out: &mut impl Write,
) -> Result<(), StatsDumpError> {
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(report)?;
        s.push('\n');
        s
    } else {
        render_table(report)
    };
    out.write_all(text.as_bytes())
        .map_err(|source| StatsDumpError::Io {
            what: "the report".into(),
            source,
        })?;
    if let Some(path) = &args.hlog {
        let mut f = std::fs::File::create(path).map_err(|source| StatsDumpError::Io {
            what: path.display().to_string(),
            source,
        })?;
        write_report_hlog(report, &mut f)?;
    }
    Ok(())
}

fn fmt_us(v: Option<u64>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "fail".into(),
    }
}

/// The human table: cumulative percentiles, recent windows' p95 against the SLO line, counts.
pub fn render_table(r: &StatsReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let qps = r.qps.map_or("? QPS".into(), |q| format!("{q:.0} QPS"));
    let _ = writeln!(
        s,
        "memcached {}: {:?}, {qps}, SLO p{} <= {} us, window {} s, probing {}/s{}",
        r.server,
        r.status,
        r.slo.quantile * 100.0,
        r.slo.limit_us,
        r.window_s,
        r.probe_rate,
        r.probe_calm_rate
            .map_or(String::new(), |c| format!(" ({c}/s while calm)"))
    );
    if let Some(e) = &r.last_error {
        let _ = writeln!(s, "last error: {e}");
    }
    let pct = if r.windows_total > 0 {
        100.0 * r.windows_over as f64 / r.windows_total as f64
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "windows over SLO: {} / {} ({pct:.1} %)\n",
        r.windows_over, r.windows_total
    );
    let c = &r.cumulative;
    let _ = writeln!(
        s,
        "cumulative latency (us; {} answered, {} failed)",
        c.count, c.errors
    );
    let _ = writeln!(
        s,
        "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "p50", "p90", "p95", "p99", "p99.9", "max"
    );
    let _ = writeln!(
        s,
        "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        c.p50_us, c.p90_us, c.p95_us, c.p99_us, c.p999_us, c.max_us
    );
    let _ = writeln!(
        s,
        "recent windows: p{} (us), '|' marks the SLO of {} us",
        r.slo.quantile * 100.0,
        r.slo.limit_us
    );
    let start = r.windows.len().saturating_sub(TABLE_WINDOWS);
    for w in &r.windows[start..] {
        if w.is_empty() {
            let _ = writeln!(s, "  {:>+7.1}s  {:>8}", w.start_s, "-");
            continue;
        }
        let v = w.slo_value_us;
        let line = format!(
            "  {:>+7.1}s  {:>8}  {}{}",
            w.start_s,
            fmt_us(v),
            bar(v, r.slo.limit_us),
            if w.over_slo { "  OVER" } else { "" }
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let cur = &r.current;
    let _ = writeln!(
        s,
        "  now (window {}, {} answered, {} failed): p50 {} p95 {} p99 {} max {}",
        cur.index,
        cur.latency.count,
        cur.latency.errors,
        cur.latency.p50_us,
        cur.latency.p95_us,
        cur.latency.p99_us,
        cur.latency.max_us
    );
    s
}

/// A bar of `value` on a scale of 0..2×SLO with the SLO at the middle.
fn bar(value: Option<u64>, limit: u64) -> String {
    let half = BAR_WIDTH / 2;
    let filled = match value {
        None => BAR_WIDTH + 1,
        Some(v) => ((v as f64 / limit.max(1) as f64) * half as f64).round() as usize,
    };
    let mut out = String::with_capacity(BAR_WIDTH + 2);
    for col in 0..BAR_WIDTH {
        if col == half {
            out.push('|');
        }
        out.push(if col < filled { '#' } else { ' ' });
    }
    out.push(if filled > BAR_WIDTH { '>' } else { ' ' });
    out
}

/// Writes the report's windows as an interval log.
pub fn write_report_hlog(r: &StatsReport, out: &mut impl Write) -> Result<(), StatsDumpError> {
    let mut hists = Vec::new();
    for w in &r.windows {
        if let Some(h) = &w.hist {
            hists.push((w.start_s, w.duration_s, h.decode()?));
        }
    }
    write_interval_log(
        out,
        r.started_unix_s,
        &format!("lowsched probe of memcached {}", r.server),
        hists.iter().map(|(s, d, h)| (*s, *d, h)),
    )
}

/// Writes an HdrHistogram interval log: header (format version, StartTime and BaseTime at
/// `start_unix_s`, legend), then one V2-compressed histogram per interval, timestamps relative
/// to the start. Values are in microseconds.
pub fn write_interval_log<'h>(
    out: &mut impl Write,
    start_unix_s: f64,
    comment: &str,
    intervals: impl Iterator<Item = (f64, f64, &'h Histogram<u64>)>,
) -> Result<(), StatsDumpError> {
    let hlog_err = |e: &dyn std::fmt::Debug| StatsDumpError::Hlog(format!("{e:?}"));
    let start = UNIX_EPOCH + Duration::from_secs_f64(start_unix_s.max(0.0));
    let mut ser = V2DeflateSerializer::new();
    {
        let mut header = IntervalLogWriterBuilder::new();
        header
            .add_comment(comment)
            .add_comment("[Histogram log format version 1.3]")
            .add_comment("values in microseconds")
            .with_start_time(start)
            .with_base_time(start);
        header
            .begin_log_with(out, &mut ser)
            .map_err(|e| hlog_err(&e))?;
    }
    out.write_all(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    )
    .map_err(|e| hlog_err(&e))?;
    let mut w = IntervalLogWriterBuilder::new()
        .begin_log_with(out, &mut ser)
        .map_err(|e| hlog_err(&e))?;
    for (start_s, dur_s, h) in intervals {
        w.write_histogram(
            h,
            Duration::from_secs_f64(start_s.max(0.0)),
            Duration::from_secs_f64(dur_s.max(0.0)),
            None,
        )
        .map_err(|e| hlog_err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
