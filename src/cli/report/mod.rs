//! `lowsched report`: from a state directory (or given files), for the whole run or a span, an
//! SVG and a PNG on one time axis (the service's p95/p99 per window with the SLO line and the
//! controller's decisions, its QPS and cores, a Gantt chart of the batch jobs) and a short text
//! summary. Reads files only: it works with the daemon stopped, and on another machine.

pub mod load;
pub mod plot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use argh::{ArgsInfo, FromArgs};

pub use load::{LoadError, RunData, Sources, load};

use crate::store::eventlog::EVENTS_JSONL;
use crate::store::history::HISTORY_DIR;

/// Draw the run: SVG and PNG plots on one time axis, and a text summary.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "report", help_triggers("-h", "--help"))]
pub struct ReportArgs {
    /// the daemon's state directory (default: /var/lib/lowsched)
    #[argh(option)]
    pub state_dir: Option<PathBuf>,
    /// event log to read instead of <state dir>/events.jsonl
    #[argh(option)]
    pub events: Option<PathBuf>,
    /// latency history folder to read instead of <state dir>/history
    #[argh(option)]
    pub history: Option<PathBuf>,
    /// start of the span: 10m (ago), Unix seconds or 2026-12-07T00:40:00Z (default: the start)
    #[argh(option)]
    pub since: Option<String>,
    /// end of the span, same forms (default: the end)
    #[argh(option)]
    pub until: Option<String>,
    /// output path without extension: writes OUT.svg and OUT.png (default: lowsched-report)
    #[argh(option, default = "PathBuf::from(\"lowsched-report\")")]
    pub out: PathBuf,
    /// the SLO line, us (default: the one the history names, else 800)
    #[argh(option)]
    pub slo_us: Option<u64>,
}

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Time(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot draw the report: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing to report: neither {events} nor {history} exists")]
    Nothing { events: PathBuf, history: PathBuf },
}

/// The files a report wrote and its summary.
#[derive(Debug)]
pub struct Written {
    pub svg: PathBuf,
    pub png: PathBuf,
    pub summary: String,
}

/// Makes the report the arguments ask for.
pub fn run(args: &ReportArgs) -> Result<Written, ReportError> {
    let state = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::daemon::config::DEFAULT_STATE_DIR));
    let events = args
        .events
        .clone()
        .unwrap_or_else(|| state.join(EVENTS_JSONL));
    let history = args
        .history
        .clone()
        .unwrap_or_else(|| state.join(HISTORY_DIR));
    if !events.exists() && !history.exists() {
        return Err(ReportError::Nothing { events, history });
    }
    let now = crate::sys::clock::unix_time_s();
    let time = |s: &Option<String>| {
        s.as_deref()
            .map(|s| super::timespec::parse_time(s, now))
            .transpose()
            .map_err(ReportError::Time)
    };
    let data = load(&Sources {
        events: &events,
        history: &history,
        since: time(&args.since)?,
        until: time(&args.until)?,
        slo_us: args.slo_us,
    })?;
    write(&data, &args.out)
}

/// Writes `<out>.svg` and `<out>.png` for `data`.
pub fn write(data: &RunData, out: &Path) -> Result<Written, ReportError> {
    let title = title(data);
    let svg_path = out.with_extension("svg");
    let png_path = out.with_extension("png");
    let svg = plot::svg(data, &title).map_err(ReportError::Draw)?;
    std::fs::write(&svg_path, svg).map_err(|source| ReportError::Write {
        path: svg_path.clone(),
        source,
    })?;
    plot::png(data, &title, &png_path).map_err(ReportError::Draw)?;
    Ok(Written {
        summary: summary(data),
        svg: svg_path,
        png: png_path,
    })
}

fn iso(t: f64) -> String {
    let s = crate::store::eventlog::iso8601(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0)),
    );
    format!("{}Z", s.get(..19).unwrap_or(&s))
}

/// A quantile of the merged history in µs, or what it fell on: failed probes are logged at
/// the histogram's top.
fn overall_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> String {
    let v = h.value_at_quantile(q);
    if h.equivalent(v, crate::store::history::FAILED_NS) {
        "a failed probe".into()
    } else {
        format!("{:.0} us", v as f64 / 1e3)
    }
}

fn title(d: &RunData) -> String {
    format!(
        "lowsched: {} .. {} ({:.0} s)",
        iso(d.from),
        iso(d.to),
        d.to - d.from
    )
}

/// The text summary: windows over the SLO, overall p95/p99, makespan, jobs by final state.
pub fn summary(d: &RunData) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", title(d));
    service_summary(&mut s, d);
    let grows = d.decisions.iter().filter(|c| c.kind == "grow").count();
    let shrinks = d.decisions.iter().filter(|c| c.kind == "shrink").count();
    let undos = d.decisions.iter().filter(|c| c.kind == "undo").count();
    if !d.decisions.is_empty() {
        let _ = writeln!(
            s,
            "controller: {grows} grows, {shrinks} shrinks, {undos} undos"
        );
    }
    batch_summary(&mut s, d);
    s
}

fn service_summary(s: &mut String, d: &RunData) {
    match (&d.service, d.windows.is_empty()) {
        (_, false) => {
            let over = d.windows.iter().filter(|w| w.over).count();
            let n = d.windows.len();
            let _ = write!(
                s,
                "service{}: {over}/{n} windows over the SLO (p95 <= {} us, {:.1} %)",
                d.service
                    .as_deref()
                    .map_or(String::new(), |s| format!(" {s}")),
                d.slo_us,
                100.0 * over as f64 / n as f64
            );
            if let Some(h) = &d.overall_ns {
                let _ = write!(
                    s,
                    "; overall p95 {}, p99 {}",
                    overall_us(h, 0.95),
                    overall_us(h, 0.99)
                );
            }
            let _ = writeln!(s);
        }
        (Some(name), true) => {
            let _ = writeln!(
                s,
                "service {name}: no latency history in this span (no probe windows recorded)"
            );
        }
        (None, true) => {
            let _ = writeln!(s, "no service was monitored in this span");
        }
    }
}

fn batch_summary(s: &mut String, d: &RunData) {
    if d.jobs.is_empty() {
        let _ = writeln!(s, "no batch jobs ran in this span");
        return;
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &d.jobs {
        *by_state.entry(j.final_state.as_str()).or_insert(0) += 1;
    }
    let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let start = d
        .jobs
        .iter()
        .filter_map(|j| j.stretches.first().map(|s| s.from))
        .fold(f64::INFINITY, f64::min);
    let end = d
        .jobs
        .iter()
        .filter_map(|j| j.stretches.last().map(|s| s.to))
        .fold(f64::NEG_INFINITY, f64::max);
    let paused: usize = d
        .jobs
        .iter()
        .map(|j| {
            j.stretches
                .iter()
                .filter(|s| s.phase == load::Phase::Paused)
                .count()
        })
        .sum();
    let _ = writeln!(
        s,
        "batch: {} jobs ({}), makespan {:.1} s (first start to last end in the span), {paused} paused stretches",
        d.jobs.len(),
        states.join(", "),
        end - start
    );
}

#[cfg(test)]
mod tests;
