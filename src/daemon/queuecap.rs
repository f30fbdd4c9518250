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
    check_counts(caps, uid, adding, mine + earlier.mine, all + earlier.all)
}

/// The caps against `mine` and `all` pending jobs.
fn check_counts(
    caps: &QueueCaps,
    uid: u32,
    adding: usize,
    mine: usize,
    all: usize,
) -> Result<(), ProtocolError> {
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

    #[test]
    fn per_user_and_total_caps_refuse_with_the_limit() {
        let caps = QueueCaps {
            per_user: 2,
            total: 4,
        };
        // uid 1000 has 2 pending, 3 in all.
        let e = check_counts(&caps, 1000, 1, 2, 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("limit of 2 per user"), "{}", e.message);
        check_counts(&caps, 1001, 1, 1, 3).unwrap();
        assert!(check_counts(&caps, 1001, 1, 2, 4).is_err());
        // Root is not capped per user, but by the total.
        check_counts(&caps, 0, 1, 9, 3).unwrap();
        let e = check_counts(&caps, 0, 2, 9, 3).unwrap_err();
        assert!(e.message.contains("limit of 4"), "{}", e.message);
    }
}
