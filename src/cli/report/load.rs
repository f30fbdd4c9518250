//! What a report shows, read from a state directory's files: the event log (`events.jsonl`) for
//! the jobs' timeline, the service's cores and the controller's decisions, and the latency
//! history (`history/`) for the service's percentiles and QPS per window.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::store::history::{self, HistoryError};

/// Why the report's inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// A job's state over one stretch of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    Paused,
}

/// One stretch of a job: `[from, to)` in Unix seconds, its phase and core count.
#[derive(Clone, Debug, PartialEq)]
pub struct Stretch {
    pub from: f64,
    pub to: f64,
    pub phase: Phase,
    pub cores: usize,
}

/// A batch job's bar in the Gantt chart.
#[derive(Clone, Debug, PartialEq)]
pub struct JobBar {
    pub id: u64,
    pub name: String,
    pub stretches: Vec<Stretch>,
    /// `succeeded`, `failed`, … or `running` when the span ends first.
    pub final_state: String,
}

/// A controller decision on the service's cores.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub t: f64,
    /// `grow`, `shrink` or `undo`.
    pub kind: String,
    pub cores: usize,
}

/// One probe window's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub t: f64,
    pub dur: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub qps: Option<f64>,
    pub over: bool,
}

/// Everything the report draws and sums up, times in Unix seconds.
#[derive(Clone, Debug)]
pub struct RunData {
    pub from: f64,
    pub to: f64,
    pub service: Option<String>,
    pub slo_us: u64,
    pub windows: Vec<Window>,
    /// The service's core count from each change on (a step function).
    pub service_cores: Vec<(f64, usize)>,
    pub decisions: Vec<Decision>,
    pub jobs: Vec<JobBar>,
    /// All windows' latencies merged (ns), for the overall percentiles.
    pub overall_ns: Option<Histogram<u64>>,
}

#[derive(Debug, Deserialize)]
struct Line {
    time_ms: u64,
    event: String,
    job: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    reason: String,
}

/// `[0,1,2]` → 3.
fn core_count(arg: Option<&String>) -> Option<usize> {
    let inner = arg?.strip_prefix('[')?.strip_suffix(']')?;
    Some(inner.split(',').filter(|s| !s.trim().is_empty()).count())
}

/// Reads `events.jsonl` lines; lines that do not parse (a torn last line) are skipped.
fn read_events(path: &Path) -> Result<Vec<Line>, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(LoadError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The inputs: an event log and a history folder (either may be missing), a span and the SLO
/// to draw when the history does not name one.
#[derive(Clone, Debug)]
pub struct Sources<'a> {
    pub events: &'a Path,
    pub history: &'a Path,
    pub since: Option<f64>,
    pub until: Option<f64>,
    pub slo_us: Option<u64>,
}

pub fn load(src: &Sources<'_>) -> Result<RunData, LoadError> {
    let lines = read_events(src.events)?;
    let intervals = history::read_intervals(src.history, src.since, src.until)?;
    let service_lines = history::read_service(src.history, src.since, src.until)?;
    let ev_t = |l: &Line| l.time_ms as f64 / 1e3;
    let in_span = |t: f64| src.since.is_none_or(|s| t >= s) && src.until.is_none_or(|u| t < u);

    // The span: what was asked, else everything the files hold.
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for t in lines.iter().map(ev_t).filter(|t| in_span(*t)) {
        lo = lo.min(t);
        hi = hi.max(t);
    }
    for iv in &intervals {
        lo = lo.min(iv.start_unix_s);
        hi = hi.max(iv.start_unix_s + iv.duration_s);
    }
    let from = src.since.unwrap_or(if lo.is_finite() { lo } else { 0.0 });
    let to = src
        .until
        .unwrap_or(if hi.is_finite() { hi } else { from + 1.0 })
        .max(from + 1.0);

    let qps: BTreeMap<i64, Option<f64>> = service_lines
        .iter()
        .map(|w| ((w.t * 1e3).round() as i64, w.qps))
        .collect();
    let slo_us = src
        .slo_us
        .or_else(|| service_lines.iter().rev().find_map(|w| w.limit_us))
        .unwrap_or(800);
    let mut overall: Option<Histogram<u64>> = None;
    let mut windows = Vec::with_capacity(intervals.len());
    for iv in &intervals {
        let h = &iv.hist_ns;
        if h.is_empty() {
            continue;
        }
        let p95 = h.value_at_quantile(0.95) as f64 / 1e3;
        windows.push(Window {
            t: iv.start_unix_s,
            dur: iv.duration_s,
            p95_us: p95,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            qps: qps
                .get(&((iv.start_unix_s * 1e3).round() as i64))
                .copied()
                .flatten(),
            over: p95 > slo_us as f64,
        });
        match overall.as_mut() {
            Some(o) => {
                let _ = o.add(h);
            }
            None => overall = Some(h.clone()),
        }
    }
    let (service, mut service_cores, decisions) = service_timeline(&lines, from, to);
    if service_cores.is_empty() {
        // No core change logged in the span: the count each window was measured under.
        for w in &service_lines {
            if let Some(n) = w.service_cores {
                if service_cores.last().is_none_or(|&(_, m)| m != n as usize) {
                    service_cores.push((w.t.max(from), n as usize));
                }
            }
        }
    }
    Ok(RunData {
        from,
        to,
        service,
        slo_us,
        windows,
        service_cores,
        decisions,
        jobs: job_bars(&lines, from, to),
        overall_ns: overall,
    })
}

type ServiceTimeline = (Option<String>, Vec<(f64, usize)>, Vec<Decision>);

/// The service's name, core count over time and the controller's decisions. Service events are
/// the ones with no job id other than the scheduler's own.
fn service_timeline(lines: &[Line], from: f64, to: f64) -> ServiceTimeline {
    let mut name = None;
    let mut cores: Vec<(f64, usize)> = Vec::new();
    let mut decisions = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.id.is_none() && l.job != "scheduler")
    {
        let t = l.time_ms as f64 / 1e3;
        let Some(n) = core_count(l.args.first()) else {
            continue;
        };
        if t >= to {
            break;
        }
        name.get_or_insert_with(|| l.job.clone());
        // The count in force at the span's start, then every change inside it.
        if t < from {
            cores.clear();
            cores.push((from, n));
            continue;
        }
        cores.push((t, n));
        let kind = l.reason.split_whitespace().next().unwrap_or("");
        if l.event == "update_cores" && matches!(kind, "grow" | "shrink" | "undo") {
            decisions.push(Decision {
                t,
                kind: kind.into(),
                cores: n,
            });
        }
    }
    (name, cores, decisions)
}

/// Each batch job's stretches (running or paused, with cores) clipped to `[from, to)`.
fn job_bars(lines: &[Line], from: f64, to: f64) -> Vec<JobBar> {
    struct Open {
        bar: JobBar,
        since: f64,
        phase: Phase,
        cores: usize,
        ended: bool,
    }
    let mut open: BTreeMap<u64, Open> = BTreeMap::new();
    let close = |o: &mut Open, t: f64| {
        let (a, b) = (o.since.max(from), t.min(to));
        if b > a {
            o.bar.stretches.push(Stretch {
                from: a,
                to: b,
                phase: o.phase,
                cores: o.cores,
            });
        }
        o.since = t;
    };
    for l in lines {
        let Some(id) = l.id else { continue };
        let t = l.time_ms as f64 / 1e3;
        match l.event.as_str() {
            "start" => {
                let o = open.entry(id).or_insert_with(|| Open {
                    bar: JobBar {
                        id,
                        name: l.job.clone(),
                        stretches: Vec::new(),
                        final_state: "running".into(),
                    },
                    since: t,
                    phase: Phase::Running,
                    cores: 0,
                    ended: false,
                });
                o.since = t;
                o.phase = Phase::Running;
                o.cores = core_count(l.args.first()).unwrap_or(1);
            }
            "update_cores" | "pause" | "unpause" | "end" => {
                let Some(o) = open.get_mut(&id) else { continue };
                if o.ended {
                    continue;
                }
                close(o, t);
                match l.event.as_str() {
                    "update_cores" => o.cores = core_count(l.args.first()).unwrap_or(o.cores),
                    "pause" => o.phase = Phase::Paused,
                    "unpause" => o.phase = Phase::Running,
                    _ => {
                        o.ended = true;
                        o.bar.final_state = l
                            .reason
                            .split(':')
                            .next()
                            .unwrap_or("ended")
                            .trim()
                            .to_string();
                    }
                }
            }
            _ => {}
        }
    }
    open.into_values()
        .filter_map(|mut o| {
            if !o.ended {
                close(&mut o, to);
            }
            (!o.bar.stretches.is_empty()).then_some(o.bar)
        })
        .collect()
}
