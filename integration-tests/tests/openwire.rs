//! OpenWire as the stock ActiveMQ 5.17 Java JMS client sees it: each test starts its own
//! standalone ferromq broker and runs one scenario of `integration-tests/java/JmsCheck.java`
//! against `tcp://127.0.0.1:<port>` (see `ferromq_integration_tests::java`). The scenario checks
//! what the application sees (bodies, headers, properties, redelivery flags, what is left in a
//! queue) and prints `OK`/`FAIL` lines; a test fails with its `FAIL` lines and the broker's
//! warnings.
//!
//! Every scenario passes against real ActiveMQ (`integration-tests/java/run-reference.sh`).
//! `OPENWIRE_TEST_BROKER=activemq` runs these tests against that reference broker instead of
//! ferromq, to check the tests themselves.

use std::time::Duration;

use ferromq_integration_tests::java::{self, ReferenceBroker, SCENARIO_TIMEOUT};
use ferromq_integration_tests::{http_get, unique, BrokerProcess};

/// One broker setting as each broker takes it: ferromq's TOML, the reference broker's system
/// properties (see `RefBroker.java`).
#[derive(Default)]
struct Setting {
    ferromq: &'static str,
    reference: &'static [(&'static str, &'static str)],
}

/// The broker a test talks to.
enum Target {
    Ferromq {
        broker: Box<BrokerProcess>,
        _dir: tempfile::TempDir,
    },
    Reference(ReferenceBroker),
}

impl Target {
    fn start() -> Target {
        Target::start_with(&Setting::default())
    }

    /// A broker configured with `setting`, in ferromq's terms or in the reference broker's.
    fn start_with(setting: &Setting) -> Target {
        if std::env::var("OPENWIRE_TEST_BROKER").is_ok_and(|v| v == "activemq") {
            return Target::Reference(
                ReferenceBroker::start_with(setting.reference)
                    .unwrap_or_else(|e| panic!("reference broker: {e:#}")),
            );
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let broker = BrokerProcess::start(dir.path(), setting.ferromq)
            .unwrap_or_else(|e| panic!("starting ferromq: {e:#}"));
        Target::Ferromq {
            broker: Box::new(broker),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        match self {
            Target::Ferromq { broker, .. } => broker.url(),
            Target::Reference(broker) => broker.url(),
        }
    }

    /// For a failure message: the broker's warnings and errors.
    fn describe(&self) -> String {
        match self {
            Target::Ferromq { broker, .. } => {
                let notable: Vec<String> = broker
                    .logs()
                    .into_iter()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .collect();
                let n = notable.len();
                format!(
                    "ferromq at {} logged {n} warnings/errors{}{}",
                    broker.url(),
                    if n > 0 { ", the last ones:\n  " } else { "" },
                    notable[n.saturating_sub(20)..].join("\n  ")
                )
            }
            Target::Reference(broker) => format!("reference ActiveMQ at {}", broker.url()),
        }
    }
}

/// Runs `scenario` with `options` against a fresh broker; fails the test unless it passes.
fn check(scenario: &str, options: &[&str]) {
    check_with(&Setting::default(), scenario, options);
}

/// [`check`] against a broker configured with `setting`.
fn check_with(setting: &Setting, scenario: &str, options: &[&str]) {
    let target = Target::start_with(setting);
    let outcome = java::run_scenario(scenario, &target.url(), options, SCENARIO_TIMEOUT)
        .unwrap_or_else(|e| panic!("running JmsCheck {scenario}: {e:#}"));
    outcome.assert_passed(&target.describe());
}

/// 100 persistent text messages sent to a queue arrive in order, with their bodies, flagged
/// persistent and not redelivered; nothing else is left.
#[test]
fn persistent_texts_arrive_in_order() {
    check("queue-text", &["count=100"]);
}

/// Clients that speak an older OpenWire version (ActiveMQ 4.x spoke 1, 5.0–5.3 spoke 2 to 5):
/// the stock client told to negotiate version N (`wireFormat.version=N`, ActiveMQ's own
/// marshallers for it) sends and receives every message type, and queue order holds.
#[test]
fn older_openwire_versions_send_and_receive() {
    for version in [1, 3, 5] {
        let target = Target::start();
        let url = format!("{}?wireFormat.version={version}", target.url());
        for (scenario, options) in [("queue-text", &["count=50"][..]), ("message-types", &[])] {
            let outcome = java::run_scenario(scenario, &url, options, SCENARIO_TIMEOUT)
                .unwrap_or_else(|e| panic!("running JmsCheck {scenario} at v{version}: {e:#}"));
            outcome.assert_passed(&format!("version {version}: {}", target.describe()));
        }
    }
}

/// Text (with a NUL and a supplementary character, and 200 KB long), Bytes, Map, Object,
/// Stream and plain messages keep their bodies, typed properties (boolean, byte, short, int,
/// long, float, double, string) and headers (message id, correlation id, reply-to, type,
/// priority, expiration, timestamp, delivery mode, destination).
#[test]
fn every_message_type_keeps_body_properties_and_headers() {
    check("message-types", &[]);
}

/// A client with `jms.useCompression=true` (its bodies deflated): every message type arrives
/// with its body, and a queue of texts in order, as from stock ActiveMQ.
#[test]
fn compressed_bodies_of_every_type_arrive_intact() {
    check("message-types", &["compression=true"]);
    check("queue-text", &["count=50", "compression=true"]);
}

/// AUTO_ACKNOWLEDGE, with receive() and with a MessageListener: nothing comes back after a
/// reconnect.
#[test]
fn auto_acknowledge() {
    check("ack-auto", &[]);
}

/// CLIENT_ACKNOWLEDGE: unacknowledged messages come back after the connection closes, with
/// JMSRedelivered and a delivery count of 2; once acknowledged they are gone.
#[test]
fn client_acknowledge_redelivers_until_acknowledged() {
    check("ack-client", &[]);
}

/// CLIENT_ACKNOWLEDGE with a client that reorders its prefetch by priority: its ack's range
/// holds messages the application never got, so the broker refuses it (the exception
/// listener hears of it), as ActiveMQ does, and nothing is lost.
#[test]
fn a_client_ack_over_messages_never_handed_over_is_refused() {
    check("ack-client-out-of-order", &[]);
}

/// DUPS_OK_ACKNOWLEDGE: everything arrives; the lazy acknowledgements are settled when the
/// connection closes, so nothing comes back.
#[test]
fn dups_ok_acknowledge() {
    check("ack-dups-ok", &[]);
}

/// ActiveMQ's INDIVIDUAL_ACKNOWLEDGE: after acknowledging messages 0, 2 and 4 of six and
/// reconnecting, exactly 1, 3 and 5 come back, redelivered.
#[test]
fn individual_acknowledge_redelivers_only_the_unacknowledged() {
    check("ack-individual", &[]);
}

/// A transacted producer: invisible until commit, committed messages delivered, rolled back
/// ones never.
#[test]
fn transacted_producer_commit_and_rollback() {
    check("tx-producer", &[]);
}

/// A transacted consumer: rollback redelivers with JMSRedelivered, also to a new connection
/// after one closed with the transaction open; commit removes the messages.
#[test]
fn transacted_consumer_rollback_redelivers_and_commit_removes() {
    check("tx-consumer", &[]);
}

/// Two topic subscribers each get every message published while they are subscribed.
#[test]
fn topic_subscribers_each_get_every_message() {
    check("topic-pubsub", &[]);
}

/// A durable subscriber (client id + subscription name) gets what was published while it was
/// offline, non-persistent messages included; unsubscribe drops the subscription and its
/// backlog.
#[test]
fn durable_subscriber_gets_what_was_published_offline() {
    check("durable-topic", &[]);
}

/// A second connection with an open connection's client id fails to start with
/// `InvalidClientIDException`, as at ActiveMQ; the id is free once the first closes.
#[test]
fn a_client_id_is_refused_while_another_connection_holds_it() {
    check("client-id", &[]);
}

/// Wildcard topics as ActiveMQ reads them: a consumer on `<base>.>` gets every topic under
/// `<base>` (JMSDestination the topic published to) and nothing of `<base>x.app1`; a durable
/// subscriber on `<base>.*` keeps, while offline, the one-segment topics' messages only.
#[test]
fn wildcard_topic_consumers_and_durable_subscribers() {
    check("wildcard-topic", &[]);
}

/// ActiveMQ's virtual topics: a send to topic `VirtualTopic.T` is copied to each existing
/// consumer queue `Consumer.<system>.VirtualTopic.T` (competing consumers share it), addressed to
/// the queue with the topic as original destination, and still reaches the topic's subscribers.
#[test]
fn virtual_topic_consumer_queues() {
    check("virtual-topic", &[]);
}

/// Composite destinations: a send to queue `A,B,topic://T` reaches each member, addressed to
/// it, with a transacted session's commit and not its rollback; a consumer on `A,B` receives from
/// both.
#[test]
fn composite_destinations_send_to_and_receive_from_every_member() {
    check("composite-destinations", &[]);
}

/// Exclusive consumers (`queue://x?consumer.exclusive=true`, which the client turns into
/// ConsumerInfo.exclusive): the first one alone receives the queue; the next one takes over its
/// unacknowledged messages, in order, when it closes; a plain consumer gets nothing meanwhile.
#[test]
fn exclusive_consumer_takes_the_queue_and_hands_over_in_order() {
    check("exclusive-consumer", &[]);
}

/// noLocal (`createConsumer(topic, null, true)`, ConsumerInfo.noLocal): a topic subscriber does
/// not get its own connection's messages while a plain one of the same connection does; a
/// queue consumer leaves them to other consumers; a durable subscriber is not kept the messages
/// of the connection it was last active on, even while inactive, and back on a new connection
/// gets the others' messages kept meanwhile.
#[test]
fn no_local_subscribers_skip_their_own_connections_messages() {
    check("no-local", &[]);
}

/// Consumer priorities (`queue://x?consumer.priority=10`, ConsumerInfo.priority): the
/// high-priority consumer of prefetch 3 gets the first 3 of 6 messages though the low one
/// subscribed first, the low one the rest, and the high one the next once it has room again;
/// an exclusive consumer of higher priority takes a queue over from the first exclusive one,
/// which has it again when the other closes.
#[test]
fn higher_priority_consumers_are_served_first() {
    check("consumer-priority", &[]);
}

/// Message groups (JMSXGroupID): two consumers on one queue and groups A and B interleaved;
/// each group's messages reach one consumer in order, the first flagged
/// JMSXGroupFirstForConsumer; when A's consumer closes, A moves to the other, flagged again.
#[test]
fn message_groups_stick_to_one_consumer_in_order() {
    check("message-groups", &[]);
}

/// Request/reply through a TemporaryQueue: the responder (another connection) answers on
/// JMSReplyTo with the request's JMSCorrelationID. Once deleted (or if it never existed), a
/// send to it from a client that does not watch advisories is refused.
#[test]
fn temporary_queue_request_reply() {
    check("temp-queue-reply", &[]);
}

/// Selectors on an int property, a string property and JMSType (=, >, AND, IN, BETWEEN) get
/// exactly the matching messages; the others stay, in order, for a consumer without selector.
#[test]
fn selectors_on_properties_and_jms_type() {
    check("selectors", &[]);
}

/// A QueueBrowser (also with a selector, also of an empty queue) shows the messages without
/// consuming them.
#[test]
fn queue_browser_does_not_consume() {
    check("browser", &[]);
}

/// A QueueBrowser of a queue deeper than its prefetch (500) and the broker's browse page (400)
/// shows all 2,000 messages, in order, whatever the session's acknowledge mode and with a selector
/// that passes over most of them; with prefetch 0 (a pull per copy) a browser shows all of a
/// 200-message queue. ActiveMQ 5.17.2 shows them all too; ferromq showed the first 400.
#[test]
fn a_queue_browser_shows_a_deep_queue_whole() {
    check("browser-deep", &[]);
}

/// Prefetch 0 (`jms.prefetchPolicy.all=0`, MessagePull): receive(timeout) and receiveNoWait()
/// work, two consumers share the queue message by message, an empty queue answers a pull after
/// its timeout, and a waiting pull gets a message sent meanwhile.
#[test]
fn prefetch_zero_pulls_each_message() {
    check("prefetch-zero", &[]);
}

/// The failover pair through `failover:(tcp://...)` to one broker, nothing killed: the
/// producer's 300 messages are consumed exactly once (the cluster test kills the master).
#[test]
fn failover_url_to_one_broker_delivers_exactly_once() {
    let target = Target::start();
    let url = format!("failover:({})?initialReconnectDelay=100", target.url());
    let queue = format!("queue={}", unique("openwire.failover"));
    let produced = java::run_scenario(
        "failover-produce",
        &url,
        &[&queue, "count=300"],
        SCENARIO_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("running the producer: {e:#}"));
    produced.assert_passed(&target.describe());
    assert_eq!(
        produced.last_with("SENT_TOTAL ").map(str::trim),
        Some("300"),
        "the producer's count"
    );
    let consumed = java::run_scenario(
        "failover-consume",
        &url,
        &[&queue, "count=300"],
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("running the consumer: {e:#}"));
    consumed.assert_passed(&target.describe());
    let result = consumed.last_with("RESULT ").unwrap_or_default();
    assert!(
        result.contains("expected=300 received=300 distinct=300 duplicates=0 missing=0"),
        "consumer: {result}"
    );
}

/// A message the client rolls back past its redelivery policy's maximumRedeliveries is
/// poison-acked and moved to ActiveMQ.DLQ, and leaves its queue.
#[test]
fn poison_acked_messages_go_to_the_dead_letter_queue() {
    check("poison-dlq", &[]);
}

/// With the individual dead-letter strategy (ActiveMQ's `<individualDeadLetterStrategy/>` on
/// every destination), a poison-acked queue message goes to `ActiveMQ.DLQ.Queue.<queue>` and is
/// discarded if poison-acked there again, and a durable subscription's goes to
/// `ActiveMQ.DLQ.Topic.<topic>`.
#[test]
fn poison_acked_messages_go_to_their_own_dlq_with_the_individual_strategy() {
    let individual = Setting {
        ferromq: "[broker]\ndead_letter_strategy = \"individual\"\n",
        reference: &[("refbroker.deadLetterStrategy", "individual")],
    };
    check_with(&individual, "individual-dlq", &[]);
}

/// STOMP and JMS clients read each other's messages the way ActiveMQ maps them: a STOMP frame
/// without content-length reaches JMS as a TextMessage and one with content-length as a
/// BytesMessage, STOMP headers are string properties; a JMS TextMessage reaches STOMP with its
/// body, `correlation-id`, `type` and properties as headers.
#[test]
fn stomp_and_jms_read_each_others_messages() {
    stomp_and_jms_interop(&[]);
}

/// The same with the JMS client compressing its bodies (`jms.useCompression=true`): the STOMP
/// client reads the JMS text as plain text, as a STOMP client of ActiveMQ does.
#[test]
fn a_compressed_jms_message_reaches_stomp_as_plain_text() {
    stomp_and_jms_interop(&["compression=true"]);
}

fn stomp_and_jms_interop(options: &[&str]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(dir.path(), "").expect("starting ferromq");
    let from = unique("interop.from-stomp");
    let to = unique("interop.from-jms");
    let mut stomp = broker.client().expect("a STOMP connection");
    // Written by hand: the harness adds content-length to every frame with a body.
    let text_frame = format!(
        "SEND\ndestination:/queue/{from}\npersistent:true\ncolor:red\nreceipt:text\n\nhello from stomp\0"
    );
    stomp
        .write_raw(text_frame.as_bytes())
        .expect("STOMP text send");
    stomp
        .wait_receipt("text", Duration::from_secs(20))
        .expect("receipt of the text frame");
    stomp
        .send(
            &format!("/queue/{from}"),
            &[0, 1, 2, 255],
            &[("persistent", "true"), ("content-length", "4")],
        )
        .expect("STOMP bytes send");
    let outcome = java::run_scenario(
        "stomp-interop",
        &broker.url(),
        &[&[&format!("from={from}")[..], &format!("to={to}")], options].concat(),
        SCENARIO_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("running JmsCheck stomp-interop {options:?}: {e:#}"));
    outcome.assert_passed(&format!("ferromq at {}", broker.url()));
    stomp
        .subscribe("jms", &format!("/queue/{to}"), &[])
        .expect("STOMP subscribe");
    let message = stomp
        .recv_message(Duration::from_secs(20))
        .expect("the JMS message over STOMP");
    assert_eq!(message.text(), "hello from jms");
    assert_eq!(message.get("correlation-id"), Some("corr-1"));
    assert_eq!(message.get("type"), Some("greeting"));
    assert_eq!(message.get("count"), Some("7"));
    assert_eq!(message.get("color"), Some("blue"));
    // A property set to null, as ActiveMQ writes it.
    assert_eq!(message.get("unset"), Some("null"));
    assert_eq!(message.get("persistent"), Some("true"));
}

/// Producer flow control with the stock client: a producer of non-persistent messages is held
/// back (its asynchronous sends block in the socket write) once their queued bodies fill
/// `memory_limit`, instead of the broker holding everything it is sent; a consumer on another
/// connection then receives every message once, in order, and the producer finishes. The queued
/// non-persistent bytes, sampled while the scenario runs, never go far past the limit.
#[test]
fn a_non_persistent_jms_producer_is_held_back_at_the_memory_limit() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(
        dir.path(),
        "[broker]\nmemory_limit = \"64KiB\"\n[admin]\nbind = \"tcp://127.0.0.1:0\"\n",
    )
    .unwrap_or_else(|e| panic!("starting ferromq: {e:#}"));
    let admin = broker
        .admin_addr()
        .expect("the broker logs its admin endpoint");
    let url = broker.url();
    let scenario = std::thread::spawn(move || {
        java::run_scenario(
            "flow-control",
            &url,
            &["count=3000", "size=1024"],
            SCENARIO_TIMEOUT,
        )
    });
    let sample = "ferromq_queued_non_persistent_body_bytes ";
    let mut most = 0u64;
    while !scenario.is_finished() {
        if let Ok((_, text)) = http_get(&admin, "/metrics") {
            let queued = text
                .lines()
                .find_map(|l| l.strip_prefix(sample)?.parse::<u64>().ok());
            most = most.max(queued.unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let outcome = scenario
        .join()
        .expect("the scenario thread")
        .unwrap_or_else(|e| panic!("running JmsCheck flow-control: {e:#}"));
    outcome.assert_passed(&format!("ferromq at {}", broker.url()));
    assert!(
        broker.logs_contain("queued non-persistent message bodies reached memory_limit"),
        "the broker logs that it holds non-persistent producers back"
    );
    assert!(
        (64 * 1024..=192 * 1024).contains(&most),
        "queued non-persistent bytes peaked at {most}, for a memory_limit of 64 KiB and 3 MB sent"
    );
}

/// A JMS message over the broker's `max_frame_size` (ActiveMQ's `wireFormat.maxFrameSize`),
/// sent on a failover URL: a synchronous send fails with an exception naming the limit and the
/// connection carries on (the stock client would otherwise re-send it on every reconnect,
/// forever); in a transaction the commit fails and nothing of it is delivered.
#[test]
fn a_message_over_the_frame_limit_is_refused_and_the_connection_carries_on() {
    check_with(
        &Setting {
            ferromq: "[broker]\nmax_frame_size = \"1MiB\"\n",
            reference: &[("refbroker.maxFrameSize", "1048576")],
        },
        "oversized",
        &["max=1048576"],
    );
}

/// A JMS producer with a producer window (`jms.producerWindowSize`, ActiveMQ's client-side
/// producer flow control) blocks once its window of asynchronous sends is full until the
/// broker's ProducerAcks give credit back: without them it would stop for good after 64 KiB.
/// Non-persistent and transacted sends, each many windows' worth, all arrive.
#[test]
fn a_jms_producer_with_a_window_is_given_credit_back() {
    check("producer-window", &["count=1000", "window=65536"]);
}

/// ferromq with `scheduler_support`; the reference broker has its scheduler on for every
/// scenario (see `RefBroker.java`).
const SCHEDULER: Setting = Setting {
    ferromq: "[broker]\nscheduler_support = true\n",
    reference: &[],
};

/// Delayed delivery with `scheduler_support` (ActiveMQ's `schedulerSupport`): a message with
/// the long property `AMQ_SCHEDULED_DELAY` arrives no earlier than its delay after the send,
/// after a later undelayed one, without the property and with `scheduledJobId`, unseen by a
/// browser meanwhile; in a transaction the delay counts from the commit; with
/// `AMQ_SCHEDULED_PERIOD` and `AMQ_SCHEDULED_REPEAT` it arrives once a period, each time with
/// an id of its own.
#[test]
fn a_delayed_message_arrives_after_its_delay() {
    check_with(&SCHEDULER, "scheduled-delay", &[]);
}

/// As in ActiveMQ (whose scheduler sends a due message as if it were sent then), a delayed
/// non-persistent topic message reaches a durable subscription and a consumer made after the
/// send, when due, still non-persistent (scenario passed against stock ActiveMQ 5.17.2).
#[test]
fn a_delayed_topic_message_reaches_subscriptions_made_after_the_send() {
    check_with(&SCHEDULER, "scheduled-topic-later", &[]);
}

/// ActiveMQ's scheduler management destination (`ActiveMQ.Scheduler.Management`) driven by
/// the stock JMS client as ActiveMQ's docs show it: BROWSE (reply-to a temporary queue) gets
/// one copy per job in due order, with its body, a `scheduledJobId`, the scheduling properties
/// it was sent with, JMSType `Advisory` and its queue as original destination; a BROWSE with
/// start and end times (string or long properties) gets the jobs whose next delivery is in
/// that range; REMOVE with a browsed copy's `scheduledJobId` removes that job; REMOVEALL with a
/// range removes the jobs due next in it (a repeated one with its later repeats); REMOVEALL
/// removes every job; and no scheduled message reaches the queue's consumer (scenario passed
/// against stock ActiveMQ 5.17.2).
#[test]
fn the_scheduler_management_destination_browses_and_removes_jobs() {
    check_with(&SCHEDULER, "scheduler-management", &[]);
}
