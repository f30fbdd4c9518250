//! Probe tests against a fake memcached: timing, garbage, stalls, outages.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicU8;
use std::time::Instant;

/// What the fake memcached does with each `get`.
const ANSWER: u8 = 0;
const GARBAGE: u8 = 1;
const SILENT: u8 = 2;

/// A fake memcached on a free port: answers gets per `mode`, and `stats` with a counter.
fn fake_server(mode: Arc<AtomicU8>) -> String {
    counting_server(mode, Arc::default())
}

/// [`fake_server`] that also counts the gets it reads in `gets`.
fn counting_server(mode: Arc<AtomicU8>, gets_seen: Arc<std::sync::atomic::AtomicU64>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(stream) = stream else { return };
            let mode = mode.clone();
            let gets_seen = gets_seen.clone();
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                let mut gets = 0u64;
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let reply: &[u8] = if line.starts_with("stats") {
                        gets += 1000;
                        let s = format!(
                            "STAT pid 1\r\nSTAT cmd_get {gets}\r\nSTAT cmd_set 0\r\nEND\r\n"
                        );
                        if w.write_all(s.as_bytes()).is_err() {
                            return;
                        }
                        continue;
                    } else {
                        gets_seen.fetch_add(1, Ordering::Relaxed);
                        match mode.load(Ordering::Relaxed) {
                            ANSWER => b"END\r\n",
                            GARBAGE => b"HELLO?\r\n",
                            _ => b"",
                        }
                    };
                    if w.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn wait_for(what: &str, probe: &ProbeHandle, f: impl Fn(&ProbeSignal) -> bool) -> ProbeSignal {
    let t0 = Instant::now();
    loop {
        let s = probe.signal();
        if f(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cfg(server: String) -> ProbeConfig {
    ProbeConfig {
        server,
        window: Duration::from_millis(200),
        stats_interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
        backoff_max: Duration::from_millis(200),
        ..ProbeConfig::default()
    }
}

#[test]
fn times_gets_and_survives_garbage_stalls_and_outages() {
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let probe = Probe::start(cfg(fake_server(mode.clone()))).unwrap();
    let s = wait_for("answers", &probe, |s| {
        s.status == ProbeStatus::Up && s.fast.samples > 10
    });
    assert!(
        s.fast.p95_us > 0 && s.fast.p95_us != crate::sense::latency::NO_ANSWER_US,
        "{s:?}"
    );
    wait_for("qps from stats", &probe, |s| s.qps.is_some_and(|q| q > 0.0));
    wait_for("windows", &probe, |s| s.windows_total >= 2);

    mode.store(GARBAGE, Ordering::Relaxed);
    wait_for("garbage seen", &probe, |s| s.status == ProbeStatus::Garbage);
    assert!(probe.report().last_error.is_some() || probe.signal().status != ProbeStatus::Up);
    mode.store(ANSWER, Ordering::Relaxed);
    wait_for("recovered from garbage", &probe, |s| {
        s.status == ProbeStatus::Up
    });

    wait_for("failures aged out", &probe, |s| {
        s.fast.errors == 0 && s.fast.samples > 10
    });

    mode.store(SILENT, Ordering::Relaxed);
    // The fast signal shows the stall before the timeout declares it: waiting probes count.
    let s = wait_for("stall seen without failures", &probe, |s| {
        s.fast.p95_us >= 50_000 && s.fast.errors == 0
    });
    assert!(s.oldest_waiting_us >= 50_000, "{s:?}");
    wait_for("stalled", &probe, |s| s.status == ProbeStatus::Stalled);
    mode.store(ANSWER, Ordering::Relaxed);
    wait_for("recovered from the stall", &probe, |s| {
        s.status == ProbeStatus::Up
    });
    wait_for("an over-SLO window from the failures", &probe, |s| {
        s.windows_over >= 1
    });
    let r = probe.report();
    assert!(r.cumulative.errors > 0, "{:?}", r.cumulative);
    assert!(r.windows.iter().any(|w| w.over_slo));
    probe.stop();
}

#[test]
fn a_server_that_is_not_there_is_down_with_backoff() {
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probe = Probe::start(cfg(format!("127.0.0.1:{port}"))).unwrap();
    let s = wait_for("down", &probe, |s| {
        s.status == ProbeStatus::Down && s.fast.errors > 0
    });
    assert_eq!(s.fast.p95_us, crate::sense::latency::NO_ANSWER_US);
    wait_for("a failed window", &probe, |s| {
        s.windows_over >= 1 && s.slack_us == i64::MIN
    });
    assert!(probe.report().last_error.unwrap().contains("connect"));
}

#[test]
fn rejects_bad_settings() {
    let mut c = ProbeConfig {
        rate: 0,
        ..ProbeConfig::default()
    };
    assert!(matches!(
        Probe::start(c.clone()),
        Err(ProbeError::Config(_))
    ));
    c.rate = 10;
    c.key = "has space".into();
    assert!(matches!(
        Probe::start(c.clone()),
        Err(ProbeError::Config(_))
    ));
    c.key = "k".into();
    c.slo.quantile = 1.5;
    assert!(matches!(Probe::start(c), Err(ProbeError::Config(_))));
}

#[test]
fn signal_packs_round_trip() {
    let s = ProbeSignal {
        at_ns: 1,
        status: ProbeStatus::Stalled,
        fast: crate::sense::latency::FastLatency {
            samples: 50,
            errors: 2,
            p50_us: 60,
            p95_us: 900,
            max_us: 4000,
        },
        oldest_waiting_us: 7,
        window_index: 8,
        window_count: 9,
        window_errors: 10,
        p50_us: 11,
        p95_us: 12,
        p99_us: 13,
        max_us: 14,
        slack_us: -15,
        last_p95_us: 16,
        last_over: true,
        windows_over: 17,
        windows_total: 18,
        qps: Some(19.5),
    };
    assert_eq!(ProbeSignal::unpack(s.pack()), s);
}

#[test]
fn speeding_up_brings_the_next_send_forward_but_never_into_the_past() {
    use super::run::repace;
    const MS: u64 = 1_000_000;
    // Last send at 100 ms on a 40 ms pace: next at 140 ms.
    assert_eq!(repace(140 * MS, 40 * MS, 10 * MS, 101 * MS), 110 * MS);
    assert_eq!(
        repace(140 * MS, 40 * MS, 10 * MS, 125 * MS),
        125 * MS,
        "not before now"
    );
    assert_eq!(
        repace(140 * MS, 10 * MS, 40 * MS, 135 * MS),
        140 * MS,
        "slowing keeps it"
    );
    assert_eq!(repace(140 * MS, 10 * MS, 10 * MS, 135 * MS), 140 * MS);
}

#[test]
fn calm_needs_a_threshold_an_answering_server_and_every_probe_under_it() {
    use super::run::is_calm;
    let cfg = ProbeConfig {
        calm_below_us: 400,
        calm_rate: 10,
        ..ProbeConfig::default()
    };
    let fast = |p95_us, errors| FastLatency {
        samples: 20,
        errors,
        p50_us: 100,
        p95_us,
        max_us: p95_us,
    };
    assert!(is_calm(&cfg, ProbeStatus::Up, &fast(399, 0)));
    assert!(!is_calm(&cfg, ProbeStatus::Up, &fast(400, 0)));
    assert!(!is_calm(&cfg, ProbeStatus::Up, &fast(100, 1)), "a failure");
    assert!(!is_calm(&cfg, ProbeStatus::Stalled, &fast(100, 0)));
    assert!(
        !is_calm(&cfg, ProbeStatus::Up, &FastLatency::default()),
        "no samples yet"
    );
    let never = ProbeConfig {
        calm_below_us: 0,
        ..cfg
    };
    assert!(!is_calm(&never, ProbeStatus::Up, &fast(1, 0)));
}

#[test]
fn a_calm_server_is_probed_at_the_calm_rate() {
    // Two probes of the same server over the same second, one allowed to calm down: whatever
    // the machine's load does to both, the calm one sends a small fraction of the other's gets
    // (20/s against 500/s).
    let probe_counting = |calm_below_us| {
        let gets = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let probe = Probe::start(ProbeConfig {
            rate: 500,
            calm_rate: 20,
            // Far above any loopback answer when on, so only the pacing is under test.
            calm_below_us,
            ..cfg(counting_server(
                Arc::new(AtomicU8::new(ANSWER)),
                gets.clone(),
            ))
        })
        .unwrap();
        (probe, gets)
    };
    let (calm, calm_gets) = probe_counting(50_000);
    let (busy, busy_gets) = probe_counting(0);
    wait_for("answers", &calm, |s| s.status == ProbeStatus::Up);
    wait_for("answers", &busy, |s| s.status == ProbeStatus::Up);
    let (c0, b0) = (
        calm_gets.load(Ordering::Relaxed),
        busy_gets.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_secs(1));
    let c = calm_gets.load(Ordering::Relaxed) - c0;
    let b = busy_gets.load(Ordering::Relaxed) - b0;
    assert!(
        c * 5 < b,
        "calm probe sent {c} gets while the full-rate one sent {b}"
    );
    calm.stop();
    busy.stop();
}

#[test]
fn a_stall_rings_the_alarm_and_fast_answers_do_not() {
    // A 2 s level: loopback answers stay far below it even on a loaded machine, and silence
    // crosses it long before the 10 s timeout declares the probes failed.
    let (bell, rx) = crate::sense::doorbell::Doorbell::new();
    let wire = Tripwire::new(bell, 2_000_000, Duration::ZERO);
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let slow_timeout = ProbeConfig {
        timeout: Duration::from_secs(10),
        ..cfg(fake_server(mode.clone()))
    };
    let probe = Probe::start_with_alarm(slow_timeout, Some(wire)).unwrap();
    wait_for("answers", &probe, |s| {
        s.status == ProbeStatus::Up && s.fast.samples > 10
    });
    wait_for("more answers", &probe, |s| s.fast.samples > 50);
    assert!(
        rx.try_recv().is_err(),
        "rang with p95 {} us under a 2 s level",
        probe.signal().fast.p95_us
    );
    mode.store(SILENT, Ordering::Relaxed);
    // Unanswered probes count at their age: the alarm rings before the timeout fails them.
    assert!(rx.recv_timeout(Duration::from_secs(8)).is_ok(), "no ring");
    assert_eq!(probe.signal().fast.errors, 0, "the timeout came first");
    probe.stop();
}
