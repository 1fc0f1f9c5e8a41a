//! Where two journals stop agreeing. Pure.
//!
//! Only one master ever writes a given epoch, and it writes it in order at the same positions
//! on every node that copies it; a slave receives a master's records only after cutting its
//! journal back to what it shares with that master. So two journals that both hold records of
//! an epoch agree on everything before the end of the shorter stretch of it, and the longest
//! common prefix ends there for the newest epoch both hold.
//!
//! Where an epoch *starts* is not compared: a master's mark is where it wrote the epoch's first
//! record, while a slave that received a snapshot over a released range notes the epoch where
//! its first retained record is, and either side may have released older segments since.

use std::collections::HashMap;

use crate::store::{EpochMark, Position};

/// Where each epoch's records end in a journal (the next mark's start, or the journal's end),
/// by epoch, for the first mark of each: one pass, where a lookup per mark would make a long
/// history (a slave's, read from the network) cost its length squared.
fn epoch_ends(history: &[EpochMark], end: Position) -> HashMap<u64, Position> {
    let mut ends = HashMap::with_capacity(history.len());
    for (i, mark) in history.iter().enumerate() {
        ends.entry(mark.epoch)
            .or_insert_with(|| history.get(i + 1).map_or(end, |next| next.start));
    }
    ends
}

/// The end of the longest common prefix of the master's journal (`master_history`, ending at
/// `master_end`) and the slave's: the slave keeps what is before it and drops the rest.
/// `Position(0)` when the two hold no epoch in common, so nothing can be shown to be shared.
///
/// A history may start later than the log it describes (older segments released, or a slave
/// that was reset for a snapshot). The caller checks that the result is retained on both
/// sides (a snapshot otherwise).
pub fn shared_prefix(
    master_history: &[EpochMark],
    master_end: Position,
    slave_history: &[EpochMark],
    slave_end: Position,
) -> Position {
    let (master, slave) = (
        epoch_ends(master_history, master_end),
        epoch_ends(slave_history, slave_end),
    );
    slave_history
        .iter()
        .rev()
        .find_map(|mark| Some((*master.get(&mark.epoch)?).min(*slave.get(&mark.epoch)?)))
        .unwrap_or(Position(0))
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

    /// A history of 50,000 epochs (as a slave may send one) is compared in one pass each:
    /// looking each epoch up afresh took 50,000 scans of up to 50,000 marks.
    #[test]
    fn long_histories_are_compared_in_one_pass() {
        let log: Vec<(u64, u64)> = (1..=50_000).map(|e| (e, e * 10)).collect();
        assert_eq!(shared(&log, 500_005, &log, 500_005), 500_005);
        let mut diverged = log.clone();
        diverged.last_mut().unwrap().0 = 60_000;
        assert_eq!(shared(&log, 500_005, &diverged, 500_009), 500_000);
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

    #[test]
    fn an_epoch_start_seen_at_different_positions_still_matches() {
        // The master wrote epoch 2's first record at 500 and released 500..900 since; the
        // slave received a snapshot that skipped that range and noted epoch 2 at 900. Both
        // then hold the master's epoch-3 records: everything up to the slave's end is shared.
        let master = [(1, 0), (2, 500), (3, 1500)];
        let slave = [(1, 0), (2, 900), (3, 1500)];
        assert_eq!(shared(&master, 2000, &slave, 2000), 2000);
        assert_eq!(shared(&master, 2000, &slave, 1700), 1700);
        // The same with the slave as the master: the starts are not compared either way.
        assert_eq!(shared(&slave, 2000, &master, 1800), 1800);
        // But a slave still in epoch 2 past the master's move to epoch 3 is cut there.
        assert_eq!(shared(&master, 2000, &[(1, 0), (2, 900)], 1800), 1500);
    }
}
