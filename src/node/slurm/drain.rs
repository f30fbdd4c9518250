//! Draining the node in Slurm while batch has no core, and resuming it after: only a drain
//! lowsched made itself is ever undone, recognised by the reason it wrote.

use std::time::Duration;

use crate::decide::slurm::{DrainAction, NodeDrain, drain_decision};
use crate::model::job::Timestamp;

use super::scontrol::NodeStatus;
use super::worker::Request;

/// Every reason lowsched writes starts with this; a drain with any other reason is not ours.
pub const REASON_PREFIX: &str = "lowsched:";
pub const REASON: &str = "lowsched: the protected service holds every batch core";

/// Whether a node reason is one lowsched wrote.
pub fn is_ours(reason: &str) -> bool {
    reason.starts_with(REASON_PREFIX)
}

/// The drain side of the Slurm agent: when batch lost its last core, what lowsched did, and
/// what Slurm last said about the node.
#[derive(Debug)]
pub struct Drainer {
    hold: Duration,
    no_core_since: Option<Timestamp>,
    state: NodeDrain,
    /// A request sent and not yet answered: nothing more is sent until it is.
    in_flight: bool,
    /// The node is drained for someone else's reason: lowsched neither drains nor resumes it.
    foreign: bool,
}

impl Drainer {
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            no_core_since: None,
            state: NodeDrain::Open,
            in_flight: false,
            foreign: false,
        }
    }

    /// Whether lowsched's drain is on the node (as far as it knows).
    pub fn drained(&self) -> bool {
        self.state == NodeDrain::Drained
    }

    /// Takes in what `sinfo` said. A node drained with a reason lowsched did not write is left
    /// alone; lowsched's own drain that an administrator resumed is forgotten, and batch's
    /// wait for a core starts over (so the node is not drained again at once).
    pub fn observe(&mut self, node: &NodeStatus, now: Timestamp) {
        let drained = node.draining_or_drained();
        self.foreign = drained && !is_ours(&node.reason);
        if self.in_flight {
            return;
        }
        match (self.state, drained) {
            (NodeDrain::Open, true) if is_ours(&node.reason) => self.state = NodeDrain::Drained,
            (NodeDrain::Drained, false) => {
                self.state = NodeDrain::Open;
                self.no_core_since = self.no_core_since.map(|_| now);
            }
            (NodeDrain::Drained, true) if self.foreign => self.state = NodeDrain::Open,
            _ => {}
        }
    }

    /// Takes in the answer to a drain or undrain request.
    pub fn answered(&mut self, request: &Request, ok: bool) {
        self.in_flight = false;
        match (request, ok) {
            (Request::Drain(_), true) => self.state = NodeDrain::Drained,
            (Request::Undrain, true) => self.state = NodeDrain::Open,
            _ => {}
        }
    }

    /// Whether batch has a core now; returns the request to send, if one is due.
    pub fn update(&mut self, batch_has_core: bool, now: Timestamp) -> Option<Request> {
        if batch_has_core {
            self.no_core_since = None;
        } else if self.no_core_since.is_none() {
            self.no_core_since = Some(now);
        }
        if self.in_flight || self.foreign {
            return None;
        }
        let request = match drain_decision(self.state, self.no_core_since, now, self.hold)? {
            DrainAction::Drain => Request::Drain(REASON.to_string()),
            DrainAction::Resume => Request::Undrain,
        };
        self.in_flight = true;
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: &str, reason: &str) -> NodeStatus {
        NodeStatus {
            state: state.into(),
            reason: reason.into(),
        }
    }

    const HOLD: Duration = Duration::from_secs(2);

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn drains_after_the_hold_and_resumes_when_batch_has_a_core() {
        let mut d = Drainer::new(HOLD);
        assert_eq!(d.update(false, t(0)), None);
        assert_eq!(d.update(false, t(1_999)), None);
        let r = d.update(false, t(2_000)).unwrap();
        assert_eq!(r, Request::Drain(REASON.into()));
        assert_eq!(d.update(false, t(2_500)), None, "one request at a time");
        d.answered(&r, true);
        assert!(d.drained());
        assert_eq!(d.update(true, t(3_000)), Some(Request::Undrain));
        d.answered(&Request::Undrain, true);
        assert!(!d.drained());
    }

    #[test]
    fn a_node_drained_for_another_reason_is_never_resumed_nor_drained() {
        let mut d = Drainer::new(HOLD);
        d.observe(&node("drained", "bad DIMM [admin@10:00]"), t(0));
        assert_eq!(d.update(false, t(0)), None);
        assert_eq!(d.update(false, t(60_000)), None);
        assert_eq!(d.update(true, t(61_000)), None);
    }

    #[test]
    fn an_administrator_replacing_lowscheds_reason_takes_the_node_over() {
        let mut d = Drainer::new(HOLD);
        d.update(false, t(0));
        let r = d.update(false, t(2_000)).unwrap();
        d.answered(&r, true);
        d.observe(&node("drained", "maintenance"), t(3_000));
        assert!(!d.drained());
        assert_eq!(
            d.update(true, t(4_000)),
            None,
            "not lowsched's drain to undo"
        );
    }

    #[test]
    fn an_administrator_resuming_lowscheds_drain_restarts_the_hold() {
        let mut d = Drainer::new(HOLD);
        d.update(false, t(0));
        let r = d.update(false, t(2_000)).unwrap();
        d.answered(&r, true);
        d.observe(&node("mixed", "none"), t(5_000));
        assert!(!d.drained());
        assert_eq!(d.update(false, t(6_000)), None);
        assert!(matches!(d.update(false, t(7_000)), Some(Request::Drain(_))));
    }

    #[test]
    fn a_failed_drain_is_retried_and_lowscheds_reason_after_a_restart_is_recognised() {
        let mut d = Drainer::new(HOLD);
        d.update(false, t(0));
        let r = d.update(false, t(2_000)).unwrap();
        d.answered(&r, false);
        assert!(!d.drained());
        assert!(d.update(false, t(2_100)).is_some());
        let mut fresh = Drainer::new(HOLD);
        fresh.observe(&node("drained", REASON), t(0));
        assert!(fresh.drained());
        assert_eq!(fresh.update(true, t(1)), Some(Request::Undrain));
    }
}
