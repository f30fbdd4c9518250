#![allow(clippy::unwrap_used)]
//! What seeing and scraping cost: `lowsched report` on a synthetic one-hour state directory
//! (3600 one-second windows of 100 probes each in the history, 120 jobs with pauses and
//! resizes, 240 controller decisions in the event log: the SVG and the PNG), and one `/metrics`
//! scrape (render only, and a whole HTTP GET over loopback) of a daemon's populated board.
//!
//!     cargo bench --bench observe

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use lowsched::cli::report::{self, Sources};
use lowsched::daemon::metrics::{MetricsBoard, MetricsServer};
use lowsched::store::history::{HistoryWriter, Rotation, ServiceWindow};

const HOUR: u64 = 3600;
const T0: f64 = 1_800_000_000.0;

/// A cheap deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn synth_state(dir: &Path) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut w = HistoryWriter::new(dir, Rotation::default(), "synthetic hour");
    for s in 0..HOUR {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let busy = (s / 300) % 2 == 1;
        for _ in 0..100 {
            let base = if busy { 300 } else { 60 };
            h.record(base + rng.next() % (base * 3)).unwrap();
        }
        let p95 = h.value_at_quantile(0.95);
        let sw = ServiceWindow {
            t: T0 + s as f64,
            dur: 1.0,
            qps: Some(if busy { 40_000.0 } else { 10_000.0 }),
            service_cores: Some(if busy { 2 } else { 1 }),
            batch_cores: Some(if busy { 2 } else { 3 }),
            slo_us: Some(p95),
            limit_us: Some(800),
            over: p95 > 800,
            answered: 100,
            failed: 0,
        };
        w.append(&sw, &h).unwrap();
    }
    let mut ev = String::new();
    let mut line = |t: f64, event: &str, job: &str, id: Option<u64>, args: &[&str], r: &str| {
        let mut v = serde_json::json!({"time_ms": (t * 1e3) as u64, "event": event, "job": job,
            "args": args, "reason": r});
        if let Some(id) = id {
            v["id"] = id.into();
        }
        ev.push_str(&v.to_string());
        ev.push('\n');
    };
    for k in 0..240u64 {
        let t = T0 + (k * 15) as f64;
        let (what, cores) = if k % 2 == 0 {
            ("grow rung 0->1: recent p95 500us > 400us", "[0,1]")
        } else {
            ("shrink rung 1->0: calm for 2000ms", "[0]")
        };
        line(t, "update_cores", "memcached", None, &[cores], what);
    }
    for id in 1..=120u64 {
        let start = T0 + (id * 29) as f64;
        let name = format!("job{id}");
        line(
            start,
            "start",
            &name,
            Some(id),
            &["[2,3]", "2"],
            "fits; starts",
        );
        line(
            start + 40.0,
            "pause",
            &name,
            Some(id),
            &[],
            "cannot hold its minimum",
        );
        line(start + 60.0, "unpause", &name, Some(id), &[], "free again");
        line(
            start + 60.0,
            "update_cores",
            &name,
            Some(id),
            &["[3]"],
            "free again",
        );
        line(
            start + 120.0 + (id % 7) as f64 * 10.0,
            "end",
            &name,
            Some(id),
            &[],
            "succeeded",
        );
    }
    std::fs::write(dir.join("events.jsonl"), ev).unwrap();
}

fn report_hour(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    synth_state(dir.path());
    let out = dir.path().join("r");
    let mut g = c.benchmark_group("report");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("one hour: load + SVG + PNG", |b| {
        b.iter(|| {
            let d = report::load(&Sources {
                events: &dir.path().join("events.jsonl"),
                history: &dir.path().join("history"),
                since: None,
                until: None,
                slo_us: None,
            })
            .unwrap();
            report::write(&d, &out).unwrap()
        })
    });
    g.bench_function("one hour: load only", |b| {
        b.iter(|| {
            report::load(&Sources {
                events: &dir.path().join("events.jsonl"),
                history: &dir.path().join("history"),
                since: None,
                until: None,
                slo_us: None,
            })
            .unwrap()
        })
    });
    g.finish();
}

fn scrape(c: &mut Criterion) {
    let board = Arc::new(MetricsBoard::new(Path::new("/proc/self"), T0));
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for v in 50..150 {
        h.record(v).unwrap();
    }
    for _ in 0..3600 {
        board.observe_window(&h, 1, false);
    }
    let server = MetricsServer::start("127.0.0.1:0", board.clone()).unwrap();
    let addr = server.addr();
    let mut g = c.benchmark_group("scrape");
    g.bench_function("render", |b| b.iter(|| board.render()));
    g.bench_function("HTTP GET /metrics over loopback", |b| {
        b.iter(|| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\n\r\n")
                .unwrap();
            let mut out = Vec::with_capacity(8192);
            s.read_to_end(&mut out).unwrap();
            out
        })
    });
    g.finish();
    server.stop();
}

criterion_group!(benches, report_hour, scrape);
criterion_main!(benches);
