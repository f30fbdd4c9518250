//! User requests to the control loop: cancel, pause (hold) and resume of a job, each checked
//! against the caller (only the job's owner or root) and answered with the job's new status.

use crate::api::protocol::{ErrorCode, ProtocolError};
use crate::model::job::{JobId, Origin};
use crate::model::jobstate::JobState;

use super::control::{Control, Reply, refuse};
use super::jobs::Change;
use super::server::Caller;
use super::shared::{Op, now};

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
            Op::Cancel { id, caller, reply } => {
                let r = self.cancel(id, &caller);
                replies.push((reply, r.map(|()| id), caller));
            }
            Op::Pause { id, caller, reply } => {
                let r = self.hold(id, &caller, true);
                replies.push((reply, r.map(|()| id), caller));
            }
            Op::Resume { id, caller, reply } => {
                let r = self.hold(id, &caller, false);
                replies.push((reply, r.map(|()| id), caller));
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

    fn cancel(&mut self, id: JobId, caller: &Caller) -> Result<(), ProtocolError> {
        let state = self.authorize(id, caller)?;
        let by = format!("cancelled by uid {}", caller.uid);
        match state {
            s if s.is_terminal() => Err(refuse(
                ErrorCode::Conflict,
                format!("job {id} already ended ({s})"),
            )),
            JobState::Pending => {
                self.finish(id, JobState::Cancelled, None, Some(by));
                self.release_prepared(id);
                Ok(())
            }
            _ => {
                self.cancelling.insert(id);
                match self.actuator.kill(id) {
                    Ok(()) => {
                        // Its processes are gone; the waiter's exit event follows and is
                        // recorded as this cancel.
                        self.finish(id, JobState::Cancelled, None, Some(by));
                        Ok(())
                    }
                    Err(e) => {
                        self.cancelling.remove(&id);
                        Err(refuse(
                            ErrorCode::Internal,
                            format!("cannot kill job {id}: {e}"),
                        ))
                    }
                }
            }
        }
    }

    /// `lowsched pause` (hold) and `lowsched resume` (release the hold; the policy resumes the
    /// job when cores are free, normally in this same turn).
    fn hold(&mut self, id: JobId, caller: &Caller, hold: bool) -> Result<(), ProtocolError> {
        let state = self.authorize(id, caller)?;
        let by = format!(
            "{} by uid {}",
            if hold { "paused" } else { "released" },
            caller.uid
        );
        let change = match (state, hold) {
            (JobState::Running, true) => {
                self.actuator.pause(id).map_err(|e| {
                    refuse(ErrorCode::Internal, format!("cannot pause job {id}: {e}"))
                })?;
                Change::Paused {
                    reason: by,
                    held: true,
                }
            }
            (JobState::Paused, _) => Change::Held { held: hold, by },
            (JobState::Running, false) => return Ok(()),
            (s, _) => {
                let verb = if hold { "pause" } else { "resume" };
                return Err(refuse(
                    ErrorCode::Conflict,
                    format!("cannot {verb} job {id}: it is {s}"),
                ));
            }
        };
        self.shared
            .jobs
            .apply(id, change, now())
            .map_err(|e| refuse(ErrorCode::Conflict, e.to_string()))?;
        self.dirty = true;
        Ok(())
    }
}
