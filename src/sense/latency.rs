//! Latency accounting in HDR histograms (µs, 3 significant digits): one per window and one
//! cumulative, SLO checks per window, and the fast signal over the last tens of milliseconds.
//! Pure: every time comes in as an argument, so tests drive it with a fake clock.

pub mod hlog;

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Lowest and highest recordable latency in µs (larger values are clamped to the highest).
pub const HIST_LOW_US: u64 = 1;
pub const HIST_HIGH_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;
/// A fast-signal percentile that fell on a failed request: no answer came at all.
pub const NO_ANSWER_US: u64 = u64::MAX;

/// A fresh latency histogram with the crate's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("constant bounds are valid")
}

/// Why a histogram could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum LatencyError {
    #[error("cannot encode a histogram: {0}")]
    Encode(String),
    #[error("not a base64 V2 histogram: {0}")]
    Decode(String),
}

/// The service level objective: the `quantile` of each window's latencies at most `limit_us`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub quantile: f64,
    pub limit_us: u64,
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            quantile: 0.95,
            limit_us: 800,
        }
    }
}

/// A histogram as base64 of its V2 deflate encoding — the form interval logs carry, so it
/// travels through serde (the daemon's socket) and back without loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncodedHistogram(pub String);

impl EncodedHistogram {
    pub fn encode(h: &Histogram<u64>) -> Result<Self, LatencyError> {
        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(h, &mut buf)
            .map_err(|e| LatencyError::Encode(e.to_string()))?;
        Ok(Self(base64::engine::general_purpose::STANDARD.encode(buf)))
    }

    pub fn decode(&self) -> Result<Histogram<u64>, LatencyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.0.trim())
            .map_err(|e| LatencyError::Decode(e.to_string()))?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| LatencyError::Decode(e.to_string()))
    }
}

/// Percentiles of a set of requests; failed requests are counted apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>, errors: u64) -> Self {
        if h.is_empty() {
            return Self {
                errors,
                ..Self::default()
            };
        }
        Self {
            count: h.len(),
            errors,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// The SLO quantile over answered and failed requests together, failures counted as infinitely
/// slow: `None` when the quantile falls on a failure. Returns it and whether the SLO broke.
pub fn slo_value(h: &Histogram<u64>, errors: u64, slo: &Slo) -> (Option<u64>, bool) {
    let count = h.len();
    let total = count + errors;
    if total == 0 {
        return (None, false);
    }
    let rank = ((slo.quantile * total as f64).ceil() as u64).clamp(1, total);
    if rank > count {
        return (None, true);
    }
    let v = h.value_at_quantile(rank as f64 / count as f64);
    (Some(v), v > slo.limit_us)
}

/// One window's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Window number since the recorder started.
    pub index: u64,
    /// Start, in seconds since the recorder started.
    pub start_s: f64,
    pub duration_s: f64,
    pub latency: Percentiles,
    /// The SLO quantile counting failures; `None` when it fell on a failure.
    pub slo_value_us: Option<u64>,
    pub over_slo: bool,
    /// The window's histogram (completed windows only).
    pub hist: Option<EncodedHistogram>,
}

impl WindowSummary {
    pub fn is_empty(&self) -> bool {
        self.latency.count == 0 && self.latency.errors == 0
    }
}

/// Fixed windows on a grid from `start_ns`, plus the cumulative histogram.
#[derive(Debug)]
pub struct WindowedLatency {
    start_ns: u64,
    window_ns: u64,
    slo: Slo,
    history: usize,
    index: u64,
    current: Histogram<u64>,
    current_errors: u64,
    cumulative: Histogram<u64>,
    cumulative_errors: u64,
    recent: VecDeque<WindowSummary>,
    total: u64,
    over: u64,
    empty: u64,
}

impl WindowedLatency {
    /// Windows of `window` starting at `start_ns`; the last `history` completed ones are kept.
    pub fn new(start_ns: u64, window: Duration, slo: Slo, history: usize) -> Self {
        Self {
            start_ns,
            window_ns: (window.as_nanos() as u64).max(1),
            slo,
            history: history.max(1),
            index: 0,
            current: new_histogram(),
            current_errors: 0,
            cumulative: new_histogram(),
            cumulative_errors: 0,
            recent: VecDeque::new(),
            total: 0,
            over: 0,
            empty: 0,
        }
    }

    pub fn slo(&self) -> Slo {
        self.slo
    }

    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Records an answered request completed at `at_ns`.
    pub fn record(&mut self, at_ns: u64, latency_us: u64) {
        self.advance(at_ns);
        let v = latency_us.clamp(HIST_LOW_US, HIST_HIGH_US);
        self.current.saturating_record(v);
        self.cumulative.saturating_record(v);
    }

    /// Records a request that got no answer (refused, reset, timed out, garbage).
    pub fn record_error(&mut self, at_ns: u64) {
        self.advance(at_ns);
        self.current_errors += 1;
        self.cumulative_errors += 1;
    }

    /// Closes every window that ended at or before `now_ns`; returns how many closed.
    pub fn advance(&mut self, now_ns: u64) -> u64 {
        let target = now_ns.saturating_sub(self.start_ns) / self.window_ns;
        if target <= self.index {
            return 0;
        }
        let closed = target - self.index;
        self.close_current();
        // Windows with no request at all (nobody probed): skipped, kept as empty entries.
        let gap = closed - 1;
        self.empty += gap;
        let shown = gap.min(self.history as u64);
        for k in (target - shown)..target {
            self.push(self.summary_of(k, &new_histogram(), 0, false));
        }
        self.index = target;
        closed
    }

    fn close_current(&mut self) {
        let s = self.summary_of(self.index, &self.current, self.current_errors, true);
        if s.is_empty() {
            self.empty += 1;
        } else {
            self.total += 1;
            if s.over_slo {
                self.over += 1;
            }
        }
        self.push(s);
        self.current.reset();
        self.current_errors = 0;
    }

    fn push(&mut self, s: WindowSummary) {
        if self.recent.len() == self.history {
            self.recent.pop_front();
        }
        self.recent.push_back(s);
    }

    fn summary_of(
        &self,
        index: u64,
        h: &Histogram<u64>,
        errors: u64,
        encode: bool,
    ) -> WindowSummary {
        let (slo_value_us, over_slo) = slo_value(h, errors, &self.slo);
        WindowSummary {
            index,
            start_s: (index * self.window_ns) as f64 / 1e9,
            duration_s: self.window_ns as f64 / 1e9,
            latency: Percentiles::of(h, errors),
            slo_value_us,
            over_slo,
            hist: if encode && !h.is_empty() {
                EncodedHistogram::encode(h).ok()
            } else {
                None
            },
        }
    }

    /// Number of the window in progress.
    pub fn current_index(&self) -> u64 {
        self.index
    }

    /// When the window in progress ends.
    pub fn next_boundary_ns(&self) -> u64 {
        self.start_ns + (self.index + 1) * self.window_ns
    }

    /// The window in progress (no histogram attached).
    pub fn current(&self) -> WindowSummary {
        self.summary_of(self.index, &self.current, self.current_errors, false)
    }

    /// Completed windows, oldest first.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &WindowSummary> + ExactSizeIterator {
        self.recent.iter()
    }

    pub fn cumulative(&self) -> &Histogram<u64> {
        &self.cumulative
    }

    pub fn cumulative_percentiles(&self) -> Percentiles {
        Percentiles::of(&self.cumulative, self.cumulative_errors)
    }

    /// Completed windows that broke the SLO, and completed windows with any request.
    pub fn windows_over(&self) -> u64 {
        self.over
    }

    pub fn windows_total(&self) -> u64 {
        self.total
    }

    /// Completed windows in which nothing was recorded.
    pub fn windows_empty(&self) -> u64 {
        self.empty
    }
}

/// The fast signal: percentiles over the last `horizon` of completions, with requests still
/// waiting counted at their current age (a lower bound), so a stall shows before any answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FastLatency {
    /// Completions plus still-outstanding requests considered.
    pub samples: u32,
    pub errors: u32,
    pub p50_us: u64,
    /// [`NO_ANSWER_US`] when failures reach the 95th percentile.
    pub p95_us: u64,
    /// Slowest answered or waiting request (failures are in `errors`).
    pub max_us: u64,
}

/// Completion samples of the last `horizon`.
#[derive(Debug)]
pub struct RecentLatency {
    horizon_ns: u64,
    samples: VecDeque<(u64, u64)>,
    errors: VecDeque<u64>,
    scratch: Vec<u64>,
}

impl RecentLatency {
    pub fn new(horizon: Duration) -> Self {
        Self {
            horizon_ns: horizon.as_nanos() as u64,
            samples: VecDeque::new(),
            errors: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    pub fn horizon(&self) -> Duration {
        Duration::from_nanos(self.horizon_ns)
    }

    pub fn record(&mut self, at_ns: u64, latency_us: u64) {
        self.samples.push_back((at_ns, latency_us));
    }

    pub fn record_error(&mut self, at_ns: u64) {
        self.errors.push_back(at_ns);
    }

    fn prune(&mut self, now_ns: u64) {
        let cut = now_ns.saturating_sub(self.horizon_ns);
        while self.samples.front().is_some_and(|&(t, _)| t < cut) {
            self.samples.pop_front();
        }
        while self.errors.front().is_some_and(|&t| t < cut) {
            self.errors.pop_front();
        }
    }

    /// The signal at `now_ns`, given the ages (µs) of requests still waiting for an answer.
    pub fn fast(&mut self, now_ns: u64, waiting_us: impl Iterator<Item = u64>) -> FastLatency {
        self.prune(now_ns);
        self.scratch.clear();
        self.scratch.extend(self.samples.iter().map(|&(_, l)| l));
        self.scratch.extend(waiting_us);
        let errors = self.errors.len();
        let answered = self.scratch.len();
        let n = answered + errors;
        if n == 0 {
            return FastLatency::default();
        }
        let rank = |q: f64| ((q * n as f64).ceil() as usize).clamp(1, n);
        let mut pick = |r: usize| -> u64 {
            if r > answered {
                NO_ANSWER_US
            } else {
                *self.scratch.select_nth_unstable(r - 1).1
            }
        };
        let p50 = pick(rank(0.50));
        let p95 = pick(rank(0.95));
        let max = self.scratch.iter().copied().max().unwrap_or(0);
        FastLatency {
            samples: n as u32,
            errors: errors as u32,
            p50_us: p50,
            p95_us: p95,
            max_us: max,
        }
    }
}

#[cfg(test)]
mod tests;
