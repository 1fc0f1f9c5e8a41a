//! Master and slaves in one process, real stores in temporary directories, loopback TCP.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::*;
use crate::election::Lease;
use crate::store::{
    entry, Entry, EpochStart, JournalReader, Message, MessageAdd, MessageKey, MessageRemove,
    Position, Record, Store, StoreError, StoreOptions,
};

const TOKEN: &str = "secret";

struct Node {
    store: Store,
    durable: watch::Receiver<Position>,
}

fn open(dir: &Path, log_size: u64) -> Node {
    open_seeded(dir, log_size, true)
}

/// Opens a store; `seed`: its durable watch starts at the recovered end (else at 0, as a
/// node's watch is until the store's first write).
fn open_seeded(dir: &Path, log_size: u64, seed: bool) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    let (tx, durable) = watch::channel(Position(0));
    let tx = Arc::new(tx);
    let callback = tx.clone();
    let (store, recovered) = Store::open(
        StoreOptions {
            directory: dir.to_path_buf(),
            log_size,
            fsync: false,
            only_copy: false,
            hold_releases: false,
            recovered_bodies: u64::MAX,
        },
        Box::new(move |p| {
            callback.send_replace(p);
        }),
    )
    .unwrap();
    if seed {
        tx.send_replace(recovered.end);
    }
    Node { store, durable }
}

fn epoch_start(epoch: u64) -> Record {
    Record {
        epoch,
        entries: vec![Entry {
            kind: Some(entry::Kind::EpochStart(EpochStart {
                epoch,
                node: format!("node-{epoch}"),
            })),
        }],
    }
}

fn add(epoch: u64, n: u64, body: usize) -> Record {
    Record {
        epoch,
        entries: vec![Entry {
            kind: Some(entry::Kind::Add(MessageAdd {
                queues: vec!["queue://q".into()],
                message: Some(Message {
                    message_id: format!("m-{epoch}-{n}"),
                    body: Bytes::from(vec![n as u8; body]),
                    ..Message::default()
                }),
            })),
        }],
    }
}

fn remove(epoch: u64, position: Position) -> Record {
    Record {
        epoch,
        entries: vec![Entry {
            kind: Some(entry::Kind::Remove(MessageRemove {
                queue: "queue://q".into(),
                key: MessageKey::new(position, 0).0,
            })),
        }],
    }
}

/// Appends `count` adds; returns their positions.
fn append_adds(store: &mut Store, epoch: u64, from: u64, count: u64, body: usize) -> Vec<Position> {
    (from..from + count)
        .map(|n| store.append(&add(epoch, n, body)).unwrap())
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every retained frame from the oldest retained position, skipping released ranges.
fn retained_frames(reader: &JournalReader, end: Position) -> Vec<(Position, Bytes)> {
    let mut out = Vec::new();
    let mut at = reader.oldest();
    while at < end {
        let mut next = None;
        for item in reader.frames(at, end) {
            match item {
                Ok((position, frame)) => {
                    out.push((position, frame));
                }
                Err(StoreError::NotRetained { position, .. }) => {
                    let (_, to) = reader
                        .released_ranges()
                        .into_iter()
                        .find(|&(from, to)| from <= position && position < to)
                        .expect("a released range");
                    next = Some(to);
                    break;
                }
                Err(e) => panic!("reading the journal: {e}"),
            }
        }
        match next {
            Some(to) => at = to,
            None => break,
        }
    }
    out
}

struct Master {
    node: Node,
    replication: ReplicationMaster,
    confirmed: watch::Receiver<Position>,
    address: String,
}

async fn start_master(node: Node, epoch: u64, replicas: usize) -> Master {
    start_master_leased(node, epoch, replicas, None).await
}

/// Like `start_master`, under the election's `lease`.
async fn start_master_leased(
    mut node: Node,
    epoch: u64,
    replicas: usize,
    lease: Option<watch::Receiver<Option<Lease>>>,
) -> Master {
    if node.store.last_epoch() < epoch || node.store.history().is_empty() {
        node.store.append(&epoch_start(epoch)).unwrap();
    }
    let (replication, confirmed) = ReplicationMaster::start(
        MasterOptions {
            bind: "127.0.0.1:0".into(),
            security_token: TOKEN.into(),
            replicas,
            epoch,
            epoch_floor: Position(0),
            lease,
        },
        node.store.reader(),
        node.store.history(),
        node.store.written_watch(),
        *node.durable.borrow(),
    )
    .await
    .unwrap();
    // The store's durable reports reach the master as a node's durable hook would pass them.
    let held_locally = replication.held_locally();
    let mut durable = node.durable.clone();
    tokio::spawn(async move {
        while durable.changed().await.is_ok() {
            let position = *durable.borrow_and_update();
            held_locally(position);
        }
    });
    let address = format!("tcp://{}", replication.local_addr());
    Master {
        node,
        replication,
        confirmed,
        address,
    }
}

type SlaveResult = Option<Result<SlaveExit, ReplicationError>>;

struct RunningSlave {
    stop: oneshot::Sender<()>,
    task: JoinHandle<(Node, SlaveResult)>,
}

fn spawn_slave(node: Node, master: &str, name: &str, token: &str, epoch: u64) -> RunningSlave {
    let connection = ConnectionId::new_incarnation().next_attempt();
    spawn_slave_as(node, master, name, token, epoch, connection)
}

/// Like `spawn_slave`, its login carrying `connection`.
fn spawn_slave_as(
    mut node: Node,
    master: &str,
    name: &str,
    token: &str,
    epoch: u64,
    connection: ConnectionId,
) -> RunningSlave {
    let options = SlaveOptions {
        master: master.to_string(),
        node: name.to_string(),
        security_token: token.to_string(),
        expected_epoch: epoch,
        connection,
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let held = node.durable.clone();
        let result = tokio::select! {
            r = run_slave(options, &mut node.store, held) => Some(r),
            _ = stopped => None,
        };
        (node, result)
    });
    RunningSlave { stop, task }
}

/// Like `spawn_slave`, but reconnects after the connection ends, as a slave node does (its
/// snapshot's start may be released by the master's GC between login and streaming).
fn spawn_slave_retrying(
    mut node: Node,
    master: &str,
    name: &str,
    token: &str,
    epoch: u64,
) -> RunningSlave {
    let options = SlaveOptions {
        master: master.to_string(),
        node: name.to_string(),
        security_token: token.to_string(),
        expected_epoch: epoch,
        connection: ConnectionId::new_incarnation().next_attempt(),
    };
    let (stop, mut stopped) = oneshot::channel();
    let mut connections = ConnectionId::new_incarnation();
    let task = tokio::spawn(async move {
        loop {
            let held = node.durable.clone();
            let options = SlaveOptions {
                connection: connections.next_attempt(),
                ..options.clone()
            };
            let result = tokio::select! {
                r = run_slave(options, &mut node.store, held) => r,
                _ = &mut stopped => return (node, None),
            };
            eprintln!(
                "slave connection ended ({:?}); reconnecting",
                result.as_ref().err()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    RunningSlave { stop, task }
}

impl RunningSlave {
    async fn stop(self) -> (Node, SlaveResult) {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// The login of slave "a", holding nothing, to the master of `epoch`, as a raw peer sends it.
fn empty_login(epoch: u64, connection: ConnectionId) -> wire::Login {
    wire::Login {
        node: "a".into(),
        security_token: TOKEN.into(),
        expected_epoch: epoch,
        last_epoch: 0,
        end: 0,
        history: Vec::new(),
        incarnation: connection.incarnation,
        attempt: connection.attempt,
    }
}

fn acked(master: &Master, name: &str) -> Option<SlaveStatus> {
    master
        .replication
        .slaves()
        .into_iter()
        .find(|s| s.node == name)
}

async fn wait_acked(master: &Master, name: &str, end: Position) -> SlaveStatus {
    wait_for(&format!("{name} to ack {end}"), || {
        acked(master, name).is_some_and(|s| s.acked >= end)
    })
    .await;
    acked(master, name).unwrap()
}

/// The slave's journal holds exactly the master's frames at the same positions, from `from`.
fn assert_identical(master: &Store, slave: &Store, from: Position) {
    let end = master.end();
    assert_eq!(slave.end(), end, "journal ends");
    let master_frames: Vec<_> = retained_frames(&master.reader(), end)
        .into_iter()
        .filter(|(p, _)| *p >= from)
        .collect();
    let slave_frames = retained_frames(&slave.reader(), end);
    let slave_map: std::collections::HashMap<Position, Bytes> =
        slave_frames.iter().cloned().collect();
    let master_map: std::collections::HashMap<Position, Bytes> =
        retained_frames(&master.reader(), end).into_iter().collect();
    assert!(!master_frames.is_empty());
    for (position, frame) in &master_frames {
        assert_eq!(slave_map.get(position), Some(frame), "frame at {position}");
    }
    for (position, frame) in &slave_frames {
        if let Some(theirs) = master_map.get(position) {
            assert_eq!(theirs, frame, "frame at {position}");
        }
    }
    assert_eq!(
        slave.stats().live_messages,
        master.stats().live_messages,
        "live messages"
    );
    let (ours, theirs) = (slave.history(), master.history());
    assert_eq!(slave.last_epoch(), master.last_epoch());
    // The slave notes an epoch where its first record of it is: past the master's mark when
    // a snapshot skipped the master's first records of that epoch (released), else the same.
    for mark in ours.iter().skip(1) {
        assert!(
            theirs
                .iter()
                .any(|m| m.epoch == mark.epoch && m.start <= mark.start),
            "{mark:?} is not in the master's history {theirs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slaves_copy_the_journal_byte_for_byte_and_confirm_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 1, 3).await;
    let positions = append_adds(&mut master.node.store, 1, 0, 200, 100);
    for p in &positions[..50] {
        master.node.store.append(&remove(1, *p)).unwrap();
    }
    let a = spawn_slave(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    let b = spawn_slave(
        open(dirs[2].path(), 1 << 20),
        &master.address,
        "b",
        TOKEN,
        1,
    );
    // More records while the slaves stream.
    append_adds(&mut master.node.store, 1, 200, 300, 50);
    let end = master.node.store.end();
    let status_a = wait_acked(&master, "a", end).await;
    let status_b = wait_acked(&master, "b", end).await;
    assert!(!status_a.snapshot && !status_b.snapshot);
    assert_eq!(status_a.stream_start, Position(0));
    let mut confirmed = master.confirmed.clone();
    wait_for("the confirmed watermark", || {
        *confirmed.borrow_and_update() >= end
    })
    .await;
    assert_eq!(master.replication.connected_slaves(), 2);
    assert_eq!(master.replication.confirmed(), end);

    let (a, result) = a.stop().await;
    assert!(result.is_none(), "still following: {result:?}");
    let (b, _) = b.stop().await;
    assert_identical(&master.node.store, &a.store, Position(0));
    assert_identical(&master.node.store, &b.store, Position(0));
    assert_eq!(a.store.history(), master.node.store.history());
    wait_for("slaves to be gone", || {
        master.replication.connected_slaves() == 0
    })
    .await;

    // What the slave's index holds survives a reopen and equals the master's.
    drop(a);
    let (mut m_node, m_dir) = (master.node, dirs[0].path());
    drop(master.replication);
    m_node.store.append(&add(1, 9999, 1)).ok();
    drop(m_node);
    let _ = m_dir;
    let reopened = open(dirs[1].path(), 1 << 20);
    assert_eq!(reopened.store.stats().live_messages, 450);
    assert!(!reopened.store.stats().index_rebuilt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_slave_catches_up_incrementally() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 64 << 10), 1, 2).await;
    append_adds(&mut master.node.store, 1, 0, 100, 100);
    let slave = spawn_slave(
        open(dirs[1].path(), 64 << 10),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    let end = master.node.store.end();
    wait_acked(&master, "a", end).await;
    let (node, _) = slave.stop().await;
    wait_for("the slave to be gone", || {
        master.replication.connected_slaves() == 0
    })
    .await;

    // The master goes on without it; the slave comes back and gets only what it lacks.
    append_adds(&mut master.node.store, 1, 100, 500, 100);
    let end2 = master.node.store.end();
    let confirmed_before = *master.confirmed.borrow();
    assert!(confirmed_before <= end, "nothing confirmed without a slave");
    let slave = spawn_slave(node, &master.address, "a", TOKEN, 1);
    let status = wait_acked(&master, "a", end2).await;
    assert!(!status.snapshot, "incremental, not a snapshot");
    assert_eq!(status.stream_start, end);
    let (node, _) = slave.stop().await;
    assert_identical(&master.node.store, &node.store, Position(0));
}

/// A slave whose journal recovery cut records after a corrupt frame is marked damaged (it
/// may lack confirmed records); once it has caught up with a master again, durably, the mark
/// goes, and it may be elected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_slave_is_whole_again_once_caught_up() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 1, 2).await;
    append_adds(&mut master.node.store, 1, 0, 200, 64 << 10);
    let slave = spawn_slave(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    let end = master.node.store.end();
    wait_acked(&master, "a", end).await;
    let (node, _) = slave.stop().await;
    drop(node);

    // A byte flipped in its first segment: 12 MiB of records after it are cut, and marked.
    let first = dirs[1]
        .path()
        .join(crate::store::journal::segment_file_name(Position(0)));
    let mut bytes = std::fs::read(&first).expect("the slave's first segment");
    bytes[crate::store::record::FRAME_HEADER_LEN + 5] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();
    let node = open(dirs[1].path(), 1 << 20);
    assert!(
        node.store.end() < Position(1 << 20),
        "cut at the corrupt frame"
    );
    assert!(node.store.damage().is_some(), "marked damaged");
    let mut damage = node.store.damage_watch();

    let slave = spawn_slave(node, &master.address, "a", TOKEN, 1);
    wait_acked(&master, "a", end).await;
    tokio::time::timeout(Duration::from_secs(30), damage.wait_for(|damaged| !damaged))
        .await
        .expect("the mark goes once the slave has caught up")
        .unwrap();
    let (node, _) = slave.stop().await;
    assert_eq!(node.store.damage(), None);
    assert_identical(&master.node.store, &node.store, Position(0));
    drop(node);
    let node = open(dirs[1].path(), 1 << 20);
    assert_eq!(node.store.damage(), None, "gone for good");
}

/// A slave that wrote the master's last records but lost its connection (here: was restarted)
/// before its ack was counted logs in again with nothing to receive: its ack at login confirms
/// those records,
/// without waiting for a record that may never come (a client whose window is full).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_that_logs_in_holding_everything_acks_at_once() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 1, 2).await;
    append_adds(&mut master.node.store, 1, 0, 10, 100);
    let slave = spawn_slave(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    let first = master.node.store.end();
    wait_acked(&master, "a", first).await;
    let (mut node, _) = slave.stop().await;
    wait_for("the slave to be gone", || {
        master.replication.connected_slaves() == 0
    })
    .await;

    // More records, which the slave gets (as if streamed) while the master counts no ack.
    append_adds(&mut master.node.store, 1, 10, 20, 100);
    let end = master.node.store.end();
    let reader = master.node.store.reader();
    wait_for("the master to write its records", || {
        reader.written() >= end
    })
    .await;
    let mut frames = Vec::new();
    for (position, frame) in retained_frames(&reader, end) {
        if position >= first {
            frames.extend_from_slice(&frame);
        }
    }
    node.store
        .append_frames(first, Bytes::from(frames))
        .unwrap();
    assert_eq!(node.store.end(), end);
    assert!(
        *master.confirmed.borrow() < end,
        "nothing confirmed without a slave"
    );
    // Restarted, as a killed slave is: the reopened store has reported nothing yet.
    drop(node);
    let node = open_seeded(dirs[1].path(), 1 << 20, false);
    assert_eq!(node.store.end(), end);

    let slave = spawn_slave(node, &master.address, "a", TOKEN, 1);
    let mut confirmed = master.confirmed.clone();
    wait_for(
        "the records the slave already holds to be confirmed",
        || *confirmed.borrow_and_update() >= end,
    )
    .await;
    let status = acked(&master, "a").expect("the slave is connected");
    assert_eq!(status.stream_start, end, "nothing left to stream");
    slave.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_behind_the_oldest_segment_gets_a_snapshot() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let log_size = 4096;
    let mut master = start_master(open(dirs[0].path(), log_size), 1, 2).await;
    // The slave holds an early part of the journal.
    let first = append_adds(&mut master.node.store, 1, 0, 10, 100);
    let slave = spawn_slave(
        open(dirs[1].path(), log_size),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    let end = master.node.store.end();
    wait_acked(&master, "a", end).await;
    let (node, _) = slave.stop().await;
    wait_for("the slave to be gone", || {
        master.replication.connected_slaves() == 0
    })
    .await;

    // Then the master consumes everything and moves on: the early segments are released.
    let mut live = first;
    for n in 10..400u64 {
        let p = master.node.store.append(&add(1, n, 100)).unwrap();
        live.push(p);
        if n % 3 != 0 {
            let p = live.pop().unwrap();
            master.node.store.append(&remove(1, p)).unwrap();
        }
    }
    let early: Vec<Position> = live.drain(..live.len() / 2).collect();
    for p in early {
        master.node.store.append(&remove(1, p)).unwrap();
    }
    append_adds(&mut master.node.store, 1, 1000, 50, 100);
    let master_end = master.node.store.end();
    wait_for("segments to be released", || {
        master.node.store.reader().oldest() > end
    })
    .await;
    let oldest = master.node.store.reader().oldest();
    assert!(
        oldest > node.store.end(),
        "the slave is behind the oldest segment"
    );

    let released = master.node.store.reader().released_ranges();
    eprintln!("released ranges after the oldest: {released:?}");
    let slave = spawn_slave_retrying(node, &master.address, "a", TOKEN, 1);
    let status = wait_acked(&master, "a", master_end).await;
    assert!(status.snapshot, "a snapshot");
    assert!(status.stream_start >= oldest);
    let (node, _) = slave.stop().await;
    assert!(node.store.oldest() >= status.stream_start);
    assert_identical(&master.node.store, &node.store, status.stream_start);

    // The slave's rebuilt state survives a reopen.
    let live = node.store.stats().live_messages;
    drop(node);
    let reopened = open(dirs[1].path(), log_size);
    assert_eq!(reopened.store.stats().live_messages, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_token_or_epoch_is_refused() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 2, 2).await;
    append_adds(&mut master.node.store, 2, 0, 10, 10);
    let slave = spawn_slave(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        "wrong",
        2,
    );
    let (node, result) = slave.task.await.unwrap();
    drop(slave.stop);
    match result {
        Some(Err(ReplicationError::Refused(reason))) => assert!(reason.contains("token")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(node.store.end(), Position(0), "nothing received");

    // A slave told about another epoch's master is refused too.
    let slave = spawn_slave(node, &master.address, "a", TOKEN, 3);
    let (node, result) = slave.task.await.unwrap();
    assert!(
        matches!(result, Some(Err(ReplicationError::Refused(_)))),
        "{result:?}"
    );

    // A slave that has seen a newer epoch than it is told to follow does not even connect.
    let mut node = node;
    node.store.append(&epoch_start(5)).unwrap();
    let slave = spawn_slave(node, &master.address, "a", TOKEN, 2);
    let (_, result) = slave.task.await.unwrap();
    assert!(
        matches!(
            result,
            Some(Err(ReplicationError::StaleEpoch { master: 2, seen: 5 }))
        ),
        "{result:?}"
    );
    assert_eq!(master.replication.connected_slaves(), 0);
}

/// Whatever else connects to the replication port (a port scanner, an HTTP probe, a STOMP
/// client given the wrong port, a half-written or oversized message, silence) is closed by
/// the master within its login timeout, and a real slave logging in meanwhile follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_on_the_replication_port_are_closed_and_a_slave_still_follows() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 2, 2).await;
    append_adds(&mut master.node.store, 2, 0, 10, 10);
    let end = master.node.store.end();
    let address = master.address.trim_start_matches("tcp://").to_string();
    let mut half_written = 1000u32.to_le_bytes().to_vec();
    half_written.extend_from_slice(b"only ten b");
    let strangers: Vec<(&str, Vec<u8>)> = vec![
        (
            "an HTTP probe",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a STOMP client",
            b"CONNECT\naccept-version:1.2\n\n\0".to_vec(),
        ),
        ("an oversized message", u32::MAX.to_le_bytes().to_vec()),
        ("a half-written message", half_written),
        ("garbage", (0..=255u8).rev().cycle().take(3000).collect()),
        ("silence", Vec::new()),
    ];
    let mut sockets = Vec::new();
    for (what, bytes) in strangers {
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        socket.write_all(&bytes).await.unwrap();
        sockets.push((what, socket));
    }
    let slave = spawn_slave(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        TOKEN,
        2,
    );
    wait_acked(&master, "a", end).await;
    for (what, mut socket) in sockets {
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(PEER_TIMEOUT * 2, async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a refusal, say; the close must follow
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{what}: still open after {:?}",
            PEER_TIMEOUT * 2
        );
    }
    assert_eq!(master.replication.connected_slaves(), 1);
    let (node, _) = slave.stop().await;
    assert_identical(&master.node.store, &node.store, Position(0));
}

/// After a partition heals, a login the slave sent on a connection it has since given up on
/// can reach the master after the slave's live connection. The master closes that stale
/// connection and keeps the live one (which it would otherwise have replaced, dropping the
/// slave for a reconnect); a newer connection of the slave still replaces the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_login_of_a_slave_leaves_its_live_connection_alone() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 2, 2).await;
    append_adds(&mut master.node.store, 2, 0, 10, 10);
    let mut ids = ConnectionId::new_incarnation();
    let stale = ids.next_attempt();
    let live = ids.next_attempt();
    let slave = spawn_slave_as(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        TOKEN,
        2,
        live,
    );
    let end = master.node.store.end();
    let before = wait_acked(&master, "a", end).await;

    // The late login: same node and process, an earlier attempt.
    let (mut reader, _writer) = raw_login(&master, 2, stale).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match reader.next().await {
                Ok(Some(Kind::Records(_))) => panic!("the stale connection is streamed to"),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the master kept the stale connection open");
    let after = acked(&master, "a").expect("the slave is still connected");
    assert_eq!(
        (after.connected_since, after.address),
        (before.connected_since, before.address),
        "the live connection was replaced"
    );
    assert!(!slave.task.is_finished(), "the live slave was dropped");
    append_adds(&mut master.node.store, 2, 10, 5, 10);
    let end = master.node.store.end();
    wait_acked(&master, "a", end).await;

    // A newer connection of the same process replaces the live one, as before.
    let _newer = raw_login(&master, 2, ids.next_attempt()).await;
    wait_for("the newer connection replaced the live one", || {
        acked(&master, "a").is_some_and(|s| s.address != before.address)
    })
    .await;
    let _ = slave.stop().await;
}

/// A slave's first ack after its login may come long after it: it cuts or resets its store
/// first, which takes seconds for a copy of gigabytes (5.2 s for 860 MB in a soak). It sends
/// heartbeats meanwhile, so the master keeps it although the work outlasts the peer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_slow_to_prepare_its_store_is_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = start_master(open(dir.path(), 1 << 20), 1, 2).await;
    append_adds(&mut master.node.store, 1, 0, 10, 100);
    let end = master.node.store.end();
    let (mut reader, mut writer) =
        raw_login(&master, 1, ConnectionId::new_incarnation().next_attempt()).await;
    // What the master sends is read meanwhile, so that its writes never wait on this slave.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = reader.next().await {} });
    // The store reset, as the slave runs it: longer than the peer timeout.
    slave::preparing(&mut writer, || {
        std::thread::sleep(PEER_TIMEOUT + Duration::from_secs(1))
    })
    .unwrap();
    write_message(&mut writer, Kind::Ack(wire::Ack { position: end.0 }))
        .await
        .unwrap();
    let status = wait_acked(&master, "a", end).await;
    assert_eq!(status.acked, end);
    assert!(!drain.is_finished(), "the master closed the connection");
    drain.abort();
}

/// A slave that logs in and then falls silent (its link cut before its first ack) is dropped
/// after the usual peer timeout, so the master reports its quorum lost in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_silent_after_its_login_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(open(dir.path(), 1 << 20), 1, 2).await;
    let (mut reader, _writer) =
        raw_login(&master, 1, ConnectionId::new_incarnation().next_attempt()).await;
    let closed = tokio::time::timeout(PEER_TIMEOUT * 2, async {
        while let Ok(Some(_)) = reader.next().await {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent slave was still connected after {:?}",
        PEER_TIMEOUT * 2
    );
    assert_eq!(master.replication.connected_slaves(), 0);
}

/// Logs in to `master` as slave "a" of `epoch` with an empty store, as `connection`, over a
/// raw connection.
async fn raw_login(
    master: &Master,
    epoch: u64,
    connection: ConnectionId,
) -> (
    MessageReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let address = socket_address(&master.address).unwrap();
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    write_message(&mut writer, Kind::Login(empty_login(epoch, connection)))
        .await
        .unwrap();
    (MessageReader::new(reader), writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_divergent_tail_is_truncated_to_the_shared_prefix() {
    let base = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // A common history under epoch 1.
    {
        let mut node = open(base.path(), 1 << 20);
        node.store.append(&epoch_start(1)).unwrap();
        append_adds(&mut node.store, 1, 0, 50, 100);
        node.store.close().unwrap();
    }
    for dir in &dirs {
        for entry in std::fs::read_dir(base.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "journal.lock" {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
    }
    // The slave followed a master of epoch 2 that the new master (epoch 3) never heard of.
    let mut slave_node = open(dirs[1].path(), 1 << 20);
    let shared_end = slave_node.store.end();
    slave_node.store.append(&epoch_start(2)).unwrap();
    append_adds(&mut slave_node.store, 2, 0, 30, 200);
    assert!(slave_node.store.end() > shared_end);

    let mut master = start_master(open(dirs[0].path(), 1 << 20), 3, 2).await;
    assert_eq!(master.node.store.history()[1].start, shared_end);
    append_adds(&mut master.node.store, 3, 0, 20, 50);
    let end = master.node.store.end();
    let slave = spawn_slave(slave_node, &master.address, "a", TOKEN, 3);
    let status = wait_acked(&master, "a", end).await;
    assert!(!status.snapshot);
    assert_eq!(
        status.stream_start, shared_end,
        "truncated to the shared prefix"
    );
    let (node, _) = slave.stop().await;
    assert_identical(&master.node.store, &node.store, Position(0));
    assert_eq!(node.store.history(), master.node.store.history());
    assert_eq!(node.store.last_epoch(), 3);
    assert_eq!(node.store.stats().live_messages, 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_records_stream_pipelined() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut master = start_master(open(dirs[0].path(), 1 << 20), 1, 2).await;
    let slave = spawn_slave(
        open(dirs[1].path(), 1 << 20),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    wait_for("the slave to connect", || {
        master.replication.connected_slaves() == 1
    })
    .await;
    let started = Instant::now();
    append_adds(&mut master.node.store, 1, 0, 10_000, 32);
    let end = master.node.store.end();
    let mut confirmed = master.confirmed.clone();
    wait_for("10k records confirmed", || {
        *confirmed.borrow_and_update() >= end
    })
    .await;
    eprintln!(
        "10k records replicated and confirmed in {:?}",
        started.elapsed()
    );
    let (node, _) = slave.stop().await;
    assert_identical(&master.node.store, &node.store, Position(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_replica_confirms_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = start_master(open(dir.path(), 1 << 20), 1, 1).await;
    append_adds(&mut master.node.store, 1, 0, 10, 10);
    let end = master.node.store.end();
    let mut confirmed = master.confirmed.clone();
    wait_for("confirmation", || *confirmed.borrow_and_update() >= end).await;
}

/// A master confirms nothing outside the election's lease on its epoch, even what only its own
/// fsync needs (`replicas = 1`): one resumed after a pause past its ZooKeeper session must not
/// confirm while a newer master may serve. Held back, the watermark moves as soon as the lease
/// is renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_confirms_nothing_outside_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (lease, leased) = watch::channel(None);
    let mut master = start_master_leased(open(dir.path(), 1 << 20), 1, 1, Some(leased)).await;
    let mut confirmed = master.confirmed.clone();
    let vouched = |epoch, for_| {
        Some(Lease {
            epoch,
            until: tokio::time::Instant::now() + for_,
        })
    };
    let lapses: [(&str, Option<Lease>); 3] = [
        ("no lease", None),
        (
            "a lease of another epoch",
            vouched(2, Duration::from_secs(60)),
        ),
        ("a lapsed lease", vouched(1, Duration::ZERO)),
    ];
    for (lapse, held) in lapses {
        let before = master.replication.confirmed();
        lease.send_replace(held);
        append_adds(&mut master.node.store, 1, 0, 10, 10);
        let end = master.node.store.end();
        let durable = master.node.durable.clone();
        wait_for("the master's own fsync", || *durable.borrow() >= end).await;
        // As the store's durable callback reports it (on the caller's thread, so the refusal
        // to confirm is already decided when it returns).
        master.replication.held_locally()(end);
        assert_eq!(master.replication.confirmed(), before, "{lapse}");
        assert_eq!(*confirmed.borrow_and_update(), before, "{lapse}");

        lease.send_replace(vouched(1, Duration::from_secs(60)));
        wait_for("confirmation once renewed", || {
            *confirmed.borrow_and_update() >= end
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn released_ranges_are_skipped_in_a_snapshot() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let log_size = 2048;
    let mut master = start_master(open(dirs[0].path(), log_size), 1, 2).await;
    // A message nobody consumes pins the first segment; everything after it is consumed, so
    // the segments in the middle are released and leave holes.
    append_adds(&mut master.node.store, 1, 0, 1, 100);
    for n in 1..200u64 {
        let p = master.node.store.append(&add(1, n, 100)).unwrap();
        master.node.store.append(&remove(1, p)).unwrap();
    }
    append_adds(&mut master.node.store, 1, 500, 5, 100);
    let end = master.node.store.end();
    wait_for("holes in the master's journal", || {
        !master.node.store.reader().released_ranges().is_empty()
    })
    .await;
    assert_eq!(master.node.store.reader().oldest(), Position(0));

    let slave = spawn_slave_retrying(
        open(dirs[1].path(), log_size),
        &master.address,
        "a",
        TOKEN,
        1,
    );
    let status = wait_acked(&master, "a", end).await;
    assert!(status.snapshot, "holes force a snapshot");
    let (node, _) = slave.stop().await;
    assert_identical(&master.node.store, &node.store, Position(0));
    assert_eq!(node.store.stats().live_messages, 6);

    // The slave's journal, tombstones included, recovers to the same state.
    drop(node);
    let reopened = open(dirs[1].path(), log_size);
    assert_eq!(reopened.store.end(), end);
    assert_eq!(reopened.store.stats().live_messages, 6);
    // And it can follow again incrementally afterwards.
    append_adds(&mut master.node.store, 1, 600, 5, 100);
    let end = master.node.store.end();
    let slave = spawn_slave(reopened, &master.address, "a", TOKEN, 1);
    let status = wait_acked(&master, "a", end).await;
    assert!(!status.snapshot);
    let (node, _) = slave.stop().await;
    assert_identical(&master.node.store, &node.store, Position(0));
}

/// A new master looks up where its own epoch starts in its journal, from the previous epoch's
/// start when it knows no later floor. That start can lie in a segment released since (a hole
/// after the oldest retained segment): the lookup steps over it. So a slave holding records of
/// the previous epoch that the new master never had is cut back to exactly where the new epoch
/// starts (a failed lookup took the written end for it and kept those records), and a slave
/// that already holds records of the new epoch logs in again incrementally, nothing dropped
/// (comparing where each side saw an epoch start sent such a slave a whole snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_master_finds_its_epoch_start_past_a_released_segment() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let log_size = 2048;
    let mut node = open(dirs[0].path(), log_size);
    // Epoch 1 pins the first segment; epoch 2 starts in a segment whose records are all
    // consumed, so that segment is released while the first is retained.
    node.store.append(&epoch_start(1)).unwrap();
    // Messages that stay fill the first segment to within a few bytes of `log_size`, so that
    // epoch 2's first record opens the second segment.
    let before = node.store.end();
    append_adds(&mut node.store, 1, 0, 1, 100);
    let overhead = node.store.end().0 - before.0 - 100;
    let mut n = 1;
    while node.store.end().0 + overhead + 100 <= log_size {
        append_adds(&mut node.store, 1, n, 1, 100);
        n += 1;
    }
    let fill = (log_size - node.store.end().0).saturating_sub(overhead + 5);
    if fill > 0 {
        append_adds(&mut node.store, 1, n, 1, fill as usize);
    }
    node.store.append(&epoch_start(2)).unwrap();
    for n in 1..200u64 {
        let p = node.store.append(&add(2, n, 100)).unwrap();
        node.store.append(&remove(2, p)).unwrap();
    }
    append_adds(&mut node.store, 2, 500, 5, 100);

    // The slave copies all of it from the master of epoch 2.
    let master = start_master(node, 2, 2).await;
    let end = master.node.store.end();
    let slave = spawn_slave_retrying(
        open(dirs[1].path(), log_size),
        &master.address,
        "a",
        TOKEN,
        2,
    );
    wait_acked(&master, "a", end).await;
    let (mut slave_node, _) = slave.stop().await;
    // Records the master of epoch 2 wrote after that, which the next master never had.
    append_adds(&mut slave_node.store, 2, 900, 2, 100);
    let Master {
        mut node,
        mut replication,
        ..
    } = master;
    replication.stop();
    drop(replication);
    let epoch_2 = node.store.history()[1];
    assert_eq!(epoch_2.epoch, 2);
    // The node becomes master of epoch 3: its listener starts before the core appends the
    // epoch's first record, as a node's does.
    let history = node.store.history();
    let epoch_3 = node.store.end();
    let (replication, confirmed) = ReplicationMaster::start(
        MasterOptions {
            bind: "127.0.0.1:0".into(),
            security_token: TOKEN.into(),
            replicas: 2,
            epoch: 3,
            // Not known: the lookup starts at epoch 2's start, which is released below.
            epoch_floor: Position(0),
            lease: None,
        },
        node.store.reader(),
        history,
        node.store.written_watch(),
        *node.durable.borrow(),
    )
    .await
    .unwrap();
    node.store.append(&epoch_start(3)).unwrap();
    for n in 700..720u64 {
        let p = node.store.append(&add(3, n, 100)).unwrap();
        node.store.append(&remove(3, p)).unwrap();
    }
    append_adds(&mut node.store, 3, 720, 5, 100);
    // Epoch 2's first segment goes once a newer epoch has started.
    wait_for("the start of epoch 2 to be released", || {
        node.store
            .reader()
            .released_ranges()
            .iter()
            .any(|&(from, to)| from <= epoch_2.start && epoch_2.start < to)
    })
    .await;
    let held_locally = replication.held_locally();
    held_locally(node.store.end());
    let mut master = Master {
        address: format!("tcp://{}", replication.local_addr()),
        node,
        replication,
        confirmed,
    };

    // The slave is cut back to where epoch 3 starts and receives its records; it goes away
    // and comes back.
    let end = master.node.store.end();
    let slave = spawn_slave(slave_node, &master.address, "a", TOKEN, 3);
    let status = wait_acked(&master, "a", end).await;
    assert_eq!(status.stream_start, epoch_3, "cut where epoch 3 starts");
    let (slave_node, _) = slave.stop().await;
    assert_identical(&master.node.store, &slave_node.store, epoch_3);
    wait_for("the slave to be gone", || {
        master.replication.connected_slaves() == 0
    })
    .await;
    assert_eq!(slave_node.store.end(), end);
    append_adds(&mut master.node.store, 3, 800, 5, 100);
    let new_end = master.node.store.end();
    let slave = spawn_slave(slave_node, &master.address, "a", TOKEN, 3);
    let status = wait_acked(&master, "a", new_end).await;
    assert!(!status.snapshot, "incremental, not a snapshot");
    assert_eq!(
        status.stream_start, end,
        "the slave's records of epoch 3 are kept, not cut and sent again"
    );
    let (slave_node, _) = slave.stop().await;
    assert_identical(&master.node.store, &slave_node.store, epoch_3);
}

/// A slave cut back to the shared prefix (or reset for a snapshot) and elected before it
/// writes anything hands its durable end to the new master's quorum count: the cut records
/// must not count (the journal reports the lower end through its durable callback). One
/// replica here, so that the master's own count is what is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_journal_is_not_counted_past_its_end_by_a_new_master() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), 1 << 20);
    node.store.append(&epoch_start(1)).unwrap();
    append_adds(&mut node.store, 1, 0, 10, 100);
    let shared = node.store.end();
    append_adds(&mut node.store, 1, 10, 40, 100);
    let old_end = node.store.end();
    let durable = node.durable.clone();
    wait_for("the tail to be durable", || *durable.borrow() >= old_end).await;
    node.store.truncate(shared).unwrap();
    let (replication, confirmed) = ReplicationMaster::start(
        MasterOptions {
            bind: "127.0.0.1:0".into(),
            security_token: TOKEN.into(),
            replicas: 1,
            epoch: 3,
            epoch_floor: Position(0),
            lease: None,
        },
        node.store.reader(),
        node.store.history(),
        node.store.written_watch(),
        *node.durable.borrow(),
    )
    .await
    .unwrap();
    let end = node.store.end();
    let watch = *node.durable.borrow();
    let got = *confirmed.borrow();
    drop(replication);
    assert!(
        got <= end,
        "confirmed {got:?} past the journal's end {end:?} (durable watch {watch:?})"
    );
}

/// Only an earlier attempt of the same slave process is stale; a restarted process (another
/// incarnation) and a slave that sends no id (an older version) replace the live connection.
#[test]
fn only_an_earlier_attempt_of_the_same_process_is_a_stale_login() {
    let mut process = ConnectionId::new_incarnation();
    let first = process.next_attempt();
    let second = process.next_attempt();
    assert!(first.is_stale_beside(&second));
    assert!(!second.is_stale_beside(&first));
    assert!(!second.is_stale_beside(&second));
    let restarted = ConnectionId::new_incarnation().next_attempt();
    assert_ne!(restarted.incarnation, first.incarnation);
    assert!(!restarted.is_stale_beside(&second));
    let unknown = ConnectionId::default();
    assert!(!unknown.is_stale_beside(&second));
    assert!(!second.is_stale_beside(&unknown));
}

/// A login must name its node (the master reports and counts slaves by it): one that names
/// none is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_without_a_node_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(open(dir.path(), 1 << 20), 2, 2).await;
    let address = socket_address(&master.address).unwrap();
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let login = wire::Login {
        node: String::new(),
        ..empty_login(2, ConnectionId::default())
    };
    write_message(&mut writer, Kind::Login(login))
        .await
        .unwrap();
    let answer = tokio::time::timeout(PEER_TIMEOUT * 2, MessageReader::new(reader).next()).await;
    match answer {
        Ok(Ok(Some(Kind::Refused(refused)))) => {
            assert_eq!(refused.reason, "the login names no node")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(master.replication.connected_slaves(), 0);
}

/// Before a login, a peer cannot make the master hold more than a login's worth: a length
/// prefix past [`MAX_LOGIN_LEN`] is refused at once, without waiting for its bytes.
#[tokio::test]
async fn a_message_longer_than_the_limit_is_refused_before_its_bytes_arrive() {
    use tokio::io::AsyncWriteExt;
    let (mut peer, ours) = tokio::io::duplex(1 << 10);
    let mut reader = MessageReader::new(ours);
    reader.set_limit(MAX_LOGIN_LEN);
    peer.write_all(&((MAX_LOGIN_LEN as u32) + 1).to_le_bytes())
        .await
        .unwrap();
    // The connection stays open: only the limit can end this read.
    match tokio::time::timeout(PEER_TIMEOUT, reader.next()).await {
        Ok(Err(ReplicationError::Protocol(reason))) => {
            let limit = format!("exceeds the limit of {MAX_LOGIN_LEN}");
            assert!(reason.contains(&limit), "{reason}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    drop(peer);
}

/// A slave bounds what a master sends it: a snapshot start, a skip or records past any
/// journal's reach (a master's bug, or a peer posing as one) end the connection with a
/// protocol error naming it, before the store's position arithmetic could overflow; the
/// store is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slave_refuses_positions_past_any_journals_reach() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), 1 << 20);
    let far = u64::MAX - 3;
    let answers = [
        (
            "snapshot start",
            wire::Accepted {
                master_epoch: 2,
                snapshot: true,
                snapshot_start: far,
                ..Default::default()
            },
            None,
        ),
        (
            "skip target",
            wire::Accepted {
                master_epoch: 2,
                ..Default::default()
            },
            Some(Kind::Skip(wire::Skip { from: 0, to: far })),
        ),
    ];
    for (what, accepted, then) in answers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let fake_master = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut reader = MessageReader::new(reader);
            assert!(matches!(reader.next().await, Ok(Some(Kind::Login(_)))));
            write_message(&mut writer, Kind::Accepted(accepted))
                .await
                .unwrap();
            if let Some(then) = then {
                write_message(&mut writer, then).await.unwrap();
            }
            // Held open until the slave hangs up.
            while let Ok(Some(_)) = reader.next().await {}
        });
        let slave = spawn_slave(node, &address, "a", TOKEN, 2);
        let (back, result) = slave.task.await.unwrap();
        node = back;
        match result {
            Some(Err(ReplicationError::Protocol(reason))) => {
                assert!(
                    reason.contains(what) && reason.contains("past any journal"),
                    "{reason}"
                )
            }
            other => panic!("{what}: expected a protocol error, got {other:?}"),
        }
        assert_eq!(
            node.store.end(),
            Position(0),
            "{what}: the store is untouched"
        );
        fake_master.await.unwrap();
    }
}

/// Connections that never log in hold at most `LOGINS_AT_ONCE` places: the next one is closed
/// at once instead of holding a file (which the store needs) and a login buffer; once the
/// silent ones are gone, a slave logs in as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_that_never_log_in_are_bounded() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(open(dir.path(), 1 << 20), 1, 2).await;
    let address = socket_address(&master.address).unwrap();
    let mut silent = Vec::new();
    for _ in 0..super::LOGINS_AT_ONCE {
        silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    // Each is accepted in turn: one more is closed once all of them hold their places.
    let closed_at_once = async {
        loop {
            let mut extra = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(500), extra.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed_at_once)
        .await
        .expect("a connection past the bound is closed at once");
    drop(silent);
    // The master frees their places as it sees them close: a login is answered soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let connection = ConnectionId::new_incarnation().next_attempt();
        let (mut reader, _writer) = raw_login(&master, 1, connection).await;
        match tokio::time::timeout(Duration::from_secs(5), reader.next()).await {
            Ok(Ok(Some(answer))) => {
                assert!(!matches!(answer, Kind::Refused(_)), "{answer:?}");
                break;
            }
            _ => assert!(
                Instant::now() < deadline,
                "the master never answered a login after the silent connections went"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
