//! The generating loop: one thread, blocking epoll, batched sends per tick, answers timed from
//! their intended send time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::report::{Intervals, LoadgenReport};
use super::schedule::SplitMix64;
use super::setup::{check, make_keys, place_thread, preload, resolve};
use super::{LoadgenConfig, LoadgenError};
use crate::sense::latency::Percentiles;
use crate::sense::memcache::Conn;
use crate::sense::memcache::proto::{self, Reply};
use crate::sys::clock::{monotonic_ns, realtime_ns, thread_cpu_ns, unix_time_s};
use crate::sys::epoll::{Epoll, Interest, Ready};

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_NS: u64 = 100_000_000;

struct Lane {
    conn: Option<Conn>,
    waiting: VecDeque<u64>,
    retry_at: u64,
    writing: bool,
    dirty: bool,
    /// The kernel stamps this connection's answers: read them lazily, without a wake-up each.
    stamped: bool,
}

/// How late an answer may be read when nothing else wakes the loop (kernel timestamps keep
/// the timing exact; only answers read together share the last one's stamp).
const LAZY_READ_NS: u64 = 1_000_000;

/// What a lane's socket is watched for: answers only when they are not stamped.
fn interest(lane: &Lane) -> Interest {
    Interest {
        read: !lane.stamped,
        write: lane.writing,
    }
}

fn open_lane(
    epoll: &Epoll,
    token: usize,
    addr: &SocketAddr,
    lane: &mut Lane,
) -> std::io::Result<()> {
    let c = Conn::connect(addr, CONNECT_TIMEOUT)?;
    lane.stamped = c.enable_rx_timestamps().is_ok();
    lane.writing = false;
    epoll.add(c.fd(), token as u64, interest(lane))?;
    lane.conn = Some(c);
    Ok(())
}

pub(super) fn run(
    cfg: &LoadgenConfig,
    stop: Option<&AtomicBool>,
) -> Result<LoadgenReport, LoadgenError> {
    check(cfg)?;
    let addr = resolve(&cfg.server)?;
    place_thread(cfg)?;
    let keys = make_keys(cfg.keys, cfg.key_size);
    let value = vec![b'v'; cfg.value_size];
    if cfg.preload {
        preload(addr, cfg, &keys, &value)?;
    }
    let (epoll, lanes) = open_lanes(cfg, addr)?;
    let started_unix_s = unix_time_s();
    let cpu0 = thread_cpu_ns();
    let mut g = Generator::new(cfg, addr, keys, value, epoll, lanes, monotonic_ns());
    let mut stopped_at: Option<u64> = None;
    let mut ready: Vec<Ready> = Vec::with_capacity(64);
    loop {
        let now = monotonic_ns();
        if stopped_at.is_none() && stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            stopped_at = Some(now);
        }
        let send_end = stopped_at.unwrap_or(g.end);
        g.send_due(now, send_end);
        g.reconnect(now, send_end);
        let Some(wake) = g.settle(now, send_end) else {
            break;
        };
        let timeout = Duration::from_nanos(wake.saturating_sub(now));
        ready.clear();
        g.epoll
            .wait(Some(timeout), |r| ready.push(r))
            .map_err(LoadgenError::Epoll)?;
        g.take_ready(&ready);
    }
    let finish = monotonic_ns();
    Ok(g.report(finish, stopped_at, started_unix_s, cpu0))
}

/// One connection per lane, all registered with one epoll.
fn open_lanes(cfg: &LoadgenConfig, addr: SocketAddr) -> Result<(Epoll, Vec<Lane>), LoadgenError> {
    let epoll = Epoll::new(cfg.connections.min(256)).map_err(LoadgenError::Epoll)?;
    let mut lanes = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let mut lane = Lane {
            conn: None,
            waiting: VecDeque::new(),
            retry_at: 0,
            writing: false,
            dirty: false,
            stamped: false,
        };
        open_lane(&epoll, i, &addr, &mut lane)
            .map_err(|source| LoadgenError::Connect { addr, source })?;
        lanes.push(lane);
    }
    Ok((epoll, lanes))
}

/// `t_s` seconds into the schedule, on the monotonic clock of a run that started at `start`.
fn at(start: u64, t_s: f64) -> u64 {
    start + (t_s * 1e9) as u64
}

/// One timed run: the connections, where the schedule is, and the results so far.
struct Generator<'c> {
    cfg: &'c LoadgenConfig,
    addr: SocketAddr,
    keys: Vec<u8>,
    value: Vec<u8>,
    epoll: Epoll,
    lanes: Vec<Lane>,
    rng: SplitMix64,
    iv: Intervals,
    tick_ns: u64,
    start: u64,
    end: u64,
    drain_until: u64,
    /// The next send's time in the schedule (seconds), if any is left.
    next: Option<f64>,
    last_send_wake: u64,
    /// Round-robin position over the lanes.
    rr: usize,
    answered: u64,
}

impl<'c> Generator<'c> {
    fn new(
        cfg: &'c LoadgenConfig,
        addr: SocketAddr,
        keys: Vec<u8>,
        value: Vec<u8>,
        epoll: Epoll,
        lanes: Vec<Lane>,
        start: u64,
    ) -> Self {
        let end = start + cfg.duration.as_nanos() as u64;
        Self {
            cfg,
            addr,
            keys,
            value,
            epoll,
            lanes,
            rng: SplitMix64::new(cfg.seed),
            iv: Intervals::new(start, cfg.interval.as_nanos() as u64),
            tick_ns: cfg.tick.as_nanos() as u64,
            start,
            end,
            drain_until: end + cfg.drain.as_nanos() as u64,
            next: if cfg.schedule.rate_at(0.0) > 0.0 {
                Some(0.0)
            } else {
                cfg.schedule.next_send(0.0)
            },
            last_send_wake: 0,
            rr: 0,
            answered: 0,
        }
    }

    /// Sends every request due by `now` (at most one batch per tick), round-robin over the
    /// lanes, then flushes the lanes that got any.
    fn send_due(&mut self, now: u64, send_end: u64) {
        let (cfg, start) = (self.cfg, self.start);
        let Some(t0) = self.next.map(|t| at(start, t)).filter(|&t| t < send_end) else {
            return;
        };
        if t0 > now || now < self.last_send_wake + self.tick_ns {
            return;
        }
        self.last_send_wake = now;
        let mut t = self.next;
        while let Some(ts) = t {
            let tn = at(start, ts);
            if tn > now || tn >= send_end {
                break;
            }
            let n = self.lanes.len();
            let lane = &mut self.lanes[self.rr % n];
            self.rr = self.rr.wrapping_add(1);
            self.iv.sent(tn);
            match lane.conn.as_mut() {
                Some(c) => {
                    let k = self.rng.below(cfg.keys) as usize * cfg.key_size;
                    let key = &self.keys[k..k + cfg.key_size];
                    if cfg.set_ratio > 0.0 && self.rng.next_f64() < cfg.set_ratio {
                        proto::encode_set(c.out(), key, &self.value);
                    } else {
                        proto::encode_get(c.out(), key);
                    }
                    lane.waiting.push_back(tn);
                    lane.dirty = true;
                }
                None => self.iv.error(tn),
            }
            t = cfg.schedule.next_send(ts);
        }
        self.next = t;
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if lane.dirty {
                lane.dirty = false;
                flush(&mut self.epoll, i, lane, &mut self.iv, now);
            }
        }
    }

    /// Reconnects broken lanes whose back-off has passed, while sending goes on.
    fn reconnect(&mut self, now: u64, send_end: u64) {
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if lane.conn.is_none() && now >= lane.retry_at && now < send_end {
                lane.retry_at = now + RECONNECT_NS;
                let _ = open_lane(&self.epoll, i, &self.addr, lane);
            }
        }
    }

    /// Closes the intervals that are final and says when to wake next: `None` once sending is
    /// over and every answer is in (or the drain time has passed).
    fn settle(&mut self, now: u64, send_end: u64) -> Option<u64> {
        // Intervals before the oldest outstanding request (and before the next send) are final.
        let oldest = self
            .lanes
            .iter()
            .filter_map(|l| l.waiting.front().copied())
            .min();
        let start = self.start;
        let pending_send = self.next.map(|t| at(start, t)).filter(|&t| t < send_end);
        self.iv
            .close_before(oldest.unwrap_or(u64::MAX).min(pending_send.unwrap_or(now)));
        if pending_send.is_none() && (oldest.is_none() || now >= self.drain_until) {
            return None;
        }
        let mut wake = self.drain_until;
        if let Some(t) = pending_send {
            wake = wake.min(t.max(self.last_send_wake + self.tick_ns));
        }
        for l in &self.lanes {
            if l.conn.is_none() {
                if pending_send.is_some() {
                    wake = wake.min(l.retry_at.max(now));
                }
            } else if l.stamped && !l.waiting.is_empty() {
                wake = wake.min(now + LAZY_READ_NS);
            }
        }
        Some(wake)
    }

    /// Flushes what became writable and reads the answers that arrived; stamped lanes are read
    /// on every wake.
    fn take_ready(&mut self, ready: &[Ready]) {
        let recv_ns = monotonic_ns();
        // Kernel stamps are CLOCK_REALTIME; answers are timed on CLOCK_MONOTONIC.
        let real_minus_mono = realtime_ns().wrapping_sub(recv_ns);
        let (epoll, iv) = (&mut self.epoll, &mut self.iv);
        for r in ready {
            let i = r.token as usize;
            let Some(lane) = self.lanes.get_mut(i) else {
                continue;
            };
            if r.writable && lane.writing {
                flush(epoll, i, lane, iv, recv_ns);
            }
            if (r.readable || r.closed) && !lane.stamped {
                self.answered += read_answers(epoll, lane, iv, recv_ns, None);
            } else if r.closed {
                self.answered += read_answers(epoll, lane, iv, recv_ns, Some(real_minus_mono));
            }
        }
        for lane in &mut self.lanes {
            if lane.stamped && !lane.waiting.is_empty() {
                self.answered += read_answers(epoll, lane, iv, recv_ns, Some(real_minus_mono));
            }
        }
    }

    /// Counts what is still unanswered as failed and sums the run up (`finish`: when the loop
    /// ended; `stopped_at`: when a stop was asked for).
    fn report(
        mut self,
        finish: u64,
        stopped_at: Option<u64>,
        started_unix_s: f64,
        cpu0: u64,
    ) -> LoadgenReport {
        for lane in &mut self.lanes {
            for t in lane.waiting.drain(..) {
                self.iv.error(t);
            }
        }
        let cpu_s = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
        let run_end = stopped_at.unwrap_or(self.end).min(self.end);
        self.iv.close_all(run_end);
        let run_s = (run_end - self.start) as f64 / 1e9;
        let wall_s = (finish - self.start) as f64 / 1e9;
        let qps = self.answered as f64 / run_s;
        let cpu_core = cpu_s / wall_s.max(1e-9);
        LoadgenReport {
            server: self.cfg.server.clone(),
            connections: self.cfg.connections,
            duration_s: run_s,
            started_unix_s,
            target_qps: self.iv.sent as f64 / run_s,
            qps,
            sent: self.iv.sent,
            answered: self.answered,
            latency: Percentiles::of(&self.iv.cumulative, self.iv.errors),
            intervals: std::mem::take(&mut self.iv.done),
            cpu_s,
            cpu_core,
            cpu_pct_per_10k_qps: if qps > 0.0 {
                cpu_core * 100.0 / (qps / 10_000.0)
            } else {
                0.0
            },
        }
    }
}

fn fail_lane(epoll: &mut Epoll, lane: &mut Lane, iv: &mut Intervals, now: u64) {
    if let Some(c) = lane.conn.take() {
        let _ = epoll.delete(c.fd());
    }
    for t in lane.waiting.drain(..) {
        iv.error(t);
    }
    lane.writing = false;
    lane.retry_at = now + RECONNECT_NS;
}

fn flush(epoll: &mut Epoll, token: usize, lane: &mut Lane, iv: &mut Intervals, now: u64) {
    let Some(c) = lane.conn.as_mut() else {
        return;
    };
    match c.flush() {
        Ok(all) => {
            // Watch for writability only while something is stuck in the buffer.
            if all == lane.writing {
                let interest = if all {
                    Interest::READ
                } else {
                    Interest::READ_WRITE
                };
                if epoll.modify(c.fd(), token as u64, interest).is_err() {
                    fail_lane(epoll, lane, iv, now);
                    return;
                }
                lane.writing = !all;
            }
        }
        Err(_) => fail_lane(epoll, lane, iv, now),
    }
}

/// Reads and times a lane's answers. With `real_minus_mono`, the lane's answers carry kernel
/// arrival stamps (CLOCK_REALTIME), converted to monotonic time with that offset; without, an
/// answer is timed at `recv_ns`, when the loop woke for it.
fn read_answers(
    epoll: &mut Epoll,
    lane: &mut Lane,
    iv: &mut Intervals,
    recv_ns: u64,
    real_minus_mono: Option<u64>,
) -> u64 {
    let Some(c) = lane.conn.as_mut() else {
        return 0;
    };
    let (filled, arrived) = match real_minus_mono {
        None => (c.fill().map(|_| ()), recv_ns),
        Some(off) => match c.fill_stamped() {
            Ok((_, Some(stamp))) => (Ok(()), stamp.wrapping_sub(off).min(recv_ns)),
            Ok((_, None)) => (Ok(()), recv_ns),
            Err(e) => (Err(e), recv_ns),
        },
    };
    let mut used = 0;
    let mut answered = 0;
    let mut broken = filled.is_err();
    loop {
        match proto::parse_reply(&c.pending()[used..]) {
            Ok(Some((reply, n))) => {
                used += n;
                let Some(sched) = lane.waiting.pop_front() else {
                    broken = true;
                    break;
                };
                match reply {
                    Reply::Failed { .. } => iv.error(sched),
                    _ => {
                        iv.record(sched, arrived.saturating_sub(sched) / 1000);
                        answered += 1;
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    c.consume(used);
    if broken {
        fail_lane(epoll, lane, iv, recv_ns);
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::loadgen::Schedule;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A fake memcached: answers `get`s with `END` and `set`s with `STORED`; the first
    /// connection is cut after `cut_after` requests.
    fn fake_server(cut_after: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for (n, stream) in l.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut w = stream.try_clone().unwrap();
                    let mut served = 0;
                    let mut lines = BufReader::new(stream).lines();
                    while let Some(Ok(line)) = lines.next() {
                        let reply: &[u8] = if line.starts_with("get ") {
                            b"END\r\n"
                        } else if line.starts_with("set ") {
                            let _ = lines.next(); // the value line
                            b"STORED\r\n"
                        } else {
                            b"ERROR\r\n"
                        };
                        served += 1;
                        if n == 0 && served > cut_after {
                            return; // drops the connection with requests outstanding
                        }
                        if w.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn cfg(server: String) -> LoadgenConfig {
        LoadgenConfig {
            server,
            duration: Duration::from_millis(1500),
            schedule: Schedule::fixed(2000.0).unwrap(),
            connections: 1,
            keys: 100,
            interval: Duration::from_millis(500),
            ..LoadgenConfig::default()
        }
    }

    #[test]
    fn the_whole_schedule_is_sent_and_answered_and_intervals_cover_the_run() {
        let r = run(
            &LoadgenConfig {
                set_ratio: 0.3,
                preload: true,
                ..cfg(fake_server(usize::MAX))
            },
            None,
        )
        .unwrap();
        assert_eq!(r.latency.errors, 0, "{r:?}");
        assert_eq!(r.sent, r.answered);
        // Open loop: 2000/s for 1.5 s is 3000 requests, however late the sender runs.
        assert!(r.sent.abs_diff(3000) <= 1, "{r:?}");
        assert_eq!(r.intervals.len(), 3);
        for i in &r.intervals {
            let sent = i.target_qps * i.duration_s;
            assert!((sent - 1000.0).abs() <= 1.0, "{i:?}");
            assert!(i.hist.is_some(), "{i:?}");
        }
    }

    #[test]
    fn a_dropped_connection_counts_failures_and_reconnects() {
        let r = run(&cfg(fake_server(500)), None).unwrap();
        assert!(r.latency.errors > 0, "{r:?}");
        // The first connection answered 500: more means a new one answered too.
        assert!(r.answered > 500, "reconnected and kept going: {r:?}");
        assert_eq!(r.sent, r.answered + r.latency.errors);
    }

    #[test]
    fn stops_early_on_request_and_rejects_bad_settings() {
        let stop = AtomicBool::new(true);
        let r = run(&cfg(fake_server(usize::MAX)), Some(&stop)).unwrap();
        assert!(r.sent <= 2, "{r:?}");
        for bad in [
            LoadgenConfig {
                connections: 0,
                ..cfg("127.0.0.1:1".into())
            },
            LoadgenConfig {
                key_size: 2,
                ..cfg("127.0.0.1:1".into())
            },
            LoadgenConfig {
                set_ratio: 2.0,
                ..cfg("127.0.0.1:1".into())
            },
        ] {
            assert!(matches!(run(&bad, None), Err(LoadgenError::Config(_))));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = run(&cfg(format!("127.0.0.1:{port}")), None).unwrap_err();
        assert!(matches!(err, LoadgenError::Connect { .. }), "{err}");
    }
}
