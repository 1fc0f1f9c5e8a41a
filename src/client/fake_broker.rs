//! Test peers: [`FakeListener`], a scripted STOMP server a test drives frame by frame, and
//! [`MemoryBroker`], a tiny in-memory broker (queues, topics, receipts, duplicate detection by
//! message-id) for testing whole commands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::protocol::stomp::frame::{encode, receipt, Command, Decoder, Frame, Item, Version};

/// How long a scripted peer waits for the client before failing the test.
const PATIENCE: Duration = Duration::from_secs(10);

/// A listening socket on 127.0.0.1 with a random port.
/// A MESSAGE frame for subscription `subscription` on `destination`: message-id `ID:p:<n>`,
/// body `m<n>`, to be acknowledged as `ack`.
pub(crate) fn message_frame(subscription: &str, destination: &str, n: u32, ack: &str) -> Frame {
    Frame::new(Command::Message)
        .header("subscription", subscription)
        .header("destination", destination)
        .header("message-id", format!("ID:p:{n}"))
        .header("ack", ack)
        .with_body(format!("m{n}"))
}

pub(crate) struct FakeListener {
    listener: TcpListener,
}

impl FakeListener {
    pub(crate) async fn bind() -> FakeListener {
        FakeListener {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.listener.local_addr().expect("local address").port()
    }

    pub(crate) fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port())
    }

    /// Accepts a client, completes its handshake, takes its SUBSCRIBE (whose ack mode must be
    /// `ack`) and confirms it; the connection and the SUBSCRIBE frame.
    pub(crate) async fn subscribed(&self, ack: &str) -> (FakeConnection, Frame) {
        let mut connection = self.accept().await;
        connection.handshake().await;
        let subscribe = connection.expect(Command::Subscribe).await;
        assert_eq!(subscribe.get("ack"), Some(ack));
        connection.receipt(&subscribe).await;
        (connection, subscribe)
    }

    pub(crate) async fn accept(&self) -> FakeConnection {
        let (stream, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("the client did not connect in time")
            .expect("accept");
        FakeConnection {
            stream,
            decoder: Decoder::new(1 << 20),
            input: BytesMut::new(),
            version: Version::V1_0,
        }
    }
}

/// One accepted connection, driven by the test.
pub(crate) struct FakeConnection {
    stream: TcpStream,
    decoder: Decoder,
    input: BytesMut,
    version: Version,
}

impl FakeConnection {
    /// The next frame or heart-beat; `None` at end of stream.
    pub(crate) async fn read_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.decoder.decode(&mut self.input).expect("decodable") {
                return Some(item);
            }
            let read = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.input))
                .await
                .expect("the client went silent");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame, skipping heart-beats; `None` at end of stream.
    pub(crate) async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            match self.read_item().await? {
                Item::Frame(frame) => return Some(frame),
                Item::HeartBeat => {}
            }
        }
    }

    /// The next frame, which must be a `command`.
    pub(crate) async fn expect(&mut self, command: Command) -> Frame {
        let frame = self.read_frame().await.expect("a frame, not end of stream");
        assert_eq!(frame.command, command, "unexpected frame {frame:?}");
        frame
    }

    pub(crate) async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, self.version, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Reads CONNECT, answers CONNECTED (STOMP 1.2, no heart-beats); returns the CONNECT.
    pub(crate) async fn handshake(&mut self) -> Frame {
        self.handshake_with(&[]).await
    }

    /// Like [`FakeConnection::handshake`], with extra CONNECTED headers.
    pub(crate) async fn handshake_with(&mut self, headers: &[(&str, &str)]) -> Frame {
        let connect = self.expect(Command::Connect).await;
        let mut connected = Frame::new(Command::Connected).header("version", "1.2");
        for (name, value) in headers {
            connected = connected.header(*name, *value);
        }
        self.send(connected).await;
        self.version = Version::V1_2;
        self.decoder.set_version(Version::V1_2);
        connect
    }

    /// Reads CONNECT and answers ERROR with `message`, then closes.
    pub(crate) async fn refuse(mut self, message: &str) {
        self.expect(Command::Connect).await;
        self.send(Frame::new(Command::Error).header("message", message))
            .await;
        self.close().await;
    }

    /// Answers `frame`'s receipt.
    pub(crate) async fn receipt(&mut self, frame: &Frame) {
        let id = frame.get("receipt").expect("a receipt header");
        self.send(receipt(id)).await;
    }

    /// Answers every frame's receipt, if it asks for one, until DISCONNECT (answered too) or
    /// the end of the connection.
    pub(crate) async fn receipts_until_disconnect(&mut self) {
        while let Some(frame) = self.read_frame().await {
            if frame.get("receipt").is_some() {
                self.receipt(&frame).await;
            }
            if frame.command == Command::Disconnect {
                break;
            }
        }
    }

    /// Closes the connection cleanly (FIN, not RST).
    pub(crate) async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// A tiny broker kept in memory: enough STOMP for the client and the CLI to be tested whole.
/// Queues hand each message to one subscriber (round robin) and keep messages nobody is
/// subscribed for; topics copy to every subscriber. Every frame with a receipt gets one; a SEND
/// whose message-id was seen before is confirmed and dropped.
pub(crate) struct MemoryBroker {
    port: u16,
    state: Arc<Mutex<BrokerState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct BrokerState {
    queues: HashMap<String, VecDeque<Frame>>,
    /// destination -> (connection, subscription id, outbox of that connection)
    subscribers: HashMap<String, Vec<(u64, String, mpsc::UnboundedSender<Frame>)>>,
    seen: HashSet<String>,
    next_delivery: u64,
    round_robin: usize,
    duplicates: u64,
}

impl MemoryBroker {
    pub(crate) async fn start() -> MemoryBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(BrokerState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut next_connection = 0;
            while let Ok((stream, _)) = listener.accept().await {
                next_connection += 1;
                tokio::spawn(serve(stream, next_connection, shared.clone()));
            }
        });
        MemoryBroker { port, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Messages waiting in `queue` (a STOMP name, `/queue/x`).
    pub(crate) fn depth(&self, queue: &str) -> usize {
        let state = self.state.lock().expect("state");
        state.queues.get(queue).map_or(0, VecDeque::len)
    }

    /// The bodies of the messages waiting in `queue`, oldest first, as text.
    pub(crate) fn bodies(&self, queue: &str) -> Vec<String> {
        let state = self.state.lock().expect("state");
        state.queues.get(queue).map_or_else(Vec::new, |q| {
            q.iter()
                .map(|f| String::from_utf8_lossy(&f.body).into_owned())
                .collect()
        })
    }

    /// SENDs dropped as duplicates.
    pub(crate) fn duplicates(&self) -> u64 {
        self.state.lock().expect("state").duplicates
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, connection: u64, state: Arc<Mutex<BrokerState>>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<Frame>();
    let writer_task = tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some(frame) = outgoing.recv().await {
            encode(&frame, Version::V1_2, &mut out);
            while let Ok(frame) = outgoing.try_recv() {
                encode(&frame, Version::V1_2, &mut out);
            }
            if writer.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    });
    let mut decoder = Decoder::new(64 << 20);
    let mut input = BytesMut::new();
    loop {
        let frame = match decoder.decode(&mut input) {
            Ok(Some(Item::Frame(frame))) => frame,
            Ok(Some(Item::HeartBeat)) => continue,
            Ok(None) => match reader.read_buf(&mut input).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(_) => break,
        };
        if frame.command == Command::Connect {
            decoder.set_version(Version::V1_2);
            let _ = outbox.send(Frame::new(Command::Connected).header("version", "1.2"));
            continue;
        }
        {
            let mut state = state.lock().expect("state");
            match frame.command {
                Command::Send => state.send(&frame),
                Command::Subscribe => {
                    let destination = frame.get("destination").unwrap_or("").to_string();
                    let id = frame.get("id").unwrap_or("").to_string();
                    state
                        .subscribers
                        .entry(destination.clone())
                        .or_default()
                        .push((connection, id, outbox.clone()));
                    state.dispatch(&destination);
                }
                Command::Unsubscribe => {
                    let id = frame.get("id").unwrap_or("");
                    for subscribers in state.subscribers.values_mut() {
                        subscribers.retain(|(c, s, _)| !(*c == connection && s == id));
                    }
                }
                _ => {}
            }
        }
        if let Some(id) = frame.get("receipt") {
            let _ = outbox.send(receipt(id));
        }
        if frame.command == Command::Disconnect {
            break;
        }
    }
    {
        let mut state = state.lock().expect("state");
        for subscribers in state.subscribers.values_mut() {
            subscribers.retain(|(c, _, _)| *c != connection);
        }
    }
    drop(outbox);
    let _ = writer_task.await;
}

impl BrokerState {
    fn send(&mut self, frame: &Frame) {
        if let Some(id) = frame.get("message-id") {
            if !self.seen.insert(id.to_string()) {
                self.duplicates += 1;
                return;
            }
        }
        let destination = frame.get("destination").unwrap_or("").to_string();
        self.queues
            .entry(destination.clone())
            .or_default()
            .push_back(frame.clone());
        self.dispatch(&destination);
    }

    fn dispatch(&mut self, destination: &str) {
        let topic = destination.starts_with("/topic/");
        loop {
            let subscribers = self.subscribers.get(destination).map_or(0, Vec::len);
            if subscribers == 0 {
                if topic {
                    self.queues.remove(destination);
                }
                return;
            }
            let Some(message) = self
                .queues
                .get_mut(destination)
                .and_then(VecDeque::pop_front)
            else {
                return;
            };
            let targets: Vec<usize> = if topic {
                (0..subscribers).collect()
            } else {
                self.round_robin += 1;
                vec![self.round_robin % subscribers]
            };
            for target in targets {
                self.next_delivery += 1;
                let (_, id, outbox) = &self.subscribers[destination][target];
                let mut delivery = Frame::new(Command::Message)
                    .header("subscription", id.as_str())
                    .header("ack", self.next_delivery.to_string())
                    .with_body(message.body.clone());
                for (name, value) in &message.headers {
                    if name != "receipt" {
                        delivery = delivery.header(name.as_str(), value.as_str());
                    }
                }
                let _ = outbox.send(delivery);
            }
        }
    }
}
