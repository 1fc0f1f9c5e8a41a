//! What the election stores in ZooKeeper: the JSON of each member's znode, its name, and the
//! epoch table kept in the data of the `zk_path` znode itself.
//!
//! A member znode is `zk_path + "/0" + <10-digit sequence>` (EPHEMERAL_SEQUENTIAL), so its name
//! has 11 digits and its "eid" is the name without the leading `0`, exactly as ActiveMQ's
//! replicated LevelDB store named them. Its data starts with ActiveMQ's six fields, in ActiveMQ's
//! order, and goes on with ferromq's:
//!
//! ```json
//! {"id":"broker","container":null,"address":"tcp://10.0.0.5:61619","position":-1,"weight":1,
//!  "elected":"0000000000","epoch":3,"role":"master","master_epoch":3,
//!  "client_address":"tcp://10.0.0.5:61616","quorum":true}
//! ```
//!
//! serde_json writes struct fields in declaration order, so the order of the fields of
//! [`MemberData`] *is* the wire order: do not reorder them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Role names written in the `role` field.
pub const ROLE_MASTER: &str = "master";
/// See [`ROLE_MASTER`].
pub const ROLE_SLAVE: &str = "slave";
/// See [`ROLE_MASTER`].
pub const ROLE_CANDIDATE: &str = "candidate";

/// The data of one member znode. Fields missing in the JSON (a member written by ActiveMQ
/// itself has only the first six) take their defaults when parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberData {
    /// The broker name: members with the same id form one cluster.
    pub id: String,
    /// Informational container (host/process) name.
    #[serde(default)]
    pub container: Option<String>,
    /// `tcp://host:port` of the master's replication listener; null unless this member is the
    /// master and has bound its listener.
    #[serde(default)]
    pub address: Option<String>,
    /// The member's last journal position while no master is elected; -1 otherwise.
    #[serde(default = "minus_one")]
    pub position: i64,
    /// Election tie-break after (epoch, position): higher wins.
    #[serde(default = "one")]
    pub weight: i64,
    /// Eid of the elected member; written (non-null) by the coordinator only.
    #[serde(default)]
    pub elected: Option<String>,
    /// Epoch of the member's last journal record.
    #[serde(default)]
    pub epoch: u64,
    /// `master`, `slave` or `candidate`.
    #[serde(default = "candidate")]
    pub role: String,
    /// The epoch the member serves as master or follows as slave.
    #[serde(default)]
    pub master_epoch: Option<u64>,
    /// The member's client connector (informational).
    #[serde(default)]
    pub client_address: Option<String>,
    /// Whether the member sees a quorum of its cluster registered.
    #[serde(default)]
    pub quorum: bool,
    /// A serving master's slaves attached to its replication stream (connected, following);
    /// absent for other members. A monitor compares it with what a confirmation needs
    /// (`replicas/2`): fewer, and every send waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slaves: Option<u32>,
    /// The member's store is marked damaged: its recovery cut records it held after a corrupt
    /// frame, and it has not caught up with a master since. It may lack confirmed records, so
    /// it is neither elected nor counted in the quorum an election needs. Absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub damaged: bool,
    /// The node's id (`node.id` in its store directory). Two znodes of one node (one left by
    /// its previous process or by a registration whose reply was lost, until its session
    /// expires) count once towards a quorum. Absent (ActiveMQ's members, older ferromq): each
    /// znode counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The `replicas` the node is configured with (before the cluster's recorded value is
    /// applied). Members that disagree (a typo, or a change rolled out halfway) may be unable
    /// to elect anyone; `ferromq status` says so. Absent in ActiveMQ's and older ferromq's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

fn is_false(value: &bool) -> bool {
    !value
}

fn minus_one() -> i64 {
    -1
}

fn one() -> i64 {
    1
}

fn candidate() -> String {
    ROLE_CANDIDATE.to_owned()
}

impl MemberData {
    /// The JSON written to the znode.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("MemberData always serializes")
    }

    /// Parses a member znode's data.
    pub fn parse(bytes: &[u8]) -> Result<MemberData, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether the member reports a journal position (ActiveMQ: position >= 0).
    pub fn reports_position(&self) -> bool {
        self.position >= 0
    }

    /// Whether the member says it serves as master and has published where.
    pub fn serving_master(&self) -> Option<(&str, u64)> {
        match (&self.address, self.master_epoch) {
            (Some(address), Some(epoch)) if self.role == ROLE_MASTER => Some((address, epoch)),
            _ => None,
        }
    }
}

/// The member znode name for a sequence: `"0" + 10 digits` (ActiveMQ's names).
pub fn member_name(sequence: u64) -> String {
    format!("0{sequence:010}")
}

/// The sequence number in a member znode name (`"00000000007"` is 7); `None` for names that are
/// not all digits.
pub fn sequence_of(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// The eid of a member znode name: the name without its leading `0` (ActiveMQ's "eid").
pub fn eid_of(name: &str) -> Option<&str> {
    sequence_of(name)?;
    name.strip_prefix('0').filter(|eid| !eid.is_empty())
}

/// The data of the `zk_path` znode: the last epoch taken by each cluster (broker name).
///
/// `{"epochs":{"<broker name>":N},"replicas":{"<broker name>":R}}`, updated only by
/// compare-and-set (versioned setData).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochTable {
    /// Last epoch taken, per broker name.
    #[serde(default)]
    pub epochs: BTreeMap<String, u64>,
    /// The largest `replicas` a master of each cluster has run with. A node configured with
    /// fewer counts its quorums with this many: one left alone with `replicas = 1` beside a
    /// cluster of three must not elect itself and confirm what no other node holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replicas: BTreeMap<String, u64>,
}

impl EpochTable {
    /// Parses the `zk_path` data; empty (or whitespace-only) data is an empty table, as left by
    /// `mkdir` or by ActiveMQ.
    pub fn parse(bytes: &[u8]) -> Result<EpochTable, serde_json::Error> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(EpochTable::default());
        }
        serde_json::from_slice(bytes)
    }

    /// The JSON written back.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("EpochTable always serializes")
    }

    /// The last epoch taken by `broker` (0 if none).
    pub fn get(&self, broker: &str) -> u64 {
        self.epochs.get(broker).copied().unwrap_or(0)
    }

    /// The largest `replicas` a master of `broker` has run with (0 if none recorded).
    pub fn replicas(&self, broker: &str) -> usize {
        self.replicas
            .get(broker)
            .map_or(0, |&r| usize::try_from(r).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemberData {
        MemberData {
            id: "localhost".into(),
            container: None,
            address: Some("tcp://192.168.101.69:46019".into()),
            position: -1,
            weight: 1,
            elected: Some("0000000000".into()),
            epoch: 3,
            role: ROLE_MASTER.into(),
            master_epoch: Some(3),
            client_address: Some("tcp://192.168.101.69:61613".into()),
            quorum: true,
            slaves: None,
            damaged: false,
            node: None,
            replicas: None,
        }
    }

    #[test]
    fn json_starts_with_activemq_fields_in_order() {
        let json = sample().to_json();
        assert_eq!(
            json,
            concat!(
                r#"{"id":"localhost","container":null,"address":"tcp://192.168.101.69:46019","#,
                r#""position":-1,"weight":1,"elected":"0000000000","#,
                r#""epoch":3,"role":"master","master_epoch":3,"#,
                r#""client_address":"tcp://192.168.101.69:61613","quorum":true}"#
            )
        );
        // The prefix an ActiveMQ operator knows from zkCli.sh `get`.
        let activemq = r#"{"id":"localhost","container":null,"address":"tcp://192.168.101.69:46019","position":-1,"weight":1,"elected":"0000000000""#;
        assert!(json.starts_with(activemq));
    }

    #[test]
    fn nulls_are_written_not_skipped() {
        let data = MemberData {
            address: None,
            elected: None,
            master_epoch: None,
            client_address: None,
            position: 1234,
            role: ROLE_CANDIDATE.into(),
            quorum: false,
            ..sample()
        };
        assert_eq!(
            data.to_json(),
            concat!(
                r#"{"id":"localhost","container":null,"address":null,"position":1234,"weight":1,"#,
                r#""elected":null,"epoch":3,"role":"candidate","master_epoch":null,"#,
                r#""client_address":null,"quorum":false}"#
            )
        );
    }

    #[test]
    fn round_trip() {
        let data = sample();
        assert_eq!(MemberData::parse(data.to_json().as_bytes()).unwrap(), data);
        let other = MemberData {
            container: Some("host-a".into()),
            weight: 7,
            ..sample()
        };
        assert_eq!(
            MemberData::parse(other.to_json().as_bytes()).unwrap(),
            other
        );
    }

    #[test]
    fn parses_an_activemq_member() {
        let json = br#"{"id":"localhost","container":null,"address":"tcp://192.168.101.69:46019","position":-1,"weight":1,"elected":"0000000000"}"#;
        let data = MemberData::parse(json).unwrap();
        assert_eq!(data.id, "localhost");
        assert_eq!(data.address.as_deref(), Some("tcp://192.168.101.69:46019"));
        assert_eq!(data.position, -1);
        assert_eq!(data.elected.as_deref(), Some("0000000000"));
        assert_eq!(data.epoch, 0);
        assert_eq!(data.role, ROLE_CANDIDATE);
        assert_eq!(data.master_epoch, None);
        assert!(!data.quorum);
        assert!(MemberData::parse(b"not json").is_err());
        assert!(MemberData::parse(b"{}").is_err(), "id is required");
    }

    #[test]
    fn serving_master_needs_role_address_and_epoch() {
        assert_eq!(
            sample().serving_master(),
            Some(("tcp://192.168.101.69:46019", 3))
        );
        let no_address = MemberData {
            address: None,
            ..sample()
        };
        assert_eq!(no_address.serving_master(), None);
        let slave = MemberData {
            role: ROLE_SLAVE.into(),
            ..sample()
        };
        assert_eq!(slave.serving_master(), None);
    }

    #[test]
    fn names_and_eids() {
        assert_eq!(member_name(0), "00000000000");
        assert_eq!(member_name(42), "00000000042");
        assert_eq!(sequence_of("00000000042"), Some(42));
        assert_eq!(eid_of("00000000042"), Some("0000000042"));
        assert_eq!(eid_of("00000000000"), Some("0000000000"));
        assert_eq!(sequence_of("lock-1"), None);
        assert_eq!(eid_of("lock-1"), None);
        assert_eq!(eid_of("0"), None);
        assert_eq!(sequence_of(""), None);
    }

    #[test]
    fn epoch_table() {
        assert_eq!(EpochTable::parse(b"").unwrap(), EpochTable::default());
        assert_eq!(EpochTable::parse(b" \n").unwrap().get("b"), 0);
        let mut table = EpochTable::default();
        table.epochs.insert("b".into(), 4);
        table.epochs.insert("a".into(), 2);
        let json = table.to_json();
        assert_eq!(json, r#"{"epochs":{"a":2,"b":4}}"#);
        assert_eq!(EpochTable::parse(json.as_bytes()).unwrap(), table);
        assert_eq!(EpochTable::parse(b"{}").unwrap(), EpochTable::default());
        assert!(EpochTable::parse(b"hello").is_err());
        // The cluster's replicas, once a master recorded them; a table without is 0.
        assert_eq!(table.replicas("b"), 0);
        table.replicas.insert("b".into(), 3);
        let json = table.to_json();
        assert_eq!(json, r#"{"epochs":{"a":2,"b":4},"replicas":{"b":3}}"#);
        assert_eq!(EpochTable::parse(json.as_bytes()).unwrap().replicas("b"), 3);
    }
}
