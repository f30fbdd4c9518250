//! User requests to the control loop: cancel, pause (hold) and resume of a job, each checked
//! against the caller (only the job's owner or root) and answered with the job's new status.
//! A cancel of a running job only starts its kill, a pause its freeze: the control loop never
//! waits on either, and the answer goes out on the turn that records the end or the hold.

use std::time::{Duration, Instant};

use crate::api::protocol::{ErrorCode, ProtocolError};
use crate::model::job::{JobId, Origin};
use crate::model::jobstate::JobState;
use crate::node::cgroup::DEFAULT_TIMEOUT;

use super::control::{Control, Reply, refuse};
use super::jobs::{Change, JobsError};
use super::server::Caller;
use super::shared::{Op, now};

/// A user's pause whose freeze the kernel has not confirmed yet.
pub(super) struct Freezing {
    id: JobId,
    by: String,
    since: Instant,
    reply: Reply,
    caller: Caller,
}

/// Longest a cancel's answer is kept for a job whose end does not come.
const AWAIT_END: Duration = Duration::from_secs(120);

impl Control {
    fn authorize(&self, id: JobId, caller: &Caller) -> Result<JobState, ProtocolError> {
        let table = self.shared.table();
        let rec = table
            .get(id)
            .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no job {id}")))?;
        if !caller.is_root() && caller.uid != rec.owner.uid {
            return Err(refuse(
                ErrorCode::Forbidden,
                format!(
                    "job {id} belongs to {} (uid {}); only its owner or root may change it",
                    rec.owner.user, rec.owner.uid
                ),
            ));
        }
        if let Origin::Slurm(n) = rec.spec.origin {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("job {id} is Slurm job {n}: use scancel or scontrol for it"),
            ));
        }
        Ok(rec.state)
    }

    pub(super) fn op(
        &mut self,
        op: Op,
        replies: &mut Vec<(Reply, Result<JobId, ProtocolError>, Caller)>,
    ) {
        match op {
            Op::Wake => self.dirty = true,
            Op::Cancel { id, caller, reply } => match self.cancel(id, &caller) {
                // Answered once the job's end is recorded ([`Control::settle_awaiting`]).
                Ok(true) => self.awaiting.push((id, reply, caller, Instant::now())),
                r => replies.push((reply, r.map(|_| id), caller)),
            },
            Op::Pause { id, caller, reply } => match self.hold(id, &caller, true) {
                // Answered once the kernel has it frozen ([`Control::settle_freezing`]).
                Ok(Some(by)) => self.freezing.push(Freezing {
                    id,
                    by,
                    since: Instant::now(),
                    reply,
                    caller,
                }),
                r => replies.push((reply, r.map(|_| id), caller)),
            },
            Op::Resume { id, caller, reply } => {
                let r = self.hold(id, &caller, false);
                replies.push((reply, r.map(|_| id), caller));
            }
            Op::Reload(live) => self.reload(*live),
        }
    }

    /// The control loop's part of a config reload: the controller's thresholds, the policy
    /// tick and the fair-share half-life; then a decision with the new policy.
    fn reload(&mut self, live: super::reload::LiveControl) {
        self.policy_tick = live.policy_tick;
        self.usage.set_half_life(live.fair_share_half_life);
        if let Some(slo) = self.slo.as_mut() {
            slo.set_controller(live.controller);
        }
        self.dirty = true;
    }

    /// Cancels a job: a pending one ends here; a running or paused one is killed without
    /// waiting (`Ok(true)`), and its exit event records it as cancelled on a later turn.
    fn cancel(&mut self, id: JobId, caller: &Caller) -> Result<bool, ProtocolError> {
        let state = self.authorize(id, caller)?;
        let by = format!("cancelled by uid {}", caller.uid);
        match state {
            s if s.is_terminal() => Err(refuse(
                ErrorCode::Conflict,
                format!("job {id} already ended ({s})"),
            )),
            JobState::Pending => {
                self.finish(id, JobState::Cancelled, None, Some(by))
                    .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
                self.release_prepared(id);
                Ok(false)
            }
            _ => match self.actuator.kill_now(id) {
                Ok(()) => {
                    self.cancelling.insert(id, (JobState::Cancelled, by));
                    Ok(true)
                }
                Err(e) => Err(refuse(
                    ErrorCode::Internal,
                    format!("cannot kill job {id}: {e}"),
                )),
            },
        }
    }

    /// Answers the cancels whose job's end is now recorded; one whose job has not ended after
    /// [`AWAIT_END`] is dropped (its socket thread stopped waiting long before).
    pub(super) fn settle_awaiting(
        &mut self,
        replies: &mut Vec<(Reply, Result<JobId, ProtocolError>, Caller)>,
    ) {
        if self.awaiting.is_empty() {
            return;
        }
        let table = self.shared.table();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|(id, _, _, since)| {
                table.get(*id).is_none_or(|r| r.state.is_terminal()) || since.elapsed() > AWAIT_END
            });
        drop(table);
        self.awaiting = waiting;
        for (id, reply, caller, _) in done {
            replies.push((reply, Ok(id), caller));
        }
    }

    /// `lowsched pause` (hold) and `lowsched resume` (release the hold; the policy resumes the
    /// job when cores are free, normally in this same turn). A running job's freeze is only
    /// started here (`Ok(Some(by))`): the hold is recorded once the kernel has it frozen.
    fn hold(
        &mut self,
        id: JobId,
        caller: &Caller,
        hold: bool,
    ) -> Result<Option<String>, ProtocolError> {
        let state = self.authorize(id, caller)?;
        let by = format!(
            "{} by uid {}",
            if hold { "paused" } else { "released" },
            caller.uid
        );
        match (state, hold) {
            (JobState::Running, true) => {
                self.actuator.freeze_now(id).map_err(|e| {
                    refuse(ErrorCode::Internal, format!("cannot pause job {id}: {e}"))
                })?;
                Ok(Some(by))
            }
            (JobState::Paused, _) => self.record_hold(id, Change::Held { held: hold, by }, false),
            (JobState::Running, false) => Ok(None),
            (s, _) => {
                let verb = if hold { "pause" } else { "resume" };
                Err(refuse(
                    ErrorCode::Conflict,
                    format!("cannot {verb} job {id}: it is {s}"),
                ))
            }
        }
    }

    /// Records a hold through the door. It is durable before the owner is answered; one that
    /// cannot be recorded is refused with the journal's error, and a freeze made for it
    /// (`froze`) undone.
    fn record_hold(
        &mut self,
        id: JobId,
        change: Change,
        froze: bool,
    ) -> Result<Option<String>, ProtocolError> {
        self.record_hold_with(id, change, froze, None)
    }

    /// [`Self::record_hold`] with inputs for the hold's event (its freeze time).
    fn record_hold_with(
        &mut self,
        id: JobId,
        change: Change,
        froze: bool,
        inputs: Option<serde_json::Value>,
    ) -> Result<Option<String>, ProtocolError> {
        match self
            .shared
            .jobs
            .apply_with(id, change, now(), || Ok(inputs))
        {
            Ok(()) => {
                self.dirty = true;
                Ok(None)
            }
            Err(e) => {
                if froze {
                    self.thaw(id);
                }
                let code = match e {
                    JobsError::NotRecorded { .. } => ErrorCode::Internal,
                    _ => ErrorCode::Conflict,
                };
                Err(refuse(code, e.to_string()))
            }
        }
    }

    /// Answers the pauses whose job the kernel now reports frozen, recording each hold; one
    /// not frozen within [`DEFAULT_TIMEOUT`] is thawed and refused.
    pub(super) fn settle_freezing(
        &mut self,
        replies: &mut Vec<(Reply, Result<JobId, ProtocolError>, Caller)>,
    ) {
        for f in std::mem::take(&mut self.freezing) {
            let frozen = self.actuator.frozen(f.id);
            let result = match frozen {
                Ok(false) if f.since.elapsed() < DEFAULT_TIMEOUT => {
                    self.freezing.push(f);
                    continue;
                }
                Ok(true) => {
                    // The policy may have paused it meanwhile: then only the hold is new.
                    let paused = self
                        .shared
                        .table()
                        .get(f.id)
                        .is_some_and(|r| r.state == JobState::Paused);
                    let change = if paused {
                        Change::Held {
                            held: true,
                            by: f.by,
                        }
                    } else {
                        Change::Paused {
                            reason: f.by,
                            held: true,
                        }
                    };
                    // The freeze written to the first look that saw it frozen: an upper bound
                    // of the kernel's time (the first look comes in the same turn).
                    let timing = (!paused).then(
                        || serde_json::json!({ "freeze_us": f.since.elapsed().as_micros() as u64 }),
                    );
                    self.record_hold_with(f.id, change, !paused, timing)
                        .map(|_| f.id)
                }
                other => {
                    self.thaw(f.id);
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => format!(
                            "not frozen within {}",
                            crate::model::text::Span(DEFAULT_TIMEOUT)
                        ),
                    };
                    Err(refuse(
                        ErrorCode::Internal,
                        format!("cannot pause job {}: {why}", f.id),
                    ))
                }
            };
            replies.push((f.reply, result, f.caller));
        }
    }

    /// Thaws a job frozen for a hold that could not be recorded, on the cores it had.
    fn thaw(&mut self, id: JobId) {
        let cores = self.actuator.cores(id).unwrap_or_default();
        if let Err(e) = self.actuator.resume(id, cores) {
            crate::log::error(&format!(
                "job {id}: cannot thaw it after a refused hold: {e}"
            ));
        }
    }
}
