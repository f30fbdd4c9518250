//! `lowsched stats` rendering: the probe's report as the human table, and its windows as an
//! HdrHistogram interval log.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sense::latency::LatencyError;
use crate::sense::latency::hlog::HlogError;
use crate::sense::probe::report::StatsReport;

/// How many recent windows the table shows.
pub const TABLE_WINDOWS: usize = 20;
const BAR_WIDTH: usize = 40;

/// Why the stats could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Histogram(#[from] LatencyError),
    #[error(transparent)]
    Hlog(#[from] HlogError),
    #[error(transparent)]
    History(#[from] crate::store::history::HistoryError),
    #[error("{0}")]
    Time(String),
    #[error("no latency history in {0}")]
    NoHistory(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
        "memcached {}: {}, {qps}, SLO p{} <= {} us, window {} s, probing {}/s{}",
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

/// Writes the report's windows as an interval log to a new file at `path`.
pub fn write_hlog_file(r: &StatsReport, path: &Path) -> Result<(), StatsError> {
    let io = |source| StatsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    write_report_hlog(r, &mut f)?;
    f.flush().map_err(io)
}

/// Writes the report's windows as an interval log in the history's form (values in ns, failed
/// probes at the top; see `store::history`).
pub fn write_report_hlog(r: &StatsReport, out: &mut impl Write) -> Result<(), StatsError> {
    use crate::store::history::{Interval, to_ns, write_intervals};
    let mut intervals = Vec::new();
    for w in r.windows.iter().filter(|w| !w.is_empty()) {
        let us = match &w.hist {
            Some(h) => h.decode()?,
            None => crate::sense::latency::new_histogram(),
        };
        intervals.push(Interval {
            start_unix_s: r.started_unix_s + w.start_s,
            duration_s: w.duration_s,
            hist_ns: to_ns(&us, w.latency.errors),
        });
    }
    Ok(write_intervals(
        out,
        Some(r.started_unix_s),
        &format!(
            "lowsched probe of memcached {} (values in nanoseconds)",
            r.server
        ),
        &intervals,
    )?)
}

/// Exports the span of `<state dir>/history` the arguments ask for to `path`; `None` when they
/// name neither a span nor a state dir (the caller writes the daemon's recent windows: the
/// default state dir may belong to another daemon than the socket's).
pub fn export_history(args: &super::StatsArgs, path: &Path) -> Result<Option<usize>, StatsError> {
    use crate::store::history;
    if args.since.is_none() && args.until.is_none() && args.state_dir.is_none() {
        return Ok(None);
    }
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::daemon::config::DEFAULT_STATE_DIR))
        .join(history::HISTORY_DIR);
    if history::hlog_files(&dir)?.is_empty() {
        return Err(StatsError::NoHistory(dir));
    }
    let now = crate::sys::clock::unix_time_s();
    let time = |s: &Option<String>| {
        s.as_deref()
            .map(|s| super::timespec::parse_time(s, now))
            .transpose()
            .map_err(StatsError::Time)
    };
    let (since, until) = (time(&args.since)?, time(&args.until)?);
    let intervals = history::read_intervals(&dir, since, until)?;
    let io = |source| StatsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    history::write_intervals(
        &mut f,
        since,
        "lowsched latency history (values in nanoseconds)",
        &intervals,
    )?;
    f.flush().map_err(io)?;
    Ok(Some(intervals.len()))
}

#[cfg(test)]
mod tests;
