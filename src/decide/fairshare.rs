//! Fair share between users: how much each user used the cores lately, and the order that
//! gives pending jobs of equal rank.
//!
//! Problem: the queue orders jobs by (rank, submission), so one user's 10 000 jobs submitted
//! first keep another user's single job of the same priority waiting behind all of them.
//!
//! Approach: the daemon charges each running job's owner its cores × seconds as time passes
//! ([`Usage::advance`]); a user's usage decays exponentially, halving every `half_life`, so use
//! long ago counts for little. Within one rank the engine takes pending jobs in *rounds*: a
//! user's jobs running now count as rounds already taken, then round r holds each user's next
//! pending job (in submission order); within a round the user with the least decayed usage goes
//! first (ties: lower uid). So a user with nothing running waits behind at most one job of each
//! other user of the same rank with equal or less recent use, whatever they queued; as the
//! others' jobs run their usage grows, so even a user who used a lot lately gets a turn once
//! the others have caught up. Ranks still come first: fair share never lets a lower priority
//! pass a higher one.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::job::Timestamp;

/// Decayed usage below this (core-seconds) is forgotten, so the map holds only recent users.
const FORGET_BELOW: f64 = 1e-3;

/// Decayed core-seconds per user. Pure: the caller passes the time in.
#[derive(Clone, Debug)]
pub struct Usage {
    half_life: Duration,
    at: Option<Timestamp>,
    users: BTreeMap<u32, f64>,
}

impl Usage {
    /// Usage that halves every `half_life` (zero: only the last interval counts).
    pub fn new(half_life: Duration) -> Self {
        Self {
            half_life,
            at: None,
            users: BTreeMap::new(),
        }
    }

    pub fn set_half_life(&mut self, half_life: Duration) {
        self.half_life = half_life;
    }

    /// Moves to `now`: decays every user's usage over the time since the last call, then
    /// charges each `(uid, cores)` of `running` cores × that time (the cores a job holds now
    /// stand for the whole interval: the daemon calls this every policy tick). The first call
    /// only sets the clock. A clock going back charges nothing.
    pub fn advance(&mut self, now: Timestamp, running: impl IntoIterator<Item = (u32, usize)>) {
        let Some(at) = self.at.replace(now) else {
            return;
        };
        let dt = now.since(at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let keep = self.decay_factor(dt);
        self.users.retain(|_, used| {
            *used *= keep;
            *used >= FORGET_BELOW
        });
        for (uid, cores) in running {
            *self.users.entry(uid).or_insert(0.0) += cores as f64 * dt;
        }
    }

    fn decay_factor(&self, dt: f64) -> f64 {
        let half = self.half_life.as_secs_f64();
        if half <= 0.0 {
            return 0.0;
        }
        (-dt / half).exp2()
    }

    /// `uid`'s decayed core-seconds as of the last [`advance`](Self::advance).
    pub fn of(&self, uid: u32) -> f64 {
        self.users.get(&uid).copied().unwrap_or(0.0)
    }

    /// Users ranked by usage, least first, for the engine.
    pub fn order(&self) -> UserOrder {
        let mut ranked: Vec<(u32, f64)> = self.users.iter().map(|(&u, &c)| (u, c)).collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut by_uid: Vec<(u32, u32)> = ranked
            .iter()
            .enumerate()
            .map(|(i, &(uid, _))| (uid, i as u32 + 1))
            .collect();
        by_uid.sort_unstable();
        UserOrder { by_uid }
    }
}

/// Users' places in the fair-share order: 0 for a user with no recent usage, then 1, 2, ...
/// by increasing usage. The engine breaks ties between equal places by uid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserOrder {
    /// (uid, place), sorted by uid.
    by_uid: Vec<(u32, u32)>,
}

/// The order without any usage: every user at place 0 (rounds by uid).
pub static NO_USAGE: UserOrder = UserOrder { by_uid: Vec::new() };

impl UserOrder {
    /// `uid`'s place: lower goes first within a round.
    pub fn place(&self, uid: u32) -> u32 {
        self.by_uid
            .binary_search_by_key(&uid, |&(u, _)| u)
            .map_or(0, |i| self.by_uid[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Timestamp {
        Timestamp(s * 1000)
    }

    #[test]
    fn charges_cores_times_seconds_and_halves_each_half_life() {
        let mut u = Usage::new(Duration::from_secs(100));
        u.advance(at(0), [(1000, 4)]);
        assert_eq!(u.of(1000), 0.0, "the first call only sets the clock");
        u.advance(at(10), [(1000, 4), (1001, 1)]);
        assert!((u.of(1000) - 40.0).abs() < 1e-9);
        assert!((u.of(1001) - 10.0).abs() < 1e-9);
        // 100 s idle: halved.
        u.advance(at(110), []);
        assert!((u.of(1000) - 20.0).abs() < 1e-9, "{}", u.of(1000));
        assert!((u.of(1001) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn old_usage_is_forgotten_and_a_clock_going_back_charges_nothing() {
        let mut u = Usage::new(Duration::from_secs(1));
        u.advance(at(0), []);
        u.advance(at(1), [(7, 1)]);
        u.advance(at(0), [(7, 100)]);
        assert!((u.of(7) - 1.0).abs() < 1e-9);
        u.advance(at(100), []);
        assert_eq!(u.of(7), 0.0);
        assert_eq!(u.order(), UserOrder::default());
    }

    #[test]
    fn order_puts_the_least_recent_user_first() {
        let mut u = Usage::new(Duration::from_secs(3600));
        u.advance(at(0), []);
        u.advance(at(10), [(5, 8), (6, 1), (9, 2)]);
        let o = u.order();
        assert_eq!(o.place(42), 0, "no usage");
        assert_eq!((o.place(6), o.place(9), o.place(5)), (1, 2, 3));
        assert_eq!(NO_USAGE.place(5), 0);
    }
}
