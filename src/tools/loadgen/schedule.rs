//! The load generator's target rate over time: fixed, a reproducible random walk, or a trace
//! file of `seconds qps` lines; plus the small seeded PRNG it uses.

use super::LoadgenError;

/// SplitMix64: a tiny, seedable, statistically decent generator. Reproducibility matters here
/// (same `--seed`, same schedule), cryptographic quality does not.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }
}

/// Highest rate accepted (memcached on one thread saturates near 100 k QPS here).
pub const MAX_QPS: f64 = 10_000_000.0;

/// Target QPS as a step function of time since the start.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// `(from_s, qps)`, sorted by time; the rate before the first step is 0.
    steps: Vec<(f64, f64)>,
}

impl Schedule {
    pub fn fixed(qps: f64) -> Result<Self, LoadgenError> {
        check_qps(qps, "--qps")?;
        Ok(Self {
            steps: vec![(0.0, qps)],
        })
    }

    /// A random walk between `min` and `max`, changing every `interval_s`, from `seed`.
    ///
    /// Each step moves by a uniform amount of at most half the range and reflects off the bounds,
    /// so the walk wanders over the whole range within a few steps yet stays correlated.
    pub fn random_walk(
        min: f64,
        max: f64,
        interval_s: f64,
        seed: u64,
        duration_s: f64,
    ) -> Result<Self, LoadgenError> {
        check_qps(min, "--qps-min")?;
        check_qps(max, "--qps-max")?;
        if min > max {
            return Err(LoadgenError::Config(format!(
                "--qps-min {min} is above --qps-max {max}"
            )));
        }
        if !(interval_s.is_finite() && interval_s >= 0.01) {
            return Err(LoadgenError::Config(format!(
                "--qps-interval {interval_s} must be at least 0.01 s"
            )));
        }
        let mut rng = SplitMix64::new(seed);
        let span = max - min;
        let mut rate = min + rng.next_f64() * span;
        let n = (duration_s / interval_s).ceil().max(1.0) as usize;
        let mut steps = Vec::with_capacity(n);
        for k in 0..n {
            steps.push((k as f64 * interval_s, rate));
            rate += (rng.next_f64() * 2.0 - 1.0) * span / 2.0;
            if rate < min {
                rate = 2.0 * min - rate;
            }
            if rate > max {
                rate = 2.0 * max - rate;
            }
            rate = rate.clamp(min, max);
        }
        Ok(Self { steps })
    }

    /// A trace: one `seconds qps` pair per line (blank lines and `#` comments allowed), times
    /// strictly increasing; each rate holds until the next line's time.
    pub fn parse_trace(text: &str, origin: &str) -> Result<Self, LoadgenError> {
        let mut steps: Vec<(f64, f64)> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| {
                LoadgenError::Config(format!(
                    "{origin} line {}: {what}: {}",
                    n + 1,
                    crate::model::text::quoted(raw)
                ))
            };
            let mut it = line.split_whitespace();
            let (Some(t), Some(q), None) = (it.next(), it.next(), it.next()) else {
                return Err(bad("expected `seconds qps`"));
            };
            let t: f64 = t.parse().map_err(|_| bad("seconds is not a number"))?;
            let q: f64 = q.parse().map_err(|_| bad("qps is not a number"))?;
            if !(t.is_finite() && t >= 0.0) {
                return Err(bad("seconds must be >= 0"));
            }
            if !(q.is_finite() && (0.0..=MAX_QPS).contains(&q)) {
                return Err(bad("qps out of range"));
            }
            if steps.last().is_some_and(|&(t0, _)| t <= t0) {
                return Err(bad("times must increase"));
            }
            steps.push((t, q));
        }
        if steps.is_empty() {
            return Err(LoadgenError::Config(format!(
                "{origin} has no `seconds qps` line"
            )));
        }
        Ok(Self { steps })
    }

    fn index_at(&self, t_s: f64) -> Option<usize> {
        match self.steps.partition_point(|&(t0, _)| t0 <= t_s) {
            0 => None,
            i => Some(i - 1),
        }
    }

    /// The target rate at `t_s` seconds after the start.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        self.index_at(t_s).map_or(0.0, |i| self.steps[i].1)
    }

    /// When the rate changes next after `t_s`, if ever.
    pub fn next_change(&self, t_s: f64) -> Option<f64> {
        let i = self.index_at(t_s).map_or(0, |i| i + 1);
        self.steps.get(i).map(|&(t, _)| t)
    }

    /// The send time after one at `t_s`: one inter-arrival gap at the current rate later,
    /// except that a step up to a faster rate starts at its step, and no send falls where the
    /// target is 0. `None` when the schedule ends at rate 0.
    pub fn next_send(&self, t_s: f64) -> Option<f64> {
        let r = self.rate_at(t_s);
        let mut cand = if r > 0.0 {
            t_s + 1.0 / r
        } else {
            f64::INFINITY
        };
        let mut t = t_s;
        while let Some(c) = self.next_change(t) {
            if c >= cand {
                break;
            }
            if self.rate_at(c) > r {
                cand = c;
                break;
            }
            t = c;
        }
        while cand.is_finite() && self.rate_at(cand) == 0.0 {
            cand = self.next_change(cand)?;
        }
        cand.is_finite().then_some(cand)
    }

    /// The mean rate over `[0, duration_s)`.
    pub fn mean_rate(&self, duration_s: f64) -> f64 {
        if duration_s <= 0.0 {
            return 0.0;
        }
        let mut total = 0.0;
        for (i, &(t0, q)) in self.steps.iter().enumerate() {
            let t1 = self
                .steps
                .get(i + 1)
                .map_or(duration_s, |s| s.0)
                .min(duration_s);
            if t1 > t0 {
                total += q * (t1 - t0);
            }
        }
        total / duration_s
    }
}

fn check_qps(q: f64, what: &str) -> Result<(), LoadgenError> {
    if q.is_finite() && q > 0.0 && q <= MAX_QPS {
        Ok(())
    } else {
        Err(LoadgenError::Config(format!(
            "{what} {q} must be above 0 and at most {MAX_QPS}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_spaces_sends_evenly() {
        let s = Schedule::fixed(1000.0).unwrap();
        assert_eq!(s.rate_at(5.0), 1000.0);
        let t = s.next_send(1.0).unwrap();
        assert!((t - 1.001).abs() < 1e-12);
        assert!(Schedule::fixed(0.0).is_err());
        assert!(Schedule::fixed(f64::NAN).is_err());
    }

    #[test]
    fn random_walk_is_reproducible_and_bounded() {
        let a = Schedule::random_walk(1000.0, 5000.0, 0.5, 42, 60.0).unwrap();
        let b = Schedule::random_walk(1000.0, 5000.0, 0.5, 42, 60.0).unwrap();
        let c = Schedule::random_walk(1000.0, 5000.0, 0.5, 43, 60.0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.steps.len(), 120);
        assert!(a.steps.iter().all(|&(_, q)| (1000.0..=5000.0).contains(&q)));
        let lo = a.steps.iter().map(|s| s.1).fold(f64::MAX, f64::min);
        let hi = a.steps.iter().map(|s| s.1).fold(0.0, f64::max);
        assert!(hi - lo > 2000.0, "the walk covers the range: {lo}..{hi}");
        assert_eq!(a.rate_at(0.7), a.steps[1].1);
        assert!(Schedule::random_walk(5.0, 1.0, 1.0, 1, 10.0).is_err());
        assert!(Schedule::random_walk(1.0, 5.0, 0.0, 1, 10.0).is_err());
    }

    #[test]
    fn trace_parses_and_reports_bad_lines() {
        let s =
            Schedule::parse_trace("# t qps\n0 100\n\n2.5 0  # pause\n3 400\n", "t.txt").unwrap();
        assert_eq!(s.rate_at(1.0), 100.0);
        assert_eq!(s.rate_at(2.7), 0.0);
        assert_eq!(s.rate_at(10.0), 400.0);
        // A send due in the pause moves to the end of the pause.
        assert_eq!(s.next_send(2.6), Some(3.0));
        assert!((s.mean_rate(4.0) - (250.0 + 400.0) / 4.0).abs() < 1e-9);
        for (bad, what) in [
            ("0 100\n0 200\n", "increase"),
            ("0 abc\n", "qps is not a number"),
            ("x 1\n", "seconds is not"),
            ("1\n", "expected"),
            ("0 -5\n", "out of range"),
            ("# nothing\n", "no `seconds qps`"),
        ] {
            let err = Schedule::parse_trace(bad, "t.txt").unwrap_err().to_string();
            assert!(err.contains(what), "{bad:?}: {err}");
        }
        let err = Schedule::parse_trace("0 1\n5 x\n", "t.txt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.txt line 2"), "{err}");
    }

    #[test]
    fn a_rate_step_up_is_not_delayed_by_the_slow_gap() {
        let s = Schedule::parse_trace("0 1\n0.5 1000\n", "t").unwrap();
        assert_eq!(s.next_send(0.0), Some(0.5));
        let t = s.next_send(0.5).unwrap();
        assert!((t - 0.501).abs() < 1e-12);
        // A step down to 0 inside a gap sends nothing in the pause.
        let pause = Schedule::parse_trace("0 1\n0.5 0\n2 10\n", "t").unwrap();
        assert_eq!(pause.next_send(0.0), Some(2.0));
        let stop = Schedule::parse_trace("0 1\n0.5 0\n", "t").unwrap();
        assert_eq!(stop.next_send(0.0), None);
        let before = Schedule::parse_trace("1 10\n", "t").unwrap();
        assert_eq!(before.next_send(0.0), Some(1.0));
        assert_eq!(before.rate_at(0.5), 0.0);
    }

    #[test]
    fn prng_is_uniform_enough() {
        let mut r = SplitMix64::new(7);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[r.below(10) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (9_000..11_000).contains(&b)),
            "{buckets:?}"
        );
        let f = r.next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
