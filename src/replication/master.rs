//! The master side: the replication listener, one task per slave connection, and the quorum
//! watermark.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use super::history::shared_prefix;
use super::quorum::QuorumTracker;
use super::repeated::{repeated_note, RepeatedFailure};
use super::wire::{self, envelope::Kind};
use super::{
    frame_epoch, socket_address, write_message, ConnectionId, MessageReader, ReplicationError,
    HEARTBEAT_INTERVAL, MAX_RECORDS_BYTES, PEER_TIMEOUT, READ_CHUNK,
};
use crate::election::Lease;
use crate::store::{EpochMark, JournalReader, Position, StoreError};

#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// `host:port` (or `tcp://host:port`) to listen on; port 0 picks any free port.
    pub bind: String,
    /// A slave must present this token.
    pub security_token: String,
    /// Cluster size: a position is confirmed once the master and `replicas / 2` slaves hold it.
    pub replicas: usize,
    /// This master's epoch (its `EpochStart` record is the first it appended).
    pub epoch: u64,
    /// Every record before this position is of an older epoch: the store's end before the
    /// core appended this epoch's `EpochStart` (`Position(0)` if not known). The start of this
    /// epoch is looked up in the journal from here, not from the start of the previous epoch,
    /// which may lie gigabytes back or in a released segment.
    pub epoch_floor: Position,
    /// The election's lease on this mastership ([`crate::election::Election::lease`]): nothing
    /// is confirmed while it does not hold for `epoch`; what was held back is confirmed as soon
    /// as it is renewed. `None`: no lease (tests).
    pub lease: Option<watch::Receiver<Option<Lease>>>,
}

/// A connected slave, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveStatus {
    pub node: String,
    /// What the slave last acknowledged holding (0 before its first ack).
    pub acked: Position,
    pub connected_since: SystemTime,
    pub address: SocketAddr,
    /// Where its stream started: the shared prefix it was truncated to, or the snapshot start.
    pub stream_start: Position,
    /// It was sent a snapshot (reset) rather than an incremental catch-up.
    pub snapshot: bool,
}

struct SlaveEntry {
    id: u64,
    /// The slave's own id of this connection (see [`ConnectionId`]).
    connection: ConnectionId,
    status: SlaveStatus,
    /// Ends this connection (a newer one of the same node replaced it).
    kick: Arc<Notify>,
}

struct Shared {
    options: MasterOptions,
    reader: JournalReader,
    history: Mutex<Vec<EpochMark>>,
    written: watch::Receiver<Position>,
    tracker: Mutex<QuorumTracker>,
    confirmed: watch::Sender<Position>,
    /// Told each new confirmed watermark on the thread that moved it (see
    /// [`ReplicationMaster::on_confirmed`]).
    on_confirmed: OnceLock<ConfirmedCallback>,
    slaves: Mutex<HashMap<String, SlaveEntry>>,
    next_id: AtomicU64,
    /// Refusals logged at most once per period while the same one repeats (a slave with
    /// another `security_token` retries five times a second).
    refusals: Mutex<RepeatedFailure>,
    /// The watermark was held back because the lease had lapsed (logged once per lapse).
    held_back: AtomicBool,
}

/// See [`ReplicationMaster::on_confirmed`].
pub type ConfirmedCallback = Box<dyn Fn(Position) + Send + Sync>;

impl Shared {
    fn publish(&self, confirmed: Position) {
        if confirmed <= *self.confirmed.borrow() {
            return; // nothing to confirm: no need to look at the lease
        }
        if !self.lease_holds() {
            // The tracker keeps the watermark; `lease_loop` publishes it once renewed.
            if !self.held_back.swap(true, Ordering::Relaxed) {
                warn!(
                    epoch = self.options.epoch,
                    held_back = confirmed.0,
                    "confirmations wait: ZooKeeper has not vouched for this master within its \
                     lease (paused, or cut off from ZooKeeper?)"
                );
            }
            return;
        }
        let moved = self.confirmed.send_if_modified(|current| {
            if confirmed > *current {
                *current = confirmed;
                true
            } else {
                false
            }
        });
        if moved {
            if let Some(callback) = self.on_confirmed.get() {
                callback(confirmed);
            }
        }
    }

    fn lease_holds(&self) -> bool {
        self.options
            .lease
            .as_ref()
            .is_none_or(|lease| Lease::holds(lease.borrow().as_ref(), self.options.epoch))
    }

    fn held_locally(&self, position: Position) {
        let confirmed = self.tracker.lock().unwrap().set_local(position);
        self.publish(confirmed);
    }

    /// The master's history, its own epoch included: if the caller's history lacks it, its
    /// start is found in the journal (the first record of this epoch), or else is the written
    /// end (nothing of this epoch is written yet).
    fn master_history(&self) -> Vec<EpochMark> {
        let epoch = self.options.epoch;
        let mut history = self.history.lock().unwrap();
        if history.last().is_some_and(|m| m.epoch >= epoch) {
            return history.clone();
        }
        let from = history
            .last()
            .map_or(Position(0), |m| m.start)
            .max(self.options.epoch_floor)
            .max(self.reader.oldest());
        let written = self.reader.written();
        match first_frame_of_epoch(&self.reader, epoch, from, written) {
            Ok(Some(start)) => {
                history.push(EpochMark { epoch, start });
                return history.clone();
            }
            Ok(None) => {}
            Err(e) => warn!("looking for the start of epoch {epoch} in the journal: {e}"),
        }
        let mut provisional = history.clone();
        provisional.push(EpochMark {
            epoch,
            start: written,
        });
        provisional
    }

    fn acked(&self, node: &str, id: u64, position: Position) {
        {
            let mut slaves = self.slaves.lock().unwrap();
            match slaves.get_mut(node) {
                Some(entry) if entry.id == id => entry.status.acked = position,
                _ => return,
            }
        }
        let confirmed = self.tracker.lock().unwrap().slave_acked(node, id, position);
        self.publish(confirmed);
    }

    fn gone(&self, node: &str, id: u64) {
        let removed = {
            let mut slaves = self.slaves.lock().unwrap();
            match slaves.get(node) {
                Some(entry) if entry.id == id => slaves.remove(node).is_some(),
                _ => false,
            }
        };
        if removed {
            self.tracker.lock().unwrap().slave_gone(node, id);
        }
    }
}

/// The replication side of an elected master. Dropping it (or [`ReplicationMaster::stop`])
/// closes the listener and every slave connection.
pub struct ReplicationMaster {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl ReplicationMaster {
    /// Opens the replication listener on `options.bind` and starts serving slaves.
    ///
    /// - `reader`: the master store's journal reader;
    /// - `history`: the master store's [`Store::history`](crate::store::Store::history), best
    ///   taken after the core appended this epoch's `EpochStart` (if it lacks `options.epoch`,
    ///   the epoch's start is looked up in the journal);
    /// - `written`: [`Store::written_watch`](crate::store::Store::written_watch), so records go
    ///   out while the master's own fsync runs;
    /// - `local_held`: the master's own held position now (its durable end: after fsync when
    ///   the sync policy asks the master to fsync); later ones are reported through
    ///   [`ReplicationMaster::held_locally`].
    ///
    /// Returns the confirmed watermark for the broker core: the master and `replicas / 2`
    /// slaves hold everything before it.
    pub async fn start(
        options: MasterOptions,
        reader: JournalReader,
        history: Vec<EpochMark>,
        written: watch::Receiver<Position>,
        local_held: Position,
    ) -> Result<(ReplicationMaster, watch::Receiver<Position>), ReplicationError> {
        let bind = socket_address(&options.bind)?.to_string();
        let listener = TcpListener::bind(&bind)
            .await
            .map_err(|source| ReplicationError::Bind {
                bind: bind.clone(),
                source,
            })?;
        let local_addr = listener.local_addr()?;
        let mut tracker = QuorumTracker::new(options.replicas);
        let initial = tracker.set_local(local_held);
        let (confirmed_tx, confirmed_rx) = watch::channel(initial);
        let shared = Arc::new(Shared {
            options,
            reader,
            history: Mutex::new(history),
            written,
            tracker: Mutex::new(tracker),
            confirmed: confirmed_tx,
            on_confirmed: OnceLock::new(),
            refusals: Mutex::default(),
            held_back: AtomicBool::new(false),
            slaves: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        info!(
            address = %local_addr,
            epoch = shared.options.epoch,
            replicas = shared.options.replicas,
            "replication listener open"
        );
        let mut tasks = vec![tokio::spawn(accept_loop(shared.clone(), listener))];
        if let Some(lease) = shared.options.lease.clone() {
            tasks.push(tokio::spawn(lease_loop(shared.clone(), lease)));
        }
        Ok((
            ReplicationMaster {
                shared,
                local_addr,
                tasks,
            },
            confirmed_rx,
        ))
    }

    /// The bound address (with the port chosen when `bind` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connected slaves, by node name.
    pub fn slaves(&self) -> Vec<SlaveStatus> {
        ReplicationMaster::slaves_of(&self.shared)
    }

    fn slaves_of(shared: &Shared) -> Vec<SlaveStatus> {
        let mut slaves: Vec<SlaveStatus> = shared
            .slaves
            .lock()
            .unwrap()
            .values()
            .map(|e| e.status.clone())
            .collect();
        slaves.sort_by(|a, b| a.node.cmp(&b.node));
        slaves
    }

    pub fn connected_slaves(&self) -> usize {
        self.shared.slaves.lock().unwrap().len()
    }

    /// Slave acknowledgements a confirmation needs besides the master's (`replicas / 2`).
    pub fn slaves_needed(&self) -> usize {
        self.shared.tracker.lock().unwrap().slaves_needed()
    }

    /// Reads [`ReplicationMaster::slaves`] for as long as this master lives (then nothing),
    /// without keeping it alive: for status pages.
    pub fn observer(&self) -> impl Fn() -> Vec<SlaveStatus> + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move || {
            shared
                .upgrade()
                .map(|shared| ReplicationMaster::slaves_of(&shared))
                .unwrap_or_default()
        }
    }

    /// The current confirmed watermark.
    pub fn confirmed(&self) -> Position {
        *self.shared.confirmed.borrow()
    }

    /// Has `callback` told every later move of the confirmed watermark at once, on the thread
    /// that moved it (an ack reader, or whoever reports the master's own position through
    /// [`ReplicationMaster::held_locally`]): the broker core is then confirmed without a task
    /// hand-off. The watch returned by [`ReplicationMaster::start`] still moves as well. The
    /// callback must not call back into this master. Set once; later calls are ignored.
    pub fn on_confirmed(&self, callback: ConfirmedCallback) {
        let _ = self.shared.on_confirmed.set(callback);
    }

    /// A function reporting the master's own held position (to be called from the store's
    /// durable callback, on the thread that wrote the batch).
    pub fn held_locally(&self) -> impl Fn(Position) + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        move |position| {
            if let Some(shared) = shared.upgrade() {
                shared.held_locally(position);
            }
        }
    }

    /// Closes the listener and every slave connection (as their tasks end, soon after).
    pub fn stop(&mut self) {
        drop(self.abort());
    }

    /// Like [`stop`](Self::stop), returning once the listener is closed, so that its port is
    /// free for the node to hold again.
    pub async fn stop_and_wait(&mut self) {
        for task in self.abort() {
            let _ = task.await;
        }
    }

    /// Aborts the listener's and the slaves' tasks; their handles.
    fn abort(&mut self) -> Vec<JoinHandle<()>> {
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        let slaves = std::mem::take(&mut *self.shared.slaves.lock().unwrap());
        if !slaves.is_empty() || !tasks.is_empty() {
            info!(address = %self.local_addr, "replication listener closed");
        }
        tasks
    }
}

impl Drop for ReplicationMaster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes the watermark held back while the lease had lapsed, at each renewal.
async fn lease_loop(shared: Arc<Shared>, mut lease: watch::Receiver<Option<Lease>>) {
    while lease.changed().await.is_ok() {
        if !shared.lease_holds() {
            continue;
        }
        if shared.held_back.swap(false, Ordering::Relaxed) {
            info!(
                epoch = shared.options.epoch,
                "confirmations resume: ZooKeeper vouched for this master again"
            );
        }
        let confirmed = shared.tracker.lock().unwrap().confirmed();
        shared.publish(confirmed);
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    // Dropped (aborting every connection) when this task is aborted.
    let mut connections = tokio::task::JoinSet::new();
    let logins = Arc::new(tokio::sync::Semaphore::new(super::LOGINS_AT_ONCE));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Whoever can reach `bind` could otherwise hold any number of files
                    // (which the store needs) and login buffers without ever logging in.
                    let Ok(login) = logins.clone().try_acquire_owned() else {
                        let logged = shared
                            .refusals
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .failed("logins at once", Instant::now());
                        if let Some(unlogged) = logged {
                            warn!(
                                peer = %peer,
                                "replication connection closed: {} others have not logged in \
                                 yet{}",
                                super::LOGINS_AT_ONCE,
                                repeated_note(unlogged)
                            );
                        }
                        continue;
                    };
                    connections.spawn(serve(shared.clone(), stream, peer, login));
                }
                Err(e) => {
                    warn!("accepting a replication connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    login: tokio::sync::OwnedSemaphorePermit,
) {
    let mut node = String::new();
    match serve_slave(&shared, stream, peer, &mut node, login).await {
        // Logged by `refuse`, at most once per period while it repeats.
        Err(ReplicationError::Refused(_)) => {}
        Err(e) => warn!(node = %node, peer = %peer, "replication connection ended: {e}"),
        Ok(()) => {
            info!(node = %node, peer = %peer, "replication connection closed by the slave");
        }
    }
}

/// Tells the slave why it is refused, and ends its connection with
/// [`ReplicationError::Refused`].
async fn refuse(
    shared: &Shared,
    writer: &mut OwnedWriteHalf,
    node: &str,
    peer: SocketAddr,
    reason: String,
) -> Result<(), ReplicationError> {
    let logged = shared
        .refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .failed(&format!("{node}: {reason}"), Instant::now());
    if let Some(unlogged) = logged {
        warn!(node = %node, peer = %peer, "refused a slave: {reason}{}", repeated_note(unlogged));
    }
    write_message(
        writer,
        Kind::Refused(wire::Refused {
            reason: reason.clone(),
        }),
    )
    .await?;
    Err(ReplicationError::Refused(reason))
}

/// The position of the first retained frame of `epoch` (or a later one) in `from..to`,
/// stepping over released ranges (their records are gone, and epochs never decrease along a
/// journal, so the first retained one is the epoch's start as [`EpochMark`] defines it).
fn first_frame_of_epoch(
    reader: &JournalReader,
    epoch: u64,
    from: Position,
    to: Position,
) -> Result<Option<Position>, StoreError> {
    let mut spans = Vec::new();
    let mut at = from;
    for (start, end) in reader.released_ranges() {
        if end <= at {
            continue;
        }
        if start > at {
            spans.push((at, start.min(to)));
        }
        at = end;
    }
    spans.push((at, to));
    for (start, end) in spans.into_iter().filter(|(s, e)| s < e) {
        for item in reader.frames(start, end) {
            let (position, frame) = item?;
            if frame_epoch(&frame) >= epoch {
                return Ok(Some(position));
            }
        }
    }
    Ok(None)
}

async fn serve_slave(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    node_name: &mut String,
    login_permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), ReplicationError> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = MessageReader::new(reader);
    reader.set_limit(super::MAX_LOGIN_LEN);
    let login = match timeout(PEER_TIMEOUT, reader.next()).await {
        Err(_) => return Err(ReplicationError::Timeout(PEER_TIMEOUT)),
        Ok(Ok(Some(Kind::Login(login)))) => login,
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(_))) => {
            return Err(ReplicationError::Protocol(
                "the first message is not a login".into(),
            ))
        }
        Ok(Err(e)) => return Err(e),
    };
    reader.set_limit(super::MAX_MESSAGE_LEN);
    drop(login_permit);
    let mut node = login.node.clone();
    if node.len() > super::MAX_NODE_LEN {
        node.truncate(node.floor_char_boundary(super::MAX_NODE_LEN));
        *node_name = node.clone();
        let reason = format!("the login's node id is over {} bytes", super::MAX_NODE_LEN);
        return refuse(shared, &mut writer, &node, peer, reason).await;
    }
    *node_name = node.clone();
    let epoch = shared.options.epoch;
    if !crate::secret::same(&login.security_token, &shared.options.security_token) {
        return refuse(
            shared,
            &mut writer,
            &node,
            peer,
            "security token mismatch".into(),
        )
        .await;
    }
    if node.trim().is_empty() {
        return refuse(
            shared,
            &mut writer,
            &node,
            peer,
            "the login names no node".into(),
        )
        .await;
    }
    if login.expected_epoch != epoch {
        let reason = format!(
            "this master runs epoch {epoch}, the slave expects the master of epoch {}",
            login.expected_epoch
        );
        return refuse(shared, &mut writer, &node, peer, reason).await;
    }
    let slave_seen = login
        .history
        .iter()
        .map(|m| m.epoch)
        .chain([login.last_epoch])
        .max()
        .unwrap_or(0);
    if slave_seen > epoch {
        let reason = format!(
            "the slave holds records of epoch {slave_seen}, newer than this master's epoch {epoch}"
        );
        return refuse(shared, &mut writer, &node, peer, reason).await;
    }

    let slave_end = Position(login.end);
    let slave_history: Vec<EpochMark> = login
        .history
        .iter()
        .map(|m| EpochMark {
            epoch: m.epoch,
            start: Position(m.start),
        })
        .collect();
    let master_end = shared.reader.written();
    let master_history = shared.master_history();
    let shared_to = shared_prefix(&master_history, master_end, &slave_history, slave_end);
    let oldest = shared.reader.oldest();
    let slave_oldest = slave_history.first().map_or(slave_end, |m| m.start);
    let released = shared.reader.released_ranges();
    let needs_released = released.iter().any(|&(_, to)| to > shared_to);
    let snapshot = shared_to < oldest || shared_to < slave_oldest || needs_released;
    let start = if snapshot { oldest } else { shared_to };
    write_message(
        &mut writer,
        Kind::Accepted(wire::Accepted {
            master_epoch: epoch,
            truncate_to: if snapshot { 0 } else { shared_to.0 },
            snapshot_start: if snapshot { oldest.0 } else { 0 },
            master_end: master_end.0,
            snapshot,
        }),
    )
    .await?;
    if snapshot {
        info!(
            node = %node,
            peer = %peer,
            slave_end = %slave_end,
            shared = %shared_to,
            oldest = %oldest,
            master_end = %master_end,
            "slave accepted: sending a snapshot from the oldest retained position"
        );
    } else {
        info!(
            node = %node,
            peer = %peer,
            slave_end = %slave_end,
            truncate_to = %shared_to,
            dropped_bytes = slave_end.0.saturating_sub(shared_to.0),
            master_end = %master_end,
            "slave accepted: incremental catch-up"
        );
    }

    let kick = Arc::new(Notify::new());
    // Numbered under the lock, so that a newer connection of a node has the higher id.
    let connection = ConnectionId {
        incarnation: login.incarnation,
        attempt: login.attempt,
    };
    let (id, replaced) = {
        let mut slaves = shared.slaves.lock().unwrap();
        if let Some(live) = slaves
            .get(&node)
            .filter(|live| connection.is_stale_beside(&live.connection))
        {
            info!(
                node = %node,
                peer = %peer,
                attempt = connection.attempt,
                live_attempt = live.connection.attempt,
                "a stale login of this slave (a connection it gave up on, delivered late): \
                 closed; its live connection stays"
            );
            return Ok(());
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = SlaveEntry {
            id,
            connection,
            status: SlaveStatus {
                node: node.clone(),
                acked: Position(0),
                connected_since: SystemTime::now(),
                address: peer,
                stream_start: start,
                snapshot,
            },
            kick: kick.clone(),
        };
        (id, slaves.insert(node.clone(), entry))
    };
    // Whatever an earlier connection acknowledged stops counting, even an ack its reader is
    // reporting right now: the tracker counts this session's acks only.
    shared.tracker.lock().unwrap().slave_connected(&node, id);
    if let Some(old) = replaced {
        info!(node = %node, "a new connection of this slave replaces the previous one");
        old.kick.notify_one();
    }

    let sent = Arc::new(AtomicU64::new(start.0));
    let mut acks = tokio::spawn(read_acks(
        shared.clone(),
        node.clone(),
        id,
        reader,
        sent.clone(),
    ));
    let allowed_gaps = if snapshot { released } else { Vec::new() };
    let result = tokio::select! {
        r = stream_journal(shared, &mut writer, start, allowed_gaps, &sent) => r,
        r = &mut acks => match r {
            Ok(r) => r,
            Err(e) => Err(ReplicationError::Protocol(format!("ack reader failed: {e}"))),
        },
        _ = kick.notified() => Err(ReplicationError::Protocol("replaced by a newer connection".into())),
    };
    acks.abort();
    shared.gone(&node, id);
    result
}

/// Reads the slave's acks until it goes silent for [`PEER_TIMEOUT`] or closes. A slave cutting
/// or resetting its store, as the login's answer asked, sends heartbeats meanwhile.
async fn read_acks(
    shared: Arc<Shared>,
    node: String,
    id: u64,
    mut reader: MessageReader<OwnedReadHalf>,
    sent: Arc<AtomicU64>,
) -> Result<(), ReplicationError> {
    loop {
        let message = match timeout(PEER_TIMEOUT, reader.next()).await {
            Err(_) => return Err(ReplicationError::Timeout(PEER_TIMEOUT)),
            Ok(message) => message?,
        };
        match message {
            None => return Ok(()),
            Some(Kind::Ack(ack)) => {
                let sent = sent.load(Ordering::Acquire);
                if ack.position > sent {
                    return Err(ReplicationError::Protocol(format!(
                        "the slave acknowledged {}, beyond what was sent ({sent})",
                        ack.position
                    )));
                }
                if ack.position > 0 {
                    shared.acked(&node, id, Position(ack.position));
                }
            }
            Some(_) => {
                return Err(ReplicationError::Protocol(
                    "a slave sent something other than an ack".into(),
                ))
            }
        }
    }
}

enum Chunk {
    Frames(Bytes),
    /// `from..to` was released.
    Released(Position, Position),
}

/// Reads whole frames from `from` (at most about [`READ_CHUNK`] bytes, at least one frame).
fn read_chunk(
    reader: &JournalReader,
    from: Position,
    limit: Position,
) -> Result<Chunk, ReplicationError> {
    let mut buf = BytesMut::new();
    for item in reader.frames(from, limit) {
        match item {
            Ok((_, frame)) => {
                buf.extend_from_slice(&frame);
                if buf.len() >= READ_CHUNK {
                    break;
                }
            }
            Err(StoreError::NotRetained { position, oldest }) if buf.is_empty() => {
                let range = reader
                    .released_ranges()
                    .into_iter()
                    .find(|&(start, end)| start <= position && position < end);
                return match range {
                    Some((_, end)) => Ok(Chunk::Released(position, end)),
                    None => Err(ReplicationError::Protocol(format!(
                        "position {position} is no longer retained (the oldest is {oldest}); \
                         the slave must reconnect for a snapshot"
                    ))),
                };
            }
            Err(StoreError::NotRetained { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Chunk::Frames(buf.freeze()))
}

/// Up to this many bytes behind the written end, the stream reads on its own task: they were
/// written moments ago and are in the page cache. Older ranges (a catch-up) are read on the
/// blocking pool, where a read from the disk stalls nobody.
const TAIL_READ: usize = 256 << 10;

/// Streams the journal from `next` for as long as the connection lasts: whatever is written is
/// read in big chunks and sent at once, never waiting for acks.
async fn stream_journal(
    shared: &Arc<Shared>,
    writer: &mut OwnedWriteHalf,
    mut next: Position,
    allowed_gaps: Vec<(Position, Position)>,
    sent: &AtomicU64,
) -> Result<(), ReplicationError> {
    let mut written = shared.written.clone();
    let mut heartbeat = interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        written.borrow_and_update();
        let limit = shared.reader.written();
        if next < limit {
            let chunk = if limit.0 - next.0 <= TAIL_READ as u64 {
                // Just written, so in the page cache: a thread hand-off would cost more than
                // the read.
                read_chunk(&shared.reader, next, limit)?
            } else {
                let reader = shared.reader.clone();
                tokio::task::spawn_blocking(move || read_chunk(&reader, next, limit))
                    .await
                    .map_err(|e| ReplicationError::Protocol(format!("journal read task: {e}")))??
            };
            match chunk {
                Chunk::Frames(frames) => {
                    let mut offset = 0;
                    while offset < frames.len() {
                        let piece = (frames.len() - offset).min(MAX_RECORDS_BYTES);
                        let records = wire::Records {
                            position: next.0,
                            frames: frames.slice(offset..offset + piece),
                            confirmed: shared.confirmed.borrow().0,
                        };
                        offset += piece;
                        next = Position(next.0 + piece as u64);
                        // Before the write: the slave may ack before it returns.
                        sent.store(next.0, Ordering::Release);
                        write_message(writer, Kind::Records(records)).await?;
                    }
                }
                Chunk::Released(from, to) => {
                    if !allowed_gaps.contains(&(from, to)) {
                        return Err(ReplicationError::Protocol(format!(
                            "the master released {from}..{to} before the slave received it; \
                             the slave must reconnect for a snapshot"
                        )));
                    }
                    debug!(from = %from, to = %to, "skipping a released range");
                    next = to;
                    sent.store(next.0, Ordering::Release);
                    write_message(
                        writer,
                        Kind::Skip(wire::Skip {
                            from: from.0,
                            to: to.0,
                        }),
                    )
                    .await?;
                }
            }
            continue;
        }
        tokio::select! {
            changed = written.changed() => {
                if changed.is_err() {
                    error!("the master's journal is gone; closing the replication stream");
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => {
                let heartbeat = wire::Heartbeat {
                    master_end: limit.0,
                    confirmed: shared.confirmed.borrow().0,
                };
                write_message(writer, Kind::Heartbeat(heartbeat)).await?;
            }
        }
    }
}
