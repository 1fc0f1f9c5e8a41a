//! Membership and master election through ZooKeeper, the way ActiveMQ's replicated LevelDB store
//! did it, plus epochs and fencing.
//!
//! This module owns the node's membership znode and the election, and nothing else: it never
//! touches the store or clients. The node lifecycle reads what this node should be from
//! [`Election::roles`] and reports back with [`Election::report_log`],
//! [`Election::publish_master_address`] and [`Election::set_role_info`].
//!
//! # In ZooKeeper
//! - `zk_path` (persistent, created with its parents if missing) has one EPHEMERAL_SEQUENTIAL
//!   child per registered member, `zk_path + "/0" + <10 digits>`, whose data is the JSON of
//!   [`MemberData`] (ActiveMQ's six fields first, in ActiveMQ's order). Operators `ls` it.
//! - The data of `zk_path` itself is the epoch table `{"epochs":{"<broker name>":N}}`
//!   ([`EpochTable`]), changed only by compare-and-set (versioned setData).
//!
//! # The election
//! Members are grouped by `id` (the broker name). The member of a group with the lowest sequence
//! is its coordinator: it runs [`decide::decide`] on every change of the member list or of any
//! member's data and writes the result into the `elected` field of its own znode; the others
//! write `elected: null`. While a master is elected every member publishes `position: -1`; while
//! none is, each publishes its last journal position (and always the epoch of its last record),
//! so an election never waits on stale positions.
//!
//! A member that finds itself elected takes a new epoch, strictly greater than any taken before
//! (max of the stored epoch, of its own last record's epoch and of any master epoch or last
//! record's epoch a member reports, plus one: should ZooKeeper lose the table, the new epoch
//! still exceeds every record of the registered members), with a compare-and-set on the epoch
//! table, and only then becomes
//! [`Role::Master`]. Once its replication listener is bound the lifecycle calls
//! [`Election::publish_master_address`]; the others then become [`Role::Slave`] of that address
//! and epoch.
//!
//! # Fencing
//! - ZooKeeper `Disconnected`: a grace timer of half the session timeout starts (the server
//!   expires the session after one session timeout, so another master can only be elected after
//!   that); if not reconnected by then this node becomes [`Role::Candidate`] ("lost ZooKeeper
//!   connection").
//! - No ZooKeeper at start (no server answers, or the connection drops during the
//!   registration): the node stays a candidate and retries ([`Election::start`]); only an error
//!   no retry fixes (configuration, authentication, ACLs) stops it.
//! - Session expired: a new client, a new znode (a new, last-in-order sequence) and the node
//!   rejoins as a candidate, without the process restarting (ActiveMQ's AMQ-5082). The
//!   session's state is watched from its connection on, so an expiry during the registration
//!   itself (the process paused there) is seen too: a watch made after it would never fire.
//! - Fewer registered members than a quorum, or a member reporting a master epoch newer than
//!   ours: a master becomes a candidate.
//! - A master's [`Lease`]: until 0.9 session timeouts after the latest request ZooKeeper
//!   answered was sent (a renewal every quarter of the session timeout: a `sync`, answered
//!   only through the ensemble's leader, then a read of its own znode). No other master can be
//!   elected before it ends; the master confirms nothing outside it. It needs no event to
//!   lapse, so a process resumed after a long pause is fenced at once.
//!
//! # ZooKeeper 3.4 and 3.5+ alike
//! The client always speaks the 3.4 protocol subset: plain `create` (3.4 closes the connection on
//! `create2`), one-shot watches only (no persistent watches, no `removeWatches`). A one-shot
//! watcher of zookeeper-client is never dropped before it fires, since dropping it sends
//! `removeWatches`: every watch is registered and then held by a small task until it fires or the
//! session ends, and reads that register watches are never cancelled.

pub mod decide;
mod leftover;
pub mod znode;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use self::decide::{Decision, Input, Member};
pub use self::znode::{EpochTable, MemberData};
use self::znode::{ROLE_CANDIDATE, ROLE_MASTER, ROLE_SLAVE};

/// The server version the client is told: 3.4, so that it sends only requests every server
/// from 3.4 on understands (plain create, whose Stat is then not returned).
const SERVER_VERSION: (u32, u32, u32) = (3, 4, 13);

/// Reason of the candidate role after the grace period of a ZooKeeper disconnection.
pub const LOST_CONNECTION: &str = "lost ZooKeeper connection";

/// How a node takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// ZooKeeper connect string, `host:port,host:port[/chroot]`.
    pub zk_address: String,
    /// Digest password; the client authenticates as `fabric:<password>` (as ActiveMQ did) and
    /// creates its znodes readable and writable only by that identity.
    pub zk_password: Option<String>,
    /// Parent znode of the members, e.g. `/activemq/leveldb-stores`.
    pub zk_path: String,
    /// ZooKeeper session timeout (ActiveMQ's default: 2 s).
    pub session_timeout: Duration,
    /// The cluster's broker name: the `id` of its members.
    pub broker_name: String,
    /// Cluster size; a quorum is `replicas/2 + 1`.
    pub replicas: usize,
    /// Election tie-break after (epoch, position).
    pub weight: u32,
    /// Informational container name.
    pub container: Option<String>,
    /// This node's client connector (informational).
    pub client_address: Option<String>,
    /// Where to record the znode this node registers (its path and session), so that after a
    /// restart the node removes the one its previous process left instead of the cluster
    /// waiting a session timeout for it (`leftover`). `None`: not recorded.
    pub registration_file: Option<std::path::PathBuf>,
    /// This node's id (its store's `node.id`), published so that two znodes of one node count
    /// once (see [`MemberData::node`]).
    pub node: Option<String>,
    /// The node's store is marked damaged at the start (see [`MemberData::damaged`]);
    /// [`Election::set_whole`] clears it.
    pub damaged: bool,
}

/// Where this node's journal ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// Epoch of the last record.
    pub epoch: u64,
    /// Journal position after the last record.
    pub position: u64,
}

/// What this node should be now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Neither master nor slave: not elected, or no master to follow yet, or fenced.
    Candidate {
        /// Why, for the log and `ferromq status`.
        reason: String,
    },
    /// Elected master under a new epoch (taken with compare-and-set before this is issued).
    Master {
        /// The epoch to write under.
        epoch: u64,
    },
    /// Follow the master.
    Slave {
        /// `tcp://host:port` of the master's replication listener.
        master: String,
        /// The master's epoch.
        epoch: u64,
    },
}

/// The reason of a candidate that was elected and is taking its epoch: it becomes master
/// next, unless ZooKeeper says otherwise first.
const TAKING_OVER: &str = "elected; taking a new epoch";

impl Role {
    /// A candidate elected and taking its epoch (see `TAKING_OVER`).
    pub fn is_taking_over(&self) -> bool {
        matches!(self, Role::Candidate { reason } if reason == TAKING_OVER)
    }

    fn candidate(reason: impl Into<String>) -> Role {
        Role::Candidate {
            reason: reason.into(),
        }
    }

    /// Whether this is [`Role::Master`].
    pub fn is_master(&self) -> bool {
        matches!(self, Role::Master { .. })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Candidate { reason } => write!(f, "candidate ({reason})"),
            Role::Master { epoch } => write!(f, "master of epoch {epoch}"),
            Role::Slave { master, epoch } => write!(f, "slave of {master} (epoch {epoch})"),
        }
    }
}

/// ZooKeeper's word that this node's mastership of `epoch` still holds, until `until`.
///
/// The servers expire a session only after hearing nothing from it for its timeout, and only
/// then can another master be elected. A request sent at `t` that was answered means they heard
/// from the session at `t` or later, so it cannot expire before `t` + the timeout: the lease
/// runs to nine tenths of that. A master confirms nothing outside its lease (see
/// [`Election::lease`]), so one that was paused past its session (SIGSTOP, a long stall) and
/// resumes confirms nothing before it notices it was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The epoch this node is master of.
    pub epoch: u64,
    /// Until when ZooKeeper vouches for it.
    pub until: Instant,
}

impl Lease {
    /// Whether the lease covers mastership of `epoch` now.
    pub fn holds(lease: Option<&Lease>, epoch: u64) -> bool {
        lease.is_some_and(|l| l.epoch == epoch && Instant::now() < l.until)
    }
}

/// How often a master renews its lease, as a fraction of the session timeout: every quarter.
const LEASE_RENEWALS_PER_TIMEOUT: u32 = 4;

/// Errors of the election.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The configuration cannot work.
    #[error("invalid election configuration: {0}")]
    Config(String),
    /// No session with the ZooKeeper ensemble.
    #[error("cannot connect to ZooKeeper at {address}: {source}{servers}")]
    Connect {
        /// The connect string.
        address: String,
        /// The client's error.
        source: zk::Error,
        /// What a TCP connection to each server found, when no session was had; empty
        /// otherwise.
        servers: String,
    },
    /// A ZooKeeper request failed.
    #[error("ZooKeeper {op} {path}: {source}")]
    ZooKeeper {
        /// The operation.
        op: &'static str,
        /// The znode.
        path: String,
        /// The client's error.
        source: zk::Error,
    },
    /// The members' parent znode does not exist: no node ever registered under that path (a
    /// mistyped `zk_path`, or a cluster never started).
    #[error(
        "no znode {path} in ZooKeeper: no node has registered under this path (the path is made \
         when the first node joins); check the path"
    )]
    NoPath {
        /// The path.
        path: String,
    },
    /// A znode holds data that is not ours.
    #[error("znode {path} does not hold the expected JSON: {source}")]
    Data {
        /// The znode.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl ElectionError {
    /// ZooKeeper refused this client's credentials (a wrong `zk_password`, or none where the
    /// znodes' ACLs want one).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ElectionError::Connect { source, .. } | ElectionError::ZooKeeper { source, .. }
                if matches!(source, zk::Error::NoAuth | zk::Error::AuthFailed)
        )
    }

    /// Whether joining again can succeed with the same configuration: false for a wrong
    /// configuration and for what ZooKeeper refuses for good (authentication, ACLs, a request
    /// it does not support); true for an unreachable ensemble, a lost connection or an expired
    /// session.
    pub fn is_transient(&self) -> bool {
        match self {
            ElectionError::Config(_) | ElectionError::Data { .. } => false,
            // Only `read_cluster` says so; a joining node makes the path.
            ElectionError::NoPath { .. } => true,
            ElectionError::Connect { source, .. } | ElectionError::ZooKeeper { source, .. } => {
                !matches!(
                    source,
                    zk::Error::NoAuth
                        | zk::Error::AuthFailed
                        | zk::Error::InvalidAcl
                        | zk::Error::BadArguments(_)
                        | zk::Error::Unimplemented
                        | zk::Error::NoChildrenForEphemerals
                )
            }
        }
    }
}

/// The pause before another attempt to join after `failures` failed ones in a row: 0.5 s,
/// doubling up to 5 s.
fn join_retry_delay(failures: u32) -> Duration {
    Duration::from_millis(250 << failures.min(5)).min(Duration::from_secs(5))
}

/// The chroot of a connect string `host:port,host:port/chroot`, if it has one.
fn chroot_of(zk_address: &str) -> Option<&str> {
    zk_address
        .find('/')
        .map(|i| &zk_address[i..])
        .filter(|c| *c != "/")
}

fn zk_error<'a>(op: &'static str, path: &'a str) -> impl FnOnce(zk::Error) -> ElectionError + 'a {
    move |source| ElectionError::ZooKeeper {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A node's membership in the election; see the module documentation.
///
/// Dropping it without [`close`](Election::close) also leaves the election (in the
/// background).
pub struct Election {
    commands: mpsc::UnboundedSender<Command>,
    roles: watch::Receiver<Role>,
    generation: RoleGeneration,
    replicas: Arc<AtomicUsize>,
    lease: watch::Receiver<Option<Lease>>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts the roles the election has issued (each [`Role`] sent on the watch is one more); it
/// changes together with the watch, under its lock, so a final log report can name the role
/// it was made in.
type RoleGeneration = Arc<Mutex<u64>>;

fn generation_of(generation: &Mutex<u64>) -> u64 {
    *generation.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Command {
    /// The log state and, for a final one (no role holds the store), the role generation it
    /// was made in.
    ReportLog(LogState, Option<u64>),
    PublishAddress(String, oneshot::Sender<()>),
    SetRoleInfo(String, Option<u64>),
    SetSlaves(u32),
    SetWhole,
    Close(oneshot::Sender<()>),
}

impl Election {
    /// Connects to ZooKeeper, registers this node's znode and spawns the task that follows the
    /// election; later session losses are handled by rejoining. Waits for ZooKeeper as long as
    /// it takes: a failure that another attempt can get past (no server answers, the
    /// connection is lost during the registration, as when the ensemble elects a leader) is
    /// logged and retried after a pause growing from 0.5 s to 5 s. Fails only on what no retry
    /// fixes ([`ElectionError::is_transient`]): the configuration, authentication or ACLs.
    pub async fn start(config: ElectionConfig, log: LogState) -> Result<Election, ElectionError> {
        let config = validate(config)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (roles_tx, roles_rx) = watch::channel(Role::candidate("joining the election"));
        let (lease_tx, lease_rx) = watch::channel(None);
        let mut core = Core::new(config, log, events_tx, roles_tx, lease_tx);
        if let Some(file) = &core.cfg.registration_file {
            core.leftovers.extend(leftover::read(file));
        }
        let generation = core.generation.clone();
        let replicas = core.replicas.clone();
        let mut failures = 0;
        let session = loop {
            let json = core.join_data().to_json();
            match join(&core.cfg, json, core.next_incarnation, &core.leftovers).await {
                Ok(session) => break session,
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    failures += 1;
                    let delay = join_retry_delay(failures);
                    warn!(
                        "{}: cannot join the election yet ({e}); retrying in {delay:?}",
                        core.node()
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        };
        core.next_incarnation += 1;
        core.on_joined(session);
        let task = tokio::spawn(core.run(commands_rx, events_rx));
        Ok(Election {
            commands: commands_tx,
            roles: roles_rx,
            generation,
            replicas,
            lease: lease_rx,
            task,
        })
    }

    /// The `replicas` a master counts quorums with: the configured value, or the one recorded
    /// for this cluster in the epoch table if larger (a node configured with fewer than the
    /// cluster it joins must not confirm with a smaller quorum).
    pub fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed)
    }

    /// What this node should be now; changes are announced on the receiver.
    pub fn roles(&self) -> watch::Receiver<Role> {
        self.roles.clone()
    }

    /// This node's [`Lease`] as master (`None` while it is not master): renewed every quarter
    /// of the session timeout by a `sync` and a read answered by ZooKeeper, and revoked as the
    /// role ends.
    /// A master must confirm nothing unless [`Lease::holds`] for its epoch.
    pub fn lease(&self) -> watch::Receiver<Option<Lease>> {
        self.lease.clone()
    }

    /// Where this node's journal ends now. Cheap: call it whenever the journal moves. It is
    /// published (`epoch`, and `position` while no master is elected) with the next write of
    /// the znode. The lifecycle must report its final position when it stops following a
    /// master, since the next election compares positions.
    pub fn report_log(&self, log: LogState) {
        let _ = self.commands.send(Command::ReportLog(log, None));
    }

    /// Where this node's journal ends, reported once no role holds the store open, so nothing
    /// can move it any more. Only such a final report is published as a `position` an election
    /// compares: a position reported while the node still follows (or leads) could be stale by
    /// the time the master is gone, and electing on a stale, lower position could pick a node
    /// that lacks confirmed records. The report counts only in the role it was made in (see
    /// `RoleGeneration`), so the lifecycle reports again at each candidate role it sees.
    pub fn report_final_log(&self, log: LogState) {
        let made_in = generation_of(&self.generation);
        let _ = self.commands.send(Command::ReportLog(log, Some(made_in)));
    }

    /// Publishes the replication listener's address (`tcp://host:port`) of this node as master;
    /// returns once it is written in ZooKeeper, or at once if this node is not (or no longer)
    /// master.
    pub async fn publish_master_address(&self, address: &str) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::PublishAddress(address.to_owned(), tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// What the node is actually doing (`master`, `slave` or `candidate`, and the epoch it
    /// serves or follows), for the `role` and `master_epoch` fields of its znode. Each role
    /// change of [`roles`](Election::roles) sets them too.
    pub fn set_role_info(&self, role: &str, master_epoch: Option<u64>) {
        let _ = self
            .commands
            .send(Command::SetRoleInfo(role.to_owned(), master_epoch));
    }

    /// How many slaves follow this node as master now, for the `slaves` field of its znode
    /// (published only with its master address, so only while it serves). Cheap: the znode is
    /// rewritten only when its data changes.
    pub fn set_slaves(&self, slaves: usize) {
        let slaves = u32::try_from(slaves).unwrap_or(u32::MAX);
        let _ = self.commands.send(Command::SetSlaves(slaves));
    }

    /// This node's store, marked damaged at the start, holds a master's journal again: it counts
    /// in elections from now on.
    pub fn set_whole(&self) {
        let _ = self.commands.send(Command::SetWhole);
    }

    /// Leaves the election: deletes this node's znode and closes the ZooKeeper session.
    pub async fn close(self) {
        self.leaver().leave().await;
        let _ = self.task.await;
    }

    /// A handle that leaves the election as [`Election::close`] does, for a task that does not
    /// own it (a node whose disk stalled, `crate::watchdog`).
    pub fn leaver(&self) -> Leaver {
        Leaver(self.commands.clone())
    }
}

/// Leaves the election from outside the lifecycle that owns it ([`Election::leaver`]); the
/// owner then sees its role end.
#[derive(Clone)]
pub struct Leaver(mpsc::UnboundedSender<Command>);

impl Leaver {
    /// Deletes this node's znode and closes the ZooKeeper session; returns once done (at once
    /// if the election already ended).
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn validate(mut config: ElectionConfig) -> Result<ElectionConfig, ElectionError> {
    config.zk_path = normalize_path(&config.zk_path)?;
    if config.zk_address.trim().is_empty() {
        return Err(ElectionError::Config("zk_address is empty".into()));
    }
    if config.broker_name.is_empty() {
        return Err(ElectionError::Config("broker_name is empty".into()));
    }
    if config.replicas < 1 {
        return Err(ElectionError::Config("replicas must be at least 1".into()));
    }
    if config.session_timeout < Duration::from_millis(100) {
        return Err(ElectionError::Config(format!(
            "session_timeout {:?} is too short",
            config.session_timeout
        )));
    }
    Ok(config)
}

/// `/a/b` from `/a/b` or `/a/b/`; rejects relative paths, `/` and empty segments.
fn normalize_path(path: &str) -> Result<String, ElectionError> {
    let trimmed = path.trim_end_matches('/');
    if !trimmed.starts_with('/') || trimmed.split('/').skip(1).any(str::is_empty) {
        return Err(ElectionError::Config(format!(
            "zk_path {path:?} must be an absolute znode path other than /"
        )));
    }
    Ok(trimmed.to_owned())
}

fn acls(password: bool) -> zk::Acls<'static> {
    if password {
        zk::Acls::creator_all()
    } else {
        zk::Acls::anyone_all()
    }
}

async fn connect(
    address: &str,
    password: Option<&str>,
    session_timeout: Duration,
) -> Result<zk::Client, ElectionError> {
    let (major, minor, patch) = SERVER_VERSION;
    let mut connector = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_server_version(major, minor, patch);
    if let Some(password) = password {
        connector = connector.with_auth("digest", format!("fabric:{password}").as_bytes());
    }
    match connector.connect(address).await {
        Ok(client) => Ok(client),
        Err(source) => {
            // The client only says it had no session in time; say why, server by server.
            let servers = match source {
                zk::Error::Timeout | zk::Error::ConnectionLoss | zk::Error::NoHosts => {
                    probe_servers(address).await
                }
                _ => String::new(),
            };
            Err(ElectionError::Connect {
                address: address.to_owned(),
                source,
                servers,
            })
        }
    }
}

/// How long [`probe`] waits for a server to accept a TCP connection.
const PROBE: Duration = Duration::from_secs(1);

/// Opens a TCP connection to `server` and closes it: `None` if it accepted one, else why not.
async fn probe(server: String) -> (String, Option<String>) {
    let outcome = match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(&server)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} s", PROBE.as_secs())),
    };
    (server, outcome)
}

/// Opens a TCP connection to each server of `address` (at most a second each, all at once)
/// to tell an operator why no session came: "; no server accepted a connection (...)" with
/// each one's error, or, when some did, that they gave no session (a server outside a quorum
/// does not).
async fn probe_servers(address: &str) -> String {
    // The node's configuration and `status` checked the connect string before any connect.
    let Ok(servers) = crate::config::zk_servers(address) else {
        return String::new();
    };
    let probes: Vec<_> = servers
        .into_iter()
        .map(|server| tokio::spawn(probe(server)))
        .collect();
    let mut results = Vec::new();
    for handle in probes {
        results.extend(handle.await);
    }
    let (up, down): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, e)| e.is_none());
    if up.is_empty() {
        let each: Vec<String> = down
            .iter()
            .map(|(server, e)| format!("{server}: {}", e.as_deref().unwrap_or_default()))
            .collect();
        format!("; no server accepted a connection ({})", each.join("; "))
    } else {
        let up: Vec<&str> = up.iter().map(|(server, _)| server.as_str()).collect();
        format!(
            "; {} accepted a connection but gave no session: a server outside a quorum gives \
             none (are most of the ensemble's servers running?)",
            up.join(", ")
        )
    }
}

/// Connects, creates `zk_path` if missing, registers a new member znode with `json`, removes
/// the `leftovers` of this node's earlier sessions and records the new registration.
async fn join(
    cfg: &ElectionConfig,
    json: String,
    incarnation: u64,
    leftovers: &[leftover::Registration],
) -> Result<Session, ElectionError> {
    let client = connect(
        &cfg.zk_address,
        cfg.zk_password.as_deref(),
        cfg.session_timeout,
    )
    .await?;
    // Watched from the connection on: a session that expires during the registration below
    // (this process paused, say) is seen as expired by the election task. A watcher made
    // after the expiry would never report it (the state is terminal and never changes again),
    // and the node would wait for ever as a candidate on a dead session.
    let state = client.state_watcher();
    let acls = acls(cfg.zk_password.is_some());
    client
        .mkdir(&cfg.zk_path, &zk::CreateMode::Persistent.with_acls(acls))
        .await
        .map_err(|source| match chroot_of(&cfg.zk_address) {
            // ZooKeeper makes no chroot: the path cannot be made below a missing one, and
            // retrying would not change that.
            Some(chroot) if source == zk::Error::NoNode => ElectionError::Config(format!(
                "the chroot {chroot} of zk_address {:?} does not exist in ZooKeeper: create it \
                 (zkCli.sh create {chroot} \"\") or leave it out of zk_address",
                cfg.zk_address
            )),
            _ => zk_error("create", &cfg.zk_path)(source),
        })?;
    let prefix = format!("{}/0", cfg.zk_path);
    let (_, sequence) = client
        .create(
            &prefix,
            json.as_bytes(),
            &zk::CreateMode::EphemeralSequential.with_acls(acls),
        )
        .await
        .map_err(zk_error("create", &prefix))?;
    // The cluster's `replicas`, as its masters recorded it (see `EpochTable::replicas`).
    let cluster_replicas = match client.get_data(&cfg.zk_path).await {
        Ok((bytes, _)) => EpochTable::parse(&bytes)
            .map(|table| table.replicas(&cfg.broker_name))
            .unwrap_or(0),
        Err(e) => return Err(zk_error("get", &cfg.zk_path)(e)),
    };
    let name = format!("0{sequence}");
    let eid = name[1..].to_owned();
    let path = format!("{}/{name}", cfg.zk_path);
    let negotiated = client.session_timeout();
    if negotiated != cfg.session_timeout {
        warn!(
            "ZooKeeper negotiated a session timeout of {negotiated:?} instead of {:?} \
             (the servers' tickTime bounds it to 2..20 ticks)",
            cfg.session_timeout
        );
    }
    info!(
        "{}: registered as {path} (ZooKeeper session {:?})",
        cfg.broker_name,
        client.session_id()
    );
    leftover::remove(&client, leftovers, cfg.client_address.as_deref()).await;
    if let Some(file) = &cfg.registration_file {
        let registration = leftover::Registration {
            path: path.clone(),
            session: client.session_id().0,
        };
        // A line in a small file: not worth a thread hand-off.
        leftover::write(file, &registration);
    }
    Ok(Session {
        incarnation,
        cluster_replicas,
        state,
        timeout: negotiated.min(cfg.session_timeout),
        client,
        name,
        eid,
        path,
        written: Some(json),
        write_in_flight: None,
        write_retry_at: None,
        children_cversion: None,
        children_watch: false,
        members: BTreeMap::new(),
        data_watch: HashSet::new(),
        refresh_at: None,
        my_elected: None,
        effective: None,
        last_decision: None,
        last_coordinator: None,
        coordinator_changed_at: None,
        report_wait_since: None,
        quorum: false,
        cas_in_flight: false,
        cas_retry_at: None,
        granted_epoch: None,
        alive_at: None,
        renewal_in_flight: false,
        renew_at: None,
    })
}

/// How far past the members' newest epoch a master goes when the epoch table has fallen
/// behind their journals (see [`take_epoch`]): more epochs than a master could take unseen
/// before it vanished.
const EPOCH_JUMP_AFTER_LOSS: u64 = 1000;

/// Takes a new epoch for `broker` with compare-and-set on the epoch table in `zk_path`'s data:
/// stored + 1, or `floor` + [`EPOCH_JUMP_AFTER_LOSS`] when the table is behind `floor`, recording `replicas` as the cluster's if it is larger. Returns the
/// epoch, the cluster's `replicas` (the larger) and when the write that took it was sent (the
/// session was alive then: the start of the master's lease).
async fn take_epoch(
    client: &zk::Client,
    zk_path: &str,
    broker: &str,
    floor: u64,
    replicas: usize,
) -> Result<(u64, usize, Instant), ElectionError> {
    let mut warned = false;
    loop {
        let (bytes, stat) = client
            .get_data(zk_path)
            .await
            .map_err(zk_error("get", zk_path))?;
        let mut table = EpochTable::parse(&bytes).map_err(|source| ElectionError::Data {
            path: zk_path.to_owned(),
            source,
        })?;
        // Saturating: a member's JSON could name any epoch (the election then waits, unable
        // to take one above it, rather than this task panicking).
        let stored = table.get(broker);
        let epoch = if stored < floor {
            // The table is behind a journal: it was lost (ZooKeeper's data wiped, the path
            // deleted to unstick an election as ActiveMQ users did) or restored from an older
            // copy. A master that is down now may have taken epochs above `floor` that no live
            // member holds, and wrote records under them; taking one of those numbers again
            // would make two different histories look like one (see
            // `replication::history`). So the epoch jumps well past anything it could have
            // taken.
            let epoch = floor.saturating_add(EPOCH_JUMP_AFTER_LOSS);
            if !warned {
                warned = true;
                warn!(broker, stored, floor, epoch, "the epoch table in {zk_path} is behind the members' journals (lost, restored from an older copy, or a store that ran standalone or under another broker name): taking epoch {epoch}, well past any a vanished master may have used");
            }
            epoch
        } else {
            stored.saturating_add(1)
        };
        table.epochs.insert(broker.to_owned(), epoch);
        let replicas = table.replicas(broker).max(replicas);
        table.replicas.insert(broker.to_owned(), replicas as u64);
        let sent = Instant::now();
        match client
            .set_data(zk_path, table.to_json().as_bytes(), Some(stat.version))
            .await
        {
            Ok(_) => return Ok((epoch, replicas, sent)),
            Err(zk::Error::BadVersion) => {
                debug!("epoch table of {zk_path} changed under us; retrying");
                continue;
            }
            Err(source) => return Err(zk_error("set", zk_path)(source)),
        }
    }
}

// ----- the task ------------------------------------------------------------------------------

/// Completions of the small tasks that do ZooKeeper I/O, tagged with the session incarnation.
enum Event {
    Joined(Result<Box<Session>, ElectionError>),
    Children {
        incarnation: u64,
        watched: bool,
        result: Result<(Vec<String>, zk::Stat), zk::Error>,
    },
    ChildrenChanged {
        incarnation: u64,
        event: zk::EventType,
    },
    Data {
        incarnation: u64,
        name: String,
        watched: bool,
        result: Result<(Vec<u8>, zk::Stat), zk::Error>,
    },
    DataChanged {
        incarnation: u64,
        name: String,
        event: zk::EventType,
    },
    Written {
        incarnation: u64,
        json: String,
        result: Result<(), zk::Error>,
    },
    Epoch {
        incarnation: u64,
        /// The epoch taken, the cluster's `replicas`, and when the write was sent.
        result: Result<(u64, usize, Instant), ElectionError>,
    },
    /// A lease renewal's read, sent at `sent`, was answered (`ok`) or failed.
    Renewed {
        incarnation: u64,
        sent: Instant,
        ok: bool,
    },
}

enum Slot {
    /// Read in flight, never loaded.
    Loading,
    /// Last data read (`None`: not member JSON, ignored).
    Loaded {
        version: i32,
        data: Option<Box<MemberData>>,
    },
}

/// One ZooKeeper session and everything learnt through it.
struct Session {
    incarnation: u64,
    /// The cluster's `replicas` recorded in the epoch table when this session joined (0: none).
    cluster_replicas: usize,
    client: zk::Client,
    state: zk::StateWatcher,
    /// min(requested, negotiated) session timeout.
    timeout: Duration,
    name: String,
    eid: String,
    path: String,
    /// JSON known to be in our znode.
    written: Option<String>,
    write_in_flight: Option<String>,
    write_retry_at: Option<Instant>,
    /// cversion of the last member list applied (`None`: not loaded yet).
    children_cversion: Option<i32>,
    /// A children watch is registered (or being registered) and has not fired.
    children_watch: bool,
    members: BTreeMap<String, Slot>,
    /// Members whose data watch is registered (or being registered) and has not fired.
    data_watch: HashSet<String>,
    refresh_at: Option<Instant>,
    /// Our `elected` (coordinator only).
    my_elected: Option<String>,
    /// The elected member this node goes by.
    effective: Option<String>,
    last_decision: Option<Decision>,
    last_coordinator: Option<String>,
    coordinator_changed_at: Option<Instant>,
    report_wait_since: Option<Instant>,
    /// We see a quorum of our cluster registered.
    quorum: bool,
    cas_in_flight: bool,
    cas_retry_at: Option<Instant>,
    granted_epoch: Option<u64>,
    /// When the latest request that ZooKeeper answered (the epoch's write, a lease renewal)
    /// was sent: the session was alive on the servers then.
    alive_at: Option<Instant>,
    renewal_in_flight: bool,
    renew_at: Option<Instant>,
}

impl Session {
    /// Our znode, as last written, publishes no final position (`position: -1`).
    fn withdrew_position(&self) -> bool {
        self.written
            .as_deref()
            .and_then(|json| MemberData::parse(json.as_bytes()).ok())
            .is_some_and(|data| data.position < 0)
    }
}

/// A complete picture of our cluster's registered members, sorted by sequence.
struct View {
    members: Vec<ViewMember>,
}

struct ViewMember {
    sequence: u64,
    eid: String,
    data: MemberData,
}

impl View {
    fn has(&self, eid: &str) -> bool {
        self.members.iter().any(|m| m.eid == eid)
    }

    fn get(&self, eid: &str) -> Option<&ViewMember> {
        self.members.iter().find(|m| m.eid == eid)
    }

    fn highest_master_epoch(&self) -> u64 {
        self.members
            .iter()
            .filter_map(|m| m.data.master_epoch)
            .max()
            .unwrap_or(0)
    }

    /// What a new epoch must exceed besides the epoch table: `own` (this node's last record's
    /// epoch), every master epoch a member reports and every member's last record's epoch.
    fn epoch_floor(&self, own: u64) -> u64 {
        self.members
            .iter()
            .map(|m| m.data.epoch)
            .fold(own.max(self.highest_master_epoch()), u64::max)
    }
}

impl Session {
    /// Our cluster's members, once the member list and all their data are loaded.
    fn view(&self, broker: &str) -> Option<View> {
        self.children_cversion?;
        let mut members = Vec::new();
        for (name, slot) in &self.members {
            match slot {
                Slot::Loading => return None,
                Slot::Loaded {
                    data: Some(data), ..
                } if data.id == broker => {
                    let (Some(sequence), Some(eid)) =
                        (znode::sequence_of(name), znode::eid_of(name))
                    else {
                        continue;
                    };
                    members.push(ViewMember {
                        sequence,
                        eid: eid.to_owned(),
                        data: MemberData::clone(data),
                    });
                }
                Slot::Loaded { .. } => {}
            }
        }
        members.sort_by_key(|m| m.sequence);
        Some(View { members })
    }
}

struct Core {
    cfg: ElectionConfig,
    /// The `replicas` quorums are counted with: the configured one, or the cluster's if larger
    /// (see [`EpochTable::replicas`]). Shared with [`Election::replicas`].
    replicas: Arc<AtomicUsize>,
    events: mpsc::UnboundedSender<Event>,
    roles: watch::Sender<Role>,
    /// The master's lease (see [`Lease`]), published by [`Core::publish_lease`].
    lease: watch::Sender<Option<Lease>>,
    /// The generation of the role on `roles`.
    generation: RoleGeneration,
    /// The generation of the last master or slave role issued (the lifecycle takes the store
    /// for it).
    store_role: u64,
    log: LogState,
    /// `log` was reported with no store open, in the current role (see
    /// [`Election::report_final_log`]).
    log_final: bool,
    role_info: (String, Option<u64>),
    /// (master epoch, replication address) published by the lifecycle.
    published_address: Option<(u64, String)>,
    /// Slaves following this node as master, as the lifecycle last said (`Election::set_slaves`);
    /// published only with the address.
    slaves: u32,
    pending_publish: Vec<oneshot::Sender<()>>,
    session: Option<Session>,
    next_incarnation: u64,
    join_failures: u32,
    connected: bool,
    disconnected_at: Option<Instant>,
    /// Eids of our earlier (expired) sessions: their znodes linger until the servers expire
    /// them, and we must not follow them.
    previous_eids: Vec<String>,
    /// The znodes of our earlier sessions (and of our previous process, from the registration
    /// file) that the next join removes.
    leftovers: Vec<leftover::Registration>,
    /// The most nodes seen registered beyond `replicas` (warned about once per new count).
    warned_nodes: usize,
}

impl Core {
    fn new(
        cfg: ElectionConfig,
        log: LogState,
        events: mpsc::UnboundedSender<Event>,
        roles: watch::Sender<Role>,
        lease: watch::Sender<Option<Lease>>,
    ) -> Core {
        Core {
            replicas: Arc::new(AtomicUsize::new(cfg.replicas)),
            cfg,
            events,
            roles,
            lease,
            log,
            // The watch's initial role, a candidate's, is the first.
            generation: Arc::new(Mutex::new(1)),
            store_role: 0,
            log_final: true,
            role_info: (ROLE_CANDIDATE.to_owned(), None),
            published_address: None,
            slaves: 0,
            pending_publish: Vec::new(),
            session: None,
            next_incarnation: 1,
            join_failures: 0,
            connected: false,
            disconnected_at: None,
            previous_eids: Vec::new(),
            leftovers: Vec::new(),
            warned_nodes: 0,
        }
    }

    fn node(&self) -> String {
        let mut node = self.cfg.broker_name.clone();
        if let Some(container) = &self.cfg.container {
            node = format!("{node}@{container}");
        }
        match &self.session {
            Some(s) => format!("{node} [{}]", s.name),
            None => node,
        }
    }

    fn grace(&self, s: &Session) -> Duration {
        s.timeout / 2
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        loop {
            self.update();
            let deadline = self.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    None => return self.shutdown(None).await,
                    Some(Command::Close(ack)) => return self.shutdown(Some(ack)).await,
                    Some(command) => self.on_command(command),
                },
                Some(event) = events.recv() => self.on_event(event),
                state = session_state(&mut self.session) => self.on_session_state(state),
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ReportLog(log, made_in) => {
                self.log = log;
                // A final report comes from a lifecycle that left its role (as master, or as a
                // slave) and holds its store still. It is final only if no master or slave role
                // was issued since the role it was made in (nor was that role one): read after
                // the election already made this node a slave or master again (the step-down was
                // slower than the rejoin), even if it is a candidate again by now, it is stale:
                // the lifecycle took the store for that role and its log moved, and publishing
                // the old position as final could elect a node that lacks confirmed records.
                // The lifecycle reports again at each candidate role it sees.
                self.log_final = made_in.is_some_and(|made_in| made_in > self.store_role);
            }
            Command::SetRoleInfo(role, master_epoch) => self.role_info = (role, master_epoch),
            Command::SetSlaves(slaves) => self.slaves = slaves,
            Command::SetWhole => self.cfg.damaged = false,
            Command::PublishAddress(address, ack) => match &*self.roles.borrow() {
                Role::Master { epoch } => {
                    self.published_address = Some((*epoch, address));
                    self.pending_publish.push(ack);
                }
                role => warn!(
                    "{}: not publishing master address {address}: this node is {role}",
                    self.node()
                ),
            },
            Command::Close(_) => unreachable!("handled by run"),
        }
    }

    fn on_session_state(&mut self, state: zk::SessionState) {
        use zk::SessionState::*;
        match state {
            Disconnected => {
                if self.connected {
                    self.connected = false;
                    self.disconnected_at = Some(Instant::now());
                    if let Some(s) = &self.session {
                        warn!(
                            "{}: disconnected from ZooKeeper; a master steps down unless \
                             reconnected within {:?}",
                            self.node(),
                            self.grace(s)
                        );
                    }
                }
            }
            SyncConnected | ConnectedReadOnly => {
                if !self.connected {
                    let away = self.disconnected_at.map(|t| t.elapsed());
                    info!("{}: reconnected to ZooKeeper after {away:?}", self.node());
                    self.connected = true;
                    self.disconnected_at = None;
                    self.refresh();
                }
            }
            Expired | Closed | AuthFailed => {
                self.session_lost(&format!("ZooKeeper session {state}"))
            }
        }
    }

    /// The session is unusable: drop it, become a candidate and join again with a new znode.
    fn session_lost(&mut self, why: &str) {
        warn!(
            "{}: {why}; rejoining the election with a new znode",
            self.node()
        );
        if let Some(s) = self.session.take() {
            self.leftovers.push(leftover::Registration {
                path: s.path.clone(),
                session: s.client.session_id().0,
            });
            self.previous_eids.push(s.eid);
        }
        self.connected = false;
        self.disconnected_at = None;
        self.set_role(Role::candidate(format!("{why}; rejoining")));
        self.spawn_join(Duration::ZERO);
    }

    fn spawn_join(&mut self, delay: Duration) {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let cfg = self.cfg.clone();
        let json = self.join_data().to_json();
        let leftovers = self.leftovers.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = join(&cfg, json, incarnation, &leftovers)
                .await
                .map(Box::new);
            let _ = events.send(Event::Joined(result));
        });
    }

    /// Counts quorums with the cluster's `replicas` (the epoch table's record of its masters')
    /// where it exceeds this node's own, and says so.
    fn adopt_replicas(&mut self, cluster: usize) {
        let effective = cluster.max(self.cfg.replicas);
        let before = self.replicas.swap(effective, Ordering::Relaxed);
        if effective != before && effective > self.cfg.replicas {
            warn!(
                "{}: this node is configured with replicas = {}, but masters of this cluster \
                 have run with replicas = {cluster} (the epoch table in {}): it counts quorums \
                 of {cluster} replicas. Set replicas = {cluster} in its configuration",
                self.node(),
                self.cfg.replicas,
                self.cfg.zk_path
            );
        }
    }

    fn on_joined(&mut self, session: Session) {
        self.adopt_replicas(session.cluster_replicas);
        // The join removed what it could of them; the rest expire by themselves.
        self.leftovers.clear();
        self.join_failures = 0;
        self.connected = true;
        self.disconnected_at = None;
        self.session = Some(session);
        self.list_children();
    }

    fn current(&mut self, incarnation: u64) -> Option<&mut Session> {
        self.session
            .as_mut()
            .filter(|s| s.incarnation == incarnation)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Joined(Ok(session)) => self.on_joined(*session),
            Event::Joined(Err(e)) => {
                self.join_failures += 1;
                let delay = join_retry_delay(self.join_failures);
                warn!(
                    "{}: cannot rejoin the election ({e}); retrying in {delay:?}",
                    self.node()
                );
                self.spawn_join(delay);
            }
            Event::Children {
                incarnation,
                watched,
                result,
            } => self.on_children(incarnation, watched, result),
            Event::ChildrenChanged { incarnation, event } => {
                let Some(s) = self.current(incarnation) else {
                    return;
                };
                s.children_watch = false;
                if event != zk::EventType::Session {
                    self.list_children();
                }
            }
            Event::Data {
                incarnation,
                name,
                watched,
                result,
            } => self.on_data(incarnation, name, watched, result),
            Event::DataChanged {
                incarnation,
                name,
                event,
            } => {
                let Some(s) = self.current(incarnation) else {
                    return;
                };
                s.data_watch.remove(&name);
                match event {
                    zk::EventType::NodeDeleted => {
                        s.members.remove(&name);
                    }
                    zk::EventType::NodeDataChanged | zk::EventType::NodeCreated => {
                        if s.members.contains_key(&name) {
                            self.read_member(&name);
                        }
                    }
                    zk::EventType::NodeChildrenChanged | zk::EventType::Session => {}
                }
            }
            Event::Written {
                incarnation,
                json,
                result,
            } => {
                let node = self.node();
                let Some(s) = self.current(incarnation) else {
                    return;
                };
                s.write_in_flight = None;
                match result {
                    Ok(()) => s.written = Some(json),
                    Err(zk::Error::NoNode) => {
                        self.session_lost("our membership znode vanished");
                    }
                    Err(e) => {
                        debug!("{node}: writing our znode failed: {e}");
                        s.write_retry_at = Some(Instant::now() + Duration::from_millis(500));
                    }
                }
            }
            Event::Epoch {
                incarnation,
                result,
            } => {
                let node = self.node();
                let Some(s) = self.current(incarnation) else {
                    return;
                };
                s.cas_in_flight = false;
                match result {
                    Ok((epoch, replicas, sent)) => {
                        info!("{node}: took epoch {epoch}");
                        s.granted_epoch = Some(epoch);
                        s.alive_at = s.alive_at.max(Some(sent));
                        self.adopt_replicas(replicas);
                    }
                    Err(e) => {
                        warn!("{node}: cannot take a new epoch: {e}");
                        s.cas_retry_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            Event::Renewed {
                incarnation,
                sent,
                ok,
            } => {
                let Some(s) = self.current(incarnation) else {
                    return;
                };
                s.renewal_in_flight = false;
                if ok {
                    s.alive_at = s.alive_at.max(Some(sent));
                    s.renew_at = Some(sent + s.timeout / LEASE_RENEWALS_PER_TIMEOUT);
                } else {
                    // Not connected, or the request failed: try again soon (the disconnection
                    // grace decides whether this node steps down).
                    s.renew_at =
                        Some(Instant::now() + s.timeout / (LEASE_RENEWALS_PER_TIMEOUT * 4));
                }
            }
        }
    }

    fn on_children(
        &mut self,
        incarnation: u64,
        watched: bool,
        result: Result<(Vec<String>, zk::Stat), zk::Error>,
    ) {
        let node = self.node();
        let Some(s) = self.current(incarnation) else {
            return;
        };
        let (children, stat) = match result {
            Ok(ok) => ok,
            Err(e) => {
                if watched {
                    s.children_watch = false;
                }
                if e == zk::Error::NoNode {
                    return self.session_lost("the election path vanished");
                }
                debug!("{node}: listing members failed: {e}");
                s.refresh_at = Some(Instant::now() + Duration::from_millis(500));
                return;
            }
        };
        if s.children_cversion.is_some_and(|seen| stat.cversion < seen) {
            return; // an older list, delivered late
        }
        s.children_cversion = Some(stat.cversion);
        let names: BTreeSet<String> = children
            .into_iter()
            .filter(|n| znode::sequence_of(n).is_some())
            .collect();
        s.members.retain(|name, _| names.contains(name));
        let new: Vec<String> = names
            .iter()
            .filter(|n| !s.members.contains_key(*n))
            .cloned()
            .collect();
        for name in &new {
            s.members.insert(name.clone(), Slot::Loading);
        }
        // An expired session's znode, once gone from a listing, is gone for good; its eid may
        // come back only as another node's, after the election path was made again (sequence
        // numbers start over), and must not stop this node from following that one.
        self.previous_eids
            .retain(|eid| names.iter().any(|n| znode::eid_of(n) == Some(eid.as_str())));
        for name in new {
            self.read_member(&name);
        }
    }

    fn on_data(
        &mut self,
        incarnation: u64,
        name: String,
        watched: bool,
        result: Result<(Vec<u8>, zk::Stat), zk::Error>,
    ) {
        let node = self.node();
        let Some(s) = self.current(incarnation) else {
            return;
        };
        match result {
            Ok((bytes, stat)) => {
                let Some(slot) = s.members.get_mut(&name) else {
                    return;
                };
                if let Slot::Loaded { version, .. } = slot {
                    if stat.version < *version {
                        return; // an older read, delivered late
                    }
                }
                let data = match MemberData::parse(&bytes) {
                    Ok(data) => Some(Box::new(data)),
                    Err(e) => {
                        debug!("{node}: ignoring znode {name}: not member JSON ({e})");
                        None
                    }
                };
                *slot = Slot::Loaded {
                    version: stat.version,
                    data,
                };
            }
            Err(e) => {
                if watched {
                    s.data_watch.remove(&name);
                }
                if e == zk::Error::NoNode {
                    s.members.remove(&name);
                } else if e == zk::Error::NoAuth {
                    // Not ours to read (another cluster's member, made with its zk_password,
                    // under the same zk_path): not a member. Waiting for it to become readable
                    // would hold this cluster's election for good.
                    warn!("{node}: znode {name} under the election path cannot be read with this node's credentials (NoAuth): not counted as a member; give each cluster its own zk_path");
                    if let Some(slot) = s.members.get_mut(&name) {
                        // Version -1: a later read (the ACL changed) is taken.
                        *slot = Slot::Loaded {
                            version: -1,
                            data: None,
                        };
                    }
                } else {
                    debug!("{node}: reading member {name} failed: {e}");
                    s.refresh_at = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }
    }

    /// Lists the members, with a watch unless one is pending.
    fn list_children(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let events = self.events.clone();
        let incarnation = s.incarnation;
        let client = s.client.clone();
        let path = self.cfg.zk_path.clone();
        if s.children_watch {
            let list = client.get_children(&path);
            tokio::spawn(async move {
                let result = list.await;
                let _ = events.send(Event::Children {
                    incarnation,
                    watched: false,
                    result,
                });
            });
            return;
        }
        s.children_watch = true;
        // The watcher is held until it fires: dropping it early would send removeWatches,
        // which a 3.4 server answers by closing the connection.
        tokio::spawn(async move {
            let result = client.get_and_watch_children(&path).await;
            match result {
                Ok((children, stat, watcher)) => {
                    drop(client);
                    let _ = events.send(Event::Children {
                        incarnation,
                        watched: true,
                        result: Ok((children, stat)),
                    });
                    let event = watcher.changed().await;
                    let _ = events.send(Event::ChildrenChanged {
                        incarnation,
                        event: event.event_type,
                    });
                }
                Err(e) => {
                    let _ = events.send(Event::Children {
                        incarnation,
                        watched: true,
                        result: Err(e),
                    });
                }
            }
        });
    }

    /// Reads one member's data, with a watch unless one is pending.
    fn read_member(&mut self, name: &str) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let events = self.events.clone();
        let incarnation = s.incarnation;
        let client = s.client.clone();
        let path = format!("{}/{name}", self.cfg.zk_path);
        let name = name.to_owned();
        if s.data_watch.contains(&name) {
            let read = client.get_data(&path);
            tokio::spawn(async move {
                let result = read.await;
                let _ = events.send(Event::Data {
                    incarnation,
                    name,
                    watched: false,
                    result,
                });
            });
            return;
        }
        s.data_watch.insert(name.clone());
        tokio::spawn(async move {
            let result = client.get_and_watch_data(&path).await;
            match result {
                Ok((bytes, stat, watcher)) => {
                    drop(client);
                    let _ = events.send(Event::Data {
                        incarnation,
                        name: name.clone(),
                        watched: true,
                        result: Ok((bytes, stat)),
                    });
                    let event = watcher.changed().await;
                    let _ = events.send(Event::DataChanged {
                        incarnation,
                        name,
                        event: event.event_type,
                    });
                }
                Err(e) => {
                    let _ = events.send(Event::Data {
                        incarnation,
                        name,
                        watched: true,
                        result: Err(e),
                    });
                }
            }
        });
    }

    /// Reads everything again (after a reconnection or a failed read).
    fn refresh(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.refresh_at = None;
        let names: Vec<String> = s.members.keys().cloned().collect();
        self.list_children();
        for name in names {
            self.read_member(&name);
        }
    }

    /// Our znode's data when (re)joining: a candidate reporting its position.
    fn join_data(&self) -> MemberData {
        MemberData {
            id: self.cfg.broker_name.clone(),
            container: self.cfg.container.clone(),
            address: None,
            position: if self.log_final {
                position(self.log)
            } else {
                -1
            },
            weight: self.cfg.weight.into(),
            elected: None,
            epoch: self.log.epoch,
            role: ROLE_CANDIDATE.to_owned(),
            master_epoch: None,
            client_address: self.cfg.client_address.clone(),
            quorum: false,
            slaves: None,
            damaged: self.cfg.damaged,
            node: self.cfg.node.clone(),
            replicas: u32::try_from(self.cfg.replicas).ok(),
        }
    }

    /// Our znode's data now.
    fn desired_data(&self, s: &Session) -> MemberData {
        let address = match (&*self.roles.borrow(), &self.published_address) {
            (Role::Master { epoch }, Some((published, address))) if published == epoch => {
                Some(address.clone())
            }
            _ => None,
        };
        let slaves = address.is_some().then_some(self.slaves);
        MemberData {
            id: self.cfg.broker_name.clone(),
            container: self.cfg.container.clone(),
            address,
            position: if s.effective.is_some() || !self.log_final {
                -1
            } else {
                position(self.log)
            },
            weight: self.cfg.weight.into(),
            elected: s.my_elected.clone(),
            epoch: self.log.epoch,
            role: self.role_info.0.clone(),
            master_epoch: self.role_info.1,
            client_address: self.cfg.client_address.clone(),
            quorum: s.quorum && self.connected,
            slaves,
            damaged: self.cfg.damaged,
            node: self.cfg.node.clone(),
            replicas: u32::try_from(self.cfg.replicas).ok(),
        }
    }

    /// Recomputes the election from what we know, emits our role and writes our znode.
    fn update(&mut self) {
        let now = Instant::now();
        self.step(now);
        self.renew_lease(now);
        self.publish_lease();
        self.settle_publishes();
    }

    /// While master, sends a `sync` (answered only through the ensemble's leader) and a read
    /// of its own znode to ZooKeeper every quarter of the session timeout: their answer renews
    /// the lease (see [`Lease`]).
    fn renew_lease(&mut self, now: Instant) {
        let master = self.roles.borrow().is_master();
        let connected = self.connected;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if !master {
            s.renew_at = None;
            return;
        }
        if !connected || s.renewal_in_flight || s.renew_at.is_some_and(|t| now < t) {
            return;
        }
        s.renewal_in_flight = true;
        s.renew_at = None;
        let (client, path) = (s.client.clone(), s.path.clone());
        let events = self.events.clone();
        let incarnation = s.incarnation;
        tokio::spawn(async move {
            // A `sync` first: the server answers it only through the ensemble's leader, which
            // expires sessions. A read alone may be answered by a follower cut off from the
            // leader (for up to `syncLimit` ticks) while the leader expires this session.
            // Then our own znode: it exists while the session does.
            let ok = client.sync(&path).await.is_ok()
                && matches!(client.check_stat(&path).await, Ok(Some(_)));
            let _ = events.send(Event::Renewed {
                incarnation,
                sent: now,
                ok,
            });
        });
    }

    /// Publishes the lease of the current role: the master's epoch until nine tenths of a
    /// session timeout after the latest answered request was sent; nothing otherwise.
    fn publish_lease(&self) {
        let lease = match (&*self.roles.borrow(), &self.session) {
            (Role::Master { epoch }, Some(s)) => s.alive_at.map(|t| Lease {
                epoch: *epoch,
                until: t + s.timeout * 9 / 10,
            }),
            _ => None,
        };
        self.lease.send_if_modified(|current| {
            let changed = *current != lease;
            *current = lease;
            changed
        });
    }

    fn step(&mut self, now: Instant) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if !self.connected {
            let grace = self.grace(s);
            if self.disconnected_at.is_some_and(|t| now >= t + grace) {
                self.set_role(Role::candidate(LOST_CONNECTION));
            }
            return;
        }
        if s.refresh_at.is_some_and(|t| now >= t) {
            self.refresh();
        }
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let view = s.view(&self.cfg.broker_name);
        if let Some(view) = view {
            if !view.has(&s.eid) {
                // Listed but not ours any more, or not listed at all.
                if s.children_cversion.is_some() && !s.members.contains_key(&s.name) {
                    return self.session_lost("our membership znode vanished");
                }
            } else {
                self.elect(&view, now);
            }
        }
        self.write();
    }

    /// The election proper, on a complete view that contains us.
    fn elect(&mut self, view: &View, now: Instant) {
        let node = self.node();
        let replicas = self.replicas.load(Ordering::Relaxed);
        let quorum = decide::quorum(replicas);
        let s = self.session.as_mut().expect("called with a session");
        let hold = s.timeout;
        let report_wait = s.timeout * 2;
        let coordinator = &view.members[0];
        let coordinating = coordinator.eid == s.eid;
        if s.last_coordinator.as_deref() != Some(&coordinator.eid) {
            if s.last_coordinator.is_some() {
                s.coordinator_changed_at = Some(now);
            }
            s.last_coordinator = Some(coordinator.eid.clone());
        }

        // The coordinator decides.
        if coordinating {
            // A new coordinator goes on with the elected member it followed.
            let current = s.my_elected.clone().or_else(|| s.effective.clone());
            let wait_over = s.report_wait_since.is_some_and(|t| now >= t + report_wait);
            let members: Vec<Member<'_>> = view
                .members
                .iter()
                .map(|m| Member {
                    sequence: m.sequence,
                    eid: &m.eid,
                    data: &m.data,
                })
                .collect();
            let decision = decide::decide(&Input {
                members: &members,
                replicas,
                current: current.as_deref(),
                report_wait_over: wait_over,
            });
            if matches!(decision, Decision::WaitForReports { .. }) {
                s.report_wait_since.get_or_insert(now);
            } else {
                s.report_wait_since = None;
            }
            if s.last_decision.as_ref() != Some(&decision) {
                info!("{node}: coordinator: {decision}");
                s.last_decision = Some(decision.clone());
            }
            s.my_elected = decision.elected().map(str::to_owned);
        } else {
            s.my_elected = None;
            s.report_wait_since = None;
            s.last_decision = None;
        }

        // The elected member this node goes by.
        let announced = if coordinating {
            s.my_elected.clone()
        } else {
            coordinator.data.elected.clone()
        }
        .filter(|eid| view.has(eid));
        let holding = !coordinating && s.coordinator_changed_at.is_some_and(|t| now < t + hold);
        let effective = match announced {
            Some(eid) => Some(eid),
            // A new coordinator has not written its decision yet: keep following.
            None if holding => s.effective.clone().filter(|eid| view.has(eid)),
            None => None,
        };
        s.effective = effective.clone();
        let nodes = decide::count_nodes(view.members.iter().map(|m| &m.data));
        s.quorum = nodes >= quorum;
        if nodes > replicas && nodes > self.warned_nodes {
            warn!(
                "{node}: {nodes} nodes of this cluster are registered, but replicas = \
                 {replicas}: a confirmation needs {quorum} of them, and two groups of {quorum} \
                 need not share a node, so a failover can lose confirmed messages. Set replicas \
                 = {nodes} on every node (or stop the extra node)"
            );
            self.warned_nodes = nodes;
        }

        // Our role.
        let current_role = self.roles.borrow().clone();
        let s = self.session.as_mut().expect("called with a session");
        let highest = view.highest_master_epoch();
        let mut elected_self = false;
        let role = if !s.quorum {
            Role::candidate(
                Decision::NoQuorum {
                    members: nodes,
                    quorum,
                }
                .to_string(),
            )
        } else {
            match &effective {
                None => match (&s.last_decision, coordinating) {
                    (Some(decision), true) => Role::candidate(decision.to_string()),
                    _ => Role::candidate(format!(
                        "no master elected (coordinator {})",
                        coordinator.eid
                    )),
                },
                Some(eid) if *eid == s.eid => {
                    elected_self = true;
                    match current_role {
                        Role::Master { epoch } if highest <= epoch => Role::Master { epoch },
                        Role::Master { epoch } => Role::candidate(format!(
                            "a member reports master epoch {highest}, newer than ours ({epoch})"
                        )),
                        _ => {
                            let floor = view.epoch_floor(self.log.epoch);
                            match s.granted_epoch.take() {
                                Some(epoch) if epoch > floor => Role::Master { epoch },
                                _ => {
                                    if !s.cas_in_flight && s.cas_retry_at.is_none_or(|t| now >= t) {
                                        s.cas_retry_at = None;
                                        Self::spawn_take_epoch(s, &self.cfg, &self.events, floor);
                                    }
                                    Role::candidate(TAKING_OVER)
                                }
                            }
                        }
                    }
                }
                // Ours unless its data names another node: after the election path was made
                // again, sequence numbers start over, and our old eid may be another node's.
                Some(eid)
                    if self.previous_eids.contains(eid)
                        && !view.get(eid).is_some_and(|m| {
                            m.data.node.is_some() && m.data.node != self.cfg.node
                        }) =>
                {
                    Role::candidate(format!(
                        "the elected member {eid} is our expired session's znode; waiting for \
                         it to vanish"
                    ))
                }
                Some(eid) => match view.get(eid).and_then(|m| m.data.serving_master()) {
                    // Only once our znode says `position: -1`: a slave acknowledges records
                    // past its last final report, which an election would otherwise still
                    // compare as final (the write failed, or this node is cut off from
                    // ZooKeeper) and so could elect a node lacking what this one confirmed.
                    Some(_) if !s.withdrew_position() => Role::candidate(
                        "waiting for our znode to withdraw our final position before following",
                    ),
                    Some((address, epoch)) => Role::Slave {
                        master: address.to_owned(),
                        epoch,
                    },
                    None => Role::candidate(format!(
                        "waiting for the elected member {eid} to publish its replication address"
                    )),
                },
            }
        };
        if !elected_self {
            s.granted_epoch = None;
        }
        self.set_role(role);
    }

    fn spawn_take_epoch(
        s: &mut Session,
        cfg: &ElectionConfig,
        events: &mpsc::UnboundedSender<Event>,
        floor: u64,
    ) {
        s.cas_in_flight = true;
        let client = s.client.clone();
        let path = cfg.zk_path.clone();
        let broker = cfg.broker_name.clone();
        let events = events.clone();
        let incarnation = s.incarnation;
        let replicas = cfg.replicas;
        tokio::spawn(async move {
            let result = take_epoch(&client, &path, &broker, floor, replicas).await;
            let _ = events.send(Event::Epoch {
                incarnation,
                result,
            });
        });
    }

    /// Writes our znode if its data should change (one write in flight at a time).
    fn write(&mut self) {
        let now = Instant::now();
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if !self.connected
            || s.write_in_flight.is_some()
            || s.write_retry_at.is_some_and(|t| now < t)
        {
            return;
        }
        let json = self.desired_data(s).to_json();
        let s = self.session.as_mut().expect("checked");
        s.write_retry_at = None;
        if s.written.as_deref() == Some(json.as_str()) {
            return;
        }
        s.write_in_flight = Some(json.clone());
        let write = s.client.set_data(&s.path, json.as_bytes(), None);
        let events = self.events.clone();
        let incarnation = s.incarnation;
        tokio::spawn(async move {
            let result = write.await.map(|_| ());
            let _ = events.send(Event::Written {
                incarnation,
                json,
                result,
            });
        });
    }

    /// Answers `publish_master_address` calls once the address is in ZooKeeper (or moot).
    fn settle_publishes(&mut self) {
        if self.pending_publish.is_empty() {
            return;
        }
        let done = match (
            &*self.roles.borrow(),
            &self.published_address,
            &self.session,
        ) {
            (Role::Master { epoch }, Some((published, address)), Some(s)) if published == epoch => {
                s.written
                    .as_deref()
                    .and_then(|json| MemberData::parse(json.as_bytes()).ok())
                    .is_some_and(|data| data.address.as_deref() == Some(address.as_str()))
            }
            _ => true,
        };
        if done {
            for ack in self.pending_publish.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    fn set_role(&mut self, role: Role) {
        if *self.roles.borrow() == role {
            return;
        }
        self.role_info = match &role {
            Role::Master { epoch } => (ROLE_MASTER.to_owned(), Some(*epoch)),
            Role::Slave { epoch, .. } => (ROLE_SLAVE.to_owned(), Some(*epoch)),
            Role::Candidate { .. } => (ROLE_CANDIDATE.to_owned(), None),
        };
        if !role.is_master() {
            self.published_address = None;
        }
        info!(
            "{}: now {role}; log epoch {}, position {}",
            self.node(),
            self.log.epoch,
            self.log.position
        );
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *generation += 1;
        if !matches!(role, Role::Candidate { .. }) {
            // The lifecycle opens the store for this role: its log is final again only when it
            // reports so after closing it, in a later role.
            self.log_final = false;
            self.store_role = *generation;
        }
        self.roles.send_replace(role);
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut deadlines = Vec::new();
        if let Some(s) = &self.session {
            if let Some(t) = self.disconnected_at {
                deadlines.push(t + self.grace(s));
            }
            if let Some(t) = s.report_wait_since {
                deadlines.push(t + s.timeout * 2);
            }
            if let Some(t) = s.coordinator_changed_at {
                deadlines.push(t + s.timeout);
            }
            deadlines.extend(s.cas_retry_at);
            deadlines.extend(s.renew_at);
            deadlines.extend(s.refresh_at);
            deadlines.extend(s.write_retry_at);
        }
        deadlines
            .into_iter()
            .filter(|t| *t > now)
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }

    async fn shutdown(mut self, ack: Option<oneshot::Sender<()>>) {
        self.set_role(Role::candidate("left the election"));
        self.pending_publish.clear();
        if let Some(s) = self.session.take() {
            let mut state = s.client.state_watcher();
            if self.connected {
                let delete = s.client.delete(&s.path, None);
                match tokio::time::timeout(s.timeout, delete).await {
                    Ok(Ok(())) => info!(
                        "{}: left the election ({} deleted)",
                        self.cfg.broker_name, s.path
                    ),
                    Ok(Err(e)) => warn!("{}: deleting {}: {e}", self.cfg.broker_name, s.path),
                    Err(_) => warn!("{}: deleting {} timed out", self.cfg.broker_name, s.path),
                }
            }
            let timeout = s.timeout;
            // Dropping the last client closes the session (helper tasks drop theirs as soon as
            // their request completes); held watchers then fire with the session's end.
            drop(s);
            let closed = async {
                while !state.peek_state().is_terminated() {
                    if state.changed().await.is_terminated() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, closed).await;
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

async fn session_state(session: &mut Option<Session>) -> zk::SessionState {
    match session {
        Some(s) => s.state.changed().await,
        None => std::future::pending().await,
    }
}

fn position(log: LogState) -> i64 {
    i64::try_from(log.position).unwrap_or(i64::MAX)
}

// ----- `ferromq status` ----------------------------------------------------------------------

/// One znode under `zk_path`, as read by [`read_cluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Znode name, e.g. `00000000003`.
    pub znode: String,
    /// Its eid (`0000000003`); `None` for a child that is not a member znode.
    pub eid: Option<String>,
    /// Its sequence number.
    pub sequence: Option<u64>,
    /// The parsed JSON; `None` if the data is not member JSON.
    pub data: Option<MemberData>,
    /// The data as stored.
    pub raw: String,
    /// Whether the coordinator of its cluster names it in `elected`.
    pub elected: bool,
}

/// Reads every member of `zk_path` (for `ferromq status`), sorted by sequence.
pub async fn read_cluster(
    zk_address: &str,
    zk_path: &str,
    password: Option<&str>,
) -> Result<Vec<MemberView>, ElectionError> {
    let path = normalize_path(zk_path)?;
    let client = connect(zk_address, password, Duration::from_secs(4)).await?;
    let names = match client.get_children(&path).await {
        Ok((names, _)) => names,
        Err(zk::Error::NoNode) => return Err(ElectionError::NoPath { path }),
        Err(e) => return Err(zk_error("list", &path)(e)),
    };
    let mut members = Vec::new();
    for name in names {
        let child = format!("{path}/{name}");
        let bytes = match client.get_data(&child).await {
            Ok((bytes, _)) => bytes,
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(zk_error("get", &child)(e)),
        };
        members.push(MemberView {
            eid: znode::eid_of(&name).map(str::to_owned),
            sequence: znode::sequence_of(&name),
            data: MemberData::parse(&bytes).ok(),
            raw: String::from_utf8_lossy(&bytes).into_owned(),
            znode: name,
            elected: false,
        });
    }
    members.sort_by(|a, b| {
        (a.sequence.unwrap_or(u64::MAX), &a.znode).cmp(&(b.sequence.unwrap_or(u64::MAX), &b.znode))
    });
    mark_elected(&mut members);
    Ok(members)
}

/// Sets [`MemberView::elected`]: the `elected` of the coordinator (lowest sequence) of each id.
fn mark_elected(members: &mut [MemberView]) {
    let mut elected: BTreeMap<String, Option<String>> = BTreeMap::new();
    for m in members.iter() {
        if let (Some(data), Some(_)) = (&m.data, m.sequence) {
            // members are sorted by sequence: the first of an id is its coordinator
            elected
                .entry(data.id.clone())
                .or_insert_with(|| data.elected.clone());
        }
    }
    for m in members.iter_mut() {
        m.elected = match (&m.data, &m.eid) {
            (Some(data), Some(eid)) => elected
                .get(&data.id)
                .is_some_and(|e| e.as_deref() == Some(eid.as_str())),
            _ => false,
        };
    }
}

/// The members as a table: znode, id, role, elected?, epoch, position, address, weight, quorum,
/// slaves (a serving master's followers; `-` for the others), node (the node's id, which names
/// its host: the row missing when a node is down).
pub fn format_table(members: &[MemberView]) -> String {
    let header = [
        "znode", "id", "role", "elected?", "epoch", "position", "address", "weight", "quorum",
        "slaves", "node",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for m in members {
        let row = match &m.data {
            Some(d) => vec![
                m.znode.clone(),
                d.id.clone(),
                match d.master_epoch {
                    Some(e) if d.role != ROLE_CANDIDATE => format!("{}({e})", d.role),
                    _ => d.role.clone(),
                } + if d.damaged { " damaged" } else { "" },
                if m.elected { "yes" } else { "-" }.to_owned(),
                d.epoch.to_string(),
                d.position.to_string(),
                d.address.clone().unwrap_or_else(|| "-".to_owned()),
                d.weight.to_string(),
                if d.quorum { "yes" } else { "no" }.to_owned(),
                d.slaves.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                d.node.clone().unwrap_or_else(|| "-".to_owned()),
            ],
            None => {
                let mut row = vec![
                    m.znode.clone(),
                    "?".to_owned(),
                    "(not member JSON)".to_owned(),
                ];
                row.resize(header.len(), "-".to_owned());
                row
            }
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status` and a joining node say why ZooKeeper gave no session: nothing listening (the
    /// refusal named), or servers that listen but give no session (no quorum).
    #[tokio::test]
    async fn a_failed_connect_names_what_each_server_did() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let refused = probe_servers(&closed.to_string()).await;
        assert!(
            refused.starts_with(&format!("; no server accepted a connection ({closed}: ")),
            "{refused}"
        );
        assert!(refused.to_lowercase().contains("refused"), "{refused}");

        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listening.local_addr().unwrap();
        let mixed = probe_servers(&format!("{closed},{open}")).await;
        assert!(
            mixed.starts_with(&format!(
                "; {open} accepted a connection but gave no session"
            )),
            "{mixed}"
        );
    }

    /// Joining at start waits out an unreachable or unsteady ensemble and stops only on what
    /// no retry fixes.
    #[test]
    fn only_errors_a_retry_cannot_fix_stop_the_join() {
        let connect = |source| ElectionError::Connect {
            address: "zk:2181".into(),
            source,
            servers: String::new(),
        };
        let request = |source| ElectionError::ZooKeeper {
            op: "create",
            path: "/activemq/leveldb-stores/0".into(),
            source,
        };
        for transient in [
            connect(zk::Error::Timeout),
            connect(zk::Error::NoHosts),
            request(zk::Error::ConnectionLoss),
            request(zk::Error::SessionExpired),
        ] {
            assert!(transient.is_transient(), "{transient} should be retried");
        }
        for permanent in [
            ElectionError::Config(
                "zk_path \"x\" must be an absolute znode path other than /".into(),
            ),
            connect(zk::Error::AuthFailed),
            request(zk::Error::NoAuth),
            request(zk::Error::InvalidAcl),
        ] {
            assert!(
                !permanent.is_transient(),
                "{permanent} should stop the node"
            );
        }
        assert_eq!(join_retry_delay(1), Duration::from_millis(500));
        assert_eq!(join_retry_delay(2), Duration::from_secs(1));
        assert_eq!(join_retry_delay(40), Duration::from_secs(5));
    }

    fn view(znode: &str, data: Option<MemberData>) -> MemberView {
        MemberView {
            eid: znode::eid_of(znode).map(str::to_owned),
            sequence: znode::sequence_of(znode),
            raw: data.as_ref().map(MemberData::to_json).unwrap_or_default(),
            znode: znode.to_owned(),
            data,
            elected: false,
        }
    }

    fn data(id: &str, role: &str, elected: Option<&str>) -> MemberData {
        MemberData {
            id: id.into(),
            container: None,
            address: (role == ROLE_MASTER).then(|| "tcp://10.0.0.1:61619".to_owned()),
            position: -1,
            weight: 1,
            elected: elected.map(str::to_owned),
            epoch: 2,
            role: role.into(),
            master_epoch: (role != ROLE_CANDIDATE).then_some(2),
            client_address: None,
            quorum: true,
            slaves: (role == ROLE_MASTER).then_some(2),
            damaged: false,
            node: None,
            replicas: None,
        }
    }

    #[test]
    fn elected_is_what_each_coordinator_says() {
        let mut members = vec![
            view(
                "00000000000",
                Some(data("a", ROLE_SLAVE, Some("0000000001"))),
            ),
            view("00000000001", Some(data("a", ROLE_MASTER, None))),
            view("00000000002", Some(data("b", ROLE_CANDIDATE, None))),
            view(
                "00000000003",
                Some(data("b", ROLE_CANDIDATE, Some("0000000003"))),
            ),
            view("lock", None),
        ];
        mark_elected(&mut members);
        let flags: Vec<bool> = members.iter().map(|m| m.elected).collect();
        // b's coordinator (00000000002) elected nobody; 00000000003 is not its coordinator.
        assert_eq!(flags, [false, true, false, false, false]);
    }

    #[test]
    fn table_has_the_columns() {
        let mut members = vec![
            view(
                "00000000000",
                Some(data("a", ROLE_SLAVE, Some("0000000001"))),
            ),
            view("00000000001", Some(data("a", ROLE_MASTER, None))),
            view("junk", None),
        ];
        mark_elected(&mut members);
        let table = format_table(&members);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "znode", "id", "role", "elected?", "epoch", "position", "address", "weight",
                "quorum", "slaves", "node"
            ]
        );
        let master: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            master,
            [
                "00000000001",
                "a",
                "master(2)",
                "yes",
                "2",
                "-1",
                "tcp://10.0.0.1:61619",
                "1",
                "yes",
                "2",
                "-"
            ]
        );
        let slave: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!((slave[2], slave[9]), ("slave(2)", "-"), "{table}");
        assert!(lines[3].starts_with("junk"));
    }

    /// A final report the lifecycle sent as a candidate (a master stepping down after its
    /// session expired) that the election reads only after it already made the node a slave of
    /// the new master is not taken as final: the node follows, and its old position must not
    /// be published for an election to compare.
    #[test]
    fn a_final_report_read_after_becoming_slave_is_not_final() {
        let mut core = test_core();
        core.set_role(Role::Master { epoch: 5 });
        core.set_role(Role::candidate("ZooKeeper session Expired; rejoining"));
        // The lifecycle, still closing the master's store, reports as this candidate; the
        // election rejoins and follows the master of epoch 6 ...
        let made_in = generation_of(&core.generation);
        core.set_role(Role::Slave {
            master: "tcp://h:1".into(),
            epoch: 6,
        });
        // ... and only then reads the step-down's report.
        core.on_command(Command::ReportLog(
            LogState {
                epoch: 5,
                position: 1200,
            },
            Some(made_in),
        ));
        assert!(
            !core.log_final,
            "a slave's log is taken as final while it follows the master of epoch 6"
        );
        assert_eq!(
            core.join_data().position,
            -1,
            "a stale position is published"
        );
    }

    /// A final report made as a candidate and read only after the election made the node a
    /// slave (its lifecycle then followed, cutting back and appending) and a candidate again
    /// is stale: it was made in another role than the one it is read in.
    #[test]
    fn a_final_report_of_an_earlier_role_is_not_final() {
        let mut core = test_core();
        core.on_command(final_report_now(&core, 5, 1100));
        assert_eq!(core.join_data().position, 1100, "the first report counts");
        core.set_role(Role::candidate("no master elected"));
        let report = final_report_now(&core, 5, 1200);
        core.set_role(Role::Slave {
            master: "tcp://h:1".into(),
            epoch: 6,
        });
        core.set_role(Role::candidate("not enough cluster members"));
        core.on_command(report);
        assert!(
            !core.log_final,
            "a report made before the slave role is taken as final after it"
        );
        assert_eq!(
            core.join_data().position,
            -1,
            "a stale position is published"
        );
        // The lifecycle's report in this candidate role counts.
        core.on_command(final_report_now(&core, 6, 1300));
        assert!(core.log_final);
        assert_eq!(core.join_data().position, 1300);
    }

    /// A final log report made in `core`'s current role.
    fn final_report_now(core: &Core, epoch: u64, position: u64) -> Command {
        Command::ReportLog(
            LogState { epoch, position },
            Some(generation_of(&core.generation)),
        )
    }

    fn test_core() -> Core {
        let (events, _events_rx) = mpsc::unbounded_channel();
        let (roles, _roles_rx) = watch::channel(Role::candidate("joining"));
        let (lease, _lease_rx) = watch::channel(None);
        Core::new(
            ElectionConfig {
                zk_address: "127.0.0.1:2181".into(),
                zk_password: None,
                zk_path: "/t".into(),
                session_timeout: Duration::from_secs(2),
                broker_name: "b".into(),
                replicas: 3,
                weight: 1,
                container: None,
                client_address: None,
                registration_file: None,
                damaged: false,
                node: None,
            },
            LogState {
                epoch: 5,
                position: 1000,
            },
            events,
            roles,
            lease,
        )
    }

    /// Should ZooKeeper lose its epoch table (the ensemble's data wiped, `zk_path` deleted), a
    /// new epoch still exceeds every epoch in a registered member's log, here a candidate's
    /// last record of epoch 7 while the others know epoch 2 at most.
    #[test]
    fn the_epoch_floor_covers_every_members_last_record() {
        let ahead = MemberData {
            epoch: 7,
            ..data("b", ROLE_CANDIDATE, None)
        };
        let view = View {
            members: vec![
                ViewMember {
                    sequence: 1,
                    eid: "0000000001".into(),
                    data: data("b", ROLE_SLAVE, None),
                },
                ViewMember {
                    sequence: 2,
                    eid: "0000000002".into(),
                    data: ahead,
                },
            ],
        };
        assert_eq!(view.epoch_floor(3), 7);
        assert_eq!(view.epoch_floor(9), 9);
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b");
        assert_eq!(
            normalize_path("/activemq/leveldb-stores").unwrap(),
            "/activemq/leveldb-stores"
        );
        assert!(normalize_path("/").is_err());
        assert!(normalize_path("a/b").is_err());
        assert!(normalize_path("/a//b").is_err());
    }
}
