//! One OpenWire connection: commands in, broker-core calls out, deliveries back as
//! `MessageDispatch`es.
//!
//! Owns the JMS conversation of a stock ActiveMQ client: wire-format negotiation, login,
//! the connection/session/producer/consumer ids, acknowledge types, local transactions,
//! queue browsers, pull consumers (prefetch 0), temporary destinations, keep-alives, and the
//! replay a failover client makes after reconnecting (a `ConnectionInfo` reusing a live
//! connection's id replaces that connection; re-sent persistent messages are recognised by
//! the core's producer-sequence check and answered without being stored twice).
//!
//! It must never hold broker state beyond what the wire needs (which deliveries each consumer
//! has outstanding) and never answers a persistent send or a commit before the core confirms
//! it. When the core says this node is no longer the master, it closes the connection without
//! answering, so the client's failover transport replays the request on the new master.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::convert::{self, ADVISORY_PREFIX};
use super::{
    decode, encode, negotiate, BaseCommand, BrokerId, BrokerInfo, Command, ConnectionError,
    ConnectionId, ConsumerId, ConsumerInfo, DataArrayResponse, DataStructure,
    Destination as OwDestination, DestinationInfo, DestinationKind, ExceptionResponse, Format,
    FrameReader, MessageAck, MessageDispatch, MessageId, MessageKind, MessagePull, Next, Oversized,
    ProducerAck, ProducerId, ProducerInfo, RemoveInfo, Response, Throwable, TransactionId,
    TransactionInfo, WireFormatInfo,
};
use crate::broker::{
    AckScope, Broker, BrokerError, BrowseCursor, Confirmation, Delivery, Destination, Seen,
    Session, SubscribeRequest,
};
use crate::protocol::temps::{TempDestinations, TempEvent};
use crate::protocol::write::{flush, Unwritten};

/// What every OpenWire connection on a node shares (a clone shares the registry and the
/// temporary destinations: a listener with its own frame limit is a clone).
#[derive(Debug, Clone)]
pub struct OpenWireOptions {
    pub max_frame_size: usize,
    /// user name -> password; empty means anyone may connect.
    pub users: HashMap<String, String>,
    /// How long a client may take to send its `WireFormatInfo`.
    pub connect_timeout: Duration,
    /// The broker name in `BrokerInfo`.
    pub broker_name: String,
    /// Advertised `MaxInactivityDuration`: a connection silent this long is closed, and we
    /// write a `KeepAliveInfo` when we have been silent for a third of it.
    pub max_inactivity: Duration,
    /// Live connections by connection id, so a failover client's replay replaces its stale
    /// connection.
    pub connections: Registry,
    /// Temporary destinations of this node's connections, announced on advisory topics
    /// (shared with the STOMP listener, whose clients make temporary destinations too).
    pub temps: Arc<TempDestinations>,
}

impl OpenWireOptions {
    pub fn new(max_frame_size: usize, users: HashMap<String, String>, broker_name: &str) -> Self {
        OpenWireOptions {
            max_frame_size,
            users,
            connect_timeout: Duration::from_secs(30),
            broker_name: broker_name.to_string(),
            max_inactivity: Duration::from_secs(30),
            connections: Registry::default(),
            temps: Arc::default(),
        }
    }
}

/// What a node that serves no clients now (no quorum, an election under way) sends an
/// OpenWire client before closing: its `WireFormatInfo`, then a `ConnectionError` naming the
/// reason, which the JMS client hands to the application's exception listener.
pub fn refusal(reason: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    let format = Format::new(super::MIN_VERSION);
    let hello = Command::WireFormatInfo(WireFormatInfo::ferromq(0, 0, 0));
    let error = Command::ConnectionError(ConnectionError {
        exception: Some(throwable("java.io.IOException", reason)),
        ..ConnectionError::default()
    });
    for command in [hello, error] {
        if encode(&command, format, &mut out).is_err() {
            return Vec::new();
        }
    }
    out.to_vec()
}

/// Live OpenWire connections by connection id (a clone is the same registry).
#[derive(Debug, Default, Clone)]
pub struct Registry(Arc<Mutex<HashMap<String, Live>>>);

#[derive(Debug)]
struct Live {
    serial: u64,
    kill: watch::Sender<bool>,
    /// Closes (errors on `changed`) once the connection's broker session is gone.
    done: watch::Receiver<()>,
}

impl Drop for State {
    /// A connection whose task is aborted still withdraws its temporary destinations (the
    /// normal end does so itself, and deletes them from the core too).
    fn drop(&mut self) {
        for destination in std::mem::take(&mut self.own_temps) {
            self.options.temps.remove(&destination);
        }
    }
}

/// What a connection keeps to be replaced; dropping it (however the connection ends, its
/// task aborted included) takes the connection out of the registry.
struct Registration {
    registry: Registry,
    id: String,
    serial: u64,
    kill: watch::Receiver<bool>,
    done: Option<watch::Sender<()>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if map.get(&self.id).is_some_and(|l| l.serial == self.serial) {
            map.remove(&self.id);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `id`; a live connection already holding it is told to close, and this waits
    /// (a few seconds at most) until its broker session is gone.
    async fn register(&self, id: &str) -> Registration {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (kill_tx, kill_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(());
        let previous = self.lock().insert(
            id.to_string(),
            Live {
                serial,
                kill: kill_tx,
                done: done_rx,
            },
        );
        if let Some(mut previous) = previous {
            tracing::info!(
                connection = id,
                "connection id reused (failover replay): closing the stale connection"
            );
            let _ = previous.kill.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while previous.done.changed().await.is_ok() {}
            })
            .await;
        }
        Registration {
            registry: Registry(self.0.clone()),
            id: id.to_string(),
            serial,
            kill: kill_rx,
            done: Some(done_tx),
        }
    }
}

/// The largest prefetch window taken from a client (`ConsumerInfo`, `ConsumerControl`).
const MAX_PREFETCH: i32 = crate::broker::MAX_PREFETCH as i32;

/// The shortest inactivity period honoured (keep-alives go out every third of it).
const MIN_INACTIVITY: Duration = Duration::from_secs(1);

/// How long a connection that negotiated no inactivity period may stay silent before its
/// ConnectionInfo (one that did is held to that period, as ActiveMQ's inactivity monitor holds
/// it from the wire format negotiation on).
const PRE_LOGIN_IDLE: Duration = Duration::from_secs(60);

/// Pull timeouts longer than this wait this long (and are then answered with nothing).
const MAX_PULL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How often a client held back by producer flow control, without an inactivity monitor, is
/// sent a `KeepAliveInfo`.
const HELD_BACK_PROBE: Duration = Duration::from_secs(1);

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// The client went away or asked to close.
    Quietly,
    /// A protocol error: tell the client with a `ConnectionError`, then close.
    Error(String),
    /// This node stopped serving: close without a word so the failover client replays.
    Silently(String),
}

/// What a queued confirmation answers when it resolves.
enum Awaiting {
    /// A `Response` to this command id.
    Response(i32),
    /// Nothing to answer; a failure still ends the connection.
    Silent,
}

struct ConsumerState {
    id: ConsumerId,
    destination: OwDestination,
    browser: bool,
    /// The consumer's window; 0: it pulls every message.
    prefetch: u32,
    /// Subscribed to nothing in the core (advisory topics).
    inert: bool,
    /// A plain (not durable) topic subscriber: as ActiveMQ's TopicSubscription, its standard
    /// acks are taken as they come, never checked against its deliveries (see
    /// `State::check_standard_ack`).
    plain_topic: bool,
    /// Deliveries not yet acknowledged, by tag: an ack must name the same message id.
    dispatched: BTreeMap<u64, Arc<crate::store::Message>>,
    /// A queue browser's progress.
    browse: Option<Browsing>,
}

/// A queue browser reads its queue page by page, as ActiveMQ's does: it is sent copies up to
/// its prefetch window, more as it acknowledges them, and a dispatch without a message once
/// the queue has been looked at to the end (the consumer then browses no more: `browse` is
/// `None` again).
struct Browsing {
    cursor: BrowseCursor,
    /// Message ids of the copies sent and not yet acknowledged, oldest first.
    outstanding: VecDeque<String>,
    /// With prefetch 0: pulls not yet answered (each gets one copy).
    pulls: usize,
}

/// Serves one connection whose first bytes (already read, in `initial`) are OpenWire.
pub async fn serve<S>(
    stream: S,
    initial: BytesMut,
    broker: Broker,
    options: Arc<OpenWireOptions>,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = Connection {
        stream,
        input: initial,
        output: BytesMut::with_capacity(64 * 1024),
        reader: FrameReader::new(options.max_frame_size),
        format: Format::new(super::MAX_VERSION),
        options,
        peer,
        inactivity: None,
        inactivity_initial_delay: Duration::ZERO,
    };
    let close = match connection.handshake().await {
        Ok(true) => connection.run(&broker).await,
        Ok(false) => Close::Quietly,
        Err(close) => close,
    };
    connection.finish(close).await;
}

struct Connection<S> {
    stream: S,
    input: BytesMut,
    output: BytesMut,
    reader: FrameReader,
    format: Format,
    options: Arc<OpenWireOptions>,
    peer: SocketAddr,
    /// The negotiated inactivity period; `None` disables keep-alives.
    inactivity: Option<Duration>,
    /// The negotiated `MaxInactivityDurationInitalDelay`: the client sends its first
    /// keep-alive only after it, so silence is allowed until it and a period have passed.
    inactivity_initial_delay: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn transaction_key(id: &TransactionId) -> Result<String, BrokerError> {
    match id {
        TransactionId::Local(t) => Ok(format!(
            "TX:{}:{}",
            t.connection_id
                .as_ref()
                .and_then(|c| c.value.as_deref())
                .unwrap_or(""),
            t.value
        )),
        TransactionId::Xa(_) => Err(BrokerError::Unsupported(
            "XA transactions; use local (transacted session) transactions".into(),
        )),
    }
}

fn throwable(class: &str, message: impl Into<String>) -> Throwable {
    Throwable {
        class_name: Some(class.to_string()),
        message: Some(message.into()),
        stack_trace: Vec::new(),
        cause: None,
    }
}

/// The message of the exception a client sees for a refusal: the error's text, except that
/// `DestinationDoesNotExistException` takes only the destination (the client's constructor
/// makes it "The destination temp-queue://... does not exist.").
fn exception_message(e: &BrokerError) -> String {
    match e {
        BrokerError::TemporaryGone(destination) => destination.clone(),
        _ => e.to_string(),
    }
}

/// The JMS exception class a client should see for a refusal.
fn exception_class(e: &BrokerError) -> &'static str {
    match e {
        BrokerError::InvalidSelector(_) => "javax.jms.InvalidSelectorException",
        // ActiveMQ's own subclass of InvalidDestinationException, as its broker throws.
        BrokerError::TemporaryGone(_) => "org.apache.activemq.DestinationDoesNotExistException",
        BrokerError::InvalidDestination(_)
        | BrokerError::InvalidName(_)
        | BrokerError::InvalidComposite(..)
        | BrokerError::UnknownDurable(_) => "javax.jms.InvalidDestinationException",
        BrokerError::DurableNeedsClientId | BrokerError::ClientIdInUse { .. } => {
            "javax.jms.InvalidClientIDException"
        }
        BrokerError::RolledBack(..) => "javax.jms.TransactionRolledBackException",
        // ActiveMQ's refusal with sendFailIfNoSpace; its usage limits refuse the same way.
        BrokerError::StoreFull { .. }
        | BrokerError::TransactionTooLarge(..)
        | BrokerError::OpenTransactionsFull { .. } => "javax.jms.ResourceAllocationException",
        _ => "javax.jms.JMSException",
    }
}

/// `TransactionInfo.type` of an XA recovery scan (ActiveMQ's `TransactionInfo.RECOVER`).
const XA_RECOVER: u8 = 5;

/// Errors after which this node cannot serve the client at all: close without answering.
fn is_not_serving(e: &BrokerError) -> bool {
    matches!(e, BrokerError::NotMaster(_) | BrokerError::ShuttingDown)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn queue(&mut self, command: &Command) -> Result<(), Close> {
        tracing::trace!(peer = %self.peer, command = command.name(), "OpenWire out");
        encode(command, self.format, &mut self.output).map_err(|e| {
            tracing::error!(peer = %self.peer, command = command.name(), error = %e, "cannot encode a reply");
            Close::Error(format!("cannot encode {}: {e}", command.name()))
        })
    }

    /// Queues the dispatch of stored `message` to consumer `id` on `destination` (`sequence`
    /// is the delivery's tag, echoed in acks; 0 for a browser's copy). When the message cannot
    /// be written in OpenWire (it does not convert, or a field is past what the wire format
    /// holds, such as a STOMP header of more than 65,535 bytes mapped to JMSCorrelationID),
    /// the output is left as it was and the error says why: the caller passes the message
    /// over instead of closing the connection, which would only send it back to be
    /// dispatched again, to this consumer or another.
    fn queue_message(
        &mut self,
        (id, destination): (&ConsumerId, &OwDestination),
        message: &crate::store::Message,
        redeliveries: u32,
        sequence: i64,
        group_first: bool,
        now: i64,
    ) -> Result<(), String> {
        let mut m = convert::to_openwire(message, destination, redeliveries, sequence, now)
            .map_err(|e| e.to_string())?;
        m.jmsx_group_first_for_consumer = group_first;
        let command = Command::MessageDispatch(MessageDispatch {
            consumer_id: Some(id.clone()),
            destination: Some(destination.clone()),
            message: Some(Box::new(m)),
            redelivery_counter: i32::try_from(redeliveries).unwrap_or(i32::MAX),
            ..MessageDispatch::default()
        });
        tracing::trace!(peer = %self.peer, command = command.name(), "OpenWire out");
        // On error `encode` appends nothing.
        encode(&command, self.format, &mut self.output).map_err(|e| e.to_string())
    }

    async fn flush_output(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Reads the next frame, or `None` at end of stream.
    async fn read_command(&mut self) -> Result<Option<Command>, Close> {
        loop {
            if let Some(frame) = self
                .reader
                .next_frame(&mut self.input)
                .map_err(|e| Close::Error(e.to_string()))?
            {
                return decode(&frame, self.format)
                    .map(Some)
                    .map_err(|e| Close::Error(e.to_string()));
            }
            crate::protocol::room_to_read(&mut self.input);
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Exchanges `WireFormatInfo`s; false when the client left first.
    async fn handshake(&mut self) -> Result<bool, Close> {
        let inactivity_ms = self.options.max_inactivity.as_millis() as i64;
        let ours = WireFormatInfo::ferromq(
            self.options.max_frame_size as i64,
            inactivity_ms,
            10_000.min(inactivity_ms),
        );
        self.queue(&Command::WireFormatInfo(ours.clone()))?;
        if self.flush_output().await.is_err() {
            return Ok(false);
        }
        let first = tokio::time::timeout(self.options.connect_timeout, self.read_command())
            .await
            .map_err(|_| Close::Error("no WireFormatInfo within the connect timeout".into()))??;
        let Some(first) = first else { return Ok(false) };
        let Command::WireFormatInfo(client) = first else {
            return Err(Close::Error(format!(
                "expected WireFormatInfo as the first command, got {}",
                first.name()
            )));
        };
        let negotiated = negotiate(&client, &ours).map_err(|e| Close::Error(e.to_string()))?;
        self.format = negotiated.format;
        if negotiated.max_frame_size > 0 {
            let limit = usize::try_from(negotiated.max_frame_size).unwrap_or(usize::MAX);
            self.reader = FrameReader::new(limit.min(self.options.max_frame_size));
        }
        self.inactivity = (negotiated.max_inactivity_duration > 0)
            // A client asking for less than a second would be closed between two keep-alives.
            .then(|| Duration::from_millis(negotiated.max_inactivity_duration as u64))
            .map(|d| d.max(MIN_INACTIVITY));
        self.inactivity_initial_delay =
            Duration::from_millis(negotiated.max_inactivity_duration_initial_delay.max(0) as u64);
        let info = BrokerInfo {
            broker_id: Some(BrokerId {
                value: Some(format!("ID:ferromq-{}", self.options.broker_name)),
            }),
            broker_name: Some(self.options.broker_name.clone()),
            ..BrokerInfo::default()
        };
        self.queue(&Command::BrokerInfo(info))?;
        if self.flush_output().await.is_err() {
            return Ok(false);
        }
        tracing::debug!(peer = %self.peer, version = self.format.version, "OpenWire wire format negotiated");
        Ok(true)
    }

    async fn finish(&mut self, close: Close) {
        match close {
            Close::Quietly => {}
            Close::Silently(reason) => {
                tracing::info!(peer = %self.peer, %reason, "closing OpenWire connection");
            }
            Close::Error(reason) => {
                tracing::info!(peer = %self.peer, error = %reason, "closing OpenWire connection with an error");
                let error = ConnectionError {
                    exception: Some(throwable("java.io.IOException", reason)),
                    ..ConnectionError::default()
                };
                if self.queue(&Command::ConnectionError(error)).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_output()).await;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// Serves commands until the connection ends: first a `ConnectionInfo`, then the JMS
    /// conversation.
    async fn run(&mut self, broker: &Broker) -> Close {
        // Until ConnectionInfo arrives only a few commands make sense. The stock client sends
        // it lazily (at its first session), and keep-alives meanwhile; a connection that sends
        // nothing is closed, or silent ones could hold every client slot without a login.
        let idle = self
            .inactivity
            .map_or(PRE_LOGIN_IDLE, |d| d + self.inactivity_initial_delay);
        let info = loop {
            let command = match tokio::time::timeout(idle, self.read_command()).await {
                Err(_) => {
                    return Close::Silently(format!(
                        "nothing received for {idle:?} before ConnectionInfo"
                    ))
                }
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return Close::Quietly,
                Ok(Err(close)) => return close,
            };
            match command {
                Command::ConnectionInfo(info) => break info,
                Command::WireFormatInfo(_) | Command::ConnectionControl(_) => {}
                Command::KeepAliveInfo(k) => {
                    if let Err(close) = self.keep_alive_reply(k) {
                        return close;
                    }
                }
                Command::ShutdownInfo(_) => return Close::Quietly,
                other => {
                    if other.response_required() {
                        if let Err(close) = self.exception(
                            other.command_id(),
                            "javax.jms.IllegalStateException",
                            format!("{} before ConnectionInfo", other.name()),
                        ) {
                            return close;
                        }
                    }
                }
            }
            if self.flush_output().await.is_err() {
                return Close::Quietly;
            }
        };
        if !self.options.users.is_empty() {
            let user = info.user_name.as_deref().unwrap_or("");
            let password = info.password.as_deref().unwrap_or("");
            if self.options.users.get(user).map(String::as_str) != Some(password) {
                tracing::warn!(peer = %self.peer, user, "OpenWire login refused");
                let _ = self.exception(
                    info.command_id,
                    "java.lang.SecurityException",
                    format!("User name [{user}] or password is invalid."),
                );
                let _ = self.flush_output().await;
                return Close::Quietly;
            }
        }
        let connection_id = info
            .connection_id
            .as_ref()
            .and_then(|c| c.value.clone())
            .unwrap_or_else(|| format!("ferromq-anonymous-{}", self.peer));
        let options = self.options.clone();
        let mut registration = options.connections.register(&connection_id).await;
        let peer = format!("tcp://{}", self.peer);
        let (session, deliveries) = match broker.connect(info.client_id.clone(), &peer).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "OpenWire connection refused");
                if let Err(close) = self.refuse(&Command::ConnectionInfo(info), e) {
                    return close;
                }
                let _ = self.flush_output().await;
                return Close::Quietly;
            }
        };
        session.set_connection(&connection_id);
        let mut state = State {
            session,
            consumers: HashMap::new(),
            awaiting: VecDeque::new(),
            pulls: Vec::new(),
            acks: HashMap::new(),
            tx_acks: HashMap::new(),
            tx_temps: HashMap::new(),
            begun: HashSet::new(),
            rollback_only: HashMap::new(),
            failover_reconnect: info.failover_reconnect,
            now: now_ms(),
            connection_id: connection_id.clone(),
            options: options.clone(),
            temp_events: options.temps.subscribe(),
            own_temps: Vec::new(),
            windows: HashSet::new(),
        };
        tracing::debug!(peer = %self.peer, connection = %connection_id, client_id = ?info.client_id,
            failover = info.failover_reconnect, "OpenWire connection open");
        let close = match self.respond(info.command_id, info.response_required) {
            Ok(()) => {
                self.serve_commands(&mut state, deliveries, &mut registration)
                    .await
            }
            Err(close) => close,
        };
        // The broker session goes first (returning unacknowledged messages), then a
        // replacing connection may proceed.
        let temps = std::mem::take(&mut state.own_temps);
        drop(state);
        // Temporary destinations die with their connection.
        for destination in temps {
            options.temps.remove(&destination);
            if let Ok(core) = convert::core_destination(&destination) {
                broker.delete_destination(&core);
            }
        }
        registration.done.take();
        close
    }

    fn respond(&mut self, command_id: i32, required: bool) -> Result<(), Close> {
        if required {
            self.queue(&Command::Response(Response {
                correlation_id: command_id,
                ..Response::default()
            }))?;
        }
        Ok(())
    }

    fn exception(
        &mut self,
        command_id: i32,
        class: &str,
        message: impl Into<String>,
    ) -> Result<(), Close> {
        self.queue(&Command::ExceptionResponse(ExceptionResponse {
            correlation_id: command_id,
            exception: Some(throwable(class, message)),
            ..ExceptionResponse::default()
        }))
    }

    /// Answers a refused request: an `ExceptionResponse` when the client waits for one, else
    /// a log line. A node that no longer serves closes instead.
    fn refuse(&mut self, command: &Command, error: BrokerError) -> Result<(), Close> {
        if is_not_serving(&error) {
            return Err(Close::Silently(error.to_string()));
        }
        tracing::debug!(peer = %self.peer, command = command.name(), %error, "request refused");
        if command.response_required() {
            self.exception(
                command.command_id(),
                exception_class(&error),
                exception_message(&error),
            )
        } else if let BrokerError::UnmatchedAck(_) = error {
            // As ActiveMQ tells of an ack it refused: the client's exception listener hears it.
            tracing::warn!(peer = %self.peer, %error, "ack refused");
            self.connection_error(exception_class(&error), exception_message(&error))
        } else {
            Ok(())
        }
    }

    fn keep_alive_reply(&mut self, k: BaseCommand) -> Result<(), Close> {
        if k.response_required {
            self.queue(&Command::KeepAliveInfo(BaseCommand {
                command_id: 0,
                response_required: false,
            }))?;
        }
        Ok(())
    }

    async fn serve_commands(
        &mut self,
        state: &mut State,
        mut deliveries: mpsc::UnboundedReceiver<Delivery>,
        registration: &mut Registration,
    ) -> Close {
        let keep_alive = self
            .inactivity
            .map(|d| d / 3)
            .unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A timer of its own, so that other events while held back do not restart it.
        let mut probe = tokio::time::interval(HELD_BACK_PROBE);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        // As ActiveMQ's inactivity monitor: the first read check comes after the initial delay,
        // when the client's keep-alives begin.
        let checks_from = Instant::now() + self.inactivity_initial_delay;
        let mut wrote_since_tick = false;
        // Producer flow control: see `Session::hold_back`.
        let gate = state.session.flow_gate();
        // Why reading is paused, while it is.
        let mut paused = None;
        // The answer to ConnectionInfo, which the client waits for.
        if self.flush_output().await.is_err() {
            return Close::Quietly;
        }
        // Bytes read but not yet handled: what a write waited behind (see `write::flush`), and
        // at first whatever came with ConnectionInfo (a failover replay writes its sessions,
        // producers and consumers right behind it, without waiting for an answer).
        let mut unhandled_input = !self.input.is_empty();
        loop {
            let next_pull = state.pulls.iter().map(|p| p.0).min();
            let step: Result<(), Close> = if std::mem::take(&mut unhandled_input) {
                state.now = now_ms();
                self.handle_input(state)
            } else {
                crate::protocol::room_to_read(&mut self.input);
                tokio::select! {
                    read = self.stream.read_buf(&mut self.input), if paused.is_none() => match read {
                        Ok(0) | Err(_) => Err(Close::Quietly),
                        Ok(_) => {
                            last_read = Instant::now();
                            state.now = now_ms();
                            self.handle_input(state)
                        }
                    },
                    () = gate.room(paused), if paused.is_some() => {
                        paused = None;
                        // Not reading was the broker's doing, not an inactive client.
                        last_read = Instant::now();
                        tracing::debug!(peer = %self.peer, "room again: reading resumed");
                        Ok(())
                    }
                    event = state.temp_events.recv() => match event {
                        Ok(event) => self.write_advisories(state, &[event]),
                        Err(_) => Ok(()), // lagged: some advisories lost
                    },
                    Some(delivery) = deliveries.recv() => {
                        state.now = now_ms();
                        // Advisories first: a reply to a new temporary queue must not reach the
                        // client before it knows the queue.
                        let mut events = Vec::new();
                        while let Ok(event) = state.temp_events.try_recv() {
                            events.push(event);
                        }
                        let mut result = self.write_advisories(state, &events);
                        if result.is_ok() {
                            result = self.write_delivery(state, delivery);
                        }
                        for _ in 0..255 {
                            if result.is_err() {
                                break;
                            }
                            match deliveries.try_recv() {
                                Ok(d) => result = self.write_delivery(state, d),
                                Err(_) => break,
                            }
                        }
                        result
                    }
                    result = front(&mut state.awaiting), if !state.awaiting.is_empty() => {
                        let (awaiting, _) = state.awaiting.pop_front().expect("non-empty");
                        self.answer(awaiting, result)
                    }
                    _ = sleep_until(next_pull), if next_pull.is_some() => {
                        self.expire_pulls(state)
                    }
                    _ = tick.tick(), if self.inactivity.is_some() => {
                        let period = self.inactivity.expect("guarded");
                        if paused.is_none()
                            && last_read.elapsed() > period
                            && Instant::now() > checks_from + period
                        {
                            Err(Close::Error(format!(
                                "no command from the client for {} ms (inactivity monitor)",
                                period.as_millis()
                            )))
                        } else {
                            if !wrote_since_tick {
                                let _ = self.queue(&Command::KeepAliveInfo(BaseCommand::default()));
                            }
                            wrote_since_tick = false;
                            Ok(())
                        }
                    }
                    // Held back without an inactivity monitor, nothing is read from the client:
                    // only a failed write shows that it left.
                    _ = probe.tick(), if paused.is_some() && self.inactivity.is_none() =>
                    {
                        self.queue(&Command::KeepAliveInfo(BaseCommand::default()))
                    }
                    _ = registration.kill.changed() => {
                        Err(Close::Silently("replaced by a new connection with the same id".into()))
                    }
                }
            };
            if !self.output.is_empty() {
                wrote_since_tick = true;
                let grace = self.inactivity.filter(|_| paused.is_none());
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
                    Err(Unwritten::Failed) => return Close::Quietly,
                    Err(Unwritten::Silent) => {
                        return Close::Error(format!(
                            "no command from the client for {} ms while writing to it \
                             (inactivity monitor)",
                            self.inactivity.unwrap_or_default().as_millis()
                        ))
                    }
                }
            }
            if let Err(close) = step {
                return close;
            }
            // The JMS client's asynchronous sends then block in its socket write. Its advisory
            // consumers subscribe to nothing in the core, so they do not count as consumers.
            if let Some(hold) = state.session.hold_back() {
                tracing::debug!(peer = %self.peer, "{hold}: reading paused");
                paused = Some(hold);
            }
        }
    }

    /// Handles every whole frame in the input buffer.
    fn handle_input(&mut self, state: &mut State) -> Result<(), Close> {
        loop {
            let frame = match self.reader.next_or_skip(&mut self.input) {
                Ok(Some(Next::Frame(frame))) => frame,
                Ok(Some(Next::Skipped(oversized))) => {
                    self.oversized(state, oversized)?;
                    continue;
                }
                Ok(None) => break,
                Err(e) => return Err(Close::Error(e.to_string())),
            };
            let command = decode(&frame, self.format).map_err(|e| Close::Error(e.to_string()))?;
            if !matches!(command, Command::MessageAck(_)) {
                self.flush_acks(state)?;
            }
            self.handle_command(state, command)?;
        }
        self.flush_acks(state)
    }

    fn handle_command(&mut self, state: &mut State, command: Command) -> Result<(), Close> {
        tracing::trace!(peer = %self.peer, command = command.name(), id = command.command_id(),
            response_required = command.response_required(), "OpenWire in");
        let id = command.command_id();
        let rr = command.response_required();
        let result: Result<Option<Confirmation>, BrokerError> = match &command {
            Command::Message(m) => state.send(m, &self.options.temps),
            Command::MessageAck(ack) => match &ack.consumer_id {
                None => Ok(None),
                Some(cid) => {
                    let key = cid.to_string();
                    if state.browser_acked(&key, ack) {
                        self.fill_browser(state, &key)?;
                        Ok(None)
                    } else {
                        state.ack(key, ack).map(|()| None)
                    }
                }
            },
            Command::ConsumerInfo(info) => return self.add_consumer(state, &command, info),
            Command::RemoveInfo(remove) => state.remove(remove),
            Command::SessionInfo(_) => Ok(None),
            Command::ProducerInfo(info) => {
                state.add_producer(info);
                Ok(None)
            }
            // XA RECOVER (a transaction manager's recovery scan): nothing is ever prepared
            // here (XA is refused at END), so the list of in-doubt transactions is empty.
            Command::TransactionInfo(tx) if tx.transaction_type == XA_RECOVER => {
                return self.queue(&Command::DataArrayResponse(DataArrayResponse {
                    correlation_id: id,
                    data: Some(Vec::new()),
                    ..DataArrayResponse::default()
                }));
            }
            Command::TransactionInfo(tx) => state.transaction(tx, &self.options.temps),
            Command::DestinationInfo(info) => {
                state.destination_info(info, &self.options.temps);
                Ok(None)
            }
            Command::RemoveSubscriptionInfo(r) => match r.subscription_name.as_deref() {
                Some(name) => state.session.remove_durable(name).map(Some),
                None => Err(BrokerError::UnknownSubscription(String::new())),
            },
            Command::MessagePull(pull) => {
                self.pull(state, pull)?;
                Ok(None)
            }
            Command::ConsumerControl(control) => {
                if let Some(cid) = &control.consumer_id {
                    let key = cid.to_string();
                    if let Some(c) = state.consumers.get_mut(&key).filter(|c| !c.inert) {
                        c.prefetch = control.prefetch.clamp(0, MAX_PREFETCH) as u32;
                        if !c.browser {
                            let _ = state.session.set_prefetch(&key, c.prefetch);
                        } else if c.prefetch > 0 {
                            // A browser's window is this connection's alone (the core never
                            // sees a browser): the stock client replays an open browser with
                            // prefetch 0 after a failover and gives its window back with this
                            // command.
                            self.fill_browser(state, &key)?;
                        }
                    }
                }
                Ok(None)
            }
            Command::KeepAliveInfo(k) => return self.keep_alive_reply(*k),
            Command::ShutdownInfo(_) => return Err(Close::Quietly),
            Command::ConnectionInfo(_) => Err(BrokerError::Unsupported(
                "a second ConnectionInfo on one connection".into(),
            )),
            Command::WireFormatInfo(_)
            | Command::ConnectionControl(_)
            | Command::ControlCommand(_)
            | Command::FlushCommand(_)
            | Command::ProducerAck(_)
            | Command::Response(_)
            | Command::ExceptionResponse(_)
            | Command::DataResponse(_)
            | Command::DataArrayResponse(_)
            | Command::IntegerResponse(_)
            | Command::ConnectionError(_) => Ok(None),
            Command::BrokerInfo(_) | Command::MessageDispatch(_) => {
                return Err(Close::Error(format!(
                    "a client may not send {}",
                    command.name()
                )))
            }
        };
        if let (Command::Message(m), false, true) = (&command, rr, result.is_ok()) {
            if let Some(ack) = state.producer_ack(m) {
                self.queue(&Command::ProducerAck(ack))?;
            }
        }
        match result {
            Ok(None) => self.respond(id, rr),
            Ok(Some(confirmation)) if confirmation.is_done() => self.respond(id, rr),
            Ok(Some(confirmation)) => {
                let awaiting = if rr {
                    Awaiting::Response(id)
                } else {
                    Awaiting::Silent
                };
                state.awaiting.push_back((awaiting, confirmation));
                Ok(())
            }
            Err(e) => {
                if let (Command::Message(m), false) = (&command, is_not_serving(&e)) {
                    self.refused_send(state, m, &e)?;
                }
                self.refuse(&command, e)
            }
        }
    }

    /// Refuses a message over the frame limit, whose bytes the reader skips: the connection
    /// carries on. A client waiting for an answer gets an exception naming the limit; otherwise
    /// (an asynchronous send) every transaction open on the connection is made rollback-only,
    /// as the message may belong to one (its commit then fails instead of confirming without
    /// it), and with none open the client's exception listener is told.
    fn oversized(&mut self, state: &mut State, oversized: Oversized) -> Result<(), Close> {
        let reason = format!(
            "message of {} bytes refused: over the broker's max_frame_size of {} bytes",
            oversized.size, oversized.max
        );
        tracing::warn!(peer = %self.peer, "{reason}");
        if oversized.response_required {
            return self.exception(oversized.command_id, "javax.jms.JMSException", reason);
        }
        let open: Vec<String> = state
            .begun
            .iter()
            .chain(state.tx_acks.keys())
            .cloned()
            .collect();
        if open.is_empty() {
            return self.connection_error("javax.jms.JMSException", reason);
        }
        for key in open {
            state
                .rollback_only
                .entry(key)
                .or_insert_with(|| reason.clone());
        }
        Ok(())
    }

    /// A send was refused. Inside a transaction, the transaction can no longer commit. An
    /// asynchronous send outside one (no response awaited) is reported to the connection's
    /// exception listener with a `ConnectionError`, instead of vanishing.
    fn refused_send(
        &mut self,
        state: &mut State,
        m: &super::Message,
        error: &BrokerError,
    ) -> Result<(), Close> {
        match m.transaction_id.as_ref().map(transaction_key) {
            Some(Ok(key)) => {
                state
                    .rollback_only
                    .entry(key)
                    .or_insert_with(|| error.to_string());
                Ok(())
            }
            Some(Err(_)) => Ok(()),
            None if m.response_required => Ok(()),
            None => self.connection_error(exception_class(error), exception_message(error)),
        }
    }

    /// Tells the client's exception listener, without closing the connection.
    fn connection_error(&mut self, class: &str, message: String) -> Result<(), Close> {
        self.queue(&Command::ConnectionError(ConnectionError {
            exception: Some(throwable(class, message)),
            ..ConnectionError::default()
        }))
    }

    fn add_consumer(
        &mut self,
        state: &mut State,
        command: &Command,
        info: &ConsumerInfo,
    ) -> Result<(), Close> {
        let Some(cid) = info.consumer_id.clone() else {
            return self.refuse(
                command,
                BrokerError::UnknownSubscription("no consumer id".into()),
            );
        };
        let key = cid.to_string();
        let Some(destination) = info.destination.clone() else {
            return self.refuse(command, BrokerError::InvalidDestination(String::new()));
        };
        if state.consumers.contains_key(&key) {
            // A replayed consumer that is still here.
            return self.respond(info.command_id, info.response_required);
        }
        let name = destination.physical_name.clone().unwrap_or_default();
        let inert = name.starts_with(ADVISORY_PREFIX);
        let consumer = ConsumerState {
            id: cid.clone(),
            destination: destination.clone(),
            browser: info.browser,
            prefetch: info.prefetch_size.clamp(0, MAX_PREFETCH) as u32,
            inert,
            plain_topic: matches!(
                destination.kind,
                DestinationKind::Topic | DestinationKind::TempTopic
            ) && info.subscription_name.is_none(),
            dispatched: BTreeMap::new(),
            browse: None,
        };
        if inert {
            state.consumers.insert(key, consumer);
            self.respond(info.command_id, info.response_required)?;
            // A new advisory consumer hears of every temporary destination alive now.
            let live = self.options.temps.snapshot();
            return self.write_advisories(state, &live);
        }
        let members = match convert::core_destinations(&destination) {
            Ok(members) => members,
            Err(e) => return self.refuse(command, e),
        };
        let core = members[0].clone();
        let selector = info.selector.clone().filter(|s| !s.trim().is_empty());
        if info.browser {
            if members.len() > 1 {
                return self.refuse(
                    command,
                    BrokerError::Unsupported(format!(
                        "browsing composite destination '{name}': browse each queue"
                    )),
                );
            }
            let Destination::Queue(_) = core else {
                return self.refuse(
                    command,
                    BrokerError::Unsupported(format!("browsing topic '{name}': browse queues")),
                );
            };
            let cursor = match state.session.open_browse(&core, selector.as_deref()) {
                Ok(cursor) => cursor,
                Err(e) => return self.refuse(command, e),
            };
            self.respond(info.command_id, info.response_required)?;
            let consumer = ConsumerState {
                browse: Some(Browsing {
                    cursor,
                    outstanding: VecDeque::new(),
                    pulls: 0,
                }),
                ..consumer
            };
            state.consumers.insert(key.clone(), consumer);
            return self.fill_browser(state, &key);
        }
        let durable_name = match core {
            Destination::Topic(_) => info.subscription_name.clone(),
            Destination::Queue(_) => None,
        };
        let request = SubscribeRequest {
            id: key.clone(),
            destination: core,
            prefetch: info.prefetch_size.clamp(0, MAX_PREFETCH) as u32,
            durable_name,
            selector,
            // The JMS client takes `consumer.exclusive=true` off the destination's options
            // into this field (the destination on the wire has no options).
            exclusive: info.exclusive,
            // A Java byte, as the client sent it (`consumer.priority=10`).
            priority: info.priority as i8,
            no_local: info.no_local,
        };
        state.consumers.insert(key.clone(), consumer);
        match state.session.subscribe_to_each(request, &members) {
            Ok(confirmation) => {
                if confirmation.is_done() {
                    self.respond(info.command_id, info.response_required)
                } else {
                    let awaiting = if info.response_required {
                        Awaiting::Response(info.command_id)
                    } else {
                        Awaiting::Silent
                    };
                    state.awaiting.push_back((awaiting, confirmation));
                    Ok(())
                }
            }
            Err(e) => {
                state.consumers.remove(&key);
                self.refuse(command, e)
            }
        }
    }

    /// Sends a browser copies until its window is full (with prefetch 0: one per pull) or its
    /// queue has been looked at to the end, then the end-of-browse dispatch. A page the store
    /// cannot read closes the connection (a failover client browses again elsewhere).
    fn fill_browser(&mut self, state: &mut State, key: &str) -> Result<(), Close> {
        loop {
            let Some(consumer) = state.consumers.get_mut(key) else {
                return Ok(());
            };
            let Some(browsing) = consumer.browse.as_mut() else {
                return Ok(());
            };
            if browsing.cursor.is_done() {
                consumer.browse = None;
                // A dispatch without a message ends the browse.
                let end = Command::MessageDispatch(MessageDispatch {
                    consumer_id: Some(consumer.id.clone()),
                    destination: Some(consumer.destination.clone()),
                    ..MessageDispatch::default()
                });
                return self.queue(&end);
            }
            let room = match consumer.prefetch {
                0 => browsing.pulls,
                window => (window as usize).saturating_sub(browsing.outstanding.len()),
            };
            if room == 0 {
                return Ok(());
            }
            let page = state
                .session
                .browse_next(&mut browsing.cursor, room)
                .map_err(|e| Close::Error(format!("browsing for consumer {}: {e}", consumer.id)))?;
            for (message, redeliveries) in page {
                // A message OpenWire cannot carry is left out of the browse (it stays on the
                // queue), not a reason to close the browsing connection.
                let to = (&consumer.id, &consumer.destination);
                let queued = self.queue_message(to, &message, redeliveries, 0, false, state.now);
                if let Err(error) = queued {
                    tracing::warn!(message_id = %message.message_id, %error, "cannot show a message to an OpenWire queue browser; left out of the browse");
                    continue;
                }
                browsing.outstanding.push_back(message.message_id.clone());
                browsing.pulls = browsing.pulls.saturating_sub(1);
            }
        }
    }

    fn pull(&mut self, state: &mut State, pull: &MessagePull) -> Result<(), Close> {
        let Some(cid) = &pull.consumer_id else {
            return Ok(());
        };
        let key = cid.to_string();
        let Some(consumer) = state.consumers.get_mut(&key) else {
            return Ok(());
        };
        if let (Some(browsing), 0) = (consumer.browse.as_mut(), consumer.prefetch) {
            // A browser with prefetch 0 is sent a copy per pull (the end once there is none).
            browsing.pulls += 1;
            return self.fill_browser(state, &key);
        }
        if consumer.inert || consumer.browser || consumer.prefetch > 0 {
            return Ok(());
        }
        if let Err(e) = state.session.pull(&key) {
            return if is_not_serving(&e) {
                Err(Close::Silently(e.to_string()))
            } else {
                Ok(())
            };
        }
        match pull.timeout {
            // receive(): wait as long as it takes.
            0 => {}
            // receiveNoWait(): answered at once, with nothing if nothing was ready.
            t if t < 0 => {
                if state.session.cancel_pull(&key) {
                    self.queue_empty_dispatch(state, &key)?;
                }
            }
            t => {
                // One timer per consumer, as one pull is outstanding at most.
                state.pulls.retain(|(_, k)| *k != key);
                state.pulls.push((
                    Instant::now() + Duration::from_millis(t as u64).min(MAX_PULL_TIMEOUT),
                    key,
                ))
            }
        }
        Ok(())
    }

    fn queue_empty_dispatch(&mut self, state: &State, key: &str) -> Result<(), Close> {
        let Some(consumer) = state.consumers.get(key) else {
            return Ok(());
        };
        let dispatch = MessageDispatch {
            consumer_id: Some(consumer.id.clone()),
            destination: Some(consumer.destination.clone()),
            ..MessageDispatch::default()
        };
        self.queue(&Command::MessageDispatch(dispatch))
    }

    /// Answers pulls whose timeout passed with an empty dispatch, unless a message went out.
    fn expire_pulls(&mut self, state: &mut State) -> Result<(), Close> {
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = state.pulls.drain(..).partition(|p| p.0 <= now);
        state.pulls = rest;
        for (_, key) in due {
            if state.session.cancel_pull(&key) {
                self.queue_empty_dispatch(state, &key)?;
            }
        }
        Ok(())
    }

    fn write_delivery(&mut self, state: &mut State, delivery: Delivery) -> Result<(), Close> {
        let Some(consumer) = state.consumers.get_mut(&delivery.subscription) else {
            return Ok(()); // removed meanwhile; the core took it back
        };
        let queued = self.queue_message(
            (&consumer.id, &consumer.destination),
            &delivery.message,
            delivery.redelivery_count,
            delivery.tag as i64,
            delivery.group_first,
            state.now,
        );
        if let Err(e) = queued {
            tracing::warn!(message_id = %delivery.message.message_id, error = %e, "cannot write a message in OpenWire for a consumer; dead-lettering it");
            let cause = format!("ferromq: the message cannot be written in OpenWire: {e}");
            let _ = state.session.poison(delivery.tag, Some(&cause));
            return Ok(());
        }
        consumer
            .dispatched
            .insert(delivery.tag, delivery.message.clone());
        if consumer.prefetch == 0 {
            // This answers the consumer's pull (a JMS client has one receive outstanding): its
            // deadline must not answer a later pull with nothing.
            state.pulls.retain(|(_, k)| *k != delivery.subscription);
        }
        Ok(())
    }

    /// Tells this connection's advisory consumers of temporary destinations created or
    /// deleted.
    fn write_advisories(&mut self, state: &mut State, events: &[TempEvent]) -> Result<(), Close> {
        use std::sync::atomic::{AtomicI64, Ordering};
        static SEQUENCE: AtomicI64 = AtomicI64::new(1);
        for event in events {
            let topic = match event.destination.kind {
                DestinationKind::TempQueue => "ActiveMQ.Advisory.TempQueue",
                DestinationKind::TempTopic => "ActiveMQ.Advisory.TempTopic",
                _ => continue,
            };
            let listeners: Vec<(ConsumerId, OwDestination)> = state
                .consumers
                .values()
                .filter(|c| {
                    c.inert
                        && c.destination
                            .physical_name
                            .as_deref()
                            .is_some_and(|n| n.split(',').any(|part| part == topic))
                })
                .map(|c| (c.id.clone(), c.destination.clone()))
                .collect();
            for (consumer_id, destination) in listeners {
                let producer = ProducerId {
                    connection_id: Some(format!(
                        "ID:ferromq-{}-advisory",
                        self.options.broker_name
                    )),
                    value: 0,
                    session_id: 0,
                };
                let info = DestinationInfo {
                    connection_id: Some(ConnectionId {
                        value: Some(event.connection_id.clone()),
                    }),
                    destination: Some(event.destination.clone()),
                    operation_type: if event.added { 0 } else { 1 },
                    ..DestinationInfo::default()
                };
                let message = super::Message {
                    kind: MessageKind::Message,
                    producer_id: Some(producer.clone()),
                    destination: Some(OwDestination::topic(topic)),
                    message_id: Some(MessageId {
                        text_view: None,
                        producer_id: Some(producer),
                        producer_sequence_id: SEQUENCE.fetch_add(1, Ordering::Relaxed),
                        broker_sequence_id: 0,
                    }),
                    timestamp: state.now,
                    data_structure: Some(DataStructure::Command(Box::new(
                        Command::DestinationInfo(info),
                    ))),
                    ..super::Message::default()
                };
                self.queue(&Command::MessageDispatch(MessageDispatch {
                    consumer_id: Some(consumer_id),
                    destination: Some(destination),
                    message: Some(Box::new(message)),
                    ..MessageDispatch::default()
                }))?;
            }
        }
        Ok(())
    }

    fn flush_acks(&mut self, state: &mut State) -> Result<(), Close> {
        for (_, tag) in state.acks.drain() {
            // One cumulative ack (one record) per consumer and batch of input.
            if let Err(e) = state.session.ack(tag, AckScope::Cumulative, None) {
                if is_not_serving(&e) {
                    return Err(Close::Silently(e.to_string()));
                }
            }
        }
        Ok(())
    }

    fn answer(&mut self, awaiting: Awaiting, result: Result<(), BrokerError>) -> Result<(), Close> {
        match (awaiting, result) {
            (Awaiting::Response(id), Ok(())) => self.respond(id, true),
            (Awaiting::Silent, Ok(())) => Ok(()),
            (_, Err(e)) if is_not_serving(&e) => Err(Close::Silently(e.to_string())),
            (Awaiting::Response(id), Err(e)) => {
                self.exception(id, exception_class(&e), exception_message(&e))
            }
            (Awaiting::Silent, Err(e)) => Err(Close::Error(e.to_string())),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Polls the oldest queued confirmation (the core resolves them in order).
async fn front(awaiting: &mut VecDeque<(Awaiting, Confirmation)>) -> Result<(), BrokerError> {
    let (_, confirmation) = awaiting.front_mut().expect("guarded by is_empty");
    confirmation.await
}

/// The per-connection bookkeeping around a broker session.
struct State {
    session: Session,
    consumers: HashMap<String, ConsumerState>,
    awaiting: VecDeque<(Awaiting, Confirmation)>,
    /// Pulls with a timeout: (deadline, consumer key).
    pulls: Vec<(Instant, String)>,
    /// Standard acks without a transaction received in this batch of input: consumer -> tag.
    acks: HashMap<String, u64>,
    /// Acks inside each open transaction: (consumer, tag, scope), settled at commit. A
    /// transaction is here (its list maybe empty) once it carried a send or a matched ack.
    tx_acks: HashMap<String, Vec<(String, u64, AckScope)>>,
    /// The temporary destinations each open transaction sent to: one deleted before the
    /// commit gets nothing from it (see `State::transaction`).
    tx_temps: HashMap<String, Vec<OwDestination>>,
    /// Transactions begun (BEGIN) and not yet committed or rolled back.
    begun: HashSet<String>,
    /// Open transactions with a refused send the client was not told of (it did not wait for
    /// a response): their commit is refused and rolls them back, as ActiveMQ does.
    rollback_only: HashMap<String, String>,
    /// This connection replaces one the client lost (`ConnectionInfo.failoverReconnect`).
    failover_reconnect: bool,
    now: i64,
    connection_id: String,
    options: Arc<OpenWireOptions>,
    /// Temporary destinations created or deleted on this node.
    temp_events: broadcast::Receiver<TempEvent>,
    /// The temporary destinations this connection created.
    own_temps: Vec<OwDestination>,
    /// Producers that announced a window (`ProducerInfo.windowSize` > 0, the client's
    /// `producerWindowSize`): the client counts the bytes of their asynchronous sends and
    /// blocks once the window is full, until a `ProducerAck` gives them back.
    windows: HashSet<ProducerId>,
}

impl State {
    fn send(
        &mut self,
        m: &super::Message,
        temps: &TempDestinations,
    ) -> Result<Option<Confirmation>, BrokerError> {
        let destination = m
            .destination
            .as_ref()
            .ok_or_else(|| BrokerError::InvalidDestination("(none)".into()))?;
        let members = convert::core_destinations(destination)?;
        let temporary = matches!(
            destination.kind,
            super::DestinationKind::TempQueue | super::DestinationKind::TempTopic
        );
        // As in ActiveMQ, a temporary destination is there only while the connection that
        // made it lives: a send to one deleted or never made is refused, not turned into an
        // ordinary queue anyone could read.
        if temporary && temps.owner(destination).is_none() {
            let named = crate::protocol::destination_to_core(&convert::stomp_name(destination));
            return Err(BrokerError::TemporaryGone(named));
        }
        let mut message = convert::to_new_message(m, self.options.max_frame_size)
            .map_err(|e| BrokerError::InvalidMessage(e.to_string()))?;
        // Temporary destinations live as long as their connection: never on disk, whatever
        // the delivery mode (which consumers still see as sent).
        message.temporary = temporary;
        let transaction = m.transaction_id.as_ref().map(transaction_key).transpose()?;
        if let Some(tx) = &transaction {
            // The client begins transactions lazily; a replay may omit the BEGIN.
            let _ = self.session.begin(tx);
            self.tx_acks.entry(tx.clone()).or_default();
            if temporary {
                let sent_to = self.tx_temps.entry(tx.clone()).or_default();
                if !sent_to.contains(destination) {
                    sent_to.push(destination.clone());
                }
            }
        }
        self.session
            .send_to_each(&members, message, transaction.as_deref())
            .map(Some)
    }

    /// If consumer `key` is browsing, the copies up to the one `ack` names (any ack type: the
    /// client consumed them) leave its window, and it may be sent more: true.
    fn browser_acked(&mut self, key: &str, ack: &MessageAck) -> bool {
        let Some(browsing) = self.consumers.get_mut(key).and_then(|c| c.browse.as_mut()) else {
            return false;
        };
        if let Some(last) = ack.last_message_id.as_ref() {
            let last = convert::message_id_text(last);
            if let Some(i) = browsing.outstanding.iter().position(|id| *id == last) {
                browsing.outstanding.drain(..=i);
            }
        }
        true
    }

    /// The delivery tag an ack names: the broker sequence id this broker gave the delivery,
    /// checked against what this consumer was sent. A client that failed over acks copies
    /// another broker delivered (a transaction redelivered from its own memory after an
    /// in-doubt commit, or messages received just before the failover and committed just
    /// after), whose broker sequence ids are that broker's: as in ActiveMQ, whose `MessageId`
    /// equality leaves the broker sequence id out, the ack then means this consumer's delivery
    /// of the same message, if it has one.
    fn acked_tag(&self, key: &str, id: Option<&super::MessageId>) -> Option<u64> {
        let id = id?;
        let text = convert::message_id_text(id);
        let dispatched = &self.consumers.get(key)?.dispatched;
        let tag = u64::try_from(id.broker_sequence_id).ok();
        if let Some(tag) = tag.filter(|t| dispatched.get(t).is_some_and(|m| m.message_id == text)) {
            return Some(tag);
        }
        dispatched
            .iter()
            .find(|(_, m)| m.message_id == text)
            .map(|(tag, _)| *tag)
    }

    /// Consumer `key`'s ack.
    fn ack(&mut self, key: String, ack: &MessageAck) -> Result<(), BrokerError> {
        if self
            .consumers
            .get(&key)
            .is_none_or(|c| c.inert || c.browser)
        {
            return Ok(());
        }
        let Some(tag) = self.acked_tag(&key, ack.last_message_id.as_ref()) else {
            tracing::debug!(consumer = %key, ack_type = ack.ack_type, "ack for no outstanding delivery; ignored");
            return Ok(());
        };
        let transaction = ack
            .transaction_id
            .as_ref()
            .map(transaction_key)
            .transpose()?;
        if ack.ack_type == 2 && transaction.is_none() {
            if let Err(e) = self.check_standard_ack(&key, ack, tag) {
                if !self.failover_reconnect {
                    return Err(e);
                }
                // An ack the client's failover transport held from the node it lost may name
                // messages this node dispatched again: ActiveMQ ignores acks that come before
                // a replayed subscription's first dispatch. Nothing is acknowledged either way.
                tracing::debug!(consumer = %key, %e, "unmatched ack after a failover; ignored");
                return Ok(());
            }
        }
        let ranged = match ack.ack_type {
            2 => self.ranged(&key, ack.first_message_id.as_ref(), tag),
            _ => None,
        };
        let consumer = self.consumers.get_mut(&key).expect("checked above");
        match ack.ack_type {
            // Delivered: consumed, acknowledged later; widens the window.
            0 => self.session.delivered(&key, tag),
            // Standard: `first..=last`. That is everything up to `last` when `first` is the
            // oldest outstanding delivery (or unknown), the usual case; otherwise an earlier one
            // waits for a local redelivery on the client (`nonBlockingRedelivery`) and stays
            // outstanding, as in ActiveMQ's PrefetchSubscription.
            2 if ranged.is_some() => {
                self.flush_consumer_ack(&key)?;
                for t in ranged.unwrap_or_default() {
                    self.ack_one(&key, t, transaction.as_deref())?;
                }
                Ok(())
            }
            2 => {
                match transaction {
                    None => {
                        consumer.dispatched = consumer.dispatched.split_off(&(tag + 1));
                        let entry = self.acks.entry(key).or_insert(tag);
                        *entry = (*entry).max(tag);
                        Ok(())
                    }
                    Some(tx) => {
                        let _ = self.session.begin(&tx);
                        self.flush_consumer_ack(&key)?;
                        self.session.ack(tag, AckScope::Cumulative, Some(&tx))?;
                        // Still outstanding until the commit: a rollback keeps them delivered.
                        self.tx_acks
                            .entry(tx)
                            .or_default()
                            .push((key, tag, AckScope::Cumulative));
                        Ok(())
                    }
                }
            }
            // Individual, unmatched (a durable subscriber's selector refused it): just this one.
            4 | 5 => self.ack_one(&key, tag, transaction.as_deref()),
            // Poison (redelivered too often on the client) and expired: to the DLQ.
            1 | 6 => {
                let first = self
                    .acked_tag(&key, ack.first_message_id.as_ref())
                    .unwrap_or(tag);
                let consumer = self.consumers.get_mut(&key).expect("checked above");
                let tags: Vec<u64> = consumer
                    .dispatched
                    .range(first.min(tag)..=tag)
                    .map(|(t, _)| *t)
                    .collect();
                for t in &tags {
                    consumer.dispatched.remove(t);
                }
                // As ActiveMQ stores it: the Throwable's toString().
                let cause = ack.poison_cause.as_ref().map(ToString::to_string);
                for t in tags {
                    self.session.poison(t, cause.as_deref())?;
                }
                Ok(())
            }
            // Redelivered (the client rolled these back and redelivers them itself) and unknown
            // types change nothing. As in ActiveMQ's PrefetchSubscription, a client's own
            // redeliveries do not count at the broker: a message that returns to its queue
            // counts one redelivery for its consumer's departure, however often the client
            // rolled it back (counting both sent it to the DLQ after four deliveries).
            _ => Ok(()),
        }
    }

    /// Acknowledges one delivery (an individual ack, or one of a standard ack's range): at once,
    /// or inside a transaction at its commit (a rollback keeps it delivered).
    fn ack_one(
        &mut self,
        key: &str,
        tag: u64,
        transaction: Option<&str>,
    ) -> Result<(), BrokerError> {
        let Some(tx) = transaction else {
            if let Some(c) = self.consumers.get_mut(key) {
                c.dispatched.remove(&tag);
            }
            return self.session.ack(tag, AckScope::Single, None).map(drop);
        };
        let _ = self.session.begin(tx);
        self.session.ack(tag, AckScope::Single, Some(tx))?;
        self.tx_acks.entry(tx.to_string()).or_default().push((
            key.to_string(),
            tag,
            AckScope::Single,
        ));
        Ok(())
    }

    /// Checks a standard ack outside a transaction against consumer `key`'s outstanding
    /// deliveries, as ActiveMQ's PrefetchSubscription does: its first message (the oldest
    /// outstanding one when it names none) must be outstanding, and so must be exactly the
    /// ack's count of deliveries from there to `last`. A client that hands prefetched messages
    /// to its application out of dispatch order (`messagePrioritySupported`) acknowledges a
    /// range holding messages the application never got; acknowledged, they would be lost.
    fn check_standard_ack(
        &self,
        key: &str,
        ack: &MessageAck,
        last: u64,
    ) -> Result<(), BrokerError> {
        let Some(consumer) = self.consumers.get(key).filter(|c| !c.plain_topic) else {
            return Ok(());
        };
        let first = match &ack.first_message_id {
            None => consumer.dispatched.keys().next().copied(),
            Some(id) => self.acked_tag(key, Some(id)),
        };
        let outstanding = match first {
            Some(first) if first <= last => consumer.dispatched.range(first..=last).count(),
            _ => {
                return Err(BrokerError::UnmatchedAck(format!(
                    "consumer {key}: the ack's first message is not awaiting acknowledgement"
                )))
            }
        };
        if usize::try_from(ack.message_count).ok() != Some(outstanding) {
            return Err(BrokerError::UnmatchedAck(format!(
                "consumer {key}: the ack counts {} messages, {outstanding} are outstanding \
                 from its first to its last",
                ack.message_count
            )));
        }
        Ok(())
    }

    /// The outstanding deliveries of a standard ack from `first` to `last`, when `first` is
    /// known and is not the oldest outstanding one (else the ack is cumulative: `None`).
    fn ranged(&self, key: &str, first: Option<&super::MessageId>, last: u64) -> Option<Vec<u64>> {
        let first = self.acked_tag(key, first)?;
        let dispatched = &self.consumers.get(key)?.dispatched;
        if dispatched.keys().next() == Some(&first) || first > last {
            return None;
        }
        Some(dispatched.range(first..=last).map(|(t, _)| *t).collect())
    }

    fn flush_consumer_ack(&mut self, key: &str) -> Result<(), BrokerError> {
        if let Some(tag) = self.acks.remove(key) {
            self.session.ack(tag, AckScope::Cumulative, None)?;
        }
        Ok(())
    }

    fn destination_info(&mut self, info: &DestinationInfo, temps: &TempDestinations) {
        let Some(destination) = info.destination.clone() else {
            return;
        };
        if !matches!(
            destination.kind,
            DestinationKind::TempQueue | DestinationKind::TempTopic
        ) {
            return; // queues and topics exist when used
        }
        if info.operation_type == 0 {
            if !self.own_temps.contains(&destination) {
                self.own_temps.push(destination.clone());
            }
            temps.add(destination, &self.connection_id);
        } else {
            self.own_temps.retain(|d| *d != destination);
            temps.remove(&destination);
            if let Ok(core) = convert::core_destination(&destination) {
                self.session.delete_destination(&core);
            }
        }
    }

    fn add_producer(&mut self, info: &ProducerInfo) {
        if let Some(id) = info.producer_id.clone().filter(|_| info.window_size > 0) {
            self.windows.insert(id);
        }
    }

    /// The credit to give back for an asynchronous send of `m` (one the client does not wait
    /// for), if its producer has a window: the size ActiveMQ's `Message.getSize()` gives, which
    /// is what the client counted (a 1024-byte minimum plus the marshalled properties and the
    /// content), as ActiveMQ's broker answers.
    fn producer_ack(&self, m: &super::Message) -> Option<ProducerAck> {
        let id = m
            .producer_id
            .as_ref()
            .filter(|id| self.windows.contains(*id))?;
        let size = 1024
            + m.marshalled_properties.as_ref().map_or(0, |p| p.len())
            + m.content.as_ref().map_or(0, |c| c.len());
        Some(ProducerAck {
            producer_id: Some(id.clone()),
            size: i32::try_from(size).unwrap_or(i32::MAX),
            ..ProducerAck::default()
        })
    }

    fn remove(&mut self, remove: &RemoveInfo) -> Result<Option<Confirmation>, BrokerError> {
        use super::DataStructure as D;
        match &remove.object_id {
            Some(D::ProducerId(pid)) => {
                self.windows.remove(pid);
                Ok(None)
            }
            Some(D::ConsumerId(cid)) => {
                self.remove_consumer(
                    &cid.to_string(),
                    Seen::Upto(tag_of(remove.last_delivered_sequence_id)),
                );
                Ok(None)
            }
            Some(D::SessionId(sid)) => {
                self.windows
                    .retain(|p| p.session_id != sid.value || p.connection_id != sid.connection_id);
                let keys: Vec<String> = self
                    .consumers
                    .iter()
                    .filter(|(_, c)| {
                        c.id.session_id == sid.value && c.id.connection_id == sid.connection_id
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    self.remove_consumer(
                        &key,
                        Seen::LastOf(tag_of(remove.last_delivered_sequence_id)),
                    );
                }
                Ok(None)
            }
            // The client waits for this answer before it closes: answer once everything it
            // sent before is confirmed.
            Some(D::ConnectionId(_)) => {
                // The client closes without removing its consumers one by one; what it
                // prefetched beyond the last message handed to the application was never seen.
                self.windows.clear();
                let keys: Vec<String> = self.consumers.keys().cloned().collect();
                for key in keys {
                    self.remove_consumer(
                        &key,
                        Seen::LastOf(tag_of(remove.last_delivered_sequence_id)),
                    );
                }
                Ok(Some(self.session.flush()))
            }
            _ => Ok(None),
        }
    }

    /// Closes a consumer; `last` holds the broker sequence id (our delivery tag) of the last
    /// message the client handed to the application (-1: none): this consumer's, or its
    /// session's or connection's, which may be another consumer's.
    fn remove_consumer(&mut self, key: &str, last: Seen) {
        let _ = self.flush_consumer_ack(key);
        self.pulls.retain(|(_, k)| k != key);
        if let Some(consumer) = self.consumers.remove(key) {
            if !consumer.inert && !consumer.browser {
                let _ = self.session.close_consumer(key, last);
            }
        }
    }

    fn transaction(
        &mut self,
        tx: &TransactionInfo,
        temps: &TempDestinations,
    ) -> Result<Option<Confirmation>, BrokerError> {
        let Some(id) = &tx.transaction_id else {
            return Err(BrokerError::UnknownTransaction("(none)".into()));
        };
        let key = transaction_key(id)?;
        match tx.transaction_type {
            // BEGIN (a replay may repeat one).
            0 => match self.session.begin(&key) {
                Ok(()) | Err(BrokerError::TransactionExists(_)) => {
                    self.begun.insert(key);
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            // COMMIT_ONE_PHASE (and two-phase, which a local transaction never uses).
            2 | 3 => {
                if let Some(reason) = self.commit_refusal(&key) {
                    self.rollback(&key)?;
                    return Err(BrokerError::RolledBack(key, reason));
                }
                let acks: Vec<String> = self.acks.keys().cloned().collect();
                for k in acks {
                    self.flush_consumer_ack(&k)?;
                }
                // A reply to a temporary queue deleted meanwhile (its requestor gave up) goes
                // nowhere, as in ActiveMQ; routed at the commit it would make an ordinary queue
                // of that name that nobody can read, kept for good.
                let sent_to = self.tx_temps.remove(&key).unwrap_or_default();
                for gone in sent_to.iter().filter(|d| temps.owner(d).is_none()) {
                    for member in convert::core_destinations(gone)? {
                        self.session.drop_transaction_sends_to(&key, &member)?;
                    }
                }
                let confirmation = match self.session.commit(&key) {
                    Ok(confirmation) => confirmation,
                    Err(e) => {
                        // As ActiveMQ's LocalTransaction: a commit the store refuses (full,
                        // say) rolls the transaction back. The stock client then redelivers
                        // what it acknowledged in it, and acknowledges those again: they stay
                        // dispatched here.
                        self.rollback(&key)?;
                        return Err(e);
                    }
                };
                for (consumer, tag, scope) in self.tx_acks.remove(&key).unwrap_or_default() {
                    if let Some(c) = self.consumers.get_mut(&consumer) {
                        match scope {
                            AckScope::Cumulative => {
                                c.dispatched = c.dispatched.split_off(&(tag + 1))
                            }
                            AckScope::Single => {
                                c.dispatched.remove(&tag);
                            }
                        }
                    }
                }
                self.begun.remove(&key);
                Ok(Some(confirmation))
            }
            // ROLLBACK.
            4 => self.rollback(&key).map(|()| None),
            // END and FORGET of a local transaction mean nothing here.
            6 | 7 => Ok(None),
            other => Err(BrokerError::UnknownTransaction(format!(
                "transaction operation {other} (XA) is not supported"
            ))),
        }
    }

    /// Why the commit of transaction `key` is refused (it is then rolled back), if it is.
    fn commit_refusal(&mut self, key: &str) -> Option<String> {
        if let Some(reason) = self.rollback_only.remove(key) {
            return Some(reason);
        }
        // Nothing reached this broker of a transaction committed on a connection that replaces
        // a lost one: the stock client's failover transport replays a transaction's BEGIN and
        // sends but not its acknowledgements, so a consumer that acked on the old connection
        // and committed on this one would be told its messages were consumed while they stay
        // queued. Rolled back instead: the client delivers them again and acks them here. A
        // commit always carries work (the client sends none for a transaction it never
        // started).
        (self.failover_reconnect && !self.tx_acks.contains_key(key))
            .then(|| "its acknowledgements were sent to the broker before the failover".to_string())
    }

    /// Rolls transaction `key` back. The client redelivers what it consumed itself, so those
    /// messages stay delivered to it (to be acknowledged again, or poisoned).
    fn rollback(&mut self, key: &str) -> Result<(), BrokerError> {
        self.begun.remove(key);
        self.tx_acks.remove(key);
        self.tx_temps.remove(key);
        self.rollback_only.remove(key);
        match self.session.rollback_keeping_deliveries(key) {
            Ok(_) | Err(BrokerError::UnknownTransaction(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A RemoveInfo's `lastDeliveredSequenceId` as a delivery tag (-1, none: 0).
fn tag_of(last_delivered_sequence_id: i64) -> u64 {
    u64::try_from(last_delivered_sequence_id).unwrap_or(0)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
