//! The STOMP session against a real broker core, over in-memory streams.

use super::*;

#[test]
fn version_negotiation_picks_the_highest_common() {
    assert_eq!(negotiate_version(None), Some(Version::V1_0));
    assert_eq!(negotiate_version(Some("1.0,1.1,1.2")), Some(Version::V1_2));
    assert_eq!(negotiate_version(Some("1.1")), Some(Version::V1_1));
    assert_eq!(negotiate_version(Some("2.0")), None);
}

use tokio::io::DuplexStream;

/// A client on an in-memory pipe of `capacity` bytes to a `serve` task of `broker`.
/// The registry of temporary destinations that [`Peer::start`]ed connections share, as a
/// listener's connections do (an OpenWire connection's are registered there too).
static SHARED_TEMPS: std::sync::LazyLock<Arc<TempDestinations>> =
    std::sync::LazyLock::new(Arc::default);

struct Peer {
    io: DuplexStream,
    buf: BytesMut,
    decoder: Decoder,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// A connection announcing its temporary destinations where every other `start`ed one
    /// does (as a listener's connections share one registry), so that each sees the
    /// others' as existing.
    fn start(broker: &Broker, capacity: usize) -> Peer {
        Peer::start_sharing(broker, capacity, SHARED_TEMPS.clone())
    }

    /// As [`Peer::start`], announcing temporary destinations on `temps`.
    fn start_sharing(broker: &Broker, capacity: usize, temps: Arc<TempDestinations>) -> Peer {
        Peer::start_reading(broker, capacity, temps, BytesMut::new())
    }

    /// As [`Peer::start_sharing`], the session starting with `first_read` in its input (as a
    /// listener hands over the bytes it read to detect the protocol).
    fn start_reading(
        broker: &Broker,
        capacity: usize,
        temps: Arc<TempDestinations>,
        first_read: BytesMut,
    ) -> Peer {
        let (client, server) = tokio::io::duplex(capacity);
        let options = Arc::new(StompOptions {
            max_frame_size: 1 << 20,
            users: HashMap::new(),
            connect_timeout: Duration::from_secs(5),
            temps,
        });
        let broker = broker.clone();
        let peer = "127.0.0.1:1".parse().unwrap();
        let task = tokio::spawn(serve(server, first_read, broker, options, peer));
        Peer {
            io: client,
            buf: BytesMut::new(),
            decoder: Decoder::new(1 << 20),
            task,
        }
    }

    /// Connects with `headers` (one per line) and returns the CONNECTED frame.
    async fn connect(broker: &Broker, version: &str, headers: &str) -> (Peer, Frame) {
        let mut peer = Peer::start(broker, 1 << 20);
        peer.write(&format!("CONNECT\naccept-version:{version}\n{headers}\n\0"))
            .await;
        let connected = peer.next_frame().await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        peer.decoder.set_version(Version::parse(version).unwrap());
        (peer, connected)
    }

    async fn write(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.unwrap();
    }

    /// The next frame (heart-beats skipped); fails after 10 s.
    async fn next_frame(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(item) = self.decoder.decode(&mut self.buf).unwrap() {
                match item {
                    Item::Frame(f) => return f,
                    Item::HeartBeat => continue,
                }
            }
            let read = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf));
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("no frame within 10 s: {other:?}"),
            }
        }
    }

    /// Frames up to and including the one `last` accepts.
    async fn frames_until(&mut self, last: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let f = self.next_frame().await;
            let done = last(&f);
            frames.push(f);
            if done {
                return frames;
            }
        }
    }
}

fn is_receipt(id: &str) -> impl Fn(&Frame) -> bool + '_ {
    move |f| f.command == Command::Receipt && f.get("receipt-id") == Some(id)
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.command == Command::Message)
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .collect()
}

/// UNSUBSCRIBE and SUBSCRIBE again with the same id: what the core delivered to the old
/// subscription (and took back) is not written under the new one as well.
#[tokio::test]
async fn a_subscription_id_used_again_gets_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write("SEND\ndestination:/queue/q\npersistent:true\nreceipt:r1\n\nfirst\0")
        .await;
    p.frames_until(is_receipt("r1")).await;
    p.write(concat!(
        "SUBSCRIBE\nid:1\ndestination:/queue/q\nack:client-individual\n\n\0",
        "UNSUBSCRIBE\nid:1\n\n\0",
        "SUBSCRIBE\nid:1\ndestination:/queue/q\nack:client-individual\n\n\0",
        "SEND\ndestination:/queue/q\npersistent:true\n\nsecond\0",
    ))
    .await;
    let frames = p
        .frames_until(|f| f.command == Command::Message && &f.body[..] == b"second")
        .await;
    assert_eq!(bodies(&frames), ["first", "second"]);
}

/// The RECEIPT of a SUBSCRIBE comes before the backlog it starts delivering: a client that
/// stops reading while its application waits for that RECEIPT (ferromq's own client does,
/// past its unread limit) would otherwise wait for ever behind an auto-ack stream.
#[tokio::test]
async fn a_subscribe_receipt_is_not_written_behind_its_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    for n in 0..2000 {
        p.write(&format!("SEND\ndestination:/queue/backlog\n\nm{n}\0"))
            .await;
    }
    p.write("SEND\ndestination:/queue/backlog\nreceipt:sent\n\nlast\0")
        .await;
    p.frames_until(is_receipt("sent")).await;
    // Each subscription (a new connection each time) starts a stream of the whole backlog.
    for round in 0..6 {
        let (mut c, _) = Peer::connect(&broker, "1.2", "").await;
        c.write(&format!(
            "SUBSCRIBE\nid:{round}\ndestination:/queue/backlog\nack:client\nreceipt:sub\n\n\0"
        ))
        .await;
        let first = c.next_frame().await;
        assert_eq!(
            (first.command, first.get("receipt-id")),
            (Command::Receipt, Some("sub")),
            "round {round}: a {:?} came first",
            first.command
        );
    }
}

/// ActiveMQ's STOMP queue browser: `browser:true` gets the RECEIPT, a copy of each message
/// the selector matches, oldest first, then a MESSAGE with `browser:end` and no body; ACKs
/// of the copies change nothing, and a consumer still gets every message afterwards.
#[tokio::test]
async fn a_browser_subscription_copies_the_queue_then_says_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    for (n, colour) in ["red", "blue", "red"].iter().enumerate() {
        p.write(&format!(
            "SEND\ndestination:/queue/b\npersistent:true\ncolour:{colour}\nreceipt:s{n}\n\nm{n}\0"
        ))
        .await;
        p.frames_until(is_receipt(&format!("s{n}"))).await;
    }
    p.write(concat!(
        "SUBSCRIBE\nid:look\ndestination:/queue/b\nbrowser:true\nack:client\n",
        "selector:colour = 'red'\nreceipt:r\n\n\0"
    ))
    .await;
    let receipt = p.next_frame().await;
    assert_eq!(receipt.get("receipt-id"), Some("r"));
    let frames = p.frames_until(|f| f.get("browser") == Some("end")).await;
    assert_eq!(bodies(&frames[..2]), ["m0", "m2"]);
    let end = &frames[2];
    assert_eq!(
        (end.command, end.get("subscription"), end.get("destination")),
        (Command::Message, Some("look"), Some("/queue/b"))
    );
    assert_eq!((end.get("message-id"), end.body.len()), (Some("0"), 0));
    // Acknowledging a copy consumes nothing; the browser ends like any subscription.
    let ack = frames[1].get("ack").unwrap().to_string();
    p.write(&format!("ACK\nid:{ack}\nreceipt:a\n\n\0")).await;
    p.frames_until(is_receipt("a")).await;
    p.write("UNSUBSCRIBE\nid:look\nreceipt:u\n\n\0").await;
    p.frames_until(is_receipt("u")).await;
    p.write("SUBSCRIBE\nid:take\ndestination:/queue/b\n\n\0")
        .await;
    let taken = p
        .frames_until(|f| f.command == Command::Message && &f.body[..] == b"m2")
        .await;
    assert_eq!(bodies(&taken), ["m0", "m1", "m2"]);
}

/// A browser of a queue deeper than a browse page (`max_browse_page_size`, 400 by default),
/// its bodies left in the journal past `memory_limit`, gets a copy of every message, in order,
/// page after page, then the end marker; a SEND in the same connection meanwhile is still
/// answered.
#[tokio::test]
async fn a_browser_gets_a_deep_queue_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    // Bodies past 4 KiB stay in the journal: the browse reads them back.
    let options = crate::broker::BrokerOptions {
        memory_limit: 4096,
        ..Default::default()
    };
    let broker = Broker::start_for_tests(dir.path(), options);
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    let sends: String = (0..1000)
        .map(|n| format!("SEND\ndestination:/queue/deep\npersistent:true\n\nm{n}\0"))
        .collect();
    p.write(&format!(
        "{sends}SEND\ndestination:/queue/deep\nreceipt:sent\n\nlast\0"
    ))
    .await;
    p.frames_until(is_receipt("sent")).await;
    p.write(concat!(
        "SUBSCRIBE\nid:look\ndestination:/queue/deep\nbrowser:true\n\n\0",
        "SEND\ndestination:/queue/other\nreceipt:meanwhile\n\nx\0",
    ))
    .await;
    let frames = p.frames_until(|f| f.get("browser") == Some("end")).await;
    let copies: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.command == Command::Message && f.get("browser").is_none())
        .collect();
    let mut expected: Vec<String> = (0..1000).map(|n| format!("m{n}")).collect();
    expected.push("last".into());
    let shown: Vec<String> = copies
        .iter()
        .map(|f| String::from_utf8_lossy(&f.body).into_owned())
        .collect();
    assert_eq!(shown, expected);
    if !frames
        .iter()
        .any(|f| f.get("receipt-id") == Some("meanwhile"))
    {
        p.frames_until(is_receipt("meanwhile")).await;
    }
}

/// A browser subscribed right behind sends still being confirmed (one write, no wait):
/// their RECEIPTs come first, then the browser's, and its copies include those sends.
#[tokio::test]
async fn a_browse_waits_for_the_sends_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(concat!(
        "SEND\ndestination:/queue/b\npersistent:true\nreceipt:s0\n\nm0\0",
        "SEND\ndestination:/queue/b\npersistent:true\nreceipt:s1\n\nm1\0",
        "SUBSCRIBE\nid:look\ndestination:/queue/b\nbrowser:true\nreceipt:r\n\n\0",
    ))
    .await;
    let frames = p.frames_until(|f| f.get("browser") == Some("end")).await;
    let receipts: Vec<_> = frames.iter().filter_map(|f| f.get("receipt-id")).collect();
    assert_eq!(receipts, ["s0", "s1", "r"]);
    assert_eq!(frames[2].get("receipt-id"), Some("r"), "{frames:?}");
    assert_eq!(bodies(&frames[3..5]), ["m0", "m1"]);
}

/// A browser unsubscribed (or its id reused) before its snapshot's turn writes no copies
/// to the subscription that now holds the id.
#[tokio::test]
async fn a_browser_unsubscribed_before_its_turn_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(concat!(
        "SEND\ndestination:/queue/b\npersistent:true\nreceipt:s0\n\nm0\0",
        "SUBSCRIBE\nid:look\ndestination:/queue/b\nbrowser:true\nreceipt:r1\n\n\0",
        "UNSUBSCRIBE\nid:look\n\n\0",
        "SUBSCRIBE\nid:look\ndestination:/queue/b\nbrowser:true\nreceipt:r2\n\n\0",
    ))
    .await;
    let frames = p.frames_until(|f| f.get("browser") == Some("end")).await;
    let commands: Vec<_> = frames
        .iter()
        .map(|f| {
            f.get("receipt-id")
                .unwrap_or(std::str::from_utf8(&f.body).unwrap())
        })
        .collect();
    assert_eq!(commands, ["s0", "r1", "r2", "m0", ""]);
}

#[tokio::test]
async fn a_browser_is_refused_on_a_topic_and_before_stomp_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    for (version, destination, expected) in [
        ("1.2", "/topic/t", "only a queue can be browsed"),
        ("1.0", "/queue/q", "needs STOMP 1.1 or later"),
    ] {
        let (mut p, _) = Peer::connect(&broker, version, "").await;
        p.write(&format!(
            "SUBSCRIBE\nid:1\ndestination:{destination}\nbrowser:true\n\n\0"
        ))
        .await;
        let error = p.next_frame().await;
        assert_eq!(error.command, Command::Error, "{version} {destination}");
        let message = error.get("message").unwrap_or_default();
        assert!(
            message.contains(expected),
            "{version} {destination}: {message}"
        );
    }
}

/// STOMP 1.1: two subscriptions hold the same message (one topic); an ACK names the
/// subscription whose delivery it acknowledges.
#[tokio::test]
async fn a_stomp_1_1_ack_acknowledges_the_named_subscriptions_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.1", "client-id:c1\n").await;
    p.write(concat!(
        "SUBSCRIBE\nid:A\ndestination:/topic/t\nack:client-individual\n",
        "activemq.subscriptionName:A\n\n\0",
        "SUBSCRIBE\nid:B\ndestination:/topic/t\nack:client-individual\n",
        "activemq.subscriptionName:B\nreceipt:s\n\n\0",
    ))
    .await;
    p.frames_until(is_receipt("s")).await;
    p.write("SEND\ndestination:/topic/t\npersistent:true\n\nx\0")
        .await;
    let first = p.next_frame().await;
    let second = p.next_frame().await;
    let id = first.get("message-id").unwrap().to_string();
    assert_eq!(second.get("message-id"), Some(id.as_str()));
    p.write(&format!(
        "ACK\nsubscription:B\nmessage-id:{id}\nreceipt:a\n\n\0"
    ))
    .await;
    p.frames_until(is_receipt("a")).await;
    let in_flight = |name: &str| {
        broker
            .queue_stats()
            .into_iter()
            .find(|q| q.name.ends_with(name))
            .map(|q| q.in_flight)
    };
    assert_eq!((in_flight(":A"), in_flight(":B")), (Some(1), Some(0)));
}

/// A client that promised heart-beats, then neither reads nor sends while the broker has
/// more to write than the connection holds, is taken for dead: its deliveries go back.
#[tokio::test]
async fn a_silent_client_is_dropped_even_while_a_write_to_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut p = Peer::start(&broker, 4096);
    p.write(concat!(
        "CONNECT\naccept-version:1.2\nheart-beat:100,0\n\n\0",
        "SUBSCRIBE\nid:1\ndestination:/queue/q\nack:client\n\n\0",
    ))
    .await;
    let (producer, _) = broker.open_session(None);
    for _ in 0..50 {
        let m = NewMessage {
            persistent: true,
            body: vec![b'x'; 1000].into(),
            ..Default::default()
        };
        let sent = producer.send(&Destination::Queue("q".into()), m, None);
        sent.unwrap().await.unwrap();
    }
    // The client now neither reads nor writes; the broker's writes fill the pipe.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let q = broker
            .queue_stats()
            .into_iter()
            .find(|q| q.name == "queue://q");
        if q.as_ref()
            .is_some_and(|q| q.consumers == 0 && q.ready == 50)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still served: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(p);
}

/// `reply-to` is kept as ActiveMQ prints a destination, so a JMS selector on JMSReplyTo
/// matches `queue://x`; STOMP clients see `/queue/x` back.
#[tokio::test]
async fn a_reply_to_selector_compares_with_activemqs_printed_form() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(concat!(
        "SUBSCRIBE\nid:1\ndestination:/queue/q\n",
        "selector:JMSReplyTo = 'queue://replies'\nreceipt:s\n\n\0",
    ))
    .await;
    p.frames_until(is_receipt("s")).await;
    p.write(concat!(
        "SEND\ndestination:/queue/q\nreply-to:/queue/other\n\nno\0",
        "SEND\ndestination:/queue/q\nreply-to:/queue/replies\n\nyes\0",
    ))
    .await;
    let message = p.next_frame().await;
    assert_eq!(&message.body[..], b"yes");
    assert_eq!(message.get("reply-to"), Some("/queue/replies"));
}

/// `activemq.noLocal:true`: the subscriber does not get what its own connection sends.
#[tokio::test]
async fn activemq_no_local_spares_a_subscriber_its_own_connections_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut own, _) = Peer::connect(&broker, "1.2", "").await;
    own.write(concat!(
        "SUBSCRIBE\nid:1\ndestination:/topic/t\nactivemq.noLocal:true\nreceipt:s\n\n\0",
        "SEND\ndestination:/topic/t\nreceipt:sent\n\nmine\0",
    ))
    .await;
    let mut frames = own.frames_until(is_receipt("sent")).await;
    let (mut other, _) = Peer::connect(&broker, "1.2", "").await;
    other
        .write("SEND\ndestination:/topic/t\nreceipt:sent\n\ntheirs\0")
        .await;
    other.frames_until(is_receipt("sent")).await;
    frames.extend(own.frames_until(|f| f.command == Command::Message).await);
    assert_eq!(bodies(&frames), ["theirs"]);
}

/// `activemq.priority`: a queue's higher-priority consumer is served first while it has
/// room in its prefetch window.
#[tokio::test]
async fn activemq_priority_serves_the_higher_consumer_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(concat!(
        "SUBSCRIBE\nid:low\ndestination:/queue/q\nack:client-individual\n\n\0",
        "SUBSCRIBE\nid:high\ndestination:/queue/q\nack:client-individual\n",
        "activemq.priority:10\nactivemq.prefetchSize:2\nreceipt:s\n\n\0",
    ))
    .await;
    p.frames_until(is_receipt("s")).await;
    for i in 0..4 {
        p.write(&format!("SEND\ndestination:/queue/q\n\n{i}\0"))
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let f = p.next_frame().await;
        assert_eq!(f.command, Command::Message, "{f:?}");
        let body = String::from_utf8_lossy(&f.body).into_owned();
        got.push((f.get("subscription").unwrap().to_string(), body));
    }
    got.sort();
    let pair = |s: &str, b: &str| (s.to_string(), b.to_string());
    assert_eq!(
        got,
        [
            pair("high", "0"),
            pair("high", "1"),
            pair("low", "2"),
            pair("low", "3")
        ]
    );
}

/// A priority that is not a number from 0 to 127 is refused, naming the header.
#[tokio::test]
async fn a_bad_activemq_priority_is_an_error_naming_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    for bad in ["high", "128", "-1", ""] {
        let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
        p.write(&format!(
            "SUBSCRIBE\nid:1\ndestination:/queue/q\nactivemq.priority:{bad}\n\n\0"
        ))
        .await;
        let error = p.next_frame().await;
        assert_eq!(error.command, Command::Error, "{error:?}");
        assert_eq!(
            error.get("message"),
            Some(
                format!(
                    "header 'activemq.priority' (or option consumer.priority) must be a number \
                     from 0 to 127, got '{bad}'"
                )
                .as_str()
            )
        );
    }
}

/// A STOMP 1.2 client subscribed (receipted) to `/queue/requests`.
async fn responder_on_requests(broker: &Broker) -> Peer {
    subscribed(broker, "id:r\ndestination:/queue/requests").await
}

/// ActiveMQ's `/temp-queue/NAME` is the connection's own: two clients that both use
/// `/temp-queue/replies` as `reply-to` each get their own replies. A responder sees
/// `/remote-temp-queue/ID:...` and can send there; the owner sees `/temp-queue/replies`.
#[tokio::test]
async fn each_connection_has_its_own_temp_queue() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut responder = responder_on_requests(&broker).await;
    let mut clients = Vec::new();
    for name in ["a", "b"] {
        let (mut c, _) = Peer::connect(&broker, "1.2", "").await;
        c.write(&format!(
            "SUBSCRIBE\nid:1\ndestination:/temp-queue/replies\nreceipt:s\n\n\0\
             SEND\ndestination:/queue/requests\nreply-to:/temp-queue/replies\n\n{name}\0"
        ))
        .await;
        c.frames_until(is_receipt("s")).await;
        clients.push(c);
    }
    let mut reply_tos = Vec::new();
    let journal_end = broker.stats().journal_end;
    for _ in 0..2 {
        let request = responder.next_frame().await;
        let reply_to = request.get("reply-to").unwrap().to_string();
        assert!(reply_to.starts_with("/remote-temp-queue/ID:"), "{reply_to}");
        let body = String::from_utf8_lossy(&request.body).into_owned();
        responder
            .write(&format!(
                "SEND\ndestination:{reply_to}\npersistent:true\n\nfor {body}\0"
            ))
            .await;
        reply_tos.push(reply_to);
    }
    assert_ne!(reply_tos[0], reply_tos[1]);
    for (c, name) in clients.iter_mut().zip(["a", "b"]) {
        let reply = c.next_frame().await;
        assert_eq!(String::from_utf8_lossy(&reply.body), format!("for {name}"));
        assert_eq!(reply.get("destination"), Some("/temp-queue/replies"));
        assert_eq!(
            reply.get("persistent"),
            Some("true"),
            "delivered as it was sent"
        );
    }
    assert_eq!(
        broker.stats().journal_end,
        journal_end,
        "replies to temporary queues are never stored"
    );
    // Nothing else arrives: a sentinel on each client's own queue comes next.
    for c in &mut clients {
        c.write("SEND\ndestination:/temp-queue/replies\n\nend\0")
            .await;
        assert_eq!(&c.next_frame().await.body[..], b"end");
    }
}

/// A MESSAGE's `reply-to` naming the reader's own temporary queue reads as it was written;
/// a temporary topic works the same way.
#[tokio::test]
async fn the_owner_reads_its_temp_destinations_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write("SUBSCRIBE\nid:1\ndestination:/temp-topic/events\nreceipt:s\n\n\0")
        .await;
    p.frames_until(is_receipt("s")).await;
    p.write("SEND\ndestination:/temp-topic/events\nreply-to:/temp-queue/replies\n\nx\0")
        .await;
    let m = p.next_frame().await;
    assert_eq!(m.get("destination"), Some("/temp-topic/events"));
    assert_eq!(m.get("reply-to"), Some("/temp-queue/replies"));
    // Another connection's `/temp-topic/events` is another topic.
    let (mut other, _) = Peer::connect(&broker, "1.2", "").await;
    other
        .write("SEND\ndestination:/temp-topic/events\nreceipt:r\n\nnot yours\0")
        .await;
    other.frames_until(is_receipt("r")).await;
    p.write("SEND\ndestination:/temp-topic/events\n\nmine\0")
        .await;
    assert_eq!(&p.next_frame().await.body[..], b"mine");
}

fn queue_names(broker: &Broker) -> Vec<String> {
    broker.queue_stats().into_iter().map(|q| q.name).collect()
}

fn temp_queues(broker: &Broker) -> Vec<(String, usize)> {
    broker
        .queue_stats()
        .into_iter()
        .filter(|q| q.name.starts_with("queue://ID:"))
        .map(|q| (q.name, q.ready))
        .collect()
}

async fn wait_for_no_temp_queues(broker: &Broker) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !temp_queues(broker).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            temp_queues(broker)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection's temporary destinations, and the messages waiting on them, go when it
/// ends, cleanly or not.
#[tokio::test]
async fn temp_destinations_are_deleted_when_their_connection_ends() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let advisories = Arc::new(TempDestinations::default());
    for clean in [true, false] {
        let mut p = Peer::start_sharing(&broker, 1 << 20, advisories.clone());
        p.write("CONNECT\naccept-version:1.2\n\n\0").await;
        assert_eq!(p.next_frame().await.command, Command::Connected);
        p.write(concat!(
            "SEND\ndestination:/temp-queue/waiting\n\nw\0",
            "SUBSCRIBE\nid:1\ndestination:/temp-queue/used\nack:client\n\n\0",
            "SEND\ndestination:/temp-queue/used\nreceipt:r\n\nu\0",
        ))
        .await;
        let frames = p.frames_until(is_receipt("r")).await;
        let mut queues = temp_queues(&broker);
        queues.sort();
        assert_eq!(queues.len(), 2, "{queues:?}");
        // JMS clients hear of them on the advisory topics, as made by one connection.
        let owners: Vec<Option<String>> = queues
            .iter()
            .map(|(name, _)| {
                let id = name.strip_prefix("queue://").unwrap();
                advisories.owner(&advisory_destination(false, id))
            })
            .collect();
        assert!(owners[0].is_some(), "{owners:?}");
        assert_eq!(owners[0], owners[1]);
        assert!(queues[0]
            .0
            .starts_with(&format!("queue://{}:", owners[0].as_ref().unwrap())));
        if !frames.iter().any(|f| f.command == Command::Message) {
            p.next_frame().await; // the unacknowledged delivery of `u`
        }
        if clean {
            p.write("DISCONNECT\nreceipt:bye\n\n\0").await;
            p.frames_until(is_receipt("bye")).await;
        } else {
            drop(p);
        }
        wait_for_no_temp_queues(&broker).await;
        assert!(advisories.snapshot_is_empty());
    }
}

/// A responder on `/queue/requests`, a client that sent it a request with reply-to its own
/// `/temp-queue/r`, and that reply-to as the responder got it (`/remote-temp-queue/ID:...`).
async fn a_request_with_a_temp_reply_to(broker: &Broker) -> (Peer, Peer, String) {
    let mut responder = responder_on_requests(broker).await;
    let (mut client, _) = Peer::connect(broker, "1.2", "").await;
    client
        .write("SEND\ndestination:/queue/requests\nreply-to:/temp-queue/r\nreceipt:x\n\nq\0")
        .await;
    client.frames_until(is_receipt("x")).await;
    let reply_to = responder
        .next_frame()
        .await
        .get("reply-to")
        .unwrap()
        .to_string();
    (responder, client, reply_to)
}

/// Another connection's temporary queue exists only while that connection lives, as in
/// ActiveMQ: a SEND to it afterwards (or to one that never existed) is an ERROR naming it,
/// where it used to make a plain queue of that name that nobody would ever read.
#[tokio::test]
async fn a_temp_queue_of_a_closed_connection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut responder, mut client, reply_to) = a_request_with_a_temp_reply_to(&broker).await;
    // While its connection lives, a reply goes through.
    responder
        .write(&format!(
            "SEND\ndestination:{reply_to}\nreceipt:a\n\nalive\0"
        ))
        .await;
    responder.frames_until(is_receipt("a")).await;
    client.write("DISCONNECT\nreceipt:bye\n\n\0").await;
    client.frames_until(is_receipt("bye")).await;
    drop(client);
    let refused = wait_until_refused(&mut responder, &reply_to).await;
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    let message = refused.get("message").unwrap_or_default().to_string();
    assert!(message.contains(&reply_to), "{message}");
    assert!(
        temp_queues(&broker).is_empty(),
        "{:?}",
        temp_queues(&broker)
    );
}

/// A STOMP 1.2 connection subscribed with `headers` (one per line), once the broker has
/// confirmed the subscription.
async fn subscribed(broker: &Broker, headers: &str) -> Peer {
    let (mut peer, _) = Peer::connect(broker, "1.2", "").await;
    peer.write(&format!("SUBSCRIBE\n{headers}\nreceipt:subscribed\n\n\0"))
        .await;
    peer.frames_until(is_receipt("subscribed")).await;
    peer
}

/// A SEND to `/queue/a,/topic/t` (ActiveMQ's composite destination) reaches both members,
/// each copy naming its own member; a re-send of the same `message-id` is stored in
/// neither twice; in a transaction the copies go at COMMIT and nowhere at ABORT.
#[tokio::test]
async fn a_send_to_a_composite_destination_reaches_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut listener = subscribed(&broker, "id:t\ndestination:/topic/t").await;
    let (mut producer, _) = Peer::connect(&broker, "1.2", "").await;
    for receipt in ["r1", "r2"] {
        producer
            .write(&format!(
                "SEND\ndestination:/queue/a,/topic/t\npersistent:true\n\
                 message-id:ID:p-1:1\nferromq.dedupe:true\nreceipt:{receipt}\n\nboth\0"
            ))
            .await;
        producer.frames_until(is_receipt(receipt)).await;
    }
    producer
        .write(
            "BEGIN\ntransaction:x\n\n\0\
             SEND\ndestination:/queue/a, /queue/b\ntransaction:x\n\naborted\0\
             ABORT\ntransaction:x\n\n\0\
             BEGIN\ntransaction:y\n\n\0\
             SEND\ndestination:/queue/a,/queue/b\ntransaction:y\n\ncommitted\0\
             COMMIT\ntransaction:y\nreceipt:c\n\n\0",
        )
        .await;
    producer.frames_until(is_receipt("c")).await;
    let on_topic = listener.next_frame().await;
    assert_eq!(
        (on_topic.get("destination"), on_topic.body.as_ref()),
        (Some("/topic/t"), b"both".as_ref())
    );
    let (mut consumer, _) = Peer::connect(&broker, "1.2", "").await;
    consumer
        .write(
            "SUBSCRIBE\nid:a\ndestination:/queue/a\n\n\0\
             SUBSCRIBE\nid:b\ndestination:/queue/b\n\n\0",
        )
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = consumer.next_frame().await;
        got.push(format!(
            "{} {}",
            f.get("destination").unwrap_or_default(),
            String::from_utf8_lossy(&f.body)
        ));
    }
    got.sort();
    assert_eq!(
        got,
        ["/queue/a both", "/queue/a committed", "/queue/b committed"]
    );
    assert_eq!(broker.queue_depth("queue://a"), 0);
    assert_eq!(broker.queue_depth("queue://b"), 0);
}

/// A SUBSCRIBE to `/queue/a,/topic/t` receives from both members, each MESSAGE naming its
/// member; in client ack mode an ACK covers the earlier messages of both members.
#[tokio::test]
async fn a_subscription_to_a_composite_destination_receives_from_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut consumer = subscribed(&broker, "id:s\nack:client\ndestination:/queue/a,/topic/t").await;
    let (mut producer, _) = Peer::connect(&broker, "1.2", "").await;
    // One after the other: the persistent one is delivered once stored, the other at once.
    for (destination, body) in [("/queue/a\npersistent:true", "to-a"), ("/topic/t", "to-t")] {
        producer
            .write(&format!(
                "SEND\ndestination:{destination}\nreceipt:{body}\n\n{body}\0"
            ))
            .await;
        producer.frames_until(is_receipt(body)).await;
    }
    let first = consumer.next_frame().await;
    let second = consumer.next_frame().await;
    let got: Vec<(Option<&str>, Option<&str>, &[u8])> = [&first, &second]
        .iter()
        .map(|f| (f.get("subscription"), f.get("destination"), f.body.as_ref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("s"), Some("/queue/a"), b"to-a".as_ref()),
            (Some("s"), Some("/topic/t"), b"to-t".as_ref())
        ]
    );
    let ack = second.get("ack").unwrap();
    consumer
        .write(&format!(
            "ACK\nid:{ack}\nreceipt:a\n\n\0DISCONNECT\nreceipt:bye\n\n\0"
        ))
        .await;
    consumer.frames_until(is_receipt("bye")).await;
    drop(consumer.io);
    consumer.task.await.unwrap();
    assert_eq!(
        broker.queue_depth("queue://a"),
        0,
        "the ACK covered /queue/a's message"
    );
}

/// A composite destination with an empty member, a member with an unknown prefix, a
/// temporary member or a wildcard member is an ERROR naming the problem, and no member gets the
/// message.
#[tokio::test]
async fn a_bad_composite_destination_is_an_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    for (destination, problem) in [
        ("/queue/a,,/queue/b", "empty member"),
        ("/queue/a,/queue/b,", "empty member"),
        ("/queue/a,/queue/", "member '/queue/'"),
        (
            "/queue/a,/temp-queue/r",
            "member '/temp-queue/r' is temporary",
        ),
        ("/queue/a,/topic/logs.>", "topic://logs.>"),
    ] {
        let (mut peer, _) = Peer::connect(&broker, "1.2", "").await;
        peer.write(&format!(
            "SEND\ndestination:{destination}\npersistent:true\nreceipt:r\n\nm\0"
        ))
        .await;
        let error = peer.next_frame().await;
        assert_eq!(error.command, Command::Error, "{destination}: {error:?}");
        let message = error.get("message").unwrap_or_default();
        assert!(message.contains(problem), "{destination}: {message}");
    }
    assert_eq!(broker.queue_depth("queue://a"), 0);
}

/// As in ActiveMQ, a destination with none of its prefixes names a queue, whole: a client
/// ported from another broker with names such as `/exchange/orders` or `orders` goes on
/// working. A known prefix with no name after it is still refused.
#[tokio::test]
async fn a_destination_without_a_known_prefix_is_a_queue_of_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(
        "SUBSCRIBE\nid:1\ndestination:/exchange/orders\nreceipt:s\n\n\0\
         SEND\ndestination:/exchange/orders\nreply-to:replies\nreceipt:r\n\nm\0",
    )
    .await;
    let frames = p.frames_until(|f| f.command == Command::Message).await;
    let message = frames.last().unwrap();
    assert_eq!(message.get("destination"), Some("/queue//exchange/orders"));
    // Not a reply-to, which stays text, as ActiveMQ keeps it.
    assert_eq!(message.get("reply-to"), Some("replies"));
    assert_eq!(&message.body[..], b"m");
    assert!(queue_names(&broker).contains(&"queue:///exchange/orders".to_string()));
    p.write("SEND\ndestination:/topic/\nreceipt:t\n\nm\0").await;
    let refused = p.frames_until(|f| f.get("receipt-id") == Some("t")).await;
    assert_eq!(
        refused.last().unwrap().command,
        Command::Error,
        "{refused:?}"
    );
}

/// Sends to `reply_to` until the broker answers with something else than a receipt (the
/// owner's end is noticed by its task, a moment after its DISCONNECT receipt).
async fn wait_until_refused(peer: &mut Peer, reply_to: &str) -> Frame {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for n in 0.. {
        peer.write(&format!(
            "SEND\ndestination:{reply_to}\nreceipt:t{n}\n\nlate\0"
        ))
        .await;
        let frame = peer.next_frame().await;
        if frame.command != Command::Receipt {
            return frame;
        }
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unreachable!()
}

/// A JMS client's `TemporaryQueue` as `reply-to` (stored as `temp-queue://ID:...`, as the
/// OpenWire session stores it) reaches a STOMP responder as `/remote-temp-queue/ID:...`,
/// and a reply sent there reaches the JMS client's queue, never stored.
#[tokio::test]
async fn a_jms_temporary_queue_reply_to_reaches_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut responder = responder_on_requests(&broker).await;
    let (jms, mut jms_deliveries) = broker.open_session(None);
    let temp = Destination::Queue("ID:jms-host-1-2:1:1".into());
    // As the JMS client's connection registers its TemporaryQueue.
    SHARED_TEMPS.add(
        advisory_destination(false, "ID:jms-host-1-2:1:1"),
        "ID:jms-host-1-2:1",
    );
    jms.subscribe(SubscribeRequest {
        id: "replies".into(),
        destination: temp.clone(),
        prefetch: 10,
        durable_name: None,
        selector: None,
        exclusive: false,
        priority: 0,
        no_local: false,
    })
    .unwrap()
    .await
    .unwrap();
    let request = NewMessage {
        headers: vec![Header::text(
            REPLY_TO_HEADER,
            "temp-queue://ID:jms-host-1-2:1:1",
        )],
        body: b"request".to_vec().into(),
        ..Default::default()
    };
    let sent = jms.send(&Destination::Queue("requests".into()), request, None);
    sent.unwrap().await.unwrap();
    let m = responder.next_frame().await;
    let reply_to = m.get("reply-to").unwrap().to_string();
    assert_eq!(reply_to, "/remote-temp-queue/ID:jms-host-1-2:1:1");
    responder
        .write(&format!(
            "SEND\ndestination:{reply_to}\npersistent:true\n\nreply\0"
        ))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), jms_deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply.message.body[..], b"reply");
    assert_eq!(reply.destination, temp);
    assert!(reply.message.persistent, "delivered as it was sent");
    assert!(reply.message.temporary, "kept in memory only");
}

/// A JMS client's map or list property, kept in OpenWire's form, is not shown to a STOMP
/// reader; its other properties are.
#[tokio::test]
async fn a_jms_map_property_is_not_shown_to_stomp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut reader = subscribed(&broker, "id:r\ndestination:/queue/maps").await;
    let (jms, _) = broker.open_session(None);
    let message = NewMessage {
        headers: vec![
            Header {
                name: "mapped".into(),
                value: "0a0b".into(),
                kind: PropertyType::Openwire as i32,
            },
            Header::text("plain", "shown"),
        ],
        body: b"m".to_vec().into(),
        ..Default::default()
    };
    jms.send(&Destination::Queue("maps".into()), message, None)
        .unwrap()
        .await
        .unwrap();
    let m = reader.next_frame().await;
    assert_eq!(m.get("plain"), Some("shown"));
    assert_eq!(m.get("mapped"), None);
}

/// A heart-beat period past any sensible value is bounded (a day), not overflowed.
#[tokio::test]
async fn a_huge_heart_beat_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, connected) = Peer::connect(
        &broker,
        "1.2",
        "heart-beat:18446744073709551615,18446744073709551615\n",
    )
    .await;
    assert_eq!(connected.get("heart-beat"), Some("86400000,86400000"));
    p.write("DISCONNECT\nreceipt:bye\n\n\0").await;
    p.frames_until(is_receipt("bye")).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut p.task).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}

/// `heart-beat` is two whole numbers (blanks around them allowed); anything else is refused
/// with ActiveMQ's message, as ActiveMQ refuses it.
#[test]
fn heartbeat_header_is_two_numbers() {
    let parsed = |v: Option<&str>| parse_heartbeat(v).map_err(|r| r.message);
    assert_eq!(parsed(Some("1000,2000")), Ok((1000, 2000)));
    assert_eq!(parsed(Some(" 0, 500 ")), Ok((0, 500)));
    assert_eq!(parsed(None), Ok((0, 0)));
    for bad in ["x,5", "abc", "1000", "1,2,3", "-1,0", ""] {
        assert_eq!(
            parsed(Some(bad)),
            Err(format!("Invalid heart-beat header:{bad}")),
            "{bad:?}"
        );
    }
}

// ----- random conversations: bad input never panics, and the broker carries on ----------

#[path = "session_conversations.rs"]
mod conversations;

/// A producer held back by flow control (`memory_limit` reached, nobody consumes) that
/// goes away without heart-beats is noticed: nothing is read from it meanwhile, so an EOL
/// written now and then finds out. Its connection used to stay open until room came,
/// which without a consumer is never.
#[tokio::test]
async fn a_held_back_producer_that_vanishes_is_closed_even_without_heart_beats() {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::broker::BrokerOptions {
        memory_limit: 64 * 1024,
        ..crate::broker::BrokerOptions::default()
    };
    let broker = Broker::start_for_tests(dir.path(), options);
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    let body = "x".repeat(8 * 1024);
    for _ in 0..20 {
        p.write(&format!("SEND\ndestination:/queue/held\n\n{body}\0"))
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.queue_depth("queue://held") < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "memory_limit never reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(broker.queue_depth("queue://held") < 20, "not held back");
    let Peer { io, task, .. } = p;
    drop(io);
    let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the held-back connection stayed open after its client left: {ended:?}"
    );
}

/// A SEND carrying the headers a MESSAGE arrived with (a message moved by a script) is
/// delivered with the broker's own `subscription`, `ack`, `message-id` and `timestamp`,
/// each once, and no `redelivered` it did not earn: the copied ones are not stored.
#[tokio::test]
async fn headers_the_broker_writes_are_not_taken_from_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(
        "SEND\ndestination:/queue/moved\nsubscription:old\nack:77\nmessage-id:ID:x:1\n\
         timestamp:1\nredelivered:true\nredelivery-count:3\nJMSXUserID:admin\n\
         color:red\nreceipt:s\n\nbody\0\
         SUBSCRIBE\nid:new\ndestination:/queue/moved\nack:client-individual\n\n\0",
    )
    .await;
    let frames = p.frames_until(|f| f.command == Command::Message).await;
    let message = frames.last().unwrap();
    let all = |name: &str| -> Vec<&str> {
        message
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("subscription"), ["new"], "{message:?}");
    assert_eq!(all("ack").len(), 1, "{message:?}");
    assert_ne!(all("ack"), ["77"], "{message:?}");
    assert_eq!(all("message-id").len(), 1, "{message:?}");
    assert_ne!(all("message-id"), ["ID:x:1"], "{message:?}");
    assert_eq!(all("timestamp").len(), 1, "{message:?}");
    assert_ne!(all("timestamp"), ["1"], "{message:?}");
    for absent in ["redelivered", "redelivery-count", "JMSXUserID"] {
        assert!(all(absent).is_empty(), "{absent}: {message:?}");
    }
    assert_eq!(all("color"), ["red"], "an application header is kept");
}

/// A client that writes its first frames together with CONNECT, without waiting for
/// CONNECTED (as `nc` with a prepared file does), gets them answered: the bytes read past
/// CONNECT (here all in the listener's first read, which detects the protocol) are
/// handled, not left until the client writes again.
#[tokio::test]
async fn frames_written_with_connect_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    for version in ["1.0", "1.2"] {
        let first_read = BytesMut::from(
            format!(
                "CONNECT\naccept-version:{version}\n\n\0\
                 SEND\ndestination:/queue/early\nreceipt:s\n\nhello\0\
                 BEGIN\ntransaction:t\nreceipt:b\n\n\0"
            )
            .as_bytes(),
        );
        let mut p = Peer::start_reading(&broker, 1 << 20, SHARED_TEMPS.clone(), first_read);
        let frames = p.frames_until(is_receipt("b")).await;
        assert_eq!(frames[0].command, Command::Connected, "{frames:?}");
        assert!(frames.iter().any(is_receipt("s")), "{frames:?}");
    }
}

/// A CONNECT's `receipt` (or `request-id`) is answered in CONNECTED, as ActiveMQ answers it
/// (`receipt-id` and `response-id`): a client that waits for that receipt does not hang.
#[tokio::test]
async fn a_connect_receipt_is_answered_in_connected() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (_, connected) = Peer::connect(&broker, "1.2", "receipt:c1\n").await;
    assert_eq!(connected.get("receipt-id"), Some("c1"), "{connected:?}");
    assert_eq!(connected.get("response-id"), Some("c1"), "{connected:?}");
    let (_, connected) = Peer::connect(&broker, "1.0", "request-id:q7\n").await;
    assert_eq!(connected.get("response-id"), Some("q7"), "{connected:?}");
    let (_, connected) = Peer::connect(&broker, "1.1", "").await;
    assert_eq!(connected.get("receipt-id"), None, "{connected:?}");
}

/// A client-individual subscriber of `/queue/work` and the delivery of one receipted `job`.
async fn one_job_delivered(broker: &Broker) -> (Peer, Frame) {
    let mut consumer = subscribed(
        broker,
        "id:s\ndestination:/queue/work\nack:client-individual",
    )
    .await;
    let (mut producer, _) = Peer::connect(broker, "1.2", "").await;
    producer
        .write("SEND\ndestination:/queue/work\npersistent:true\nreceipt:p\n\njob\0")
        .await;
    producer.frames_until(is_receipt("p")).await;
    let delivery = consumer.next_frame().await;
    assert_eq!(delivery.command, Command::Message, "{delivery:?}");
    (consumer, delivery)
}

/// As ActiveMQ's STOMP: a well-formed frame the broker refuses (an ACK of an unknown delivery,
/// an ACK or NACK of its delivery in a transaction that does not exist, an UNSUBSCRIBE or COMMIT of something that is not there, a bad selector or header value) gets
/// an ERROR answering its receipt, and the connection carries on. Its unacknowledged delivery
/// is not taken back and sent again, so the client's ACK of it still counts.
#[tokio::test]
async fn a_refused_frame_leaves_the_connection_and_its_deliveries_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut consumer, delivery) = one_job_delivered(&broker).await;
    let ack = delivery.get("ack").unwrap().to_string();
    let in_unknown_transaction = [
        format!("ACK\nid:{ack}\ntransaction:nope"),
        format!("NACK\nid:{ack}\ntransaction:nope"),
    ];
    for (n, frame) in [
        "ACK\nid:424242",
        "NACK\nid:424242",
        &in_unknown_transaction[0],
        &in_unknown_transaction[1],
        "UNSUBSCRIBE\nid:nobody",
        "COMMIT\ntransaction:none",
        "ABORT\ntransaction:none",
        "SUBSCRIBE\nid:t\ndestination:/queue/other\nselector:color = ",
        "SUBSCRIBE\nid:s\ndestination:/queue/again",
        "SEND\ndestination:/queue/work\nexpires:soon",
        "SEND\ndestination:/queue/work\npriority:high",
    ]
    .into_iter()
    .enumerate()
    {
        consumer
            .write(&format!("{frame}\nreceipt:e{n}\n\n\0"))
            .await;
        let error = consumer.next_frame().await;
        assert_eq!(error.command, Command::Error, "{frame}: {error:?}");
        assert_eq!(error.get("receipt-id"), Some(format!("e{n}").as_str()));
    }
    consumer
        .write(&format!("ACK\nid:{ack}\nreceipt:done\n\n\0"))
        .await;
    consumer.frames_until(is_receipt("done")).await;
    assert_eq!(broker.queue_depth("queue://work"), 0, "the ACK counted");
    assert!(!consumer.task.is_finished(), "the connection was kept");
}

/// A client that reconnected (to a new master, or to this broker restarted) may acknowledge a
/// message of its previous connection. The broker numbers deliveries from 1 again after a
/// restart, so that number alone could name another message handed to the new connection,
/// which would then be acknowledged unprocessed: the ack id says which connection wrote it,
/// and another connection's is refused, as ActiveMQ refuses an ack id it did not hand out.
#[tokio::test]
async fn an_ack_id_of_a_previous_connection_never_acknowledges_this_ones_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut consumer, delivery) = one_job_delivered(&broker).await;
    let ack = delivery.get("ack").unwrap().to_string();
    let (prefix, tag) = ack.split_once('-').expect("<connection>-<tag>");
    let other = if prefix.starts_with('0') { "1" } else { "0" };
    for stale in [format!("{other}{}-{tag}", &prefix[1..]), tag.to_string()] {
        consumer
            .write(&format!("ACK\nid:{stale}\nreceipt:stale\n\n\0"))
            .await;
        let error = consumer.next_frame().await;
        assert_eq!(error.command, Command::Error, "{stale}: {error:?}");
    }
    // Still unacknowledged: its own id acknowledges it.
    consumer
        .write(&format!("ACK\nid:{ack}\nreceipt:done\n\n\0"))
        .await;
    let answer = consumer.next_frame().await;
    assert!(is_receipt("done")(&answer), "{answer:?}");
}

/// A consumer subscribed with `headers`, after another connection wrote `sends` (the last
/// asking for receipt `b`): the consumer and the first MESSAGE it got.
async fn sent_to_a_subscriber(broker: &Broker, headers: &str, sends: &str) -> (Peer, Frame) {
    let mut consumer = subscribed(broker, headers).await;
    let (mut producer, _) = Peer::connect(broker, "1.2", "").await;
    producer.write(sends).await;
    producer.frames_until(is_receipt("b")).await;
    let first = consumer.next_frame().await;
    (consumer, first)
}

/// As ActiveMQ's STOMP: a destination without `/queue/` or `/topic/` is a queue, a
/// destination's options (`?consumer.prefetchSize=1`) are taken off its name and the
/// `consumer.` ones apply to the subscription, and a priority outside 0..9 is taken as the
/// nearer bound.
#[tokio::test]
async fn bare_names_options_and_priorities_are_read_as_activemq_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut consumer, first) = sent_to_a_subscriber(
        &broker,
        "id:s\ndestination:/queue/orders?consumer.prefetchSize=1\nack:client-individual",
        "SEND\ndestination:orders\npriority:12\nreceipt:a\n\nfirst\0\
         SEND\ndestination:orders?producer.ignored=1\npriority:-3\nreceipt:b\n\nsecond\0",
    )
    .await;
    assert_eq!(first.get("destination"), Some("/queue/orders"));
    assert_eq!(first.get("priority"), Some("9"));
    // Never expires: written as ActiveMQ writes it.
    assert_eq!(first.get("expires"), Some("0"));
    let second = next_only_once_acknowledged(&mut consumer, &first).await;
    assert_eq!(second.get("priority"), Some("0"));
}

/// Blanks around a destination, an `ack` mode or a prefetch size are dropped, as ActiveMQ
/// drops them: `destination: /queue/x` is queue `x`, not a queue named " /queue/x" that its
/// consumers never read.
#[tokio::test]
async fn blanks_around_destination_ack_and_prefetch_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut consumer, first) = sent_to_a_subscriber(
        &broker,
        "id:s\ndestination: /queue/blank \nack: client\nactivemq.prefetchSize: 1",
        "SEND\ndestination:/queue/blank \nreceipt:a\n\nfirst\0\
         SEND\ndestination: /queue/blank\nreceipt:b\n\nsecond\0",
    )
    .await;
    assert_eq!(first.get("destination"), Some("/queue/blank"));
    assert_eq!(String::from_utf8_lossy(&first.body), "first");
    assert_eq!(broker.queue_depth("queue://blank"), 1);
    // Client acks and a prefetch of 1, both read through the blanks.
    next_only_once_acknowledged(&mut consumer, &first).await;
}

/// With a prefetch of 1, the message after `first` (body "second") comes only once `first`
/// is acknowledged: nothing else arrives before the ACK; that message after it.
async fn next_only_once_acknowledged(consumer: &mut Peer, first: &Frame) -> Frame {
    consumer
        .write("SUBSCRIBE\nid:probe\ndestination:/queue/none\nreceipt:r\n\n\0")
        .await;
    let before_ack = consumer.frames_until(is_receipt("r")).await;
    assert!(bodies(&before_ack).is_empty(), "{before_ack:?}");
    let ack = first.get("ack").unwrap();
    consumer.write(&format!("ACK\nid:{ack}\n\n\0")).await;
    let second = consumer.next_frame().await;
    assert_eq!(String::from_utf8_lossy(&second.body), "second");
    second
}

/// NACK is not a STOMP 1.0 command: on a 1.0 connection it is an ERROR, as ActiveMQ answers,
/// and the message stays delivered (not dead-lettered), acknowledged by the ACK that follows.
#[tokio::test]
async fn a_nack_on_stomp_1_0_is_an_error_and_dead_letters_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut peer, _) = Peer::connect(&broker, "1.0", "").await;
    peer.write(
        "SUBSCRIBE\ndestination:/queue/old\nack:client\n\n\0\
         SEND\ndestination:/queue/old\npersistent:true\n\njob\0",
    )
    .await;
    let delivery = peer.next_frame().await;
    assert_eq!(delivery.command, Command::Message, "{delivery:?}");
    let id = delivery.get("message-id").unwrap().to_string();
    peer.write(&format!("NACK\nmessage-id:{id}\nreceipt:n\n\n\0"))
        .await;
    let error = peer.next_frame().await;
    assert_eq!(error.command, Command::Error, "{error:?}");
    assert!(error.get("message").unwrap().contains("1.0"), "{error:?}");
    assert_eq!(error.get("receipt-id"), Some("n"));
    assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
    peer.write(&format!("ACK\nmessage-id:{id}\nreceipt:a\n\n\0"))
        .await;
    let acked = peer.frames_until(is_receipt("a")).await;
    assert!(
        acked.iter().all(|f| f.command != Command::Error),
        "the ACK after the refused NACK: {acked:?}"
    );
    assert_eq!(broker.queue_depth("queue://ActiveMQ.DLQ"), 0);
}

/// Headers named as JMS headers set those headers, as at ActiveMQ (JMSPriority wins over
/// priority, JMSType over type), and are not kept as properties; a bad one is an ERROR naming
/// it.
#[tokio::test]
async fn jms_named_send_headers_set_the_jms_headers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let mut consumer = subscribed(&broker, "id:s\ndestination:/queue/jms\nack:auto").await;
    let (mut producer, _) = Peer::connect(&broker, "1.2", "").await;
    producer
        .write(
            "SEND\ndestination:/queue/jms\npriority:1\nJMSPriority:8\ntype:t\nJMSType:jt\n\
             JMSCorrelationID:jc\nJMSDeliveryMode:PERSISTENT\nJMSTimestamp:1700000000000\n\
             JMSExpiration:0\ncolor:red\nreceipt:a\n\nbody\0",
        )
        .await;
    producer.frames_until(is_receipt("a")).await;
    let got = consumer.next_frame().await;
    assert_eq!(got.get("priority"), Some("8"));
    assert_eq!(got.get("type"), Some("jt"));
    assert_eq!(got.get("correlation-id"), Some("jc"));
    assert_eq!(got.get("persistent"), Some("true"));
    assert_eq!(got.get("timestamp"), Some("1700000000000"));
    assert_eq!(got.get("color"), Some("red"));
    for name in [
        "JMSPriority",
        "JMSType",
        "JMSCorrelationID",
        "JMSDeliveryMode",
        "JMSTimestamp",
    ] {
        assert_eq!(got.get(name), None, "{name} kept as a property");
    }
    producer
        .write("SEND\ndestination:/queue/jms\nJMSDeliveryMode:sometimes\nreceipt:b\n\nx\0")
        .await;
    let refused = producer.next_frame().await;
    assert!(
        refused
            .get("message")
            .is_some_and(|m| m.contains("JMSDeliveryMode")),
        "{refused:?}"
    );
}

/// The broker writes at least once per heart-beat period the client asked for (500 ms here, as
/// CONNECTED says), its own heart-beats included: it once counted its last heart-beat as
/// traffic and skipped the next one, so an idle client heard from it every other period and
/// stomp.py, which allows a period and a half, called it dead.
#[tokio::test(start_paused = true)]
async fn heart_beats_come_once_per_agreed_period() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut peer, connected) = Peer::connect(&broker, "1.2", "heart-beat:0,500\n").await;
    assert_eq!(connected.get("heart-beat"), Some("500,0"));
    let period = Duration::from_millis(500);
    let mut last = tokio::time::Instant::now();
    let mut beats = 0;
    while beats < 6 {
        match peer.decoder.decode(&mut peer.buf).unwrap() {
            Some(Item::HeartBeat) => {
                let now = tokio::time::Instant::now();
                assert!(now - last <= period, "{:?} between heart-beats", now - last);
                last = now;
                beats += 1;
            }
            Some(Item::Frame(f)) => panic!("unexpected {f:?}"),
            None => {
                let read = tokio::time::timeout(period * 4, peer.io.read_buf(&mut peer.buf));
                assert!(matches!(read.await, Ok(Ok(n)) if n > 0), "no heart-beat");
            }
        }
    }
}

/// As ActiveMQ's: a 1.0 CONNECTED says `version:1.0`, and the ERROR refusing a CONNECT is
/// written unescaped, since the client does not know the version yet (`tcp://`, not `tcp\c//`).
#[tokio::test]
async fn connect_answers_name_the_version_and_a_refusal_is_not_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (_first, connected) = Peer::connect(&broker, "1.0", "client-id:twice\n").await;
    assert_eq!(connected.get("version"), Some("1.0"), "{connected:?}");
    let mut second = Peer::start(&broker, 1 << 20);
    second
        .write("CONNECT\naccept-version:1.2\nclient-id:twice\n\n\0")
        .await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.io.read_to_end(&mut raw))
        .await
        .expect("the refusal within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("ERROR\n"), "{raw:?}");
    let message = raw
        .lines()
        .find_map(|line| line.strip_prefix("message:"))
        .unwrap_or_else(|| panic!("no message header: {raw:?}"));
    assert!(message.contains("already connected from tcp://"), "{raw:?}");
    assert!(!raw.contains("content-length"), "{raw:?}");
}

/// A durable SUBSCRIBE on a connection without a client id is served, as ActiveMQ serves it,
/// but as a subscription for the connection's life: ActiveMQ would keep it under the
/// connection's own id, where no later connection could resume it and its messages would pile
/// up for nobody.
#[tokio::test]
async fn a_durable_subscription_without_a_client_id_lasts_as_long_as_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(concat!(
        "SUBSCRIBE\nid:1\ndestination:/topic/anon\nactivemq.subscriptionName:D\n",
        "receipt:s\n\n\0",
        "SEND\ndestination:/topic/anon\npersistent:true\n\nx\0",
    ))
    .await;
    let frames = p.frames_until(|f| f.command == Command::Message).await;
    assert!(frames.iter().any(is_receipt("s")), "{frames:?}");
    assert_eq!(&frames.last().unwrap().body[..], b"x");
    let names = queue_names(&broker);
    assert!(!names.iter().any(|n| n.ends_with(":D")), "{names:?}");
    // Its UNSUBSCRIBE, naming it, ends it like any plain subscription.
    p.write(concat!(
        "UNSUBSCRIBE\nid:1\nactivemq.subscriptionName:D\nreceipt:u\n\n\0",
        "SEND\ndestination:/topic/anon\npersistent:true\nreceipt:r\n\ny\0",
    ))
    .await;
    let frames = p.frames_until(is_receipt("r")).await;
    assert!(
        frames.iter().all(|f| f.command == Command::Receipt),
        "{frames:?}"
    );
}

/// A client that promised a heart-beat every second and then says nothing is kept for more
/// than three periods, the longest ActiveMQ keeps one, and dropped at the next check. Silent
/// from CONNECT, when the checks start: they fall at 1.5, 3 and 4.5 s, and only the last finds
/// more than three periods of silence (with two periods allowed, the one at 3 s would).
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_kept_three_promised_periods() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut peer, connected) = Peer::connect(&broker, "1.2", "heart-beat:1000,0\n").await;
    assert_eq!(connected.get("heart-beat"), Some("0,1000"));
    let silent_since = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(4400), peer.io.read_to_end(&mut rest)).await;
    assert!(early.is_err(), "closed after {:?}", silent_since.elapsed());
    tokio::time::timeout(Duration::from_millis(200), peer.io.read_to_end(&mut rest))
        .await
        .expect("closed by the check at 4.5 s")
        .unwrap();
}

/// After a DISCONNECT nothing the client sent is handled and no MESSAGE is written: the
/// session is over for the client (ActiveMQ removes the connection at once), while the
/// RECEIPT waits for what came before. Before, a SEND after it was stored and an auto-ack
/// subscription made after it consumed messages the client would never read.
#[tokio::test]
async fn nothing_after_a_disconnect_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "").await;
    p.write(
        "SEND\ndestination:/queue/before\npersistent:true\n\nb\0\
         DISCONNECT\nreceipt:bye\n\n\0\
         SEND\ndestination:/queue/after\n\nlate\0\
         SUBSCRIBE\nid:s\ndestination:/queue/before\n\n\0",
    )
    .await;
    let frames = p.frames_until(is_receipt("bye")).await;
    assert_eq!(frames.len(), 1, "only the RECEIPT: {frames:?}");
    tokio::time::timeout(Duration::from_secs(10), &mut p.task)
        .await
        .expect("the session ends")
        .unwrap();
    assert_eq!(broker.queue_depth("queue://before"), 1);
    assert_eq!(broker.queue_depth("queue://after"), 0);
}

/// A CONNECT the broker refuses gets an ERROR that answers its `receipt` (as ActiveMQ's), and a
/// refused version negotiation names the versions spoken (`version:1.0,1.1,1.2`, as the STOMP
/// 1.1 and 1.2 specifications require).
#[tokio::test]
async fn a_refused_connect_names_the_versions_and_answers_its_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    for (connect, versions) in [
        (
            "CONNECT\naccept-version:2.0\nreceipt:c1\n\n\0",
            Some("1.0,1.1,1.2"),
        ),
        (
            "CONNECT\naccept-version:1.2\nheart-beat:x\nreceipt:c1\n\n\0",
            None,
        ),
    ] {
        let mut p = Peer::start(&broker, 1 << 20);
        p.write(connect).await;
        let error = p.next_frame().await;
        assert_eq!(error.command, Command::Error, "{error:?}");
        assert_eq!(error.get("receipt-id"), Some("c1"), "{connect:?}");
        assert_eq!(error.get("version"), versions, "{connect:?}");
    }
}

/// A transacted reply to another connection's temporary queue, which that connection deleted
/// (it closed) before the COMMIT, goes nowhere, as in ActiveMQ; before, the COMMIT made an
/// ordinary queue of that name that nobody could read and nothing deleted.
#[tokio::test]
async fn a_transacted_reply_to_a_temp_queue_gone_before_the_commit_goes_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut responder, mut client, reply_to) = a_request_with_a_temp_reply_to(&broker).await;
    responder
        .write(&format!(
            "BEGIN\ntransaction:t\n\n\0SEND\ndestination:{reply_to}\ntransaction:t\nreceipt:s\n\nlate\0"
        ))
        .await;
    responder.frames_until(is_receipt("s")).await;
    client.write("DISCONNECT\nreceipt:bye\n\n\0").await;
    client.frames_until(is_receipt("bye")).await;
    drop(client);
    wait_for_no_temp_queues(&broker).await;
    // The owner is gone once a plain SEND to its queue is refused.
    wait_until_refused(&mut responder, &reply_to).await;
    responder
        .write("COMMIT\ntransaction:t\nreceipt:c\n\n\0")
        .await;
    let frames = responder.frames_until(is_receipt("c")).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(
        temp_queues(&broker).is_empty(),
        "{:?}",
        temp_queues(&broker)
    );
}

/// STOMP 1.0 subscriptions without an `id`, as ActiveMQ takes them: two to one destination
/// (another selector each) are two subscriptions, and an UNSUBSCRIBE naming only a destination
/// ends the subscription made to it, whatever id and options it was made with.
#[tokio::test]
async fn stomp_1_0_subscriptions_without_an_id_work_as_in_activemq() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.0", "").await;
    p.write(
        "SUBSCRIBE\ndestination:/topic/p\nselector:a = 1\nreceipt:s1\n\n\0\
         SUBSCRIBE\ndestination:/topic/p\nselector:a = 2\nreceipt:s2\n\n\0\
         SUBSCRIBE\nid:foo\ndestination:/queue/a?consumer.prefetchSize=1\nreceipt:s3\n\n\0",
    )
    .await;
    let frames = p.frames_until(is_receipt("s3")).await;
    assert!(
        frames.iter().all(|f| f.command == Command::Receipt),
        "{frames:?}"
    );
    let consumers = |broker: &Broker, name: &str| {
        broker
            .queue_stats()
            .into_iter()
            .find(|q| q.name == name)
            .map_or(0, |q| q.consumers)
    };
    assert_eq!(consumers(&broker, "queue://a"), 1);
    p.write("UNSUBSCRIBE\ndestination:/queue/a\nreceipt:u\n\n\0")
        .await;
    let frames = p.frames_until(is_receipt("u")).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(consumers(&broker, "queue://a"), 0);
    // Both topic subscriptions live: each gets what its selector takes.
    let (mut sender, _) = Peer::connect(&broker, "1.2", "").await;
    sender
        .write("SEND\ndestination:/topic/p\na:2\nreceipt:r\n\ntwo\0")
        .await;
    sender.frames_until(is_receipt("r")).await;
    let message = p.next_frame().await;
    assert_eq!(message.command, Command::Message, "{message:?}");
    assert_eq!(message.body.as_ref(), b"two");
}

/// As in ActiveMQ, an UNSUBSCRIBE naming a durable subscription deletes only that
/// subscription, and not while a subscriber is on it: this connection's own stays subscribed
/// and keeps receiving, and nothing stored for it is lost. Unsubscribed by id first, it can be
/// deleted by name.
#[tokio::test]
async fn naming_an_active_durable_subscription_in_unsubscribe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.2", "client-id:c\n").await;
    p.write(
        "SUBSCRIBE\nid:d1\ndestination:/topic/t\nactivemq.subscriptionName:n\nreceipt:1\n\n\0\
         UNSUBSCRIBE\nid:d1\nactivemq.subscriptionName:n\nreceipt:2\n\n\0\
         SEND\ndestination:/topic/t\npersistent:true\nreceipt:3\n\nstill subscribed\0",
    )
    .await;
    let frames = p.frames_until(|f| f.command == Command::Message).await;
    let refused = frames
        .iter()
        .find(|f| f.get("receipt-id") == Some("2"))
        .expect("an answer to the UNSUBSCRIBE");
    assert_eq!(refused.command, Command::Error, "{frames:?}");
    assert_eq!(&frames.last().unwrap().body[..], b"still subscribed");
    let names = queue_names(&broker);
    assert!(names.contains(&"durable://c:n".to_string()), "{names:?}");

    p.write(
        "UNSUBSCRIBE\nid:d1\nreceipt:4\n\n\0\
         UNSUBSCRIBE\nid:d1\nactivemq.subscriptionName:n\nreceipt:5\n\n\0",
    )
    .await;
    let frames = p.frames_until(is_receipt("5")).await;
    assert!(
        frames.iter().all(|f| f.command == Command::Receipt),
        "{frames:?}"
    );
    let names = queue_names(&broker);
    assert!(!names.contains(&"durable://c:n".to_string()), "{names:?}");
}

/// An UNSUBSCRIBE without an `id` naming a durable subscription removes that one, not a live
/// subscription to the same destination; and only STOMP 1.0 may leave out the `id` to end a
/// subscription by its destination (1.1 and 1.2 require it).
#[tokio::test]
async fn an_unsubscribe_by_destination_ends_only_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_for_tests(dir.path(), Default::default());
    let (mut p, _) = Peer::connect(&broker, "1.0", "client-id:c\n").await;
    p.write(
        "SUBSCRIBE\ndestination:/topic/x\nactivemq.subscriptionName:bar\nreceipt:1\n\n\0\
         SUBSCRIBE\nid:f\ndestination:/topic/x\nactivemq.subscriptionName:foo\nreceipt:2\n\n\0\
         UNSUBSCRIBE\nid:f\nreceipt:3\n\n\0\
         UNSUBSCRIBE\ndestination:/topic/x\nactivemq.subscriptionName:foo\nreceipt:4\n\n\0",
    )
    .await;
    let frames = p.frames_until(is_receipt("4")).await;
    assert!(
        frames.iter().all(|f| f.command == Command::Receipt),
        "{frames:?}"
    );
    let names = queue_names(&broker);
    assert!(names.contains(&"durable://c:bar".to_string()), "{names:?}");
    assert!(!names.contains(&"durable://c:foo".to_string()), "{names:?}");
    let (mut q, _) = Peer::connect(&broker, "1.2", "").await;
    q.write(
        "SUBSCRIBE\nid:s1\ndestination:/queue/y\nreceipt:1\n\n\0\
         UNSUBSCRIBE\ndestination:/queue/y\nreceipt:2\n\n\0",
    )
    .await;
    let frames = q.frames_until(|f| f.get("receipt-id") == Some("2")).await;
    assert_eq!(frames.last().unwrap().command, Command::Error, "{frames:?}");
}
