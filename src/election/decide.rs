//! The election decision the coordinator takes: pure, no I/O, no clock.
//!
//! The coordinator (the member of a cluster with the lowest sequence) runs [`decide`] on every
//! change of the member list or of any member's data and writes the result into the `elected`
//! field of its own znode. The rule, ActiveMQ's plus epochs:
//!
//! 1. Fewer than `replicas/2 + 1` members registered: nobody is elected. Members are counted
//!    by node: two znodes of one node (its `node` id) count once.
//! 2. The elected member is still registered: it stays elected.
//! 3. Nobody is elected but a registered member serves as master under the highest epoch any
//!    member knows (a new coordinator taking over after the old one left): it is kept, so losing
//!    a slave that happened to be the coordinator does not bounce the master.
//! 4. Fewer than a quorum of the members have a whole store (a member whose store is marked
//!    `damaged` may lack confirmed records): nobody is elected.
//! 5. Otherwise elect among the whole members that report a position (`position >= 0`), once
//!    every whole member reports or, if at least a quorum does, once the caller says the wait
//!    is over: the highest (epoch, position), then the highest weight, then the lowest
//!    sequence. Never by position alone: a stale node with a longer, divergent log loses to a
//!    newer epoch.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use super::znode::{MemberData, ROLE_MASTER};

/// Members needed to elect a master: `replicas/2 + 1`.
pub fn quorum(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// One registered member of the cluster, as the coordinator sees it.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// Sequence of its znode (the order of registration).
    pub sequence: u64,
    /// Its eid (znode name without the leading `0`).
    pub eid: &'a str,
    /// Its znode data.
    pub data: &'a MemberData,
}

/// What the coordinator knows when it decides.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The registered members of this cluster (same broker name), in any order.
    pub members: &'a [Member<'a>],
    /// Configured cluster size.
    pub replicas: usize,
    /// The eid currently elected (the coordinator's own `elected`), if any.
    pub current: Option<&'a str>,
    /// The bounded wait for every member to report its position is over: elect among the
    /// reporting members if they are at least a quorum.
    pub report_wait_over: bool,
}

/// How an elected member came to be elected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// It was elected already and is still registered.
    Kept,
    /// It serves as master under the highest epoch known; a new coordinator keeps it.
    Adopted,
    /// Newly elected by (epoch, position, weight, sequence).
    Elected,
}

/// The coordinator's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `elected` = this eid.
    Elect {
        /// The elected member's eid.
        eid: String,
        /// Why.
        how: How,
    },
    /// `elected` = null: fewer members than a quorum.
    NoQuorum {
        /// Registered members.
        members: usize,
        /// Members needed.
        quorum: usize,
    },
    /// `elected` = null: fewer members than a quorum whose stores are whole (not marked
    /// damaged).
    Damaged {
        /// Registered members whose stores are whole.
        whole: usize,
        /// Registered members.
        members: usize,
        /// Members needed.
        quorum: usize,
    },
    /// `elected` = null: waiting for members to report their positions.
    WaitForReports {
        /// Members reporting a position.
        reporting: usize,
        /// Registered members.
        members: usize,
        /// Members needed.
        quorum: usize,
    },
}

impl Decision {
    /// The eid to write into `elected`.
    pub fn elected(&self) -> Option<&str> {
        match self {
            Decision::Elect { eid, .. } => Some(eid),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Elect { eid, how } => match how {
                How::Kept => write!(f, "{eid} stays elected"),
                How::Adopted => write!(f, "{eid} serves as master and stays elected"),
                How::Elected => write!(f, "elected {eid}"),
            },
            Decision::NoQuorum { members, quorum } => write!(
                f,
                "not enough cluster members connected to elect a master: {members} of {quorum}"
            ),
            Decision::Damaged {
                whole,
                members,
                quorum,
            } => write!(
                f,
                "not enough members with a whole store to elect a master: {whole} of {quorum} \
                 ({} of the {members} connected are marked damaged and count once they have \
                 caught up with a master)",
                members - whole
            ),
            Decision::WaitForReports {
                reporting,
                members,
                quorum,
            } => write!(
                f,
                "waiting for members to report their log positions: {reporting} of {members} \
                 reported (quorum {quorum})"
            ),
        }
    }
}

/// How many nodes `members` are: the znodes of one node (the same `node` id: one left by its
/// previous process, say, until its session expires) count once; znodes without an id count
/// each.
pub fn count_nodes<'a>(members: impl IntoIterator<Item = &'a MemberData>) -> usize {
    let mut ids = HashSet::new();
    let mut anonymous = 0;
    for member in members {
        match &member.node {
            Some(id) => {
                ids.insert(id.as_str());
            }
            None => anonymous += 1,
        }
    }
    ids.len() + anonymous
}

/// The election rule (see the module documentation).
pub fn decide(input: &Input<'_>) -> Decision {
    let members = input.members;
    let quorum = quorum(input.replicas);
    let nodes = count_nodes(members.iter().map(|m| m.data));
    if nodes < quorum {
        return Decision::NoQuorum {
            members: nodes,
            quorum,
        };
    }
    if let Some(current) = input.current {
        if members.iter().any(|m| m.eid == current) {
            return Decision::Elect {
                eid: current.to_owned(),
                how: How::Kept,
            };
        }
        // The elected member is gone: elected = null, and elect anew below (no adoption: a
        // member still saying "master" now is stale).
    } else if let Some(master) = adoptable(members) {
        return Decision::Elect {
            eid: master.eid.to_owned(),
            how: How::Adopted,
        };
    }
    // A member whose store is marked damaged may lack confirmed records: electing among a
    // quorum of whole members is what guarantees one of them holds each.
    // A node with a damaged znode is damaged, whatever its other znode (an older one) says.
    let damaged: HashSet<&str> = members
        .iter()
        .filter(|m| m.data.damaged)
        .filter_map(|m| m.data.node.as_deref())
        .collect();
    let is_whole = |m: &&Member<'_>| {
        !m.data.damaged
            && m.data
                .node
                .as_deref()
                .is_none_or(|id| !damaged.contains(id))
    };
    let whole: Vec<&Member<'_>> = members.iter().filter(is_whole).collect();
    let whole_nodes = count_nodes(whole.iter().map(|m| m.data));
    if whole_nodes < quorum {
        return Decision::Damaged {
            whole: whole_nodes,
            members: nodes,
            quorum,
        };
    }
    let reporting: Vec<&Member<'_>> = whole
        .iter()
        .copied()
        .filter(|m| m.data.reports_position())
        .collect();
    let reporting_nodes = count_nodes(reporting.iter().map(|m| m.data));
    let all_report = reporting.len() == whole.len();
    if !(all_report || (input.report_wait_over && reporting_nodes >= quorum)) {
        return Decision::WaitForReports {
            reporting: reporting_nodes,
            members: whole_nodes,
            quorum,
        };
    }
    let best = reporting
        .into_iter()
        .max_by(|a, b| rank(a, b))
        .expect("at least a quorum (>= 1) reports");
    Decision::Elect {
        eid: best.eid.to_owned(),
        how: How::Elected,
    }
}

/// Election order: (epoch, position), then weight, then the lower sequence. Greater is better.
fn rank(a: &Member<'_>, b: &Member<'_>) -> Ordering {
    (a.data.epoch, a.data.position, a.data.weight)
        .cmp(&(b.data.epoch, b.data.position, b.data.weight))
        .then_with(|| b.sequence.cmp(&a.sequence))
}

/// A member serving as master under an epoch no member has gone beyond.
fn adoptable<'a, 'm>(members: &'m [Member<'a>]) -> Option<&'m Member<'a>> {
    let newest = members
        .iter()
        .map(|m| m.data.epoch.max(m.data.master_epoch.unwrap_or(0)))
        .max()?;
    members
        .iter()
        .filter(|m| m.data.role == ROLE_MASTER)
        .filter(|m| m.data.master_epoch.is_some_and(|e| e >= newest))
        .min_by_key(|m| m.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::znode::{ROLE_CANDIDATE, ROLE_SLAVE};

    /// (sequence, epoch, position, weight)
    fn member(sequence: u64, epoch: u64, position: i64, weight: i64) -> (String, MemberData) {
        (
            format!("{sequence:010}"),
            MemberData {
                id: "b".into(),
                container: None,
                address: None,
                position,
                weight,
                elected: None,
                epoch,
                role: ROLE_CANDIDATE.into(),
                master_epoch: None,
                client_address: None,
                quorum: true,
                slaves: None,
                damaged: false,
                node: None,
                replicas: None,
            },
        )
    }

    fn run(
        members: &[(String, MemberData)],
        replicas: usize,
        current: Option<&str>,
        report_wait_over: bool,
    ) -> Decision {
        let refs: Vec<Member<'_>> = members
            .iter()
            .map(|(eid, data)| Member {
                sequence: eid.parse().unwrap(),
                eid,
                data,
            })
            .collect();
        decide(&Input {
            members: &refs,
            replicas,
            current,
            report_wait_over,
        })
    }

    fn elected(eid: u64, how: How) -> Decision {
        Decision::Elect {
            eid: format!("{eid:010}"),
            how,
        }
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }

    fn damaged(mut m: (String, MemberData)) -> (String, MemberData) {
        m.1.damaged = true;
        m
    }

    /// A member whose store was cut after a corrupt frame (marked damaged) may lack confirmed
    /// records: it is never elected, and a quorum must be found among the others.
    #[test]
    fn a_damaged_member_is_neither_elected_nor_counted() {
        // Three members, the damaged one furthest ahead: the best whole one wins.
        let three = [
            damaged(member(0, 2, 900, 1)),
            member(1, 2, 300, 1),
            member(2, 2, 200, 1),
        ];
        assert_eq!(run(&three, 3, None, false), elected(1, How::Elected));
        // Two members, one damaged: no whole quorum, nobody elected, however long the wait;
        // the node it would have elected may be the one that lost confirmed records.
        let two = [damaged(member(0, 2, 900, 1)), member(1, 2, 200, 1)];
        for wait_over in [false, true] {
            let decision = run(&two, 3, None, wait_over);
            assert_eq!(
                decision,
                Decision::Damaged {
                    whole: 1,
                    members: 2,
                    quorum: 2
                }
            );
            assert!(
                decision
                    .to_string()
                    .contains("not enough members with a whole store to elect a master: 1 of 2"),
                "{decision}"
            );
        }
        // Whole members that have not reported yet are waited for, not the damaged one.
        let mut waiting = three.clone();
        waiting[2].1.position = -1;
        assert!(matches!(
            run(&waiting, 3, None, false),
            Decision::WaitForReports {
                reporting: 1,
                members: 2,
                ..
            }
        ));
        // An elected master stays elected when a damaged member joins.
        assert_eq!(
            run(&three, 3, Some("0000000002"), false),
            elected(2, How::Kept)
        );
    }

    fn of_node(mut m: (String, MemberData), node: &str) -> (String, MemberData) {
        m.1.node = Some(node.to_owned());
        m
    }

    /// Two znodes of one node (the one its killed process left, until its session expires,
    /// beside its new one) are one member: alone, that node has no quorum, and cannot elect
    /// itself while the nodes holding the last confirmed records are down.
    #[test]
    fn two_znodes_of_one_node_count_once() {
        let alone = [
            of_node(member(0, 2, 100, 1), "a"),
            of_node(member(1, 2, 100, 1), "a"),
        ];
        assert_eq!(
            run(&alone, 3, None, true),
            Decision::NoQuorum {
                members: 1,
                quorum: 2
            }
        );
        // With another node: a quorum, the best of them elected.
        let mut two = alone.to_vec();
        two.push(of_node(member(2, 2, 300, 1), "b"));
        assert_eq!(run(&two, 3, None, false), elected(2, How::Elected));
        // Znodes without a node id (ActiveMQ's, older ferromq's) count each.
        let anonymous = [member(0, 2, 100, 1), member(1, 2, 100, 1)];
        assert_eq!(run(&anonymous, 3, None, false), elected(0, How::Elected));
        // A node whose newer znode says damaged is damaged, whatever its older one says.
        let mut mixed = two.clone();
        mixed[1].1.damaged = true;
        assert_eq!(
            run(&mixed, 3, None, true),
            Decision::Damaged {
                whole: 1,
                members: 2,
                quorum: 2
            }
        );
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            members: Vec<(String, MemberData)>,
            replicas: usize,
            current: Option<&'static str>,
            wait_over: bool,
            want: Decision,
        }
        let cases = vec![
            Case {
                name: "highest position wins within one epoch",
                members: vec![
                    member(0, 2, 100, 1),
                    member(1, 2, 300, 1),
                    member(2, 2, 200, 1),
                ],
                replicas: 3,
                current: None,
                wait_over: false,
                want: elected(1, How::Elected),
            },
            Case {
                name: "stale longer log loses to a newer epoch",
                members: vec![
                    member(0, 1, 9_000, 5),
                    member(1, 2, 100, 1),
                    member(2, 2, 50, 1),
                ],
                replicas: 3,
                current: None,
                wait_over: false,
                want: elected(1, How::Elected),
            },
            Case {
                name: "weight breaks a (epoch, position) tie",
                members: vec![
                    member(0, 2, 100, 1),
                    member(1, 2, 100, 3),
                    member(2, 2, 100, 2),
                ],
                replicas: 3,
                current: None,
                wait_over: false,
                want: elected(1, How::Elected),
            },
            Case {
                name: "weight does not beat a longer log",
                members: vec![member(0, 2, 101, 1), member(1, 2, 100, 9)],
                replicas: 3,
                current: None,
                wait_over: false,
                want: elected(0, How::Elected),
            },
            Case {
                name: "full tie: lowest sequence",
                members: vec![
                    member(4, 2, 100, 1),
                    member(2, 2, 100, 1),
                    member(7, 2, 100, 1),
                ],
                replicas: 3,
                current: None,
                wait_over: false,
                want: elected(2, How::Elected),
            },
            Case {
                name: "below quorum: nobody",
                members: vec![member(0, 2, 100, 1)],
                replicas: 3,
                current: None,
                wait_over: true,
                want: Decision::NoQuorum {
                    members: 1,
                    quorum: 2,
                },
            },
            Case {
                name: "below quorum drops a still registered elected member",
                members: vec![member(0, 2, -1, 1), member(1, 2, -1, 1)],
                replicas: 5,
                current: Some("0000000000"),
                wait_over: false,
                want: Decision::NoQuorum {
                    members: 2,
                    quorum: 3,
                },
            },
            Case {
                name: "elected member still registered: kept, whatever the positions",
                members: vec![
                    member(0, 2, -1, 1),
                    member(1, 2, -1, 1),
                    member(2, 9, 999, 9),
                ],
                replicas: 3,
                current: Some("0000000001"),
                wait_over: false,
                want: elected(1, How::Kept),
            },
            Case {
                name: "elected member vanished: wait for reports",
                members: vec![member(0, 2, -1, 1), member(2, 2, -1, 1)],
                replicas: 3,
                current: Some("0000000001"),
                wait_over: false,
                want: Decision::WaitForReports {
                    reporting: 0,
                    members: 2,
                    quorum: 2,
                },
            },
            Case {
                name: "elected member vanished: the others reported",
                members: vec![member(0, 2, 10, 1), member(2, 2, 20, 1)],
                replicas: 3,
                current: Some("0000000001"),
                wait_over: false,
                want: elected(2, How::Elected),
            },
            Case {
                name: "a member not reporting holds the election",
                members: vec![
                    member(0, 2, 10, 1),
                    member(1, 2, 20, 1),
                    member(2, 2, -1, 1),
                ],
                replicas: 3,
                current: None,
                wait_over: false,
                want: Decision::WaitForReports {
                    reporting: 2,
                    members: 3,
                    quorum: 2,
                },
            },
            Case {
                name: "wait over: a reporting quorum elects",
                members: vec![
                    member(0, 2, 10, 1),
                    member(1, 2, 20, 1),
                    member(2, 2, -1, 1),
                ],
                replicas: 3,
                current: None,
                wait_over: true,
                want: elected(1, How::Elected),
            },
            Case {
                name: "wait over but fewer than a quorum report",
                members: vec![
                    member(0, 2, 10, 1),
                    member(1, 2, -1, 1),
                    member(2, 2, -1, 1),
                ],
                replicas: 3,
                current: None,
                wait_over: true,
                want: Decision::WaitForReports {
                    reporting: 1,
                    members: 3,
                    quorum: 2,
                },
            },
            Case {
                name: "single-node cluster elects itself",
                members: vec![member(5, 0, 0, 1)],
                replicas: 1,
                current: None,
                wait_over: false,
                want: elected(5, How::Elected),
            },
        ];
        for case in cases {
            let got = run(&case.members, case.replicas, case.current, case.wait_over);
            assert_eq!(got, case.want, "case: {}", case.name);
        }
    }

    fn serving(mut m: (String, MemberData), master_epoch: u64) -> (String, MemberData) {
        m.1.role = ROLE_MASTER.into();
        m.1.master_epoch = Some(master_epoch);
        m.1.address = Some("tcp://h:1".into());
        m
    }

    fn following(mut m: (String, MemberData), master_epoch: u64) -> (String, MemberData) {
        m.1.role = ROLE_SLAVE.into();
        m.1.master_epoch = Some(master_epoch);
        m
    }

    #[test]
    fn new_coordinator_adopts_the_serving_master() {
        // The old coordinator (a slave) left; the new one has elected = null.
        let members = vec![
            following(member(1, 3, -1, 1), 3),
            serving(member(2, 3, -1, 1), 3),
        ];
        assert_eq!(run(&members, 3, None, false), elected(2, How::Adopted));
    }

    #[test]
    fn no_adoption_of_a_stale_master() {
        // Member 2 still says master under epoch 2, but member 1 knows epoch 3.
        let members = vec![
            following(member(1, 3, 10, 1), 3),
            serving(member(2, 2, 50, 1), 2),
        ];
        assert_eq!(run(&members, 3, None, false), elected(1, How::Elected));
    }

    #[test]
    fn no_adoption_when_the_elected_member_vanished() {
        // Elected 0000000009 is gone; member 2 still claiming master is not trusted.
        let members = vec![member(1, 3, 10, 1), serving(member(2, 3, -1, 1), 3)];
        assert_eq!(
            run(&members, 3, Some("0000000009"), false),
            Decision::WaitForReports {
                reporting: 1,
                members: 2,
                quorum: 2
            }
        );
    }

    #[test]
    fn reasons_read_well() {
        let d = Decision::NoQuorum {
            members: 1,
            quorum: 2,
        };
        assert_eq!(
            d.to_string(),
            "not enough cluster members connected to elect a master: 1 of 2"
        );
        assert_eq!(d.elected(), None);
        assert_eq!(elected(3, How::Elected).elected(), Some("0000000003"));
    }
}
