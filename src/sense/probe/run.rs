//! The probe thread: schedule, send, time, reconnect, poll stats, publish.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ProbeConfig, ProbeSignal, ProbeStatus, Shared};
use crate::sense::doorbell::Tripwire;
use crate::sense::latency::{EncodedHistogram, FastLatency, RecentLatency, WindowedLatency};
use crate::sense::memcache::Conn;
use crate::sense::memcache::proto::{self, Reply};
use crate::sense::probe::report::ServerInfo;
use crate::sys::clock::{monotonic_ns, realtime_ns, unix_time_s};
use crate::sys::epoll::{Epoll, Interest};

const PROBE: u64 = 1;
const STATS: u64 = 2;
/// How often the current window's percentiles are recomputed for the signal.
const WINDOW_REFRESH_NS: u64 = 100_000_000;

struct Probe {
    cfg: ProbeConfig,
    shared: Arc<Shared>,
    epoll: Epoll,
    conn: Option<Conn>,
    /// The probe connection's answers carry kernel arrival stamps.
    stamped: bool,
    waiting: VecDeque<u64>,
    next_send: u64,
    /// The pace in force: `full_ns`, or `calm_ns` while memcached is calm.
    interval_ns: u64,
    full_ns: u64,
    calm_ns: u64,
    alarm: Option<Tripwire>,
    next_connect: u64,
    backoff: Duration,
    status: ProbeStatus,
    last_error: Option<String>,
    windows: WindowedLatency,
    recent: RecentLatency,
    stats: Option<Conn>,
    stats_next: u64,
    stats_sent: bool,
    prev_cmds: Option<(u64, u64)>,
    qps: Option<f64>,
    server: Option<ServerInfo>,
    signal: ProbeSignal,
    window_refreshed: u64,
    reported_index: u64,
    started_ns: u64,
    started_unix_s: f64,
}

pub(super) fn run(cfg: ProbeConfig, shared: Arc<Shared>, epoll: Epoll, alarm: Option<Tripwire>) {
    if let Some(cpu) = cfg.cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let rt_error = cfg.realtime.and_then(|prio| {
        crate::sys::sched::set_fifo(prio)
            .err()
            .map(|e| format!("cannot run the probe at SCHED_FIFO {prio}: {e}"))
    });
    // Sub-millisecond waits must end on time; the default slack is 50 µs.
    let _ = crate::sys::sched::set_timer_slack_ns(1_000);
    let now = monotonic_ns();
    let full_ns = 1_000_000_000 / u64::from(cfg.rate);
    let mut p = Probe {
        interval_ns: full_ns,
        full_ns,
        calm_ns: 1_000_000_000 / u64::from(cfg.calm_rate.max(1)),
        alarm,
        windows: WindowedLatency::new(now, cfg.window, cfg.slo, cfg.history),
        recent: RecentLatency::new(cfg.fast_horizon),
        backoff: cfg.backoff_min,
        cfg,
        shared,
        epoll,
        conn: None,
        stamped: false,
        waiting: VecDeque::new(),
        next_send: now,
        next_connect: now,
        status: ProbeStatus::Starting,
        last_error: None,
        stats: None,
        stats_next: now,
        stats_sent: false,
        prev_cmds: None,
        qps: None,
        server: None,
        signal: ProbeSignal::default(),
        window_refreshed: 0,
        reported_index: 0,
        started_ns: now,
        started_unix_s: unix_time_s(),
    };
    p.last_error = rt_error;
    p.refresh_report(now);
    while !p.shared.stop.load(Ordering::Relaxed) {
        p.step();
    }
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .next()
        .ok_or_else(|| format!("{server} resolves to no address"))
}

impl Probe {
    fn step(&mut self) {
        let now = monotonic_ns();
        self.windows.advance(now);
        // Windows also close when an answer lands past a boundary: refresh on any change.
        if self.windows.current_index() != self.reported_index {
            self.reported_index = self.windows.current_index();
            self.refresh_report(now);
        }
        if self.conn.is_none() && now >= self.next_connect {
            self.connect(now);
        }
        self.send_due(now);
        if let Some(&oldest) = self.waiting.front() {
            if now.saturating_sub(oldest) > self.cfg.timeout.as_nanos() as u64 {
                let msg = format!(
                    "no answer from {} within {}",
                    self.cfg.server,
                    crate::model::text::Span(self.cfg.timeout)
                );
                self.drop_conn(now, ProbeStatus::Stalled, msg);
            }
        }
        if now >= self.stats_next {
            self.poll_stats(now);
        }
        self.publish(now);
        let mut deadline = self.next_send.min(self.stats_next);
        deadline = deadline.min(self.windows.next_boundary_ns());
        if self.conn.is_none() {
            deadline = deadline.min(self.next_connect);
        }
        if let Some(&oldest) = self.waiting.front() {
            deadline = deadline.min(oldest + self.cfg.timeout.as_nanos() as u64 + 1);
        }
        // Never sleep long, so a stop request is seen promptly.
        let wait = deadline.saturating_sub(monotonic_ns()).min(100_000_000);
        let mut ready = [(0u64, false, false); 4];
        let mut n = 0;
        let r = self.epoll.wait(Some(Duration::from_nanos(wait)), |ev| {
            if n < ready.len() {
                ready[n] = (ev.token, ev.readable, ev.closed);
                n += 1;
            }
        });
        if let Err(e) = r {
            self.last_error = Some(format!("epoll failed: {e}"));
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let recv_ns = monotonic_ns();
        if self.stamped && !self.waiting.is_empty() {
            self.read_replies(recv_ns);
        }
        for &(token, readable, closed) in &ready[..n] {
            match token {
                PROBE if readable || closed => self.read_replies(recv_ns),
                STATS if readable || closed => self.read_stats(recv_ns),
                _ => {}
            }
        }
    }

    fn connect(&mut self, now: u64) {
        let r = resolve(&self.cfg.server).and_then(|addr| {
            Conn::connect(&addr, self.cfg.connect_timeout)
                .map_err(|e| format!("cannot connect to {}: {e}", self.cfg.server))
        });
        match r.and_then(|c| {
            // With kernel arrival stamps, answers need no wake-up of their own: they are read
            // at the next send, timed exactly all the same. A wake-up costs more CPU than the
            // rest of a probe on a VM; this halves them.
            self.stamped = c.enable_rx_timestamps().is_ok();
            let interest = Interest {
                read: !self.stamped,
                write: false,
            };
            self.epoll
                .add(c.fd(), PROBE, interest)
                .map_err(|e| format!("epoll: {e}"))
                .map(|()| c)
        }) {
            Ok(c) => {
                self.conn = Some(c);
                // Slots missed while down were counted as failures; restart the grid now.
                self.next_send = self.next_send.max(monotonic_ns());
            }
            Err(e) => {
                self.fail_slot_backlog(now);
                self.status = ProbeStatus::Down;
                self.last_error = Some(e);
                self.next_connect = now + self.backoff.as_nanos() as u64;
                self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
            }
        }
    }

    /// While disconnected every scheduled probe fails: memcached is not serving.
    fn fail_slot_backlog(&mut self, now: u64) {
        while self.next_send <= now {
            self.windows.record_error(now);
            self.recent.record_error(now);
            self.next_send += self.interval_ns;
        }
    }

    fn send_due(&mut self, now: u64) {
        let Some(conn) = self.conn.as_mut() else {
            self.fail_slot_backlog(now);
            return;
        };
        let mut sent = false;
        while self.next_send <= now {
            proto::encode_get(conn.out(), self.cfg.key.as_bytes());
            self.waiting.push_back(self.next_send);
            self.next_send += self.interval_ns;
            sent = true;
        }
        if sent {
            if let Err(e) = conn.flush() {
                let msg = format!("write to {} failed: {e}", self.cfg.server);
                self.drop_conn(now, ProbeStatus::Down, msg);
            }
        }
    }

    fn drop_conn(&mut self, now: u64, status: ProbeStatus, why: String) {
        if let Some(c) = self.conn.take() {
            let _ = self.epoll.delete(c.fd());
        }
        for _ in self.waiting.drain(..) {
            self.windows.record_error(now);
            self.recent.record_error(now);
        }
        self.status = status;
        self.last_error = Some(why);
        self.next_connect = now + self.backoff.as_nanos() as u64;
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
    }

    /// Reads and times answers: by their kernel arrival stamp when the connection has them
    /// (`real_minus_mono` converts CLOCK_REALTIME stamps), else at `recv_ns`.
    fn read_replies(&mut self, recv_ns: u64) {
        let stamped = self.stamped;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let (fill, arrived) = if stamped {
            let off = realtime_ns().wrapping_sub(monotonic_ns());
            match conn.fill_stamped() {
                Ok((_, Some(stamp))) => (Ok(0), stamp.wrapping_sub(off).min(recv_ns)),
                Ok((n, None)) => (Ok(n), recv_ns),
                Err(e) => (Err(e), recv_ns),
            }
        } else {
            (conn.fill(), recv_ns)
        };
        let mut used = 0;
        let mut broken: Option<(ProbeStatus, String)> = None;
        loop {
            match proto::parse_reply(&conn.pending()[used..]) {
                Ok(Some((reply, n))) => {
                    used += n;
                    let Some(sched) = self.waiting.pop_front() else {
                        broken = Some((ProbeStatus::Garbage, "a reply to no request".into()));
                        break;
                    };
                    match reply {
                        Reply::Values { .. } => {
                            let us = arrived.saturating_sub(sched) / 1000;
                            self.windows.record(arrived, us);
                            self.recent.record(arrived, us);
                            self.status = ProbeStatus::Up;
                            self.backoff = self.cfg.backoff_min;
                        }
                        _ => {
                            self.windows.record_error(arrived);
                            self.recent.record_error(arrived);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    broken = Some((ProbeStatus::Garbage, e.to_string()));
                    break;
                }
            }
        }
        conn.consume(used);
        if broken.is_none() {
            if let Err(e) = fill {
                broken = Some((ProbeStatus::Down, format!("{}: {e}", self.cfg.server)));
            }
        }
        if let Some((status, why)) = broken {
            self.drop_conn(recv_ns, status, why);
        }
    }

    fn poll_stats(&mut self, now: u64) {
        self.stats_next = now + self.cfg.stats_interval.as_nanos() as u64;
        if self.stats_sent {
            // The last poll went unanswered: start over on a new connection.
            self.close_stats();
        }
        if self.stats.is_none() {
            let Ok(addr) = resolve(&self.cfg.server) else {
                return;
            };
            let Ok(c) = Conn::connect(&addr, self.cfg.connect_timeout) else {
                self.qps = None;
                return;
            };
            if self.epoll.add(c.fd(), STATS, Interest::READ).is_err() {
                return;
            }
            self.stats = Some(c);
        }
        if let Some(c) = self.stats.as_mut() {
            c.out().extend_from_slice(b"stats\r\n");
            if c.flush().is_err() {
                self.close_stats();
            } else {
                self.stats_sent = true;
            }
        }
    }

    fn close_stats(&mut self) {
        if let Some(c) = self.stats.take() {
            let _ = self.epoll.delete(c.fd());
        }
        self.stats_sent = false;
        self.prev_cmds = None;
    }

    fn read_stats(&mut self, now: u64) {
        let Some(c) = self.stats.as_mut() else {
            return;
        };
        if c.fill().is_err() {
            self.close_stats();
            self.qps = None;
            return;
        }
        match proto::parse_stats(c.pending()) {
            Ok(Some((s, used))) => {
                c.consume(used);
                self.stats_sent = false;
                let cmds = s.cmd_get + s.cmd_set;
                self.qps = match self.prev_cmds {
                    Some((c0, t0)) if cmds >= c0 && now > t0 => {
                        Some((cmds - c0) as f64 * 1e9 / (now - t0) as f64)
                    }
                    _ => self.qps, // first poll, or memcached restarted
                };
                self.prev_cmds = Some((cmds, now));
                self.server = Some(ServerInfo {
                    pid: s.pid,
                    uptime_s: s.uptime,
                    threads: s.threads,
                    curr_connections: s.curr_connections,
                });
            }
            Ok(None) => {}
            Err(_) => {
                self.close_stats();
                self.qps = None;
            }
        }
    }

    fn publish(&mut self, now: u64) {
        let waiting = self.waiting.iter().map(|&t| now.saturating_sub(t) / 1000);
        let s = &mut self.signal;
        s.fast = self.recent.fast(now, waiting);
        s.oldest_waiting_us = self
            .waiting
            .front()
            .map_or(0, |&t| now.saturating_sub(t) / 1000);
        s.status = self.status;
        s.qps = self.qps;
        s.windows_over = self.windows.windows_over();
        s.windows_total = self.windows.windows_total();
        if let Some(last) = self.windows.recent().rev().find(|w| !w.is_empty()) {
            s.last_p95_us = last
                .slo_value_us
                .unwrap_or(crate::sense::latency::NO_ANSWER_US);
            s.last_over = last.over_slo;
        }
        if now >= self.window_refreshed + WINDOW_REFRESH_NS
            || s.window_index != self.windows.current_index()
        {
            let cur = self.windows.current();
            s.window_index = cur.index;
            s.window = cur.latency;
            s.slack_us = match cur.slo_value_us {
                Some(v) => self.cfg.slo.limit_us as i64 - v as i64,
                None if cur.is_empty() => self.cfg.slo.limit_us as i64,
                None => i64::MIN,
            };
            self.window_refreshed = now;
        }
        s.at_ns = now;
        self.shared.signal.publish(&self.signal);
        if let Some(alarm) = &self.alarm {
            alarm.check(self.signal.fast.p95_us, now);
        }
        self.pace(now);
    }

    /// Slows to the calm rate while the recent p95 is low, and speeds up as soon as it is
    /// not: a rise shows at most one calm interval late, and a calm service costs a quarter
    /// of the wake-ups.
    fn pace(&mut self, now: u64) {
        let calm = is_calm(&self.cfg, self.status, &self.signal.fast);
        let interval = if calm { self.calm_ns } else { self.full_ns };
        self.next_send = repace(self.next_send, self.interval_ns, interval, now);
        self.interval_ns = interval;
    }

    fn refresh_report(&mut self, now: u64) {
        let w = &self.windows;
        let Ok(mut r) = self.shared.report.lock() else {
            return;
        };
        r.started_unix_s = self.started_unix_s;
        r.uptime_s = (now - self.started_ns) as f64 / 1e9;
        r.status = self.status;
        r.last_error = self.last_error.clone();
        r.cumulative = w.cumulative_percentiles();
        r.cumulative_hist = EncodedHistogram::encode(w.cumulative()).ok();
        r.current = w.current();
        r.windows = w.recent().cloned().collect();
        r.windows_over = w.windows_over();
        r.windows_total = w.windows_total();
        r.qps = self.qps;
        r.memcached = self.server;
    }
}

/// Calm: a calm threshold is set, memcached is up, no recent probe failed and the recent p95
/// is under the threshold.
pub(super) fn is_calm(cfg: &ProbeConfig, status: ProbeStatus, fast: &FastLatency) -> bool {
    cfg.calm_below_us > 0
        && status == ProbeStatus::Up
        && fast.samples > 0
        && fast.errors == 0
        && fast.p95_us < cfg.calm_below_us
}

/// The next send time when the interval changes from `old` to `new`. Speeding up brings the
/// already scheduled send forward, but never before `now`: its latency is timed from the
/// scheduled instant, so a send scheduled in the past would count the probe's own delay.
/// Slowing down keeps it: the new interval applies from the send after.
pub(super) fn repace(next_send: u64, old: u64, new: u64, now: u64) -> u64 {
    if new >= old {
        return next_send;
    }
    let sooner = next_send.saturating_sub(old) + new;
    sooner.max(now).min(next_send)
}
