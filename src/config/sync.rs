//! `store.sync`: when a persistent send is confirmed, with ActiveMQ's vocabulary.
//!
//! | word | master fsyncs before confirming | slaves fsync before acknowledging |
//! |---|---|---|
//! | `local_mem` | no | no |
//! | `local_disk` | yes | no |
//! | `remote_mem`, `quorum_mem` | no | no |
//! | `remote_disk` | no | yes |
//! | `quorum_disk` | yes | yes |
//!
//! Whatever the words, a cluster confirms only what a quorum holds (the master and
//! replicas/2 slaves acknowledged it): unlike ActiveMQ, whose `local_*` words confirmed without
//! any slave and could lose confirmed messages at failover. The words only decide whether
//! "holds" means the disk or the operating system's cache.
//!
//! Words are comma-separated and OR'd: `"local_disk,quorum_mem"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ParseError;

/// The valid words of `store.sync`, in canonical order.
pub const SYNC_WORDS: [&str; 6] = [
    "local_mem",
    "local_disk",
    "remote_mem",
    "remote_disk",
    "quorum_mem",
    "quorum_disk",
];

/// The parsed `store.sync` value: one flag per ActiveMQ word (the words are OR'd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyncPolicy {
    pub local_mem: bool,
    pub local_disk: bool,
    pub remote_mem: bool,
    pub remote_disk: bool,
    pub quorum_mem: bool,
    pub quorum_disk: bool,
}

impl SyncPolicy {
    /// No word set (not a valid configuration on its own; a starting point for building one).
    pub const NONE: SyncPolicy = SyncPolicy {
        local_mem: false,
        local_disk: false,
        remote_mem: false,
        remote_disk: false,
        quorum_mem: false,
        quorum_disk: false,
    };

    /// ferromq's default, `"local_disk"` (ActiveMQ's replicated store defaulted to `quorum_mem`).
    pub const LOCAL_DISK: SyncPolicy = SyncPolicy {
        local_disk: true,
        ..SyncPolicy::NONE
    };

    /// The master fsyncs its journal before confirming (`local_disk` or `quorum_disk`).
    pub fn fsync_locally(&self) -> bool {
        self.local_disk || self.quorum_disk
    }

    /// Slaves force the replicated records to disk before acknowledging them
    /// (`remote_disk` or `quorum_disk`).
    pub fn slaves_fsync(&self) -> bool {
        self.remote_disk || self.quorum_disk
    }

    fn flags(&self) -> [bool; 6] {
        [
            self.local_mem,
            self.local_disk,
            self.remote_mem,
            self.remote_disk,
            self.quorum_mem,
            self.quorum_disk,
        ]
    }

    fn flag_mut(&mut self, index: usize) -> &mut bool {
        match index {
            0 => &mut self.local_mem,
            1 => &mut self.local_disk,
            2 => &mut self.remote_mem,
            3 => &mut self.remote_disk,
            4 => &mut self.quorum_mem,
            _ => &mut self.quorum_disk,
        }
    }
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::LOCAL_DISK
    }
}

impl FromStr for SyncPolicy {
    type Err = ParseError;

    /// Comma-separated words, case-insensitive, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let valid = SYNC_WORDS.join(", ");
        if s.trim().is_empty() {
            return Err(ParseError::new(format!(
                "empty sync value: expected one or more of {valid} (comma-separated)"
            )));
        }
        let mut policy = SyncPolicy::NONE;
        for word in s.split(',') {
            let word = word.trim().to_ascii_lowercase();
            let index = SYNC_WORDS.iter().position(|w| *w == word).ok_or_else(|| {
                ParseError::new(format!(
                    "unknown sync value {word:?} in {s:?}: valid values are {valid} \
                     (comma-separated, OR'd)"
                ))
            })?;
            *policy.flag_mut(index) = true;
        }
        Ok(policy)
    }
}

impl fmt::Display for SyncPolicy {
    /// The canonical form: the words set, in [`SYNC_WORDS`] order, joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = SYNC_WORDS
            .iter()
            .zip(self.flags())
            .filter(|(_, set)| *set)
            .map(|(word, _)| *word)
            .collect();
        f.write_str(&words.join(","))
    }
}

impl Serialize for SyncPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SyncPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_combines() {
        let p: SyncPolicy = "local_disk".parse().unwrap();
        assert_eq!(p, SyncPolicy::LOCAL_DISK);
        assert!(p.fsync_locally() && !p.slaves_fsync());

        let p: SyncPolicy = " local_disk , QUORUM_MEM".parse().unwrap();
        assert!(p.local_disk && p.quorum_mem && !p.quorum_disk);
        assert!(p.fsync_locally() && !p.slaves_fsync());
        assert_eq!(p.to_string(), "local_disk,quorum_mem");

        let p: SyncPolicy = "quorum_disk".parse().unwrap();
        assert!(p.fsync_locally() && p.slaves_fsync());

        let p: SyncPolicy = "remote_disk".parse().unwrap();
        assert!(!p.fsync_locally() && p.slaves_fsync());

        let p: SyncPolicy = "local_mem".parse().unwrap();
        assert!(!p.fsync_locally() && !p.slaves_fsync());

        for word in SYNC_WORDS {
            assert_eq!(word.parse::<SyncPolicy>().unwrap().to_string(), word);
        }
    }

    #[test]
    fn rejects_unknown_words() {
        let err = "local_disk,quorum_dsk"
            .parse::<SyncPolicy>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"quorum_dsk\""), "{err}");
        for word in SYNC_WORDS {
            assert!(err.contains(word), "{err}");
        }
        assert!("".parse::<SyncPolicy>().is_err());
        assert!("local_disk,".parse::<SyncPolicy>().is_err());
    }
}
