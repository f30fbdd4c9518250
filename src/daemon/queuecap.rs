//! The submit-time limits ([`crate::decide::users`]) applied to the job table: counts what a
//! user holds and turns a refusal into a protocol error. A submit over a limit is refused
//! whole, before anything is journaled.
//!
//! The limits live in [`super::shared::Shared`] (`limits`), so a reload (SIGHUP) changes them.

use crate::api::protocol::{ErrorCode, ProtocolError};
use crate::decide::users::{Holding, LimitError, SubmitLimits};
use crate::model::jobstate::JobState;

use super::jobs::JobTable;

/// Jobs accepted earlier in the same request batch, not yet in the table: `uid`'s and all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Earlier {
    pub mine: usize,
    pub all: usize,
}

/// What `uid` holds (pending, running or paused jobs) and what is pending in all.
fn holding(table: &JobTable, uid: u32, earlier: Earlier) -> Holding {
    let (mut mine, mut queued) = (0, 0);
    for r in table.iter() {
        let pending = r.state == JobState::Pending;
        queued += usize::from(pending);
        if r.owner.uid == uid && (pending || r.state.is_active()) {
            mine += 1;
        }
    }
    Holding {
        mine: mine + earlier.mine,
        queued: queued + earlier.all,
    }
}

/// Refuses a priority above the cap for a non-root `uid`.
pub fn check_priority(limits: &SubmitLimits, uid: u32, priority: i32) -> Result<(), ProtocolError> {
    limits
        .check_priority(uid, priority)
        .map_err(|e| ProtocolError::new(ErrorCode::Forbidden, e.to_string()))
}

/// Refuses adding `adding` jobs for `uid` when a limit would be passed. Not an error code
/// clients retry on (`busy`): the queue drains on the scale of jobs, not of seconds.
pub fn check(
    limits: &SubmitLimits,
    table: &JobTable,
    uid: u32,
    adding: usize,
    earlier: Earlier,
) -> Result<(), ProtocolError> {
    limits
        .check_counts(uid, holding(table, uid, earlier), adding)
        .map_err(|e: LimitError| ProtocolError::new(ErrorCode::Conflict, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{JobId, JobSpec, Timestamp};
    use crate::store::journal::Owner;

    use super::super::jobs::JobRecord;

    fn table(jobs: &[(u64, u32, JobState)]) -> JobTable {
        JobTable::of(jobs.iter().map(|&(id, uid, state)| {
            let owner = Owner {
                uid,
                gid: uid,
                user: uid.to_string(),
            };
            let spec = JobSpec::new(vec!["true".into()]);
            let mut r = JobRecord::new(JobId(id), spec, owner, Timestamp(0));
            r.state = state;
            r
        }))
    }

    #[test]
    fn running_jobs_count_toward_the_user_limit_and_finished_ones_do_not() {
        let limits = SubmitLimits {
            max_user_priority: 0,
            max_jobs_per_user: 2,
            max_queued: 4,
        };
        let t = table(&[
            (1, 1000, JobState::Pending),
            (2, 1000, JobState::Running),
            (3, 1001, JobState::Pending),
            (4, 1001, JobState::Succeeded),
        ]);
        let none = Earlier::default();
        let e = check(&limits, &t, 1000, 1, none).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("limit of 2 per user"), "{}", e.message);
        check(&limits, &t, 1001, 1, none).unwrap();
        // Earlier jobs of the same batch count.
        let one = Earlier { mine: 1, all: 1 };
        assert!(check(&limits, &t, 1001, 1, one).is_err());
        // Root has no per-user limit, but the total cap (pending jobs) holds.
        check(&limits, &t, 0, 2, none).unwrap();
        let e = check(&limits, &t, 0, 3, none).unwrap_err();
        assert!(e.message.contains("limit of 4"), "{}", e.message);
        let e = check_priority(&limits, 1000, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }
}
