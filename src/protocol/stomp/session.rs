//! One STOMP connection: frames in, broker-core calls out, deliveries back as MESSAGE frames.
//!
//! Owns the STOMP-specific parts of a conversation: version and heart-beat negotiation, login,
//! header mapping, ack modes, receipts. It must never hold broker state of its own beyond what
//! the wire needs (which deliveries await a client ack), and never sends a RECEIPT for a change
//! before the core confirms it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::frame::{self, Command, Decoder, Frame, Item, Version};
use crate::broker::{
    composite_members, AckScope, BodyType, Broker, BrokerError, BrowseCursor, Confirmation,
    Delivery, Destination, Header, NewMessage, PropertyType, Session, SubscribeRequest,
    JMS_TYPE_HEADER, REPLY_TO_HEADER,
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
    // JMS headers a SEND may set (read above) or that only the broker sets.
    "JMSDeliveryMode",
    "JMSExpiration",
    "JMSPriority",
    "JMSTimestamp",
    "JMSRedelivered",
    "JMSXDeliveryCount",
    "JMSMessageID",
    "JMSDestination",
];

/// A `JMSDeliveryMode` header as ActiveMQ reads it: 2 or `PERSISTENT` (any case) or `true` is
/// persistent; 1, `NON_PERSISTENT` or `false` is not.
fn delivery_mode(value: &str) -> Result<bool, Refusal> {
    match value.trim().to_ascii_uppercase().as_str() {
        "2" | "PERSISTENT" | "TRUE" => Ok(true),
        "1" | "NON_PERSISTENT" | "FALSE" => Ok(false),
        _ => Err(Refusal::frame(format!(
            "header 'JMSDeliveryMode' must be PERSISTENT (2) or NON_PERSISTENT (1), not '{value}'"
        ))),
    }
}

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
    /// Its destination as the SUBSCRIBE named it, options left out: an UNSUBSCRIBE without an
    /// `id` (STOMP 1.0) names it so, as ActiveMQ matches it.
    destination: String,
}

/// Why a frame is answered with an ERROR, and whether the connection ends with it.
///
/// Only what leaves the conversation unusable closes the connection: bytes that are no frame,
/// an unknown or misplaced command, a missing header, a frame over the size limit, or a node
/// that no longer serves (ActiveMQ's STOMP keeps even a connection whose frame lacked a
/// required header; the STOMP specification closes after every ERROR). A well-formed frame the
/// broker refuses (an ACK of a delivery it does not know, an unknown transaction or
/// subscription, a bad selector or header value, a destination refused) gets its ERROR and the
/// connection carries on with its subscriptions and unacknowledged messages: closing it would
/// send those messages to other consumers again, after the client had processed them.
struct Refusal {
    message: String,
    detail: String,
    receipt: Option<String>,
    closes: bool,
    /// The ERROR names the versions this broker speaks (`version:1.0,1.1,1.2`), as the STOMP
    /// 1.1 and 1.2 specifications require of a refused version negotiation.
    versions: bool,
}

impl Refusal {
    /// A refusal that ends the connection.
    fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            detail: String::new(),
            receipt: None,
            closes: true,
            versions: false,
        }
    }

    /// A refusal of one well-formed frame: ERROR, and the connection carries on.
    fn frame(message: impl Into<String>) -> Refusal {
        Refusal {
            closes: false,
            ..Refusal::new(message)
        }
    }

    fn error_frame(&self) -> Frame {
        let mut error = frame::error_frame(&self.message, &self.detail);
        if self.versions {
            error = error.header("version", "1.0,1.1,1.2");
        }
        match &self.receipt {
            Some(receipt) => error.header("receipt-id", receipt.clone()),
            None => error,
        }
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Refusal {
        let message = e.to_string();
        if ends_connection(&e) {
            Refusal::new(message)
        } else {
            Refusal::frame(message)
        }
    }
}

/// Broker errors after which this node cannot serve the connection: it closes, and a failover
/// client moves on.
fn ends_connection(e: &BrokerError) -> bool {
    matches!(
        e,
        BrokerError::NotMaster(_) | BrokerError::ShuttingDown | BrokerError::StoreFailed(_)
    )
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
        decoder: Decoder::new(options.max_frame_size).with_header_limits(),
        version: Version::V1_0,
        options,
        peer,
        anonymous: true,
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
    /// CONNECT named no `client-id`.
    anonymous: bool,
}

/// How often a client held back by producer flow control, without heart-beats, is sent an
/// EOL: the only way to notice that it left, since nothing is read from it meanwhile.
const HELD_BACK_PROBE: Duration = Duration::from_secs(1);

/// How long a connection about to be closed for a bad frame waits for the confirmations of
/// what it sent before it, to write their RECEIPTs first.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// How many of its promised heart-beat periods a client may stay silent before it is dropped
/// (at the next check: they fall every half of that, so after 3 to 4.5 periods). ActiveMQ
/// checks every 1.5 periods and drops a client at the second check that finds nothing read,
/// so between 1.5 and 3 periods after its last byte: 3 keeps every client ActiveMQ keeps (a
/// client paused by its garbage collector or a busy event loop).
const SILENCE_ALLOWED: u32 = 3;

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

/// The CONNECT frame's `heart-beat` (`cx,cy`: what the client sends, what it wants); absent:
/// none. Anything but two whole numbers is refused, in ActiveMQ's words.
fn parse_heartbeat(value: Option<&str>) -> Result<(u64, u64), Refusal> {
    let Some(value) = value else {
        return Ok((0, 0));
    };
    let invalid = || Refusal::new(format!("Invalid heart-beat header:{value}"));
    let (send, receive) = value.trim().split_once(',').ok_or_else(invalid)?;
    let number = |p: &str| p.trim().parse::<u64>().map_err(|_| invalid());
    Ok((number(send)?, number(receive)?))
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

/// A STOMP destination (or composite member) as the core knows it: `/queue/NAME`,
/// `/topic/NAME` (or `queue://NAME`, `topic://NAME`); as ActiveMQ does, a name with none of its
/// prefixes is a queue's, whole (`orders`, or `/exchange/orders`, which reads back as
/// `/queue//exchange/orders`).
fn parse_destination(text: &str) -> Result<Destination, BrokerError> {
    match Destination::parse(text) {
        Err(_) if !text.contains("://") && !crate::protocol::has_destination_prefix(text) => {
            Destination::parse(&format!("queue://{text}"))
        }
        parsed => parsed,
    }
}

/// ActiveMQ's destination options: `/queue/orders?consumer.prefetchSize=10` names queue
/// `orders`, with options `("consumer.prefetchSize", "10")` (the `consumer.` ones apply to a
/// SUBSCRIBE; the others are ignored, as a broker ignores what it does not know).
fn split_options(text: &str) -> (&str, impl Iterator<Item = (&str, &str)> + Clone) {
    let (name, query) = text.split_once('?').unwrap_or((text, ""));
    let options = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")));
    (name, options)
}

fn required<'a>(frame: &'a Frame, header: &str) -> Result<&'a str, Refusal> {
    frame.get(header).ok_or_else(|| {
        Refusal::new(format!(
            "missing header '{header}' on {:?} frame",
            frame.command
        ))
    })
}

/// A frame's `destination` header, blanks around it dropped as ActiveMQ drops them (else
/// `destination: /queue/x` would name a queue nobody reads); an empty one is as missing (the
/// connection ends).
fn required_destination(frame: &Frame) -> Result<&str, Refusal> {
    match required(frame, "destination")?.trim() {
        "" => Err(Refusal::new(format!(
            "empty header 'destination' on {:?} frame",
            frame.command
        ))),
        text => Ok(text),
    }
}

/// A SUBSCRIBE's `ack` header (default auto).
fn ack_mode(frame: &Frame) -> Result<AckMode, Refusal> {
    match frame.get("ack").map_or("auto", str::trim) {
        "auto" => Ok(AckMode::Auto),
        "client" => Ok(AckMode::Client),
        "client-individual" => Ok(AckMode::ClientIndividual),
        other => Err(Refusal::frame(format!(
            "header 'ack' must be auto, client or client-individual, got '{other}'"
        ))),
    }
}

/// A boolean `activemq.` header: ActiveMQ sets ConsumerInfo's fields from them, and its
/// Boolean parsing ignores case (anything but `true` is false).
fn flag(frame: &Frame, header: &str) -> bool {
    frame.get(header).is_some_and(is_true)
}

fn is_true(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case("true")
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads the next frame, or `None` at end of stream. Heart-beats are skipped.
    async fn read_frame(&mut self) -> Result<Option<Frame>, Refusal> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(Item::Frame(frame))) => return Ok(Some(frame)),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => return Err(Refusal::new(e.to_string())),
            }
            crate::protocol::room_to_read(&mut self.input);
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    async fn handshake(
        &mut self,
        broker: &Broker,
    ) -> Result<Option<(Session, mpsc::UnboundedReceiver<Delivery>, Heartbeat)>, Refusal> {
        let frame =
            match tokio::time::timeout(self.options.connect_timeout, self.read_frame()).await {
                Err(_) => return Err(Refusal::new("no CONNECT frame within the connect timeout")),
                Ok(frame) => frame?,
            };
        let Some(frame) = frame else { return Ok(None) };
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            return Err(Refusal::new(format!(
                "expected CONNECT or STOMP as the first frame, got {:?}",
                frame.command
            )));
        }
        // A refused CONNECT's ERROR answers its `receipt`, as ActiveMQ's does.
        let receipt = frame.get("receipt").map(str::to_string);
        self.accept_connect(broker, &frame)
            .await
            .map_err(|refusal| Refusal {
                receipt: refusal.receipt.or(receipt),
                ..refusal
            })
    }

    /// Negotiates a CONNECT (or STOMP) frame's version, login and heart-beats and answers
    /// CONNECTED.
    async fn accept_connect(
        &mut self,
        broker: &Broker,
        frame: &Frame,
    ) -> Result<Option<(Session, mpsc::UnboundedReceiver<Delivery>, Heartbeat)>, Refusal> {
        let version = negotiate_version(frame.get("accept-version")).ok_or_else(|| Refusal {
            versions: true,
            ..Refusal::new("Supported protocol versions are 1.0,1.1,1.2")
        })?;
        // `self.version` stays 1.0 until CONNECTED is sent: a refusal's ERROR goes to a client
        // that does not know the version yet, so its headers are not escaped (as ActiveMQ's).
        self.decoder.set_version(version);
        if !self.options.users.is_empty() {
            let login = frame.get("login").unwrap_or("");
            let passcode = frame.get("passcode").unwrap_or("");
            if self.options.users.get(login).map(String::as_str) != Some(passcode) {
                tracing::warn!(peer = %self.peer, login, "STOMP login refused");
                return Err(Refusal::new(format!(
                    "User name [{login}] or password is invalid."
                )));
            }
        }
        let (client_send, client_receive) = parse_heartbeat(frame.get("heart-beat"))?;
        // Mirror the client's wishes: we send as often as it asks, and expect its beats as
        // often as it promises them.
        let promised = (client_send > 0).then(|| heartbeat_period(client_send));
        let heartbeat = Heartbeat {
            send: (client_receive > 0).then(|| heartbeat_period(client_receive)),
            receive: promised.map(|period| period * SILENCE_ALLOWED),
        };
        let client_id = frame.get("client-id").map(str::to_string);
        self.anonymous = client_id.is_none();
        let (session, deliveries) = broker
            .connect(client_id, &format!("tcp://{}", self.peer))
            .await
            .map_err(|e| {
                tracing::warn!(peer = %self.peer, error = %e, "STOMP connection refused");
                Refusal::new(e.to_string())
            })?;
        let mut connected = Frame::new(Command::Connected)
            .header("version", version_name(version))
            .header("server", concat!("ferromq/", env!("CARGO_PKG_VERSION")))
            .header("session", format!("{}", self.peer))
            .header(
                "heart-beat",
                format!(
                    "{},{}",
                    heartbeat.send.map_or(0, |d| d.as_millis()),
                    promised.map_or(0, |d| d.as_millis())
                ),
            );
        // As ActiveMQ answers a CONNECT's `request-id` (or, lacking one, its `receipt`): a
        // client waiting for that receipt gets it with CONNECTED.
        if let Some(id) = frame.get("request-id").or_else(|| frame.get("receipt")) {
            connected = connected
                .header("response-id", id.to_string())
                .header("receipt-id", id.to_string());
        }
        self.version = version;
        self.queue_frame(&connected);
        self.flush_output()
            .await
            .map_err(|_| Refusal::new("write failed"))?;
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

    /// Before the ERROR that closes the connection: the RECEIPTs of the frames it sent before
    /// the bad one, as their changes are confirmed (a client told nothing of a stored send
    /// sends it again), in order, for at most [`SETTLE_LIMIT`]; up to the first that fails.
    async fn settle(&mut self, state: &mut State) {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while let Some((awaiting, confirmation)) = state.awaiting.pop_front() {
            let Ok(Ok(())) = tokio::time::timeout_at(deadline, confirmation).await else {
                break;
            };
            if let Awaiting::Receipt(id) = awaiting {
                self.queue_frame(&frame::receipt(&id));
            }
        }
    }

    /// Sends an ERROR frame and closes.
    async fn fail(&mut self, refusal: Refusal) {
        tracing::info!(peer = %self.peer, error = %refusal.message, "closing STOMP connection with ERROR");
        let error = refusal.error_frame();
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
            acked_in: HashMap::new(),
            tx_temps: HashMap::new(),
            awaiting: VecDeque::new(),
            auto_acks: HashMap::new(),
            next_browse_tag: BROWSE_TAGS,
            browsing: VecDeque::new(),
            ack_prefix: format!("{:08x}", rand::random::<u32>()),
            version: self.version,
            anonymous: self.anonymous,
            disconnecting: false,
            peer: self.peer,
            temps,
        };
        // Producer flow control: see `Session::hold_back`.
        let gate = state.session.flow_gate();
        // Why reading is paused, while it is.
        let mut paused = None;
        // A heart-beat is due one send period after the last write (a heart-beat's too), so the
        // client hears from us at least once per period, as agreed in CONNECTED. Writes only
        // note their time; the timer is moved when it fires (not at every write).
        let send_period = heartbeat.send.unwrap_or(Duration::from_secs(3600));
        let send_due = tokio::time::sleep(send_period);
        tokio::pin!(send_due);
        let mut last_write = Instant::now();
        let mut last_read = Instant::now();
        let check = heartbeat
            .receive
            .map(|d| d / 2)
            .unwrap_or(Duration::from_secs(3600));
        let mut receive_tick = tokio::time::interval(check);
        receive_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A timer of its own, so that other events while held back do not restart it.
        let mut probe = tokio::time::interval(HELD_BACK_PROBE);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Bytes read but not yet handled: what a write waited behind (see `write::flush`), and
        // at first whatever came with CONNECT (a client need not wait for CONNECTED).
        let mut unhandled_input = !self.input.is_empty();
        let result: Result<(), Refusal> = loop {
            let handle_input = std::mem::take(&mut unhandled_input) && !state.disconnecting;
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
                crate::protocol::room_to_read(&mut self.input);
                tokio::select! {
                    // A browsing connection is read even when held back: its UNSUBSCRIBE, or a SEND
                    // it waits on, must not wait for the whole browse.
                    read = self.stream.read_buf(&mut self.input), if !state.disconnecting && (paused.is_none() || !state.browsing.is_empty()) => match read {
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
                    Some(delivery) = deliveries.recv(), if !state.disconnecting => {
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
                    // Lets the runtime run other tasks between pages.
                    () = tokio::task::yield_now(), if !state.browsing.is_empty() && !state.disconnecting => {
                        self.browse_page(&mut state)
                    }
                    result = front(&mut state.awaiting), if !state.awaiting.is_empty() => {
                        let (awaiting, _) = state.awaiting.pop_front().expect("non-empty");
                        self.answer(&mut state, awaiting, result)
                    }
                    () = &mut send_due, if heartbeat.send.is_some() => {
                        let now = Instant::now();
                        let due = last_write + send_period;
                        if due > now {
                            send_due.as_mut().reset(due);
                        } else {
                            self.output.extend_from_slice(b"\n");
                            send_due.as_mut().reset(now + send_period);
                        }
                        Ok(Step::Continue)
                    }
                    // Held back without heart-beats, nothing is read from the client: only a
                    // failed write shows that it left. Every STOMP version allows an EOL
                    // between frames (ActiveMQ ends each frame with one).
                    _ = probe.tick(), if paused.is_some() && heartbeat.send.is_none() => {
                        self.output.extend_from_slice(b"\n");
                        Ok(Step::Continue)
                    }
                    // Not while disconnecting: the client is no longer read then, so its
                    // heart-beats would not count, and its RECEIPT would be lost to a slow flush.
                    _ = receive_tick.tick(), if heartbeat.receive.is_some() && !state.disconnecting => {
                        if paused.is_none() && last_read.elapsed() > heartbeat.receive.expect("guarded") {
                            tracing::info!(peer = %self.peer, "no heart-beat from client; closing");
                            break Ok(());
                        }
                        Ok(Step::Continue)
                    }
                }
            };
            if !self.output.is_empty() {
                if heartbeat.send.is_some() {
                    last_write = Instant::now();
                }
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
            if let Some(hold) = state
                .session
                .hold_back()
                .filter(|_| state.browsing.is_empty())
            {
                tracing::debug!(peer = %self.peer, "{hold}: reading paused");
                paused = Some(hold);
            }
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Close) => break Ok(()),
                Err(fatal) => break Err(fatal),
            }
        };
        if let Err(refusal) = result {
            self.settle(&mut state).await;
            self.fail(refusal).await;
        } else {
            let _ = self.stream.shutdown().await;
        }
        tracing::debug!(peer = %self.peer, "STOMP session closed");
        // Dropping the session returns unacknowledged messages to their queues; then (`State`
        // drops `temps` after `session`) the connection's temporary destinations are deleted.
    }

    /// Handles every whole frame in the input buffer.
    fn handle_input(&mut self, state: &mut State) -> Result<Step, Refusal> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(Item::Frame(frame))) => {
                    if let Step::Close = self.handle_frame(state, frame)? {
                        return Ok(Step::Close);
                    }
                    if state.disconnecting {
                        // Whatever the client sent after its DISCONNECT is not handled.
                        self.input.clear();
                        return Ok(Step::Continue);
                    }
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => return Ok(Step::Continue),
                Err(e) => return Err(Refusal::new(e.to_string())),
            }
        }
    }

    fn handle_frame(&mut self, state: &mut State, frame: Frame) -> Result<Step, Refusal> {
        let receipt = frame.get("receipt").map(str::to_string);
        let result = self.dispatch_frame(state, &frame, receipt.clone());
        result.or_else(|mut refusal| {
            refusal.receipt = receipt;
            if refusal.detail.is_empty() {
                refusal.detail = format!("{:?} frame refused", frame.command);
            }
            self.refuse(refusal)
        })
    }

    /// Writes the ERROR of a refusal that leaves the connection open; passes on one that
    /// closes it (the session loop writes that ERROR and closes).
    fn refuse(&mut self, refusal: Refusal) -> Result<Step, Refusal> {
        if refusal.closes {
            return Err(refusal);
        }
        tracing::debug!(peer = %self.peer, error = %refusal.message, "STOMP frame refused with ERROR");
        let error = refusal.error_frame();
        self.queue_frame(&error);
        Ok(Step::Continue)
    }

    fn dispatch_frame(
        &mut self,
        state: &mut State,
        frame: &Frame,
        receipt: Option<String>,
    ) -> Result<Step, Refusal> {
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
            Command::Commit => state.commit(required(frame, "transaction")?)?,
            Command::Abort => state.abort(required(frame, "transaction")?)?,
            Command::Disconnect => {
                state.disconnecting = true;
                let flush = state.session.flush();
                state
                    .awaiting
                    .push_back((Awaiting::Disconnect(receipt), flush));
                return Ok(Step::Continue);
            }
            Command::Connect | Command::Stomp => {
                return Err(Refusal::new("already connected"));
            }
            other => {
                return Err(Refusal::new(format!(
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
    ) -> Result<Step, Refusal> {
        match (awaiting, result) {
            (Awaiting::Browse(plan, receipt), Ok(())) => {
                // As ActiveMQ: the RECEIPT, the copies, then a MESSAGE with `browser:end`. The
                // copies go out a page at a time (`browse_page`), between other work.
                if let Err(mut refusal) = state.start_browse(plan) {
                    refusal.receipt = receipt;
                    return self.refuse(refusal);
                }
                if let Some(id) = &receipt {
                    self.queue_frame(&frame::receipt(id));
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
            (Awaiting::Receipt(id), Err(e)) => self.refuse(Refusal {
                detail: "the change was not confirmed".into(),
                receipt: Some(id),
                ..Refusal::from(e)
            }),
            // The client is leaving: the connection closes whatever the error.
            (Awaiting::Disconnect(receipt), Err(e)) => Err(Refusal {
                detail: "the change was not confirmed".into(),
                receipt,
                ..Refusal::new(e.to_string())
            }),
            (Awaiting::Silent, Err(e)) => self.refuse(Refusal::from(e)),
            (Awaiting::Browse(_, receipt), Err(e)) => self.refuse(Refusal {
                receipt,
                ..Refusal::from(e)
            }),
        }
    }

    /// Writes the next page of the oldest queue browser (the session loop flushes it before
    /// the next, so a deep queue is never held in the output whole).
    fn browse_page(&mut self, state: &mut State) -> Result<Step, Refusal> {
        if let Some(page) = state.next_browse_page()? {
            for copy in page.copies {
                self.write_delivery(state, copy);
            }
            if let Some(end) = page.end {
                self.queue_frame(&end);
            }
        }
        Ok(Step::Continue)
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
            .header("ack", format!("{}-{}", state.ack_prefix, delivery.tag));
        if message.persistent {
            out = out.header("persistent", "true");
        }
        // Always, as ActiveMQ writes it: 0 when the message never expires.
        out = out
            .header("expires", message.expiration.to_string())
            .header("priority", message.priority.to_string())
            .header("timestamp", message.timestamp.to_string());
        if delivery.redelivery_count > 0 {
            out = out
                .header("redelivered", "true")
                .header("redelivery-count", delivery.redelivery_count.to_string());
        }
        // A JMS client's map or list property is kept in OpenWire's form: not shown here.
        let shown = message
            .headers
            .iter()
            .filter(|h| h.kind != PropertyType::Openwire as i32);
        for h in shown {
            let value = match h.name.as_str() {
                // Stored in the core's form (queue://x); STOMP clients expect /queue/x.
                "original-destination" => Destination::parse(&h.value)
                    .map(|d| state.temps.to_stomp(&d))
                    .unwrap_or_else(|_| h.value.clone()),
                REPLY_TO_HEADER => state.temps.reply_to_stomp(&h.value),
                // A JMS property set to null: as ActiveMQ writes it.
                _ if h.kind == PropertyType::Null as i32 => "null".to_string(),
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

/// A queue browser being written, page by page, between the connection's other work.
struct Browsing {
    plan: BrowsePlan,
    cursor: BrowseCursor,
}

/// One page of a queue browser: its copies, then (after the last page) the end marker.
struct BrowsePage {
    copies: Vec<Delivery>,
    end: Option<Frame>,
}

/// Polls the oldest queued confirmation (the core resolves them in order).
async fn front(awaiting: &mut VecDeque<(Awaiting, Confirmation)>) -> Result<(), BrokerError> {
    let (_, confirmation) = awaiting.front_mut().expect("guarded by is_empty");
    confirmation.await
}

/// A delivery awaiting a client ACK: (subscription id, message id).
type Unacked = (String, String);

/// The per-connection STOMP bookkeeping around a broker session.
struct State {
    session: Session,
    subscriptions: HashMap<String, Subscription>,
    /// Deliveries awaiting a client ACK: tag -> (subscription id, message id).
    unacked: BTreeMap<u64, Unacked>,
    /// Deliveries acknowledged inside each open transaction, as they were in `unacked`: an
    /// ABORT puts them back (the messages stay delivered, awaiting an ACK again).
    acked_in: HashMap<String, Vec<(u64, Unacked)>>,
    /// Temporary destinations each open transaction sent to, as named and as resolved: one
    /// deleted before the COMMIT gets nothing from it (see [`State::commit`]).
    tx_temps: HashMap<String, Vec<(String, Destination)>>,
    awaiting: VecDeque<(Awaiting, Confirmation)>,
    /// Auto-ack subscriptions written to since the last flush -> their last tag written.
    auto_acks: HashMap<String, u64>,
    /// The tag of the next browsed copy (see [`BROWSE_TAGS`]).
    next_browse_tag: u64,
    /// Queue browsers whose copies are being written, in SUBSCRIBE order.
    browsing: VecDeque<Browsing>,
    /// Starts this connection's `ack` header values (`<prefix>-<tag>`). Tags are numbered by
    /// the broker core from 1 again after a restart or a failover, so a client that reconnects
    /// and acknowledges a message of its previous connection would otherwise name whatever
    /// this connection was handed under the same number (ActiveMQ's ack ids are unique).
    ack_prefix: String,
    version: Version,
    /// CONNECT named no `client-id` (see [`State::subscribe`]).
    anonymous: bool,
    /// A DISCONNECT was read: its RECEIPT waits for what came before it, and meanwhile the
    /// session is over for the client (as ActiveMQ removes the connection at once): nothing
    /// after the DISCONNECT is read or handled, and no more MESSAGE is written (what an
    /// auto-ack subscription had written would count as consumed, by a client that has stopped
    /// reading).
    disconnecting: bool,
    peer: SocketAddr,
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
        let (text, _) = split_options(text);
        let members = composite_members(text, |member| {
            if member.starts_with("/temp-") || member.starts_with("/remote-temp-") {
                return Err(format!(
                    "member '{member}' is temporary: name only /queue/NAME and /topic/NAME"
                ));
            }
            parse_destination(member)
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
            return Ok((parse_destination(text)?, false));
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
        // Without a known prefix it is kept as text (not a queue's name, as a destination
        // would be), as ActiveMQ keeps it: a JMS reader then has no JMSReplyTo.
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
    fn send(&mut self, frame: &Frame) -> Result<Confirmation, Refusal> {
        let destination_text = required_destination(frame)?;
        let (destinations, temporary) = self.temps.resolve_members(destination_text)?;
        // A header named as a JMS header sets that header, as at ActiveMQ (whose message takes
        // each STOMP header as a property, and a property named JMSPriority, say, sets the
        // JMSPriority): it wins over the STOMP header of the same meaning.
        let jms_or = |jms: &'static str, stomp: &'static str| {
            frame
                .get(jms)
                .map(|v| (jms, v))
                .or_else(|| frame.get(stomp).map(|v| (stomp, v)))
        };
        let persistent = match frame.get("JMSDeliveryMode") {
            Some(mode) => delivery_mode(mode)?,
            None => frame.get("persistent") == Some("true"),
        };
        let expiration = match jms_or("JMSExpiration", "expires") {
            None => 0,
            Some((name, v)) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| Refusal::frame(format!("header '{name}' is not a number: '{v}'")))?,
        };
        // As ActiveMQ: a priority outside JMS's 0..9 is taken as the nearer bound.
        let priority = match jms_or("JMSPriority", "priority") {
            None => 4,
            Some((name, v)) => v
                .trim()
                .parse::<i64>()
                .map(|p| p.clamp(0, 9) as u32)
                .map_err(|_| Refusal::frame(format!("header '{name}' is not a number: '{v}'")))?,
        };
        let timestamp = match frame.get("JMSTimestamp") {
            None => 0,
            Some(v) => v.trim().parse::<i64>().map_err(|_| {
                Refusal::frame(format!("header 'JMSTimestamp' is not a number: '{v}'"))
            })?,
        };
        let mut headers: Vec<Header> = Vec::new();
        for (name, value) in &frame.headers {
            // ActiveMQ's STOMP `type` header is the JMSType; JMS-named ones win (see above).
            let (name, jms) = match name.as_str() {
                "type" => (JMS_TYPE_HEADER, false),
                "JMSType" => (JMS_TYPE_HEADER, true),
                "JMSCorrelationID" => ("correlation-id", true),
                other => (other, false),
            };
            if jms {
                headers.retain(|h| h.name != name);
            }
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
                return Err(Refusal::frame(format!(
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
            // As in ActiveMQ, messages to temporary destinations are never stored: they live as
            // long as the connection that made the destination, and a stored one would outlive
            // it on disk (and keep its journal segment) with nobody left to consume it.
            temporary,
            expiration,
            priority,
            timestamp,
            headers,
            body_type,
            body: frame.body.clone(),
        };
        let transaction = frame.get("transaction");
        if let (true, Some(tx)) = (temporary, transaction) {
            let named = split_options(destination_text).0;
            let sent_to = self.tx_temps.entry(tx.to_string()).or_default();
            if !sent_to.iter().any(|(text, _)| text == named) {
                sent_to.push((named.to_string(), destinations[0].clone()));
            }
        }
        Ok(self
            .session
            .send_to_each(&destinations, message, transaction)?)
    }

    /// Commits `transaction`. Its sends to another connection's temporary destination deleted
    /// meanwhile go nowhere, as in ActiveMQ: routed at the commit they would make an ordinary
    /// queue of that name that nobody can read and nothing deletes.
    fn commit(&mut self, transaction: &str) -> Result<Confirmation, Refusal> {
        // Kept until the commit succeeds: a refused one leaves the transaction open.
        for (text, destination) in self.tx_temps.get(transaction).cloned().unwrap_or_default() {
            if let Err(BrokerError::TemporaryGone(_)) = self.temps.resolve(&text) {
                self.session
                    .drop_transaction_sends_to(transaction, &destination)?;
            }
        }
        let confirmation = self.session.commit(transaction)?;
        self.tx_temps.remove(transaction);
        self.acked_in.remove(transaction);
        Ok(confirmation)
    }

    fn subscribe(&mut self, frame: &Frame) -> Result<Confirmation, Refusal> {
        let destination_text = required_destination(frame)?;
        let (members, _) = self.temps.resolve_members(destination_text)?;
        let destination = members[0].clone();
        // A header, else the destination's ActiveMQ option (`?consumer.prefetchSize=10`).
        let (_, options) = split_options(destination_text);
        let setting = |header: &str, option: &str| {
            frame.get(header).or_else(|| {
                options
                    .clone()
                    .find(|(name, _)| *name == option)
                    .map(|(_, value)| value)
            })
        };
        let on = |header: &str, option: &str| setting(header, option).is_some_and(is_true);
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id.to_string(),
            // STOMP 1.0 without an id: named after its destination, and told apart from an
            // earlier one to the same destination (ActiveMQ makes each a consumer of its own).
            (None, Version::V1_0) => {
                let mut id = destination_text.to_string();
                let mut n = 1;
                while self.subscriptions.contains_key(&id) {
                    n += 1;
                    id = format!("{destination_text}#{n}");
                }
                id
            }
            (None, _) => return Err(Refusal::new("missing header 'id' on SUBSCRIBE frame")),
        };
        let ack = ack_mode(frame)?;
        let mut durable_name = frame
            .get("activemq.subscriptionName")
            .or_else(|| frame.get("durable-subscription-name"))
            .map(str::to_string);
        let default_prefetch = match (&destination, &durable_name) {
            (Destination::Queue(_), _) => QUEUE_PREFETCH,
            (Destination::Topic(_), Some(_)) => DURABLE_PREFETCH,
            (Destination::Topic(_), None) => TOPIC_PREFETCH,
        };
        if self.anonymous && matches!(destination, Destination::Topic(_)) {
            // ActiveMQ names such a connection after its own connection id, so the durable
            // subscription it makes can never be resumed (a new connection has a new id) and
            // keeps every message for nobody. Served as what it can only be: a subscription
            // for this connection's life.
            if let Some(name) = durable_name.take() {
                tracing::warn!(
                    peer = %self.peer,
                    subscription = %name,
                    destination = %destination_text,
                    "durable subscription without a client-id on CONNECT: served as a \
                     non-durable one (it could not be resumed by another connection)"
                );
            }
        }
        let prefetch = match setting("activemq.prefetchSize", "consumer.prefetchSize") {
            None => default_prefetch,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| {
                    Refusal::frame(format!(
                        "header 'activemq.prefetchSize' (or option consumer.prefetchSize) is \
                         not a number: '{v}'"
                    ))
                })?
                .min(crate::broker::MAX_PREFETCH),
        };
        // ActiveMQ's documented consumer priorities are 0 (the default) to 127.
        let priority = match setting("activemq.priority", "consumer.priority") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<i8>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    Refusal::frame(format!(
                        "header 'activemq.priority' (or option consumer.priority) must be a \
                         number from 0 to 127, got '{v}'"
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
                destination: split_options(destination_text).0.to_string(),
            },
        );
        let request = SubscribeRequest {
            id: id.clone(),
            destination,
            // STOMP has no pull: a window of 0 is taken as 1, as ActiveMQ does.
            prefetch: prefetch.max(1),
            durable_name,
            selector: frame.get("selector").map(str::to_string),
            exclusive: on("activemq.exclusive", "consumer.exclusive"),
            priority,
            no_local: on("activemq.noLocal", "consumer.noLocal"),
        };
        let result = self.session.subscribe_to_each(request, &members);
        if result.is_err() {
            self.subscriptions.remove(&id);
        }
        Ok(result?)
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<Confirmation, Refusal> {
        // Naming a durable subscription deletes that subscription with its stored messages, and
        // nothing else, as ActiveMQ's RemoveSubscriptionInfo: refused while a subscriber is on
        // it (this connection's too, which stays subscribed), and an unknown name is an error.
        // To stop and delete, a client first UNSUBSCRIBEs by id, then names the subscription.
        // On a connection without a client-id, whose durable SUBSCRIBEs are served as plain
        // ones, the name means nothing.
        let named = frame
            .get("activemq.subscriptionName")
            .or_else(|| frame.get("durable-subscription-name"));
        if let Some(name) = named.filter(|_| !self.anonymous) {
            return Ok(self.session.remove_durable(name)?);
        }
        let id = match (frame.get("id"), frame.get("destination")) {
            (Some(id), _) => id.to_string(),
            // Without an id in STOMP 1.0 (1.1 and 1.2 require one), the subscription to that
            // destination, whatever id it was made with and options it named, as ActiveMQ
            // matches it.
            (None, Some(destination)) if self.version == Version::V1_0 => {
                let named = split_options(destination).0;
                if self.subscriptions.contains_key(destination) {
                    destination.to_string()
                } else {
                    self.subscriptions
                        .iter()
                        .find(|(_, s)| s.destination == named)
                        .map_or_else(|| destination.to_string(), |(id, _)| id.clone())
                }
            }
            (None, Some(destination)) => destination.to_string(),
            (None, None) => return Err(Refusal::new("missing header 'id' on UNSUBSCRIBE frame")),
        };
        let Some(removed) = self.subscriptions.remove(&id) else {
            return Err(BrokerError::UnknownSubscription(id).into());
        };
        self.unacked.retain(|_, (sub, _)| *sub != id);
        if removed.browser {
            // The core never knew it.
            return Ok(Confirmation::done());
        }
        Ok(self.session.unsubscribe(&id)?)
    }

    /// Finds the delivery an ACK/NACK names: `id` (1.2) or `message-id` (1.0, 1.1).
    fn acked_tag(&self, frame: &Frame) -> Result<u64, Refusal> {
        if self.version == Version::V1_2 {
            let id = required(frame, "id")?;
            return self.tag_of(id).ok_or_else(|| {
                Refusal::frame(format!(
                    "header 'id' names no delivery of this connection: '{id}'"
                ))
            });
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
        self.tag_of(message_id)
            .ok_or_else(|| Refusal::frame(format!("no unacknowledged message '{message_id}'")))
    }

    /// The tag in an `ack` header value this connection wrote.
    fn tag_of(&self, ack: &str) -> Option<u64> {
        let (prefix, tag) = ack.split_once('-')?;
        (prefix == self.ack_prefix).then(|| tag.parse().ok())?
    }

    fn ack(&mut self, frame: &Frame) -> Result<Confirmation, Refusal> {
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
        let covered: Vec<u64> = match scope {
            AckScope::Single => vec![tag],
            AckScope::Cumulative => self
                .unacked
                .range(..=tag)
                .filter(|(_, (sub, _))| *sub == subscription)
                .map(|(t, _)| *t)
                .collect(),
        };
        let transaction = frame.get("transaction");
        // The core first: an ACK it refuses (an unknown transaction, say) leaves the
        // deliveries awaiting their ACK here as there.
        let confirmation = self.session.ack(tag, scope, transaction)?;
        let taken: Vec<_> = covered
            .into_iter()
            .filter_map(|t| self.unacked.remove(&t).map(|entry| (t, entry)))
            .collect();
        if let Some(tx) = transaction {
            self.acked_in
                .entry(tx.to_string())
                .or_default()
                .extend(taken);
        }
        Ok(confirmation)
    }

    /// ABORT: the transaction's sends are dropped and its acknowledgements undone. As in
    /// ActiveMQ (and RabbitMQ), the messages it acknowledged stay delivered to their consumers,
    /// to be acknowledged again with the same ack ids; those whose consumer is gone are
    /// redelivered. Its NACKs are dropped, and their messages redelivered.
    fn abort(&mut self, transaction: &str) -> Result<Confirmation, Refusal> {
        self.tx_temps.remove(transaction);
        let kept: HashSet<u64> = self
            .session
            .rollback_keeping_deliveries(transaction)?
            .into_iter()
            .collect();
        let mut acked = self.acked_in.remove(transaction).unwrap_or_default();
        acked.retain(|(tag, _)| kept.contains(tag));
        self.unacked.extend(acked);
        Ok(Confirmation::done())
    }

    fn nack(&mut self, frame: &Frame) -> Result<Confirmation, Refusal> {
        if self.version == Version::V1_0 {
            // As ActiveMQ answers: the message stays delivered, awaiting its ACK.
            return Err(Refusal::frame(
                "NACK is not a STOMP 1.0 command: connect with accept-version 1.1 or 1.2 to \
                 use it",
            ));
        }
        let tag = self.acked_tag(frame)?;
        let Some((subscription, _)) = self.unacked.get(&tag) else {
            return Err(BrokerError::UnknownDelivery(tag).into());
        };
        if self.is_browser(subscription) {
            self.unacked.remove(&tag);
            return Ok(Confirmation::done());
        }
        // The core first, as for an ACK.
        let confirmation = self.session.nack(tag, frame.get("transaction"))?;
        self.unacked.remove(&tag);
        Ok(confirmation)
    }

    fn is_browser(&self, subscription: &str) -> bool {
        self.subscriptions
            .get(subscription)
            .is_some_and(|s| s.browser)
    }

    /// A `browser:true` SUBSCRIBE: checks it and registers the browser; `browse_copies` takes
    /// the snapshot when the plan's turn comes.
    fn browse(&mut self, frame: &Frame) -> Result<BrowsePlan, Refusal> {
        if self.version == Version::V1_0 {
            return Err(Refusal::frame(
                "header 'browser' needs STOMP 1.1 or later (as ActiveMQ's queue browser does)",
            ));
        }
        let destination_text = required_destination(frame)?;
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
                destination: split_options(destination_text).0.to_string(),
            },
        );
        Ok(BrowsePlan {
            id,
            first_tag,
            destination: destination.clone(),
            selector: frame.get("selector").map(str::to_string),
        })
    }

    /// Begins writing a browser's copies: those of the messages its queue holds now (that its
    /// selector matches), oldest first, then the `browser:end` frame. Nothing if the browser
    /// was unsubscribed before its turn came.
    fn start_browse(&mut self, plan: BrowsePlan) -> Result<(), Refusal> {
        if !self.is_registered(&plan) {
            return Ok(());
        }
        let cursor = self
            .session
            .open_browse(&plan.destination, plan.selector.as_deref())?;
        self.browsing.push_back(Browsing { plan, cursor });
        Ok(())
    }

    fn is_registered(&self, plan: &BrowsePlan) -> bool {
        self.subscriptions
            .get(&plan.id)
            .is_some_and(|s| s.browser && s.first_tag == plan.first_tag)
    }

    /// The oldest browser's next page of copies (at most `max_browse_page_size`), with the end
    /// marker after its last; a browser unsubscribed meanwhile just stops.
    fn next_browse_page(&mut self) -> Result<Option<BrowsePage>, Refusal> {
        let Some(browsing) = self.browsing.front() else {
            return Ok(None);
        };
        if !self.is_registered(&browsing.plan) {
            self.browsing.pop_front();
            return Ok(None);
        }
        let browsing = self.browsing.front_mut().expect("checked");
        let messages = self.session.browse_next(&mut browsing.cursor, usize::MAX)?;
        let plan = &browsing.plan;
        let mut copies = Vec::with_capacity(messages.len());
        for (message, redelivery_count) in messages {
            let tag = self.next_browse_tag;
            self.next_browse_tag += 1;
            copies.push(Delivery {
                subscription: plan.id.clone(),
                tag,
                destination: plan.destination.clone(),
                message,
                redelivery_count,
                group_first: false,
            });
        }
        let end = browsing.cursor.is_done().then(|| {
            Frame::new(Command::Message)
                .header("subscription", plan.id.clone())
                .header("browser", "end")
                .header("destination", self.temps.to_stomp(&plan.destination))
                .header("message-id", "0")
        });
        if end.is_some() {
            self.browsing.pop_front();
        }
        Ok(Some(BrowsePage { copies, end }))
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
#[path = "session_tests.rs"]
mod tests;
