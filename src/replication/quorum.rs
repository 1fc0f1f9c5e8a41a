//! The confirmed watermark: how far the journal is held by the master and enough slaves.
//! Pure: no I/O, no clocks.

use std::collections::HashMap;

use crate::store::Position;

/// Tracks the master's own held position and each connected slave's acknowledged position.
///
/// A position is confirmed once the master and `replicas / 2` slaves hold it, that is once the
/// (replicas/2 + 1)-th highest of all these positions reaches it, with the master among them
/// (a slave may be ahead of the master's fsync, but the master's own position always counts).
/// The watermark never goes backwards; a slave that disconnects stops counting. With
/// `replicas <= 1` it is the master's own position.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    replicas: usize,
    local: Position,
    slaves: HashMap<String, Position>,
    confirmed: Position,
}

impl QuorumTracker {
    pub fn new(replicas: usize) -> QuorumTracker {
        QuorumTracker {
            replicas,
            local: Position(0),
            slaves: HashMap::new(),
            confirmed: Position(0),
        }
    }

    /// Slave acknowledgements needed besides the master.
    pub fn slaves_needed(&self) -> usize {
        self.replicas / 2
    }

    /// The master holds everything before `position`; returns the confirmed watermark.
    pub fn set_local(&mut self, position: Position) -> Position {
        self.local = self.local.max(position);
        self.recompute()
    }

    /// Slave `node` holds everything before `position`; returns the confirmed watermark.
    pub fn slave_acked(&mut self, node: &str, position: Position) -> Position {
        let acked = self.slaves.entry(node.to_string()).or_default();
        *acked = (*acked).max(position);
        self.recompute()
    }

    /// Slave `node` disconnected: it stops counting. The watermark stays where it is.
    pub fn slave_gone(&mut self, node: &str) -> Position {
        self.slaves.remove(node);
        self.confirmed
    }

    pub fn confirmed(&self) -> Position {
        self.confirmed
    }

    fn recompute(&mut self) -> Position {
        let needed = self.slaves_needed();
        let candidate = if needed == 0 {
            Some(self.local)
        } else {
            let mut acked: Vec<Position> = self.slaves.values().copied().collect();
            acked.sort_unstable_by(|a, b| b.cmp(a));
            acked.get(needed - 1).map(|&slave| slave.min(self.local))
        };
        if let Some(candidate) = candidate {
            self.confirmed = self.confirmed.max(candidate);
        }
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_replica_is_the_local_position() {
        let mut q = QuorumTracker::new(1);
        assert_eq!(q.set_local(Position(10)), Position(10));
        assert_eq!(q.slave_acked("a", Position(50)), Position(10));
        assert_eq!(q.set_local(Position(60)), Position(60));
    }

    #[test]
    fn three_replicas_need_the_master_and_one_slave() {
        let mut q = QuorumTracker::new(3);
        assert_eq!(q.set_local(Position(100)), Position(0));
        assert_eq!(q.slave_acked("a", Position(40)), Position(40));
        assert_eq!(q.slave_acked("b", Position(70)), Position(70));
        // A slave ahead of the master's own fsync does not confirm beyond the master.
        assert_eq!(q.slave_acked("b", Position(150)), Position(100));
        assert_eq!(q.set_local(Position(200)), Position(150));
    }

    #[test]
    fn five_replicas_need_two_slaves() {
        let mut q = QuorumTracker::new(5);
        q.set_local(Position(100));
        assert_eq!(q.slave_acked("a", Position(90)), Position(0));
        assert_eq!(q.slave_acked("b", Position(30)), Position(30));
        assert_eq!(q.slave_acked("c", Position(60)), Position(60));
        assert_eq!(q.slave_acked("d", Position(95)), Position(90));
    }

    #[test]
    fn never_goes_backwards_and_disconnected_slaves_stop_counting() {
        let mut q = QuorumTracker::new(3);
        q.set_local(Position(100));
        assert_eq!(q.slave_acked("a", Position(80)), Position(80));
        assert_eq!(q.slave_gone("a"), Position(80));
        assert_eq!(
            q.set_local(Position(200)),
            Position(80),
            "no slave: no progress"
        );
        // A reconnected slave that acks less does not move the watermark back.
        assert_eq!(q.slave_acked("a", Position(50)), Position(80));
        assert_eq!(q.slave_acked("a", Position(120)), Position(120));
        // Acks never decrease per slave either.
        assert_eq!(q.slave_acked("a", Position(10)), Position(120));
        // The local position never decreases.
        assert_eq!(q.set_local(Position(5)), Position(120));
    }

    #[test]
    fn two_replicas_need_one_slave() {
        let mut q = QuorumTracker::new(2);
        q.set_local(Position(10));
        assert_eq!(q.confirmed(), Position(0));
        assert_eq!(q.slave_acked("a", Position(10)), Position(10));
    }
}
