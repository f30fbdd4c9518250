//! Learned sharing: what the controller remembers about letting batch share the service's cores.
//!
//! The problem: on some hosts a share is undone within a second every time it is tried (any
//! batch on the service's core breaks its latency), and retrying it every hold-down costs batch
//! the churn; on others it holds. Whether it holds depends on the load and on the batch job.
//!
//! The approach: a record per (load level, batch job) of shares that held and shares that were
//! undone, each count decaying by half every `share_half_life_ms`, at most `share_memory`
//! records (the least recently touched one is dropped). A key whose undone count is at least
//! `share_give_up` and above its held count is not shared again until decay brings it under.
//! Otherwise a share starts at the quota that last held there (retry what worked), or at
//! `share_quota` for a key never tried; among the running batch jobs the one with the best
//! record goes first (least interfering). Load levels are half-octaves of QPS.
//!
//! A key never tried is judged by wider records before it costs a trial: the level's record
//! summed over every job, and when the level was never tried either, the node's record summed
//! over everything, whose give-up bar is twice as high. Where sharing fails whatever the job
//! or the load (a host whose wake-up of a busy core is slow), each new job and level then
//! stops costing its own undone share.

use std::time::Duration;

/// The record of one (load level, batch job).
#[derive(Clone, Debug, PartialEq)]
struct Record {
    level: i32,
    job: String,
    held: f64,
    undone: f64,
    /// The quota to start the next share at.
    quota: f64,
    at: Duration,
}

/// Bounded, decaying memory of shares.
#[derive(Clone, Debug, Default)]
pub struct ShareMemory {
    records: Vec<Record>,
}

/// What the memory says about sharing now.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Try a share at this quota.
    Try {
        quota: f64,
        held: f64,
        undone: f64,
        scope: Scope,
    },
    /// Do not share: it keeps being undone here.
    Skip {
        held: f64,
        undone: f64,
        scope: Scope,
    },
}

/// Whose record a verdict comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// This job at this load level.
    Job,
    /// Every job at this load level (this job was never tried here).
    Level,
    /// Every job at every level (nothing was tried at this level).
    Node,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Job => "record",
            Scope::Level => "this level's record over all jobs",
            Scope::Node => "the node's record over all levels",
        })
    }
}

/// Settings, from the controller's config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub first_quota: f64,
    pub min_quota: f64,
    pub give_up: f64,
    pub half_life: Duration,
    pub capacity: usize,
}

/// The load level of a QPS reading: half-octaves, so 4.2 k and 5 k QPS are one level and 4.2 k and
/// 6 k are not (boundaries at powers of √2). No reading is a level of its own.
pub fn level(qps: Option<f64>) -> i32 {
    qps.map_or(i32::MIN, |q| (2.0 * q.max(1.0).log2()).floor() as i32)
}

impl ShareMemory {
    fn decay(lim: &Limits, r: &Record, now: Duration) -> f64 {
        let age = now.saturating_sub(r.at).as_secs_f64();
        let half = lim.half_life.as_secs_f64().max(1e-3);
        0.5f64.powf(age / half)
    }

    fn find(&self, level: i32, job: &str) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.level == level && r.job == job)
    }

    /// Held and undone counts, decayed to `now`.
    pub fn counts(&self, lim: &Limits, level: i32, job: &str, now: Duration) -> (f64, f64) {
        self.find(level, job).map_or((0.0, 0.0), |r| {
            let k = Self::decay(lim, r, now);
            (r.held * k, r.undone * k)
        })
    }

    /// Held and undone counts over every record `keep` selects, decayed to `now`.
    fn sum(&self, lim: &Limits, now: Duration, keep: impl Fn(&Record) -> bool) -> (f64, f64) {
        self.records
            .iter()
            .filter(|r| keep(r))
            .fold((0.0, 0.0), |(h, u), r| {
                let k = Self::decay(lim, r, now);
                (h + r.held * k, u + r.undone * k)
            })
    }

    pub fn verdict(&self, lim: &Limits, level: i32, job: &str, now: Duration) -> Verdict {
        let (scope, (held, undone), bar) = if self.find(level, job).is_some() {
            (Scope::Job, self.counts(lim, level, job, now), lim.give_up)
        } else if self.records.iter().any(|r| r.level == level) {
            let counts = self.sum(lim, now, |r| r.level == level);
            (Scope::Level, counts, lim.give_up)
        } else {
            (Scope::Node, self.sum(lim, now, |_| true), 2.0 * lim.give_up)
        };
        if undone >= bar && undone > held {
            return Verdict::Skip {
                held,
                undone,
                scope,
            };
        }
        let quota = self.find(level, job).map_or(lim.first_quota, |r| r.quota);
        Verdict::Try {
            quota,
            held,
            undone,
            scope,
        }
    }

    /// Of `jobs`, the one with the best record at `level` (held minus undone; untried counts 0);
    /// ties go to the earlier one. `""` when there are none.
    pub fn least_interfering<'a>(
        &self,
        lim: &Limits,
        level: i32,
        jobs: &'a [String],
        now: Duration,
    ) -> &'a str {
        let mut best: Option<(&str, f64)> = None;
        for j in jobs {
            let (h, u) = self.counts(lim, level, j, now);
            if best.is_none_or(|(_, s)| h - u > s) {
                best = Some((j, h - u));
            }
        }
        best.map_or("", |(j, _)| j)
    }

    /// Records a share's outcome at `quota`: a held share is started there next time, an
    /// undone one at half of it.
    pub fn record(
        &mut self,
        lim: &Limits,
        level: i32,
        job: &str,
        now: Duration,
        held: bool,
        quota: f64,
    ) {
        let i = match self
            .records
            .iter()
            .position(|r| r.level == level && r.job == job)
        {
            Some(i) => i,
            None => {
                if self.records.len() >= lim.capacity.max(1) {
                    let oldest = (0..self.records.len())
                        .min_by_key(|&i| self.records[i].at)
                        .unwrap_or(0);
                    self.records.swap_remove(oldest);
                }
                self.records.push(Record {
                    level,
                    job: job.to_string(),
                    held: 0.0,
                    undone: 0.0,
                    quota: lim.first_quota,
                    at: now,
                });
                self.records.len() - 1
            }
        };
        let k = Self::decay(lim, &self.records[i], now);
        let r = &mut self.records[i];
        r.held *= k;
        r.undone *= k;
        r.at = now;
        if held {
            r.held += 1.0;
            r.quota = quota;
        } else {
            r.undone += 1.0;
            r.quota = (quota / 2.0).max(lim.min_quota);
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            first_quota: 0.25,
            min_quota: 0.05,
            give_up: 2.0,
            half_life: Duration::from_secs(60),
            capacity: 2,
        }
    }

    #[test]
    fn undone_shares_stop_the_key_until_they_decay() {
        let (l, mut m) = (lim(), ShareMemory::default());
        let t = Duration::from_secs(10);
        m.record(&l, 5, "a", t, false, 0.25);
        m.record(&l, 5, "a", t, false, 0.125);
        assert!(matches!(m.verdict(&l, 5, "a", t), Verdict::Skip { .. }));
        assert!(matches!(m.verdict(&l, 6, "a", t), Verdict::Try { quota, .. } if quota == 0.25));
        // One half-life later 2 undos count 1: tried again, at half the last quota.
        let later = t + Duration::from_secs(61);
        assert!(
            matches!(m.verdict(&l, 5, "a", later), Verdict::Try { quota, .. } if quota == 0.0625)
        );
    }

    #[test]
    fn memory_is_bounded_and_prefers_the_job_that_held() {
        let (l, mut m) = (lim(), ShareMemory::default());
        let t = Duration::from_secs(1);
        m.record(&l, 5, "a", t, false, 0.25);
        m.record(&l, 5, "b", t, true, 1.0);
        let jobs = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(m.least_interfering(&l, 5, &jobs, t), "b");
        m.record(&l, 7, "c", t + Duration::from_secs(1), true, 1.0);
        assert_eq!(m.len(), 2);
        assert_eq!(m.counts(&l, 7, "c", t + Duration::from_secs(1)), (1.0, 0.0));
    }

    #[test]
    fn an_untried_job_or_level_is_judged_by_the_wider_record() {
        let l = Limits {
            capacity: 16,
            ..lim()
        };
        let mut m = ShareMemory::default();
        let t = Duration::from_secs(10);
        m.record(&l, 5, "a", t, false, 0.25);
        m.record(&l, 5, "b", t, false, 0.25);
        // A new job at level 5: the level's two undone shares (at give_up 2) stop it.
        assert!(matches!(
            m.verdict(&l, 5, "c", t),
            Verdict::Skip {
                scope: Scope::Level,
                ..
            }
        ));
        // A new level: the node's two undone shares are under twice give_up: tried.
        assert!(matches!(
            m.verdict(&l, 6, "c", t),
            Verdict::Try {
                scope: Scope::Node,
                ..
            }
        ));
        // A level where one share held and one was undone lets a new job try.
        m.record(&l, 9, "a", t, true, 0.25);
        m.record(&l, 9, "b", t, false, 0.25);
        assert!(matches!(
            m.verdict(&l, 9, "c", t),
            Verdict::Try {
                scope: Scope::Level,
                ..
            }
        ));
        // Five shares undone on the node against one held: no new level is tried...
        m.record(&l, 7, "a", t, false, 0.25);
        m.record(&l, 8, "b", t, false, 0.25);
        assert!(matches!(
            m.verdict(&l, 6, "c", t),
            Verdict::Skip {
                scope: Scope::Node,
                ..
            }
        ));
        // ...until they decay under the bar (two half-lives on, five count 1.2).
        let later = t + Duration::from_secs(121);
        assert!(matches!(
            m.verdict(&l, 6, "c", later),
            Verdict::Try {
                scope: Scope::Node,
                ..
            }
        ));
    }

    #[test]
    fn levels_are_half_octaves() {
        assert_eq!(level(Some(4_200.0)), level(Some(5_000.0)));
        assert_ne!(level(Some(4_200.0)), level(Some(6_000.0)));
    }
}
