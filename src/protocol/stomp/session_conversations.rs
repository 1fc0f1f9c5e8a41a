//! Random but plausible STOMP conversations with a real broker core, checking the project's
//! rule: the process never panics on input; bad input gets an ERROR naming it, and the broker
//! and every other connection carry on. Rounds of three careless clients (every command, good
//! values mostly, 0.3% of choices bad, deliveries acknowledged at most once) run at once on one
//! broker; after each round a new connection sends and receives.

use super::*;

/// A small xorshift generator: a failing seed replays the same conversation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Where a careful client sends.
const DESTINATIONS: &[&str] = &[
    "/queue/q1",
    "/queue/q2",
    "/topic/t.1",
    "/queue/q1,/topic/t.1",
    "/temp-queue/r",
    "/temp-topic/r",
    "/queue/ActiveMQ.DLQ",
    "/topic/VirtualTopic.v",
    "/queue/\u{e9}\u{20ac}\u{1F600}",
];
/// What a careful client also subscribes to.
const PATTERNS: &[&str] = &[
    "/topic/t.>",
    "/topic/t.*",
    "/queue/Consumer.A.VirtualTopic.v",
    "/topic/ActiveMQ.Advisory.Queue",
];
const BAD_DESTINATIONS: &[&str] = &["/queue/", "/topic/", "queue://x", "", "/x/y", "/topic/t.>"];
const BAD_NUMBERS: &[&str] = &["-1", "10", "300", "99999999999999999999", "x", "", " 5"];
const SELECTORS: &[&str] = &[
    "a > 1",
    "JMSPriority > 4",
    "b IN ('x', 'y')",
    "c LIKE 'a%' ESCAPE '!'",
    "JMSXGroupID IS NULL",
    "a / 0 = 1",
];
const BAD_SELECTORS: &[&str] = &["a BETWEEN 1 AND", "((", "a = 'x"];

/// What a MESSAGE frame lets a later ACK or NACK name.
#[derive(Clone)]
struct Delivered {
    ack: Option<String>,
    message_id: Option<String>,
    subscription: Option<String>,
}

/// A plausible but careless client: real commands that name what exists, and now and then
/// (0.3% of choices) a bad value, an unknown name or a command that makes no sense.
struct Careless {
    rng: Rng,
    version: &'static str,
    transactions: Vec<String>,
    /// Subscription ids with whether their deliveries need an ACK.
    subscriptions: Vec<(String, bool)>,
    /// Deliveries already acknowledged (or given up on) by ack id or message id.
    settled: std::collections::HashSet<String>,
    frames: usize,
}

impl Careless {
    fn careless(&mut self) -> bool {
        self.rng.below(1000) < 3
    }

    /// A good value, or now and then a bad one.
    fn value(&mut self, good: &[&'static str], bad: &[&'static str]) -> String {
        if !bad.is_empty() && self.careless() {
            self.rng.pick(bad).to_string()
        } else {
            self.rng.pick(good).to_string()
        }
    }

    /// A delivery of a subscription that needs ACKs, not yet settled.
    fn unsettled(&mut self, seen: &[Delivered]) -> Option<Delivered> {
        let open: Vec<&Delivered> =
            seen.iter()
                .filter(|d| {
                    let key = d.ack.as_ref().or(d.message_id.as_ref());
                    key.is_some_and(|k| !self.settled.contains(k))
                        && self.subscriptions.iter().any(|(id, acked)| {
                            *acked && d.subscription.as_deref() == Some(id.as_str())
                        })
                })
                .collect();
        (!open.is_empty()).then(|| open[self.rng.below(open.len())].clone())
    }

    fn frame(&mut self, seen: &[Delivered]) -> String {
        self.frames += 1;
        let n = self.frames;
        let mut command = match self.rng.below(100) {
            0..=34 => "SEND",
            35..=46 => "SUBSCRIBE",
            47..=51 => "UNSUBSCRIBE",
            52..=71 => "ACK",
            72..=77 => "NACK",
            78..=85 => "BEGIN",
            86..=92 => "COMMIT",
            _ => "ABORT",
        };
        if self.careless() {
            command = self.rng.pick(&["CONNECT", "BOGUS", "send", "DISCONNECT"]);
        }
        let careless = self.careless();
        let delivery = self.unsettled(seen);
        command = match command {
            "ACK" | "NACK" if delivery.is_none() && !careless => "SEND",
            "COMMIT" | "ABORT" if self.transactions.is_empty() && !careless => "BEGIN",
            "UNSUBSCRIBE" if self.subscriptions.is_empty() && !careless => "SUBSCRIBE",
            other => other,
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        match command {
            "SEND" => {
                let d = self.value(DESTINATIONS, BAD_DESTINATIONS);
                headers.push(("destination".into(), d));
                let optional: [(&str, &[&'static str], &[&'static str]); 11] = [
                    ("persistent", &["true", "false"], &[]),
                    ("priority", &["0", "4", "9"], BAD_NUMBERS),
                    ("expires", &["0", "1", "4102444800000"], &["x", "-1"]),
                    ("AMQ_SCHEDULED_DELAY", &["0", "5", "30"], &["x"]),
                    ("AMQ_SCHEDULED_PERIOD", &["10"], &["x", "-1"]),
                    ("AMQ_SCHEDULED_REPEAT", &["1", "2"], &["x"]),
                    ("JMSXGroupID", &["g1", "g2"], &[]),
                    ("reply-to", DESTINATIONS, BAD_DESTINATIONS),
                    ("amq-msg-type", &["text", "bytes"], &["map"]),
                    ("a", &["0", "1", "2", "x"], &[]),
                    ("message-id", &["m1", "m2"], &[]),
                ];
                for (name, good, bad) in optional {
                    if self.rng.chance(15) {
                        let v = self.value(good, bad);
                        headers.push((name.into(), v));
                    }
                }
            }
            "SUBSCRIBE" => {
                let destination = if self.rng.chance(30) {
                    self.value(PATTERNS, BAD_DESTINATIONS)
                } else {
                    self.value(DESTINATIONS, BAD_DESTINATIONS)
                };
                let id = if careless && !self.subscriptions.is_empty() {
                    self.subscriptions[0].0.clone()
                } else {
                    format!("s{n}")
                };
                let ack = self.value(&["auto", "client", "client-individual"], &["bogus"]);
                headers.push(("destination".into(), destination.clone()));
                headers.push(("id".into(), id.clone()));
                headers.push(("ack".into(), ack.clone()));
                let optional: [(&str, &[&'static str], &[&'static str]); 5] = [
                    ("selector", SELECTORS, BAD_SELECTORS),
                    ("activemq.prefetchSize", &["1", "5", "1000"], BAD_NUMBERS),
                    ("activemq.priority", &["0", "5", "127"], BAD_NUMBERS),
                    ("activemq.exclusive", &["true", "false"], &[]),
                    ("activemq.noLocal", &["true", "false"], &[]),
                ];
                for (name, good, bad) in optional {
                    if self.rng.chance(20) {
                        let v = self.value(good, bad);
                        headers.push((name.into(), v));
                    }
                }
                let one_topic = destination.starts_with("/topic/") && !destination.contains(',');
                if (one_topic && self.rng.chance(30)) || careless {
                    headers.push(("activemq.subscriptionName".into(), format!("d{n}")));
                }
                let queue = destination.starts_with("/queue/") && !destination.contains(',');
                if (queue && self.version != "1.0" && self.rng.chance(15)) || careless {
                    headers.push(("browser".into(), "true".into()));
                }
                self.subscriptions.push((id, ack != "auto"));
            }
            "UNSUBSCRIBE" => {
                let id = if self.subscriptions.is_empty() || careless {
                    "s-none".to_string()
                } else {
                    let i = self.rng.below(self.subscriptions.len());
                    self.subscriptions.swap_remove(i).0
                };
                headers.push(("id".into(), id));
            }
            "ACK" | "NACK" => {
                let known = match delivery {
                    Some(d) if !careless => d,
                    _ => Delivered {
                        ack: Some("nope".into()),
                        message_id: Some("ID:nope".into()),
                        subscription: Some("s-none".into()),
                    },
                };
                for key in [&known.ack, &known.message_id].into_iter().flatten() {
                    self.settled.insert(key.clone());
                }
                let wanted: &[(&str, Option<String>)] = match self.version {
                    "1.2" => &[("id", known.ack)],
                    "1.1" => &[
                        ("message-id", known.message_id),
                        ("subscription", known.subscription),
                    ],
                    _ => &[("message-id", known.message_id)],
                };
                for (name, value) in wanted {
                    headers.push((name.to_string(), value.clone().unwrap_or_default()));
                }
            }
            "BEGIN" => {
                let t = if careless && !self.transactions.is_empty() {
                    self.transactions[0].clone()
                } else {
                    format!("tx{n}")
                };
                self.transactions.push(t.clone());
                headers.push(("transaction".into(), t));
            }
            "COMMIT" | "ABORT" => {
                let t = if self.transactions.is_empty() || careless {
                    "tx-none".to_string()
                } else {
                    let i = self.rng.below(self.transactions.len());
                    self.transactions.swap_remove(i)
                };
                headers.push(("transaction".into(), t));
            }
            "CONNECT" => {
                headers.push(("accept-version".into(), "1.2".into()));
            }
            _ => {}
        }
        if matches!(command, "SEND" | "ACK" | "NACK")
            && !self.transactions.is_empty()
            && self.rng.chance(40)
        {
            let i = self.rng.below(self.transactions.len());
            headers.push(("transaction".into(), self.transactions[i].clone()));
        }
        if self.rng.chance(70) {
            headers.push(("receipt".into(), format!("r{n}")));
        }
        if self.careless() {
            headers.push(("bad\\escape".into(), "v".into()));
        }
        let body: String = (0..self.rng.below(48))
            .map(|_| char::from(b'a' + self.rng.below(26) as u8))
            .collect();
        if self.careless() {
            headers.push(("content-length".into(), "x".into()));
        } else if self.rng.chance(20) {
            headers.push(("content-length".into(), body.len().to_string()));
        }
        let mut text = format!("{command}\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}:{value}\n"));
        }
        text.push('\n');
        text.push_str(&body);
        text.push('\0');
        text
    }
}

/// What the careless client's reader heard from the broker.
#[derive(Default)]
struct Heard {
    delivered: Vec<Delivered>,
    receipts: std::collections::HashSet<String>,
    closed: bool,
}

type Hearing = Arc<(std::sync::Mutex<Heard>, tokio::sync::Notify)>;

/// Frames the broker writes, read until it closes the connection, into `heard`.
async fn read_all(mut input: tokio::io::ReadHalf<DuplexStream>, heard: Hearing) {
    let mut decoder = Decoder::new(1 << 20);
    let mut buf = BytesMut::new();
    loop {
        let item = decoder.decode(&mut buf);
        if let Ok(Some(Item::Frame(frame))) = &item {
            let mut h = heard.0.lock().unwrap();
            match frame.command {
                Command::Connected => {
                    if let Some(v) = frame.get("version").and_then(Version::parse) {
                        decoder.set_version(v);
                    }
                }
                Command::Message => h.delivered.push(Delivered {
                    ack: frame.get("ack").map(str::to_string),
                    message_id: frame.get("message-id").map(str::to_string),
                    subscription: frame.get("subscription").map(str::to_string),
                }),
                Command::Receipt => {
                    h.receipts
                        .insert(frame.get("receipt-id").unwrap_or("").into());
                }
                // A refused frame's ERROR answers its receipt; the connection may carry on
                // (a refusal that closes it ends the stream below).
                Command::Error => {
                    if let Some(receipt) = frame.get("receipt-id") {
                        h.receipts.insert(receipt.into());
                    }
                }
                _ => {}
            }
            drop(h);
            heard.1.notify_waiters();
        }
        match item {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => panic!("the broker wrote a frame its own decoder refuses: {e}"),
        }
        if input.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            heard.0.lock().unwrap().closed = true;
            heard.1.notify_waiters();
            return;
        }
    }
}

/// Waits until the broker answered `receipt` or closed the connection; false after 10 s.
async fn answered(heard: &Hearing, receipt: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let notified = heard.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let h = heard.0.lock().unwrap();
            if h.closed || h.receipts.contains(receipt) {
                return true;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

/// One careless client's conversation of up to sixty frames on `broker`: every receipt
/// it asks for comes (or an ERROR closes the connection), and its session ends without a
/// panic once it goes. The problem, with the seed and the frames written, if not.
async fn converse(broker: Broker, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let version = rng.pick(&["1.0", "1.1", "1.2"]);
    let mut client = Careless {
        rng,
        version,
        transactions: Vec::new(),
        subscriptions: Vec::new(),
        settled: Default::default(),
        frames: 0,
    };
    let peer = Peer::start(&broker, 1 << 20);
    let (input, mut output) = tokio::io::split(peer.io);
    let heard = Hearing::default();
    let reader = tokio::spawn(read_all(input, heard.clone()));
    let mut conversation =
        format!("CONNECT\naccept-version:{version}\nclient-id:fuzz-{seed}\nheart-beat:0,0\n\n\0");
    let _ = output.write_all(conversation.as_bytes()).await;
    let shown = |conversation: &str| conversation.replace('\0', "^@\n");
    for _ in 0..60 {
        let delivered = heard.0.lock().unwrap().delivered.clone();
        let frame = client.frame(&delivered);
        conversation.push_str(&frame);
        if output.write_all(frame.as_bytes()).await.is_err() {
            break; // the broker closed the connection: an ERROR, or DISCONNECT
        }
        let receipt = format!("r{}", client.frames);
        if frame.contains(&format!("\nreceipt:{receipt}\n")) && !answered(&heard, &receipt).await {
            let frames = shown(&conversation);
            return Err(format!(
                "seed {seed}: no answer to receipt {receipt}\n{frames}"
            ));
        }
        if heard.0.lock().unwrap().closed {
            break;
        }
    }
    let _ = output.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), peer.task).await;
    let frames = shown(&conversation);
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("seed {seed}: the session panicked: {e}\n{frames}")),
        Err(_) => {
            return Err(format!(
                "seed {seed}: the session outlived its client\n{frames}"
            ))
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), reader).await {
        Ok(Ok(())) => Ok(()),
        other => Err(format!("seed {seed}: reader {other:?}")),
    }
}

/// Rounds of three careless clients at once on one broker (see [`converse`]); after each
/// round the broker still takes and delivers a receipted send on a new connection.
/// `STOMP_FUZZ_SEED` replays one round's choices (what each client acknowledges depends
/// on what it was delivered, hence on timing); `STOMP_FUZZ_CASES` runs more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_clients_never_break_the_session_or_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::broker::BrokerOptions {
        scheduler_support: true,
        ..crate::broker::BrokerOptions::default()
    };
    let broker = Broker::start_for_tests(dir.path(), options);
    let seeds: Vec<u64> = match std::env::var("STOMP_FUZZ_SEED") {
        Ok(seed) => vec![seed.parse().expect("STOMP_FUZZ_SEED is a number")],
        Err(_) => {
            let cases = std::env::var("STOMP_FUZZ_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(100u64);
            (1..=cases)
                .map(|c| c.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect()
        }
    };
    for seed in seeds {
        // Three careless clients at once, on the same destinations: one's ERROR (its
        // deliveries going back to their queues) meets the others' consumption.
        let clients: Vec<_> = (0..3u64)
            .map(|i| tokio::spawn(converse(broker.clone(), seed.wrapping_add(i))))
            .collect();
        for client in clients {
            if let Err(problem) = client.await.expect("the conversation's task") {
                panic!("{problem}");
            }
        }

        let (mut canary, _) = Peer::connect(&broker, "1.2", "").await;
        let body = format!("canary {seed}");
        canary
            .write(&format!(
                "SEND\ndestination:/queue/canary\npersistent:true\nreceipt:s\n\n{body}\0\
                 SUBSCRIBE\nid:c\ndestination:/queue/canary\nack:client-individual\n\n\0"
            ))
            .await;
        let mut frames = Vec::new();
        while !(frames.iter().any(is_receipt("s"))
            && frames.iter().any(|f: &Frame| f.command == Command::Message))
        {
            frames.push(canary.next_frame().await);
        }
        let message = frames
            .iter()
            .find(|f| f.command == Command::Message)
            .unwrap();
        assert_eq!(message.body, body.as_bytes(), "seed {seed}");
        let ack = message.get("ack").unwrap().to_string();
        canary
            .write(&format!(
                "ACK\nid:{ack}\nreceipt:a\n\n\0DISCONNECT\nreceipt:bye\n\n\0"
            ))
            .await;
        canary.frames_until(is_receipt("bye")).await;
    }
}
