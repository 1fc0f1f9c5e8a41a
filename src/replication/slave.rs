//! The slave side: log in to the master, truncate or reset as told, copy the stream into the
//! local store and acknowledge what is held.

use std::time::Instant;

use bytes::BytesMut;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tracing::{debug, error, info};

use super::wire::{self, envelope::Kind};
use super::{
    socket_address, whole_frames, write_message, MessageReader, ReplicationError, CONNECT_TIMEOUT,
    HEARTBEAT_INTERVAL, PEER_TIMEOUT,
};
use crate::store::{Position, Store};

#[derive(Debug, Clone)]
pub struct SlaveOptions {
    /// The master's advertised address, `tcp://host:port`.
    pub master: String,
    /// This node's name (the master keeps one connection per name).
    pub node: String,
    pub security_token: String,
    /// The master epoch ZooKeeper announced: the slave follows only that master, and only if
    /// it is at least the epoch of the slave's own last record.
    pub expected_epoch: u64,
    /// Which connection of this node this is: a new one for every connection (see
    /// [`ConnectionId::next_attempt`]).
    pub connection: ConnectionId,
}

/// Tells a slave's connections apart, so that a master can tell a stale login (from a
/// connection the slave gave up on, delivered late) from the slave's live connection, which it
/// would otherwise replace with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionId {
    /// Drawn once per process; 0: unknown (a slave of a version that did not send it).
    pub incarnation: u64,
    /// Counts the process's connections, from 1.
    pub attempt: u64,
}

impl ConnectionId {
    /// A new process's first id (its attempt is 0: take [`ConnectionId::next_attempt`] for each
    /// connection).
    pub fn new_incarnation() -> ConnectionId {
        use std::hash::{BuildHasher, Hasher};
        // A hasher with fresh random keys: its empty hash is a random number.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        ConnectionId {
            incarnation: random | 1,
            attempt: 0,
        }
    }

    /// The id of this process's next connection.
    pub fn next_attempt(&mut self) -> ConnectionId {
        self.attempt += 1;
        *self
    }

    /// Whether a login with this id is older than the connection `live` of the same node:
    /// the same process's earlier attempt. A different or unknown incarnation is never stale
    /// (a restarted slave's first connection replaces what the master holds).
    pub fn is_stale_beside(&self, live: &ConnectionId) -> bool {
        self.incarnation != 0 && self.incarnation == live.incarnation && self.attempt < live.attempt
    }
}

/// Why [`run_slave`] returned normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// The master closed the connection.
    Closed,
    /// The master was silent for [`PEER_TIMEOUT`].
    TimedOut,
}

/// How a replication session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveExit {
    pub cause: ExitCause,
    /// The master sent a snapshot (the store was reset) rather than an incremental catch-up.
    pub snapshot: bool,
    /// The store reached the master's end as of the login.
    pub caught_up: bool,
    /// The store's end when the session ended.
    pub end: Position,
}

/// Follows the master at `options.master` until the connection ends; the caller (the node
/// loop) then asks ZooKeeper again. `held` is the store's durable end (fsynced or written, as
/// the store was opened for the sync policy); the slave acknowledges what it reports.
///
/// The store stays consistent at every await point, so dropping the future simply stops
/// following. Truncation and reset block the calling thread while the store works, and
/// send heartbeats meanwhile (see `preparing`).
pub async fn run_slave(
    options: SlaveOptions,
    store: &mut Store,
    mut held: watch::Receiver<Position>,
) -> Result<SlaveExit, ReplicationError> {
    let seen = store.last_epoch();
    if options.expected_epoch < seen {
        return Err(ReplicationError::StaleEpoch {
            master: options.expected_epoch,
            seen,
        });
    }
    let address = socket_address(&options.master)?;
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| ReplicationError::Timeout(CONNECT_TIMEOUT))??;
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = MessageReader::new(reader);
    let login = wire::Login {
        node: options.node.clone(),
        security_token: options.security_token.clone(),
        expected_epoch: options.expected_epoch,
        last_epoch: seen,
        end: store.end().0,
        history: store
            .history()
            .iter()
            .map(|m| wire::EpochMark {
                epoch: m.epoch,
                start: m.start.0,
            })
            .collect(),
        incarnation: options.connection.incarnation,
        attempt: options.connection.attempt,
    };
    write_message(&mut writer, Kind::Login(login)).await?;
    let accepted = match timeout(PEER_TIMEOUT, reader.next()).await {
        Err(_) => return Err(ReplicationError::Timeout(PEER_TIMEOUT)),
        Ok(Ok(Some(Kind::Accepted(accepted)))) => accepted,
        // The node logs it (once per period while it repeats, as it retries).
        Ok(Ok(Some(Kind::Refused(refused)))) => {
            return Err(ReplicationError::Refused(refused.reason));
        }
        Ok(Ok(Some(_))) => {
            return Err(ReplicationError::Protocol(
                "the master's answer to the login is neither accepted nor refused".into(),
            ))
        }
        Ok(Ok(None)) => {
            return Err(ReplicationError::Protocol(
                "the master closed the connection at login".into(),
            ))
        }
        Ok(Err(e)) => return Err(e),
    };
    if accepted.master_epoch != options.expected_epoch {
        return Err(ReplicationError::Protocol(format!(
            "the master runs epoch {}, ZooKeeper announced epoch {}",
            accepted.master_epoch, options.expected_epoch
        )));
    }
    let before = store.end();
    // Acks are only sent for positions past this: a reset store holds nothing before it.
    let ack_floor = if accepted.snapshot {
        let start = Position(within_reach(accepted.snapshot_start, "snapshot start")?);
        info!(
            master = %options.master,
            start = %start,
            master_end = accepted.master_end,
            "receiving a snapshot from the master"
        );
        preparing(&mut writer, || store.reset(start))??;
        start
    } else {
        let to = Position(accepted.truncate_to);
        if to > before {
            return Err(ReplicationError::Protocol(format!(
                "the master asks to truncate at {to}, past this journal's end {before}"
            )));
        }
        if to < before {
            preparing(&mut writer, || store.truncate(to))??;
        }
        info!(
            master = %options.master,
            from = %to,
            master_end = accepted.master_end,
            "catching up incrementally from the master"
        );
        Position(0)
    };
    // Reports from before the truncation or reset may name positions no longer held.
    held.borrow_and_update();
    let mut last_epoch = store.last_epoch();
    let target = Position(accepted.master_end);
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut caught_up = false;
    let mut pending = BytesMut::new();

    // What this slave already holds of the master's history counts at once: a slave that
    // wrote the master's last records and lost its connection before its ack arrived logs in
    // with nothing left to receive, and without this ack the master, waiting for it, would
    // confirm nothing until a new record came (a client that has filled its window sends none).
    // The store's own durable end, not `held`: a store opened moments ago has reported
    // nothing through its watch yet, although everything it recovered is held.
    let mut acked = Position(0);
    let holding = store.durable().min(store.end());
    if holding > ack_floor {
        acked = holding;
        write_message(&mut writer, Kind::Ack(wire::Ack { position: acked.0 })).await?;
    }
    let mut tick = interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut last_received = reader.received();
    let exit = |cause, caught_up, store: &Store| SlaveExit {
        cause,
        snapshot: accepted.snapshot,
        caught_up,
        end: store.end(),
    };
    // A copy marked damaged (recovery cut records it held) is whole again once it durably
    // holds everything this master held at the login, every confirmed record included.
    let mut damaged = store.damage().is_some();
    loop {
        if damaged && caught_up && store.durable() >= target {
            // The node, watching the store's mark, logs it and tells the election.
            store.clear_damage()?;
            damaged = false;
        }
        if !caught_up && store.end() >= target {
            caught_up = true;
            let seconds = started.elapsed().as_secs_f64();
            info!(
                master = %options.master,
                end = %store.end(),
                records,
                bytes,
                seconds,
                mib_per_second = bytes as f64 / (1 << 20) as f64 / seconds.max(1e-6),
                snapshot = accepted.snapshot,
                "caught up with the master"
            );
        }
        // With fsync, appends queue for the journal's writer: while too much waits there (a
        // disk slower than the master's stream), the master is not read, so TCP holds it back
        // instead of this process's memory growing.
        let room = store.end().0.saturating_sub(store.durable().0) <= MAX_UNWRITTEN;
        tokio::select! {
            // Cancel-safe: what a dropped `next` read stays in the reader's buffer.
            message = reader.next(), if room => {
                let message = match message {
                    Ok(None) => return Ok(exit(ExitCause::Closed, caught_up, store)),
                    Err(e) => return Err(e),
                    Ok(Some(message)) => message,
                };
                last_heard = Instant::now();
                match message {
                    Kind::Records(r) => {
                        let expected = store.end().0 + pending.len() as u64;
                        if r.position != expected {
                            return Err(ReplicationError::Protocol(format!(
                                "records at {} do not continue the stream at {expected}",
                                r.position
                            )));
                        }
                        within_reach(expected + r.frames.len() as u64, "records' end")?;
                        pending.extend_from_slice(&r.frames);
                        let (len, epochs) = whole_frames(&pending)?;
                        if len == 0 {
                            continue;
                        }
                        let mut at = store.end();
                        for epoch in &epochs {
                            if *epoch > options.expected_epoch || *epoch < last_epoch {
                                return Err(ReplicationError::Protocol(format!(
                                    "a record near {at} has epoch {epoch}; this slave follows \
                                     the master of epoch {} and its log is at epoch {last_epoch}",
                                    options.expected_epoch
                                )));
                            }
                            last_epoch = *epoch;
                        }
                        let frames = pending.split_to(len).freeze();
                        store.set_confirmed(Position(r.confirmed));
                        store.append_frames(at, frames)?;
                        at = store.end();
                        records += epochs.len() as u64;
                        bytes += len as u64;
                        debug!(end = %at, "appended records from the master");
                    }
                    Kind::Skip(skip) => {
                        if !pending.is_empty() || skip.from != store.end().0 || skip.to <= skip.from {
                            return Err(ReplicationError::Protocol(format!(
                                "skip {}..{} does not continue the stream at {}",
                                skip.from,
                                skip.to,
                                store.end().0 + pending.len() as u64
                            )));
                        }
                        within_reach(skip.to, "skip target")?;
                        debug!(from = skip.from, to = skip.to, "skipping a range the master released");
                        store.skip_to(Position(skip.to))?;
                    }
                    Kind::Heartbeat(heartbeat) => {
                        store.set_confirmed(Position(heartbeat.confirmed));
                        store.release_confirmed();
                    }
                    _ => {
                        return Err(ReplicationError::Protocol(
                            "the master sent a message a slave does not expect".into(),
                        ))
                    }
                }
            }
            changed = held.changed() => {
                if changed.is_err() {
                    return Err(ReplicationError::Store(crate::store::StoreError::JournalFailed(
                        "the store's durable reports stopped".into(),
                    )));
                }
                let position = (*held.borrow_and_update()).min(store.durable());
                if position > acked && position > ack_floor {
                    acked = position;
                    write_message(&mut writer, Kind::Ack(wire::Ack { position: acked.0 })).await?;
                }
            }
            _ = tick.tick() => {
                // Part of a large message (a big record, over a slow link) counts as heard too:
                // it may take longer than the timeout to arrive whole.
                // A failed journal writes nothing more: waiting for room would be for ever.
                if let Some(reason) = store.failure() {
                    return Err(ReplicationError::Store(
                        crate::store::StoreError::JournalFailed(reason),
                    ));
                }
                // Not reading by choice (see `room`) is no silence of the master's either.
                if reader.received() != last_received || !room {
                    last_received = reader.received();
                    last_heard = Instant::now();
                }
                if last_heard.elapsed() > PEER_TIMEOUT {
                    error!(master = %options.master, "the master was silent for {PEER_TIMEOUT:?}");
                    return Ok(exit(ExitCause::TimedOut, caught_up, store));
                }
                // Repeated as a heartbeat.
                write_message(&mut writer, Kind::Ack(wire::Ack { position: acked.0 })).await?;
            }
        }
    }
}

/// Bytes appended but not yet written (and synced) by the journal past which a slave stops
/// reading the master's stream until its disk catches up.
const MAX_UNWRITTEN: u64 = 64 << 20;

/// Runs a store operation that can take seconds (resetting or cutting a copy of gigabytes)
/// while telling the master this slave is alive: an `Ack` of 0 (which acknowledges nothing)
/// every [`HEARTBEAT_INTERVAL`], so the master's usual [`PEER_TIMEOUT`] still holds and a
/// link cut meanwhile is noticed as soon as any other.
///
/// On a multi-threaded runtime the operation runs on a thread of its own while this one (moved
/// off the runtime's shared workers with `block_in_place`, so ZooKeeper's session and the
/// other tasks carry on) writes the heartbeats; elsewhere it simply runs. A failed heartbeat
/// write is returned once the operation has finished, never in the middle of it.
pub(super) fn preparing<T: Send>(
    writer: &mut OwnedWriteHalf,
    operation: impl FnOnce() -> T + Send,
) -> Result<T, ReplicationError> {
    use std::sync::mpsc::{channel, RecvTimeoutError};
    use tokio::runtime::{Handle, RuntimeFlavor};
    let handle = match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => handle,
        _ => return Ok(operation()),
    };
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let (done, finished) = channel();
            scope.spawn(move || {
                let _ = done.send(operation());
            });
            let mut failed = None;
            loop {
                match finished.recv_timeout(HEARTBEAT_INTERVAL) {
                    Ok(value) => return failed.map_or(Ok(value), Err),
                    Err(RecvTimeoutError::Timeout) if failed.is_none() => {
                        let beat = Kind::Ack(wire::Ack { position: 0 });
                        failed = handle.block_on(write_message(writer, beat)).err();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        // The operation panicked; the scope re-raises it when it ends.
                        return Err(ReplicationError::Protocol(
                            "the store operation did not finish".into(),
                        ));
                    }
                }
            }
        })
    })
}

/// The furthest position a master may send a slave to: far beyond any real journal (4 EiB),
/// and far enough from `u64::MAX` that the store's arithmetic on positions never overflows.
/// A position past it is a master's bug (or not a master), refused before the store sees it.
const MAX_POSITION: u64 = 1 << 62;

/// `position`, or a protocol error naming `what` when it is past [`MAX_POSITION`].
fn within_reach(position: u64, what: &str) -> Result<u64, ReplicationError> {
    if position > MAX_POSITION {
        return Err(ReplicationError::Protocol(format!(
            "the master sent a {what} of {position}, past any journal's reach ({MAX_POSITION})"
        )));
    }
    Ok(position)
}
