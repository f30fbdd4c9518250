//! The load generator's results: requests are grouped into intervals by their *scheduled* send
//! time, so an interval's figures describe the load offered in it, and a slow answer counts
//! against the interval that asked. Rendered as a table, JSON, or an interval log.

use std::collections::VecDeque;
use std::io::Write;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::sense::latency::{EncodedHistogram, Percentiles, new_histogram};

/// One interval of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalReport {
    pub start_s: f64,
    pub duration_s: f64,
    /// Requests scheduled per second.
    pub target_qps: f64,
    /// Requests answered per second.
    pub qps: f64,
    /// Answered requests' latency; `errors` counts the interval's failures.
    #[serde(flatten)]
    pub latency: Percentiles,
    /// The interval's histogram, for `--hlog` (not in JSON).
    #[serde(skip)]
    pub hist: Option<EncodedHistogram>,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadgenReport {
    pub server: String,
    pub connections: usize,
    pub duration_s: f64,
    pub started_unix_s: f64,
    /// Mean scheduled rate.
    pub target_qps: f64,
    /// Answered requests per second of the run.
    pub qps: f64,
    pub sent: u64,
    pub answered: u64,
    /// Latency of the answered requests; `errors` counts the requests that failed (error
    /// reply, broken connection, or no answer by the end).
    #[serde(flatten)]
    pub latency: Percentiles,
    pub intervals: Vec<IntervalReport>,
    /// CPU time the generating thread used during the timed run.
    pub cpu_s: f64,
    /// That CPU time as a fraction of one core.
    pub cpu_core: f64,
    /// Percent of one core per 10 k answered QPS.
    pub cpu_pct_per_10k_qps: f64,
}

struct Open {
    index: u64,
    hist: Histogram<u64>,
    sent: u64,
    errors: u64,
}

/// Accumulates per-interval and cumulative histograms keyed by scheduled time.
pub(super) struct Intervals {
    start_ns: u64,
    interval_ns: u64,
    open: VecDeque<Open>,
    /// Intervals created so far (open or done).
    created: u64,
    pub cumulative: Histogram<u64>,
    pub sent: u64,
    pub errors: u64,
    pub done: Vec<IntervalReport>,
}

impl Intervals {
    pub fn new(start_ns: u64, interval_ns: u64) -> Self {
        Self {
            start_ns,
            interval_ns: interval_ns.max(1),
            open: VecDeque::new(),
            created: 0,
            cumulative: new_histogram(),
            sent: 0,
            errors: 0,
            done: Vec::new(),
        }
    }

    fn slot(&mut self, sched_ns: u64) -> &mut Open {
        let index = sched_ns.saturating_sub(self.start_ns) / self.interval_ns;
        // A request older than every open interval (cannot happen: intervals close only once
        // nothing scheduled in them is outstanding) goes into the oldest open one.
        let first = self.open.front().map_or(self.created, |o| o.index);
        let index = index.max(first);
        // Intervals in which nothing was scheduled (rate 0) still appear, empty.
        while self.created <= index {
            self.open.push_back(Open {
                index: self.created,
                hist: new_histogram(),
                sent: 0,
                errors: 0,
            });
            self.created += 1;
        }
        let first = self.open.front().map_or(index, |o| o.index);
        let pos = (index - first) as usize;
        &mut self.open[pos]
    }

    pub fn sent(&mut self, sched_ns: u64) {
        self.sent += 1;
        self.slot(sched_ns).sent += 1;
    }

    pub fn record(&mut self, sched_ns: u64, latency_us: u64) {
        let v = latency_us.clamp(
            crate::sense::latency::HIST_LOW_US,
            crate::sense::latency::HIST_HIGH_US,
        );
        self.cumulative.saturating_record(v);
        self.slot(sched_ns).hist.saturating_record(v);
    }

    pub fn error(&mut self, sched_ns: u64) {
        self.errors += 1;
        self.slot(sched_ns).errors += 1;
    }

    /// Closes every interval that ends at or before `settled_ns` (nothing scheduled before it is
    /// still outstanding).
    pub fn close_before(&mut self, settled_ns: u64) {
        while let Some(o) = self.open.front() {
            let end = self.start_ns + (o.index + 1) * self.interval_ns;
            if end > settled_ns {
                break;
            }
            if let Some(o) = self.open.pop_front() {
                self.finish_one(o, self.interval_ns);
            }
        }
    }

    /// Closes everything; the last interval is cut at `end_ns` (the end of the schedule).
    pub fn close_all(&mut self, end_ns: u64) {
        // Trailing intervals with nothing scheduled (the schedule ended at rate 0).
        let last = end_ns.saturating_sub(self.start_ns + 1) / self.interval_ns;
        if end_ns > self.start_ns && last >= self.created {
            self.slot(end_ns - 1);
        }
        while let Some(o) = self.open.pop_front() {
            let start = self.start_ns + o.index * self.interval_ns;
            let len = end_ns.saturating_sub(start).clamp(1, self.interval_ns);
            self.finish_one(o, len);
        }
    }

    fn finish_one(&mut self, o: Open, len_ns: u64) {
        let secs = len_ns as f64 / 1e9;
        self.done.push(IntervalReport {
            start_s: (o.index * self.interval_ns) as f64 / 1e9,
            duration_s: secs,
            target_qps: o.sent as f64 / secs,
            qps: o.hist.len() as f64 / secs,
            latency: Percentiles::of(&o.hist, o.errors),
            hist: EncodedHistogram::encode(&o.hist).ok(),
        });
    }
}

/// The default human report: the summary, then one line per interval.
pub fn render_table(r: &LoadgenReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "time_s", "target", "qps", "p50_us", "p95_us", "p99_us", "max_us", "errors"
    );
    for i in &r.intervals {
        let p = &i.latency;
        let _ = writeln!(
            s,
            "{:>8.1} {:>9.0} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>7}",
            i.start_s, i.target_qps, i.qps, p.p50_us, p.p95_us, p.p99_us, p.max_us, p.errors
        );
    }
    let p = &r.latency;
    let _ = writeln!(
        s,
        "\nsummary: {} over {:.1} s, {} connections: target {:.0} QPS, achieved {:.0} QPS \
         ({} sent, {} answered, {} failed)",
        r.server, r.duration_s, r.connections, r.target_qps, r.qps, r.sent, r.answered, p.errors
    );
    let _ = writeln!(
        s,
        "latency (us, from intended send time): p50 {} p90 {} p95 {} p99 {} p99.9 {} max {}",
        p.p50_us, p.p90_us, p.p95_us, p.p99_us, p.p999_us, p.max_us
    );
    let _ = writeln!(
        s,
        "loadgen CPU: {:.3} s = {:.1} % of a core ({:.1} % per 10k QPS)",
        r.cpu_s,
        r.cpu_core * 100.0,
        r.cpu_pct_per_10k_qps
    );
    s
}

/// Writes the run's intervals as an HdrHistogram interval log.
pub fn write_hlog(r: &LoadgenReport, out: &mut impl Write) -> Result<(), super::LoadgenError> {
    let mut hists = Vec::new();
    for i in &r.intervals {
        if let Some(h) = &i.hist {
            hists.push((i.start_s, i.duration_s, h.decode()?));
        }
    }
    crate::sense::latency::hlog::write_interval_log(
        out,
        r.started_unix_s,
        &format!("lowsched loadgen against memcached {}", r.server),
        hists.iter().map(|(s, d, h)| (*s, *d, h)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn intervals_group_by_scheduled_time_and_close_when_settled() {
        let mut iv = Intervals::new(1000, 100 * MS);
        for i in 0..10 {
            iv.sent(1000 + i * 10 * MS);
        }
        iv.sent(1000 + 150 * MS);
        // Answers arrive late, but count for the interval that scheduled them.
        for i in 0..9 {
            iv.record(1000 + i * 10 * MS, 50 + i);
        }
        iv.error(1000 + 90 * MS);
        iv.close_before(1000 + 120 * MS);
        assert_eq!(iv.done.len(), 1);
        let first = &iv.done[0];
        assert_eq!((first.start_s, first.latency.errors), (0.0, 1));
        assert!((first.target_qps - 100.0).abs() < 1e-9);
        assert!((first.qps - 90.0).abs() < 1e-9);
        assert_eq!(first.latency.max_us, 58);
        iv.record(1000 + 150 * MS, 70);
        iv.close_all(1000 + 160 * MS);
        let last = &iv.done[1];
        assert!((last.duration_s - 0.06).abs() < 1e-9);
        assert!((last.qps - 1.0 / 0.06).abs() < 1e-6);
        assert_eq!(iv.cumulative.len(), 10);
        assert_eq!((iv.sent, iv.errors), (11, 1));
    }

    #[test]
    fn a_pause_after_closed_intervals_still_shows() {
        let mut iv = Intervals::new(0, 100 * MS);
        iv.sent(5);
        iv.record(5, 10);
        iv.close_before(150 * MS);
        iv.sent(350 * MS);
        iv.close_all(600 * MS);
        let starts: Vec<f64> = iv.done.iter().map(|i| i.start_s).collect();
        assert_eq!(starts, vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5]);
    }

    #[test]
    fn gaps_make_empty_intervals() {
        let mut iv = Intervals::new(0, 100 * MS);
        iv.sent(5);
        iv.sent(350 * MS);
        iv.close_all(400 * MS);
        let sent: Vec<f64> = iv.done.iter().map(|i| i.target_qps).collect();
        assert_eq!(sent, vec![10.0, 0.0, 0.0, 10.0]);
    }
}
