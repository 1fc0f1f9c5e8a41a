//! The scheduler's management destination: browsing and removing scheduled jobs.

use super::*;

/// `body`, persistent, with the client's id `id`, delayed `delay_ms`, and `more` headers.
fn delayed_as(id: &str, body: &str, delay_ms: i64, more: &[(&str, &str)]) -> NewMessage {
    let mut m = delayed(body, &delay_ms.to_string());
    m.message_id = Some(id.into());
    m.headers
        .extend(more.iter().map(|(n, v)| Header::text(*n, *v)));
    m
}

/// A request to ActiveMQ's scheduler management destination with these headers.
async fn manage(s: &Session, headers: &[(&str, &str)]) {
    let request = NewMessage {
        headers: headers.iter().map(|(n, v)| Header::text(*n, *v)).collect(),
        ..persistent("")
    };
    send_settled(s, &topic(schedule::MANAGEMENT_DESTINATION), request).await;
}

/// A REMOVE request to the scheduler management destination for job `id`.
async fn remove_job(s: &Session, id: &str) {
    manage(
        s,
        &[
            (schedule::ACTION, schedule::REMOVE),
            (schedule::SCHEDULED_ID, id),
        ],
    )
    .await;
}

/// An `action` request to the scheduler management destination for the jobs due from `start`
/// to `end` (ms since the epoch), replying to `queue://replies`.
async fn ranged(p: &Session, action: &str, start: i64, end: i64) {
    let (start, end) = (start.to_string(), end.to_string());
    let range = [
        (schedule::ACTION, action),
        ("reply-to", "queue://replies"),
        (schedule::ACTION_START_TIME, &start),
        (schedule::ACTION_END_TIME, &end),
    ];
    manage(p, &range).await;
}

/// A BROWSE request to the scheduler management destination, replying to `reply_to`.
async fn browse_to(s: &Session, reply_to: &str) {
    let request = [(schedule::ACTION, schedule::BROWSE), ("reply-to", reply_to)];
    manage(s, &request).await;
}

/// The next `n` deliveries on `rx`, and no more queued: a request's copies are published under
/// the lock before its send returns.
async fn exactly(rx: &mut UnboundedReceiver<Delivery>, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next(rx).await);
    }
    assert!(rx.try_recv().is_err(), "more than {n}");
    got
}

/// Three scheduled jobs: `a` to `q` in 60 s, `b` to topic `t` in 60 s with two repeats, `c` to
/// `q` in 30 s; stored and held.
async fn three_jobs(p: &Session) {
    send_settled(p, &queue("q"), delayed_as("ID:p:1", "a", 60_000, &[])).await;
    let repeats = [
        (schedule::SCHEDULED_PERIOD, "1000"),
        (schedule::SCHEDULED_REPEAT, "2"),
    ];
    send_settled(p, &topic("t"), delayed_as("ID:p:2", "b", 60_000, &repeats)).await;
    send_settled(p, &queue("q"), delayed_as("ID:p:3", "c", 30_000, &[])).await;
}

/// A broker holding [`three_jobs`], the session that sent them, and a session subscribed to
/// `queue://replies` with its deliveries, then the clock just before and just after the sends
/// (ms since the epoch).
type Jobs = (
    Fixture,
    Session,
    Session,
    UnboundedReceiver<Delivery>,
    i64,
    i64,
);

async fn three_jobs_and_replies() -> Jobs {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let (c, rx) = f.broker.open_session(None);
    subscribe(&c, "replies", queue("replies"), 100);
    let before = now_millis();
    three_jobs(&p).await;
    let after = now_millis();
    (f, p, c, rx, before, after)
}

/// BROWSE sends a copy of each scheduled job (one for a repeated one) to the request's
/// reply-to, in due order, as ActiveMQ's `SchedulerBroker` does: non-persistent, an id of its
/// own, JMSType `Advisory`, the job's destination in `original-destination`, its job id in
/// `scheduledJobId`. The jobs stay scheduled; the request reaches no subscriber of the
/// management topic; without a reply-to, or with an unknown action, nothing happens.
#[tokio::test]
async fn scheduler_management_browse_sends_a_copy_of_each_job_to_the_reply_to() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "replies", queue("replies"), 100);
    subscribe(&c, "mgmt", topic(schedule::MANAGEMENT_DESTINATION), 100);
    subscribe(&c, "q", queue("q"), 100);
    three_jobs(&p).await;
    assert_eq!(f.broker.stats().scheduled, 5);
    manage(&p, &[(schedule::ACTION, schedule::BROWSE)]).await;
    manage(
        &p,
        &[(schedule::ACTION, "PURGE"), ("reply-to", "queue://replies")],
    )
    .await;
    browse_to(&p, "queue://replies").await;
    let copies = exactly(&mut rx, 3).await;
    let bodies: Vec<_> = copies.iter().map(body).collect();
    assert_eq!(bodies, ["c", "a", "b"]);
    for (d, (id, from)) in copies.iter().zip([
        ("ID:p:3", "queue://q"),
        ("ID:p:1", "queue://q"),
        ("ID:p:2", "topic://t"),
    ]) {
        assert_eq!(d.message.destination, "queue://replies");
        assert!(!d.message.persistent);
        assert_ne!(d.message.message_id, id);
        assert_eq!(header(d, schedule::SCHEDULED_ID), Some(id));
        assert_eq!(header(d, "original-destination"), Some(from));
        assert_eq!(
            header(d, super::JMS_TYPE_HEADER),
            Some(schedule::BROWSE_TYPE)
        );
    }
    assert_eq!(f.broker.stats().scheduled, 5, "browsing removes nothing");
}

/// BROWSE with a start and an end time sends only the jobs due in that range (inclusive).
#[tokio::test]
async fn scheduler_management_browse_with_a_range_sends_only_the_jobs_due_in_it() {
    let (_f, p, _c, mut rx, before, after) = three_jobs_and_replies().await;
    ranged(&p, schedule::BROWSE, before + 30_000, after + 30_000).await;
    let copies = exactly(&mut rx, 1).await;
    assert_eq!(header(&copies[0], schedule::SCHEDULED_ID), Some("ID:p:3"));
    // An empty range (its end before its start) sends nothing. The sends may all fall in one
    // millisecond (`before == after`), so the range is inverted around c's due time.
    ranged(&p, schedule::BROWSE, after + 30_001, before + 29_999).await;
    assert!(rx.try_recv().is_err());
}

/// REMOVE removes the job whose id the request carries (every delivery of a repeated one);
/// an unknown id, or none, removes nothing. The removal is journaled: a restart does not
/// bring the job back, and what was not removed is still delivered when due.
#[tokio::test]
async fn scheduler_management_remove_takes_one_job_out_also_across_a_restart() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    three_jobs(&p).await;
    manage(&p, &[(schedule::ACTION, schedule::REMOVE)]).await;
    remove_job(&p, "ID:nobody:9").await;
    assert_eq!(f.broker.stats().scheduled, 5);
    remove_job(&p, "ID:p:2").await;
    assert_eq!(f.broker.stats().scheduled, 2);
    remove_job(&p, "ID:p:1").await;
    assert_eq!(f.broker.stats().scheduled, 1);
    let dir = f._dir;
    drop((p, f.broker));
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    assert_eq!(broker.stats().scheduled, 1);
    let (p, _) = broker.open_session(None);
    let (c, mut rx) = broker.open_session(None);
    subscribe(&c, "replies", queue("replies"), 100);
    browse_to(&p, "queue://replies").await;
    let left = exactly(&mut rx, 1).await;
    assert_eq!(body(&left[0]), "c");
}

/// REMOVEALL removes every job, or those due in its range; journaled, as REMOVE.
#[tokio::test]
async fn scheduler_management_removeall_takes_every_job_or_those_in_range_out_also_across_a_restart(
) {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let before = now_millis();
    three_jobs(&p).await;
    let after = now_millis();
    let (start, end) = ((before + 59_000).to_string(), (after + 70_000).to_string());
    manage(
        &p,
        &[
            (schedule::ACTION, schedule::REMOVEALL),
            (schedule::ACTION_START_TIME, &start),
            (schedule::ACTION_END_TIME, &end),
        ],
    )
    .await;
    assert_eq!(f.broker.stats().scheduled, 1, "c, due in 30 s, stays");
    let dir = f._dir;
    drop((p, f.broker));
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    assert_eq!(broker.stats().scheduled, 1);
    let (p, _) = broker.open_session(None);
    manage(&p, &[(schedule::ACTION, schedule::REMOVEALL)]).await;
    assert_eq!(broker.stats().scheduled, 0);
    drop((p, broker));
    let broker = Broker::start_for_tests(dir.path(), scheduling());
    assert_eq!(broker.stats().scheduled, 0);
}

/// A JMS client's BROWSE names its temporary queue as reply-to (`temp-queue://ID:...`, the
/// core's form of OpenWire's temporary queue, as ActiveMQ's docs and tests use it): the copies
/// go to that queue (the core's queue of that name). Before, the request was refused as an
/// invalid destination.
#[tokio::test]
async fn scheduler_management_browse_replies_to_a_temporary_queue() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "replies", queue("ID:client-1:1:1"), 100);
    three_jobs(&p).await;
    browse_to(&p, "temp-queue://ID:client-1:1:1").await;
    let copies = exactly(&mut rx, 3).await;
    assert_eq!(copies.iter().map(body).collect::<Vec<_>>(), ["c", "a", "b"]);
    assert_eq!(copies[0].message.destination, "queue://ID:client-1:1:1");
}

/// A browse copy carries the scheduling properties its message was sent with, as ActiveMQ's
/// (its job keeps the message as sent; ActiveMQ's own test selects copies by
/// `AMQ_SCHEDULED_DELAY`), while every delivery, also one due at once, has none of them.
#[tokio::test]
async fn scheduler_management_browse_copies_keep_the_scheduling_properties() {
    let f = fixture(scheduling()).await;
    let (p, _) = f.broker.open_session(None);
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "replies", queue("replies"), 100);
    subscribe(&c, "q", queue("q"), 100);
    three_jobs(&p).await;
    browse_to(&p, "queue://replies").await;
    let copies = exactly(&mut rx, 3).await;
    let scheduling = |d: &Delivery| {
        [
            schedule::SCHEDULED_DELAY,
            schedule::SCHEDULED_PERIOD,
            schedule::SCHEDULED_REPEAT,
        ]
        .map(|name| header(d, name).map(str::to_string))
    };
    assert_eq!(scheduling(&copies[0]), [Some("30000".into()), None, None]);
    assert_eq!(
        scheduling(&copies[2]),
        [Some("60000".into()), Some("1000".into()), Some("2".into())]
    );
    let now = NewMessage {
        headers: vec![
            Header::text(schedule::SCHEDULED_DELAY, "0"),
            Header::text(schedule::SCHEDULED_PERIOD, "0"),
            Header::text(schedule::SCHEDULED_REPEAT, "1"),
        ],
        ..persistent("now")
    };
    send_settled(&p, &queue("q"), now).await;
    for _ in 0..2 {
        let d = next(&mut rx).await;
        assert_eq!(body(&d), "now");
        assert_eq!(scheduling(&d), [None, None, None]);
        assert!(header(&d, schedule::SCHEDULED_ID).is_some());
    }
}

/// The range is in the properties ActiveMQ's client sends, `ACTION_START_TIME` and
/// `ACTION_END_TIME` (the names its constants `AMQ_SCHEDULER_ACTION_START_TIME` and `_END_TIME`
/// hold), a string or a long. Before, ferromq read properties named as the constants, which no
/// client sends, and browsed everything.
#[tokio::test]
async fn scheduler_management_range_is_read_from_activemqs_property_names() {
    let (_f, p, _c, mut rx, before, after) = three_jobs_and_replies().await;
    let request = NewMessage {
        headers: vec![
            Header::text(schedule::ACTION, schedule::BROWSE),
            Header::text("reply-to", "queue://replies"),
            Header::text("ACTION_START_TIME", (after + 20_000).to_string()),
            Header {
                name: "ACTION_END_TIME".into(),
                value: (before + 40_000).to_string(),
                kind: PropertyType::Long as i32,
            },
        ],
        ..persistent("")
    };
    send_settled(&p, &topic(schedule::MANAGEMENT_DESTINATION), request).await;
    let copies = exactly(&mut rx, 1).await;
    assert_eq!(body(&copies[0]), "c");
}

/// A range selects the jobs whose next delivery is due in it, as ActiveMQ keeps a job under
/// its next run time: a range holding only a repeated job's later repeats browses nothing, and
/// a REMOVEALL whose range holds its next delivery removes its later repeats too. Before,
/// ferromq looked at each delivery on its own.
#[tokio::test]
async fn scheduler_management_range_selects_a_repeated_job_by_its_next_delivery() {
    // a and b due in 60 s, b then at 61 s and 62 s; c in 30 s.
    let (f, p, _c, mut rx, before, after) = three_jobs_and_replies().await;
    ranged(&p, schedule::BROWSE, after + 60_500, before + 62_500).await;
    assert!(rx.try_recv().is_err(), "only b's repeats are in the range");
    ranged(&p, schedule::BROWSE, before + 45_000, after + 60_500).await;
    let copies = exactly(&mut rx, 2).await;
    assert_eq!(copies.iter().map(body).collect::<Vec<_>>(), ["a", "b"]);
    // a's and b's first deliveries are due in the range and b's repeats (a second later) are
    // not, if the sends took less than a second; a machine too loaded for that skips this.
    if after - before < 1_000 {
        ranged(&p, schedule::REMOVEALL, before + 45_000, after + 60_000).await;
        assert_eq!(
            f.broker.stats().scheduled,
            1,
            "only c is left, none of b's repeats"
        );
        browse_to(&p, "queue://replies").await;
        let left = exactly(&mut rx, 1).await;
        assert_eq!(body(&left[0]), "c");
    }
}

/// Without `scheduler_support` a send to the management topic is an ordinary topic send.
#[tokio::test]
async fn scheduler_management_topic_is_an_ordinary_topic_without_scheduler_support() {
    let f = fixture(BrokerOptions::default()).await;
    let (c, mut rx) = f.broker.open_session(None);
    subscribe(&c, "mgmt", topic(schedule::MANAGEMENT_DESTINATION), 100);
    let (p, _) = f.broker.open_session(None);
    manage(&p, &[(schedule::ACTION, schedule::REMOVEALL)]).await;
    let d = next(&mut rx).await;
    assert_eq!(header(&d, schedule::ACTION), Some(schedule::REMOVEALL));
}
