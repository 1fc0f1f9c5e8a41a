//! The journal: recovery behind the epoch start, who writes records, failures, record size.

use super::*;

/// A store in `dir` (1 MiB segments, no fsync, every body in memory) reporting durable ends
/// to `on_durable`.
fn open_store(
    dir: &std::path::Path,
    on_durable: impl FnMut() -> crate::store::DurableCallback,
) -> (Store, crate::store::Recovered) {
    crate::store::open_when_unlocked(
        crate::store::StoreOptions {
            directory: dir.to_path_buf(),
            log_size: 1 << 20,
            fsync: false,
            only_copy: false,
            hold_releases: false,
            recovered_bodies: u64::MAX,
        },
        on_durable,
    )
}

/// A new master may have inherited records that its predecessor never had confirmed: they
/// are delivered only once its epoch-start record is confirmed (on a quorum), never before.
#[tokio::test]
async fn recovered_messages_wait_for_the_epoch_start_to_be_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    send_numbered(
        &Broker::start_for_tests(dir.path(), BrokerOptions::default()),
        3,
    )
    .await;
    // Reopened as a master is: durable reports go to the quorum, which confirms nothing yet.
    let (store, recovered) = open_store(dir.path(), || Box::new(|_| {}));
    let epoch = recovered.epoch + 1;
    let broker = Broker::start(store, recovered, epoch, BrokerOptions::default()).unwrap();
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "s", queue("q"), 10);
    assert_eq!(broker.queue_depth("queue://q"), 0);
    assert!(
        rx.try_recv().is_err(),
        "delivered before the epoch start is held"
    );

    // The quorum holds everything up to the end of the journal, epoch start included.
    broker.confirm(Position(broker.stats().journal_end));
    for i in 0..3 {
        assert_eq!(body(&next(&mut rx).await), i.to_string());
    }
    assert_eq!(broker.stats().enqueued, 0, "recovered, not enqueued");
}

#[tokio::test]
async fn a_lone_sender_writes_its_own_records_and_concurrent_senders_leave_them_to_the_journal() {
    // A broker whose durable reports say which thread wrote the batch.
    let dir = tempfile::tempdir().unwrap();
    let writers = Arc::new(Mutex::new(Vec::new()));
    let confirm = ConfirmLater::default();
    let (seen, confirming) = (writers.clone(), confirm.clone());
    let (store, recovered) = open_store(dir.path(), move || {
        let (seen, confirming) = (seen.clone(), confirming.clone());
        Box::new(move |p| {
            seen.lock().unwrap().push(std::thread::current().id());
            confirming.durable(p);
        })
    });
    let epoch = recovered.epoch + 1;
    let broker = Broker::start(store, recovered, epoch, BrokerOptions::default()).unwrap();
    confirm.attach(&broker);
    let this_thread = std::thread::current().id();
    let (a, _ra) = broker.open_session(None);
    let (b, _rb) = broker.open_session(None);

    // Once `a` has been the only sender for a while, its records are written by the thread
    // that sends them, before `send` returns.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut sent = 0;
    loop {
        sent += 1;
        writers.lock().unwrap().clear();
        let confirmation = a.send(&queue("q"), persistent("a"), None).unwrap();
        let inline = *writers.lock().unwrap() == [this_thread];
        confirmation.await.unwrap();
        if inline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a lone sender does not write its own records"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Another session sends: from now on (for a while) the journal's writer thread writes.
    for (n, session) in [&b, &a, &b].into_iter().enumerate() {
        writers.lock().unwrap().clear();
        session
            .send(&queue("q"), persistent(&format!("mixed {n}")), None)
            .unwrap()
            .await
            .unwrap();
        let written_by = writers.lock().unwrap().clone();
        assert!(
            !written_by.contains(&this_thread),
            "send {n}: {written_by:?}"
        );
    }
    assert_eq!(
        broker.queue_depth("queue://q"),
        sent + 3,
        "every send confirmed"
    );
}

/// A send whose record was in a batch the journal then failed to write (a full disk, say) is
/// answered with the store's failure, not left waiting for a confirmation that cannot come;
/// later sends are refused at once.
#[tokio::test]
async fn a_send_waiting_when_the_journal_fails_is_answered_with_the_failure() {
    let f = fixture(BrokerOptions {
        expiry_sweep: Duration::from_millis(20),
        ..BrokerOptions::default()
    })
    .await;
    let (session, _) = f.broker.open_session(None);
    session
        .send(&queue("q"), persistent("kept"), None)
        .unwrap()
        .await
        .unwrap();
    let hold = lock(&f.broker.shared).store().hold_journal();
    lock(&f.broker.shared).store().fail_journal_after_hold();
    let waiting = session
        .send(&queue("q"), persistent("in the failed batch"), None)
        .unwrap();
    drop(hold);
    let result = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting send is answered");
    assert!(
        matches!(&result, Err(BrokerError::StoreFailed(reason)) if reason.contains("crashed")),
        "{result:?}"
    );
    let later = session.send(&queue("q"), persistent("later"), None);
    assert!(
        matches!(later, Err(BrokerError::StoreFailed(_))),
        "{later:?}"
    );
}

/// A persistent message too large for one journal record (a `max_frame_size` raised past it)
/// is refused, naming the limit; the store keeps working for every other send. So is a
/// delayed non-persistent one (stored in the holding area until due).
#[tokio::test]
async fn a_message_too_large_for_one_record_is_refused_and_the_store_carries_on() {
    let f = fixture(BrokerOptions {
        memory_limit: u64::MAX,
        ..scheduling()
    })
    .await;
    let (s, _) = f.broker.open_session(None);
    let mut big = persistent("");
    big.body = Bytes::from(vec![0u8; crate::store::record::MAX_RECORD_LEN + 1]);
    let delayed_big = NewMessage {
        persistent: false,
        headers: vec![Header::text(schedule::SCHEDULED_DELAY, "60000")],
        ..big.clone()
    };
    let error = s.send(&queue("q"), big, None).unwrap_err();
    assert!(
        matches!(&error, BrokerError::InvalidMessage(m) if m.contains("journal's limit")),
        "{error}"
    );
    let error = s.send(&queue("q"), delayed_big, None).unwrap_err();
    assert!(
        matches!(&error, BrokerError::InvalidMessage(m) if m.contains("a delayed") && m.contains("journal's limit")),
        "{error}"
    );
    send_settled(&s, &queue("q"), persistent("small")).await;
    assert_eq!(f.broker.queue_depth("queue://q"), 1);
    assert_eq!(f.broker.store_failure(), None);
}
