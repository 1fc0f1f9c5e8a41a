//! One STOMP connection: frames in, broker-core calls out, deliveries back as MESSAGE frames.
//!
//! Owns the STOMP-specific parts of a conversation: version and heart-beat negotiation, login,
//! header mapping, ack modes, receipts. It must never hold broker state of its own beyond what
//! the wire needs (which deliveries await a client ack), and never sends a RECEIPT for a change
//! before the core confirms it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::frame::{self, Command, Decoder, Frame, Item, Version};
use crate::broker::{
    composite_members, AckScope, BodyType, Broker, BrokerError, Confirmation, Delivery,
    Destination, Header, NewMessage, Session, SubscribeRequest, JMS_TYPE_HEADER, REPLY_TO_HEADER,
};
use crate::protocol::openwire::{Destination as OwDestination, DestinationKind};
use crate::protocol::temps::TempDestinations;
use crate::protocol::write::{flush, Unwritten};
use crate::protocol::{destination_to_core, destination_to_stomp};

/// What every STOMP connection on a listener shares.
#[derive(Debug, Clone)]
pub struct StompOptions {
    pub max_frame_size: usize,
    /// login -> passcode; empty means anyone may connect.
    pub users: HashMap<String, String>,
    /// How long a client may take to send its CONNECT frame.
    pub connect_timeout: Duration,
    /// The node's temporary destinations (shared with the OpenWire listener): JMS clients hear
    /// of a STOMP client's on the advisory topics, and send replies to it only then.
    pub temps: Arc<TempDestinations>,
}

/// Default prefetch windows, ActiveMQ's.
const QUEUE_PREFETCH: u32 = 1000;
const TOPIC_PREFETCH: u32 = 32767;
const DURABLE_PREFETCH: u32 = 100;

/// Headers that carry STOMP or broker semantics and are not stored as application headers.
/// The second group is what the broker writes on each MESSAGE itself: a SEND that carries
/// them (a MESSAGE sent on with its headers, say) would otherwise deliver them twice, and a
/// client that reads the last of two `ack` or `subscription` headers would acknowledge the
/// wrong delivery. ActiveMQ drops the same ones (and `JMSXUserID`, which only a broker sets).
const RESERVED_SEND_HEADERS: &[&str] = &[
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "persistent",
    "expires",
    "priority",
    "message-id",
    super::DEDUPE_HEADER,
    "amq-msg-type",
    "subscription",
    "ack",
    "timestamp",
    "redelivered",
    "redelivery-count",
    "JMSXUserID",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

struct Subscription {
    ack: AckMode,
    /// A queue browser (`browser:true`, as ActiveMQ's STOMP): it got a copy of what the queue
    /// held when it subscribed, then `browser:end`; the core knows nothing of it, and its ACKs
    /// and NACKs change nothing.
    browser: bool,
    /// Deliveries with a lower tag were made to an earlier subscription with the same id
    /// (UNSUBSCRIBE, then SUBSCRIBE again): the core took them back, so they are not written.
    first_tag: u64,
}

/// Why a connection ends with an ERROR frame.
struct Fatal {
    message: String,
    detail: String,
    receipt: Option<String>,
}

impl Fatal {
    fn new(message: impl Into<String>) -> Fatal {
        Fatal {
            message: message.into(),
            detail: String::new(),
            receipt: None,
        }
    }
}

impl From<BrokerError> for Fatal {
    fn from(e: BrokerError) -> Fatal {
        Fatal::new(e.to_string())
    }
}

/// What a queued confirmation answers when it resolves.
enum Awaiting {
    Receipt(String),
    /// A DISCONNECT: answer (maybe with a receipt), then close.
    Disconnect(Option<String>),
    /// Nothing to answer, but a failure must still end the connection.
    Silent,
    /// A queue browser's snapshot, taken when this reaches the front: after everything the
    /// connection sent before it is confirmed (so the copies include those sends), and with its
    /// RECEIPT written after theirs.
    Browse(BrowsePlan, Option<String>),
}

/// Serves one connection whose first bytes (already read, in `initial`) are STOMP.
pub async fn serve<S>(
    stream: S,
    initial: BytesMut,
    broker: Broker,
    options: Arc<StompOptions>,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = Connection {
        stream,
        input: initial,
        output: BytesMut::with_capacity(64 * 1024),
        decoder: Decoder::new(options.max_frame_size),
        version: Version::V1_0,
        options,
        peer,
    };
    match connection.handshake(&broker).await {
        Ok(Some((session, deliveries, heartbeat))) => {
            let temps = Temps::new(broker.clone(), connection.options.temps.clone());
            connection.run(session, deliveries, heartbeat, temps).await
        }
        Ok(None) => {}
        Err(fatal) => connection.fail(fatal).await,
    }
}

struct Connection<S> {
    stream: S,
    input: BytesMut,
    output: BytesMut,
    decoder: Decoder,
    version: Version,
    options: Arc<StompOptions>,
    peer: SocketAddr,
}

/// How often a client held back by producer flow control, without heart-beats, is sent an
/// EOL: the only way to notice that it left, since nothing is read from it meanwhile.
const HELD_BACK_PROBE: Duration = Duration::from_secs(1);

/// Negotiated heart-beat periods: how often we send, how long the client may stay silent.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    send: Option<Duration>,
    receive: Option<Duration>,
}

/// A heart-beat period the client asked for (ms), within 100 ms and a day: shorter would
/// flood the connection, longer is as good as none (and would overflow a deadline).
fn heartbeat_period(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(100, 86_400_000))
}

fn parse_heartbeat(value: Option<&str>) -> (u64, u64) {
    let Some(value) = value else { return (0, 0) };
    let mut parts = value
        .split(',')
        .map(|p| p.trim().parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn negotiate_version(accept: Option<&str>) -> Option<Version> {
    let Some(accept) = accept else {
        return Some(Version::V1_0);
    };
    let offered: Vec<&str> = accept.split(',').map(str::trim).collect();
    [
        ("1.2", Version::V1_2),
        ("1.1", Version::V1_1),
        ("1.0", Version::V1_0),
    ]
    .into_iter()
    .find(|(name, _)| offered.contains(name))
    .map(|(_, v)| v)
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::V1_0 => "1.0",
        Version::V1_1 => "1.1",
        Version::V1_2 => "1.2",
    }
}

/// STOMP's view of a destination: `/queue/x`, `/topic/x`.
fn stomp_destination(d: &Destination) -> String {
    match d {
        Destination::Queue(n) => format!("/queue/{n}"),
        Destination::Topic(n) => format!("/topic/{n}"),
    }
}

fn required<'a>(frame: &'a Frame, header: &str) -> Result<&'a str, Fatal> {
    frame.get(header).ok_or_else(|| {
        Fatal::new(format!(
            "missing header '{header}' on {:?} frame",
            frame.command
        ))
    })
}

/// A SUBSCRIBE's `ack` header (default auto).
fn ack_mode(frame: &Frame) -> Result<AckMode, Fatal> {
    match frame.get("ack").unwrap_or("auto") {
        "auto" => Ok(AckMode::Auto),
        "client" => Ok(AckMode::Client),
        "client-individual" => Ok(AckMode::ClientIndividual),
        other => Err(Fatal::new(format!(
            "header 'ack' must be auto, client or client-individual, got '{other}'"
        ))),
    }
}

/// A boolean `activemq.` header: ActiveMQ sets ConsumerInfo's fields from them, and its
/// Boolean parsing ignores case (anything but `true` is false).
fn flag(frame: &Frame, header: &str) -> bool {
    frame
        .get(header)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads the next frame, or `None` at end of stream. Heart-beats are skipped.
    async fn read_frame(&mut self) -> Result<Option<Frame>, Fatal> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(Item::Frame(frame))) => return Ok(Some(frame)),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => return Err(Fatal::new(e.to_string())),
            }
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    async fn handshake(
        &mut self,
        broker: &Broker,
    ) -> Result<Option<(Session, mpsc::UnboundedReceiver<Delivery>, Heartbeat)>, Fatal> {
        let frame =
            match tokio::time::timeout(self.options.connect_timeout, self.read_frame()).await {
                Err(_) => return Err(Fatal::new("no CONNECT frame within the connect timeout")),
                Ok(frame) => frame?,
            };
        let Some(frame) = frame else { return Ok(None) };
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            return Err(Fatal::new(format!(
                "expected CONNECT or STOMP as the first frame, got {:?}",
                frame.command
            )));
        }
        let version = negotiate_version(frame.get("accept-version")).ok_or_else(|| Fatal {
            message: "Supported protocol versions are 1.0,1.1,1.2".into(),
            detail: String::new(),
            receipt: None,
        })?;
        self.version = version;
        self.decoder.set_version(version);
        if !self.options.users.is_empty() {
            let login = frame.get("login").unwrap_or("");
            let passcode = frame.get("passcode").unwrap_or("");
            if self.options.users.get(login).map(String::as_str) != Some(passcode) {
                tracing::warn!(peer = %self.peer, login, "STOMP login refused");
                return Err(Fatal::new(format!(
                    "User name [{login}] or password is invalid."
                )));
            }
        }
        let (client_send, client_receive) = parse_heartbeat(frame.get("heart-beat"));
        // Mirror the client's wishes: we send as often as it asks, and allow it twice the
        // period it promises before we call it dead.
        let heartbeat = Heartbeat {
            send: (client_receive > 0).then(|| heartbeat_period(client_receive)),
            receive: (client_send > 0).then(|| heartbeat_period(client_send) * 2),
        };
        let client_id = frame.get("client-id").map(str::to_string);
        let (session, deliveries) = broker.open_session(client_id);
        let mut connected = Frame::new(Command::Connected)
            .header("version", version_name(version))
            .header("server", concat!("ferromq/", env!("CARGO_PKG_VERSION")))
            .header("session", format!("{}", self.peer))
            .header(
                "heart-beat",
                format!(
                    "{},{}",
                    heartbeat.send.map_or(0, |d| d.as_millis()),
                    heartbeat.receive.map_or(0, |d| d.as_millis() / 2)
                ),
            );
        if version == Version::V1_0 {
            connected.headers.retain(|(k, _)| k != "version");
        }
        self.queue_frame(&connected);
        self.flush_output()
            .await
            .map_err(|_| Fatal::new("write failed"))?;
        tracing::debug!(peer = %self.peer, version = version_name(version), "STOMP session open");
        Ok(Some((session, deliveries, heartbeat)))
    }

    fn queue_frame(&mut self, frame: &Frame) {
        frame::encode(frame, self.version, &mut self.output);
    }

    async fn flush_output(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Sends an ERROR frame and closes.
    async fn fail(&mut self, fatal: Fatal) {
        tracing::info!(peer = %self.peer, error = %fatal.message, "closing STOMP connection with ERROR");
        let mut error = frame::error_frame(&fatal.message, &fatal.detail);
        if let Some(receipt) = fatal.receipt {
            error = error.header("receipt-id", receipt);
        }
        self.queue_frame(&error);
        let _ = self.flush_output().await;
        let _ = self.stream.shutdown().await;
    }

    async fn run(
        &mut self,
        session: Session,
        mut deliveries: mpsc::UnboundedReceiver<Delivery>,
        heartbeat: Heartbeat,
        temps: Temps,
    ) {
        let mut state = State {
            session,
            subscriptions: HashMap::new(),
            unacked: BTreeMap::new(),
            awaiting: VecDeque::new(),
            auto_acks: HashMap::new(),
            next_browse_tag: BROWSE_TAGS,
            version: self.version,
            temps,
        };
        // Producer flow control: see `Session::hold_back`.
        let gate = state.session.flow_gate();
        // Why reading is paused, while it is.
        let mut paused = None;
        let mut send_tick =
            tokio::time::interval(heartbeat.send.unwrap_or(Duration::from_secs(3600)));
        send_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut wrote_since_tick = false;
        let check = heartbeat
            .receive
            .map(|d| d / 2)
            .unwrap_or(Duration::from_secs(3600));
        let mut receive_tick = tokio::time::interval(check);
        receive_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Bytes read but not yet handled: what a write waited behind (see `write::flush`), and
        // at first whatever came with CONNECT (a client need not wait for CONNECTED).
        let mut unhandled_input = !self.input.is_empty();
        let result: Result<(), Fatal> = loop {
            let handle_input = std::mem::take(&mut unhandled_input);
            let ready = if handle_input {
                None
            } else {
                state
                    .awaiting
                    .front_mut()
                    .and_then(|(_, confirmation)| confirmation.try_outcome())
            };
            let step = if handle_input {
                self.handle_input(&mut state)
            } else if let Some(result) = ready {
                // What is confirmed is answered before more deliveries are written: a RECEIPT
                // must not wait behind a stream of MESSAGE frames (an auto-ack subscription's
                // backlog), which a client that stops reading while its application waits for
                // that RECEIPT would never get through.
                let (awaiting, _) = state.awaiting.pop_front().expect("non-empty");
                self.answer(&mut state, awaiting, result)
            } else {
                tokio::select! {
                    read = self.stream.read_buf(&mut self.input), if paused.is_none() => match read {
                        Ok(0) | Err(_) => break Ok(()),
                        Ok(_) => {
                            last_read = Instant::now();
                            self.handle_input(&mut state)
                        }
                    },
                    () = gate.room(paused), if paused.is_some() => {
                        paused = None;
                        // Not reading was the broker's doing, not a silent client.
                        last_read = Instant::now();
                        tracing::debug!(peer = %self.peer, "room again: reading resumed");
                        Ok(Step::Continue)
                    }
                    Some(delivery) = deliveries.recv() => {
                        self.write_delivery(&mut state, delivery);
                        // Batch what else is ready into the same write.
                        for _ in 0..255 {
                            match deliveries.try_recv() {
                                Ok(d) => self.write_delivery(&mut state, d),
                                Err(_) => break,
                            }
                        }
                        Ok(Step::Continue)
                    }
                    result = front(&mut state.awaiting), if !state.awaiting.is_empty() => {
                        let (awaiting, _) = state.awaiting.pop_front().expect("non-empty");
                        self.answer(&mut state, awaiting, result)
                    }
                    _ = send_tick.tick(), if heartbeat.send.is_some() => {
                        if !wrote_since_tick {
                            self.output.extend_from_slice(b"\n");
                        }
                        wrote_since_tick = false;
                        Ok(Step::Continue)
                    }
                    // Held back without heart-beats, nothing is read from the client: only a
                    // failed write shows that it left. Every STOMP version allows an EOL
                    // between frames (ActiveMQ ends each frame with one).
                    () = tokio::time::sleep(HELD_BACK_PROBE), if paused.is_some() && heartbeat.send.is_none() => {
                        self.output.extend_from_slice(b"\n");
                        Ok(Step::Continue)
                    }
                    _ = receive_tick.tick(), if heartbeat.receive.is_some() => {
                        if paused.is_none() && last_read.elapsed() > heartbeat.receive.expect("guarded") {
                            tracing::info!(peer = %self.peer, "no heart-beat from client; closing");
                            break Ok(());
                        }
                        Ok(Step::Continue)
                    }
                }
            };
            if !self.output.is_empty() {
                wrote_since_tick = true;
                let grace = heartbeat.receive.filter(|_| paused.is_none());
                let written = flush(
                    &mut self.stream,
                    &mut self.output,
                    &mut self.input,
                    grace,
                    &mut last_read,
                )
                .await;
                match written {
                    Ok(read) => unhandled_input = read,
                    Err(Unwritten::Failed) => break Ok(()),
                    Err(Unwritten::Silent) => {
                        tracing::info!(peer = %self.peer, "no heart-beat from client while writing to it; closing");
                        break Ok(());
                    }
                }
            }
            // Auto-ack what has now been written to the socket.
            state.flush_auto_acks();
            if let Some(hold) = state.session.hold_back() {
                tracing::debug!(peer = %self.peer, "{hold}: reading paused");
                paused = Some(hold);
            }
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Close) => break Ok(()),
                Err(fatal) => break Err(fatal),
            }
        };
        if let Err(fatal) = result {
            self.fail(fatal).await;
        } else {
            let _ = self.stream.shutdown().await;
        }
        tracing::debug!(peer = %self.peer, "STOMP session closed");
        // Dropping the session returns unacknowledged messages to their queues; then (`State`
        // drops `temps` after `session`) the connection's temporary destinations are deleted.
    }

    /// Handles every whole frame in the input buffer.
    fn handle_input(&mut self, state: &mut State) -> Result<Step, Fatal> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(Item::Frame(frame))) => {
                    if let Step::Close = self.handle_frame(state, frame)? {
                        return Ok(Step::Close);
                    }
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => return Ok(Step::Continue),
                Err(e) => return Err(Fatal::new(e.to_string())),
            }
        }
    }

    fn handle_frame(&mut self, state: &mut State, frame: Frame) -> Result<Step, Fatal> {
        let receipt = frame.get("receipt").map(str::to_string);
        let result = self.dispatch_frame(state, &frame, receipt.clone());
        result.map_err(|mut fatal| {
            fatal.receipt = receipt;
            if fatal.detail.is_empty() {
                fatal.detail = format!("{:?} frame refused", frame.command);
            }
            fatal
        })
    }

    fn dispatch_frame(
        &mut self,
        state: &mut State,
        frame: &Frame,
        receipt: Option<String>,
    ) -> Result<Step, Fatal> {
        let confirmation = match frame.command {
            Command::Send => state.send(frame)?,
            Command::Subscribe if frame.get("browser") == Some("true") => {
                // Registered now; the snapshot waits its turn (`Awaiting::Browse`).
                let plan = state.browse(frame)?;
                state
                    .awaiting
                    .push_back((Awaiting::Browse(plan, receipt), Confirmation::done()));
                return Ok(Step::Continue);
            }
            Command::Subscribe => state.subscribe(frame)?,
            Command::Unsubscribe => state.unsubscribe(frame)?,
            Command::Ack => state.ack(frame)?,
            Command::Nack => state.nack(frame)?,
            Command::Begin => {
                state.session.begin(required(frame, "transaction")?)?;
                Confirmation::done()
            }
            Command::Commit => state.session.commit(required(frame, "transaction")?)?,
            Command::Abort => {
                state.session.abort(required(frame, "transaction")?)?;
                Confirmation::done()
            }
            Command::Disconnect => {
                let flush = state.session.flush();
                state
                    .awaiting
                    .push_back((Awaiting::Disconnect(receipt), flush));
                return Ok(Step::Continue);
            }
            Command::Connect | Command::Stomp => {
                return Err(Fatal::new("already connected"));
            }
            other => {
                return Err(Fatal::new(format!(
                    "a client may not send {other:?} frames"
                )))
            }
        };
        match receipt {
            Some(id) => state
                .awaiting
                .push_back((Awaiting::Receipt(id), confirmation)),
            None if !confirmation.is_done() => {
                state.awaiting.push_back((Awaiting::Silent, confirmation))
            }
            None => {}
        }
        Ok(Step::Continue)
    }

    fn answer(
        &mut self,
        state: &mut State,
        awaiting: Awaiting,
        result: Result<(), BrokerError>,
    ) -> Result<Step, Fatal> {
        match (awaiting, result) {
            (Awaiting::Browse(plan, receipt), Ok(())) => {
                // As ActiveMQ: the RECEIPT, the copies, then a MESSAGE with `browser:end`.
                let browse = state.browse_copies(plan).map_err(|mut fatal| {
                    fatal.receipt.clone_from(&receipt);
                    fatal
                })?;
                if let Some(id) = &receipt {
                    self.queue_frame(&frame::receipt(id));
                }
                if let Some(browse) = browse {
                    for copy in browse.copies {
                        self.write_delivery(state, copy);
                    }
                    self.queue_frame(&browse.end);
                }
                Ok(Step::Continue)
            }
            (Awaiting::Receipt(id), Ok(())) => {
                self.queue_frame(&frame::receipt(&id));
                Ok(Step::Continue)
            }
            (Awaiting::Silent, Ok(())) => Ok(Step::Continue),
            (Awaiting::Disconnect(receipt), Ok(())) => {
                if let Some(id) = receipt {
                    self.queue_frame(&frame::receipt(&id));
                }
                Ok(Step::Close)
            }
            (Awaiting::Receipt(id), Err(e)) | (Awaiting::Disconnect(Some(id)), Err(e)) => {
                Err(Fatal {
                    message: e.to_string(),
                    detail: "the change was not confirmed".into(),
                    receipt: Some(id),
                })
            }
            (_, Err(e)) => Err(Fatal::new(e.to_string())),
        }
    }

    fn write_delivery(&mut self, state: &mut State, delivery: Delivery) {
        let Some(subscription) = state
            .subscriptions
            .get(&delivery.subscription)
            .filter(|s| delivery.tag >= s.first_tag)
        else {
            return; // unsubscribed meanwhile; the core takes it back
        };
        let ack = subscription.ack;
        let subscription_is_browser = subscription.browser;
        let message = &delivery.message;
        let destination = Destination::parse(&message.destination)
            .map(|d| state.temps.to_stomp(&d))
            .unwrap_or_else(|_| state.temps.to_stomp(&delivery.destination));
        let mut out = Frame::new(Command::Message)
            .header("subscription", delivery.subscription.clone())
            .header("message-id", message.message_id.clone())
            .header("destination", destination)
            .header("ack", delivery.tag.to_string());
        if message.persistent {
            out = out.header("persistent", "true");
        }
        if message.expiration != 0 {
            out = out.header("expires", message.expiration.to_string());
        }
        out = out
            .header("priority", message.priority.to_string())
            .header("timestamp", message.timestamp.to_string());
        if delivery.redelivery_count > 0 {
            out = out
                .header("redelivered", "true")
                .header("redelivery-count", delivery.redelivery_count.to_string());
        }
        for h in &message.headers {
            let value = match h.name.as_str() {
                // Stored in the core's form (queue://x); STOMP clients expect /queue/x.
                "original-destination" => Destination::parse(&h.value)
                    .map(|d| state.temps.to_stomp(&d))
                    .unwrap_or_else(|_| h.value.clone()),
                REPLY_TO_HEADER => state.temps.reply_to_stomp(&h.value),
                _ => h.value.clone(),
            };
            let name = match h.name.as_str() {
                JMS_TYPE_HEADER => "type".to_string(),
                other => other.to_string(),
            };
            out = out.header(name, value);
        }
        out.body = message.body.clone();
        self.queue_frame(&out);
        match ack {
            // Nothing to acknowledge in the core for a browsed copy.
            AckMode::Auto if subscription_is_browser => {}
            AckMode::Auto => {
                // Tags grow, so the last one written acknowledges all before it.
                state.auto_acks.insert(delivery.subscription, delivery.tag);
            }
            _ => {
                state.unacked.insert(
                    delivery.tag,
                    (delivery.subscription, message.message_id.clone()),
                );
            }
        }
    }
}

enum Step {
    Continue,
    Close,
}

/// Browsed copies are tagged from here up, far above any tag the core gives a delivery, so an
/// ACK of one is told apart from an ACK of a real delivery.
const BROWSE_TAGS: u64 = 1 << 62;

/// A registered queue browser whose snapshot is still to be taken.
struct BrowsePlan {
    id: String,
    /// The browser's `first_tag`: the snapshot is taken only if this subscription is still the
    /// one registered under `id` (not unsubscribed, nor replaced by a later SUBSCRIBE).
    first_tag: u64,
    destination: Destination,
    selector: Option<String>,
}

/// What a queue browser's snapshot writes: the copies, then the end marker.
struct Browse {
    copies: Vec<Delivery>,
    end: Frame,
}

/// Polls the oldest queued confirmation (the core resolves them in order).
async fn front(awaiting: &mut VecDeque<(Awaiting, Confirmation)>) -> Result<(), BrokerError> {
    let (_, confirmation) = awaiting.front_mut().expect("guarded by is_empty");
    confirmation.await
}

/// The per-connection STOMP bookkeeping around a broker session.
struct State {
    session: Session,
    subscriptions: HashMap<String, Subscription>,
    /// Deliveries awaiting a client ACK: tag -> (subscription id, message id).
    unacked: BTreeMap<u64, (String, String)>,
    awaiting: VecDeque<(Awaiting, Confirmation)>,
    /// Auto-ack subscriptions written to since the last flush -> their last tag written.
    auto_acks: HashMap<String, u64>,
    /// The tag of the next browsed copy (see [`BROWSE_TAGS`]).
    next_browse_tag: u64,
    version: Version,
    /// Declared after `session`, so dropped after it: by then the connection's consumers of
    /// its temporary destinations are gone and the destinations can be deleted.
    temps: Temps,
}

/// This connection's temporary destinations, ActiveMQ's `/temp-queue/NAME` and
/// `/temp-topic/NAME`: each NAME is a destination of its own, named after the connection
/// (`ID:<connection id>:<n>`), as a JMS client names its `TemporaryQueue`. Other connections
/// see it as `/remote-temp-queue/ID:...` (`/remote-temp-topic/ID:...`) and may send there.
/// Dropping this deletes them from the core, as a closing OpenWire connection deletes its own.
struct Temps {
    broker: Broker,
    /// Where JMS clients learn of them (ActiveMQ's STOMP connection sends a `DestinationInfo`
    /// for each, which the broker announces on its advisory topics).
    advisories: Arc<TempDestinations>,
    connection_id: String,
    /// (topic?, NAME) -> `ID:...`.
    by_name: HashMap<(bool, String), String>,
    /// (topic?, `ID:...`) -> `/temp-queue/NAME` or `/temp-topic/NAME`.
    by_id: HashMap<(bool, String), String>,
}

impl Temps {
    fn new(broker: Broker, advisories: Arc<TempDestinations>) -> Temps {
        Temps {
            broker,
            advisories,
            // ActiveMQ's connection ids look like `ID:host-port-time-n:m`; a random part keeps
            // ours unique across connections, restarts and nodes.
            connection_id: format!("ID:ferromq-stomp-{:016x}:1", rand::random::<u64>()),
            by_name: HashMap::new(),
            by_id: HashMap::new(),
        }
    }

    /// The `ID:...` name of this connection's `/temp-queue/NAME` (`topic`: `/temp-topic/`),
    /// made on first use.
    fn id_of(&mut self, topic: bool, name: &str) -> String {
        if let Some(id) = self.by_name.get(&(topic, name.to_string())) {
            return id.clone();
        }
        let id = format!("{}:{}", self.connection_id, self.by_name.len() + 1);
        let prefix = if topic {
            "/temp-topic/"
        } else {
            "/temp-queue/"
        };
        self.by_name.insert((topic, name.to_string()), id.clone());
        self.by_id
            .insert((topic, id.clone()), format!("{prefix}{name}"));
        self.advisories
            .add(advisory_destination(topic, &id), &self.connection_id);
        id
    }

    /// What a SEND's or SUBSCRIBE's destination names: one destination, or each member of a
    /// composite one (ActiveMQ's `/queue/a,/topic/b`, every member with its own prefix), and
    /// whether it is temporary (its messages are then never stored). A composite's members may
    /// not be temporary: its other members' messages are stored. Never empty.
    fn resolve_members(&mut self, text: &str) -> Result<(Vec<Destination>, bool), BrokerError> {
        let members = composite_members(text, |member| {
            if member.starts_with("/temp-") || member.starts_with("/remote-temp-") {
                return Err(format!(
                    "member '{member}' is temporary: name only /queue/NAME and /topic/NAME"
                ));
            }
            Destination::parse(member)
                .map_err(|_| format!("member '{member}' is not /queue/NAME or /topic/NAME"))
        })?;
        match members {
            Some(members) => Ok((members, false)),
            None => {
                let (destination, temporary) = self.resolve(text)?;
                Ok((vec![destination], temporary))
            }
        }
    }

    /// A STOMP destination as the core knows it, and whether it is temporary (its messages are
    /// then never stored).
    fn resolve(&mut self, text: &str) -> Result<(Destination, bool), BrokerError> {
        let temporary = [
            ("/temp-queue/", false, true),
            ("/temp-topic/", true, true),
            ("/remote-temp-queue/", false, false),
            ("/remote-temp-topic/", true, false),
        ]
        .into_iter()
        .find_map(|(prefix, topic, own)| text.strip_prefix(prefix).map(|n| (topic, own, n)));
        let Some((topic, own, name)) = temporary else {
            return Ok((Destination::parse(text)?, false));
        };
        if name.is_empty() || name.contains(['\n', '\0']) {
            return Err(BrokerError::InvalidDestination(text.to_string()));
        }
        // As in ActiveMQ, another connection's temporary destination is there only while its
        // connection lives (STOMP's or JMS's: both register theirs here).
        if !own
            && self
                .advisories
                .owner(&advisory_destination(topic, name))
                .is_none()
        {
            return Err(BrokerError::TemporaryGone(text.to_string()));
        }
        let name = if own {
            self.id_of(topic, name)
        } else {
            name.to_string()
        };
        let destination = if topic {
            Destination::Topic(name)
        } else {
            Destination::Queue(name)
        };
        Ok((destination, true))
    }

    /// A SEND's `reply-to` in the core's form: this connection's `/temp-queue/NAME` becomes
    /// `temp-queue://ID:...`, which another connection reads as `/remote-temp-queue/ID:...`.
    fn reply_to_core(&mut self, text: &str) -> String {
        for (prefix, topic, core) in [
            ("/temp-queue/", false, "temp-queue://"),
            ("/temp-topic/", true, "temp-topic://"),
        ] {
            if let Some(name) = text.strip_prefix(prefix).filter(|n| !n.is_empty()) {
                return format!("{core}{}", self.id_of(topic, name));
            }
        }
        destination_to_core(text)
    }

    /// A stored `reply-to` as this connection reads it: its own temporary destinations by
    /// their NAME, others' as `/remote-temp-queue/ID:...`.
    fn reply_to_stomp(&self, core: &str) -> String {
        for (prefix, topic) in [("temp-queue://", false), ("temp-topic://", true)] {
            if let Some(id) = core.strip_prefix(prefix) {
                if let Some(own) = self.by_id.get(&(topic, id.to_string())) {
                    return own.clone();
                }
            }
        }
        destination_to_stomp(core)
    }

    /// A MESSAGE's `destination`: this connection's temporary destinations by their NAME,
    /// another connection's (a JMS `TemporaryQueue` included: the core, like ActiveMQ, knows
    /// them by their `ID:` names) as `/remote-temp-queue/ID:...`.
    fn to_stomp(&self, d: &Destination) -> String {
        let topic = matches!(d, Destination::Topic(_));
        if let Some(own) = self.by_id.get(&(topic, d.name().to_string())) {
            return own.clone();
        }
        match d {
            Destination::Queue(n) if n.starts_with("ID:") => format!("/remote-temp-queue/{n}"),
            Destination::Topic(n) if n.starts_with("ID:") => format!("/remote-temp-topic/{n}"),
            _ => stomp_destination(d),
        }
    }
}

/// A temporary destination as the advisory topics name it.
fn advisory_destination(topic: bool, id: &str) -> OwDestination {
    OwDestination {
        kind: if topic {
            DestinationKind::TempTopic
        } else {
            DestinationKind::TempQueue
        },
        physical_name: Some(id.to_string()),
    }
}

impl Drop for Temps {
    fn drop(&mut self) {
        for (topic, id) in self.by_id.keys() {
            self.advisories.remove(&advisory_destination(*topic, id));
            let destination = if *topic {
                Destination::Topic(id.clone())
            } else {
                Destination::Queue(id.clone())
            };
            self.broker.delete_destination(&destination);
        }
    }
}

impl State {
    fn send(&mut self, frame: &Frame) -> Result<Confirmation, Fatal> {
        let destination_text = required(frame, "destination")?;
        let (destinations, temporary) = self.temps.resolve_members(destination_text)?;
        // As in ActiveMQ, messages to temporary destinations are never stored: they live as
        // long as the connection that made the destination, and a stored one would outlive it
        // on disk (and keep its journal segment) with nobody left to consume it.
        let persistent = frame.get("persistent") == Some("true") && !temporary;
        let expiration = match frame.get("expires") {
            None => 0,
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| Fatal::new(format!("header 'expires' is not a number: '{v}'")))?,
        };
        let priority =
            match frame.get("priority") {
                None => 4,
                Some(v) => v.parse::<u32>().ok().filter(|p| *p <= 9).ok_or_else(|| {
                    Fatal::new(format!("header 'priority' must be 0..9, got '{v}'"))
                })?,
            };
        let mut headers: Vec<Header> = Vec::new();
        for (name, value) in &frame.headers {
            // ActiveMQ's STOMP `type` header is the JMSType.
            let name = match name.as_str() {
                "type" => JMS_TYPE_HEADER,
                other => other,
            };
            if !RESERVED_SEND_HEADERS.contains(&name) && !headers.iter().any(|h| h.name == name) {
                let value = match name {
                    REPLY_TO_HEADER => self.temps.reply_to_core(value),
                    _ => value.clone(),
                };
                headers.push(Header::text(name, value));
            }
        }
        // ActiveMQ's rule for the JMS class of a STOMP message: `amq-msg-type` when given,
        // else a BytesMessage when the frame has a content-length, else a TextMessage.
        let body_type = match frame.get("amq-msg-type").map(str::to_ascii_lowercase) {
            Some(t) if t == "text" => BodyType::Text,
            Some(t) if t == "bytes" => BodyType::Bytes,
            Some(other) => {
                return Err(Fatal::new(format!(
                    "header 'amq-msg-type' must be text or bytes, got '{other}'"
                )))
            }
            None if frame.get("content-length").is_some() => BodyType::Bytes,
            None => BodyType::Text,
        };
        let message = NewMessage {
            // The client's id only when it vouches for it (see `DEDUPE_HEADER`).
            message_id: frame
                .get("message-id")
                .filter(|_| flag(frame, super::DEDUPE_HEADER))
                .map(str::to_string),
            persistent,
            expiration,
            priority,
            timestamp: 0,
            headers,
            body_type,
            body: frame.body.clone(),
        };
        Ok(self
            .session
            .send_to_each(&destinations, message, frame.get("transaction"))?)
    }

    fn subscribe(&mut self, frame: &Frame) -> Result<Confirmation, Fatal> {
        let destination_text = required(frame, "destination")?;
        let (members, _) = self.temps.resolve_members(destination_text)?;
        let destination = members[0].clone();
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => destination_text.to_string(),
            (None, _) => return Err(Fatal::new("missing header 'id' on SUBSCRIBE frame")),
        };
        let ack = ack_mode(frame)?;
        let durable_name = frame
            .get("activemq.subscriptionName")
            .or_else(|| frame.get("durable-subscription-name"))
            .map(str::to_string);
        let default_prefetch = match (&destination, &durable_name) {
            (Destination::Queue(_), _) => QUEUE_PREFETCH,
            (Destination::Topic(_), Some(_)) => DURABLE_PREFETCH,
            (Destination::Topic(_), None) => TOPIC_PREFETCH,
        };
        let prefetch = match frame.get("activemq.prefetchSize") {
            None => default_prefetch,
            Some(v) => v.parse::<u32>().map_err(|_| {
                Fatal::new(format!(
                    "header 'activemq.prefetchSize' is not a number: '{v}'"
                ))
            })?,
        };
        // ActiveMQ's documented consumer priorities are 0 (the default) to 127.
        let priority = match frame.get("activemq.priority") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<i8>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    Fatal::new(format!(
                        "header 'activemq.priority' must be a number from 0 to 127, got '{v}'"
                    ))
                })?,
        };
        if self.subscriptions.contains_key(&id) {
            return Err(BrokerError::DuplicateSubscription(id).into());
        }
        let first_tag = self.session.next_tag();
        self.subscriptions.insert(
            id.clone(),
            Subscription {
                ack,
                first_tag,
                browser: false,
            },
        );
        let request = SubscribeRequest {
            id: id.clone(),
            destination,
            // STOMP has no pull: a window of 0 is taken as 1, as ActiveMQ does.
            prefetch: prefetch.max(1),
            durable_name,
            selector: frame.get("selector").map(str::to_string),
            exclusive: flag(frame, "activemq.exclusive"),
            priority,
            no_local: flag(frame, "activemq.noLocal"),
        };
        let result = self.session.subscribe_to_each(request, &members);
        if result.is_err() {
            self.subscriptions.remove(&id);
        }
        Ok(result?)
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<Confirmation, Fatal> {
        let id = match frame.get("id").or_else(|| frame.get("destination")) {
            Some(id) => id.to_string(),
            None => return Err(Fatal::new("missing header 'id' on UNSUBSCRIBE frame")),
        };
        let remove_durable = frame.get("activemq.subscriptionName").is_some()
            || frame.get("durable-subscription-name").is_some();
        let Some(removed) = self.subscriptions.remove(&id) else {
            // ActiveMQ lets a client delete an inactive durable subscription by name.
            if let Some(name) = frame
                .get("activemq.subscriptionName")
                .or_else(|| frame.get("durable-subscription-name"))
            {
                return Ok(self.session.remove_durable(name)?);
            }
            return Err(BrokerError::UnknownSubscription(id).into());
        };
        self.unacked.retain(|_, (sub, _)| *sub != id);
        if removed.browser {
            // The core never knew it.
            return Ok(Confirmation::done());
        }
        Ok(self.session.unsubscribe(&id, remove_durable)?)
    }

    /// Finds the delivery an ACK/NACK names: `id` (1.2) or `message-id` (1.0, 1.1).
    fn acked_tag(&self, frame: &Frame) -> Result<u64, Fatal> {
        if self.version == Version::V1_2 {
            let id = required(frame, "id")?;
            return id
                .parse()
                .map_err(|_| Fatal::new(format!("header 'id' names no delivery: '{id}'")));
        }
        let message_id = required(frame, "message-id")?;
        // Two subscriptions (on one topic, say) hold deliveries of the same message: the
        // `subscription` header (required in 1.1, optional in 1.0) says whose is acknowledged.
        let subscription = frame.get("subscription");
        if let Some((tag, _)) = self.unacked.iter().find(|(_, (sub, m))| {
            m == message_id && subscription.is_none_or(|wanted| wanted == sub)
        }) {
            return Ok(*tag);
        }
        // Clients that use our `ack` header value as the id are served too.
        message_id
            .parse()
            .map_err(|_| Fatal::new(format!("no unacknowledged message '{message_id}'")))
    }

    fn ack(&mut self, frame: &Frame) -> Result<Confirmation, Fatal> {
        let tag = self.acked_tag(frame)?;
        let Some((subscription, _)) = self.unacked.get(&tag).cloned() else {
            return Err(BrokerError::UnknownDelivery(tag).into());
        };
        if self.is_browser(&subscription) {
            // A browsed copy: the message stays on its queue whatever the client says.
            self.unacked.remove(&tag);
            return Ok(Confirmation::done());
        }
        let scope = match self.subscriptions.get(&subscription).map(|s| s.ack) {
            Some(AckMode::Client) => AckScope::Cumulative,
            _ => AckScope::Single,
        };
        match scope {
            AckScope::Single => {
                self.unacked.remove(&tag);
            }
            AckScope::Cumulative => self
                .unacked
                .retain(|t, (sub, _)| *t > tag || *sub != subscription),
        }
        Ok(self.session.ack(tag, scope, frame.get("transaction"))?)
    }

    fn nack(&mut self, frame: &Frame) -> Result<Confirmation, Fatal> {
        let tag = self.acked_tag(frame)?;
        let Some((subscription, _)) = self.unacked.remove(&tag) else {
            return Err(BrokerError::UnknownDelivery(tag).into());
        };
        if self.is_browser(&subscription) {
            return Ok(Confirmation::done());
        }
        Ok(self.session.nack(tag, frame.get("transaction"))?)
    }

    fn is_browser(&self, subscription: &str) -> bool {
        self.subscriptions
            .get(subscription)
            .is_some_and(|s| s.browser)
    }

    /// A `browser:true` SUBSCRIBE: checks it and registers the browser; `browse_copies` takes
    /// the snapshot when the plan's turn comes.
    fn browse(&mut self, frame: &Frame) -> Result<BrowsePlan, Fatal> {
        if self.version == Version::V1_0 {
            return Err(Fatal::new(
                "header 'browser' needs STOMP 1.1 or later (as ActiveMQ's queue browser does)",
            ));
        }
        let destination_text = required(frame, "destination")?;
        let id = required(frame, "id")?.to_string();
        let (members, _) = self.temps.resolve_members(destination_text)?;
        let [destination] = &members[..] else {
            return Err(BrokerError::Unsupported(format!(
                "browsing composite destination '{destination_text}': browse each queue"
            ))
            .into());
        };
        if !matches!(destination, Destination::Queue(_)) {
            return Err(BrokerError::Unsupported(format!(
                "browsing topic '{destination_text}': only a queue can be browsed"
            ))
            .into());
        }
        let ack = ack_mode(frame)?;
        if self.subscriptions.contains_key(&id) {
            return Err(BrokerError::DuplicateSubscription(id).into());
        }
        // A tag of its own marks this registration (its copies' tags are higher).
        let first_tag = self.next_browse_tag;
        self.next_browse_tag += 1;
        self.subscriptions.insert(
            id.clone(),
            Subscription {
                ack,
                first_tag,
                browser: true,
            },
        );
        Ok(BrowsePlan {
            id,
            first_tag,
            destination: destination.clone(),
            selector: frame.get("selector").map(str::to_string),
        })
    }

    /// A copy of each message the browser's queue holds now (that its selector matches),
    /// oldest first, and the `browser:end` frame; `None` if the browser was unsubscribed
    /// before its turn came.
    fn browse_copies(&mut self, plan: BrowsePlan) -> Result<Option<Browse>, Fatal> {
        let BrowsePlan {
            id,
            first_tag,
            destination,
            selector,
        } = plan;
        let registered = self
            .subscriptions
            .get(&id)
            .is_some_and(|s| s.browser && s.first_tag == first_tag);
        if !registered {
            return Ok(None);
        }
        let messages = self.session.browse(&destination, selector.as_deref())?;
        let copies = messages
            .into_iter()
            .map(|(message, redelivery_count)| {
                let tag = self.next_browse_tag;
                self.next_browse_tag += 1;
                Delivery {
                    subscription: id.clone(),
                    tag,
                    destination: destination.clone(),
                    message,
                    redelivery_count,
                    group_first: false,
                }
            })
            .collect();
        Ok(Some(Browse {
            end: Frame::new(Command::Message)
                .header("subscription", id)
                .header("browser", "end")
                .header("destination", self.temps.to_stomp(&destination))
                .header("message-id", "0"),
            copies,
        }))
    }

    fn flush_auto_acks(&mut self) {
        for (_, tag) in self.auto_acks.drain() {
            // One cumulative ack (one record) per subscription and write. The confirmation is
            // not awaited: auto-ack promises nothing to the client.
            let _ = self.session.ack(tag, AckScope::Cumulative, None);
        }
    }
}

#[cfg(test)]
mod tests {
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
            let (client, server) = tokio::io::duplex(capacity);
            let options = Arc::new(StompOptions {
                max_frame_size: 1 << 20,
                users: HashMap::new(),
                connect_timeout: Duration::from_secs(5),
                temps,
            });
            let broker = broker.clone();
            let peer = "127.0.0.1:1".parse().unwrap();
            let task = tokio::spawn(serve(server, BytesMut::new(), broker, options, peer));
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
                        "header 'activemq.priority' must be a number from 0 to 127, got '{bad}'"
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
            assert_eq!(reply.get("persistent"), None, "never stored");
        }
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

    /// Another connection's temporary queue exists only while that connection lives, as in
    /// ActiveMQ: a SEND to it afterwards (or to one that never existed) is an ERROR naming it,
    /// where it used to make a plain queue of that name that nobody would ever read.
    #[tokio::test]
    async fn a_temp_queue_of_a_closed_connection_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start_for_tests(dir.path(), Default::default());
        let mut responder = responder_on_requests(&broker).await;
        let (mut client, _) = Peer::connect(&broker, "1.2", "").await;
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
        let mut consumer =
            subscribed(&broker, "id:s\nack:client\ndestination:/queue/a,/topic/t").await;
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

    /// A composite destination with an empty member, a member without `/queue/` or `/topic/`,
    /// a temporary member or a wildcard member is an ERROR naming the problem, and no member
    /// gets the message.
    #[tokio::test]
    async fn a_bad_composite_destination_is_an_error_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start_for_tests(dir.path(), Default::default());
        for (destination, problem) in [
            ("/queue/a,,/queue/b", "empty member"),
            ("/queue/a,/queue/b,", "empty member"),
            ("/queue/a,b", "member 'b'"),
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
        assert!(!reply.message.persistent);
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

    #[test]
    fn heartbeat_header_parses_leniently() {
        assert_eq!(parse_heartbeat(Some("1000,2000")), (1000, 2000));
        assert_eq!(parse_heartbeat(Some("x,5")), (0, 5));
        assert_eq!(parse_heartbeat(None), (0, 0));
    }

    // ----- random conversations: bad input never panics, and the broker carries on ----------

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
    const BAD_DESTINATIONS: &[&str] =
        &["/queue/", "/topic/", "queue://x", "", "/x/y", "/topic/t.>"];
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
            let open: Vec<&Delivered> = seen
                .iter()
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
                    let one_topic =
                        destination.starts_with("/topic/") && !destination.contains(',');
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
                    Command::Error => h.closed = true,
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
        let mut conversation = format!(
            "CONNECT\naccept-version:{version}\nclient-id:fuzz-{seed}\nheart-beat:0,0\n\n\0"
        );
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
            if frame.contains(&format!("\nreceipt:{receipt}\n"))
                && !answered(&heard, &receipt).await
            {
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
            let (client, server) = tokio::io::duplex(1 << 20);
            let first_read = BytesMut::from(
                format!(
                    "CONNECT\naccept-version:{version}\n\n\0\
                     SEND\ndestination:/queue/early\nreceipt:s\n\nhello\0\
                     BEGIN\ntransaction:t\nreceipt:b\n\n\0"
                )
                .as_bytes(),
            );
            let options = Arc::new(StompOptions {
                max_frame_size: 1 << 20,
                users: HashMap::new(),
                connect_timeout: Duration::from_secs(5),
                temps: SHARED_TEMPS.clone(),
            });
            let peer = "127.0.0.1:1".parse().unwrap();
            let mut p = Peer {
                io: client,
                buf: BytesMut::new(),
                decoder: Decoder::new(1 << 20),
                task: tokio::spawn(serve(server, first_read, broker.clone(), options, peer)),
            };
            let frames = p.frames_until(is_receipt("b")).await;
            assert_eq!(frames[0].command, Command::Connected, "{frames:?}");
            assert!(frames.iter().any(is_receipt("s")), "{frames:?}");
        }
    }
}
