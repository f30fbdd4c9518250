//! Simulator behaviour: determinism, the known cases, and replay of a recording.

use std::time::Duration;

use super::*;
use crate::decide::controller::record::{Header, Turn};
use crate::decide::controller::{Controller, Inputs};
use crate::store::eventlog::EventLog;

/// A small node with a constant load and four 60 core-second jobs.
fn small(qps: f64) -> SimConfig {
    let mut cfg = SimConfig {
        cores: 4,
        trace: TraceConfig::Constant {
            qps,
            duration_s: 60.0,
        },
        batch: Some(BatchConfig {
            count: 4,
            work_core_s: 60.0,
            cores: "1:4".parse().unwrap(),
        }),
        max_s: 600.0,
        ..SimConfig::default()
    };
    cfg.expand();
    cfg
}

#[test]
fn a_seed_gives_the_same_run_every_time() {
    let cfg = small(20_000.0);
    let a = run(&cfg).unwrap();
    let b = run(&cfg).unwrap();
    assert_eq!(a.outcomes, b.outcomes);
    let other = run(&SimConfig { seed: 2, ..cfg }).unwrap();
    assert_ne!(a.outcomes, other.outcomes, "the seed must matter");
}

#[test]
fn at_constant_low_load_every_mode_holds_the_slo_and_lowsched_lends_the_idle_cores() {
    let mut cfg = small(2_000.0);
    // A host where batch beside the service costs little (bare metal, SCHED_IDLE batch).
    cfg.latency.share_delay_us = 100.0;
    let r = run(&cfg).unwrap();
    for o in &r.outcomes {
        assert_eq!(o.windows_over, 0, "{o:?}");
        assert!(o.makespan_s.is_some(), "{o:?}");
    }
    let ls = r.lowsched().unwrap();
    let best = r.best_static().unwrap();
    assert_eq!(best.mode, Mode::Static(1));
    // The service needs 2 % of a core: lowsched gives batch most of it back.
    assert!(
        ls.batch_core_s > best.batch_core_s + 0.5 * 60.0,
        "{ls:?} vs {best:?}"
    );
    assert!(ls.makespan_s < best.makespan_s, "{ls:?} vs {best:?}");
}

#[test]
fn load_above_the_nodes_capacity_breaks_the_slo_in_every_mode() {
    // 4 cores of 100 k QPS each.
    let r = run(&small(450_000.0)).unwrap();
    for o in &r.outcomes {
        assert!(o.windows_over > 0, "{o:?}");
    }
    assert!(r.best_static().is_none());
}

#[test]
fn a_peak_static_partitions_cannot_both_hold_and_finish_is_where_lowsched_wins() {
    let mut cfg = SimConfig {
        cores: 8,
        trace: TraceConfig::Diurnal {
            trough_qps: 20_000.0,
            peak_qps: 450_000.0,
            day_s: 150.0,
            days: 1.0,
        },
        // 20 ms steps keep this debug-build test short (the controller then runs every 40 ms).
        step_ms: 20,
        batch: Some(BatchConfig {
            count: 8,
            work_core_s: 90.0,
            cores: "1:2".parse().unwrap(),
        }),
        ..SimConfig::default()
    };
    cfg.expand();
    let r = run(&cfg).unwrap();
    let ls = r.lowsched().unwrap();
    let best = r
        .best_static()
        .expect("a partition big enough for the peak holds");
    assert_eq!(ls.windows_over, 0, "{}", r.table());
    assert!(ls.makespan_s < best.makespan_s, "{}", r.table());
}

/// Writes a recording the way the daemon does (header, then one line per turn through
/// `EventLog::record_json`) for a controller fed `inputs`.
fn record(dir: &std::path::Path, inputs: &[Inputs]) -> std::path::PathBuf {
    let cfg = ControllerConfig {
        record_turns: true,
        ..ControllerConfig::default()
    };
    let cores = "0-3".parse().unwrap();
    let log = EventLog::open(dir).unwrap();
    let h = Header::new(&cfg, 800.0, cores, 1, 3);
    log.record_json(&serde_json::to_value(h).unwrap());
    let mut c = Controller::new(cfg, 800.0, cores, 1, 3).unwrap();
    for inp in inputs {
        let d = c.step(inp);
        log.record_json(&serde_json::to_value(Turn::new(inp, &d)).unwrap());
    }
    log.close();
    dir.join(crate::store::eventlog::EVENTS_JSONL)
}

/// A day-like series: calm, a burst, calm again, with readings that are not round numbers.
fn series() -> Vec<Inputs> {
    (0..3_000u64)
        .map(|i| {
            let now = Duration::from_nanos(1_000_000_007 * 1_000 + i * 50_000_123);
            let burst = (1_000..1_200).contains(&i);
            let wobble = (i as f64 * 0.37).sin();
            Inputs {
                now,
                sampled_at: now - Duration::from_nanos(333_331),
                p95_recent_us: Some(if burst { 650.0 } else { 90.0 } + 13.7 * wobble),
                p95_window_us: Some(if burst { 420.0 } else { 95.0 } + 7.1 * wobble),
                service_cpu: Some(if burst { 0.85 } else { 0.1 } + 0.013 * wobble),
                service_core_util: Some(0.2 + 0.01 * wobble),
                qps: Some(if burst { 40_000.0 } else { 5_000.0 } * (1.0 + 0.01 * wobble)),
                batch_jobs: vec!["canneal".into(), "dedup".into()],
            }
        })
        .collect()
}

#[test]
fn replay_with_the_recorded_thresholds_reproduces_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = record(dir.path(), &series());
    let runs = replay::read(&path).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].turns.len(), 3_000);
    let out = replay::replay(&runs[0], None).unwrap();
    assert!(out.differences.is_empty(), "{:?}", &out.differences[..1]);
    let kinds: Vec<&str> = out
        .decisions
        .iter()
        .filter_map(|(_, d)| d.split(' ').next())
        .collect();
    for k in ["shrink", "grow", "widen"] {
        assert!(kinds.contains(&k), "expected a {k} among {kinds:?}");
    }
}

#[test]
fn replay_with_new_thresholds_shows_the_decisions_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let path = record(dir.path(), &series());
    let runs = replay::read(&path).unwrap();
    // A grow threshold above the burst's p95 and CPU: the burst no longer climbs by latency.
    let over: toml::Table = toml::from_str("grow_p95_frac = 0.9\ngrow_util = 0.9").unwrap();
    let cfg = replay::with_overrides(&runs[0].header.config, &over).unwrap();
    assert_eq!(cfg.grow_p95_frac, 0.9);
    assert_eq!(cfg.hold_down_ms, runs[0].header.config.hold_down_ms);
    let out = replay::replay(&runs[0], Some(&cfg)).unwrap();
    assert!(!out.differences.is_empty());
    let bad: toml::Table = toml::from_str("grow_p95 = 1").unwrap();
    let err = replay::with_overrides(&cfg, &bad).unwrap_err();
    assert!(err.to_string().contains("grow_p95"), "{err}");
}

/// A daemon's own recording (`controller.record_turns`, 25 s of memcached under the loadgen on
/// the shared 2-vCPU VM, two batch jobs), replayed.
#[test]
fn a_daemons_recording_replays_as_recorded_and_shows_what_new_thresholds_would_do() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/controller-turns.jsonl");
    let runs = replay::read(&path).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].turns.len(), 512);
    let out = replay::replay(&runs[0], None).unwrap();
    assert!(out.differences.is_empty(), "{:?}", out.differences.first());
    // The host was noisy (recent p95 2.7-7 ms most of the run): with a shrink threshold of
    // 0.45 x SLO the controller would have tried one share near the end, and undone it.
    let new: toml::Table = toml::from_str("shrink_p95_frac = 0.45\ngrow_p95_frac = 0.9").unwrap();
    let cfg = replay::with_overrides(&runs[0].header.config, &new).unwrap();
    let out = replay::replay(&runs[0], Some(&cfg)).unwrap();
    let kinds: Vec<&str> = out
        .decisions
        .iter()
        .filter_map(|(_, d)| d.split(' ').next())
        .collect();
    assert_eq!(kinds, ["shrink", "undo"]);
}
