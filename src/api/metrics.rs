//! The daemon's Prometheus metrics: the data a scrape shows and its rendering in the text
//! exposition format (version 0.0.4). Pure: the daemon fills a [`MetricsSnapshot`], this module
//! turns it into text, so the names, units and escaping are tested without a daemon.
//!
//! Names follow Prometheus conventions: one `lowsched_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters, labels for state, origin, pool, kind and reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every job state, so a state with no job still shows as 0 (absent series break `rate()` and
/// dashboards alike).
pub const JOB_STATES: &[&str] = &[
    "pending",
    "running",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
    "unschedulable",
    "timeout",
];

/// Upper bounds (seconds) of the service latency histogram's buckets: around the default SLO of
/// 0.8 ms, doubling, up to a stall.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3, 6.4e-3, 12.8e-3, 25.6e-3, 51.2e-3, 0.1,
    0.5, 1.0,
];

/// Upper bounds (seconds) of the actuation histograms (launch, freeze, reaction): µs to 100 ms.
pub const ACTUATION_BUCKETS_S: &[f64] = &[
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
];

/// A Prometheus histogram: counts per bucket (not cumulative; the last is `+Inf`), sum, count.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    bounds_s: &'static [f64],
    counts: Vec<u64>,
    sum_s: f64,
    count: u64,
}

impl Buckets {
    pub fn new(bounds_s: &'static [f64]) -> Self {
        Self {
            bounds_s,
            counts: vec![0; bounds_s.len() + 1],
            sum_s: 0.0,
            count: 0,
        }
    }

    /// Adds `n` observations of `value_s` seconds.
    pub fn observe(&mut self, value_s: f64, n: u64) {
        let i = self
            .bounds_s
            .iter()
            .position(|&b| value_s <= b)
            .unwrap_or(self.bounds_s.len());
        self.counts[i] += n;
        self.sum_s += value_s * n as f64;
        self.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_s(&self) -> f64 {
        self.sum_s
    }

    /// Cumulative counts per upper bound, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            out.push((self.bounds_s.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        out
    }
}

/// Everything one scrape shows.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    /// Jobs by (state, origin).
    pub jobs: BTreeMap<(String, String), u64>,
    pub queue_depth: u64,
    /// Cores by pool (`service`, `batch`).
    pub cores: BTreeMap<String, u64>,
    /// Answered probes of the protected service (none while no service is monitored).
    pub service_latency: Buckets,
    /// Probes that got no answer (refused, reset, timed out, garbage).
    pub probe_failures: u64,
    pub slo_windows_within: u64,
    pub slo_windows_over: u64,
    /// Controller and policy decisions by (kind, reason class).
    pub decisions: BTreeMap<(String, String), u64>,
    pub launch: Buckets,
    pub freeze: Buckets,
    pub reaction: Buckets,
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub start_time_s: f64,
}

impl Default for MetricsSnapshot {
    fn default() -> Self {
        Self {
            jobs: BTreeMap::new(),
            queue_depth: 0,
            cores: BTreeMap::new(),
            service_latency: Buckets::new(LATENCY_BUCKETS_S),
            probe_failures: 0,
            slo_windows_within: 0,
            slo_windows_over: 0,
            decisions: BTreeMap::new(),
            launch: Buckets::new(ACTUATION_BUCKETS_S),
            freeze: Buckets::new(ACTUATION_BUCKETS_S),
            reaction: Buckets::new(ACTUATION_BUCKETS_S),
            cpu_seconds: 0.0,
            resident_bytes: 0,
            start_time_s: 0.0,
        }
    }
}

/// Every metric: name, type, help. The README's list is checked against this.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "lowsched_jobs",
        "gauge",
        "Jobs the daemon knows, by state and origin.",
    ),
    (
        "lowsched_queue_depth",
        "gauge",
        "Pending jobs waiting in the queue.",
    ),
    (
        "lowsched_cores",
        "gauge",
        "Cores held by each pool: the protected service and batch.",
    ),
    (
        "lowsched_service_latency_seconds",
        "histogram",
        "Latency of the probe's answered requests to the protected service.",
    ),
    (
        "lowsched_probe_failures_total",
        "counter",
        "Probe requests to the protected service that got no answer.",
    ),
    (
        "lowsched_slo_windows_total",
        "counter",
        "Completed SLO windows with probes, by result: within or over the SLO.",
    ),
    (
        "lowsched_decisions_total",
        "counter",
        "Controller and policy decisions carried out, by kind and reason.",
    ),
    (
        "lowsched_launch_seconds",
        "histogram",
        "Time to launch a batch job: from the command to its process running in its group.",
    ),
    (
        "lowsched_freeze_seconds",
        "histogram",
        "Time to pause a batch job: from the command to its group frozen.",
    ),
    (
        "lowsched_reaction_seconds",
        "histogram",
        "Time from the reading that crossed a grow threshold to the service's new cores in force.",
    ),
    (
        "lowsched_daemon_cpu_seconds_total",
        "counter",
        "CPU time (user and system) the daemon has used.",
    ),
    (
        "lowsched_daemon_resident_memory_bytes",
        "gauge",
        "The daemon's resident set size.",
    ),
    (
        "lowsched_daemon_start_time_seconds",
        "gauge",
        "When the daemon started, in seconds since the Unix epoch.",
    ),
];

/// A label value escaped for the exposition format (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as the exposition format writes it (`+Inf`, shortest round-trip form).
fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str) {
    if let Some((_, kind, help)) = METRICS.iter().find(|(n, ..)| *n == name) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }
}

fn histogram(out: &mut String, name: &str, h: &Buckets) {
    header(out, name);
    for (le, c) in h.cumulative() {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {c}", num(le));
    }
    let _ = writeln!(out, "{name}_sum {}", num(h.sum_s()));
    let _ = writeln!(out, "{name}_count {}", h.count());
}

/// The snapshot in the text exposition format.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    header(&mut out, "lowsched_jobs");
    let mut jobs = m.jobs.clone();
    let origins: Vec<String> = {
        let mut o: Vec<String> = jobs.keys().map(|(_, o)| o.clone()).collect();
        o.push("submit".into());
        o.sort();
        o.dedup();
        o
    };
    for state in JOB_STATES {
        for origin in &origins {
            jobs.entry(((*state).into(), origin.clone())).or_insert(0);
        }
    }
    for ((state, origin), n) in &jobs {
        let _ = writeln!(
            out,
            "lowsched_jobs{{state=\"{}\",origin=\"{}\"}} {n}",
            escape(state),
            escape(origin)
        );
    }
    header(&mut out, "lowsched_queue_depth");
    let _ = writeln!(out, "lowsched_queue_depth {}", m.queue_depth);
    header(&mut out, "lowsched_cores");
    for pool in ["batch", "service"] {
        let n = m.cores.get(pool).copied().unwrap_or(0);
        let _ = writeln!(out, "lowsched_cores{{pool=\"{pool}\"}} {n}");
    }
    histogram(
        &mut out,
        "lowsched_service_latency_seconds",
        &m.service_latency,
    );
    header(&mut out, "lowsched_probe_failures_total");
    let _ = writeln!(out, "lowsched_probe_failures_total {}", m.probe_failures);
    header(&mut out, "lowsched_slo_windows_total");
    let _ = writeln!(
        out,
        "lowsched_slo_windows_total{{result=\"within\"}} {}",
        m.slo_windows_within
    );
    let _ = writeln!(
        out,
        "lowsched_slo_windows_total{{result=\"over\"}} {}",
        m.slo_windows_over
    );
    header(&mut out, "lowsched_decisions_total");
    for ((kind, reason), n) in &m.decisions {
        let _ = writeln!(
            out,
            "lowsched_decisions_total{{kind=\"{}\",reason=\"{}\"}} {n}",
            escape(kind),
            escape(reason)
        );
    }
    histogram(&mut out, "lowsched_launch_seconds", &m.launch);
    histogram(&mut out, "lowsched_freeze_seconds", &m.freeze);
    histogram(&mut out, "lowsched_reaction_seconds", &m.reaction);
    header(&mut out, "lowsched_daemon_cpu_seconds_total");
    let _ = writeln!(
        out,
        "lowsched_daemon_cpu_seconds_total {}",
        num(m.cpu_seconds)
    );
    header(&mut out, "lowsched_daemon_resident_memory_bytes");
    let _ = writeln!(
        out,
        "lowsched_daemon_resident_memory_bytes {}",
        m.resident_bytes
    );
    header(&mut out, "lowsched_daemon_start_time_seconds");
    let _ = writeln!(
        out,
        "lowsched_daemon_start_time_seconds {}",
        num(m.start_time_s)
    );
    out
}

/// A decision's kind and a reason class from an event (its name, job and reason text): a small
/// fixed set of label values, so free-text reasons never blow up the series count. `None` for
/// events that are not decisions (ends, the scheduler's own start and end, failures).
pub fn classify_decision(event: &str, is_service: bool, reason: &str) -> Option<(String, String)> {
    if is_service {
        if event != "update_cores" {
            return None;
        }
        let kind = reason.split_whitespace().next().unwrap_or("");
        if !matches!(kind, "grow" | "shrink" | "undo") {
            return None;
        }
        let why = reason.split_once(": ").map_or("", |(_, w)| w);
        let class = if why.starts_with("undo") {
            "latency_after_step_down"
        } else if why.contains("> SLO") {
            "latency_over_slo"
        } else if why.starts_with("recent p95") {
            "latency_rising"
        } else if why.starts_with("service busy") {
            "service_busy"
        } else if why.starts_with("calm") {
            "calm"
        } else {
            "other"
        };
        return Some((kind.into(), class.into()));
    }
    let kind = match event {
        "start" => "start",
        "pause" => "pause",
        "unpause" => "resume",
        "update_cores" => "resize",
        _ => return None,
    };
    if reason.is_empty() {
        return None;
    }
    let class = if reason.contains("backfilled") {
        "backfill"
    } else if reason.contains("fits; starts") {
        "fits"
    } else if reason.contains("free again") || reason.contains("resumes on its new cores") {
        "cores_free"
    } else if reason.contains("off the service's cores") {
        "service_grow"
    } else if reason.contains("left the batch set") || reason.contains("go to other jobs") {
        "cores_taken"
    } else if reason.contains("widens") {
        "widen"
    } else if reason.contains("cannot hold its minimum") {
        "no_room"
    } else if reason.contains("user") || reason.contains("owner") {
        "user"
    } else {
        "other"
    };
    Some((kind.into(), class.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_state_has_a_label() {
        let names = crate::model::jobstate::JobState::ALL.map(|s| s.as_str());
        assert_eq!(JOB_STATES, names.as_slice());
    }

    #[test]
    fn buckets_are_cumulative_with_inf_last() {
        let mut b = Buckets::new(LATENCY_BUCKETS_S);
        b.observe(60e-6, 3);
        b.observe(900e-6, 1);
        b.observe(5.0, 1);
        let c = b.cumulative();
        assert_eq!(c[0], (50e-6, 0));
        assert_eq!(c[1], (100e-6, 3));
        assert_eq!(c[5], (1.6e-3, 4));
        assert_eq!(c.last().copied(), Some((f64::INFINITY, 5)));
        assert_eq!(b.count(), 5);
        assert!((b.sum_s() - (180e-6 + 900e-6 + 5.0)).abs() < 1e-9);
    }

    #[test]
    fn render_names_types_and_zero_states() {
        let mut m = MetricsSnapshot::default();
        m.jobs.insert(("running".into(), "submit".into()), 2);
        m.cores.insert("service".into(), 1);
        m.decisions
            .insert(("grow".into(), "latency_over_slo".into()), 3);
        m.service_latency.observe(70e-6, 10);
        let t = render(&m);
        assert!(t.contains("# TYPE lowsched_jobs gauge\n"));
        assert!(t.contains("lowsched_jobs{state=\"running\",origin=\"submit\"} 2\n"));
        assert!(t.contains("lowsched_jobs{state=\"paused\",origin=\"submit\"} 0\n"));
        assert!(t.contains("lowsched_cores{pool=\"service\"} 1\n"));
        assert!(t.contains("lowsched_cores{pool=\"batch\"} 0\n"));
        assert!(t.contains("# TYPE lowsched_service_latency_seconds histogram\n"));
        assert!(t.contains("lowsched_service_latency_seconds_bucket{le=\"0.0001\"} 10\n"));
        assert!(t.contains("lowsched_service_latency_seconds_bucket{le=\"+Inf\"} 10\n"));
        assert!(t.contains("lowsched_service_latency_seconds_count 10\n"));
        assert!(
            t.contains("lowsched_decisions_total{kind=\"grow\",reason=\"latency_over_slo\"} 3\n")
        );
        // Every metric has its HELP and TYPE once.
        for (name, kind, _) in METRICS {
            assert_eq!(t.matches(&format!("# TYPE {name} {kind}\n")).count(), 1);
            assert_eq!(t.matches(&format!("# HELP {name} ")).count(), 1);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = MetricsSnapshot::default();
        m.jobs.insert(("running".into(), "a\"b\\c\nd".into()), 1);
        let t = render(&m);
        assert!(t.contains("origin=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }

    #[test]
    fn decisions_fall_in_few_classes() {
        let c = |e, s, r| classify_decision(e, s, r);
        assert_eq!(
            c(
                "update_cores",
                true,
                "grow rung 0->2: recent p95 900us > SLO 800us"
            ),
            Some(("grow".into(), "latency_over_slo".into()))
        );
        assert_eq!(
            c(
                "update_cores",
                true,
                "shrink rung 2->1: calm for 2000ms: p95 1us"
            ),
            Some(("shrink".into(), "calm".into()))
        );
        assert_eq!(
            c("start", false, "priority: fits; starts on 1:1 cores"),
            Some(("start".into(), "fits".into()))
        );
        assert_eq!(
            c("unpause", false, "x: batch cores are free again; resumes"),
            Some(("resume".into(), "cores_free".into()))
        );
        assert_eq!(c("end", false, "succeeded"), None);
        assert_eq!(c("start", true, "memcached found"), None);
    }
}
