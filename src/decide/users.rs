//! What one user may ask of the queue, checked at submit: the priority cap for non-root users,
//! the per-user job limit and the cap on all pending jobs.
//!
//! A priority above the cap is refused, not clamped: a job that silently runs at another
//! priority than asked would surprise its owner. Root (uid 0) may set any priority and has no
//! per-user job limit; the total cap applies to everybody (it bounds the daemon's memory).

/// The limits (config `policy.max_user_priority`, `jobs.max_jobs_per_user`, `jobs.max_queued`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubmitLimits {
    /// Highest `priority` a non-root user may set.
    pub max_user_priority: i32,
    /// Jobs one non-root user may have pending, running or paused at once.
    pub max_jobs_per_user: usize,
    /// Pending jobs in all.
    pub max_queued: usize,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        Self {
            max_user_priority: 100,
            max_jobs_per_user: 10_000,
            max_queued: 100_000,
        }
    }
}

/// What the queue holds when a submit arrives (including jobs accepted earlier in the same
/// request batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    /// The submitting user's jobs that are pending, running or paused.
    pub mine: usize,
    /// Pending jobs of everybody.
    pub queued: usize,
}

/// Why a submit was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "priority {asked} is above {cap}, the highest a user other than root may set \
         (policy.max_user_priority); use {cap} or less"
    )]
    Priority { asked: i32, cap: i32 },
    #[error(
        "uid {uid} has {have} jobs pending, running or paused; {adding} more would pass the \
         limit of {limit} per user (jobs.max_jobs_per_user); nothing was submitted"
    )]
    UserJobs {
        uid: u32,
        have: usize,
        adding: usize,
        limit: usize,
    },
    #[error(
        "{have} jobs are pending; {adding} more would pass the limit of {limit} \
         (jobs.max_queued); nothing was submitted"
    )]
    Queued {
        have: usize,
        adding: usize,
        limit: usize,
    },
}

impl SubmitLimits {
    /// Refuses a priority above the cap for a non-root `uid`.
    pub fn check_priority(&self, uid: u32, priority: i32) -> Result<(), LimitError> {
        if uid != 0 && priority > self.max_user_priority {
            return Err(LimitError::Priority {
                asked: priority,
                cap: self.max_user_priority,
            });
        }
        Ok(())
    }

    /// Refuses adding `adding` jobs for `uid` when the user's limit or the total cap would be
    /// passed.
    pub fn check_counts(&self, uid: u32, now: Holding, adding: usize) -> Result<(), LimitError> {
        if uid != 0 && now.mine.saturating_add(adding) > self.max_jobs_per_user {
            return Err(LimitError::UserJobs {
                uid,
                have: now.mine,
                adding,
                limit: self.max_jobs_per_user,
            });
        }
        if now.queued.saturating_add(adding) > self.max_queued {
            return Err(LimitError::Queued {
                have: now.queued,
                adding,
                limit: self.max_queued,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SubmitLimits = SubmitLimits {
        max_user_priority: 10,
        max_jobs_per_user: 2,
        max_queued: 4,
    };

    #[test]
    fn users_are_capped_in_priority_and_root_is_not() {
        LIMITS.check_priority(1000, 10).unwrap();
        LIMITS.check_priority(1000, -500).unwrap();
        let e = LIMITS.check_priority(1000, 11).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("priority 11") && text.contains("10"),
            "{text}"
        );
        assert!(text.contains("policy.max_user_priority"), "{text}");
        LIMITS.check_priority(0, i32::MAX).unwrap();
    }

    #[test]
    fn the_user_limit_counts_running_jobs_and_names_the_limit() {
        let one = Holding { mine: 1, queued: 0 };
        LIMITS.check_counts(1000, one, 1).unwrap();
        let e = LIMITS.check_counts(1000, one, 2).unwrap_err();
        assert_eq!(
            e,
            LimitError::UserJobs {
                uid: 1000,
                have: 1,
                adding: 2,
                limit: 2
            }
        );
        assert!(e.to_string().contains("limit of 2 per user"), "{e}");
        // Root has no per-user limit, but the total cap holds for everybody.
        LIMITS
            .check_counts(0, Holding { mine: 9, queued: 3 }, 1)
            .unwrap();
        let e = LIMITS
            .check_counts(0, Holding { mine: 9, queued: 3 }, 2)
            .unwrap_err();
        assert!(
            e.to_string().contains("limit of 4 (jobs.max_queued)"),
            "{e}"
        );
    }
}
