//! Store-level tests: recovery through the index, catch-up, rebuild, segment GC, and a model
//! of the live state checked across reopens.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn options(dir: &Path, log_size: u64, fsync: bool) -> StoreOptions {
    StoreOptions {
        directory: dir.to_path_buf(),
        log_size,
        fsync,
        only_copy: false,
        hold_releases: false,
        recovered_bodies: u64::MAX,
    }
}

fn open(dir: &Path, log_size: u64) -> (Store, Recovered, mpsc::Receiver<Position>) {
    open_with(options(dir, log_size, false))
}

fn open_with(options: StoreOptions) -> (Store, Recovered, mpsc::Receiver<Position>) {
    let (tx, rx) = mpsc::channel();
    let (store, recovered) = Store::open(
        options,
        Box::new(move |p| {
            let _ = tx.send(p);
        }),
    )
    .unwrap();
    (store, recovered, rx)
}

fn wait_durable(rx: &mpsc::Receiver<Position>, target: Position) {
    while rx
        .recv_timeout(Duration::from_secs(10))
        .expect("durable report")
        < target
    {}
}

fn message(id: &str, producer: &str, sequence: u64) -> Message {
    Message {
        message_id: id.into(),
        producer_id: producer.into(),
        producer_sequence: sequence,
        destination: "queue://q".into(),
        persistent: true,
        body: Bytes::from(format!("body of {id}")),
        headers: vec![Header::text("h", id)],
        ..Message::default()
    }
}

fn add_entry(queues: &[&str], message: Message) -> Entry {
    Entry {
        kind: Some(entry::Kind::Add(MessageAdd {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            message: Some(message),
        })),
    }
}

fn remove_entry(queue: &str, key: MessageKey) -> Entry {
    Entry {
        kind: Some(entry::Kind::Remove(MessageRemove {
            queue: queue.into(),
            key: key.0,
        })),
    }
}

fn subscription(name: &str, queue: &str) -> SubscriptionAdd {
    SubscriptionAdd {
        client_id: "client".into(),
        subscription_name: name.into(),
        topic: "topic://t".into(),
        selector: String::new(),
        queue: queue.into(),
        no_local: false,
    }
}

fn subscribe_entry(add: SubscriptionAdd) -> Entry {
    Entry {
        kind: Some(entry::Kind::Subscribe(add)),
    }
}

fn unsubscribe_entry(name: &str) -> Entry {
    Entry {
        kind: Some(entry::Kind::Unsubscribe(SubscriptionRemove {
            client_id: "client".into(),
            subscription_name: name.into(),
        })),
    }
}

fn record(epoch: u64, entries: Vec<Entry>) -> Record {
    Record { epoch, entries }
}

/// Appends one message to `queue`; returns its key.
fn add(store: &mut Store, queue: &str, id: &str) -> MessageKey {
    let position = store
        .append(&record(1, vec![add_entry(&[queue], message(id, "p", 0))]))
        .unwrap();
    MessageKey::new(position, 0)
}

fn remove(store: &mut Store, queue: &str, key: MessageKey) {
    store
        .append(&record(1, vec![remove_entry(queue, key)]))
        .unwrap();
}

/// Cuts the last 3 bytes of `segment`'s data: its last frame is torn.
fn tear_last_frame(segment: &Path) {
    let len = crate::store::journal::data_len(segment);
    fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
}

fn segment_starts(dir: &Path) -> Vec<(u64, u64)> {
    let mut files: Vec<(u64, u64)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".log")?;
            Some((
                u64::from_str_radix(hex, 16).ok()?,
                crate::store::journal::listed_data_len(&e.path())?,
            ))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn recovers_what_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, recovered, rx) = open(dir.path(), 1 << 20);
    assert_eq!(recovered, Recovered::default());
    assert!(
        !store.stats().index_rebuilt,
        "a new store has nothing to rebuild"
    );
    let start = store
        .append(&record(
            4,
            vec![Entry {
                kind: Some(entry::Kind::EpochStart(EpochStart {
                    epoch: 4,
                    node: "n".into(),
                })),
            }],
        ))
        .unwrap();
    assert_eq!(start, Position(0));
    let a = store
        .append(&record(
            4,
            vec![
                add_entry(&["q1", "q2"], message("a", "p1", 5)),
                add_entry(&["q1"], message("b", "p1", 6)),
            ],
        ))
        .unwrap();
    store
        .append(&record(
            4,
            vec![
                add_entry(&["q2"], message("c", "p2", 1)),
                add_entry(&["q3"], message("d", "p1", 2)),
                subscribe_entry(subscription("s1", "q2")),
                subscribe_entry(subscription("s2", "q3")),
            ],
        ))
        .unwrap();
    let c = MessageKey::new(Position(store.end().0 - 1), 0); // any non-existent key: no-op
    store
        .append(&record(
            4,
            vec![
                remove_entry("q1", MessageKey::new(a, 0)),
                remove_entry("q1", c),
                unsubscribe_entry("s2"),
                remove_entry("q3", MessageKey::new(a, 1)), // not on q3: no-op
            ],
        ))
        .unwrap();
    let end = store.end();
    wait_durable(&rx, end);
    store.close().unwrap();

    let (store, recovered, _rx) = open(dir.path(), 1 << 20);
    let stats = store.stats();
    assert!(!stats.index_rebuilt);
    assert_eq!(stats.index_replayed, 0);
    assert_eq!(stats.live_messages, 4);
    assert_eq!(recovered.end, end);
    assert_eq!(recovered.epoch, 4);
    let names: Vec<(&str, Vec<&str>)> = recovered
        .queues
        .iter()
        .map(|(q, ms)| {
            (
                q.as_str(),
                ms.iter().map(|(_, m)| m.message_id.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![("q1", vec!["b"]), ("q2", vec!["a", "c"]), ("q3", vec!["d"])]
    );
    assert_eq!(recovered.queues[0].1[0].1, message("b", "p1", 6));
    assert_eq!(recovered.queues[0].1[0].0, MessageKey::new(a, 1));
    assert_eq!(recovered.subscriptions, vec![subscription("s1", "q2")]);
    assert_eq!(
        recovered.producers,
        vec![("p1".to_string(), 6), ("p2".to_string(), 1)]
    );
}

/// A workload with rotations and releases; returns the store's final Recovered (after a clean
/// reopen).
/// A subscription and 200 messages over two queues, all but 7 consumed (4 never consumed pin
/// their segments), in segments of 600 bytes.
fn run_workload(store: &mut Store) {
    store
        .append(&record(1, vec![subscribe_entry(subscription("s", "sub"))]))
        .unwrap();
    let mut live = Vec::new();
    for n in 0..200 {
        let queue = if n % 3 == 0 { "a" } else { "b" };
        let key = add(store, queue, &format!("m{n}"));
        if n % 50 == 0 {
            continue; // never consumed: pins its segment
        }
        live.push((queue, key));
        if live.len() > 3 {
            let (queue, key) = live.remove(0);
            remove(store, queue, key);
        }
    }
}

fn workload(dir: &Path) -> Recovered {
    let (mut store, _, _rx) = open(dir, 600);
    run_workload(&mut store);
    let end = store.end();
    store.close().unwrap();
    let with_data = segment_starts(dir).iter().filter(|f| f.1 > 0).count() as u64;
    assert!(
        with_data * 600 < end.0 / 3,
        "{with_data} segments for {end} bytes"
    );
    let (_store, recovered, _rx) = open(dir, 600);
    recovered
}

#[test]
fn rebuild_after_the_index_is_deleted_gives_the_same_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let before = workload(dir.path());
    assert_eq!(before.queues.iter().map(|q| q.1.len()).sum::<usize>(), 7);
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, after, _rx) = open(dir.path(), 600);
    assert!(store.stats().index_rebuilt);
    assert_eq!(after, before);
    drop(store);
    // A file where the index directory should be: removed, and the index rebuilt.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    fs::write(dir.path().join("index"), b"not an index").unwrap();
    let (store, again, _rx) = open(dir.path(), 600);
    assert!(store.stats().index_rebuilt);
    assert_eq!(again, before);
}

/// The producer audit is bounded: one producer more than it holds, and the least recently
/// stored one is forgotten, the same way through the index and through a rebuild.
#[test]
fn the_producer_audit_forgets_the_least_recently_stored_producer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, rx) = open(dir.path(), 64 << 20);
    // The record adds nothing to a queue: only the audit sees these messages.
    let many: Vec<Entry> = (0..crate::store::MAX_AUDITED_PRODUCERS)
        .map(|i| add_entry(&[], message("m", &format!("p{i}"), 1)))
        .collect();
    store.append(&record(1, many)).unwrap();
    store
        .append(&record(1, vec![add_entry(&[], message("late", "late", 5))]))
        .unwrap();
    wait_durable(&rx, store.end());
    drop(store);
    let (store, recovered, _rx) = open(dir.path(), 64 << 20);
    assert!(!store.stats().index_rebuilt);
    assert_eq!(
        recovered.producers.len(),
        crate::store::MAX_AUDITED_PRODUCERS
    );
    assert!(
        !recovered.producers.iter().any(|(p, _)| p == "p0"),
        "p0 forgotten"
    );
    assert_eq!(
        recovered.producers[0],
        ("p1".to_string(), 1),
        "the oldest first"
    );
    assert_eq!(recovered.producers.last(), Some(&("late".to_string(), 5)));
    drop(store);
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, rebuilt, _rx) = open(dir.path(), 64 << 20);
    assert!(store.stats().index_rebuilt);
    assert_eq!(rebuilt.producers, recovered.producers);
}

#[test]
fn an_index_left_open_in_another_boot_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = workload(dir.path());
    fs::write(dir.path().join("index.state"), "open another-boot\n").unwrap();
    let (store, after, _rx) = open(dir.path(), 600);
    assert!(store.stats().index_rebuilt);
    assert_eq!(after, before);
    drop(store);
    // Closed cleanly: trusted next time.
    let (store, again, _rx) = open(dir.path(), 600);
    assert!(!store.stats().index_rebuilt);
    assert_eq!(again, before);
}

#[test]
fn an_index_behind_the_journal_is_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, _rx) = open(dir.path(), 1 << 20);
    let first = add(&mut store, "q", "first");
    add(&mut store, "q", "second");
    store.close().unwrap();

    // Records the index never saw, appended by the journal alone.
    let mut journal = Journal::open(
        JournalOptions {
            directory: dir.path().to_path_buf(),
            log_size: 1 << 20,
            fsync: false,
            only_copy: false,
        },
        Box::new(|_| {}),
    )
    .unwrap();
    journal
        .append(&record(2, vec![remove_entry("q", first)]))
        .unwrap();
    let third = journal
        .append(&record(
            2,
            vec![add_entry(&["q", "r"], message("third", "p", 9))],
        ))
        .unwrap()
        .position;
    journal.close().unwrap();

    let (store, recovered, _rx) = open(dir.path(), 1 << 20);
    let stats = store.stats();
    assert!(!stats.index_rebuilt);
    assert_eq!(stats.index_replayed, 2);
    let ids: Vec<(String, Vec<String>)> = recovered
        .queues
        .iter()
        .map(|(q, ms)| {
            (
                q.clone(),
                ms.iter().map(|m| m.1.message_id.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            (
                "q".to_string(),
                vec!["second".to_string(), "third".to_string()]
            ),
            ("r".to_string(), vec!["third".to_string()]),
        ]
    );
    assert_eq!(recovered.queues[1].1[0].0, MessageKey::new(third, 0));
    assert_eq!(recovered.epoch, 2);
    assert_eq!(recovered.producers, vec![("p".to_string(), 9)]);
    drop(store);
    let (store, again, _rx) = open(dir.path(), 1 << 20);
    assert_eq!(store.stats().index_replayed, 0);
    assert_eq!(again, recovered);
}

#[test]
fn after_a_crash_the_index_is_caught_up_never_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, rx) = open(dir.path(), 1 << 20);
    add(&mut store, "q", "kept");
    wait_durable(&rx, store.end());
    // "kept" is written: the index thread takes it at its next tick.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.index_queued() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the index never took the written record"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let hold = store.hold_journal();
    add(&mut store, "q", "lost");
    // Longer than the index's flush interval: before, the index applied "lost" at once.
    std::thread::sleep(index::FLUSH_INTERVAL * 5);
    store.simulate_crash(hold);
    let (store, recovered, _rx) = open(dir.path(), 1 << 20);
    let stats = store.stats();
    assert!(!stats.index_rebuilt, "{stats:?}");
    assert_eq!(
        stats.index_replayed, 0,
        "the written record was already applied"
    );
    let ids: Vec<&str> = recovered.queues[0]
        .1
        .iter()
        .map(|m| m.1.message_id.as_str())
        .collect();
    assert_eq!(ids, vec!["kept"]);
}

#[test]
fn an_index_ahead_of_a_torn_journal_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, _rx) = open(dir.path(), 1 << 20);
    add(&mut store, "q", "kept");
    let lost = add(&mut store, "q", "lost");
    store.close().unwrap();
    let segment = dir.path().join("0000000000000000.log");
    tear_last_frame(&segment);
    let (store, recovered, _rx) = open(dir.path(), 1 << 20);
    assert!(store.stats().index_rebuilt);
    assert_eq!(recovered.end, lost.position());
    assert_eq!(recovered.queues.len(), 1);
    assert_eq!(recovered.queues[0].1.len(), 1);
    assert_eq!(recovered.queues[0].1[0].1.message_id, "kept");
}

/// A standalone store (the only copy) whose journal ran with fsync and was closed cleanly
/// cannot lose its tail in a crash: a journal shorter than its index applied (a segment
/// deleted or cut after the close, as by a partial restore) is refused, naming the fix,
/// rather than opened without the confirmed records. Without the index's marker it opens with
/// what is left; a cluster member's store (not the only copy) rebuilds, as after a crash.
#[test]
fn a_journal_cut_after_a_clean_close_is_refused_by_an_only_copy() {
    for cut in ["truncated", "deleted"] {
        let dir = tempfile::tempdir().unwrap();
        let only_copy = StoreOptions {
            only_copy: true,
            ..options(dir.path(), 1 << 20, true)
        };
        let (mut store, _, _rx) = open_with(only_copy.clone());
        let kept = add(&mut store, "q", "kept");
        add(&mut store, "q", "confirmed");
        store.close().unwrap();
        let segment = dir.path().join("0000000000000000.log");
        if cut == "deleted" {
            fs::remove_file(&segment).unwrap();
        } else {
            tear_last_frame(&segment);
        }
        let refused = Store::open(only_copy.clone(), Box::new(|_| {}));
        let Err(error) = refused else {
            panic!("{cut}: a store missing confirmed records opened")
        };
        assert!(
            matches!(error, StoreError::JournalShort { .. }) && error.needs_operator(),
            "{cut}: {error}"
        );
        assert!(error.to_string().contains("index.state"), "{error}");

        // A cluster member's store rebuilds from what is left (its master has the rest).
        let member = StoreOptions {
            only_copy: false,
            ..only_copy.clone()
        };
        let (store, recovered, _rx) = open_with(member);
        if cut == "truncated" {
            assert!(store.stats().index_rebuilt);
            assert_eq!(recovered.queues[0].1.len(), 1);
            assert_eq!(recovered.queues[0].1[0].0, kept);
        } else {
            assert!(recovered.queues.iter().all(|(_, m)| m.is_empty()));
        }
        drop(store);
    }
    // The documented way past the refusal: delete index.state, start with what is left.
    let dir = tempfile::tempdir().unwrap();
    let only_copy = StoreOptions {
        only_copy: true,
        ..options(dir.path(), 1 << 20, true)
    };
    let (mut store, _, _rx) = open_with(only_copy.clone());
    add(&mut store, "q", "kept");
    add(&mut store, "q", "confirmed");
    store.close().unwrap();
    let segment = dir.path().join("0000000000000000.log");
    tear_last_frame(&segment);
    assert!(Store::open(only_copy.clone(), Box::new(|_| {})).is_err());
    fs::remove_file(dir.path().join("index.state")).unwrap();
    let (_store, recovered, _rx) = open_with(only_copy);
    assert_eq!(recovered.queues[0].1.len(), 1);
}

#[test]
fn gc_releases_consumed_segments_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    // log_size 1: every record starts a segment of its own.
    let (mut store, _, rx) = open(dir.path(), 1);
    let kept = add(&mut store, "q", "kept");
    let subscribed = store
        .append(&record(1, vec![subscribe_entry(subscription("s", "sub"))]))
        .unwrap();
    let mut consumed = Vec::new();
    for n in 0..20 {
        let key = add(&mut store, "q", &format!("m{n}"));
        remove(&mut store, "q", key);
        consumed.push(key.position());
    }
    wait_durable(&rx, store.end());
    // Releases run after the batch that requested them is durable; one more batch makes sure.
    add(&mut store, "q", "last");
    wait_durable(&rx, store.end());

    let files: Vec<u64> = segment_starts(dir.path())
        .iter()
        .filter(|f| f.1 > 0)
        .map(|f| f.0)
        .collect();
    assert!(
        files.contains(&kept.position().0),
        "a live message keeps its segment"
    );
    assert!(
        !files.contains(&consumed[0].0),
        "a consumed segment is deleted: {files:?}"
    );
    let stats = store.stats();
    assert!(stats.released_segments >= 30, "{stats:?}");
    assert!(stats.segments < 10, "{stats:?}");
    assert_eq!(stats.live_messages, 2);
    assert_eq!(stats.live_subscriptions, 1);
    // The subscription's segment is kept, unless the subscription was carried forward.
    assert!(files.contains(&subscribed.0) || stats.forwarded_records > 0);

    store.close().unwrap();
    let (_, before, _rx) = open(dir.path(), 1);
    assert_eq!(before.subscriptions, vec![subscription("s", "sub")]);
    let ids: Vec<&str> = before.queues[0]
        .1
        .iter()
        .map(|m| m.1.message_id.as_str())
        .collect();
    assert_eq!(ids, vec!["kept", "last"]);
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (_store, after, _rx) = open(dir.path(), 1);
    assert_eq!(after, before);
}

#[test]
fn a_removal_of_an_older_add_is_not_lost_to_gc() {
    // Segment A holds a live message and a consumed one; the removal of the consumed one lies
    // in B. B must outlive A (or be carried forward), or a rebuild would resurrect it.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, rx) = open(dir.path(), 1);
    let a = store
        .append(&record(
            1,
            vec![
                add_entry(&["q"], message("stays", "p", 1)),
                add_entry(&["q"], message("consumed", "p", 2)),
            ],
        ))
        .unwrap();
    remove(&mut store, "q", MessageKey::new(a, 1));
    for n in 0..10 {
        let key = add(&mut store, "r", &format!("m{n}"));
        remove(&mut store, "r", key);
    }
    wait_durable(&rx, store.end());
    add(&mut store, "r", "last");
    wait_durable(&rx, store.end());
    drop(store);
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (_store, recovered, _rx) = open(dir.path(), 1);
    let q: Vec<&str> = recovered.queues[0]
        .1
        .iter()
        .map(|m| m.1.message_id.as_str())
        .collect();
    assert_eq!(recovered.queues[0].0, "q");
    assert_eq!(q, vec!["stays"]);
}

#[test]
fn disk_stays_bounded_under_steady_produce_and_consume() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, rx) = open(dir.path(), 4096);
    store
        .append(&record(1, vec![subscribe_entry(subscription("s", "sub"))]))
        .unwrap();
    let mut previous = None;
    for n in 0..3000 {
        let key = add(&mut store, "q", &format!("m{n}"));
        if let Some(previous) = previous.replace(key) {
            remove(&mut store, "q", previous);
        }
    }
    wait_durable(&rx, store.end());
    add(&mut store, "q", "last");
    wait_durable(&rx, store.end());
    let stats = store.stats();
    assert!(stats.end.0 > 50 * 4096, "{stats:?}");
    assert!(stats.segments <= 4, "{stats:?}");
    assert!(stats.bytes <= 4 * 4096, "{stats:?}");
    // The subscription was carried forward instead of pinning the first segment forever.
    assert!(stats.forwarded_records > 0, "{stats:?}");
    let files = segment_starts(dir.path());
    assert!(files.len() <= 6, "{files:?}");
    store.close().unwrap();
    let (_store, recovered, _rx) = open(dir.path(), 4096);
    assert_eq!(recovered.subscriptions.len(), 1);
    assert_eq!(recovered.queues[0].1.len(), 2);
}

#[test]
fn group_commit_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, rx) = open_with(options(dir.path(), 1 << 20, true));
    let hold = store.hold_journal();
    for n in 0..50 {
        add(&mut store, "q", &format!("m{n}"));
    }
    assert_eq!(store.stats().durable, Position(0));
    drop(hold);
    wait_durable(&rx, store.end());
    let stats = store.stats();
    assert_eq!(stats.fsyncs, 1, "{stats:?}");
    assert_eq!(stats.durable, store.end());
}

#[test]
fn oversized_records_are_refused_before_taking_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, _rx) = open(dir.path(), 1 << 20);
    let entries = vec![remove_entry("q", MessageKey(0)); MAX_ENTRIES + 1];
    assert!(matches!(
        store.append(&record(1, entries)),
        Err(StoreError::TooManyEntries(_))
    ));
    assert_eq!(store.end(), Position(0));
}

// ---------------------------------------------------------------------------------------------
// Model-based test

#[derive(Debug, Clone)]
enum EntryOp {
    Add { queues: Vec<u8>, producer: u8 },
    Remove { pick: usize },
    RemoveUnknown,
    Subscribe { name: u8, queue: u8 },
    Unsubscribe { name: u8 },
    EpochStart,
}

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<EntryOp>),
    Reopen,
    /// Delete the index directory, then reopen (rebuild from the retained segments).
    ReopenWithoutIndex,
}

fn entry_op() -> impl Strategy<Value = EntryOp> {
    prop_oneof![
        4 => (prop::collection::vec(0u8..3, 1..3), 0u8..3)
            .prop_map(|(queues, producer)| EntryOp::Add { queues, producer }),
        7 => any::<usize>().prop_map(|pick| EntryOp::Remove { pick }),
        1 => Just(EntryOp::RemoveUnknown),
        1 => (0u8..3, 0u8..3).prop_map(|(name, queue)| EntryOp::Subscribe { name, queue }),
        1 => (0u8..3).prop_map(|name| EntryOp::Unsubscribe { name }),
        1 => Just(EntryOp::EpochStart),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => prop::collection::vec(entry_op(), 1..4).prop_map(Step::Append),
        1 => Just(Step::Reopen),
        1 => Just(Step::ReopenWithoutIndex),
    ]
}

/// What the store should recover, kept the simplest way.
#[derive(Default)]
struct Model {
    queues: BTreeMap<String, BTreeMap<MessageKey, Message>>,
    subscriptions: BTreeMap<String, SubscriptionAdd>,
    producers: BTreeMap<String, u64>,
    epoch: u64,
    next_sequence: u64,
    next_id: u64,
}

impl Model {
    /// Builds the record for `ops` at `position`, applying it to the model as it goes.
    fn record(&mut self, position: Position, ops: &[EntryOp]) -> Record {
        let mut entries = Vec::new();
        for op in ops {
            let index = entries.len();
            match op {
                EntryOp::Add { queues, producer } => {
                    self.next_id += 1;
                    self.next_sequence += 1;
                    let producer = format!("producer-{producer}");
                    let message = message(
                        &format!("id-{}", self.next_id),
                        &producer,
                        self.next_sequence,
                    );
                    let queues: Vec<String> = queues.iter().map(|q| format!("q{q}")).collect();
                    for queue in &queues {
                        self.queues
                            .entry(queue.clone())
                            .or_default()
                            .insert(MessageKey::new(position, index), message.clone());
                    }
                    self.producers.insert(producer, self.next_sequence);
                    entries.push(Entry {
                        kind: Some(entry::Kind::Add(MessageAdd {
                            queues,
                            message: Some(message),
                        })),
                    });
                }
                EntryOp::Remove { pick } => {
                    let live: Vec<(String, MessageKey)> = self
                        .queues
                        .iter()
                        .flat_map(|(q, ms)| ms.keys().map(move |k| (q.clone(), *k)))
                        .collect();
                    if live.is_empty() {
                        continue;
                    }
                    let (queue, key) = live[pick % live.len()].clone();
                    let messages = self.queues.get_mut(&queue).unwrap();
                    messages.remove(&key);
                    if messages.is_empty() {
                        self.queues.remove(&queue);
                    }
                    entries.push(remove_entry(&queue, key));
                }
                EntryOp::RemoveUnknown => {
                    entries.push(remove_entry("q0", MessageKey::new(position, 999)))
                }
                EntryOp::Subscribe { name, queue } => {
                    let add = SubscriptionAdd {
                        selector: format!("v{}", self.next_id),
                        ..subscription(&format!("s{name}"), &format!("q{queue}"))
                    };
                    self.subscriptions
                        .insert(add.subscription_name.clone(), add.clone());
                    entries.push(subscribe_entry(add));
                }
                EntryOp::Unsubscribe { name } => {
                    let name = format!("s{name}");
                    self.subscriptions.remove(&name);
                    entries.push(unsubscribe_entry(&name));
                }
                EntryOp::EpochStart => {
                    self.epoch += 1;
                    entries.push(Entry {
                        kind: Some(entry::Kind::EpochStart(EpochStart {
                            epoch: self.epoch,
                            node: "n".into(),
                        })),
                    });
                }
            }
        }
        Record {
            epoch: self.epoch,
            entries,
        }
    }

    /// Checks `recovered`; producers too, even when the index was rebuilt (the entries of
    /// released segments are carried forward in the journal).
    fn check(&mut self, recovered: &Recovered, rebuilt: bool) -> Result<(), TestCaseError> {
        let queues: Vec<(String, Vec<(MessageKey, Message)>)> = self
            .queues
            .iter()
            .map(|(q, ms)| (q.clone(), ms.iter().map(|(k, m)| (*k, m.clone())).collect()))
            .collect();
        prop_assert_eq!(&recovered.queues, &queues);
        let subscriptions: Vec<SubscriptionAdd> = self.subscriptions.values().cloned().collect();
        prop_assert_eq!(&recovered.subscriptions, &subscriptions);
        prop_assert_eq!(recovered.epoch, self.epoch);
        let producers: Vec<(String, u64)> = self
            .producers
            .iter()
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        // The store lists them least recently stored first; the model by name.
        let mut recovered_producers = recovered.producers.clone();
        recovered_producers.sort_unstable();
        prop_assert_eq!(&recovered_producers, &producers, "rebuilt: {}", rebuilt);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn recovered_state_matches_a_model(
        steps in prop::collection::vec(step(), 1..120),
        // Small segments: rotation, release and forwarding happen all the time (at 100 bytes
        // most forwards are too large and their segments stay).
        log_size in prop_oneof![Just(100u64), Just(250), Just(700)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, recovered, _rx) = open(dir.path(), log_size);
        let mut model = Model::default();
        model.check(&recovered, false)?;
        let mut rx_keep = Vec::new();
        for step in steps.into_iter().chain([Step::Reopen, Step::ReopenWithoutIndex]) {
            match step {
                Step::Append(ops) => {
                    let position = store.end();
                    let record = model.record(position, &ops);
                    prop_assert_eq!(store.append(&record).unwrap(), position);
                }
                Step::Reopen | Step::ReopenWithoutIndex => {
                    let end = store.end();
                    store.close().unwrap();
                    let rebuild = matches!(step, Step::ReopenWithoutIndex);
                    if rebuild {
                        fs::remove_dir_all(dir.path().join("index")).unwrap();
                    }
                    let (reopened, recovered, rx) = open(dir.path(), log_size);
                    rx_keep.push(rx);
                    prop_assert_eq!(recovered.end, end);
                    prop_assert_eq!(reopened.stats().index_rebuilt, rebuild && end.0 > 0);
                    model.check(&recovered, rebuild)?;
                    store = reopened;
                }
            }
            let stats = store.stats();
            eprintln!("STAT released={} forwarded={} segments={}", stats.released_segments, stats.forwarded_records, stats.segments);
            let live: usize = model.queues.values().map(|m| m.len()).sum();
            prop_assert_eq!(stats.live_messages, live as u64);
            prop_assert_eq!(stats.live_subscriptions, model.subscriptions.len() as u64);
        }
    }
}

/// A slave's open store handed to the master role: what `recover_open` reads back equals
/// what closing and reopening would recover, and the store goes on with fsync switched on.
#[test]
fn an_open_store_recovers_what_a_reopen_would() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, rx) = open(dir.path(), 600);
    run_workload(&mut store);
    let mut taken = store.recover_open(true).unwrap();
    assert_eq!(taken.queues.iter().map(|q| q.1.len()).sum::<usize>(), 7);
    assert_eq!(taken.subscriptions.len(), 1);

    let key = add(&mut store, "a", "after");
    wait_durable(&rx, store.end());
    store.close().unwrap();
    let (_store, reopened, _rx) = open(dir.path(), 600);
    let queue_a = taken.queues.iter_mut().find(|q| q.0 == "a").unwrap();
    queue_a.1.push((key, message("after", "p", 0)));
    taken.end = reopened.end;
    assert_eq!(reopened.queues.len(), taken.queues.len());
    for ((name, messages), (name2, messages2)) in reopened.queues.iter().zip(&taken.queues) {
        assert_eq!(name, name2);
        let ids = |m: &Vec<(MessageKey, Message)>| {
            m.iter()
                .map(|(k, m)| (*k, m.message_id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(messages), ids(messages2), "queue {name}");
    }
    assert_eq!(reopened.subscriptions, taken.subscriptions);
    assert_eq!(reopened.producers, taken.producers);
    assert_eq!(reopened.epoch, taken.epoch);
}

/// Copies what `master` appended since `from` to `slave`, as replication does.
fn copy_to_slave(
    master: &Store,
    rx: &mpsc::Receiver<Position>,
    slave: &mut Store,
    from: &mut Position,
) {
    let end = master.end();
    if end == *from {
        return;
    }
    wait_durable(rx, end);
    let mut bytes = Vec::new();
    for frame in master.reader().frames(*from, end) {
        bytes.extend_from_slice(&frame.unwrap().1);
    }
    slave.append_frames(*from, Bytes::from(bytes)).unwrap();
    *from = end;
}

/// One long-lived message (on the DLQ, say) and steady produce and consume: the master keeps
/// a few segments by forwarding the stale ones, and a slave copying it frees the same
/// segments, instead of keeping its whole journal.
#[test]
fn a_slave_frees_the_segments_its_master_forwarded() {
    let master_dir = tempfile::tempdir().unwrap();
    let slave_dir = tempfile::tempdir().unwrap();
    let (mut master, _, rx) = open(master_dir.path(), 4096);
    let (mut slave, _, _slave_rx) = open(slave_dir.path(), 4096);
    let mut copied = Position(0);
    add(&mut master, "dlq", "long-lived");
    copy_to_slave(&master, &rx, &mut slave, &mut copied);
    let mut previous = None;
    for n in 0..3000 {
        let key = add(&mut master, "q", &format!("m{n}"));
        if let Some(previous) = previous.replace(key) {
            remove(&mut master, "q", previous);
        }
        copy_to_slave(&master, &rx, &mut slave, &mut copied);
    }
    // Each writer releases a segment just after the batch that made it releasable is
    // durable, on its own thread: the counts settle once both have caught up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (m, s) = loop {
        let (m, s) = (master.stats(), slave.stats());
        if s.segments <= m.segments + 1 || std::time::Instant::now() > deadline {
            break (m, s);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(m.forwarded_records > 0 && m.segments <= 6, "master: {m:?}");
    assert!(
        s.segments <= m.segments + 1,
        "the slave keeps {} segments, its master {}",
        s.segments,
        m.segments
    );
    assert_eq!(s.forwarded_records, m.forwarded_records);
    assert_eq!(s.live_messages, m.live_messages);
    // What the slave kept rebuilds the same live messages.
    drop(slave);
    let (_, recovered, _) = open(slave_dir.path(), 4096);
    let live: Vec<(&str, usize)> = recovered
        .queues
        .iter()
        .map(|(queue, messages)| (queue.as_str(), messages.len()))
        .collect();
    assert_eq!(live, [("dlq", 1), ("q", 1)]);
}

/// In a cluster a segment is released only once the record that made it releasable is
/// confirmed: an ack's removal that no quorum confirmed may be cut when a new master is
/// elected, and the message it removed must still be there (its segment kept) when it is.
#[test]
fn a_segment_freed_by_an_unconfirmed_record_stays_until_it_is_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one add and one remove per segment.
    let (mut store, _, rx) = open_with(options(dir.path(), 100, true));
    store.hold_releases_until_confirmed();
    let m = add(&mut store, "q", "confirmed"); // segment A
    add(&mut store, "q", "keep-it-1"); // segment B (A is complete)
    wait_durable(&rx, store.end());
    let shared = store.end();
    store.set_confirmed(shared);
    remove(&mut store, "q", m); // an ack no quorum confirmed yet, in segment B
    wait_durable(&rx, store.end());
    add(&mut store, "other", "x"); // one more append: releases run
    wait_durable(&rx, store.end());
    assert_eq!(
        store.oldest(),
        Position(0),
        "segment A released before its removal was confirmed"
    );
    // A new master's answer at login: truncate to the shared prefix.
    store.truncate(shared).unwrap();
    store.close().unwrap();
    let (mut store, recovered, rx) = open(dir.path(), 100);
    let ids: Vec<&str> = recovered
        .queues
        .iter()
        .flat_map(|q| q.1.iter().map(|m| m.1.message_id.as_str()))
        .collect();
    assert_eq!(ids, ["confirmed", "keep-it-1"]);

    // Once confirmed, the removal releases the segment as before.
    store.hold_releases_until_confirmed();
    let m = MessageKey(recovered.queues[0].1[0].0 .0);
    remove(&mut store, "q", m);
    add(&mut store, "other", "y");
    wait_durable(&rx, store.end());
    assert_eq!(store.oldest(), Position(0));
    store.set_confirmed(store.end());
    store.release_confirmed();
    add(&mut store, "other", "z");
    wait_durable(&rx, store.end());
    // The writer runs a batch's releases just after reporting it durable.
    wait_oldest_beyond(&store, Position(0), "segment A never released");
}

/// A cluster node's store holds releases from its open on. Here a segment was made
/// releasable only by an ack no quorum confirmed, written just before the node stopped: it is
/// still there after the restart, so the truncation of that ack at a new master's login
/// brings its message back. (Anonymous messages: a producer's audit entry would keep the
/// segment anyway.)
#[test]
fn a_cluster_store_holds_the_releases_it_finds_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = |dir: &Path| StoreOptions {
        hold_releases: true,
        ..options(dir, 100, true)
    };
    let (mut store, _, rx) = open_with(cluster(dir.path()));
    let append = |store: &mut Store, id: &str| {
        let position = store
            .append(&record(1, vec![add_entry(&["q"], message(id, "", 0))]))
            .unwrap();
        MessageKey::new(position, 0)
    };
    let m = append(&mut store, "confirmed"); // segment A
    append(&mut store, "keep"); // segment B (A is complete)
    wait_durable(&rx, store.end());
    let shared = store.end();
    store.set_confirmed(shared);
    remove(&mut store, "q", m); // an ack no quorum confirmed, in segment B
    wait_durable(&rx, store.end());
    assert_eq!(store.oldest(), Position(0));
    store.close().unwrap();

    let (mut store, _, rx) = open_with(cluster(dir.path()));
    append(&mut store, "later"); // an append: any release found at open has run by its end
    wait_durable(&rx, store.end());
    assert_eq!(
        store.oldest(),
        Position(0),
        "segment A released at open, before the removal that freed it was confirmed"
    );
    store.truncate(shared).unwrap();
    assert_eq!(store.stats().live_messages, 2);
}

/// Polls (10 s deadline) until the journal's oldest segment starts after `position`.
fn wait_oldest_beyond(store: &Store, position: Position, failure: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.oldest() <= position {
        assert!(std::time::Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A producer whose messages all lived in segments that were released since is still known
/// after the index is rebuilt from the journal, to a slave that copied the journal as it was
/// written and to one that received the retained journal as a snapshot, so a late re-send of
/// its consumed message is still a duplicate.
#[test]
fn the_producer_audit_survives_the_release_of_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    // log_size 1: every record starts a segment of its own.
    let (mut store, _, rx) = open(dir.path(), 1);
    let (mut follower, _, _follower_rx) = open(follower_dir.path(), 1);
    // As a master: a segment goes once the follower holds what released it.
    store.hold_releases_until_confirmed();
    let mut copied = Position(0);
    let mut follow = |store: &mut Store, follower: &mut Store| {
        copy_to_slave(store, &rx, follower, &mut copied);
        store.set_confirmed(copied);
        store.release_confirmed();
    };
    let gone = store
        .append(&record(1, vec![add_entry(&["q"], message("m", "gone", 7))]))
        .unwrap();
    follow(&mut store, &mut follower);
    remove(&mut store, "q", MessageKey::new(gone, 0));
    follow(&mut store, &mut follower);
    for n in 0..3 {
        let key = store
            .append(&record(
                1,
                vec![add_entry(&["q"], message(&format!("n{n}"), "p", n + 1))],
            ))
            .unwrap();
        follow(&mut store, &mut follower);
        remove(&mut store, "q", MessageKey::new(key, 0));
        follow(&mut store, &mut follower);
    }
    add(&mut store, "q", "last"); // a later batch: the releases ran
    follow(&mut store, &mut follower);
    add(&mut store, "q", "last");
    follow(&mut store, &mut follower);
    assert!(store.oldest() > gone, "the segment of `gone` is released");
    assert!(follower.oldest() > gone, "the follower released it too");
    let audit = |recovered: &Recovered| {
        recovered
            .producers
            .iter()
            .find(|(p, _)| p == "gone")
            .map(|(_, s)| *s)
    };

    // A slave that receives the retained journal as a snapshot.
    let slave_dir = tempfile::tempdir().unwrap();
    let (mut slave, _, _slave_rx) = open(slave_dir.path(), 1);
    let reader = store.reader();
    let mut at = reader.oldest();
    slave.reset(at).unwrap();
    let end = store.end();
    for (hole, after) in reader.released_ranges().into_iter().chain([(end, end)]) {
        let frames: Vec<u8> = reader
            .frames(at, hole)
            .flat_map(|frame| frame.unwrap().1)
            .collect();
        slave.append_frames(at, Bytes::from(frames)).unwrap();
        if after > hole {
            slave.skip_to(after).unwrap();
        }
        at = after;
    }
    assert_eq!(audit(&slave.recover_open(false).unwrap()), Some(7));

    for (store, dir) in [(store, dir.path()), (follower, follower_dir.path())] {
        store.close().unwrap();
        fs::remove_dir_all(dir.join("index")).unwrap();
        let (store, rebuilt, _rx) = open(dir, 1);
        assert!(store.stats().index_rebuilt);
        assert_eq!(audit(&rebuilt), Some(7), "{:?}", rebuilt.producers);
    }
}

/// One producer per message (a JMS client that opens a producer per send, say), every message
/// consumed: the audit soon outgrows a segment. Each segment's producers are carried forward
/// only once they take at most half of it; carried at once, the segments the carries filled
/// were carried whole at the next append, so every send rewrote the audit (here 4.1 MB written
/// for 62 KB of sends and acks; with 65,536 producers and a 1 MiB `log_size`, megabytes per
/// send). The disk still holds only what the audit needs, twice over at most.
#[test]
fn many_short_lived_producers_do_not_make_every_append_rewrite_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, _rx) = open(dir.path(), 4096);
    let mut previous = None;
    let mut user_bytes = 0;
    let mut append = |store: &mut Store, record: Record| {
        user_bytes += prost::Message::encoded_len(&record) as u64 + 8;
        store.append(&record).unwrap()
    };
    for n in 0..600 {
        let message = message(&format!("m{n}"), &format!("ID:producer-{n}"), 1);
        let position = append(&mut store, record(1, vec![add_entry(&["q"], message)]));
        if let Some(previous) = previous.replace(MessageKey::new(position, 0)) {
            append(&mut store, record(1, vec![remove_entry("q", previous)]));
        }
    }
    let stats = store.stats();
    assert!(
        stats.end.0 < 4 * user_bytes,
        "{} bytes written for {user_bytes} bytes of sends and acks: {stats:?}",
        stats.end.0
    );
    assert!(stats.bytes < 24 * 4096, "{stats:?}");
    assert_eq!(store.state.producers().len(), 600);
}

/// A gauge taken once reads the store's figures as they move (what a slave's metrics show
/// while its replication task holds the store): the written end, and the same disk use as
/// the store's own, through rotations and releases.
#[test]
fn a_store_gauge_follows_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _, durable) = open(dir.path(), 4096);
    let gauge = store.gauge();
    let keys: Vec<MessageKey> = (0..100)
        .map(|i| add(&mut store, "q", &format!("m{i}")))
        .collect();
    wait_durable(&durable, store.end());
    let figures = gauge.figures();
    assert_eq!(figures.journal_end, store.end().0);
    assert_eq!(figures.disk_bytes, store.disk_bytes());
    assert!(figures.disk_bytes > 4096, "{figures:?}: segments rotated");
    for key in keys {
        remove(&mut store, "q", key);
    }
    wait_durable(&durable, store.end());
    let drained = gauge.figures();
    assert_eq!(drained.journal_end, store.end().0);
    assert_eq!(drained.disk_bytes, store.disk_bytes());
}
