//! The controller's turns on the shared rung: starting a share from what the memory says,
//! narrowing, widening or undoing it, and recording how it went (see [`super::share`]).

use std::time::Duration;

use super::share::{self, Verdict};
use super::{Change, Controller, Inputs, Move, Share, Sharing};

impl Controller {
    /// The share the memory allows for these inputs: its load level, the job to share with,
    /// and the verdict.
    fn share_plan(&self, inp: &Inputs) -> (i32, String, Verdict) {
        let lim = self.limits();
        let level = share::level(inp.qps);
        let job = self
            .memory
            .least_interfering(&lim, level, &inp.batch_jobs, inp.now)
            .to_string();
        let verdict = self.memory.verdict(&lim, level, &job, inp.now);
        (level, job, verdict)
    }

    /// A step down to the shared rung that the calm readings (`calm`) allow, if the memory
    /// does not advise against it. Remembers a refusal as a note (once per level and job).
    pub(super) fn decide_share_start(&self, inp: &Inputs, calm: String) -> Option<Change> {
        let (level, job, verdict) = self.share_plan(inp);
        let Verdict::Try {
            quota,
            held,
            undone,
            scope,
        } = verdict
        else {
            return None;
        };
        let with = if job.is_empty() { "batch" } else { &job };
        Some(Change {
            kind: Move::Shrink,
            from: self.level,
            to: self.level - 1,
            reason: format!(
                "{calm}; sharing {:.0}% of the service's cores with {with} at load level \
                 {level} ({scope}: {held:.1} held, {undone:.1} undone)",
                quota * 100.0
            ),
            triggered_by_sample_at: inp.sampled_at,
        })
    }

    /// Why a calm step down to the shared rung is not taken, if the memory refuses it.
    pub(super) fn share_refusal(&self, inp: &Inputs) -> Option<String> {
        let (level, job, verdict) = self.share_plan(inp);
        let Verdict::Skip {
            held,
            undone,
            scope,
        } = verdict
        else {
            return None;
        };
        let with = if job.is_empty() { "batch" } else { &job };
        let bar = match scope {
            share::Scope::Node => 2.0 * self.cfg.share_give_up,
            _ => self.cfg.share_give_up,
        };
        Some(format!(
            "not sharing with {with} at load level {level}: {scope}: {undone:.1} undone against \
             {held:.1} held (tried again once undone decays under {bar})"
        ))
    }

    /// While a share is on trial and latency is over the grow threshold: narrow it, or undo it
    /// when the SLO is broken or it cannot be narrowed further.
    pub(super) fn decide_share(&self, inp: &Inputs, hot: Option<f64>) -> Option<Change> {
        let s = self.sharing.as_ref().filter(|s| !s.proven)?;
        let p = hot?;
        let lim = self.limits();
        let half = s.share.quota / 2.0;
        let slo = self.slo_p95_us;
        let pct = s.share.quota * 100.0;
        let with = if s.share.job.is_empty() {
            "batch"
        } else {
            &s.share.job
        };
        let (kind, to, reason) = if p > slo || half < lim.min_quota {
            let why = if p > slo {
                format!("SLO {slo:.0}us")
            } else {
                format!(
                    "{:.0}us and {pct:.0}% is the narrowest share",
                    self.grow_p95_us()
                )
            };
            (
                Move::Undo,
                self.level + 1,
                format!("undo share of {pct:.0}% with {with}: recent p95 {p:.0}us > {why}"),
            )
        } else {
            (
                Move::Narrow,
                self.level,
                format!(
                    "narrow share with {with} {pct:.0}% -> {:.0}%: recent p95 {p:.0}us > {:.0}us",
                    half * 100.0,
                    self.grow_p95_us()
                ),
            )
        };
        Some(Change {
            kind,
            from: self.level,
            to,
            reason,
            triggered_by_sample_at: inp.sampled_at,
        })
    }

    /// A share on trial that lasted `share_proof_ms` without latency rising has held: it is
    /// recorded so, and widened (doubled) if it was partial.
    pub(super) fn settle_share(&mut self, inp: &Inputs) -> Option<Change> {
        let proof = Duration::from_millis(self.cfg.share_proof_ms);
        let s = self.sharing.as_ref().filter(|s| !s.proven)?;
        if inp.now.saturating_sub(s.since) < proof {
            return None;
        }
        let (level, job, quota) = (s.level, s.share.job.clone(), s.share.quota);
        let lim = self.limits();
        self.memory.record(&lim, level, &job, inp.now, true, quota);
        if let Some(s) = self.sharing.as_mut() {
            s.proven = true;
        }
        (quota < 1.0).then(|| Change {
            kind: Move::Widen,
            from: self.level,
            to: self.level,
            reason: format!(
                "share of {:.0}% held for {}ms: widened to {:.0}%",
                quota * 100.0,
                proof.as_millis(),
                (quota * 2.0).min(1.0) * 100.0
            ),
            triggered_by_sample_at: inp.sampled_at,
        })
    }

    /// Keeps the share state and the memory in step with a change.
    pub(super) fn apply_share(&mut self, c: &Change, inp: &Inputs) {
        let lim = self.limits();
        match c.kind {
            Move::Shrink if !self.rungs[c.to].exclusive => {
                let (level, job, verdict) = self.share_plan(inp);
                let quota = match verdict {
                    Verdict::Try { quota, .. } => quota,
                    Verdict::Skip { .. } => lim.first_quota,
                };
                self.sharing = Some(Sharing {
                    share: Share { quota, job },
                    level,
                    since: inp.now,
                    proven: false,
                });
            }
            Move::Narrow | Move::Widen => {
                if let Some(s) = self.sharing.as_mut() {
                    s.share.quota = if c.kind == Move::Narrow {
                        s.share.quota / 2.0
                    } else {
                        (s.share.quota * 2.0).min(1.0)
                    };
                    s.since = inp.now;
                    s.proven = false;
                }
            }
            Move::Undo => {
                if let Some(s) = self.sharing.take() {
                    let quota = s.share.quota;
                    self.memory
                        .record(&lim, s.level, &s.share.job, inp.now, false, quota);
                }
            }
            Move::Grow | Move::Shrink => self.sharing = None,
        }
    }
}
