//! /proc/stat parser tests on fixtures: variants, offline and hot-plugged CPUs, anomalies.

use super::*;

const HOST: &[u8] = include_bytes!("../../../tests/fixtures/procstat/host_2cpu.txt");
const OFFLINE: &[u8] = include_bytes!("../../../tests/fixtures/procstat/offline_cpu1.txt");
const HOTPLUG: &[u8] = include_bytes!("../../../tests/fixtures/procstat/hotplug_cpu1_back.txt");
const OLD: &[u8] = include_bytes!("../../../tests/fixtures/procstat/old_kernel_4_and_7_fields.txt");
const GARBAGE: &[u8] = include_bytes!("../../../tests/fixtures/procstat/garbage_counter.txt");
const FEW: &[u8] = include_bytes!("../../../tests/fixtures/procstat/too_few_fields.txt");

#[test]
fn finds_each_cpu_line_of_a_real_file() {
    let all = parse_all(HOST).unwrap();
    assert_eq!(all.cpus.len(), 2);
    for (cpu, times) in &all.cpus {
        let found = CpuLineFinder::new(*cpu).find(HOST, false).unwrap().unwrap();
        assert_eq!(&found, times);
        assert!(found.total() > 0);
    }
    let sum: u64 = all.cpus.iter().map(|(_, t)| t.user).sum();
    assert!(
        sum.abs_diff(all.total.user) <= 2,
        "aggregate is the sum of the CPUs"
    );
}

#[test]
fn cpu1_does_not_match_cpu10_or_cpu1x() {
    let mut text = String::from("cpu  1 1 1 1\n");
    for cpu in [10, 11, 1, 12] {
        text.push_str(&format!("cpu{cpu} {cpu} 0 0 100 0 0 0 0 0 0\n"));
    }
    let t = CpuLineFinder::new(1)
        .find(text.as_bytes(), false)
        .unwrap()
        .unwrap();
    assert_eq!(t.user, 1);
    let t = CpuLineFinder::new(12)
        .find(text.as_bytes(), false)
        .unwrap()
        .unwrap();
    assert_eq!(t.user, 12);
}

#[test]
fn an_offline_cpu_is_absent_not_an_error() {
    assert_eq!(CpuLineFinder::new(1).find(OFFLINE, false).unwrap(), None);
    let all = parse_all(OFFLINE).unwrap();
    let ids: Vec<usize> = all.cpus.iter().map(|(c, _)| *c).collect();
    assert_eq!(ids, vec![0, 2, 3]);
    // A CPU beyond the machine is just as absent.
    assert_eq!(CpuLineFinder::new(64).find(OFFLINE, false).unwrap(), None);
}

#[test]
fn a_full_buffer_without_the_line_asks_for_more() {
    let cut = &HOST[..20];
    let err = CpuLineFinder::new(1).find(cut, true).unwrap_err();
    assert!(matches!(err, ProcStatError::Truncated { .. }), "{err}");
    // The line starts but its end was cut off.
    let line_start = memmem::find(HOST, b"\ncpu1 ").unwrap();
    let cut = &HOST[..line_start + 10];
    assert!(matches!(
        CpuLineFinder::new(1).find(cut, true),
        Err(ProcStatError::Truncated { .. })
    ));
}

#[test]
fn old_kernels_with_fewer_fields_parse_with_zeros() {
    let t0 = CpuLineFinder::new(0).find(OLD, false).unwrap().unwrap();
    assert_eq!((t0.user, t0.idle, t0.iowait, t0.steal), (1000, 15000, 0, 0));
    let t1 = CpuLineFinder::new(1).find(OLD, false).unwrap().unwrap();
    assert_eq!((t1.iowait, t1.softirq), (12, 3));
}

#[test]
fn garbage_is_a_clear_error() {
    let err = CpuLineFinder::new(0).find(GARBAGE, false).unwrap_err();
    assert!(err.to_string().contains("not a number"), "{err}");
    let err = CpuLineFinder::new(0).find(FEW, false).unwrap_err();
    assert!(err.to_string().contains("fewer than 4"), "{err}");
    let huge = b"cpu  1 1 1 1\ncpu0 99999999999999999999999 0 0 0\n";
    assert!(CpuLineFinder::new(0).find(huge, false).is_err());
}

fn times(user: u64, system: u64, idle: u64, iowait: u64) -> CpuTimes {
    CpuTimes {
        user,
        system,
        idle,
        iowait,
        ..CpuTimes::default()
    }
}

#[test]
fn delta_of_a_normal_period() {
    // 100 ms at USER_HZ 100 = 10 ticks: 6 busy, 4 idle.
    let d = delta(
        &times(100, 50, 1000, 5),
        &times(104, 52, 1003, 6),
        max_ticks(100_000_000, 100),
    );
    assert_eq!(
        d,
        CpuDelta {
            busy: 6,
            total: 10,
            anomalies: 0
        }
    );
    assert_eq!(d.utilization(), Some(0.6));
}

#[test]
fn no_tick_elapsed_gives_no_utilization() {
    let t = times(1, 1, 1, 1);
    assert_eq!(delta(&t, &t, 10).utilization(), None);
}

#[test]
fn iowait_going_backwards_counts_as_zero_not_as_a_huge_jump() {
    let d = delta(
        &times(100, 0, 1000, 50),
        &times(105, 0, 1005, 49),
        max_ticks(100_000_000, 100),
    );
    assert_eq!(d.anomalies, 1);
    assert_eq!(d.busy, 5);
    assert_eq!(d.total, 10);
}

#[test]
fn a_counter_that_wraps_keeps_its_small_change() {
    let prev = times(u64::MAX - 2, 0, 1000, 0);
    let cur = times(3, 0, 1004, 0);
    let d = delta(&prev, &cur, max_ticks(100_000_000, 100));
    assert_eq!(
        d,
        CpuDelta {
            busy: 6,
            total: 10,
            anomalies: 0
        }
    );
}

#[test]
fn a_hot_plugged_cpu_restarting_from_zero_is_a_reset() {
    let before = CpuLineFinder::new(0).find(HOST, false).unwrap().unwrap();
    let after = CpuLineFinder::new(1).find(HOTPLUG, false).unwrap().unwrap();
    let d = delta(&before, &after, max_ticks(50_000_000, 100));
    assert!(d.anomalies >= 3, "{d:?}");
    assert_eq!(d.utilization(), None, "a reset period yields no sample");
    // The period after the reset is normal again.
    let mut later = after;
    later.user += 2;
    later.idle += 3;
    assert_eq!(delta(&after, &later, 10).utilization(), Some(0.4));
}

#[test]
fn implausible_forward_jumps_are_rejected() {
    let d = delta(
        &times(0, 0, 0, 0),
        &times(1_000_000, 0, 5, 0),
        max_ticks(100_000_000, 100),
    );
    assert_eq!(d.anomalies, 1);
    assert_eq!(d.busy, 0);
}

proptest::proptest! {
    #[test]
    fn parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let _ = parse_all(&bytes);
        let _ = CpuLineFinder::new(0).find(&bytes, true);
    }

    #[test]
    fn roundtrips_any_counters(v in proptest::array::uniform10(0u64..u64::MAX)) {
        let line = format!("cpu  0 0 0 0\ncpu7 {} {} {} {} {} {} {} {} {} {}\n",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]);
        let t = CpuLineFinder::new(7).find(line.as_bytes(), false).unwrap().unwrap();
        proptest::prop_assert_eq!((t.user, t.guest_nice), (v[0], v[9]));
    }
}
