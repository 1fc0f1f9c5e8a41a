//! The node process: opens the store, starts the broker core, listens on the configured
//! connectors and gives each connection to the protocol its first bytes name.
//!
//! It owns sockets and tasks, never broker state; it must never answer a client itself beyond
//! refusing its connection with the reason (not the master, no quorum, a connector's
//! `maximumConnections` or the open-file limit reached, a protocol it cannot tell) as a STOMP
//! ERROR frame or an OpenWire `ConnectionError`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::broker::{Broker, BrokerOptions, ConfirmLater, DeadLetterStrategy};
use crate::config::{BrokerConfig, Config, ConnectorScheme, DeadLetterStrategyKind};
use crate::files::{ClientSlot, ClientSlots};
use crate::protocol::openwire::session::{self as openwire, OpenWireOptions};
use crate::protocol::stomp::session::{self as stomp, StompOptions};
use crate::protocol::temps::TempDestinations;
use crate::protocol::{detect, Detected};
use crate::store::{Recovered, Store, StoreOptions};
use tokio::task::JoinSet;

/// How long a new connection may take to send enough bytes to tell its protocol.
const DETECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection accepted in [`Mode::Pending`] waits for the node to serve.
const PENDING_HOLD: Duration = Duration::from_secs(2);

/// What the client listeners do with a new connection.
#[derive(Clone)]
pub enum Mode {
    /// This node is the master (or standalone): serve clients with this broker core.
    Serve(Broker),
    /// No master to send clients to for want of a quorum, or a node that is leaving: answer
    /// with an ERROR frame (STOMP) or a `ConnectionError` (OpenWire, which a JMS application
    /// sees in its exception listener) giving the reason, and close, so a client is told why
    /// instead of waiting.
    Refuse(String),
    /// An election is under way (a master was lost, this node is joining or stepped down): a
    /// STOMP client gets the ERROR frame as with `Refuse`; an OpenWire client is closed
    /// without a `ConnectionError`, so its failover transport retries without troubling the
    /// application's exception listener, as it would at a node that does not listen (ActiveMQ's
    /// own non-masters), for what is an ordinary failover.
    Electing(String),
    /// A master serves elsewhere: the client port is closed, so every client (ferromq's,
    /// stomp.py, a JMS failover transport) is refused at connect and tries the next address.
    Closed(String),
    /// This node was elected and is taking over (the reason says so): a new connection is
    /// held for up to `PENDING_HOLD` and served as soon as the node serves, instead of being
    /// refused and left to its client's reconnect back-off (up to `maxReconnectDelay` more
    /// after a failover). Refused if the node does not serve by then.
    Pending(String),
}

/// The client connectors of a node, bound once for the life of the process. Their mode says
/// whether connections are served or refused; when it changes, every connection accepted
/// under the previous mode is closed.
pub struct Listeners {
    pub addresses: Vec<SocketAddr>,
    mode: watch::Sender<Mode>,
    /// Set once the node closed its client ports for good ([`PortCloser`]): later modes are
    /// ignored.
    closed_for_good: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Connectors that should listen and cannot (their port was taken while this node did not
    /// listen, as a slave), with the last error.
    bind_failures: BindFailures,
}

type BindFailures = Arc<std::sync::Mutex<BTreeMap<SocketAddr, String>>>;

impl Listeners {
    pub async fn bind(config: &Config, mode: Mode) -> anyhow::Result<Listeners> {
        let temps = Arc::new(TempDestinations::default());
        let stomp_options = Arc::new(StompOptions {
            max_frame_size: config.broker.max_frame_size as usize,
            users: config
                .broker
                .users
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            connect_timeout: DETECT_TIMEOUT,
            temps: temps.clone(),
        });
        let mut openwire_options = OpenWireOptions::new(
            config.broker.max_frame_size as usize,
            stomp_options.users.clone(),
            &config.broker.name,
        );
        // JMS clients hear of STOMP clients' temporary destinations too.
        openwire_options.temps = temps;
        let openwire_options = Arc::new(openwire_options);
        let (mode_tx, _) = watch::channel(mode);
        let bind_failures = BindFailures::default();
        let mut addresses = Vec::new();
        let mut tasks = Vec::new();
        for connector in &config.transport.connectors {
            let listener = TcpListener::bind(connector.address.as_str())
                .await
                .with_context(|| format!("binding connector {connector}"))?;
            let address = listener.local_addr()?;
            tracing::info!(%connector, %address, "accepting clients");
            addresses.push(address);
            let protocols = match connector.options.max_frame_size {
                // `wireFormat.maxFrameSize`: this listener's own frame limit.
                Some(limit) => Protocols {
                    stomp: Arc::new(StompOptions {
                        max_frame_size: limit as usize,
                        ..(*stomp_options).clone()
                    }),
                    openwire: Arc::new(OpenWireOptions {
                        max_frame_size: limit as usize,
                        ..(*openwire_options).clone()
                    }),
                },
                None => Protocols {
                    stomp: stomp_options.clone(),
                    openwire: openwire_options.clone(),
                },
            };
            tasks.push(tokio::spawn(accept_loop(
                listener,
                Listener {
                    scheme: connector.scheme,
                    maximum_connections: connector.options.maximum_connections,
                    slots: crate::files::client_slots(),
                    protocols,
                },
                mode_tx.subscribe(),
                bind_failures.clone(),
            )));
        }
        Ok(Listeners {
            addresses,
            mode: mode_tx,
            closed_for_good: Arc::default(),
            tasks,
            bind_failures,
        })
    }

    /// The connectors that should listen in the current mode and cannot, each as `address:
    /// error` (empty when every one listens or is closed on purpose).
    pub fn bind_failures(&self) -> Vec<String> {
        self.bind_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(address, error)| format!("{address}: {error}"))
            .collect()
    }

    /// Switches every listener to `mode`, closing the connections of the previous mode.
    pub fn set_mode(&self, mode: Mode) {
        // Under the watch's lock, as `PortCloser::close` sets the flag: never after it.
        self.mode.send_if_modified(|current| {
            if self
                .closed_for_good
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return false;
            }
            *current = mode;
            true
        });
    }

    /// A handle that closes the client ports for good, for a task that does not own the
    /// listeners (a node whose disk stalled, `crate::node`).
    pub fn closer(&self) -> PortCloser {
        PortCloser {
            mode: self.mode.clone(),
            closed_for_good: self.closed_for_good.clone(),
        }
    }

    /// Follows the mode (the admin endpoint reads whether, and with which core, this node
    /// serves).
    pub fn mode(&self) -> watch::Receiver<Mode> {
        self.mode.subscribe()
    }
}

/// A task aborted when its handle is dropped (a slave's replication loop, which a cancelled
/// role must not leave running on with the store).
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the admin endpoint if `[admin] bind` is set; it stops when the handle is dropped.
pub(crate) async fn start_admin(
    config: &Config,
    status: &Arc<crate::admin::Status>,
    listeners: &Listeners,
) -> anyhow::Result<Option<crate::admin::AdminThread>> {
    let Some(bind) = &config.admin.bind else {
        if config.admin.token.is_some() {
            tracing::warn!(
                "admin.token is set but admin.bind is not: there is no admin endpoint for it to \
                 protect; set admin.bind (e.g. \"tcp://127.0.0.1:8161\") to serve one"
            );
        }
        return Ok(None);
    };
    let token = config.admin.token.clone();
    let admin =
        crate::admin::serve_on_own_thread(bind.as_str(), status.clone(), listeners.mode(), token)
            .await?;
    Ok(Some(admin))
}

/// Closes a node's client ports for good ([`Listeners::closer`]).
pub struct PortCloser {
    mode: watch::Sender<Mode>,
    closed_for_good: Arc<std::sync::atomic::AtomicBool>,
}

impl PortCloser {
    /// Every client connection is closed and every client port stops listening (a connection
    /// is refused, and a client tries its next address at once), whatever mode the node's
    /// lifecycle sets afterwards.
    pub fn close(&self, reason: String) {
        self.mode.send_modify(|current| {
            self.closed_for_good
                .store(true, std::sync::atomic::Ordering::Release);
            *current = Mode::Closed(reason);
        });
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A running standalone node: its broker core and its listeners.
pub struct Node {
    pub broker: Broker,
    pub listeners: Listeners,
    pub admin: Option<crate::admin::AdminThread>,
    /// Reports a stalled disk in the log and through the admin endpoint: a standalone node has
    /// no other to hand over to.
    pub watchdog: crate::watchdog::DiskWatchdog,
}

/// Opens the store with `on_durable` called (on the journal's writer thread) with each new
/// durable end.
pub(crate) async fn open_store_with(
    config: &Config,
    fsync: bool,
    on_durable: crate::store::DurableCallback,
) -> anyhow::Result<(Store, Recovered)> {
    let options = StoreOptions {
        directory: config.store.directory.clone(),
        log_size: config.store.log_size,
        fsync,
        recovered_bodies: config.broker.memory_limit,
        only_copy: config.is_standalone(),
        hold_releases: !config.is_standalone(),
    };
    let directory = options.directory.clone();
    tokio::task::spawn_blocking(move || Store::open(options, on_durable))
        .await?
        .with_context(|| {
            format!(
                "opening the store in {} (store.directory)",
                directory.display()
            )
        })
}

/// The broker core's options from the configuration.
pub(crate) fn broker_options(config: &Config) -> BrokerOptions {
    BrokerOptions {
        name: config.broker.name.clone(),
        max_redeliveries: config.broker.max_redeliveries,
        dead_letter_strategy: dead_letter_strategy(&config.broker),
        topic_pending_limit: config.broker.topic_pending_limit,
        max_browse_page_size: config.broker.max_browse_page_size,
        memory_limit: config.broker.memory_limit,
        store_limit: config.store.store_limit,
        send_fail_if_no_space: config.broker.send_fail_if_no_space,
        scheduler_support: config.broker.scheduler_support,
        // Checked when the configuration was loaded.
        virtual_topics: config.broker.virtual_topics().unwrap_or_default(),
        ..BrokerOptions::default()
    }
}

/// The broker core's dead-letter strategy from `[broker]`.
fn dead_letter_strategy(broker: &BrokerConfig) -> DeadLetterStrategy {
    match broker.dead_letter_strategy {
        DeadLetterStrategyKind::Shared => DeadLetterStrategy::Shared,
        DeadLetterStrategyKind::Individual => DeadLetterStrategy::Individual {
            queue_prefix: broker.dead_letter_queue_prefix.clone(),
            queue_suffix: broker.dead_letter_queue_suffix.clone(),
            topic_prefix: broker.dead_letter_topic_prefix.clone(),
            topic_suffix: broker.dead_letter_topic_suffix.clone(),
        },
    }
}

impl Node {
    /// Opens the store, recovers, starts the core and binds every connector.
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        refuse_cluster_store(config)?;
        // Standalone, "confirmed" is "durable": the journal's writer thread confirms directly
        // into the core, which saves a task wake-up on every synchronous send.
        let confirm = ConfirmLater::default();
        let (store, recovered) = open_store_with(
            config,
            config.store.sync.fsync_locally(),
            confirm.callback(),
        )
        .await?;
        let epoch = recovered.epoch + 1;
        let recovered_end = recovered.end;
        let write_clock = store.write_clock();
        let messages: usize = recovered.queues.iter().map(|(_, m)| m.len()).sum();
        tracing::info!(
            node = %config.broker.name,
            role = "standalone",
            epoch,
            position = recovered.end.0,
            messages,
            "role change: standalone master"
        );
        let broker = Broker::start(store, recovered, epoch, broker_options(config))?;
        confirm.attach(&broker);
        // One fsync: clients then find every recovered message in place.
        broker.wait_recovered().await?;
        let listeners = Listeners::bind(config, Mode::Serve(broker.clone())).await?;
        let status = crate::admin::Status::new(&config.broker.name);
        status.set_role("standalone", epoch, recovered_end.0);
        let admin = start_admin(config, &status, &listeners).await?;
        let watchdog = crate::watchdog::DiskWatchdog::start(
            config.store.stall_timeout,
            &config.store.directory,
            Box::new(move |stall| {
                status.set_store_stall(stall.map(crate::watchdog::stall_reason));
            }),
        );
        watchdog.watch(write_clock);
        Ok(Node {
            broker,
            listeners,
            admin,
            watchdog,
        })
    }
}

/// Refuses to run standalone on the store of a cluster node: its journal would fork from the
/// cluster's under an epoch of its own, and should it rejoin, its records could win an
/// election and cut records the cluster confirmed. A configuration that lost its
/// `zk_address` (an unset template variable, `FERROMQ_REPLICATION__ZK_ADDRESS=`) is the usual
/// cause.
fn refuse_cluster_store(config: &Config) -> anyhow::Result<()> {
    let marker = config.store.directory.join(crate::node::REGISTRATION_FILE);
    if marker.exists() {
        return Err(NeedsOperator(format!(
            "the store in {} belongs to a member of a replicated cluster (it holds {}, written \
             when it joined ZooKeeper), but this configuration has no replication.zk_address \
             (an empty value, FERROMQ_REPLICATION__ZK_ADDRESS= included, means none): run \
             standalone, it would fork the cluster's journal. Set zk_address; or, to take this \
             store out of its cluster on purpose, delete {}",
            config.store.directory.display(),
            crate::node::REGISTRATION_FILE,
            marker.display()
        ))
        .into());
    }
    Ok(())
}

/// A start-up refusal that only a person can resolve; see [`needs_operator`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NeedsOperator(String);

/// Whether a node's start-up failed in a way that starting it again cannot mend: a store that
/// belongs to a cluster under a standalone configuration, a damaged standalone journal, a
/// volume too small for the journal. The command line exits with the configuration-error
/// status for these (2), which the shipped systemd unit does not retry; anything else (a port
/// in use, a store locked by a process still stopping, a ZooKeeper not yet up) exits with 1
/// and is retried.
pub fn needs_operator(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<NeedsOperator>()
            || cause
                .downcast_ref::<crate::store::StoreError>()
                .is_some_and(crate::store::StoreError::needs_operator)
            || cause
                .downcast_ref::<crate::broker::BrokerError>()
                .is_some_and(|e| matches!(e, crate::broker::BrokerError::StoreTooSmall { .. }))
    })
}

/// Runs a node until SIGINT, SIGTERM or SIGHUP: standalone without `zk_address`, else a member of a
/// replicated cluster.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if !config.is_standalone() {
        return crate::node::run_cluster(config, shutdown_signal()).await;
    }
    let node = Node::start(&config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    drop(node.admin);
    drop(node.listeners);
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut hangup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(hangup)) => (term, hangup),
            _ => {
                let _ = ctrl_c.await;
                return;
            }
        };
        // SIGHUP (the terminal or session gone, `kill -HUP`) stops the node as SIGTERM does,
        // as the JVM stops ActiveMQ, rather than killing it without its orderly shutdown.
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The options of each protocol a listener serves.
#[derive(Clone)]
struct Protocols {
    stomp: Arc<StompOptions>,
    openwire: Arc<OpenWireOptions>,
}

/// What one connector's accept loop serves, from its URI.
struct Listener {
    scheme: ConnectorScheme,
    /// `maximumConnections`: connections served at once, past which a new one is refused.
    maximum_connections: Option<usize>,
    /// The process's share of open files for client connections, shared by every listener.
    slots: ClientSlots,
    protocols: Protocols,
}

async fn accept_loop(
    listener: TcpListener,
    serves: Listener,
    mut mode: watch::Receiver<Mode>,
    bind_failures: BindFailures,
) {
    let set_failure = |address: SocketAddr, error: Option<String>| {
        let mut failures = bind_failures.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(error) => failures.insert(address, error),
            None => failures.remove(&address),
        };
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => {
            tracing::error!(error = %e, "listener has no local address");
            return;
        }
    };
    let mut listener = Some(listener);
    // While the port is closed: the socket that keeps it bound (see `reserve`).
    let mut reserved: Option<TcpSocket> = None;
    // Accepts failed in a row (out of open files, say), and attempts to listen again.
    let mut accept_failures = FailureRun::default();
    let mut reopen_failures = FailureRun::default();
    // Connections served under the current mode; dropped (so aborted) when the mode changes.
    let mut connections = JoinSet::new();
    // Connections accepted while pending, with when they were accepted, oldest first.
    // Each holds its client slot, so that held connections count against the open files too.
    let mut held: VecDeque<(TcpStream, SocketAddr, Instant, ClientSlot)> = VecDeque::new();
    loop {
        let closed = matches!(&*mode.borrow(), Mode::Closed(_));
        if closed {
            // A slave does not listen: clients get "connection refused" and try the next
            // address at once (stomp.py and other clients without ferromq's ERROR handling too).
            if listener.take().is_some() {
                tracing::info!(%address, "client port closed while this node is not the master");
            }
            if reserved.is_none() {
                reserved = reserve(address);
            }
            set_failure(address, None);
            reopen_failures = FailureRun::default();
        } else if listener.is_none() {
            let opened = match reserved.take() {
                Some(socket) => socket.listen(LISTEN_BACKLOG),
                None => TcpListener::bind(address).await,
            };
            match opened {
                Ok(l) => {
                    tracing::info!(%address, "client port open again");
                    set_failure(address, None);
                    listener = Some(l);
                    reopen_failures = FailureRun::default();
                }
                Err(e) => {
                    // Once per episode: the node reports the failure itself (`bind_failures`).
                    if reopen_failures.failed() {
                        tracing::warn!(%address, error = %e, "cannot reopen the client port; retrying every 200 ms");
                    }
                    set_failure(address, Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        changed = mode.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            accepted = accept(listener.as_ref()) => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin, and
                        // say so once, not ten times a second.
                        if accept_failures.failed() {
                            tracing::warn!(%address, error = %e, "accept failed; retrying every 100 ms");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Some(failures) = accept_failures.ended() {
                    tracing::info!(%address, failures, "accepting again");
                }
                let _ = socket.set_nodelay(true);
                let current = mode.borrow().clone();
                match current {
                    Mode::Pending(_) => {
                        if let Some((socket, slot)) = slot_or_refuse(&serves, socket, peer) {
                            held.push_back((socket, peer, Instant::now(), slot));
                        }
                    }
                    other => dispatch(&other, socket, peer, &serves, &mut connections, None),
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                if !connections.is_empty() {
                    tracing::info!(connections = connections.len(), "closing client connections");
                }
                connections.abort_all();
                let current = mode.borrow().clone();
                if !matches!(current, Mode::Pending(_)) {
                    if !held.is_empty() {
                        tracing::info!(connections = held.len(), "handing over the connections held while taking over");
                    }
                    for (socket, peer, _, slot) in held.drain(..) {
                        dispatch(&current, socket, peer, &serves, &mut connections, Some(slot));
                    }
                }
            }
            _ = tokio::time::sleep_until(held.front().map_or_else(tokio::time::Instant::now, |h| (h.2 + PENDING_HOLD).into())), if !held.is_empty() => {
                // Still pending (a change hands every held connection over): refused, with why.
                let current = mode.borrow().clone();
                while held.front().is_some_and(|h| h.2.elapsed() >= PENDING_HOLD) {
                    let (socket, peer, _, slot) = held.pop_front().expect("checked");
                    dispatch(&current, socket, peer, &serves, &mut connections, Some(slot));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves `socket` under `mode` (in `connections`, aborted at the next change) or refuses it;
/// refused too when the listener already serves its `maximumConnections`, or when no client
/// slot is left (`slot`: the one a connection held while the node took over took then).
fn dispatch(
    mode: &Mode,
    socket: TcpStream,
    peer: SocketAddr,
    serves: &Listener,
    connections: &mut JoinSet<()>,
    slot: Option<ClientSlot>,
) {
    if serves.maximum_connections.is_some() {
        // Connections that ended count no more, even if the loop has not reaped them yet.
        while connections.try_join_next().is_some() {}
    }
    match mode {
        Mode::Serve(_)
            if serves
                .maximum_connections
                .is_some_and(|max| connections.len() >= max) =>
        {
            let max = serves.maximum_connections.unwrap_or_default();
            tracing::warn!(
                %peer,
                maximum_connections = max,
                "refusing a client connection: the connector's maximumConnections is reached"
            );
            spawn_refusal(
                &serves.slots,
                socket,
                peer,
                format!(
                    "this connector serves at most {max} connections (its maximumConnections); \
                     try again later"
                ),
                true,
            );
        }
        Mode::Serve(broker) => {
            let (socket, slot) = match slot {
                Some(slot) => (socket, slot),
                None => match slot_or_refuse(serves, socket, peer) {
                    Some(taken) => taken,
                    None => return,
                },
            };
            let broker = broker.clone();
            let protocols = serves.protocols.clone();
            let scheme = serves.scheme;
            connections.spawn(async move {
                let _slot = slot;
                handle_connection(socket, peer, scheme, broker, protocols).await;
            });
        }
        Mode::Refuse(reason)
        | Mode::Electing(reason)
        | Mode::Closed(reason)
        | Mode::Pending(reason) => {
            let tell_openwire = !matches!(mode, Mode::Electing(_));
            spawn_refusal(&serves.slots, socket, peer, reason.clone(), tell_openwire);
        }
    }
}

/// `socket` with a client slot for it, or `None` once it is refused for want of one (the
/// open files left would be the store's).
fn slot_or_refuse(
    serves: &Listener,
    socket: TcpStream,
    peer: SocketAddr,
) -> Option<(TcpStream, ClientSlot)> {
    if let Some(slot) = serves.slots.take() {
        return Some((socket, slot));
    }
    if let Some(refused) = serves.slots.note_refusal() {
        tracing::warn!(
            %peer,
            open = serves.slots.taken(),
            limit = serves.slots.limit,
            refused,
            "refusing client connections: they would take the open files kept for the store"
        );
    }
    spawn_refusal(&serves.slots, socket, peer, serves.slots.refusal(), true);
    None
}

/// Refuses `socket` on a task of its own (see [`refuse`]), or closes it unanswered when
/// [`crate::files::REFUSALS_AT_ONCE`] refusals are already under way.
fn spawn_refusal(
    slots: &ClientSlots,
    socket: TcpStream,
    peer: SocketAddr,
    reason: String,
    tell_openwire: bool,
) {
    match slots.take_refusal() {
        Some(slot) => {
            tokio::spawn(async move {
                let _slot = slot;
                refuse(socket, peer, reason, tell_openwire).await;
            });
        }
        None => tracing::debug!(%peer, "closing a connection unanswered: too many being refused"),
    }
}

/// Failures in a row of something retried (an accept, a listen): the first is worth a
/// warning, the end of the run a line saying how many there were; the others, nothing.
#[derive(Default)]
pub(crate) struct FailureRun(u64);

impl FailureRun {
    /// Counts a failure; true for the first of a run.
    pub(crate) fn failed(&mut self) -> bool {
        self.0 += 1;
        self.0 == 1
    }

    /// Ends the run: how many failures it had, if any.
    pub(crate) fn ended(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.0)).filter(|&n| n > 0)
    }
}

/// The backlog of a client port reopened from its reservation (tokio's own for a bind).
const LISTEN_BACKLOG: u32 = 1024;

/// Keeps a closed client port (or a slave's replication port, `node`) bound without
/// listening: a connection to it is refused as at any closed port, while no outgoing
/// connection of this machine can be given the port as its own. Inside the system's range of
/// such ports (32768-60999 on Linux, 49152-65535 on Windows, where 61616 and 61619 lie) one
/// could be, and the node could not serve once elected. Bound as a listener is (`SO_REUSEADDR`
/// except on Windows), so another program can still take the port on purpose, and the node
/// finds that out when it listens. `None` when the bind fails: the port is then bound anew.
pub(crate) fn reserve(address: SocketAddr) -> Option<TcpSocket> {
    let bound = (|| {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        Ok::<_, std::io::Error>(socket)
    })();
    bound
        .inspect_err(
            |e| tracing::debug!(%address, error = %e, "cannot keep the closed client port bound"),
        )
        .ok()
}

/// Accepts on `listener`, or waits forever when the port is closed.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Tells a client this node does not serve it now, and closes: a STOMP ERROR frame, or for an
/// OpenWire client (told by its first bytes) with `tell_openwire` a `WireFormatInfo` and a
/// `ConnectionError`, which a JMS application sees in its exception listener before its
/// failover transport retries (without, nothing: the transport just retries).
async fn refuse<S>(mut socket: S, peer: SocketAddr, reason: String, tell_openwire: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::debug!(%peer, %reason, "refusing client connection");
    let reason = reason.replace(['\n', '\r', '\0'], " ");
    // Clients speak first; a short wait tells the protocol (STOMP when in doubt).
    let mut first = BytesMut::with_capacity(64);
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while detect(&first).is_none() {
            match socket.read_buf(&mut first).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    let answer = match detect(&first) {
        Some(Detected::OpenWire) if tell_openwire => openwire::refusal(&reason),
        Some(Detected::OpenWire) => Vec::new(),
        _ => format!("ERROR\nmessage:{reason}\ncontent-type:text/plain\n\n{reason}\0").into_bytes(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket.write_all(&answer).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

async fn handle_connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    scheme: ConnectorScheme,
    broker: Broker,
    protocols: Protocols,
) {
    let mut initial = BytesMut::with_capacity(4096);
    let detected = match scheme {
        ConnectorScheme::Stomp => Detected::Stomp,
        ConnectorScheme::Tcp => {
            let read = tokio::time::timeout(DETECT_TIMEOUT, async {
                loop {
                    if let Some(d) = detect(&initial) {
                        return Some(d);
                    }
                    match socket.read_buf(&mut initial).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            match read {
                Ok(Some(d)) => d,
                Ok(None) => return,
                Err(_) => {
                    tracing::debug!(%peer, "no protocol detected before the timeout; closing");
                    return;
                }
            }
        }
    };
    match detected {
        Detected::Stomp => stomp::serve(socket, initial, broker, protocols.stomp, peer).await,
        Detected::OpenWire => {
            openwire::serve(socket, initial, broker, protocols.openwire, peer).await
        }
        Detected::Unknown => {
            tracing::info!(%peer, "unknown protocol; closing the connection");
            let _ = socket
                .write_all(b"ERROR\nmessage:unknown protocol: expected STOMP or OpenWire\n\n\0")
                .await;
            let _ = socket.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openwire::{self as ow, Command, Format, WireFormatInfo};

    /// What a JMS client sends first: its `WireFormatInfo`.
    fn openwire_hello() -> BytesMut {
        let mut hello = BytesMut::new();
        ow::encode(
            &Command::WireFormatInfo(WireFormatInfo::ferromq(0, 0, 0)),
            Format::new(12),
            &mut hello,
        )
        .unwrap();
        hello
    }

    async fn refused(hello: &[u8]) -> Vec<u8> {
        refused_telling(hello, true).await
    }

    async fn refused_telling(hello: &[u8], tell_openwire: bool) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(refuse(
            server,
            "127.0.0.1:1".parse().unwrap(),
            "no quorum: 1 of 3 nodes".into(),
            tell_openwire,
        ));
        client.write_all(hello).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        task.await.unwrap();
        answer
    }

    /// Listeners of the default configuration on one free loopback port, in `mode`.
    async fn listening_on_a_free_port(mode: Mode) -> (Listeners, SocketAddr) {
        let mut config = Config::default();
        config.transport.connectors = vec!["tcp://127.0.0.1:0".parse().unwrap()];
        let listeners = Listeners::bind(&config, mode).await.unwrap();
        let address = listeners.addresses[0];
        (listeners, address)
    }

    /// A client that connects while the node is taking over is held, then served (or refused)
    /// as the node's mode settles, instead of being refused at once.
    #[tokio::test]
    async fn a_connection_accepted_while_taking_over_is_served_once_the_node_serves() {
        let (listeners, address) =
            listening_on_a_free_port(Mode::Pending("elected; taking over".into())).await;
        let hello = b"CONNECT\naccept-version:1.2\nhost:x\n\n\0";
        let answer = |mut client: TcpStream| async move {
            let mut answer = vec![0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut answer))
                .await
                .expect("an answer")
                .unwrap();
            String::from_utf8_lossy(&answer[..n]).to_string()
        };

        let mut served = TcpStream::connect(address).await.unwrap();
        served.write_all(hello).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        second.write_all(hello).await.unwrap();
        // Both wait: nothing comes back while the node is pending.
        let mut probe = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), served.read(&mut probe))
                .await
                .is_err(),
            "a held connection is answered only once the node serves"
        );
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start_for_tests(dir.path(), BrokerOptions::default());
        listeners.set_mode(Mode::Serve(broker));
        let text = answer(served).await;
        assert!(text.starts_with("CONNECTED\n"), "{text}");
        // Held while the node took over, it was served: so was the second one.
        assert!(answer(second).await.starts_with("CONNECTED\n"));

        // Pending again, then the node does not become master after all: refused with why.
        listeners.set_mode(Mode::Pending("elected; taking over".into()));
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(hello).await.unwrap();
        listeners.set_mode(Mode::Refuse("not the master: no quorum".into()));
        let text = answer(client).await;
        assert!(text.starts_with("ERROR\n"), "{text}");
        assert!(text.contains("no quorum"), "{text}");
    }

    /// Polls until a connection to `address` is refused at connect (the port does not listen).
    async fn refused_within_10s(address: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(address).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                other => assert!(Instant::now() < deadline, "still accepting: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A node leaving for good (its disk stalled) closes its client ports through a
    /// `PortCloser`: connections are refused at connect, and a mode its lifecycle sets
    /// afterwards (stepping down: "electing") does not open them again.
    #[tokio::test]
    async fn ports_closed_for_good_stay_closed_whatever_the_lifecycle_sets() {
        let (listeners, address) = listening_on_a_free_port(Mode::Refuse("no quorum".into())).await;
        listeners
            .closer()
            .close("the node is leaving the cluster".into());
        listeners.set_mode(Mode::Electing("stepped down".into()));
        assert!(
            matches!(&*listeners.mode().borrow(), Mode::Closed(reason) if reason.contains("leaving")),
            "a later mode replaced the closed one"
        );
        refused_within_10s(address).await;
    }

    /// A slave's closed client port refuses clients but stays bound, so that no outgoing
    /// connection of the machine is given it as its own port; elected, the node listens on it.
    #[tokio::test]
    async fn a_closed_client_port_stays_bound_and_opens_again() {
        // Closed from the start, so no connection is ever accepted: no socket but the
        // reservation can be left on the port when it is checked below.
        let (listeners, address) = listening_on_a_free_port(Mode::Closed("a slave".into())).await;
        refused_within_10s(address).await;
        // What the system does to give an outgoing connection a port of its own.
        let outgoing = TcpSocket::new_v4().unwrap();
        let taken = outgoing.bind(address);
        assert_eq!(
            taken.map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::AddrInUse),
            "the closed port is free for any socket to take"
        );

        listeners.set_mode(Mode::Refuse("no quorum".into()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            match TcpStream::connect(address).await {
                Ok(client) => break client,
                Err(e) => assert!(Instant::now() < deadline, "port not reopened: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        client
            .write_all(b"CONNECT\naccept-version:1.2\n\n\0")
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("ERROR\n") && text.contains("no quorum"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_refused_stomp_client_gets_an_error_frame_naming_the_reason() {
        let answer = refused(b"CONNECT\naccept-version:1.2\n\n\0").await;
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("ERROR\n"), "{text}");
        assert!(text.contains("message:no quorum: 1 of 3 nodes"), "{text}");
    }

    #[tokio::test]
    async fn a_refused_openwire_client_gets_a_connection_error_naming_the_reason() {
        let hello = openwire_hello();
        let answer = refused(&hello).await;
        let mut input = BytesMut::from(&answer[..]);
        let reader = ow::FrameReader::new(1 << 20);
        let first = reader.next_frame(&mut input).unwrap().unwrap();
        assert!(matches!(
            ow::decode(&first, Format::new(12)).unwrap(),
            Command::WireFormatInfo(_)
        ));
        let second = reader.next_frame(&mut input).unwrap().unwrap();
        let Command::ConnectionError(error) = ow::decode(&second, Format::new(12)).unwrap() else {
            panic!("expected a ConnectionError");
        };
        let reason = error.exception.unwrap().message.unwrap();
        assert_eq!(reason, "no quorum: 1 of 3 nodes");
    }

    /// During an election a JMS client's connection is closed without a word: its failover
    /// transport retries, and the application's exception listener hears nothing of what is
    /// an ordinary failover. A STOMP client still gets the ERROR frame.
    #[tokio::test]
    async fn during_an_election_an_openwire_client_is_closed_without_a_connection_error() {
        let hello = openwire_hello();
        assert!(refused_telling(&hello, false).await.is_empty());
        let stomp = refused_telling(b"CONNECT\naccept-version:1.2\n\n\0", false).await;
        assert!(String::from_utf8(stomp).unwrap().starts_with("ERROR\n"));
    }

    #[test]
    fn broker_options_carry_the_dead_letter_strategy() {
        let shared = broker_options(&Config::default());
        assert_eq!(shared.dead_letter_strategy, DeadLetterStrategy::Shared);
        let config = Config::from_toml_str(
            "[broker]\ndead_letter_strategy = \"individual\"\n\
             dead_letter_queue_prefix = \"DLQ.\"\ndead_letter_topic_suffix = \".DLT\"\n",
        )
        .unwrap();
        assert_eq!(
            broker_options(&config).dead_letter_strategy,
            DeadLetterStrategy::Individual {
                queue_prefix: "DLQ.".into(),
                queue_suffix: String::new(),
                topic_prefix: "ActiveMQ.DLQ.Topic.".into(),
                topic_suffix: ".DLT".into(),
            }
        );
    }
}
