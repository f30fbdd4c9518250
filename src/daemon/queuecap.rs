//! Caps on waiting jobs, checked at submit: one user's pending jobs (root is not capped) and
//! all pending jobs. A submit over either is refused whole, with the cap in the message.
//!
//! The caps are set once at start-up ([`configure`]); until then nothing is capped.

use std::sync::OnceLock;

use crate::api::protocol::{ErrorCode, ProtocolError};
use crate::model::jobstate::JobState;

use super::jobs::JobTable;

/// Pending jobs per non-root user, and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCaps {
    pub per_user: usize,
    pub total: usize,
}

static CAPS: OnceLock<QueueCaps> = OnceLock::new();

/// Sets the caps for this process (first call wins).
pub fn configure(caps: QueueCaps) {
    let _ = CAPS.set(caps);
}

/// Jobs accepted earlier in the same request batch, not yet in the table: `uid`'s and all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Earlier {
    pub mine: usize,
    pub all: usize,
}

/// Refuses adding `adding` pending jobs for `uid` when a cap would be passed. Not an error
/// code clients retry on (`busy`): the queue drains on the scale of jobs, not of seconds.
pub fn check(
    table: &JobTable,
    uid: u32,
    adding: usize,
    earlier: Earlier,
) -> Result<(), ProtocolError> {
    let Some(caps) = CAPS.get() else {
        return Ok(());
    };
    check_against(caps, table, uid, adding, earlier)
}

fn check_against(
    caps: &QueueCaps,
    table: &JobTable,
    uid: u32,
    adding: usize,
    earlier: Earlier,
) -> Result<(), ProtocolError> {
    let (mut mine, mut all) = (0, 0);
    for r in table.iter().filter(|r| r.state == JobState::Pending) {
        all += 1;
        if r.owner.uid == uid {
            mine += 1;
        }
    }
    let (mine, all) = (mine + earlier.mine, all + earlier.all);
    if uid != 0 && mine + adding > caps.per_user {
        return Err(ProtocolError::new(
            ErrorCode::Conflict,
            format!(
                "too many queued jobs for uid {uid}: {mine} pending, {adding} more would pass the \
                 limit of {} per user; nothing was submitted",
                caps.per_user
            ),
        ));
    }
    if all + adding > caps.total {
        return Err(ProtocolError::new(
            ErrorCode::Conflict,
            format!(
                "too many queued jobs: {all} pending, {adding} more would pass the limit of {}; \
                 nothing was submitted",
                caps.total
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{JobId, JobSpec, Timestamp};
    use crate::store::journal::Owner;

    use super::super::jobs::JobRecord;

    fn table(jobs: &[(u64, u32)]) -> JobTable {
        JobTable::of(jobs.iter().map(|&(id, uid)| {
            let owner = Owner {
                uid,
                gid: uid,
                user: uid.to_string(),
            };
            let spec = JobSpec::new(vec!["true".into()]);
            JobRecord::new(JobId(id), spec, owner, Timestamp(0))
        }))
    }

    #[test]
    fn per_user_and_total_caps_refuse_with_the_limit() {
        let caps = QueueCaps {
            per_user: 2,
            total: 4,
        };
        let t = table(&[(1, 1000), (2, 1000), (3, 1001)]);
        let none = Earlier::default();
        let e = check_against(&caps, &t, 1000, 1, none).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("limit of 2 per user"), "{}", e.message);
        check_against(&caps, &t, 1001, 1, none).unwrap();
        // Earlier jobs of the same batch count.
        let one = Earlier { mine: 1, all: 1 };
        assert!(check_against(&caps, &t, 1001, 1, one).is_err());
        // Root is not capped per user, but by the total.
        check_against(&caps, &t, 0, 1, none).unwrap();
        let e = check_against(&caps, &t, 0, 2, none).unwrap_err();
        assert!(e.message.contains("limit of 4"), "{}", e.message);
    }
}
