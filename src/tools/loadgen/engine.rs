//! The generating loop: one thread, blocking epoll, batched sends per tick, answers timed from
//! their intended send time.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::report::{Intervals, LoadgenReport};
use super::schedule::SplitMix64;
use super::{LoadgenConfig, LoadgenError};
use crate::sense::latency::Percentiles;
use crate::sense::memcache::Conn;
use crate::sense::memcache::proto::{self, Reply};
use crate::sys::clock::{monotonic_ns, realtime_ns, thread_cpu_ns, unix_time_s};
use crate::sys::epoll::{Epoll, Interest, Ready};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_NS: u64 = 100_000_000;
const MAX_CONNECTIONS: usize = 1024;
const MAX_KEYS: u64 = 50_000_000;

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

fn check(cfg: &LoadgenConfig) -> Result<(), LoadgenError> {
    let bad = |s: String| Err(LoadgenError::Config(s));
    if cfg.connections == 0 || cfg.connections > MAX_CONNECTIONS {
        return bad(format!(
            "--connections {} must be 1..={MAX_CONNECTIONS}",
            cfg.connections
        ));
    }
    if cfg.keys == 0 || cfg.keys > MAX_KEYS {
        return bad(format!("--keys {} must be 1..={MAX_KEYS}", cfg.keys));
    }
    let digits = cfg.keys.to_string().len();
    if cfg.key_size < digits + 1 || cfg.key_size > proto::MAX_KEY {
        return bad(format!(
            "--key-size {} must be {}..={} for {} keys",
            cfg.key_size,
            digits + 1,
            proto::MAX_KEY,
            cfg.keys
        ));
    }
    if cfg.value_size > 1 << 20 {
        return bad(format!("--value-size {} is above 1 MiB", cfg.value_size));
    }
    if !(0.0..=1.0).contains(&cfg.set_ratio) {
        return bad(format!("--set-ratio {} must be in [0, 1]", cfg.set_ratio));
    }
    if cfg.duration.is_zero() || cfg.interval < Duration::from_millis(10) {
        return bad("duration must be positive and the interval at least 10 ms".into());
    }
    if cfg.tick > Duration::from_millis(100) {
        return bad("tick must be at most 100 ms".into());
    }
    Ok(())
}

fn resolve(server: &str) -> Result<SocketAddr, LoadgenError> {
    let why = |why: String| LoadgenError::Resolve {
        server: server.into(),
        why,
    };
    server
        .to_socket_addrs()
        .map_err(|e| why(e.to_string()))?
        .next()
        .ok_or_else(|| why("no address".into()))
}

/// Keys `k000…0042`, all `key_size` long, in one flat buffer.
fn make_keys(n: u64, size: usize) -> Vec<u8> {
    let mut keys = Vec::with_capacity(n as usize * size);
    for i in 0..n {
        let s = format!("k{:0width$}", i, width = size - 1);
        keys.extend_from_slice(s.as_bytes());
    }
    keys
}

pub(super) fn run(
    cfg: &LoadgenConfig,
    stop: Option<&AtomicBool>,
) -> Result<LoadgenReport, LoadgenError> {
    check(cfg)?;
    let addr = resolve(&cfg.server)?;
    if let Some(cpu) = cfg.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(LoadgenError::Sched {
                what: "pin to the requested CPU",
                source: std::io::Error::other(format!("CPU {cpu} is not available")),
            });
        }
    }
    if let Some(prio) = cfg.realtime {
        crate::sys::sched::set_fifo(prio).map_err(|source| LoadgenError::Sched {
            what: "switch to SCHED_FIFO (needs root or CAP_SYS_NICE)",
            source,
        })?;
    }
    let _ = crate::sys::sched::set_timer_slack_ns(1_000);
    let keys = make_keys(cfg.keys, cfg.key_size);
    let value = vec![b'v'; cfg.value_size];
    if cfg.preload {
        preload(addr, cfg, &keys, &value)?;
    }
    let mut epoll = Epoll::new(cfg.connections.min(256)).map_err(LoadgenError::Epoll)?;
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
    let mut rng = SplitMix64::new(cfg.seed);
    let tick_ns = cfg.tick.as_nanos() as u64;
    let duration_ns = cfg.duration.as_nanos() as u64;
    let started_unix_s = unix_time_s();
    let cpu0 = thread_cpu_ns();
    let start = monotonic_ns();
    let end = start + duration_ns;
    let drain_until = end + cfg.drain.as_nanos() as u64;
    let at = |t_s: f64| start + (t_s * 1e9) as u64;
    let mut iv = Intervals::new(start, cfg.interval.as_nanos() as u64);
    let mut next: Option<f64> = if cfg.schedule.rate_at(0.0) > 0.0 {
        Some(0.0)
    } else {
        cfg.schedule.next_send(0.0)
    };
    let mut last_send_wake = 0u64;
    let mut rr = 0usize;
    let mut answered = 0u64;
    let mut stopped_at: Option<u64> = None;
    let mut ready: Vec<Ready> = Vec::with_capacity(64);
    loop {
        let now = monotonic_ns();
        if stopped_at.is_none() && stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            stopped_at = Some(now);
        }
        let send_end = stopped_at.unwrap_or(end);
        let next_ns = next.map(at).filter(|&t| t < send_end);
        if let Some(t0) = next_ns {
            if t0 <= now && now >= last_send_wake + tick_ns {
                last_send_wake = now;
                let mut t = next;
                while let Some(ts) = t {
                    let tn = at(ts);
                    if tn > now || tn >= send_end {
                        break;
                    }
                    let n = lanes.len();
                    let lane = &mut lanes[rr % n];
                    rr = rr.wrapping_add(1);
                    iv.sent(tn);
                    match lane.conn.as_mut() {
                        Some(c) => {
                            let k = rng.below(cfg.keys) as usize * cfg.key_size;
                            let key = &keys[k..k + cfg.key_size];
                            if cfg.set_ratio > 0.0 && rng.next_f64() < cfg.set_ratio {
                                proto::encode_set(c.out(), key, &value);
                            } else {
                                proto::encode_get(c.out(), key);
                            }
                            lane.waiting.push_back(tn);
                            lane.dirty = true;
                        }
                        None => iv.error(tn),
                    }
                    t = cfg.schedule.next_send(ts);
                }
                next = t;
                for (i, lane) in lanes.iter_mut().enumerate() {
                    if lane.dirty {
                        lane.dirty = false;
                        flush(&mut epoll, i, lane, &mut iv, now);
                    }
                }
            }
        }
        for (i, lane) in lanes.iter_mut().enumerate() {
            if lane.conn.is_none() && now >= lane.retry_at && now < send_end {
                lane.retry_at = now + RECONNECT_NS;
                let _ = open_lane(&epoll, i, &addr, lane);
            }
        }
        // Intervals before the oldest outstanding request (and before the next send) are final.
        let oldest = lanes
            .iter()
            .filter_map(|l| l.waiting.front().copied())
            .min();
        let pending_send = next.map(at).filter(|&t| t < send_end);
        iv.close_before(oldest.unwrap_or(u64::MAX).min(pending_send.unwrap_or(now)));
        let sending_done = pending_send.is_none();
        if sending_done && (oldest.is_none() || now >= drain_until) {
            break;
        }
        let mut wake = drain_until;
        if let Some(t) = pending_send {
            wake = wake.min(t.max(last_send_wake + tick_ns));
        }
        for l in &lanes {
            if l.conn.is_none() {
                if pending_send.is_some() {
                    wake = wake.min(l.retry_at.max(now));
                }
            } else if l.stamped && !l.waiting.is_empty() {
                wake = wake.min(now + LAZY_READ_NS);
            }
        }
        let timeout = Duration::from_nanos(wake.saturating_sub(now));
        ready.clear();
        epoll
            .wait(Some(timeout), |r| ready.push(r))
            .map_err(LoadgenError::Epoll)?;
        let recv_ns = monotonic_ns();
        // Kernel stamps are CLOCK_REALTIME; answers are timed on CLOCK_MONOTONIC.
        let real_minus_mono = realtime_ns().wrapping_sub(recv_ns);
        for r in &ready {
            let i = r.token as usize;
            let Some(lane) = lanes.get_mut(i) else {
                continue;
            };
            if r.writable && lane.writing {
                flush(&mut epoll, i, lane, &mut iv, recv_ns);
            }
            if (r.readable || r.closed) && !lane.stamped {
                answered += read_answers(&mut epoll, lane, &mut iv, recv_ns, None);
            } else if r.closed {
                answered += read_answers(&mut epoll, lane, &mut iv, recv_ns, Some(real_minus_mono));
            }
        }
        for lane in &mut lanes {
            if lane.stamped && !lane.waiting.is_empty() {
                answered += read_answers(&mut epoll, lane, &mut iv, recv_ns, Some(real_minus_mono));
            }
        }
    }
    let finish = monotonic_ns();
    for lane in &mut lanes {
        for t in lane.waiting.drain(..) {
            iv.error(t);
        }
    }
    let cpu_s = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
    let run_end = stopped_at.unwrap_or(end).min(end);
    iv.close_all(run_end);
    let run_s = (run_end - start) as f64 / 1e9;
    let wall_s = (finish - start) as f64 / 1e9;
    let p = Percentiles::of(&iv.cumulative, iv.errors);
    let qps = answered as f64 / run_s;
    let cpu_core = cpu_s / wall_s.max(1e-9);
    Ok(LoadgenReport {
        server: cfg.server.clone(),
        connections: cfg.connections,
        duration_s: run_s,
        started_unix_s,
        target_qps: iv.sent as f64 / run_s,
        qps,
        sent: iv.sent,
        answered,
        errors: iv.errors,
        p50_us: p.p50_us,
        p90_us: p.p90_us,
        p95_us: p.p95_us,
        p99_us: p.p99_us,
        p999_us: p.p999_us,
        max_us: p.max_us,
        intervals: std::mem::take(&mut iv.done),
        cpu_s,
        cpu_core,
        cpu_pct_per_10k_qps: if qps > 0.0 {
            cpu_core * 100.0 / (qps / 10_000.0)
        } else {
            0.0
        },
    })
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

/// Sets every key once, pipelined in batches, before the timed run.
fn preload(
    addr: SocketAddr,
    cfg: &LoadgenConfig,
    keys: &[u8],
    value: &[u8],
) -> Result<(), LoadgenError> {
    const BATCH: u64 = 512;
    let err = |s: String| LoadgenError::Preload(s);
    let mut c = Conn::connect(&addr, CONNECT_TIMEOUT)
        .map_err(|source| LoadgenError::Connect { addr, source })?;
    let mut epoll = Epoll::new(1).map_err(LoadgenError::Epoll)?;
    epoll
        .add(c.fd(), 0, Interest::READ)
        .map_err(LoadgenError::Epoll)?;
    let deadline = monotonic_ns() + 120_000_000_000;
    let mut k = 0u64;
    while k < cfg.keys {
        let n = BATCH.min(cfg.keys - k);
        for i in k..k + n {
            let off = i as usize * cfg.key_size;
            proto::encode_set(c.out(), &keys[off..off + cfg.key_size], value);
        }
        let mut stored = 0;
        while stored < n {
            if monotonic_ns() > deadline {
                return Err(err("memcached did not answer within 120 s".into()));
            }
            c.flush().map_err(|e| err(format!("write: {e}")))?;
            let wait = if c.unsent() > 0 { 1 } else { 100 };
            epoll
                .wait(Some(Duration::from_millis(wait)), |_| {})
                .map_err(LoadgenError::Epoll)?;
            c.fill().map_err(|e| err(format!("read: {e}")))?;
            let mut used = 0;
            while let Some((reply, m)) =
                proto::parse_reply(&c.pending()[used..]).map_err(|e| err(e.to_string()))?
            {
                used += m;
                if reply != Reply::Stored {
                    return Err(err(format!("memcached answered {reply:?} to a set")));
                }
                stored += 1;
            }
            c.consume(used);
        }
        k += n;
    }
    Ok(())
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
    fn answers_are_counted_and_intervals_cover_the_run() {
        let r = run(
            &LoadgenConfig {
                set_ratio: 0.3,
                preload: true,
                ..cfg(fake_server(usize::MAX))
            },
            None,
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(r.sent, r.answered);
        assert!((r.qps - 2000.0).abs() < 100.0, "{r:?}");
        assert_eq!(r.intervals.len(), 3);
        assert!(r.intervals.iter().all(|i| i.hist.is_some()));
    }

    #[test]
    fn a_dropped_connection_counts_failures_and_reconnects() {
        let r = run(&cfg(fake_server(500)), None).unwrap();
        assert!(r.errors > 0, "{r:?}");
        assert!(r.answered > 1000, "reconnected and kept going: {r:?}");
        assert_eq!(r.sent, r.answered + r.errors);
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
