//! Controller behaviour on synthetic input series: no sleeps, time is an input.

use super::*;

pub(super) const SLO: f64 = 800.0;
pub(super) const PERIOD: Duration = Duration::from_millis(10);

/// A controller of cores 0-1 (one to two for the service) with `cfg`.
pub(super) fn controller_with(cfg: ControllerConfig) -> Controller {
    Controller::new(cfg, SLO, "0-1".parse().unwrap(), 1, 2).unwrap()
}

/// All-or-nothing shares (the ladder as it was before partial shares; `tests_share` covers
/// those).
fn controller() -> Controller {
    controller_with(ControllerConfig {
        share_quota: 1.0,
        share_quota_min: 1.0,
        ..ControllerConfig::default()
    })
}

/// Readings of a lightly loaded service.
pub(super) fn calm(now: Duration) -> Inputs {
    Inputs {
        now,
        sampled_at: now,
        p95_recent_us: Some(80.0),
        p95_window_us: Some(80.0),
        service_cpu: Some(0.1),
        service_core_util: Some(0.1),
        qps: Some(5_000.0),
        batch_jobs: Vec::new(),
    }
}

fn hot(now: Duration) -> Inputs {
    Inputs {
        p95_recent_us: Some(700.0),
        p95_window_us: Some(300.0),
        service_cpu: Some(0.8),
        qps: Some(60_000.0),
        ..calm(now)
    }
}

/// Runs `f(now)` for `steps` periods from `start`; returns the rung after each step.
fn run(
    c: &mut Controller,
    start: Duration,
    steps: u32,
    f: impl Fn(Duration) -> Inputs,
) -> Vec<usize> {
    (0..steps)
        .map(|i| c.step(&f(start + PERIOD * i)).alloc.rung)
        .collect()
}

/// Brings a fresh controller (which starts on the top rung) down to the bottom.
fn settled() -> (Controller, Duration) {
    let mut c = controller();
    let rungs = run(&mut c, Duration::ZERO, 1000, calm);
    assert_eq!(
        *rungs.last().unwrap(),
        0,
        "calm load must reach the bottom rung: {rungs:?}"
    );
    (c, PERIOD * 1000)
}

#[test]
fn starts_safe_and_gives_batch_every_core_when_load_is_low() {
    let c = controller();
    assert_eq!(c.allocation().service.to_string(), "0-1");
    assert!(c.allocation().batch.is_empty());
    let (c, _) = settled();
    assert_eq!(c.allocation().batch.to_string(), "0-1");
    assert!(!c.allocation().exclusive);
}

#[test]
fn grows_on_a_spike_within_one_period() {
    let (mut c, t) = settled();
    let d = c.step(&hot(t));
    let change = d.change.expect("must grow on the first hot reading");
    assert_eq!(change.kind, Move::Grow);
    assert_eq!((change.from, change.to), (0, 1));
    assert_eq!(change.triggered_by_sample_at, t);
    assert!(change.reason.contains("p95"), "{}", change.reason);
    assert_eq!(d.alloc.batch.to_string(), "1");
}

#[test]
fn broken_slo_climbs_two_rungs_at_once() {
    let (mut c, t) = settled();
    let mut inp = hot(t);
    inp.p95_recent_us = Some(1_500.0);
    let d = c.step(&inp);
    assert_eq!(d.alloc.rung, 2);
    assert!(d.alloc.batch.is_empty());
}

#[test]
fn cpu_alone_triggers_a_grow() {
    let (mut c, t) = settled();
    let mut inp = calm(t);
    inp.service_cpu = Some(0.9);
    let change = c.step(&inp).change.unwrap();
    assert!(change.reason.contains("busy"), "{}", change.reason);
}

#[test]
fn climbs_are_spaced_by_the_cooldown() {
    let (mut c, t) = settled();
    let rungs = run(&mut c, t, 10, hot);
    // One rung now; the next only after grow_cooldown (60 ms = 6 periods).
    assert_eq!(rungs[..6], [1, 1, 1, 1, 1, 1]);
    assert_eq!(rungs[6], 2);
}

#[test]
fn never_shrinks_while_slack_is_low() {
    let (mut c, t) = settled();
    run(&mut c, t, 20, hot);
    assert_eq!(c.allocation().rung, 2);
    // Latency stays at 60 % of the SLO (no grow, but no slack to give away) for a long time.
    let warm = |now| Inputs {
        p95_recent_us: Some(350.0),
        p95_window_us: Some(350.0),
        ..calm(now)
    };
    let rungs = run(&mut c, t + PERIOD * 20, 2_000, warm);
    assert!(rungs.iter().all(|&r| r == 2), "stepped down with low slack");
}

#[test]
fn hysteresis_holds_down_and_remembers_the_load() {
    let (mut c, t) = settled();
    let rungs = run(&mut c, t, 1, hot);
    assert_eq!(rungs, [1]);
    // Calm readings but QPS still near the load that needed this rung: stay.
    let busy_qps = |now| Inputs {
        qps: Some(55_000.0),
        ..calm(now)
    };
    let rungs = run(&mut c, t + PERIOD, 500, busy_qps);
    assert!(rungs.iter().all(|&r| r == 1), "{rungs:?}");
    // QPS falls: still not before the hold-down (2 s) has passed since the climb.
    let start = t + PERIOD * 501;
    let rungs = run(&mut c, start, 300, calm);
    let first_down = rungs
        .iter()
        .position(|&r| r == 0)
        .expect("must step down eventually");
    assert!(start + PERIOD * first_down as u32 >= t + Duration::from_millis(2_000));
}

#[test]
fn a_shrink_that_hurts_latency_is_undone_and_backs_off() {
    let (mut c, t) = settled();
    run(&mut c, t, 1, hot); // rung 1
    let t1 = t + Duration::from_secs(3);
    let d = c.step(&calm(t1));
    assert_eq!(d.change.unwrap().kind, Move::Shrink);
    let mut bad = calm(t1 + PERIOD * 5);
    bad.p95_recent_us = Some(600.0);
    let d = c.step(&bad);
    let change = d.change.unwrap();
    assert_eq!((change.kind, change.to), (Move::Undo, 1));
    // Back on rung 1 the hold-down doubled: calm for 3 s is not enough any more, 4 s is.
    let t2 = bad.now;
    let rungs = run(&mut c, t2 + PERIOD, 300, calm);
    assert!(
        rungs.iter().all(|&r| r == 1),
        "stepped down before the doubled hold-down"
    );
    let rungs = run(&mut c, t2 + Duration::from_millis(4_100), 5, calm);
    assert_eq!(rungs[0], 0);
}

#[test]
fn batch_gets_every_core_back_when_load_falls() {
    let (mut c, t) = settled();
    run(&mut c, t, 20, hot);
    assert!(c.allocation().batch.is_empty());
    let rungs = run(&mut c, t + PERIOD * 20, 1_000, calm);
    assert_eq!(*rungs.last().unwrap(), 0);
    assert_eq!(c.allocation().batch.to_string(), "0-1");
    // Stepping down is one rung at a time.
    assert!(rungs.windows(2).all(|w| w[0] <= w[1] + 1));
}

#[test]
fn no_readings_means_no_step_down() {
    let mut c = controller();
    let blind = |now| Inputs {
        now,
        sampled_at: now,
        ..Inputs::default()
    };
    let rungs = run(&mut c, Duration::ZERO, 1_000, blind);
    assert!(rungs.iter().all(|&r| r == 2));
}

#[test]
fn busy_shared_cores_are_not_mistaken_for_service_load() {
    let (mut c, t) = settled();
    // /proc/stat says the shared core is 100 % busy (batch), but the service itself is idle.
    let inp = Inputs {
        service_cpu: None,
        service_core_util: Some(1.0),
        ..calm(t)
    };
    assert!(c.step(&inp).change.is_none());
}

#[test]
fn the_load_that_needed_a_rung_is_its_peak_while_settling() {
    // memcached's QPS is polled once a second: at the moment of a climb it still shows the
    // old load. The peak seen during the hold-down is what the step down is measured against.
    let (mut c, t) = settled();
    let mut lagging = hot(t);
    lagging.qps = Some(5_000.0);
    assert_eq!(c.step(&lagging).alloc.rung, 1);
    let busy = |now| Inputs {
        qps: Some(60_000.0),
        p95_recent_us: Some(300.0),
        ..calm(now)
    };
    run(&mut c, t + PERIOD, 100, busy);
    // Calm again but at 55 k QPS (above 0.8 x 60 k): stay, long after the hold-down.
    let still = |now| Inputs {
        qps: Some(55_000.0),
        ..calm(now)
    };
    let rungs = run(&mut c, t + PERIOD * 101, 500, still);
    assert!(rungs.iter().all(|&r| r == 1), "{rungs:?}");
    // At 5 k QPS (what the lagging reading said at the climb) it steps down.
    let rungs = run(&mut c, t + PERIOD * 601, 10, calm);
    assert_eq!(rungs[0], 0);
}

#[test]
fn grow_triggers_are_the_readings_just_above_which_a_rung_climbs() {
    let (c, now) = settled();
    let (cores, p95_us) = c.grow_triggers().expect("the bottom rung can climb");
    let cooled = now + Duration::from_secs(60);
    let at = |cpu: f64, p95: f64| {
        let mut c = c.clone();
        let inp = Inputs {
            service_cpu: Some(cpu),
            p95_recent_us: Some(p95),
            ..calm(cooled)
        };
        c.step(&inp).alloc.rung
    };
    assert_eq!(at(cores, 80.0), 0, "at the CPU trigger");
    assert_eq!(at(cores + 0.01, 80.0), 1, "above the CPU trigger");
    assert_eq!(at(0.1, p95_us), 0, "at the latency trigger");
    assert_eq!(at(0.1, p95_us + 1.0), 1, "above the latency trigger");
    let mut top = controller();
    assert!(top.step(&hot(Duration::ZERO)).alloc.rung + 1 == top.rungs().len());
    assert_eq!(
        top.grow_triggers(),
        None,
        "nothing climbs from the top rung"
    );
}
