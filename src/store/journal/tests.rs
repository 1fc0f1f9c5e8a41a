//! Tests of the journal: positions and reopening, group commit, inline batches and direct
//! writes, rotation and preallocation, releases and tombstones, truncation, failures, and
//! recovery from torn, corrupt and missing data.
//!
//! They must never touch files outside their own temporary directories.

use super::segment::{parse_segment_name, SEALED_FILE};
use super::*;
use crate::store::record::{entry, Entry, Message, MessageAdd, FRAME_HEADER_LEN};
use std::time::Duration;

fn record(n: u64, body_len: usize) -> Record {
    Record {
        epoch: 1,
        entries: vec![Entry {
            kind: Some(entry::Kind::Add(MessageAdd {
                queues: vec!["queue://q".into()],
                message: Some(Message {
                    message_id: format!("m{n}"),
                    body: Bytes::from(vec![n as u8; body_len]),
                    ..Message::default()
                }),
            })),
        }],
    }
}

fn frame_len(record: &Record) -> u64 {
    (FRAME_HEADER_LEN + encoded_body_len(record)) as u64
}

fn open(dir: &Path, log_size: u64, fsync: bool) -> (Journal, mpsc::Receiver<Position>) {
    let (tx, rx) = mpsc::channel();
    let journal = Journal::open(
        JournalOptions {
            directory: dir.to_path_buf(),
            log_size,
            fsync,
            only_copy: false,
        },
        Box::new(move |p| {
            let _ = tx.send(p);
        }),
    )
    .unwrap();
    (journal, rx)
}

/// A 1 MiB-segment journal in `dir`, fsync on.
fn options_for(dir: &Path) -> JournalOptions {
    JournalOptions {
        directory: dir.to_path_buf(),
        log_size: 1 << 20,
        fsync: true,
        only_copy: false,
    }
}

fn wait_durable(rx: &mpsc::Receiver<Position>, target: Position) -> Vec<Position> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|&p| p < target) {
        seen.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("durable report"),
        );
    }
    seen
}

fn all_records(journal: &Journal) -> Vec<(Position, Record)> {
    journal
        .reader()
        .records(Position(0), journal.end())
        .map(|r| r.map(|(p, rec, _)| (p, rec)).unwrap())
        .collect()
}

fn segment_files(dir: &Path) -> Vec<(u64, u64)> {
    let mut files: Vec<(u64, u64)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let start = parse_segment_name(e.file_name().to_str()?)?;
            Some((start, listed_data_len(&e.path())?))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn positions_are_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, false);
    let mut expected = Vec::new();
    let mut next = 0;
    for n in 0..20 {
        let r = record(n, n as usize * 7);
        let appended = journal.append(&r).unwrap();
        assert_eq!(appended.position, Position(next));
        assert_eq!(appended.len, frame_len(&r));
        next += appended.len;
        expected.push((appended.position, r));
    }
    assert_eq!(journal.end(), Position(next));
    wait_durable(&rx, Position(next));
    assert_eq!(all_records(&journal), expected);
    assert_eq!(journal.reader().read(expected[7].0).unwrap(), expected[7].1);
    journal.close().unwrap();

    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    assert_eq!(journal.end(), Position(next));
    assert_eq!(all_records(&journal), expected);
    let appended = journal.append(&record(99, 1)).unwrap();
    assert_eq!(appended.position, Position(next));
}

/// A file named like a segment but starting past any journal's reach (copied or renamed by
/// hand) is not taken for one: its start plus its length would overflow the positions.
#[test]
fn a_segment_name_past_any_journals_reach_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, false);
    let end = journal.append(&record(1, 10)).unwrap().len;
    wait_durable(&rx, Position(end));
    journal.close().unwrap();
    let segment = dir.path().join(segment_file_name(Position(0)));
    fs::copy(&segment, dir.path().join("ffffffffffffff00.log")).unwrap();
    assert_eq!(parse_segment_name("ffffffffffffff00.log"), None);
    assert_eq!(parse_segment_name("4000000000000000.log"), Some(1 << 62));

    let (journal, _rx) = open(dir.path(), 1 << 20, false);
    assert_eq!(journal.end(), Position(end));
    assert_eq!(all_records(&journal), vec![(Position(0), record(1, 10))]);
}

/// Direct writes (a slave without fsync): durable when `end_direct` returns, on the
/// caller's thread; in append order with what was queued for the thread before; across a
/// rotation; and never with fsync on.
#[test]
fn direct_writes_are_durable_on_return_and_keep_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let log_size = 4 * frame_len(&record(0, 200));
    let (mut journal, rx) = open(dir.path(), log_size, false);
    let frame = |n: u64| {
        let mut out = BytesMut::new();
        encode_frame(&record(n, 200), &mut out);
        out.freeze()
    };
    let mut expected = Vec::new();
    let first = journal.append(&record(0, 200)).unwrap();
    expected.push((first.position, record(0, 200)));
    wait_durable(&rx, journal.end());
    let batches = journal.stats().batches;
    journal.begin_direct();
    for n in 1..=6 {
        let at = journal.end();
        journal.append_frame(at, frame(n)).unwrap();
        expected.push((at, record(n, 200)));
    }
    journal.end_direct().unwrap();
    assert_eq!(journal.stats().durable, journal.end(), "durable on return");
    assert_eq!(rx.try_iter().last(), Some(journal.end()));
    assert_eq!(
        journal.stats().batches,
        batches + 1,
        "one batch, written here"
    );
    assert!(
        journal.segments().len() >= 2,
        "rotated inside the direct batch"
    );
    // One frame between begin_direct and end_direct.
    let one_direct = |journal: &mut Journal, n: u64, expected: &mut Vec<_>| {
        journal.begin_direct();
        let at = journal.end();
        journal.append_frame(at, frame(n)).unwrap();
        expected.push((at, record(n, 200)));
        journal.end_direct().unwrap();
    };
    // Something queued for the thread first: direct appends wait their turn.
    let queued = journal.append(&record(7, 200)).unwrap();
    expected.push((queued.position, record(7, 200)));
    one_direct(&mut journal, 8, &mut expected);
    wait_durable(&rx, journal.end());
    assert_eq!(all_records(&journal), expected);
    // With fsync on, appends always go through the thread.
    journal.set_fsync(true).unwrap();
    one_direct(&mut journal, 9, &mut expected);
    wait_durable(&rx, journal.end());
    journal.close().unwrap();
    let (journal, _rx) = open(dir.path(), log_size, false);
    assert_eq!(all_records(&journal), expected);
}

#[test]
fn deferred_appends_are_written_by_the_flushing_caller_or_the_busy_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, true);
    let flusher = journal.flusher();
    // A writer thread just started looks at the queue once before it sleeps; had it not
    // gone to sleep yet, it would take the appends below itself.
    journal.wait_writer_asleep();
    let mut expected = Vec::new();
    for n in 0..3 {
        let appended = journal.append_deferred(&record(n, 100)).unwrap();
        expected.push((appended.position, record(n, 100)));
    }
    let caller = std::thread::current().id();
    flusher.flush();
    // Written, synced and reported before flush returned: by this thread, in one batch.
    assert_eq!(journal.stats().durable, journal.end());
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![journal.end()]);
    assert_eq!(std::thread::current().id(), caller);
    assert_eq!(journal.stats().fsyncs, 1);

    // While another batch is being written, flush leaves the queue to its writer, which
    // takes it once that batch is done, in order.
    let hold = journal.hold_writer();
    let queued = journal.append(&record(3, 100)).unwrap();
    expected.push((queued.position, record(3, 100)));
    let deferred = journal.append_deferred(&record(4, 100)).unwrap();
    expected.push((deferred.position, record(4, 100)));
    flusher.flush();
    assert!(
        journal.stats().durable < journal.end(),
        "nothing written yet"
    );
    drop(hold);
    wait_durable(&rx, journal.end());
    assert_eq!(all_records(&journal), expected);
    journal.close().unwrap();
    let (journal, _rx) = open(dir.path(), 1 << 20, true);
    assert_eq!(all_records(&journal), expected);
}

/// The writer clock the disk watchdog reads: idle between batches, running while the writer
/// is held in the middle of its work (as on a disk that stalls), readable meanwhile from
/// another thread, and idle again once the batch is done.
#[test]
fn the_write_clock_runs_while_the_writer_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, true);
    let clock = journal.write_clock();
    journal.append(&record(1, 100)).unwrap();
    wait_durable(&rx, journal.end());
    journal.wait_writer_asleep();
    assert_eq!(clock.stalled_for(), None, "an idle writer is not stalled");

    let hold = journal.hold_writer();
    journal.append(&record(2, 100)).unwrap();
    let reader = clock.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = std::thread::spawn(move || loop {
        match reader.stalled_for() {
            Some(stalled) if stalled >= Duration::from_millis(50) => return stalled,
            _ if std::time::Instant::now() > deadline => panic!("the clock never ran"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    })
    .join()
    .unwrap();
    assert!(seen >= Duration::from_millis(50));
    drop(hold);
    wait_durable(&rx, journal.end());
    journal.wait_writer_asleep();
    assert_eq!(clock.stalled_for(), None, "the batch is done");
    journal.close().unwrap();
}

/// A batch holds at most `MAX_BATCH_BYTES`, or one larger frame alone: recovery takes at most
/// that much after a bad frame for a torn write. A frame that would pass the bound starts a
/// batch of its own (it used to join the batch, which could then hold 8 MiB plus a frame of
/// up to 256 MiB, and a power loss tearing its start made a sealed only copy refuse to open).
#[test]
fn a_batch_never_holds_more_than_the_torn_write_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 64 << 20, true);
    let before = journal.stats().batches;
    let hold = journal.hold_writer();
    // 7.9 MiB of small frames, then one of 300 KiB, all queued while the writer is held.
    for n in 0..79 {
        journal.append(&record(n, 100 << 10)).unwrap();
    }
    journal.append(&record(79, 300 << 10)).unwrap();
    drop(hold);
    wait_durable(&rx, journal.end());
    assert_eq!(journal.stats().batches - before, 2);
    journal.close().unwrap();
}

/// The owner of a journal can go away on the journal's own thread: its durable callback
/// (a broker core confirmed from the writer thread) may hold the last handle. Dropping the
/// journal there must not try to join that very thread, and what was written stays. The
/// directory stays locked until that thread is done with it (it still finishes its batch and
/// its releases): a journal opened there meanwhile gets `Locked`, not a directory whose
/// segments are being deleted under it.
#[test]
fn a_journal_dropped_from_its_own_durable_callback_closes_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let options = options_for(dir.path());
    let slot: Arc<Mutex<Option<Journal>>> = Arc::new(Mutex::new(None));
    let (dropped, was_dropped) = mpsc::channel();
    let in_callback = slot.clone();
    let second = options.clone();
    let journal = Journal::open(
        options,
        Box::new(move |_| {
            let journal = in_callback.lock().unwrap().take();
            if journal.is_some() {
                drop(journal);
                let meanwhile = Journal::open(second.clone(), Box::new(|_| {}));
                let locked = matches!(meanwhile, Err(StoreError::Locked(_)));
                let _ = dropped.send((std::thread::current().id(), locked));
            }
        }),
    )
    .unwrap();
    let writer = journal.writer.as_ref().unwrap().thread().id();
    let mut guard = slot.lock().unwrap();
    let journal = guard.insert(journal);
    let appended = journal.append(&record(0, 100)).unwrap();
    drop(guard);
    let (on, locked) = was_dropped
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the callback dropped the journal and carried on");
    assert_eq!(on, writer, "dropped on the writer thread");
    assert!(
        locked,
        "the directory was unlocked while its writer thread still ran"
    );
    // Unlocked once the writer thread has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reopened = loop {
        match Journal::open(options_for(dir.path()), Box::new(|_| {})) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            result => break result.unwrap(),
        }
    };
    assert_eq!(
        all_records(&reopened),
        vec![(appended.position, record(0, 100))]
    );
}

#[test]
fn rotates_at_log_size() {
    let dir = tempfile::tempdir().unwrap();
    let len = frame_len(&record(0, 100));
    let (mut journal, _rx) = open(dir.path(), 3 * len + len / 2, false);
    let mut positions = Vec::new();
    for n in 0..10 {
        let appended = journal.append(&record(n, 100)).unwrap();
        assert_eq!(appended.new_segment, n > 0 && n % 3 == 0, "record {n}");
        positions.push(appended.position.0);
    }
    // A record larger than log_size gets a segment of its own.
    let big = journal.append(&record(10, 10_000)).unwrap();
    assert!(big.new_segment);
    let after = journal.append(&record(11, 100)).unwrap();
    assert!(after.new_segment);
    journal.close().unwrap();
    let files = segment_files(dir.path());
    let starts: Vec<u64> = files.iter().map(|f| f.0).collect();
    assert_eq!(
        starts,
        vec![
            0,
            positions[3],
            positions[6],
            positions[9],
            big.position.0,
            after.position.0
        ]
    );
    assert_eq!(
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() == "0000000000000000.log")
            .count(),
        1,
        "named by 16 lowercase hex digits"
    );
    for (start, size) in &files[..3] {
        assert_eq!(*size, 3 * len, "segment {start}");
    }
    let (journal, _rx) = open(dir.path(), 3 * len + len / 2, false);
    assert_eq!(all_records(&journal).len(), 12);
}

#[test]
fn torn_tail_is_truncated_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Record> = (0..3).map(|n| record(n, 20)).collect();
    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    for r in &records {
        journal.append(r).unwrap();
    }
    journal.close().unwrap();
    let path = segment_path(dir.path(), 0);
    let mut full = fs::read(&path).unwrap();
    full.truncate(data_len(&path) as usize);
    let last = full.len() as u64 - frame_len(&records[2]);
    for cut in last..full.len() as u64 {
        fs::write(&path, &full[..cut as usize]).unwrap();
        let (mut journal, rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(journal.end(), Position(last), "cut at {cut}");
        assert_eq!(data_len(&path), last, "cut at {cut}");
        let recovered: Vec<Record> = all_records(&journal).into_iter().map(|r| r.1).collect();
        assert_eq!(recovered, records[..2].to_vec(), "cut at {cut}");
        let appended = journal.append(&record(7, 3)).unwrap();
        assert_eq!(appended.position, Position(last), "cut at {cut}");
        wait_durable(&rx, journal.end());
        journal.close().unwrap();
        let (journal, _rx) = open(dir.path(), 1 << 20, false);
        let recovered: Vec<Record> = all_records(&journal).into_iter().map(|r| r.1).collect();
        assert_eq!(recovered.len(), 3);
        assert_eq!(recovered[2], record(7, 3));
    }
}

/// Three full segments of three records each plus a current one; returns the positions.
fn four_segments(dir: &Path, fsync: bool) -> (Journal, mpsc::Receiver<Position>, Vec<u64>) {
    let len = frame_len(&record(0, 50));
    let (mut journal, rx) = open(dir, 3 * len, fsync);
    let positions: Vec<u64> = (0..10)
        .map(|n| journal.append(&record(n, 50)).unwrap().position.0)
        .collect();
    (journal, rx, positions)
}

#[test]
fn flipped_bit_truncates_there_and_removes_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _rx, positions) = four_segments(dir.path(), false);
    journal.close().unwrap();
    // Flip a bit in the body of the middle frame of the second segment.
    let victim = positions[4];
    let path = segment_path(dir.path(), positions[3]);
    let mut bytes = fs::read(&path).unwrap();
    let offset = (victim - positions[3]) as usize + FRAME_HEADER_LEN + 5;
    bytes[offset] ^= 0x10;
    fs::write(&path, &bytes).unwrap();

    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    assert_eq!(journal.end(), Position(victim));
    assert_eq!(
        segment_files(dir.path()),
        vec![(0, positions[3]), (positions[3], victim - positions[3])]
    );
    assert_eq!(all_records(&journal).len(), 4);
    assert_eq!(
        journal.append(&record(42, 1)).unwrap().position,
        Position(victim)
    );
}

/// A standalone store (the only copy): a bad frame in an early segment with more than a
/// batch of records after it is not a torn tail, and opening fails naming it, instead of
/// deleting what follows. Within one batch of the end it is cut as a torn tail.
#[test]
fn an_only_copy_refuses_to_cut_records_after_a_corrupt_frame() {
    let open_only_copy = |dir: &Path| {
        Journal::open(
            JournalOptions {
                directory: dir.to_path_buf(),
                log_size: 1 << 20,
                fsync: false,
                only_copy: true,
            },
            Box::new(|_| {}),
        )
    };
    let flip_first_frame = |dir: &Path| {
        let path = segment_path(dir, 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[FRAME_HEADER_LEN + 5] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
    };
    // 12 MiB after the first segment: more than a batch.
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    for n in 0..200 {
        journal.append(&record(n, 64 << 10)).unwrap();
    }
    journal.close().unwrap();
    let sizes = |dir: &Path| -> Vec<(u64, u64)> {
        segment_files(dir)
            .into_iter()
            .map(|(start, _)| (start, fs::metadata(segment_path(dir, start)).unwrap().len()))
            .collect()
    };
    let files = sizes(dir.path());
    flip_first_frame(dir.path());
    let Err(error) = open_only_copy(dir.path()) else {
        panic!("opened, cutting the records after the corrupt frame");
    };
    assert!(
        matches!(error, StoreError::CorruptBeforeRecords { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("not a torn tail"), "{error}");
    assert_eq!(sizes(dir.path()), files, "nothing cut or deleted");

    // One small segment after it: a batch torn across a rotation; cut there.
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    for n in 0..17 {
        journal.append(&record(n, 64 << 10)).unwrap();
    }
    journal.close().unwrap();
    assert!(segment_files(dir.path()).len() >= 2);
    flip_first_frame(dir.path());
    let journal = open_only_copy(dir.path()).expect("a torn tail is cut");
    assert_eq!(journal.end(), Position(0));
}

/// The same within the current segment: a standalone store whose bad frame is followed, in
/// the same segment, by more than a batch of records refuses to open; one followed by less is
/// cut there as a torn tail.
#[test]
fn an_only_copy_refuses_to_cut_records_after_a_corrupt_frame_in_its_current_segment() {
    let open_only_copy = |dir: &Path| {
        Journal::open(
            JournalOptions {
                directory: dir.to_path_buf(),
                log_size: 64 << 20,
                fsync: false,
                only_copy: true,
            },
            Box::new(|_| {}),
        )
    };
    // 200 records of 64 KiB (12.5 MiB) in one segment; a byte flipped in record `bad`, at
    // `at` within its frame (its body, or its length field).
    let written_with_bad_at = |bad: usize, at: usize| {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _rx) = open(dir.path(), 64 << 20, false);
        let mut starts = Vec::new();
        for n in 0..200 {
            starts.push(journal.append(&record(n, 64 << 10)).unwrap().position.0);
        }
        journal.close().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1);
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[starts[bad] as usize + at] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        (dir, bytes, starts[bad])
    };
    for (bad, at) in [(1, FRAME_HEADER_LEN + 5), (20, 1)] {
        let (dir, bytes, _) = written_with_bad_at(bad, at);
        let Err(error) = open_only_copy(dir.path()) else {
            panic!("opened, cutting 12 MiB of records after the corrupt frame");
        };
        assert!(
            matches!(error, StoreError::CorruptBeforeRecords { .. }),
            "{error}"
        );
        assert_eq!(
            fs::read(segment_path(dir.path(), 0)).unwrap(),
            bytes,
            "nothing cut"
        );
    }

    let (dir, _, bad_start) = written_with_bad_at(190, FRAME_HEADER_LEN + 5);
    let journal = open_only_copy(dir.path()).expect("a torn tail is cut");
    assert_eq!(journal.end(), Position(bad_start));
}

/// A cluster node's copy (not the only one) cuts more than a batch of records after a
/// corrupt frame, as its master holds them, but marks itself damaged first, durably, and
/// stays marked across reopenings until told it was refilled. A torn tail leaves no mark.
#[test]
fn a_copy_that_cuts_records_after_a_corrupt_frame_is_marked_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _rx) = open(dir.path(), 64 << 20, false);
    let mut starts = Vec::new();
    for n in 0..200 {
        starts.push(journal.append(&record(n, 64 << 10)).unwrap().position.0);
    }
    assert_eq!(journal.damage(), None);
    journal.close().unwrap();
    let flip = |at: u64| {
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at as usize + FRAME_HEADER_LEN + 5] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
    };

    // Within a batch of the end: a torn tail, no mark.
    flip(starts[195]);
    let (journal, _rx) = open(dir.path(), 64 << 20, false);
    assert_eq!(journal.end(), Position(starts[195]));
    assert_eq!(journal.damage(), None);
    assert!(!dir.path().join(DAMAGED_FILE).exists());
    journal.close().unwrap();

    // 12 MiB after the bad frame: cut, and marked.
    flip(starts[3]);
    let (journal, _rx) = open(dir.path(), 64 << 20, false);
    assert_eq!(
        journal.end(),
        Position(starts[3]),
        "cut at the corrupt frame"
    );
    let damage = journal.damage().expect("marked damaged");
    assert!(
        damage.contains(&format!("corrupt frame at position {}", starts[3])),
        "{damage}"
    );
    let watch = journal.damage_watch();
    assert!(*watch.borrow());
    journal.close().unwrap();

    // Still marked after another reopening (the journal itself now looks whole).
    let (journal, _rx) = open(dir.path(), 64 << 20, false);
    assert!(journal.damage().is_some(), "the mark survives a restart");
    let watch = journal.damage_watch();
    journal.clear_damage().unwrap();
    assert_eq!(journal.damage(), None);
    assert!(!*watch.borrow(), "watchers see the mark go");
    journal.close().unwrap();
    let (journal, _rx) = open(dir.path(), 64 << 20, false);
    assert_eq!(journal.damage(), None, "cleared for good");
    journal.close().unwrap();
}

/// A finished segment in the middle whose data was lost but whose size was kept (all
/// zeros, as a power loss can leave a segment written without fsync) is no tombstone:
/// recovery cuts there like at a corrupt frame, and a standalone store with more than a
/// batch of records after it refuses to open instead of skipping it.
#[test]
fn a_zero_filled_segment_in_the_middle_is_corruption_not_a_tombstone() {
    let zero_fill = |path: &Path| {
        let len = fs::metadata(path).unwrap().len() as usize;
        assert!(len > 0);
        fs::write(path, vec![0u8; len]).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let (journal, _rx, positions) = four_segments(dir.path(), false);
    journal.close().unwrap();
    zero_fill(&segment_path(dir.path(), positions[3]));
    let (journal, _rx) = open(dir.path(), 1 << 20, false);
    assert_eq!(
        journal.end(),
        Position(positions[3]),
        "cut at the lost segment"
    );
    assert_eq!(all_records(&journal).len(), 3);
    journal.close().unwrap();

    // A standalone store: more than a batch of records after the lost segment.
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    for n in 0..200 {
        journal.append(&record(n, 64 << 10)).unwrap();
    }
    journal.close().unwrap();
    let second = segment_files(dir.path())[1].0;
    zero_fill(&segment_path(dir.path(), second));
    let only_copy = Journal::open(
        JournalOptions {
            directory: dir.path().to_path_buf(),
            log_size: 1 << 20,
            fsync: false,
            only_copy: true,
        },
        Box::new(|_| {}),
    );
    let Err(error) = only_copy else {
        panic!("opened, taking a segment of zeros for a released one");
    };
    assert!(
        matches!(error, StoreError::CorruptBeforeRecords { position, .. } if position == Position(second)),
        "{error}"
    );
}

#[test]
fn absurd_length_and_undecodable_body_end_the_journal() {
    for garbage in [
        // Length far beyond the limit.
        vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3],
        // A valid checksum over a body that is not a record.
        {
            let body = [0xffu8; 5];
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            frame.extend_from_slice(&body);
            frame
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
        let end = {
            journal.append(&record(1, 10)).unwrap();
            journal.end()
        };
        journal.close().unwrap();
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(end.0 as usize);
        bytes.extend_from_slice(&garbage);
        bytes.extend_from_slice(&[0u8; 64]);
        fs::write(&path, &bytes).unwrap();
        let (journal, _rx) = open(dir.path(), 1 << 20, false);
        assert_eq!(journal.end(), end);
        assert_eq!(data_len(&path), end.0);
    }
}

#[test]
fn gap_between_segments_ends_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _rx, positions) = four_segments(dir.path(), false);
    journal.close().unwrap();
    fs::remove_file(segment_path(dir.path(), positions[3])).unwrap();
    let (journal, _rx) = open(dir.path(), 1 << 20, false);
    assert_eq!(journal.end(), Position(positions[3]));
    assert_eq!(segment_files(dir.path()), vec![(0, positions[3])]);
}

/// A journal run with fsync seals each segment before writing the next (`SEALED_FILE`): a
/// power loss tears only its last segment. So a bad frame in a finished segment, or a missing
/// one, is damage however little follows: the only copy refuses to open, another copy is cut
/// and marked damaged. In the last segment it is still a torn tail. Run without fsync, the
/// journal drops the mark and the batch rule applies again.
#[test]
fn a_sealed_journal_reads_a_bad_finished_segment_as_damage() {
    let open_as = |dir: &Path, only_copy: bool, fsync: bool| {
        Journal::open(
            JournalOptions {
                directory: dir.to_path_buf(),
                log_size: 1 << 20,
                fsync,
                only_copy,
            },
            Box::new(|_| {}),
        )
    };
    let flip = |dir: &Path, segment: u64, at: u64| {
        let path = segment_path(dir, segment);
        let mut bytes = fs::read(&path).unwrap();
        bytes[(at - segment) as usize + FRAME_HEADER_LEN + 5] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
    };
    // Four small segments, written with fsync: sealed.
    let sealed = |dir: &Path| {
        let (journal, _rx, positions) = four_segments(dir, true);
        journal.close().unwrap();
        assert!(dir.join(SEALED_FILE).exists());
        positions
    };

    // A bad frame in the second segment, a few hundred bytes of records after it.
    let dir = tempfile::tempdir().unwrap();
    let positions = sealed(dir.path());
    flip(dir.path(), positions[3], positions[4]);
    let Err(error) = open_as(dir.path(), true, true) else {
        panic!("the only copy opened, cutting records after a bad finished segment");
    };
    assert!(
        matches!(error, StoreError::CorruptBeforeRecords { position, .. } if position == Position(positions[4])),
        "{error}"
    );
    let journal = open_as(dir.path(), false, true).expect("another copy opens");
    assert_eq!(journal.end(), Position(positions[4]));
    assert!(journal.damage().is_some(), "and is marked damaged");
    journal.close().unwrap();

    // A finished segment missing.
    let dir = tempfile::tempdir().unwrap();
    let positions = sealed(dir.path());
    fs::remove_file(segment_path(dir.path(), positions[3])).unwrap();
    let Err(error) = open_as(dir.path(), true, true) else {
        panic!("the only copy opened without a finished segment");
    };
    assert!(
        matches!(error, StoreError::CorruptBeforeRecords { position, .. } if position == Position(positions[3])),
        "{error}"
    );
    assert!(
        error.to_string().contains("records between are missing"),
        "{error}"
    );

    // A bad frame in the last segment: a torn tail, cut.
    let dir = tempfile::tempdir().unwrap();
    let positions = sealed(dir.path());
    flip(dir.path(), positions[9], positions[9]);
    let journal = open_as(dir.path(), true, true).expect("a torn tail is cut");
    assert_eq!(journal.end(), Position(positions[9]));
    assert_eq!(journal.damage(), None);
    journal.close().unwrap();

    // Opened without fsync, the journal is no longer sealed: the batch rule again.
    let dir = tempfile::tempdir().unwrap();
    let positions = sealed(dir.path());
    open_as(dir.path(), true, false).unwrap().close().unwrap();
    assert!(!dir.path().join(SEALED_FILE).exists());
    flip(dir.path(), positions[3], positions[4]);
    let journal = open_as(dir.path(), true, true).expect("within a batch of the end: cut");
    assert_eq!(journal.end(), Position(positions[4]));
}

#[test]
fn corrupt_first_frame_of_last_segment_continues_in_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _rx, positions) = four_segments(dir.path(), false);
    journal.close().unwrap();
    let path = segment_path(dir.path(), positions[9]);
    let mut bytes = fs::read(&path).unwrap();
    bytes[FRAME_HEADER_LEN] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let (mut journal, _rx) = open(dir.path(), 1 << 20, false);
    assert_eq!(journal.end(), Position(positions[9]));
    assert!(!path.exists(), "the emptied last segment is removed");
    let appended = journal.append(&record(1, 1)).unwrap();
    assert_eq!(appended.position, Position(positions[9]));
    assert!(!appended.new_segment, "log_size is now 1 MiB");
}

#[test]
fn durable_reports_are_monotone_and_reach_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 4096, true);
    for n in 0..200 {
        journal.append(&record(n, 30)).unwrap();
    }
    let seen = wait_durable(&rx, journal.end());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), journal.end());
    let stats = journal.stats();
    assert_eq!(stats.durable, journal.end());
    assert!(stats.fsyncs >= 1);
}

#[test]
fn group_commit_shares_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, true);
    let hold = journal.hold_writer();
    for n in 0..100 {
        journal.append(&record(n, 30)).unwrap();
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing is durable while the writer is held"
    );
    drop(hold);
    wait_durable(&rx, journal.end());
    let stats = journal.stats();
    assert_eq!(stats.fsyncs, 1, "{stats:?}");
    assert_eq!(stats.batches, 1);
}

#[test]
fn readers_see_only_written_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, false);
    let hold = journal.hold_writer();
    let position = journal.append(&record(1, 10)).unwrap().position;
    let reader = journal.reader();
    assert!(matches!(
        reader.read(position),
        Err(StoreError::NotWritten { .. })
    ));
    assert_eq!(reader.records(Position(0), journal.end()).count(), 0);
    drop(hold);
    wait_durable(&rx, journal.end());
    let other_thread = std::thread::spawn(move || reader.read(position).unwrap());
    assert_eq!(other_thread.join().unwrap(), record(1, 10));
}

/// A release that cannot delete its segment fails the journal, as a failed write does: the
/// live state has let the segment go, and carrying on would release later segments as if it
/// were gone, leaving a gap the next start reads as lost records.
#[test]
fn a_release_that_cannot_delete_its_segment_fails_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx, _positions) = four_segments(dir.path(), true);
    wait_durable(&rx, journal.end());
    // The first segment's name taken by a directory that is not empty: deleting fails.
    let first = segment_path(dir.path(), 0);
    fs::remove_file(&first).unwrap();
    fs::create_dir(&first).unwrap();
    fs::write(first.join("keep"), b"x").unwrap();
    journal.release(Position(0)).unwrap();
    // The writer runs the release with the next batch, or at once if it is idle: this append
    // may already find the journal failed.
    let _ = journal.append(&record(100, 50));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while journal.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal carried on after a failed release"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(journal.append(&record(101, 50)).is_err());
}

#[test]
fn release_waits_for_the_batch_and_leaves_tombstones_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx, positions) = four_segments(dir.path(), true);
    wait_durable(&rx, journal.end());
    let (a, b, c, d) = (0, positions[3], positions[6], positions[9]);
    let hold = journal.hold_writer();
    journal.append(&record(1, 50)).unwrap(); // same size: no rotation
    journal.release(Position(b)).unwrap();
    assert!(matches!(
        journal.release(Position(d)),
        Err(StoreError::NotReleasable { .. })
    ));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        segment_files(dir.path()).len(),
        4,
        "nothing deleted while held"
    );
    drop(hold);
    wait_durable(&rx, journal.end());
    journal.append(&record(2, 50)).unwrap(); // a later batch: the release ran
    wait_durable(&rx, journal.end());
    let files = segment_files(dir.path());
    assert_eq!(files[1], (b, 0), "b is a tombstone after live a");
    let reader = journal.reader();
    assert!(matches!(
        reader.read(Position(positions[4])),
        Err(StoreError::NotRetained { .. })
    ));
    assert_eq!(journal.stats().segments, 3);
    let end = journal.end();
    journal.close().unwrap();

    // Recovery accepts the released range.
    let (mut journal, rx) = open(dir.path(), 1 << 20, true);
    assert_eq!(journal.end(), end);
    assert_eq!(
        journal.segments(),
        vec![
            SegmentInfo {
                start: Position(a),
                end: Position(b)
            },
            SegmentInfo {
                start: Position(c),
                end: Position(d)
            },
            SegmentInfo {
                start: Position(d),
                end
            },
        ]
    );
    assert_eq!(
        journal.reader().read(Position(positions[7])).unwrap(),
        record(7, 50)
    );
    // Releasing the first deletes it and the tombstone after it.
    journal.release(Position(a)).unwrap();
    journal.append(&record(13, 1)).unwrap();
    wait_durable(&rx, journal.end());
    journal.append(&record(14, 1)).unwrap();
    wait_durable(&rx, journal.end());
    let starts: Vec<u64> = segment_files(dir.path()).iter().map(|f| f.0).collect();
    assert_eq!(starts, vec![c, d]);
    assert_eq!(journal.reader().oldest(), Position(c));
}

/// `Frames::record_at` (a takeover reading live messages back through one read-ahead) reads
/// what `read` does: ascending with gaps, across segments, past the read-ahead, backwards.
#[test]
fn positioned_reads_through_the_read_ahead_match_single_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 4 << 20, false);
    // Bodies of 300 KiB: a few records fill the 1 MiB read-ahead, and segments rotate.
    let positions: Vec<Position> = (0..30)
        .map(|n| journal.append(&record(n, 300 << 10)).unwrap().position)
        .collect();
    wait_durable(&rx, journal.end());
    assert!(segment_files(dir.path()).len() > 2);
    let reader = journal.reader();
    let mut frames = reader.frames(Position(0), journal.end());
    let order = [0, 1, 3, 4, 9, 10, 11, 20, 29, 2, 0, 15, 16];
    for i in order {
        let read = frames.record_at(positions[i]).unwrap();
        assert_eq!(read, reader.read(positions[i]).unwrap(), "record {i}");
        assert_eq!(read, record(i as u64, 300 << 10), "record {i}");
    }
    assert!(matches!(
        frames.record_at(journal.end()),
        Err(StoreError::NotWritten { .. })
    ));
}

#[test]
fn truncate_then_append_frames_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx, positions) = four_segments(dir.path(), false);
    wait_durable(&rx, journal.end());
    let reader = journal.reader();
    let frames: Vec<(Position, Bytes)> = reader
        .frames(Position(0), journal.end())
        .map(Result::unwrap)
        .collect();
    let cut = Position(positions[4]);
    journal.truncate(cut).unwrap();
    assert_eq!(journal.end(), cut);
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert!(matches!(
        reader.read(Position(positions[5])),
        Err(StoreError::NotWritten { .. })
    ));
    assert!(matches!(
        journal.append_frame(Position(positions[5]), frames[5].1.clone()),
        Err(StoreError::NotContiguous { .. })
    ));
    assert!(matches!(
        journal.append_frame(cut, Bytes::from_static(b"garbage!garbage")),
        Err(StoreError::InvalidFrame { .. })
    ));
    for (position, frame) in &frames[4..] {
        let appended = journal.append_frame(*position, frame.clone()).unwrap();
        assert_eq!(appended.position, *position);
    }
    wait_durable(&rx, journal.end());
    journal.close().unwrap();
    let (journal, _rx) = open(dir.path(), 1 << 20, false);
    let again: Vec<(Position, Bytes)> = journal
        .reader()
        .frames(Position(0), journal.end())
        .map(Result::unwrap)
        .collect();
    assert_eq!(again, frames);
}

#[test]
fn a_retained_segment_that_cannot_be_read_stops_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 20, false);
    let position = journal.append(&record(1, 10)).unwrap().position;
    wait_durable(&rx, journal.end());
    // The segment vanishes under the journal (a lost disk, an operator's mistake).
    fs::remove_file(segment_path(dir.path(), 0)).unwrap();
    let reader = journal.reader();
    assert!(matches!(reader.read(position), Err(StoreError::Io { .. })));
    assert!(
        matches!(journal.failure(), Some(StoreError::JournalFailed(m)) if m.contains("cannot read the journal")),
        "{:?}",
        journal.failure()
    );
    assert!(matches!(
        journal.append(&record(2, 10)),
        Err(StoreError::JournalFailed(_))
    ));
    assert!(reader
        .frames(Position(0), journal.end())
        .next()
        .is_some_and(|frame| frame.is_err()));
}

/// A journal in `dir` whose writer failed (the next segment's file was in the way) after
/// the first record, durable up to the returned position.
fn failed_journal(dir: &Path) -> (Journal, mpsc::Receiver<Position>, Position) {
    let (mut journal, rx) = open(dir, 1, false);
    journal.append(&record(1, 10)).unwrap();
    let durable = journal.end();
    wait_durable(&rx, durable);
    // The next segment's file already exists: creating it fails in the writer.
    fs::write(segment_path(dir, durable.0), b"in the way").unwrap();
    let appended = journal.append(&record(2, 10)).unwrap();
    assert!(appended.new_segment);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while journal.append(&record(3, 10)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal never failed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (journal, rx, durable)
}

#[test]
fn a_failed_write_stops_the_journal_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx, durable) = failed_journal(dir.path());
    assert!(matches!(
        journal.append(&record(4, 10)),
        Err(StoreError::JournalFailed(_))
    ));
    assert!(
        rx.try_iter().all(|p| p <= durable),
        "nothing reported after the failure"
    );
    assert_eq!(journal.stats().durable, durable);
    assert!(matches!(journal.close(), Err(StoreError::JournalFailed(_))));
}

/// A request that waits for the writer's answer (a truncation, a switch of fsync) made
/// after the writer stopped on a failure gets that failure; it used to wait for ever.
#[test]
fn requests_after_a_failure_get_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _rx, durable) = failed_journal(dir.path());
    let (done, answered) = mpsc::channel();
    std::thread::spawn(move || {
        let truncated = journal.truncate(durable);
        let fsync = journal.set_fsync(true);
        let _ = done.send((truncated, fsync));
    });
    let (truncated, fsync) = answered
        .recv_timeout(Duration::from_secs(10))
        .expect("requests made after the failure were never answered");
    assert!(
        matches!(truncated, Err(StoreError::JournalFailed(_))),
        "{truncated:?}"
    );
    assert!(
        matches!(fsync, Err(StoreError::JournalFailed(_))),
        "{fsync:?}"
    );
}

fn physical_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[test]
fn segments_are_preallocated_and_reopen_finds_the_end_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let log_size = 64 << 10;
    let path = segment_path(dir.path(), 0);
    let (mut journal, rx) = open(dir.path(), log_size, true);
    assert_eq!(physical_len(&path), log_size, "preallocated at creation");
    let mut expected = Vec::new();
    for n in 0..5 {
        let appended = journal.append(&record(n, 100)).unwrap();
        expected.push((appended.position, record(n, 100)));
    }
    // A record that prost encodes as nothing still takes a non-empty frame.
    let empty = journal.append(&Record::default()).unwrap();
    assert_eq!(empty.len, FRAME_HEADER_LEN as u64 + 2);
    expected.push((empty.position, Record::default()));
    wait_durable(&rx, journal.end());
    assert_eq!(physical_len(&path), log_size, "frames overwrite in place");
    let end = journal.end();
    journal.close().unwrap();

    let (mut journal, rx) = open(dir.path(), log_size, true);
    assert_eq!(journal.end(), end);
    assert_eq!(all_records(&journal), expected);
    assert_eq!(physical_len(&path), log_size);
    let next = journal.append(&record(9, 10)).unwrap();
    assert_eq!(next.position, end);
    wait_durable(&rx, journal.end());
    journal.close().unwrap();
    let (journal, _rx) = open(dir.path(), log_size, false);
    assert_eq!(all_records(&journal).len(), 7);
    // An old journal without preallocation (data to the end of the file) still opens.
    let end = journal.end();
    journal.close().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(end.0)
        .unwrap();
    let (journal, _rx) = open(dir.path(), log_size, false);
    assert_eq!(journal.end(), end);
    assert_eq!(physical_len(&path), log_size);
}

#[test]
fn rotation_takes_the_prepared_zero_filled_segment_and_reopen_ignores_a_leftover() {
    let dir = tempfile::tempdir().unwrap();
    let log_size = 4 << 10;
    let (mut journal, rx) = open(dir.path(), log_size, true);
    let mut expected = Vec::new();
    for n in 0..40 {
        let appended = journal.append(&record(n, 300)).unwrap();
        expected.push((appended.position, record(n, 300)));
    }
    wait_durable(&rx, journal.end());
    let segments: Vec<u64> = journal
        .shared
        .segments
        .read()
        .unwrap()
        .keys()
        .copied()
        .collect();
    assert!(segments.len() >= 3, "rotated: {segments:?}");
    let current = *segments.last().unwrap();
    let current_path = segment_path(dir.path(), current);
    assert_eq!(
        physical_len(&current_path),
        log_size,
        "prepared to log_size"
    );
    let bytes = fs::read(&current_path).unwrap();
    let data = (journal.end().0 - current) as usize;
    assert!(
        bytes[data..].iter().all(|&b| b == 0),
        "zeros after the data"
    );
    let end = journal.end();
    journal.close().unwrap();
    // A spare left by a killed process (here: garbage in it) is not part of the journal.
    fs::write(dir.path().join(SPARE_FILE), b"not a segment").unwrap();
    let (journal, _rx) = open(dir.path(), log_size, true);
    assert_eq!(journal.end(), end);
    assert_eq!(all_records(&journal), expected);
    journal.close().unwrap();
}

#[test]
fn a_torn_frame_inside_a_preallocated_segment_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log_size = 64 << 10;
    let path = segment_path(dir.path(), 0);
    let (mut journal, _rx) = open(dir.path(), log_size, false);
    journal.append(&record(1, 100)).unwrap();
    let end = journal.end();
    let torn = record(2, 300);
    journal.append(&torn).unwrap();
    journal.close().unwrap();
    let full = fs::read(&path).unwrap();
    assert_eq!(full.len() as u64, log_size);
    let frame_end = (end.0 + frame_len(&torn)) as usize;
    // Cut the second frame anywhere after its first byte: the rest reads as zeros.
    for cut in [
        end.0 as usize + 1,
        end.0 as usize + 4,
        end.0 as usize + 8,
        frame_end - 1,
    ] {
        let mut bytes = full.clone();
        bytes[cut..frame_end].fill(0);
        fs::write(&path, &bytes).unwrap();
        let (mut journal, rx) = open(dir.path(), log_size, false);
        assert_eq!(journal.end(), end, "cut at {cut}");
        assert_eq!(physical_len(&path), log_size, "cut at {cut}");
        let on_disk = fs::read(&path).unwrap();
        assert!(
            on_disk[end.0 as usize..].iter().all(|&b| b == 0),
            "the torn bytes are gone (cut at {cut})"
        );
        assert_eq!(all_records(&journal).len(), 1);
        journal.append(&record(3, 5)).unwrap();
        wait_durable(&rx, journal.end());
        journal.close().unwrap();
    }
    // A zero header followed by data (a lost write in the middle) also ends the journal.
    let mut bytes = full.clone();
    bytes[end.0 as usize..end.0 as usize + FRAME_HEADER_LEN].fill(0);
    fs::write(&path, &bytes).unwrap();
    let (journal, _rx) = open(dir.path(), log_size, false);
    assert_eq!(journal.end(), end);
    assert!(fs::read(&path).unwrap()[end.0 as usize..]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn rotation_cuts_finished_segments_and_tolerates_an_uncut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, rx, positions) = four_segments(dir.path(), true);
    wait_durable(&rx, journal.end());
    let log_size = positions[3];
    let end = journal.end();
    journal.close().unwrap();
    let starts = [0, positions[3], positions[6], positions[9]];
    for pair in starts.windows(2) {
        assert_eq!(
            physical_len(&segment_path(dir.path(), pair[0])),
            pair[1] - pair[0],
            "finished segment {} keeps only its data",
            pair[0]
        );
    }
    let current = segment_path(dir.path(), positions[9]);
    assert_eq!(physical_len(&current), log_size);

    // A crash before the cut reached the disk: a finished segment with a zero tail.
    let middle = segment_path(dir.path(), positions[3]);
    OpenOptions::new()
        .write(true)
        .open(&middle)
        .unwrap()
        .set_len(log_size + 500)
        .unwrap();
    let (journal, _rx) = open(dir.path(), log_size, true);
    assert_eq!(journal.end(), end);
    assert_eq!(all_records(&journal).len(), 10);
    assert_eq!(physical_len(&middle), positions[6] - positions[3]);
}

#[test]
fn skipping_from_an_empty_preallocated_segment_leaves_an_empty_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, rx) = open(dir.path(), 1 << 16, true);
    journal.append(&record(1, 10)).unwrap();
    let first_end = journal.end();
    // A fresh segment at the end (no frame yet), then a skip over a released range.
    assert!(!journal.skip_to(Position(1000)).unwrap());
    assert!(journal.skip_to(Position(5000)).unwrap());
    let appended = journal.append(&record(2, 10)).unwrap();
    assert_eq!(appended.position, Position(5000));
    wait_durable(&rx, journal.end());
    let end = journal.end();
    journal.close().unwrap();
    assert_eq!(physical_len(&segment_path(dir.path(), first_end.0)), 0);
    let (journal, _rx) = open(dir.path(), 1 << 16, true);
    assert_eq!(journal.end(), end);
    assert_eq!(
        journal.reader().read(Position(5000)).unwrap(),
        record(2, 10)
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, _rx) = open(dir.path(), 1 << 20, false);
    let second = Journal::open(
        JournalOptions {
            directory: dir.path().to_path_buf(),
            log_size: 1 << 20,
            fsync: false,
            only_copy: false,
        },
        Box::new(|_| {}),
    );
    assert!(matches!(second, Err(StoreError::Locked(_))));
}

/// The files of `dir` this process holds open.
#[cfg(target_os = "linux")]
fn open_files_in(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
#[cfg(target_os = "linux")]
fn reading_back_many_segments_keeps_a_bounded_number_of_files_open() {
    let tmp = tempfile::tempdir().unwrap();
    // As /proc/self/fd names the files.
    let dir = tmp.path().canonicalize().unwrap();
    let len = frame_len(&record(0, 100));
    // One record per segment: reading them all back touches every segment.
    let (mut journal, rx) = open(&dir, len + len / 2, false);
    let segments = MAX_OPEN_READERS as u64 * 2;
    let positions: Vec<Position> = (0..segments)
        .map(|n| journal.append(&record(n, 100)).unwrap().position)
        .collect();
    wait_durable(&rx, journal.end());
    assert_eq!(segment_files(&dir).len() as u64, segments);
    let reader = journal.reader();
    for round in 0..2 {
        for (n, &position) in positions.iter().enumerate() {
            let record = reader.read(position).unwrap();
            assert_eq!(record, self::record(n as u64, 100), "round {round}");
        }
        // The bound, plus the lock file, the segment being written and the one prepared next.
        let open = open_files_in(&dir);
        assert!(
            open <= MAX_OPEN_READERS + 3,
            "{open} files open after reading {segments} segments back"
        );
    }
    assert!(journal.failure().is_none());
}
