//! The life of a replicated node: it joins the election and then, as ZooKeeper decides, serves
//! as master, follows a master as slave, or waits as a candidate, and moves between these roles
//! without restarting the process.
//!
//! It owns the transitions, never the decisions: who is master comes from [`crate::election`],
//! what is confirmed from [`crate::replication`]. One role at a time holds the store: a slave's
//! (or a candidate's) open store is handed to the next role, with its fsync setting changed,
//! instead of being closed and reopened (which would scan the whole journal again during a
//! failover); a master that steps down keeps its store open for its next role (once what it
//! appended is written); only a failed store is closed. Every role change logs one line with
//! node, epoch and position.
//!
//! A store that fails (a full disk, say) ends the node's membership: it steps down, leaves the
//! election so that the others elect a master at once, and the process exits with the
//! store's reason for its supervisor to restart it once the disk is fixed. So does an elected
//! node that cannot start serving (`MASTER_ATTEMPTS` times in a row). A disk that stalls
//! ([`crate::watchdog`]) ends it too, without a step-down that would wait on that disk: the
//! node closes its client connections, leaves the election and exits. It must never stay
//! master, or keep following, on a store that accepts no writes, nor hold the election while
//! serving nobody.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::election::{Election, ElectionConfig, Lease, LogState, Role};
use crate::replication::repeated::{repeated_note, RepeatedFailure};
use crate::replication::{self, ConnectionId, MasterOptions, ReplicationMaster, SlaveOptions};
use crate::server::{broker_options, open_store_with, reserve, AbortOnDrop, Listeners, Mode};
use crate::store::{Position, Store};
use crate::watchdog::DiskWatchdog;

/// How long a slave waits before it dials its master again after a lost connection.
const SLAVE_RETRY: Duration = Duration::from_millis(200);
/// An elected node that fails this many times in a row to start serving (its store does not
/// open, its replication `bind` is taken, ...) leaves the cluster.
const MASTER_ATTEMPTS: u32 = 3;
/// The pause between those attempts.
const MASTER_RETRY: Duration = Duration::from_secs(1);

/// The file in the store directory where the election records this node's znode, so that a
/// restarted process removes the one it left (see `election::leftover`). It exists once the
/// store has joined a cluster, and a standalone start refuses such a store
/// ([`crate::server::Node::start`]).
pub(crate) const REGISTRATION_FILE: &str = "zk.registration";

/// Says so, loudly, when the host name this node advertises as master does not resolve here:
/// slaves would then most likely fail to follow it once it is elected, and a master nobody
/// follows confirms nothing. Not an error: the name may resolve elsewhere, or later.
async fn warn_if_unresolvable(hostname: String) {
    if let Err(e) = tokio::net::lookup_host((hostname.as_str(), 0)).await {
        tracing::warn!(
            %hostname,
            "replication.hostname {hostname:?} (the address this node advertises as master) \
             does not resolve on this machine ({e}): if it does not resolve on the other nodes \
             either, they cannot follow this node once it is elected, and nothing is confirmed; \
             set replication.hostname to a name or address they reach"
        );
    }
}

/// Runs this node as a member of its cluster until `shutdown` resolves.
pub async fn run_cluster(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let hook = DurableHook::default();
    let kept = open_kept(&config, false, &hook).await?;
    // Every node of a cluster has the same broker name: log lines name the node by its id.
    let node = node_id(&config)?;
    let (stalled_tx, stalled) = watch::channel(None);
    let (left_tx, left) = std::sync::mpsc::channel();
    let watchdog = DiskWatchdog::start(
        config.store.stall_timeout,
        &config.store.directory,
        Box::new({
            let node = node.clone();
            move |stall| {
                if let Some(stall) = stall {
                    leave_on_stall(&node, stall, &stalled_tx, &left);
                }
            }
        }),
    );
    watchdog.watch(kept.store.write_clock());
    // In the background: a slow resolver must not hold the start up.
    tokio::spawn(warn_if_unresolvable(
        config.replication.advertised_hostname(),
    ));
    let replicas = config.replication.replicas;
    if replicas.is_multiple_of(2) {
        tracing::warn!(
            replicas,
            "replicas = {replicas} is even: a confirmation needs {} of them (replicas/2 + 1), so \
             the cluster survives no more failures than with replicas = {}; use an odd number",
            replicas / 2 + 1,
            replicas - 1
        );
    }
    if replicas > 1 && config.replication.security_token.is_empty() {
        tracing::warn!(
            bind = %config.replication.bind.to_tcp_uri(),
            "replication.security_token is empty: any process that reaches the replication \
             port can log in as a slave, and its acknowledgements count towards the quorum \
             that confirms sends; set the same secret security_token on every node (and keep \
             the port behind a firewall)"
        );
    }
    let log = log_state(&kept.store);
    let damage = kept.store.damage();
    if let Some(damage) = &damage {
        tracing::warn!(
            %node,
            "this node's store is marked damaged ({damage}): it may lack confirmed records, so it \
             is not elected and does not count in the quorum an election needs until it has \
             caught up with a master; if no master can be elected without it and its loss is \
             accepted, delete {} to count it again",
            config.store.directory.join(crate::store::DAMAGED_FILE).display()
        );
    }
    let listeners = Listeners::bind(
        &config,
        Mode::Electing("not the master: this node is joining the cluster".into()),
    )
    .await?;
    let status = crate::admin::Status::new(&node);
    status.set_role("candidate", log.epoch, log.position);
    status.set_store(kept.store.gauge());
    let _admin = crate::server::start_admin(&config, &status, &listeners).await?;
    let client_address = listeners.addresses.first().map(|a| {
        format!(
            "tcp://{}:{}",
            config.replication.advertised_hostname(),
            a.port()
        )
    });
    tokio::pin!(shutdown);
    // Waits for ZooKeeper as long as it takes (see `Election::start`), or for the shutdown.
    let joined = Election::start(
        ElectionConfig {
            zk_address: config.replication.zk_address.clone().unwrap_or_default(),
            zk_password: config.replication.zk_password.clone(),
            zk_path: config.replication.zk_path.clone(),
            session_timeout: config.replication.zk_session_timeout,
            broker_name: config.broker.name.clone(),
            replicas: config.replication.replicas as usize,
            weight: config.replication.weight,
            container: config.replication.container.clone(),
            client_address,
            registration_file: Some(config.store.directory.join(REGISTRATION_FILE)),
            node: Some(node.clone()),
            damaged: damage.is_some(),
        },
        log,
    );
    let joined = tokio::select! {
        joined = joined => Some(joined),
        _ = &mut shutdown => None,
    };
    let election = match joined {
        Some(Ok(election)) => election,
        Some(Err(e)) => {
            close_store(kept.store).await;
            return Err(e).context("joining the election in ZooKeeper");
        }
        None => {
            tracing::info!(%node, "shutting down before joining the election");
            close_store(kept.store).await;
            return Ok(());
        }
    };
    tracing::info!(%node, epoch = log.epoch, position = log.position, "role change: candidate (joined the election)");
    let _stall_exit = AbortOnDrop(tokio::spawn(close_on_stall(
        stalled,
        listeners.closer(),
        election.leaver(),
        left_tx,
    )));
    let mut lifecycle = Lifecycle {
        node: node.clone(),
        config,
        election,
        listeners,
        log,
        kept: Some(kept),
        hook,
        status,
        connections: ConnectionId::new_incarnation(),
        replication_port: None,
        watchdog,
    };
    let result = tokio::select! {
        result = lifecycle.run() => result,
        _ = &mut shutdown => {
            tracing::info!(%node, "shutting down");
            Ok(())
        }
    };
    let leaving = match &result {
        Ok(()) => "the node is shutting down".to_string(),
        Err(e) => {
            tracing::error!(%node, error = %format!("{e:#}"), "leaving the cluster");
            format!("the node is leaving the cluster: {e:#}")
        }
    };
    lifecycle.listeners.set_mode(Mode::Refuse(leaving));
    // Its znode goes with its session, so the others need not wait for the session to expire.
    lifecycle.election.close().await;
    if let Some(kept) = lifecycle.kept.take() {
        close_store(kept.store).await;
    }
    result
}

/// How long a node whose disk stalled gives its runtime to close the client connections and
/// leave the election before the process exits anyway (the runtime's workers may be blocked
/// on that disk; then the ZooKeeper session expires instead).
const STALL_EXIT_GRACE: Duration = Duration::from_secs(3);

/// On the disk watchdog's thread, once this node's disk stalled: asks the runtime to close the
/// client connections and leave the election ([`close_on_stall`]), then exits the process,
/// when that is done or after [`STALL_EXIT_GRACE`]. Only a restart can serve from that store
/// again: its writer may stay blocked in the kernel, and what it wrote is recovered from disk
/// as after a kill. The exit is armed before anything is logged: a log written to a file on the
/// stalled disk could block the line that says so.
fn leave_on_stall(
    node: &str,
    stall: Duration,
    stalled: &watch::Sender<Option<String>>,
    left: &std::sync::mpsc::Receiver<()>,
) {
    let armed = std::thread::Builder::new()
        .name("stall-exit".into())
        .spawn(|| {
            std::thread::sleep(STALL_EXIT_GRACE + Duration::from_secs(1));
            exit_now();
        });
    let reason = crate::watchdog::stall_reason(stall);
    stalled.send_replace(Some(reason.clone()));
    tracing::error!(%node, %reason, armed = armed.is_ok(), "leaving the cluster and exiting so that another node takes over");
    let closed = left.recv_timeout(STALL_EXIT_GRACE).is_ok();
    tracing::error!(
        %node,
        closed,
        "exiting: the store's disk stalled (restart this node once its disk answers)"
    );
    std::process::exit(1);
}

/// Ends the process at once with status 1, running no exit handler (any could wait on what
/// is stuck).
fn exit_now() -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` ends the process; no Rust state is used afterwards.
    unsafe {
        libc::_exit(1)
    }
    #[cfg(not(unix))]
    std::process::exit(1)
}

/// Waits for the disk watchdog to report a stall ([`leave_on_stall`]), then closes the client
/// ports for good (every connection closed, every new one refused at connect, so that failover
/// clients move on at once; a port left listening by a process whose exit waits on the disk
/// would hold them instead), leaves the election (its znode deleted, so that the others elect
/// at once) and tells the watchdog's thread.
async fn close_on_stall(
    mut stalled: watch::Receiver<Option<String>>,
    ports: crate::server::PortCloser,
    election: crate::election::Leaver,
    left: std::sync::mpsc::Sender<()>,
) {
    let Ok(reason) = stalled.wait_for(Option::is_some).await.map(|r| r.clone()) else {
        return;
    };
    let reason = reason.unwrap_or_default();
    ports.close(format!("the node is leaving the cluster: {reason}"));
    let _ = tokio::time::timeout(STALL_EXIT_GRACE, election.leave()).await;
    let _ = left.send(());
}

/// The store accepts no more writes ([`BrokerError::StoreFailed`], as clients are told): fatal
/// to this node's membership (see the module docs).
fn is_store_failure(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<BrokerError>(),
        Some(BrokerError::StoreFailed(_))
    )
}

/// Why a node stopped serving as master.
enum MasterEnd {
    /// The election moved on (a newer epoch, no quorum, the session lost).
    RoleChanged,
    /// The store accepts no more writes: the node leaves the cluster.
    StoreFailed(String),
    /// A client connector cannot listen (`address: error`): a failed attempt to serve.
    ClientPort(String),
}

/// Report ticks (one a second, the first at once) in a row at which a client connector cannot
/// listen before a master steps down: its accept loop retries every 200 ms meanwhile.
const CLIENT_PORT_TICKS: u32 = 3;

/// Report ticks in a row with fewer slaves connected than a confirmation needs before a master
/// logs that its replication is degraded.
const DEGRADED_TICKS: u32 = 3;

/// An open store between roles, with the receiving end of its durable watermark.
struct KeptStore {
    store: Store,
    durable: watch::Receiver<Position>,
    fsync: bool,
}

async fn open_kept(config: &Config, fsync: bool, hook: &DurableHook) -> anyhow::Result<KeptStore> {
    let (store, _, durable) = open_hooked(config, fsync, hook).await?;
    Ok(KeptStore {
        store,
        durable,
        fsync,
    })
}

/// Whom the durable callback of every store this node opens tells, besides its watch: while
/// this node is master, its replication master's own-position input (so the quorum watermark,
/// and the broker core, move on the thread that wrote the batch, with no task hand-off).
type DurableHook = Arc<RwLock<Option<Box<dyn Fn(Position) + Send + Sync>>>>;

async fn open_hooked(
    config: &Config,
    fsync: bool,
    hook: &DurableHook,
) -> anyhow::Result<(Store, crate::store::Recovered, watch::Receiver<Position>)> {
    let (durable_tx, durable) = watch::channel(Position(0));
    let hook = hook.clone();
    let on_durable = Box::new(move |position: Position| {
        durable_tx.send_replace(position);
        if let Some(hook) = hook.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            hook(position);
        }
    });
    // A cluster node's store holds its releases until confirmed, from the open on
    // (`StoreOptions::hold_releases`): a record past the quorum-confirmed position may be cut by
    // a new master, and what it made releasable must stay until it is confirmed.
    let (store, recovered) = open_store_with(config, fsync, on_durable).await?;
    Ok((store, recovered, durable))
}

/// This node's identity among the slaves of a master: every node of a cluster shares the
/// broker name, so each store directory gets a random id of its own, kept in `node.id`.
fn node_id(config: &Config) -> anyhow::Result<String> {
    let path = config.store.directory.join("node.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = format!(
        "{}-{:016x}",
        config.replication.advertised_hostname(),
        rand::random::<u64>()
    );
    std::fs::create_dir_all(&config.store.directory)
        .and_then(|_| std::fs::write(&path, &id))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn log_state(store: &Store) -> LogState {
    LogState {
        epoch: store.last_epoch(),
        position: store.end().0,
    }
}

/// Binds the replication `bind` address without listening (`server::reserve`), unless its
/// port is 0 (any free one) or its host is a name.
fn reserve_replication_port(config: &Config) -> Option<tokio::net::TcpSocket> {
    let bind = &config.replication.bind;
    let address = bind.as_str().parse::<std::net::SocketAddr>().ok()?;
    (address.port() != 0).then(|| reserve(address)).flatten()
}

/// Closes a store on a blocking thread (it joins the journal's writer thread).
async fn close_store(store: Store) {
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
}

struct Lifecycle {
    /// This node's id (`node.id`), in every role-change line.
    node: String,
    config: Config,
    election: Election,
    listeners: Listeners,
    log: LogState,
    /// The store left open by the previous role (a slave's or the first open), if any.
    kept: Option<KeptStore>,
    hook: DurableHook,
    /// What the admin endpoint reports.
    status: Arc<crate::admin::Status>,
    /// This process's replication connections as a slave, numbered so that a master can tell
    /// a late login of one given up on from the live one.
    connections: ConnectionId,
    /// The replication `bind` port, kept bound while this node is not master (as a slave's
    /// client port is, `server::reserve`) and let go just before the master binds it.
    replication_port: Option<tokio::net::TcpSocket>,
    /// Watches the disk of whichever store this node has open.
    watchdog: DiskWatchdog,
}

impl Lifecycle {
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut roles = self.election.roles();
        // Consecutive attempts to serve as master that failed before serving.
        let mut failed_as_master = 0;
        loop {
            let role = roles.borrow_and_update().clone();
            let taking_over = role.is_taking_over();
            if !matches!(role, Role::Master { .. }) && self.replication_port.is_none() {
                // Retried at each role change: a master's listener may still be closing.
                self.replication_port = reserve_replication_port(&self.config);
            }
            match role {
                Role::Candidate { reason } => {
                    let no_quorum = reason.contains("not enough cluster members");
                    let refusal = if no_quorum {
                        format!("not the master: no quorum is available ({reason})")
                    } else {
                        format!("not the master: no master elected ({reason})")
                    };
                    // Elected: clients arriving now are held until this node serves them. No
                    // quorum: JMS applications are told (it lasts until an operator acts); an
                    // election: their failover transports just retry.
                    self.listeners.set_mode(if taking_over {
                        Mode::Pending(refusal)
                    } else if no_quorum {
                        Mode::Refuse(refusal)
                    } else {
                        Mode::Electing(refusal)
                    });
                    self.status
                        .set_role("candidate", self.log.epoch, self.log.position);
                    self.election.report_final_log(self.log);
                    self.election.set_role_info("candidate", None);
                    if roles.changed().await.is_err() {
                        anyhow::bail!("the election stopped");
                    }
                }
                Role::Master { epoch } => match self.serve_as_master(epoch, &mut roles).await {
                    Ok(()) => failed_as_master = 0,
                    Err(e) if is_store_failure(&e) => return Err(e),
                    Err(e) => {
                        failed_as_master += 1;
                        tracing::error!(node = %self.node, epoch, attempt = failed_as_master, error = %format!("{e:#}"), "master role failed");
                        // Not serving: the role change back, for the log and the admin status.
                        self.log_role("candidate (the master role failed)", "candidate", epoch);
                        if failed_as_master >= MASTER_ATTEMPTS {
                            // Still the best candidate, it would be elected again and again,
                            // and no other node could serve.
                            return Err(e.context(format!(
                                "this node could not serve as master {MASTER_ATTEMPTS} times in \
                                 a row; it leaves so that another node is elected"
                            )));
                        }
                        tokio::time::sleep(MASTER_RETRY).await;
                    }
                },
                Role::Slave { master, epoch } => {
                    failed_as_master = 0;
                    if let Err(e) = self.follow(&master, epoch, &mut roles).await {
                        if is_store_failure(&e) {
                            return Err(e);
                        }
                        tracing::warn!(node = %self.node, %master, epoch, error = %format!("{e:#}"), "following the master failed");
                        tokio::time::sleep(SLAVE_RETRY).await;
                    }
                }
            }
        }
    }

    /// Logs a role change and tells the admin endpoint (`kind`: `master`, `slave`,
    /// `candidate`).
    fn log_role(&self, role: &str, kind: &'static str, epoch: u64) {
        self.status.set_role(kind, epoch, self.log.position);
        tracing::info!(
            node = %self.node,
            broker = %self.config.broker.name,
            epoch,
            position = self.log.position,
            last_record_epoch = self.log.epoch,
            "role change: {role}"
        );
    }

    async fn serve_as_master(
        &mut self,
        epoch: u64,
        roles: &mut watch::Receiver<Role>,
    ) -> anyhow::Result<()> {
        let fsync = self.config.store.sync.fsync_locally();
        let (store, recovered, durable_rx) = self.take_for_master(fsync).await?;
        let config = &self.config;
        self.log = log_state(&store);
        self.log_role("master", "master", epoch);
        drop(self.replication_port.take());
        let (mut replication, confirmed) = ReplicationMaster::start(
            MasterOptions {
                bind: config.replication.bind.as_str().to_string(),
                security_token: config.replication.security_token.clone(),
                // The cluster's, if larger than this node's own (`Election::replicas`).
                replicas: self.election.replicas(),
                epoch,
                // The core appends this epoch's `EpochStart` at the end (`Broker::start`).
                epoch_floor: store.end(),
                lease: Some(self.election.lease()),
            },
            store.reader(),
            store.history(),
            store.written_watch(),
            *durable_rx.borrow(),
        )
        .await
        .context("opening the replication listener")?;
        let address = format!(
            "tcp://{}:{}",
            config.replication.advertised_hostname(),
            replication.local_addr().port()
        );
        // The core is confirmed directly by whoever moves the quorum watermark (an ack reader,
        // or the writer of the master's own batch through the hook), not through `confirmed`.
        drop(confirmed);
        let broker = Broker::start(store, recovered, epoch, broker_options(config))?;
        let core = broker.downgrade();
        replication.on_confirmed(Box::new(move |position| core.confirm(position)));
        *self.hook.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Box::new(replication.held_locally()));
        // Whatever became durable before the hook was set (the callback sends the watch before
        // it calls the hook, so nothing is missed), then whatever was confirmed before the core
        // was reachable.
        replication.held_locally()(*durable_rx.borrow());
        broker.confirm(replication.confirmed());
        let slaves = replication.observer();
        let needed = replication.slaves_needed();
        let lease = self.election.lease();
        self.status
            .set_replication(Some(Box::new(move || crate::admin::Replication {
                needed,
                lease_held: Lease::holds(lease.borrow().as_ref(), epoch),
                slaves: slaves()
                    .into_iter()
                    .map(|s| crate::admin::Slave {
                        node: s.node,
                        address: s.address.to_string(),
                        acked: s.acked.0,
                    })
                    .collect(),
            })));
        self.election.set_role_info("master", Some(epoch));
        // Published with the address: how many slaves follow, for `ferromq status`.
        self.election.set_slaves(replication.connected_slaves());
        self.election.publish_master_address(&address).await;
        tracing::info!(node = %self.node, epoch, %address, "replication listener published");
        self.listeners.set_mode(Mode::Serve(broker.clone()));

        let mut report = tokio::time::interval(Duration::from_secs(1));
        // Report ticks in a row at which a client connector could not listen.
        let mut unbound_ticks = 0;
        // Report ticks in a row with fewer slaves connected than a confirmation needs, and
        // whether that was logged (after `DEGRADED_TICKS`: slaves take a moment to connect to
        // a new master, and a restarted one to come back).
        let (mut short_ticks, mut degraded) = (0, false);
        let mut ended = loop {
            tokio::select! {
                changed = roles.changed() => {
                    if changed.is_err() || *roles.borrow() != (Role::Master { epoch }) {
                        // A store that failed meanwhile still ends this node's membership:
                        // its end may count records never written.
                        break broker
                            .store_failure()
                            .map_or(MasterEnd::RoleChanged, MasterEnd::StoreFailed);
                    }
                }
                _ = report.tick() => {
                    let position = broker.stats().journal_end;
                    if let Some(reason) = broker.store_failure() {
                        break MasterEnd::StoreFailed(reason);
                    }
                    // Its port taken while this node was a slave: a master no client reaches.
                    let unbound = self.listeners.bind_failures();
                    unbound_ticks = if unbound.is_empty() { 0 } else { unbound_ticks + 1 };
                    if unbound_ticks >= CLIENT_PORT_TICKS {
                        let reason = unbound.join("; ");
                        tracing::error!(node = %self.node, epoch, position, %reason, "cannot open the client port: stepping down");
                        break MasterEnd::ClientPort(reason);
                    }
                    self.election.report_log(LogState { epoch, position });
                    let connected = replication.connected_slaves();
                    // The election rewrites the znode only when its data changes.
                    self.election.set_slaves(connected);
                    short_ticks = if connected < needed { short_ticks + 1 } else { 0 };
                    if !degraded && short_ticks >= DEGRADED_TICKS {
                        degraded = true;
                        tracing::warn!(node = %self.node, epoch, position, connected, needed, "replication degraded: fewer slaves connected than a confirmation needs; nothing is confirmed until enough are back");
                    } else if degraded && short_ticks == 0 {
                        degraded = false;
                        tracing::info!(node = %self.node, epoch, position, connected, needed, "replication restored: enough slaves connected to confirm");
                    }
                }
            }
        };
        if let MasterEnd::StoreFailed(reason) = &ended {
            tracing::error!(node = %self.node, epoch, %reason, "the store failed: stepping down so that another node takes over");
        }
        // Step down: no client is served and nothing is confirmed from here on.
        self.listeners.set_mode(Mode::Electing(
            "not the master: this node stepped down".into(),
        ));
        *self.hook.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.status.set_replication(None);
        let store = broker.close("this node is no longer the master");
        // Its port closed before the next role holds it again (`replication_port`).
        replication.stop_and_wait().await;
        if let Some(mut store) = store {
            // Kept open for the next role, once what was appended is written: elected again
            // (a ZooKeeper blip, or another attempt after its client port was found taken) it
            // reads its state back without a journal scan, and as a slave it is cut back to
            // the new master's history like any kept store. A failed store is closed.
            let keep = matches!(ended, MasterEnd::RoleChanged | MasterEnd::ClientPort(_))
                && match tokio::task::block_in_place(|| store.set_fsync(fsync)) {
                    Ok(()) => true,
                    Err(e) => {
                        // The journal failed on its last writes: a failed store.
                        let reason = format!("writing the journal's last batches failed: {e}");
                        tracing::error!(node = %self.node, epoch, %reason, "the store failed: stepping down so that another node takes over");
                        ended = MasterEnd::StoreFailed(reason);
                        false
                    }
                };
            self.log = log_state(&store);
            if keep {
                self.kept = Some(KeptStore {
                    store,
                    durable: durable_rx,
                    fsync,
                });
            } else {
                close_store(store).await;
            }
        }
        self.election.report_final_log(self.log);
        self.log_role("stepped down from master", "candidate", epoch);
        match ended {
            MasterEnd::RoleChanged => Ok(()),
            MasterEnd::StoreFailed(reason) => Err(BrokerError::StoreFailed(reason).into()),
            MasterEnd::ClientPort(reason) => Err(anyhow::anyhow!(
                "cannot open the client port ({reason}), so no client could reach this master"
            )),
        }
    }

    async fn follow(
        &mut self,
        master: &str,
        epoch: u64,
        roles: &mut watch::Receiver<Role>,
    ) -> anyhow::Result<()> {
        let config = &self.config;
        self.listeners.set_mode(Mode::Closed(format!(
            "not the master: this node is a slave of {master} (epoch {epoch})"
        )));
        let KeptStore {
            mut store,
            durable: durable_rx,
            fsync,
        } = self.take_store(config.store.sync.slaves_fsync()).await?;
        let config = &self.config;
        self.log = log_state(&store);
        self.log_role(&format!("slave of {master}"), "slave", epoch);
        self.election.set_role_info("slave", Some(epoch));
        let options = SlaveOptions {
            master: master.to_string(),
            node: self.node.clone(),
            security_token: config.replication.security_token.clone(),
            expected_epoch: epoch,
            connection: ConnectionId::default(),
        };
        let mut failures = RepeatedFailure::default();
        // Cleared by the replication loop once a damaged store has caught up (durably).
        let mut damage = store.damage_watch();
        let result = loop {
            // No position is reported while following: the election must compare the final
            // log of each node, reported once the store is closed (below), never a stale one.
            // The replication loop runs as a task of its own, so that it runs on the worker
            // thread that sees its socket ready rather than being woken on this one; it owns
            // the store until it ends or is told to stop (dropped at an await point, where the
            // store is consistent), then hands it back.
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let slave_options = SlaveOptions {
                connection: self.connections.next_attempt(),
                ..options.clone()
            };
            let held = durable_rx.clone();
            let mut following = AbortOnDrop(tokio::spawn(async move {
                let result = tokio::select! {
                    result = replication::run_slave(slave_options, &mut store, held) => Some(result),
                    _ = stopped => None,
                };
                (store, result)
            }));
            let mut stop = Some(stop);
            let outcome = loop {
                tokio::select! {
                    joined = &mut following.0 => break joined,
                    changed = roles.changed(), if stop.is_some() => {
                        let same = changed.is_ok()
                            && *roles.borrow() == (Role::Slave { master: master.to_string(), epoch });
                        if !same {
                            if let Some(stop) = stop.take() {
                                let _ = stop.send(());
                            }
                        }
                    }
                    Ok(()) = damage.changed() => {
                        if !*damage.borrow_and_update() {
                            tracing::info!(node = %self.node, %master, epoch, "the store marked damaged caught up with the master: this node counts in elections again");
                            self.election.set_whole();
                        }
                    }
                }
            };
            let outcome = match outcome {
                Ok((returned, outcome)) => {
                    store = returned;
                    outcome
                }
                // The store went down with the task, so this node's final log is unknown:
                // it must not report the one it had when it started following.
                Err(e) => {
                    return Err(BrokerError::StoreFailed(format!(
                        "the replication task failed: {e}"
                    ))
                    .into())
                }
            };
            if let Some(Err(e)) = &outcome {
                if let Some(unlogged) = failures.failed(&e.to_string(), Instant::now()) {
                    tracing::warn!(node = %self.node, %master, error = %e, "replication stream ended{}", repeated_note(unlogged));
                }
            }
            // Whether the stream ended or this node was told to stop, a failed store ends its
            // membership.
            if let Some(reason) = store.failure() {
                tracing::error!(node = %self.node, epoch, position = store.end().0, %reason, "the store failed: this slave stops following");
                break Err(BrokerError::StoreFailed(reason).into());
            }
            if outcome.is_none() {
                break Ok(());
            }
            tokio::time::sleep(SLAVE_RETRY).await;
            if *roles.borrow()
                != (Role::Slave {
                    master: master.to_string(),
                    epoch,
                })
            {
                break Ok(());
            }
        };
        self.log = log_state(&store);
        // Nothing appends to it any more: its end is final, and the next role takes it over.
        self.kept = Some(KeptStore {
            store,
            durable: durable_rx,
            fsync,
        });
        self.election.report_final_log(self.log);
        self.log_role("stopped following", "candidate", epoch);
        result
    }

    /// The store for a role that wants `fsync`: the one left open by the previous role (its
    /// fsync switched if needed), else opened afresh.
    async fn take_store(&mut self, fsync: bool) -> anyhow::Result<KeptStore> {
        if let Some(mut kept) = self.kept.take() {
            if kept.fsync == fsync {
                return Ok(kept);
            }
            let switched = tokio::task::block_in_place(|| kept.store.set_fsync(fsync));
            match switched {
                Ok(()) => {
                    kept.fsync = fsync;
                    return Ok(kept);
                }
                Err(e) => {
                    // The journal failed (its writer ends on any error): what it wrote may not
                    // be on disk whatever a reopen reads back from the page cache.
                    close_store(kept.store).await;
                    return Err(BrokerError::StoreFailed(format!(
                        "switching fsync on the open store failed: {e}"
                    ))
                    .into());
                }
            }
        }
        let kept = open_kept(&self.config, fsync, &self.hook).await?;
        self.check_reopened(&kept.store, false)?;
        self.opened(&kept.store);
        Ok(kept)
    }

    /// A store opened again between roles must still hold the log this node last reported
    /// (`self.log`, what elections compared) and be no more damaged than it was. Its recovery
    /// cuts the journal at a frame that no longer matches its CRC (bit rot, a misdirected
    /// write) and may mark the copy damaged: elected on the longer log, such a node would
    /// serve the cut one and make every slave truncate confirmed records to it; as a slave
    /// it would count as whole in elections. Either is a store failure: the node leaves the
    /// cluster, and once restarted it registers marked damaged and catches up.
    fn check_reopened(&self, store: &Store, was_damaged: bool) -> anyhow::Result<()> {
        let now = log_state(store);
        let cut = now.position < self.log.position
            || (now.position == self.log.position && now.epoch != self.log.epoch);
        let newly_damaged = !was_damaged && store.damage().is_some();
        if cut || newly_damaged {
            return Err(BrokerError::StoreFailed(format!(
                "the store opened again holds less than this node reported (position {} of \
                 epoch {} against {} of epoch {}{}): it leaves the cluster so that it is not \
                 elected on records it no longer has; restarted, it rejoins marked damaged and \
                 catches up",
                now.position,
                now.epoch,
                self.log.position,
                self.log.epoch,
                if newly_damaged {
                    ", and it is now marked damaged"
                } else {
                    ""
                }
            ))
            .into());
        }
        Ok(())
    }

    /// The store and recovered state a master starts from: the open store of the previous
    /// role when there is one (read back without a journal scan), else opened afresh.
    async fn take_for_master(
        &mut self,
        fsync: bool,
    ) -> anyhow::Result<(Store, crate::store::Recovered, watch::Receiver<Position>)> {
        let mut was_damaged = false;
        if let Some(mut kept) = self.kept.take() {
            let recovered = tokio::task::block_in_place(|| kept.store.recover_open(fsync));
            match recovered {
                Ok(recovered) => return Ok((kept.store, recovered, kept.durable)),
                Err(e) if kept.store.failure().is_some() => {
                    close_store(kept.store).await;
                    return Err(BrokerError::StoreFailed(format!(
                        "taking over the open store failed: {e}"
                    ))
                    .into());
                }
                Err(e) => {
                    // A live message that cannot be read back (a frame that fails its CRC,
                    // say): a reopen's recovery decides what the journal still holds.
                    tracing::warn!(node = %self.node, error = %e, "cannot take over the open store; reopening it");
                    was_damaged = kept.store.damage().is_some();
                    close_store(kept.store).await;
                }
            }
        }
        let opened = open_hooked(&self.config, fsync, &self.hook).await?;
        if let Err(e) = self.check_reopened(&opened.0, was_damaged) {
            close_store(opened.0).await;
            return Err(e);
        }
        self.opened(&opened.0);
        Ok(opened)
    }

    /// A store opened again: the status and the disk watchdog follow it.
    fn opened(&self, store: &Store) {
        self.status.set_store(store.gauge());
        self.watchdog.watch(store.write_clock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that is not master holds its replication port, so that no outgoing connection
    /// of the machine can be given it; a `bind` on port 0 (any free one) has nothing to hold.
    #[test]
    fn a_replication_port_is_held_unless_any_port_will_do() {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let config =
            Config::from_toml_str(&format!("[replication]\nbind = \"tcp://{free}\"\n")).unwrap();
        let _held = reserve_replication_port(&config).expect("the port held");
        let outgoing = tokio::net::TcpSocket::new_v4().unwrap();
        assert_eq!(
            outgoing.bind(free).map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::AddrInUse),
            "the port is free for any socket to take"
        );

        let any = Config::from_toml_str("[replication]\nbind = \"tcp://127.0.0.1:0\"\n").unwrap();
        assert!(
            reserve_replication_port(&any).is_none(),
            "port 0: nothing to hold"
        );
    }
}
