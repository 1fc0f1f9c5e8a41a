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
///
/// A slave counts once, by node, and only through its current connection (session): what an
/// earlier connection of the node acknowledged never counts for the newer one, which may have
/// been cut back at its login.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    replicas: usize,
    local: Position,
    /// Per slave node: its current session and what that session acknowledged.
    slaves: HashMap<String, (u64, Position)>,
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

    /// Slave `node` logged in on connection `session` (numbered upwards): it counts from
    /// nothing, whatever an earlier session acknowledged. A session older than the one counted
    /// is ignored. The watermark stays where it is.
    pub fn slave_connected(&mut self, node: &str, session: u64) -> Position {
        if self
            .slaves
            .get(node)
            .is_none_or(|&(current, _)| session > current)
        {
            self.slaves.insert(node.to_string(), (session, Position(0)));
        }
        self.confirmed
    }

    /// Session `session` of slave `node` holds everything before `position`; returns the
    /// confirmed watermark. An ack of any other session than the node's current one is ignored.
    pub fn slave_acked(&mut self, node: &str, session: u64, position: Position) -> Position {
        match self.slaves.get_mut(node) {
            Some((current, acked)) if *current == session => *acked = (*acked).max(position),
            _ => return self.confirmed,
        }
        self.recompute()
    }

    /// Session `session` of slave `node` disconnected: the node stops counting, unless a newer
    /// session replaced it. The watermark stays where it is.
    pub fn slave_gone(&mut self, node: &str, session: u64) -> Position {
        if self
            .slaves
            .get(node)
            .is_some_and(|&(current, _)| current == session)
        {
            self.slaves.remove(node);
        }
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
            let mut acked: Vec<Position> = self.slaves.values().map(|&(_, acked)| acked).collect();
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
        q.slave_connected("a", 1);
        assert_eq!(q.slave_acked("a", 1, Position(50)), Position(10));
        assert_eq!(q.set_local(Position(60)), Position(60));
    }

    #[test]
    fn three_replicas_need_the_master_and_one_slave() {
        let mut q = QuorumTracker::new(3);
        assert_eq!(q.set_local(Position(100)), Position(0));
        q.slave_connected("a", 1);
        q.slave_connected("b", 2);
        assert_eq!(q.slave_acked("a", 1, Position(40)), Position(40));
        assert_eq!(q.slave_acked("b", 2, Position(70)), Position(70));
        // A slave ahead of the master's own fsync does not confirm beyond the master.
        assert_eq!(q.slave_acked("b", 2, Position(150)), Position(100));
        assert_eq!(q.set_local(Position(200)), Position(150));
    }

    #[test]
    fn five_replicas_need_two_slaves() {
        let mut q = QuorumTracker::new(5);
        q.set_local(Position(100));
        for (session, node) in ["a", "b", "c", "d"].into_iter().enumerate() {
            q.slave_connected(node, session as u64);
        }
        assert_eq!(q.slave_acked("a", 0, Position(90)), Position(0));
        assert_eq!(q.slave_acked("b", 1, Position(30)), Position(30));
        assert_eq!(q.slave_acked("c", 2, Position(60)), Position(60));
        assert_eq!(q.slave_acked("d", 3, Position(95)), Position(90));
    }

    #[test]
    fn never_goes_backwards_and_disconnected_slaves_stop_counting() {
        let mut q = QuorumTracker::new(3);
        q.set_local(Position(100));
        q.slave_connected("a", 1);
        assert_eq!(q.slave_acked("a", 1, Position(80)), Position(80));
        assert_eq!(q.slave_gone("a", 1), Position(80));
        assert_eq!(
            q.set_local(Position(200)),
            Position(80),
            "no slave: no progress"
        );
        // A reconnected slave that acks less does not move the watermark back.
        q.slave_connected("a", 2);
        assert_eq!(q.slave_acked("a", 2, Position(50)), Position(80));
        assert_eq!(q.slave_acked("a", 2, Position(120)), Position(120));
        // Acks never decrease per slave either.
        assert_eq!(q.slave_acked("a", 2, Position(10)), Position(120));
        // The local position never decreases.
        assert_eq!(q.set_local(Position(5)), Position(120));
    }

    #[test]
    fn two_replicas_need_one_slave() {
        let mut q = QuorumTracker::new(2);
        q.set_local(Position(10));
        assert_eq!(q.confirmed(), Position(0));
        q.slave_connected("a", 1);
        assert_eq!(q.slave_acked("a", 1, Position(10)), Position(10));
    }

    /// A slave that logs in again (and may have cut its journal back at that login) counts
    /// only what its new connection acknowledges: a late ack of the replaced connection, or
    /// its end, changes nothing for the new one.
    #[test]
    fn a_replaced_connection_of_a_slave_does_not_count() {
        let mut q = QuorumTracker::new(3);
        q.set_local(Position(200));
        q.slave_connected("a", 1);
        assert_eq!(q.slave_acked("a", 1, Position(80)), Position(80));
        q.slave_connected("a", 2);
        assert_eq!(
            q.slave_acked("a", 1, Position(150)),
            Position(80),
            "a late ack of the replaced connection counted"
        );
        assert_eq!(q.slave_acked("a", 2, Position(60)), Position(80));
        assert_eq!(q.slave_gone("a", 1), Position(80));
        assert_eq!(
            q.slave_acked("a", 2, Position(120)),
            Position(120),
            "the replaced connection's end dropped the new one"
        );
        // A login of an older connection, late, replaces nothing.
        q.slave_connected("a", 1);
        assert_eq!(q.slave_acked("a", 2, Position(130)), Position(130));
    }

    /// Two connections of one node are one slave: with five replicas, two slaves are needed.
    #[test]
    fn a_slave_counts_once_whatever_its_connections() {
        let mut q = QuorumTracker::new(5);
        q.set_local(Position(100));
        q.slave_connected("a", 1);
        q.slave_acked("a", 1, Position(100));
        q.slave_connected("a", 2);
        assert_eq!(q.slave_acked("a", 2, Position(100)), Position(0));
        q.slave_connected("b", 3);
        assert_eq!(q.slave_acked("b", 3, Position(90)), Position(90));
    }
}
