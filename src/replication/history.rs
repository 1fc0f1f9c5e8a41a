//! Where two journals stop agreeing. Pure.
//!
//! Only one master ever writes a given epoch, and it writes it in order at the same positions
//! on every node that copies it. So two journals agree on a stretch written under one epoch
//! wherever both hold it, and the longest common prefix is found by walking the epochs both
//! have, with the same start, until the first that differs or ends earlier on one side.

use crate::store::{EpochMark, Position};

#[derive(Debug, Clone, Copy)]
struct Interval {
    epoch: u64,
    start: Position,
    end: Position,
}

fn intervals(history: &[EpochMark], end: Position) -> Vec<Interval> {
    history
        .iter()
        .enumerate()
        .map(|(i, mark)| Interval {
            epoch: mark.epoch,
            start: mark.start,
            end: history.get(i + 1).map_or(end, |next| next.start),
        })
        .collect()
}

/// The end of the longest common prefix of the master's journal (`master_history`, ending at
/// `master_end`) and the slave's: the slave keeps what is before it and drops the rest.
/// `Position(0)` when nothing can be shown to be shared.
///
/// A history may start later than the log it describes (older segments released, or a slave
/// that was reset for a snapshot): only the epoch each side holds first may then start at
/// different positions on the two sides; what either side no longer holds is not compared.
/// The caller checks that the result is retained on both sides (a snapshot otherwise).
pub fn shared_prefix(
    master_history: &[EpochMark],
    master_end: Position,
    slave_history: &[EpochMark],
    slave_end: Position,
) -> Position {
    let master = intervals(master_history, master_end);
    let slave = intervals(slave_history, slave_end);
    let (Some(master_oldest), Some(slave_oldest)) = (master.first(), slave.first()) else {
        return Position(0);
    };
    // What one side holds entirely before the other's oldest position cannot be compared.
    let mut i = master
        .iter()
        .take_while(|m| m.end <= slave_oldest.start && m.end < master_end)
        .count();
    let mut j = slave
        .iter()
        .take_while(|s| s.end <= master_oldest.start && s.end < slave_end)
        .count();
    let mut shared = Position(0);
    let mut first = true;
    while let (Some(m), Some(s)) = (master.get(i), slave.get(j)) {
        if m.epoch != s.epoch {
            break;
        }
        if m.start != s.start {
            // Only the first epoch compared may start at different positions, and only where
            // that side's history begins (its older records are gone).
            let truncated_side_first = if m.start > s.start { i == 0 } else { j == 0 };
            if !(first && truncated_side_first) {
                break;
            }
        }
        first = false;
        shared = m.end.min(s.end);
        if m.end != s.end {
            break;
        }
        i += 1;
        j += 1;
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(marks: &[(u64, u64)]) -> Vec<EpochMark> {
        marks
            .iter()
            .map(|&(epoch, start)| EpochMark {
                epoch,
                start: Position(start),
            })
            .collect()
    }

    fn shared(m: &[(u64, u64)], m_end: u64, s: &[(u64, u64)], s_end: u64) -> u64 {
        shared_prefix(&h(m), Position(m_end), &h(s), Position(s_end)).0
    }

    #[test]
    fn identical_logs_share_everything() {
        let log = [(1, 0), (2, 500), (4, 900)];
        assert_eq!(shared(&log, 1200, &log, 1200), 1200);
    }

    #[test]
    fn a_slave_behind_shares_its_whole_log() {
        let master = [(1, 0), (2, 500), (4, 900)];
        assert_eq!(shared(&master, 1200, &[(1, 0), (2, 500)], 700), 700);
        assert_eq!(shared(&master, 1200, &[(1, 0)], 300), 300);
        assert_eq!(
            shared(&master, 1200, &[(1, 0), (2, 500), (4, 900)], 1000),
            1000
        );
    }

    #[test]
    fn a_slave_ahead_in_the_same_epoch_is_cut_where_the_master_moved_on() {
        // The old master (epoch 2) wrote 500..800 but the new master (epoch 4) only had
        // 500..600 of it: the slave's extra records were never confirmed.
        let master = [(1, 0), (2, 500), (4, 600)];
        assert_eq!(shared(&master, 1000, &[(1, 0), (2, 500)], 800), 600);
        // Same epoch, master ahead and alive: the slave is simply behind.
        assert_eq!(
            shared(&[(1, 0), (2, 500)], 900, &[(1, 0), (2, 500)], 800),
            800
        );
        // Slave ahead of the master in the master's own epoch cannot happen, but is cut too.
        assert_eq!(shared(&[(1, 0)], 400, &[(1, 0)], 800), 400);
    }

    #[test]
    fn an_epoch_the_master_never_saw_is_truncated() {
        // The slave followed a master of epoch 3 that the new master (epoch 4) never heard of;
        // epoch 3 began at 700, before the master's epoch-2 records ended (at 900).
        let master = [(1, 0), (2, 500), (4, 900)];
        assert_eq!(
            shared(&master, 1200, &[(1, 0), (2, 500), (3, 700)], 1500),
            700
        );
        // Epoch 3 began exactly where the master's next epoch starts.
        assert_eq!(
            shared(&master, 1200, &[(1, 0), (2, 500), (3, 900)], 1500),
            900
        );
        // Divergence in the very first epoch.
        assert_eq!(shared(&[(1, 0)], 100, &[(2, 0)], 100), 0);
    }

    #[test]
    fn an_empty_slave_shares_nothing() {
        assert_eq!(shared(&[(1, 0)], 100, &[], 0), 0);
        assert_eq!(shared(&[], 0, &[], 0), 0);
        assert_eq!(shared(&[], 0, &[(1, 0)], 50), 0);
    }

    #[test]
    fn released_history_is_not_compared() {
        // The master released everything before 1000 (epoch 2 started at 500).
        let master = [(2, 1000), (4, 1500)];
        assert_eq!(shared(&master, 2000, &[(1, 0), (2, 500)], 1200), 1200);
        assert_eq!(shared(&master, 2000, &[(1, 0), (2, 500)], 1800), 1500);
        // A slave reset at 1200 for a snapshot that got part of it.
        assert_eq!(shared(&master, 2000, &[(2, 1200)], 1300), 1300);
        // A slave whose log ends before the master's oldest shares nothing provable.
        assert_eq!(shared(&master, 2000, &[(1, 0)], 400), 0);
        // Different epochs where the master's history begins: nothing provable.
        assert_eq!(shared(&master, 2000, &[(1, 0)], 1100), 0);
    }
}
