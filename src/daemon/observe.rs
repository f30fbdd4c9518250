//! The observer: a thread that follows the probe's completed windows into the latency history
//! (`store::history`) and the metrics board, and rewrites the node_exporter textfile; plus the
//! `/metrics` endpoint's start and stop. Nothing here is on the control loop's path: it reads
//! what the probe and the loop publish.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sense::latency::{WindowSummary, new_histogram};
use crate::store::history::{HistoryWriter, ServiceWindow};

use super::config::Config;
use super::metrics::{MetricsServer, write_textfile};
use super::shared::Shared;

/// How often the observer looks for completed windows (windows are 1 s by default).
const POLL: Duration = Duration::from_millis(200);

/// The observer thread and the metrics endpoint, stopped together.
#[derive(Debug)]
pub struct Observers {
    thread: Option<JoinHandle<()>>,
    server: Option<MetricsServer>,
}

/// Where the observer writes.
#[derive(Debug)]
struct Outputs {
    history: Option<HistoryWriter>,
    textfile: Option<(PathBuf, Duration)>,
}

impl Observers {
    /// Starts the observer thread and, when configured, the `/metrics` endpoint.
    pub fn start(cfg: &Config, shared: Arc<Shared>) -> std::io::Result<Self> {
        let server = if cfg.metrics.listen.is_empty() {
            None
        } else {
            let s = MetricsServer::start(&cfg.metrics.listen, shared.metrics.clone())?;
            crate::log::info(&format!("metrics on http://{}/metrics", s.addr()));
            Some(s)
        };
        let out = Outputs {
            history: cfg.history.enabled.then(|| {
                HistoryWriter::new(
                    &cfg.state_dir,
                    cfg.history.rotation(),
                    "lowsched probe windows (latency of the protected service)",
                )
            }),
            textfile: (!cfg.metrics.textfile.is_empty()).then(|| {
                (
                    PathBuf::from(&cfg.metrics.textfile),
                    Duration::from_millis(cfg.metrics.textfile_interval_ms),
                )
            }),
        };
        let thread = std::thread::Builder::new()
            .name("lowsched-observe".into())
            .spawn(move || observe(&shared, out))?;
        Ok(Self {
            thread: Some(thread),
            server,
        })
    }

    /// Stops both; call after the control loop has stopped (the observer sees `stopping`).
    pub fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Follows the probe until the daemon stops.
fn observe(shared: &Shared, mut out: Outputs) {
    // (probe start, last window index) of the last window taken: a new probe (the service
    // was found again) has a new start and numbers its windows from 0.
    let mut last: Option<(f64, u64)> = None;
    let mut last_textfile: Option<Instant> = None;
    let mut history_failed = false;
    let mut generation = shared.history_generation.load(Ordering::Relaxed);
    loop {
        let stopping = shared.stopping.load(Ordering::Relaxed);
        let now_generation = shared.history_generation.load(Ordering::Relaxed);
        if now_generation != generation {
            generation = now_generation;
            if let Some(h) = out.history.as_mut() {
                h.reopen();
                history_failed = false;
            }
        }
        if let Some(probe) = shared.probe() {
            let (mut start, mut windows) = probe.windows_after(last.map(|(_, i)| i));
            if last.is_some_and(|(s, _)| s != start) {
                (start, windows) = probe.windows_after(None);
            }
            let after = last.filter(|(s, _)| *s == start).map(|(_, i)| i);
            let qps = probe.signal().qps;
            let limit = probe.slo().limit_us;
            for w in windows.iter().filter(|w| after.is_none_or(|a| w.index > a)) {
                if let Err(e) = take_window(shared, &mut out, (start, limit), w, qps) {
                    if !history_failed {
                        crate::log::error(&format!("latency history: {e}"));
                        history_failed = true;
                    }
                }
                last = Some((start, w.index));
            }
        }
        if let Some((path, every)) = &out.textfile {
            if stopping || last_textfile.is_none_or(|t| t.elapsed() >= *every) {
                if let Err(e) = write_textfile(path, &shared.metrics.render()) {
                    crate::log::warn(&format!("metrics textfile {}: {e}", path.display()));
                }
                last_textfile = Some(Instant::now());
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// One completed window into the metrics and the history; empty windows (nobody probed) are
/// left out of both.
fn take_window(
    shared: &Shared,
    out: &mut Outputs,
    (probe_start, limit_us): (f64, u64),
    w: &WindowSummary,
    qps: Option<f64>,
) -> Result<(), crate::store::history::HistoryError> {
    if w.is_empty() {
        return Ok(());
    }
    let hist = match &w.hist {
        Some(h) => h.decode().unwrap_or_else(|_| new_histogram()),
        None => new_histogram(),
    };
    shared
        .metrics
        .observe_window(&hist, w.latency.errors, w.over_slo);
    let Some(history) = out.history.as_mut() else {
        return Ok(());
    };
    let (service_cores, batch_cores) = shared.metrics.cores();
    let sw = ServiceWindow {
        t: probe_start + w.start_s,
        dur: w.duration_s,
        qps,
        service_cores,
        batch_cores,
        slo_us: w.slo_value_us,
        limit_us: Some(limit_us),
        over: w.over_slo,
        answered: w.latency.count,
        failed: w.latency.errors,
    };
    history.append(&sw, &hist)
}
