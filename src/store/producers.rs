//! The producer audit: the highest stored sequence of the most recently active producers, so
//! that a message re-sent after a reconnect (same producer id and sequence) is confirmed again
//! but not stored twice.
//!
//! It is bounded, as ActiveMQ's producer audit is: past [`MAX_AUDITED_PRODUCERS`] producers,
//! the one whose last stored message is the oldest is forgotten. A client re-sends only what
//! was unconfirmed when its connection dropped, seconds earlier, so only a producer silent
//! while that many others stored messages could see a re-send stored twice. Without the bound,
//! every connection's producer would stay in memory and in the index forever.
//!
//! Eviction depends only on the order of the calls, so every node that applies the same
//! journal forgets the same producers. It must never decide anything else: it does not know
//! where a message goes or whether it is persistent.
//!
//! The store also notes, per producer, the *holder*: the position of the journal record a
//! rebuild would learn the producer's entry from (see `state`). The broker's audit leaves it 0.

use std::collections::{BTreeSet, HashMap};

/// How many producers the audit remembers.
pub const MAX_AUDITED_PRODUCERS: usize = 65_536;

/// Producer id → highest stored sequence, for the most recently stamped producers.
#[derive(Debug, Clone)]
pub struct ProducerAudit {
    capacity: usize,
    /// Producer id → (highest sequence, stamp of the call that raised it, holder).
    by_id: HashMap<String, (u64, u64, u64)>,
    /// (stamp, producer id), oldest first.
    by_stamp: BTreeSet<(u64, String)>,
}

impl Default for ProducerAudit {
    fn default() -> Self {
        ProducerAudit::with_capacity(MAX_AUDITED_PRODUCERS)
    }
}

impl ProducerAudit {
    /// An empty audit remembering at most `capacity` producers (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        ProducerAudit {
            capacity: capacity.max(1),
            by_id: HashMap::new(),
            by_stamp: BTreeSet::new(),
        }
    }

    /// Whether `sequence` of `producer` is at or below the highest one recorded.
    pub fn is_duplicate(&self, producer: &str, sequence: u64) -> bool {
        self.by_id
            .get(producer)
            .is_some_and(|&(highest, _, _)| sequence <= highest)
    }

    /// `(highest sequence, stamp, holder)` of `producer`, if remembered.
    pub fn get(&self, producer: &str) -> Option<(u64, u64, u64)> {
        self.by_id.get(producer).copied()
    }

    /// Notes that the record at `holder` holds `producer`'s entry now.
    pub fn set_holder(&mut self, producer: &str, holder: u64) {
        if let Some(entry) = self.by_id.get_mut(producer) {
            entry.2 = holder;
        }
    }

    /// Records that `producer` stored `sequence`; `stamp` orders the calls (larger = more
    /// recent). Returns false, changing nothing, when the sequence is not higher than the one
    /// recorded. Producers forgotten to stay within the capacity are pushed onto `evicted`.
    pub fn record(
        &mut self,
        producer: &str,
        sequence: u64,
        stamp: u64,
        evicted: &mut Vec<(String, u64)>,
    ) -> bool {
        self.record_held(producer, sequence, stamp, 0, evicted)
    }

    /// [`ProducerAudit::record`], noting `holder`; `evicted` gets `(producer, holder)`.
    pub fn record_held(
        &mut self,
        producer: &str,
        sequence: u64,
        stamp: u64,
        holder: u64,
        evicted: &mut Vec<(String, u64)>,
    ) -> bool {
        match self.by_id.get_mut(producer) {
            Some((highest, _, _)) if *highest >= sequence => return false,
            Some((highest, old_stamp, old_holder)) => {
                self.by_stamp.remove(&(*old_stamp, producer.to_string()));
                *highest = sequence;
                *old_stamp = stamp;
                *old_holder = holder;
            }
            None => {
                self.by_id
                    .insert(producer.to_string(), (sequence, stamp, holder));
            }
        }
        self.by_stamp.insert((stamp, producer.to_string()));
        while self.by_id.len() > self.capacity {
            let Some((_, oldest)) = self.by_stamp.pop_first() else {
                break;
            };
            if let Some((_, _, holder)) = self.by_id.remove(&oldest) {
                evicted.push((oldest, holder));
            }
        }
        true
    }

    /// Every remembered producer as `(id, highest sequence, stamp)`, oldest stamp first.
    pub fn entries(&self) -> Vec<(String, u64, u64)> {
        self.by_stamp
            .iter()
            .map(|(stamp, id)| (id.clone(), self.by_id[id].0, *stamp))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_highest_sequence_and_reports_repeats() {
        let mut audit = ProducerAudit::default();
        let mut evicted = Vec::new();
        assert!(!audit.is_duplicate("p", 1));
        assert!(audit.record("p", 3, 1, &mut evicted));
        assert!(audit.is_duplicate("p", 1));
        assert!(audit.is_duplicate("p", 3));
        assert!(!audit.is_duplicate("p", 4));
        assert!(
            !audit.record("p", 2, 2, &mut evicted),
            "a lower sequence changes nothing"
        );
        assert_eq!(audit.entries(), vec![("p".to_string(), 3, 1)]);
        assert!(evicted.is_empty());
    }

    #[test]
    fn forgets_the_least_recently_stored_producer_past_its_capacity() {
        let mut audit = ProducerAudit::with_capacity(2);
        let mut evicted = Vec::new();
        audit.record("a", 1, 1, &mut evicted);
        audit.record("b", 1, 2, &mut evicted);
        // "a" stores again: now "b" is the oldest.
        audit.record("a", 2, 3, &mut evicted);
        audit.record("c", 1, 4, &mut evicted);
        assert_eq!(evicted, vec![("b".to_string(), 0)]);
        assert!(!audit.is_duplicate("b", 1), "forgotten");
        assert!(audit.is_duplicate("a", 2));
        assert!(audit.is_duplicate("c", 1));
        assert_eq!(
            audit.entries(),
            vec![("a".to_string(), 2, 3), ("c".to_string(), 1, 4)]
        );
        assert_eq!(audit.len(), 2);
    }
}
