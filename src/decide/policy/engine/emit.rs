//! Turns a decision's target placement into commands, in an order that is safe to apply.
//!
//! Problem: the actuator applies commands one by one, and at no point may a core be in two
//! jobs' sets. Jobs may shrink, grow, or move to cores another job is leaving.
//!
//! Approach: every job's final set is disjoint from every other's, so it suffices that each job
//! first drops to what it keeps (`old ∩ new`) and only then gains cores. Order:
//!
//! 1. shrinks (`Resize` to `old ∩ new`), then pauses (lowest priority, most recently started
//!    first): only cores are released;
//! 2. moves: a running job that keeps none of its cores `Resize`s straight to its new set, once
//!    no other job still to move holds a core of that set; a cycle of moves is broken by pausing
//!    one mover in step 1 and resuming it in step 3;
//! 3. resumes, 4. starts (`Run`), 5. widens (`Resize` up): these only take released cores;
//! 6. scheduling time-outs (`MarkUnschedulable`), which touch no cores.
//!
//! Between its shrink and its grow a job may briefly hold fewer cores than its minimum (when it
//! trades some cores for others); the actuator applies the whole list in one go.

use std::time::Duration;

use crate::model::cpuset::CpuSet;

use super::{Kind, Outcome, Placement};
use crate::decide::policy::Command;

/// `90s`, `1.5s`, `12m30s`, `2h5m`: short and exact enough for a log line.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 600 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else if d.subsec_millis() == 0 {
        format!("{secs}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The commands of one decision, by the phase they are applied in (module documentation).
#[derive(Default)]
struct Phases<'p, 'a> {
    shrinks: Vec<Command>,
    pauses: Vec<Command>,
    resumes: Vec<Command>,
    runs: Vec<Command>,
    widens: Vec<Command>,
    movers: Vec<(&'p Placement<'a>, CpuSet)>,
}

pub(super) fn commands(label: &str, batch: CpuSet, d: &Outcome<'_>) -> Vec<Command> {
    let mut phases = Phases::default();
    for p in &d.placed {
        phases.place(label, batch, p);
    }
    for a in d.paused.iter().rev() {
        let min = a.job.spec.cores.min.max(1);
        phases.pauses.push(Command::Pause {
            job: a.job.id,
            reason: format!(
                "{label}: the {} batch cores cannot hold its minimum of {min} beside more senior \
                 jobs; lowest priority, most recently started pause first",
                batch.len()
            ),
        });
    }
    let Phases {
        shrinks: mut out,
        mut pauses,
        mut resumes,
        mut runs,
        mut widens,
        mut movers,
    } = phases;
    let moves = order_moves(label, &mut movers, &mut pauses, &mut resumes);
    out.append(&mut pauses);
    out.extend(moves);
    out.append(&mut resumes);
    out.append(&mut runs);
    out.append(&mut widens);
    out.extend(
        d.unschedulable
            .iter()
            .map(|(job, reason)| Command::MarkUnschedulable {
                job: *job,
                reason: reason.clone(),
            }),
    );
    out
}

impl<'p, 'a> Phases<'p, 'a> {
    /// The commands that take placed job `p` from where it is to its new cores.
    fn place(&mut self, label: &str, batch: CpuSet, p: &'p Placement<'a>) {
        let id = p.job.id;
        let new = p.cores;
        let range = format!("{} of {}:{}", new.len(), p.min, p.max);
        match p.kind {
            Kind::Kept { was } if was == new => {}
            Kind::Kept { was } => self.keep(label, batch, p, was),
            Kind::Resumed => self.resumes.push(Command::Resume {
                job: id,
                cores: new,
                reason: format!("{label}: batch cores are free again; resumes on {range} cores"),
            }),
            Kind::Started { gpus, past } => {
                let mut reason = format!("{label}: fits; starts on {range} cores");
                if !gpus.is_empty() {
                    reason.push_str(&format!(" with GPUs {gpus}"));
                }
                if let Some(past) = past {
                    reason.push_str(&format!(
                        "; backfilled past job {past}, which does not fit yet"
                    ));
                }
                self.runs.push(Command::Run {
                    job: id,
                    cores: new,
                    gpus,
                    reason,
                });
            }
        }
    }

    /// A running job that stays but changes cores: a shrink to what it keeps, then a widen; or a
    /// move, when it keeps none of them.
    fn keep(&mut self, label: &str, batch: CpuSet, p: &'p Placement<'a>, was: CpuSet) {
        let (id, new) = (p.job.id, p.cores);
        let kept = was.intersection(&new);
        if kept.is_empty() {
            self.movers.push((p, was));
            return;
        }
        if kept != was {
            let lost = was.difference(&new);
            let left = lost.difference(&batch);
            let reclaimed = lost.intersection(&batch);
            let mut why = Vec::new();
            if !left.is_empty() {
                why.push(format!("cores [{left}] left the batch set"));
            }
            if !reclaimed.is_empty() {
                why.push(format!("cores [{reclaimed}] go to other jobs"));
            }
            self.shrinks.push(Command::Resize {
                job: id,
                cores: kept,
                reason: format!(
                    "{label}: {}; keeps {} of {}:{} cores",
                    why.join(", "),
                    kept.len(),
                    p.min,
                    p.max
                ),
            });
        }
        if kept != new {
            let range = format!("{} of {}:{}", new.len(), p.min, p.max);
            self.widens.push(Command::Resize {
                job: id,
                cores: new,
                reason: format!(
                    "{label}: widens onto spare cores [{}] ({range} cores)",
                    new.difference(&was)
                ),
            });
        }
    }
}

/// Orders moves so that a job moves only onto cores no other pending mover still holds; breaks
/// cycles by pausing a mover (before the moves) and resuming it (after them).
fn order_moves(
    label: &str,
    movers: &mut Vec<(&Placement<'_>, CpuSet)>,
    pauses: &mut Vec<Command>,
    resumes: &mut Vec<Command>,
) -> Vec<Command> {
    let mut out = Vec::new();
    while !movers.is_empty() {
        let ready = (0..movers.len()).find(|&i| {
            let target = movers[i].0.cores;
            movers
                .iter()
                .enumerate()
                .all(|(j, (_, old))| j == i || old.is_disjoint(&target))
        });
        let (p, was) = match ready {
            Some(i) => movers.remove(i),
            None => {
                let (p, _) = movers.remove(0);
                pauses.push(Command::Pause {
                    job: p.job.id,
                    reason: format!(
                        "{label}: moves to cores [{}] that another moving job holds; pauses \
                         until they are released",
                        p.cores
                    ),
                });
                resumes.push(Command::Resume {
                    job: p.job.id,
                    cores: p.cores,
                    reason: format!("{label}: resumes on its new cores"),
                });
                continue;
            }
        };
        out.push(Command::Resize {
            job: p.job.id,
            cores: p.cores,
            reason: format!(
                "{label}: moves from [{was}] to [{}]: it cannot keep any of its cores",
                p.cores
            ),
        });
    }
    out
}
