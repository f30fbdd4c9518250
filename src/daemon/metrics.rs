//! The daemon's side of the Prometheus metrics: the board the control loop, the event log and
//! the observer publish into, and the `/metrics` HTTP endpoint on its own thread.
//!
//! Never blocking the control loop: the loop publishes at most every [`PUBLISH_EVERY`] with a
//! `try_lock` (a scrape copying the snapshot at that moment only delays the publish to the next
//! turn), and a scrape copies the snapshot and renders it outside the lock. The endpoint serves
//! one connection at a time, answers only `GET /metrics`, and gives up on a slow client after
//! [`CLIENT_TIMEOUT`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::api::metrics::{self, MetricsSnapshot};
use crate::model::jobstate::JobState;
use crate::store::eventlog::{Event, EventTap, Kind, SCHEDULER};

use super::control::Control;

/// How often the control loop refreshes job counts, queue depth and cores.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// A scrape client that has not sent its request, or taken the answer, in this long is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// `/proc/<pid>/stat` times are in clock ticks of USER_HZ, 100 on Linux.
const USER_HZ: f64 = 100.0;
/// Origin label of jobs submitted through the socket.
pub const ORIGIN_SUBMIT: &str = "submit";

/// What every publisher writes and every scrape reads.
#[derive(Debug)]
pub struct MetricsBoard {
    snapshot: Mutex<MetricsSnapshot>,
    last_publish_ns: AtomicU64,
    proc_self: PathBuf,
}

impl MetricsBoard {
    /// A board; `proc_self` is the daemon's `/proc/self` (a fake in tests).
    pub fn new(proc_self: &Path, start_time_s: f64) -> Self {
        Self {
            snapshot: Mutex::new(MetricsSnapshot {
                start_time_s,
                ..MetricsSnapshot::default()
            }),
            last_publish_ns: AtomicU64::new(0),
            proc_self: proc_self.to_path_buf(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MetricsSnapshot> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds one completed probe window in: its answered latencies (µs), failures, verdict.
    pub fn observe_window(&self, latency_us: &Histogram<u64>, failed: u64, over: bool) {
        let mut s = self.lock();
        for v in latency_us.iter_recorded() {
            s.service_latency
                .observe(v.value_iterated_to() as f64 / 1e6, v.count_at_value());
        }
        s.probe_failures += failed;
        if over {
            s.slo_windows_over += 1;
        } else {
            s.slo_windows_within += 1;
        }
    }

    /// The service's and batch's cores as last published.
    pub fn cores(&self) -> (Option<u32>, Option<u32>) {
        let s = self.lock();
        let get = |k: &str| s.cores.get(k).map(|&n| n as u32);
        (get("service"), get("batch"))
    }

    /// The snapshot with the daemon's CPU and memory read now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut m = self.lock().clone();
        if let Some((cpu, rss)) = read_self_usage(&self.proc_self) {
            m.cpu_seconds = cpu;
            m.resident_bytes = rss;
        }
        m
    }

    /// The metrics as exposition text.
    pub fn render(&self) -> String {
        metrics::render(&self.snapshot())
    }
}

/// Decisions counted as the event log records them (every caller, one place).
impl EventTap for MetricsBoard {
    fn event(&self, ev: &Event) {
        if ev.job == SCHEDULER {
            return;
        }
        let is_service = ev.id.is_none();
        let Some(key) = metrics::classify_decision(ev.kind.name(), is_service, &ev.reason) else {
            return;
        };
        let reaction_us = ev
            .inputs
            .as_ref()
            .and_then(|i| i.get("reaction_us"))
            .and_then(serde_json::Value::as_u64);
        let mut s = self.lock();
        *s.decisions.entry(key).or_insert(0) += 1;
        if let (Some(us), Kind::UpdateCores { .. }) = (reaction_us, &ev.kind) {
            s.reaction.observe(us as f64 / 1e6, 1);
        }
    }
}

/// CPU seconds (user + system) and resident bytes from `<proc_self>/stat` and `status`.
pub fn read_self_usage(proc_self: &Path) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(proc_self.join("stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after "pid (comm) ".
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(proc_self.join("status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks as f64 / USER_HZ, rss_kb * 1024))
}

impl Control {
    /// Publishes job counts, queue depth, cores and actuation times, at most every
    /// [`PUBLISH_EVERY`], never waiting for a scrape.
    pub(super) fn publish_metrics(&mut self) {
        let board = self.shared.metrics.clone();
        let now = crate::sys::clock::monotonic_ns();
        let last = board.last_publish_ns.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < PUBLISH_EVERY.as_nanos() as u64 {
            return;
        }
        let counts = self.shared.table().counts();
        let queue = self.shared.jobs.queue().len() as u64;
        let Ok(mut s) = board.snapshot.try_lock() else {
            return;
        };
        let timings = self.actuator.take_timings();
        s.jobs.clear();
        for (state, n) in counts {
            s.jobs
                .insert((state_label(state), ORIGIN_SUBMIT.into()), n as u64);
        }
        s.queue_depth = queue;
        s.cores
            .insert("service".into(), self.service_cores.len() as u64);
        s.cores
            .insert("batch".into(), self.batch_cores.len() as u64);
        for us in timings.launch_us {
            s.launch.observe(us as f64 / 1e6, 1);
        }
        for us in timings.freeze_us {
            s.freeze.observe(us as f64 / 1e6, 1);
        }
        board.last_publish_ns.store(now, Ordering::Relaxed);
    }
}

fn state_label(s: JobState) -> String {
    s.to_string().to_ascii_lowercase()
}

/// The running `/metrics` endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `listen` and serves `board` on a thread of its own.
    pub fn start(listen: &str, board: Arc<MetricsBoard>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lowsched-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        serve_scrape(stream, &board);
                    }
                }
            })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread: sets the flag and wakes its `accept` with a connection of our own.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, CLIENT_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one request head: status line, extra headers, body.
pub fn answer(head: &str, board: &MetricsBoard) -> (&'static str, &'static str, String) {
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", "", board.render()),
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "only GET\n".into(),
        ),
        _ => ("404 Not Found", "", "only /metrics\n".into()),
    }
}

fn serve_scrape(mut stream: TcpStream, board: &MetricsBoard) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.is_empty() {
        return;
    }
    let (status, extra, body) = answer(&String::from_utf8_lossy(&head), board);
    let ctype = if status.starts_with("200") {
        metrics::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

/// Writes the metrics to a node_exporter textfile: a temporary file beside it, then a rename,
/// so the collector never reads half a file.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> MetricsBoard {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("stat"),
            "42 (lowsched d) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 1 1",
        )
        .unwrap();
        std::fs::write(dir.path().join("status"), "Name:\tx\nVmRSS:\t  2048 kB\n").unwrap();
        let b = MetricsBoard::new(dir.path(), 1.8e9);
        // The files are read at each scrape: keep them.
        std::mem::forget(dir);
        b
    }

    #[test]
    fn self_usage_comes_from_proc_stat_and_status() {
        let b = board();
        let m = b.snapshot();
        assert_eq!(m.cpu_seconds, 3.0);
        assert_eq!(m.resident_bytes, 2048 * 1024);
    }

    #[test]
    fn only_get_of_metrics_is_answered() {
        let b = board();
        let (s, _, body) = answer("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &b);
        assert_eq!(s, "200 OK");
        assert!(body.contains("lowsched_daemon_cpu_seconds_total 3\n"));
        assert!(body.contains("lowsched_daemon_start_time_seconds 1800000000\n"));
        assert_eq!(
            answer("POST /metrics HTTP/1.1\r\n\r\n", &b).0,
            "405 Method Not Allowed"
        );
        assert_eq!(answer("GET / HTTP/1.1\r\n\r\n", &b).0, "404 Not Found");
        assert_eq!(
            answer("GET /metricsx HTTP/1.1\r\n\r\n", &b).0,
            "404 Not Found"
        );
    }

    #[test]
    fn windows_and_decisions_are_counted() {
        let b = board();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        h.record_n(70, 9).unwrap();
        h.record(900).unwrap();
        b.observe_window(&h, 2, true);
        b.observe_window(&h, 0, false);
        b.event(
            &Event::new(
                "memcached",
                None,
                Kind::UpdateCores {
                    cores: crate::model::cpuset::CpuSet::new(),
                },
            )
            .because("grow rung 0->1: recent p95 700us > 600us")
            .with_inputs(serde_json::json!({"reaction_us": 300})),
        );
        let m = b.snapshot();
        assert_eq!(m.service_latency.count(), 20);
        assert_eq!(m.probe_failures, 2);
        assert_eq!((m.slo_windows_within, m.slo_windows_over), (1, 1));
        assert_eq!(
            m.decisions
                .get(&("grow".to_string(), "latency_rising".to_string())),
            Some(&1)
        );
        assert_eq!(m.reaction.count(), 1);
    }

    #[test]
    fn the_endpoint_serves_a_real_scrape_and_stops() {
        let b = Arc::new(board());
        let server = MetricsServer::start("127.0.0.1:0", b).unwrap();
        let mut c = TcpStream::connect(server.addr()).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(got.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(got.contains("# TYPE lowsched_jobs gauge"));
        server.stop();
    }
}
