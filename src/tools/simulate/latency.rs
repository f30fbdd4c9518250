//! The service's latency model: the response-time tail of one control period, and the p95 of a
//! mix of periods.
//!
//! The problem: the simulator needs, for a load (QPS) and an allocation (how many cores, shared
//! with batch or not), the fraction of requests slower than any latency `x`, cheaply enough to run
//! a day of 50 ms periods for every partition size.
//!
//! The approach: the service is an M/M/c queue, one server per core it holds (a memcached thread
//! per core), mean service time `service_us`. Its response time R = wait + service has a closed
//! form tail (Erlang C for the chance to wait, then an exponential wait at rate `cμ - λ`). A fixed
//! `base_us` (network stack, client) is added to every request. Sharing a core with batch costs a
//! fraction `share_hit × quota` of requests an extra `share_delay_us` (the time batch keeps the
//! core after a request arrives). Load at or above capacity makes every request late. A window's
//! p95 is found by bisection on the load-weighted mix of its periods' tails.
//!
//! Assumptions (documented in the README): Poisson arrivals, exponential service times, no
//! coordination cost between threads, no host noise beyond the configured jitter; the sharing
//! penalty does not depend on the batch job.

use serde::{Deserialize, Serialize};

/// Model parameters (the `[latency]` table). Defaults are calibrated on the 2-vCPU test VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyModel {
    /// Mean service time of one request on one core, µs (one memcached thread saturates near
    /// 100 k QPS on the test VM: 10 µs).
    pub service_us: f64,
    /// Fixed latency every request pays (network stack, client), µs. Memcached alone at 20 k
    /// QPS measured p95 60-75 µs on the test VM; M/M/1 gives ~37 µs of it.
    pub base_us: f64,
    /// Extra delay of a request that finds batch running on its core, µs. On the test VM any
    /// batch on the service's vCPU raised p95 to 0.5-4.4 ms; one CPU hog measured +300 µs.
    pub share_delay_us: f64,
    /// Fraction of requests that meet batch on their core while batch may use all of it.
    pub share_hit: f64,
    /// Relative jitter of the offered load per period (uniform ±).
    pub load_jitter: f64,
    /// Relative error of a probe's p95 reading (uniform ±).
    pub probe_error: f64,
}

impl Default for LatencyModel {
    fn default() -> Self {
        Self {
            service_us: 10.0,
            base_us: 30.0,
            share_delay_us: 1_500.0,
            share_hit: 0.2,
            load_jitter: 0.05,
            probe_error: 0.1,
        }
    }
}

/// What one period looks like to the service: its load and the cores it has. Built by
/// [`LatencyModel::period`], which works out the chance to wait once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Period {
    pub qps: f64,
    /// Cores the service runs on.
    pub cores: usize,
    /// Fraction (0-1) of the service's cores' time batch may take: 0 exclusive, 1 a full share,
    /// in between a partial share (a CPU quota).
    pub share: f64,
    /// Erlang C for this load and core count (1 when overloaded).
    wait: f64,
}

/// Latency at or beyond this is "never answered" (µs).
pub const NEVER_US: f64 = 1.0e7;

impl LatencyModel {
    /// Cores' worth of CPU the service uses at `qps` (may exceed its cores: overload).
    pub fn busy_cores(&self, qps: f64) -> f64 {
        qps * self.service_us * 1e-6
    }

    /// Erlang C: the chance that a request waits, for offered load `a = λ/μ` on `c` servers.
    fn erlang_c(c: usize, a: f64) -> f64 {
        let mut b = 1.0;
        for k in 1..=c {
            b = a * b / (k as f64 + a * b);
        }
        let rho = a / c as f64;
        b / (1.0 - rho * (1.0 - b))
    }

    pub fn period(&self, qps: f64, cores: usize, share: f64) -> Period {
        let c = cores.max(1);
        let a = qps * self.service_us * 1e-6;
        let wait = if a >= c as f64 {
            1.0
        } else {
            Self::erlang_c(c, a)
        };
        Period {
            qps,
            cores: c,
            share,
            wait,
        }
    }

    /// P(queueing + service > x), x in µs, without the base or sharing delays.
    fn queue_tail(&self, p: &Period, x: f64) -> f64 {
        if x <= 0.0 {
            return 1.0;
        }
        let mu = 1.0 / self.service_us;
        let lambda = p.qps * 1e-6;
        let c = p.cores.max(1);
        let theta = c as f64 * mu - lambda;
        if theta <= 0.0 {
            return 1.0;
        }
        let wait = p.wait;
        let served = (-mu * x).exp();
        let after_wait = if (mu - theta).abs() < 1e-12 {
            (1.0 + mu * x) * served
        } else {
            (mu * (-theta * x).exp() - theta * served) / (mu - theta)
        };
        ((1.0 - wait) * served + wait * after_wait).clamp(0.0, 1.0)
    }

    /// P(R > x) in one period, x in µs.
    pub fn tail(&self, p: &Period, x: f64) -> f64 {
        let hit = (self.share_hit * p.share).clamp(0.0, 1.0);
        let x = x - self.base_us;
        let plain = self.queue_tail(p, x);
        if hit == 0.0 {
            return plain;
        }
        (1.0 - hit) * plain + hit * self.queue_tail(p, x - self.share_delay_us)
    }

    /// Fraction of the requests of `periods` slower than `x` µs.
    pub fn over(&self, periods: &[Period], x: f64) -> f64 {
        let total: f64 = periods.iter().map(|p| p.qps).sum();
        if total <= 0.0 {
            return 0.0;
        }
        periods.iter().map(|p| p.qps * self.tail(p, x)).sum::<f64>() / total
    }

    /// The p95 (µs) of the load-weighted mix of `periods` (a window, or the probe's recent
    /// span). `None` when no request was offered.
    pub fn p95(&self, periods: &[Period]) -> Option<f64> {
        if periods.iter().all(|p| p.qps <= 0.0) {
            return None;
        }
        let over = |x: f64| self.over(periods, x);
        if over(NEVER_US) > 0.05 {
            return Some(NEVER_US);
        }
        let (mut lo, mut hi) = (0.0, NEVER_US);
        // 32 halvings of 10 s: under 0.01 µs.
        for _ in 0..32 {
            let mid = (lo + hi) / 2.0;
            if over(mid) > 0.05 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(qps: f64, cores: usize, share: f64) -> Period {
        LatencyModel::default().period(qps, cores, share)
    }

    #[test]
    fn one_core_matches_mm1() {
        let m = LatencyModel::default();
        // M/M/1 response time is exponential at rate μ-λ: p95 = ln 20 / (μ-λ).
        let p95 = m.p95(&[at(20_000.0, 1, 0.0)]).unwrap();
        let expect = m.base_us + 20f64.ln() / (0.1 - 0.02);
        assert!((p95 - expect).abs() < 0.1, "{p95} vs {expect}");
    }

    #[test]
    fn more_cores_hold_more_load_and_overload_is_never_answered() {
        let m = LatencyModel::default();
        assert_eq!(m.p95(&[at(120_000.0, 1, 0.0)]), Some(NEVER_US));
        let two = m.p95(&[at(120_000.0, 2, 0.0)]).unwrap();
        assert!(two < 200.0, "{two}");
    }

    #[test]
    fn sharing_costs_in_proportion_to_the_quota() {
        let m = LatencyModel::default();
        let alone = m.p95(&[at(5_000.0, 1, 0.0)]).unwrap();
        let full = m.p95(&[at(5_000.0, 1, 1.0)]).unwrap();
        let tenth = m.p95(&[at(5_000.0, 1, 0.1)]).unwrap();
        assert!(full > 1_000.0 && alone < 100.0, "{alone} {full}");
        assert!(tenth < 100.0, "a 10% quota hits 2% of requests: {tenth}");
    }

    #[test]
    fn a_window_mix_weighs_periods_by_load() {
        let m = LatencyModel::default();
        // 1 period in 20 overloaded at equal load: exactly at the p95 edge; at 1/4 the load
        // it is under 5 % of requests.
        let mut w = vec![at(20_000.0, 1, 0.0); 19];
        w.push(at(5_000.0, 1, 1.0));
        let p = m.p95(&w).unwrap();
        assert!(p < 200.0, "{p}");
    }
}
