//! `ferromq status`: the cluster as ZooKeeper shows it, and a health check for monitors.
//!
//! Without `--expect-members` it prints the members' table (or their JSON) and exits 0 when
//! ZooKeeper answered. With it, it is a check in the Nagios plugin convention, which Icinga,
//! Zabbix agents, cron mail and systemd's `OnFailure=` all understand: the first line of
//! standard output is the verdict (`FERROMQ OK - ...`, `FERROMQ WARNING - ...`,
//! `FERROMQ CRITICAL - ...`), the table follows as the long output, and the exit code is the
//! state (0 OK, 1 WARNING, 2 CRITICAL; 3 UNKNOWN when the check cannot judge, e.g. a bad
//! command line). With `--json` every verdict is one JSON object instead. It only reads
//! ZooKeeper; it never writes there.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use clap::Args;

use crate::election::znode::ROLE_MASTER;
use crate::election::MemberView;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// ZooKeeper connect string (zkAddress), e.g. zk1:2181,zk2:2181,zk3:2181.
    #[arg(long, value_name = "HOSTS", default_value = "127.0.0.1:2181")]
    zk_address: String,
    /// Parent znode of the members (zkPath).
    #[arg(long, value_name = "PATH", default_value = "/activemq/leveldb-stores")]
    zk_path: String,
    /// The cluster to show or check, by its broker name (`[broker] name`, ActiveMQ's
    /// brokerName: the znodes' "id"), when several clusters register under one zk_path. A
    /// health check refuses to judge several clusters at once (UNKNOWN).
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// ZooKeeper password (zkPassword), if the cluster uses one.
    #[arg(long, value_name = "PASSWORD")]
    zk_password: Option<String>,
    /// Print the members as one JSON array instead of a table: each member's znode data, with
    /// its znode name added as "znode". With --expect-members, one JSON object instead,
    /// whatever the verdict: "state" (OK, WARNING, CRITICAL, UNKNOWN), "summary" and "members"
    /// (that array); the exit code is the check's.
    #[arg(long)]
    json: bool,
    /// Health check for monitoring (Nagios/Icinga plugin, systemd timer, cron): the first
    /// line says OK, WARNING or CRITICAL and the exit code is 0, 1 or 2. WARNING: a master
    /// serves but fewer than N members are registered (a node is down: one more failure may
    /// stop writes), or fewer than N-1 slaves follow it. CRITICAL: no master serves, the master
    /// has fewer slaves than a confirmation needs (N/2), or ZooKeeper cannot be read.
    /// UNKNOWN (exit 3): the check could not judge (a bad command line, nothing registered
    /// under --zk-path, no member of --cluster, several clusters and no --cluster).
    #[arg(long, value_name = "N", value_parser = members_count)]
    expect_members: Option<usize>,
}

/// `--expect-members`: a number of nodes, at least 1 (0 would make every cluster OK).
fn members_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("at least 1 member is expected (the nodes of the cluster)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A check's state, as a Nagios plugin reports it; the discriminant is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    /// The check itself could not run (a bad command line), so it says nothing of the cluster.
    Unknown = 3,
}

impl Health {
    fn word(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Warning => "WARNING",
            Health::Critical => "CRITICAL",
            Health::Unknown => "UNKNOWN",
        }
    }

    fn exit_code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

/// The verdict of the health check: its state and the sentence after `FERROMQ <STATE> - `.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    health: Health,
    summary: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FERROMQ {} - {}", self.health.word(), self.summary)
    }
}

/// Whether a command line (without the program name) asks for the health check: `status`
/// with `--expect-members`. A monitor runs it, so a usage error must read as UNKNOWN.
pub(crate) fn is_check(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "status")
        && args.iter().any(|a| a.starts_with("--expect-members"))
}

/// A usage error of the health check, the Nagios way: `FERROMQ UNKNOWN - <what is wrong>` on
/// standard output (or its JSON object, when the command line asks for `--json`), clap's full
/// message on standard error, exit code 3 (not clap's 2, which a monitor would take for
/// CRITICAL).
pub(crate) fn usage_error(error: &clap::Error, args: &[String]) -> ExitCode {
    let text = error.to_string();
    let what = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    errout!("{text}");
    let json = args.iter().any(|a| a == "--json");
    unknown(what, json)
}

/// `FERROMQ UNKNOWN - bad command line: <what>`, exit code 3.
fn unknown(what: &str, json: bool) -> ExitCode {
    unknown_because(&format!("bad command line: {what}"), json)
}

/// `FERROMQ UNKNOWN - <why>`, exit code 3: the check cannot judge.
fn unknown_because(why: &str, json: bool) -> ExitCode {
    report(
        &Verdict {
            health: Health::Unknown,
            summary: why.to_string(),
        },
        &[],
        json,
    )
}

/// Prints the check's verdict on standard output, whatever it is: its line and the members'
/// table, or (`--json`) one JSON object with "state", "summary" and "members", so that a
/// script parses the output of a failing check as it parses a passing one. Returns the
/// verdict's exit code.
fn report(verdict: &Verdict, members: &[MemberView], json: bool) -> ExitCode {
    if json {
        outln!("{}", verdict_json(verdict, members));
    } else {
        outln!("{verdict}");
        if !members.is_empty() {
            out!("{}", crate::election::format_table(members));
        }
    }
    verdict.health.exit_code()
}

/// The `--json` form of a verdict: "state", "summary" and "members" (as [`members_json`]).
fn verdict_json(verdict: &Verdict, members: &[MemberView]) -> serde_json::Value {
    serde_json::json!({
        "state": verdict.health.word(),
        "summary": verdict.summary,
        "members": members_json(members),
    })
}

/// Runs `ferromq status`.
pub(crate) async fn run(args: StatusArgs) -> ExitCode {
    // A mistyped address or path is the check's own fault (UNKNOWN), not the cluster's.
    let bad = crate::config::check_zk_address(&args.zk_address)
        .map_err(|e| format!("--zk-address {}: {e}", args.zk_address))
        .and_then(|()| {
            crate::config::check_zk_path(&args.zk_path)
                .map_err(|e| format!("--zk-path {}: {e}", args.zk_path))
        });
    if let Err(what) = bad {
        errln!("ferromq status: {what}");
        return match args.expect_members {
            None => ExitCode::from(2),
            Some(_) => unknown(&what, args.json),
        };
    }
    let read =
        crate::election::read_cluster(&args.zk_address, &args.zk_path, args.zk_password.as_deref())
            .await;
    let mut members = match (read, args.expect_members) {
        (Ok(members), _) => members,
        // A path nobody registered under is most likely the check's own mistake.
        (Err(e @ crate::election::ElectionError::NoPath { .. }), Some(_)) => {
            return unknown_because(&format!("{e} (--zk-path)"), args.json);
        }
        // So is a password ZooKeeper refuses, or none where the nodes set one.
        (Err(e), Some(_)) if e.is_auth() => {
            return unknown_because(&format!("{e} (--zk-password)"), args.json);
        }
        (Err(e), None) => {
            errln!("ferromq status: {e}");
            return ExitCode::FAILURE;
        }
        // A monitor reads standard output: the cluster cannot serve without ZooKeeper (its
        // master steps down), so this is CRITICAL, not a failure of the check itself.
        (Err(e), Some(_)) => {
            let verdict = Verdict {
                health: Health::Critical,
                summary: format!("cannot read the members from ZooKeeper: {e}"),
            };
            return report(&verdict, &[], args.json);
        }
    };
    if let Some(name) = &args.cluster {
        members = match of_cluster(members, name) {
            Ok(ours) => ours,
            // Other clusters there and none of this name: a mistyped --cluster, most likely.
            Err(others) => {
                let what = format!(
                    "no member of cluster {name} under {} (registered there: {others})",
                    args.zk_path
                );
                if args.expect_members.is_some() {
                    return unknown_because(&format!("{what} (--cluster)"), args.json);
                }
                errln!("ferromq status: {what}");
                return ExitCode::FAILURE;
            }
        };
    }
    if args.expect_members.is_some() && args.cluster.is_none() {
        if let Some(names) = several_clusters(&members) {
            return unknown_because(
                &format!(
                    "members of several clusters register under {} ({}): name the one to check \
                 with --cluster",
                    args.zk_path,
                    names.join(", ")
                ),
                args.json,
            );
        }
    }
    if let Some(expected) = args.expect_members {
        return report(&check(&members, expected), &members, args.json);
    }
    if args.json {
        outln!("{}", members_json(&members));
    } else {
        out!("{}", crate::election::format_table(&members));
    }
    if members.is_empty() {
        errln!(
            "no members registered under {} at {}",
            args.zk_path,
            args.zk_address
        );
    }
    ExitCode::SUCCESS
}

/// When the members are not all configured with the same `replicas`: which says what. A node
/// with a larger value counts quorums with it (and, as master, records it for the cluster), so
/// the others may then be unable to elect anyone or to survive one failure.
fn replicas_disagreement(members: &[MemberView]) -> Option<String> {
    let mut by_value: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for m in members {
        if let Some(n) = m.data.as_ref().and_then(|d| d.replicas) {
            by_value.entry(n).or_default().push(m.znode.as_str());
        }
    }
    (by_value.len() > 1).then(|| {
        let said: Vec<String> = by_value
            .iter()
            .map(|(n, znodes)| format!("{} {n}", znodes.join(", ")))
            .collect();
        format!(
            "members disagree on replicas ({}): a quorum is counted with the largest; give every \
             node the same value",
            said.join("; ")
        )
    })
}

/// `--cluster NAME`: the members of cluster `name`; when there are members but none of it,
/// the names that are there instead.
fn of_cluster(members: Vec<MemberView>, name: &str) -> Result<Vec<MemberView>, String> {
    let names = cluster_names(&members)
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ");
    let ours: Vec<MemberView> = members
        .into_iter()
        .filter(|m| m.data.as_ref().is_some_and(|d| d.id == name))
        .collect();
    if ours.is_empty() && !names.is_empty() {
        return Err(names);
    }
    Ok(ours)
}

/// The broker names (znode ids) of the members, when there are several: clusters that
/// share a zk_path, which one health check cannot judge together.
fn several_clusters(members: &[MemberView]) -> Option<Vec<&str>> {
    let names = cluster_names(members);
    (names.len() > 1).then(|| names.into_iter().collect())
}

/// The distinct broker names (znode ids) of the members, in order.
fn cluster_names(members: &[MemberView]) -> BTreeSet<&str> {
    members
        .iter()
        .filter_map(|m| m.data.as_ref().map(|d| d.id.as_str()))
        .collect()
}

/// `--json`: one JSON array, each member's znode data as stored with its znode name added as
/// `"znode"` (data that is not a JSON object is given as a string under `"data"`).
fn members_json(members: &[MemberView]) -> serde_json::Value {
    let all: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            let mut object = match serde_json::from_str(&m.raw) {
                Ok(serde_json::Value::Object(object)) => object,
                _ => {
                    let mut object = serde_json::Map::new();
                    object.insert("data".into(), m.raw.clone().into());
                    object
                }
            };
            object.insert("znode".into(), m.znode.clone().into());
            serde_json::Value::Object(object)
        })
        .collect();
    serde_json::Value::Array(all)
}

/// What a monitor should alert on. CRITICAL: no master serves (clients are refused, sends
/// wait), or the master has fewer slaves following it than a confirmation needs (sends wait,
/// nothing is confirmed). WARNING: a master serves but a member is missing (a node died or
/// lost ZooKeeper), or a registered node does not follow the master (cut off from it): the
/// cluster has less redundancy than it was built with. OK otherwise. A master that publishes
/// no `slaves` count (an older version) is judged by its registration alone.
fn check(members: &[MemberView], expected: usize) -> Verdict {
    // By node: a restarted node's previous znode, until its session expires, is the same node.
    let registered =
        crate::election::decide::count_nodes(members.iter().filter_map(|m| m.data.as_ref()));
    let master = members.iter().find_map(|m| {
        m.data
            .as_ref()
            .filter(|d| d.role == ROLE_MASTER && d.address.is_some())
            .map(|d| (m, d))
    });
    let mut members_part = format!("{registered} of {expected} members registered");
    let damaged: Vec<&str> = members
        .iter()
        .filter(|m| m.data.as_ref().is_some_and(|d| d.damaged))
        .map(|m| m.znode.as_str())
        .collect();
    let disagreement = replicas_disagreement(members);
    if let Some(text) = &disagreement {
        members_part.push_str(&format!(", {text}"));
    }
    if !damaged.is_empty() {
        members_part.push_str(&format!(
            ", {} marked damaged (a store cut after a corrupt record: not counted in elections \
             until it has caught up with a master)",
            damaged.join(", ")
        ));
    }
    match master {
        None => Verdict {
            health: Health::Critical,
            summary: format!(
                "no master serves clients: sends are refused until one is elected; \
                 {members_part}"
            ),
        },
        Some((m, d)) => {
            let serves = format!(
                "master {} serves{} (epoch {})",
                m.znode,
                d.client_address
                    .as_deref()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default(),
                d.master_epoch.unwrap_or(d.epoch),
            );
            // A confirmation needs `expected/2` slaves besides the master (a quorum of
            // `expected/2 + 1`); a full cluster has `expected - 1` following it.
            let (needed, followers) = (expected / 2, expected.saturating_sub(1));
            let slaves = d.slaves.map(|n| n as usize);
            match slaves {
                Some(n) if n < needed => Verdict {
                    health: Health::Critical,
                    summary: format!(
                        "{serves} but only {n} of the {needed} slaves a confirmation needs \
                         follow it: sends wait and nothing is confirmed; {members_part}"
                    ),
                },
                _ if registered < expected => Verdict {
                    health: Health::Warning,
                    summary: format!(
                        "{members_part}: a node is down or cut off from ZooKeeper; {serves}"
                    ),
                },
                _ if registered > expected => Verdict {
                    health: Health::Warning,
                    summary: format!(
                        "{members_part}: more nodes than expected (--expect-members counts the \
                         nodes of the cluster); {serves}"
                    ),
                },
                _ if !damaged.is_empty() || disagreement.is_some() => Verdict {
                    health: Health::Warning,
                    summary: format!("{serves}; {members_part}"),
                },
                Some(n) if n < followers => Verdict {
                    health: Health::Warning,
                    summary: format!(
                        "{n} of {followers} slaves follow the master: a registered node is cut \
                         off from it; {serves}; {members_part}"
                    ),
                },
                _ => Verdict {
                    health: Health::Ok,
                    summary: format!("{serves}; {members_part}"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::MemberData;

    /// A whole cluster: a master (the second) and two slaves.
    fn three_members() -> [MemberView; 3] {
        [
            member("00000000001", "slave"),
            member("00000000002", "master"),
            member("00000000003", "slave"),
        ]
    }

    fn member(znode: &str, role: &str) -> MemberView {
        let master = role == ROLE_MASTER;
        MemberView {
            znode: znode.into(),
            eid: None,
            sequence: znode.parse().ok(),
            data: Some(MemberData {
                id: "cluster".into(),
                container: None,
                address: master.then(|| "tcp://10.0.0.1:61619".into()),
                position: -1,
                weight: 1,
                elected: None,
                epoch: 3,
                role: role.into(),
                master_epoch: Some(4),
                client_address: master.then(|| "tcp://10.0.0.1:61616".into()),
                quorum: true,
                slaves: master.then_some(2),
                damaged: false,
                node: None,
                replicas: None,
            }),
            raw: String::new(),
            elected: false,
        }
    }

    /// `--json` is one JSON document a script can parse: the data of each member with its
    /// znode name, data that is not JSON kept as a string.
    #[test]
    fn the_json_output_is_one_array_of_the_members() {
        let mut a = member("00000000001", "slave");
        a.raw = r#"{"id":"cluster","role":"slave","position":42}"#.into();
        let mut b = member("00000000002", "master");
        b.raw = "not json".into();
        let printed = members_json(&[a, b]).to_string();
        let parsed: serde_json::Value = serde_json::from_str(&printed).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!([
                {"znode": "00000000001", "id": "cluster", "role": "slave", "position": 42},
                {"znode": "00000000002", "data": "not json"},
            ])
        );
        assert_eq!(members_json(&[]).to_string(), "[]");
    }

    /// Two clusters under one zk_path (allowed when their names differ): the check names
    /// them instead of counting one's members and judging by the other's master.
    #[test]
    fn clusters_sharing_a_path_are_told_apart() {
        let mut other = member("00000000004", "master");
        other.data.as_mut().unwrap().id = "billing".into();
        let ours = [
            member("00000000001", "slave"),
            member("00000000002", "master"),
        ];
        assert_eq!(several_clusters(&ours), None);
        let mixed = [ours[0].clone(), ours[1].clone(), other];
        assert_eq!(several_clusters(&mixed), Some(vec!["billing", "cluster"]));
        // --cluster picks one; a name none has is told apart from a cluster that is down.
        let picked = of_cluster(mixed.to_vec(), "billing").unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].znode, "00000000004");
        assert_eq!(
            of_cluster(mixed.to_vec(), "biling").unwrap_err(),
            "billing, cluster"
        );
        assert!(of_cluster(Vec::new(), "billing").unwrap().is_empty());
    }

    /// A node configured with another `replicas` (a typo, a change rolled out halfway) is
    /// named: OK becomes WARNING, and a CRITICAL says it too (it may be why no master is
    /// elected).
    #[test]
    fn members_configured_with_different_replicas_are_named() {
        let with = |znode: &str, role: &str, replicas: u32| {
            let mut m = member(znode, role);
            m.data.as_mut().unwrap().replicas = Some(replicas);
            m
        };
        let same = [
            with("00000000001", "slave", 3),
            with("00000000002", "master", 3),
            with("00000000003", "slave", 3),
        ];
        assert_eq!(check(&same, 3).health, Health::Ok);
        let mixed = [
            with("00000000001", "slave", 3),
            with("00000000002", "master", 3),
            with("00000000003", "slave", 5),
        ];
        let verdict = check(&mixed, 3);
        assert_eq!(verdict.health, Health::Warning);
        assert!(
            verdict.summary.contains(
                "members disagree on replicas (00000000001, 00000000002 3; 00000000003 5)"
            ),
            "{verdict}"
        );
        let leaderless = [
            with("00000000001", "candidate", 3),
            with("00000000003", "candidate", 5),
        ];
        let verdict = check(&leaderless, 3);
        assert_eq!(verdict.health, Health::Critical);
        assert!(
            verdict.summary.contains("disagree on replicas"),
            "{verdict}"
        );
    }

    #[test]
    fn a_full_cluster_with_a_master_is_ok() {
        let members = three_members();
        let verdict = check(&members, 3);
        assert_eq!(verdict.health, Health::Ok);
        assert_eq!(
            verdict.to_string(),
            "FERROMQ OK - master 00000000002 serves at tcp://10.0.0.1:61616 (epoch 4); \
             3 of 3 members registered"
        );
    }

    /// A member whose store is marked damaged is named: with a master, it is catching up
    /// (a WARNING); without one, it may be why no master is elected.
    #[test]
    fn a_damaged_member_is_named() {
        let mut members = three_members();
        members[2].data.as_mut().unwrap().damaged = true;
        let verdict = check(&members, 3);
        assert_eq!(verdict.health, Health::Warning);
        assert!(
            verdict.to_string().ends_with(
                "3 of 3 members registered, 00000000003 marked damaged (a store cut \
                            after a corrupt record: not counted in elections until it has \
                            caught up with a master)"
            ),
            "{verdict}"
        );
        let candidates = [member("00000000001", "candidate"), members[2].clone()];
        let verdict = check(&candidates, 3);
        assert_eq!(verdict.health, Health::Critical);
        assert!(
            verdict.to_string().contains("00000000003 marked damaged"),
            "{verdict}"
        );
    }

    #[test]
    fn a_missing_member_is_a_warning_while_a_master_serves() {
        let members = [
            member("00000000001", "slave"),
            member("00000000002", "master"),
        ];
        let verdict = check(&members, 3);
        assert_eq!(verdict.health, Health::Warning);
        assert!(
            verdict
                .to_string()
                .starts_with("FERROMQ WARNING - 2 of 3 members registered: a node is down"),
            "{verdict}"
        );
    }

    /// More nodes than the check expects: a count mistyped in the check, or another node
    /// joined; not OK either way.
    #[test]
    fn more_members_than_expected_is_a_warning() {
        let members = three_members();
        let verdict = check(&members, 2);
        assert_eq!(verdict.health, Health::Warning);
        assert!(
            verdict.to_string().starts_with(
                "FERROMQ WARNING - 3 of 2 members registered: more nodes than expected"
            ),
            "{verdict}"
        );
    }

    #[test]
    fn no_serving_master_is_critical_however_many_are_registered() {
        // Elected but not yet serving (no replication address), and plain candidates.
        let mut electing = member("00000000002", "master");
        electing.data.as_mut().unwrap().address = None;
        let members = [
            member("00000000001", "candidate"),
            electing,
            member("00000000003", "slave"),
        ];
        let verdict = check(&members, 3);
        assert_eq!(verdict.health, Health::Critical);
        assert!(
            verdict
                .to_string()
                .starts_with("FERROMQ CRITICAL - no master serves clients"),
            "{verdict}"
        );
        assert_eq!(check(&[], 3).health, Health::Critical);
    }

    /// Registered is not enough: the master's `slaves` says who follows it.
    #[test]
    fn a_master_without_enough_slaves_is_critical_and_one_short_a_warning() {
        let with_slaves = |n: Option<u32>| {
            let mut master = member("00000000002", "master");
            master.data.as_mut().unwrap().slaves = n;
            [
                member("00000000001", "slave"),
                master,
                member("00000000003", "slave"),
            ]
        };
        let verdict = check(&with_slaves(Some(0)), 3);
        assert_eq!(verdict.health, Health::Critical, "{verdict}");
        assert!(
            verdict.to_string().starts_with(
                "FERROMQ CRITICAL - master 00000000002 serves at tcp://10.0.0.1:61616 (epoch 4) \
                 but only 0 of the 1 slaves a confirmation needs follow it"
            ),
            "{verdict}"
        );
        let verdict = check(&with_slaves(Some(1)), 3);
        assert_eq!(verdict.health, Health::Warning, "{verdict}");
        assert!(
            verdict
                .to_string()
                .starts_with("FERROMQ WARNING - 1 of 2 slaves follow the master"),
            "{verdict}"
        );
        // A master of an older version publishes no count: judged by the registrations.
        assert_eq!(check(&with_slaves(None), 3).health, Health::Ok);
        // Five nodes: two slaves make a quorum of three, so not CRITICAL (WARNING: two of the
        // five are not registered).
        assert_eq!(check(&with_slaves(Some(2))[..], 5).health, Health::Warning);
    }

    #[test]
    fn junk_under_the_path_is_not_a_member() {
        let mut junk = member("lock", "master");
        junk.data = None;
        let members = [junk, member("00000000002", "master")];
        assert_eq!(check(&members, 2).health, Health::Warning);
    }
}
