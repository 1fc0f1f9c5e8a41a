//! ferromq's own STOMP 1.2 client, with ActiveMQ-style failover.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferromq::client::ClientError> {
//! use ferromq::client::{Client, ClientOptions, SendOptions, SubscribeOptions};
//! let url = "failover:(tcp://a:61613,tcp://b:61613)?randomize=false";
//! let client = Client::connect(url, ClientOptions::default()).await?;
//! client.send("queue://orders", "hello", SendOptions::persistent()).await?; // after RECEIPT
//! let mut orders = client.subscribe("queue://orders", SubscribeOptions::default()).await?;
//! while let Some(message) = orders.next().await {
//!     println!("{:?}", message.body());
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`url`]: broker URLs (`tcp://`, comma lists, `failover:(...)?options`).
//! - `failover`: the pure decisions: back-off delays, attempt limits, broker order.
//! - `handshake`: opening one connection (CONNECT, CONNECTED, heart-beat negotiation).
//! - `connection`: the one task that owns the socket, reconnects and replays.
//! - `subscription`, `transaction`, `destination`, `error`: the public handles and types.
//!
//! # Delivery guarantees across failover
//! Every SEND carries a `receipt` and a `message-id` of the form `ID:<producer>:<sequence>`: the
//! producer part is random and fixed for the client's lifetime, the sequence counts from 1 in
//! the order sends are submitted. A send resolves when its RECEIPT arrives. When a connection is
//! lost, the task reconnects (next broker first, the lost one last, back-off between passes),
//! re-subscribes every subscription with its id, then re-sends, in order, every send that has no
//! RECEIPT yet, with the same message-id, so that the broker can drop duplicates (each SEND
//! says so with `ferromq.dedupe:true`, [`DEDUPE_HEADER`]; without it the broker ignores a
//! SEND's message-id, as ActiveMQ does). Messages
//! received but not acknowledged are redelivered by the broker; acknowledging them afterwards
//! fails with [`ClientError::StaleDelivery`]. An open transaction cannot survive a lost
//! connection: it is rolled back ([`ClientError::TransactionRolledBack`]), as in ActiveMQ.

mod connection;
mod destination;
mod error;
mod failover;
mod handshake;
mod subscription;
mod transaction;
pub mod url;

#[cfg(test)]
pub(crate) mod fake_broker;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::stomp::frame::{Command, Frame};
use crate::protocol::stomp::DEDUPE_HEADER;
use connection::{Driver, Request};

pub use destination::stomp_destination;
pub use error::ClientError;
pub use subscription::{AckMode, Message, PendingAck, SubscribeOptions, Subscription};
pub use transaction::Transaction;
pub use url::{AttemptLimit, BrokerAddress, FailoverOptions, FailoverUrl, UrlError};

/// Headers the client sets itself on SEND; the same names in [`SendOptions::headers`] are
/// dropped.
const RESERVED_SEND_HEADERS: &[&str] = &[
    "destination",
    "receipt",
    "message-id",
    DEDUPE_HEADER,
    "transaction",
    "content-length",
];

/// How to connect, besides the URL.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// The `client-id` CONNECT header; durable subscriptions need one.
    pub client_id: Option<String>,
    /// Heart-beats to offer; zero turns that direction off. The default,
    /// [`HeartBeat::DEFAULT`], lets a failover client notice within 11.25 s a broker that stopped
    /// answering without closing the connection (a paused process, a dead machine, a cut
    /// network), as ActiveMQ's inactivity monitor does for OpenWire clients.
    pub heartbeat: HeartBeat,
    /// The limit for one broker attempt: TCP connect plus the CONNECT/CONNECTED exchange; also
    /// how long [`Client::close`] waits for the broker to confirm DISCONNECT.
    pub connect_timeout: Duration,
    /// The largest frame accepted from the broker.
    pub max_frame_size: usize,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            login: None,
            passcode: None,
            client_id: None,
            heartbeat: HeartBeat::DEFAULT,
            connect_timeout: Duration::from_secs(10),
            max_frame_size: 100 * 1024 * 1024,
        }
    }
}

/// STOMP heart-beat wishes: how often we can send, how often we want to hear from the broker.
/// The CONNECT header is `heart-beat:<send ms>,<receive ms>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartBeat {
    pub send: Duration,
    pub receive: Duration,
}

impl HeartBeat {
    /// Every 5 s both ways, where the broker agrees: a broker silent for 2.25 times that (11.25 s) is
    /// taken for dead and the failover client moves on.
    pub const DEFAULT: HeartBeat = HeartBeat::every(Duration::from_secs(5));

    /// The same period both ways; zero turns heart-beats off.
    pub const fn every(period: Duration) -> HeartBeat {
        HeartBeat {
            send: period,
            receive: period,
        }
    }
}

/// Options of one send.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Adds `persistent:true`: the broker stores the message before it confirms.
    pub persistent: bool,
    /// Extra headers (application properties, `expires`, `priority`, `content-type`, ...).
    pub headers: Vec<(String, String)>,
}

impl SendOptions {
    /// A persistent send with no extra headers.
    pub fn persistent() -> SendOptions {
        SendOptions {
            persistent: true,
            headers: Vec::new(),
        }
    }
}

/// State shared by the handles and the connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The random producer part of every message-id this client sends.
    producer_id: String,
    /// Whether CONNECT carries a `client-id` (durable subscriptions need one).
    has_client_id: bool,
    /// The last message sequence used. Held while a send is handed to the task, so that
    /// sequences reach the wire in increasing order.
    last_sequence: Mutex<u64>,
    next_subscription: AtomicU64,
    next_transaction: AtomicU64,
    reconnects: AtomicU64,
    /// The generation of the live connection; 0 while disconnected. A client-ack delivery of
    /// another generation is stale: the broker delivers it again.
    pub(crate) live_generation: AtomicU64,
    /// Received messages not yet taken by the application (see [`unread_cost`]), and the
    /// wake-up of a connection task that stopped reading because of them.
    pub(crate) unread: AtomicUsize,
    pub(crate) read_more: tokio::sync::Notify,
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
struct Status {
    broker: Option<BrokerAddress>,
    /// Why the connection task ended, once it has.
    terminal: Option<ClientError>,
}

/// Past this many bytes of received auto-ack messages the application has not taken, the
/// connection stops reading from the broker, whose writes then wait (TCP holds it back): a
/// slow application does not buffer a whole queue, which auto-ack would count as consumed.
/// Messages to acknowledge are not counted: the subscription's prefetch already bounds what
/// the broker sends of them, and an application waiting for an ACK's RECEIPT behind a
/// prefetch of large messages must be able to read up to it.
pub(crate) const UNREAD_HIGH_WATER: usize = 8 << 20;

/// Past [`UNREAD_HIGH_WATER`], the connection still reads while a request waits for its
/// RECEIPT, up to this many unread bytes (see the connection task).
pub(crate) const UNREAD_HARD_LIMIT: usize = 4 * UNREAD_HIGH_WATER;

/// What one received message counts against [`UNREAD_HIGH_WATER`]: nothing for a message to
/// acknowledge (its subscription's prefetch bounds those).
pub(crate) fn unread_cost(message: &Message) -> usize {
    if message.needs_ack() {
        0
    } else {
        message.body().len() + 512
    }
}

impl Shared {
    /// The application took a message (or dropped it unread).
    pub(crate) fn taken(&self, cost: usize) {
        let before = self.unread.fetch_sub(cost, Ordering::AcqRel);
        if before >= UNREAD_HIGH_WATER && before - cost < UNREAD_HIGH_WATER {
            self.read_more.notify_one();
        }
    }

    fn new(has_client_id: bool) -> Shared {
        Shared {
            producer_id: format!("{:016x}", rand::random::<u64>()),
            has_client_id,
            last_sequence: Mutex::new(0),
            next_subscription: AtomicU64::new(1),
            next_transaction: AtomicU64::new(1),
            reconnects: AtomicU64::new(0),
            live_generation: AtomicU64::new(0),
            unread: AtomicUsize::new(0),
            read_more: tokio::sync::Notify::new(),
            status: Mutex::new(Status::default()),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set_broker(&self, broker: Option<BrokerAddress>) {
        self.status().broker = broker;
    }

    pub(crate) fn set_terminal(&self, error: ClientError) {
        let mut status = self.status();
        status.broker = None;
        status.terminal.get_or_insert(error);
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The error for a request whose task has gone away.
    pub(crate) fn terminal_error(&self) -> ClientError {
        self.status()
            .terminal
            .clone()
            .unwrap_or(ClientError::Closed)
    }
}

/// Waits for the task's answer to a request.
pub(crate) async fn answer(
    reply: oneshot::Receiver<Result<(), ClientError>>,
    shared: &Shared,
) -> Result<(), ClientError> {
    reply.await.unwrap_or_else(|_| Err(shared.terminal_error()))
}

/// A connection to a broker (or to the next one, after a failure). Cheap to clone: clones share
/// the connection. The connection closes when the last clone (and the last [`Transaction`]) is
/// dropped, or at [`Client::close`].
#[derive(Debug, Clone)]
pub struct Client {
    requests: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

impl Client {
    /// Parses `url` (see [`url`]) and connects; see [`Client::connect_to`].
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        Client::connect_to(FailoverUrl::parse(url)?, options).await
    }

    /// Connects to the first broker that accepts, trying the list as the failover options say
    /// (`startupMaxReconnectAttempts`; by default forever). Fails at once if a broker refuses
    /// CONNECT for a reason other than its availability (bad credentials, say).
    pub async fn connect_to(
        url: FailoverUrl,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let (requests, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(options.client_id.is_some()));
        let (ready, connected) = oneshot::channel();
        let driver = Driver::new(url, options, receiver, requests.downgrade(), shared.clone());
        tokio::spawn(driver.run(ready));
        match connected.await {
            Ok(Ok(())) => Ok(Client { requests, shared }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(shared.terminal_error()),
        }
    }

    /// The random part of this client's message-ids (`ID:<producer_id>:<sequence>`).
    pub fn producer_id(&self) -> &str {
        &self.shared.producer_id
    }

    /// The broker currently connected to; `None` while failing over.
    pub fn connected_broker(&self) -> Option<BrokerAddress> {
        self.shared.status().broker.clone()
    }

    /// How many times the connection was replaced after a failure.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Sends a message and waits for the broker's RECEIPT.
    pub async fn send(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        options: SendOptions,
    ) -> Result<(), ClientError> {
        self.send_nowait(destination, body, options).await
    }

    /// Hands a message to the connection task and returns at once; the handle resolves when the
    /// RECEIPT arrives. Keep several handles to have several sends in flight; they go out, and
    /// are re-sent after a failover, in the order of these calls.
    pub fn send_nowait(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        options: SendOptions,
    ) -> SendHandle {
        self.submit_send(destination, body.into(), options, None)
    }

    pub(crate) fn submit_send(
        &self,
        destination: &str,
        body: Bytes,
        options: SendOptions,
        transaction: Option<&str>,
    ) -> SendHandle {
        let destination = match stomp_destination(destination) {
            Ok(destination) => destination,
            Err(error) => return SendHandle::failed(error),
        };
        let mut headers = Vec::with_capacity(options.headers.len() + 5);
        headers.push(("destination".to_string(), destination));
        if options.persistent {
            headers.push(("persistent".to_string(), "true".to_string()));
        }
        if let Some(transaction) = transaction {
            headers.push(("transaction".to_string(), transaction.to_string()));
        }
        headers.extend(
            options
                .headers
                .into_iter()
                .filter(|(name, _)| !RESERVED_SEND_HEADERS.contains(&name.as_str())),
        );
        let (reply, receiver) = oneshot::channel();
        let mut last_sequence = self
            .shared
            .last_sequence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last_sequence += 1;
        let message_id = format!("ID:{}:{}", self.shared.producer_id, *last_sequence);
        headers.push(("message-id".to_string(), message_id.clone()));
        headers.push((DEDUPE_HEADER.to_string(), "true".to_string()));
        let frame = Frame {
            command: Command::Send,
            headers,
            body,
        };
        let request = Request::Send {
            frame,
            transaction: transaction.map(str::to_string),
            reply,
        };
        if self.requests.send(request).is_err() {
            return SendHandle::failed(self.shared.terminal_error());
        }
        drop(last_sequence);
        SendHandle {
            message_id: Some(message_id),
            state: HandleState::Waiting(receiver, self.shared.clone()),
        }
    }

    /// Subscribes and waits for the broker's RECEIPT. The subscription is renewed, with the same
    /// id, on every reconnect.
    pub async fn subscribe(
        &self,
        destination: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let destination = stomp_destination(destination)?;
        if options.durable_name.is_some() && !self.shared.has_client_id {
            return Err(ClientError::MissingClientId);
        }
        let number = self
            .shared
            .next_subscription
            .fetch_add(1, Ordering::Relaxed);
        let id = format!("sub-{number}");
        let frame = options.frame(&id, &destination);
        let (deliver, messages) = mpsc::unbounded_channel();
        let (reply, answered) = oneshot::channel();
        let request = Request::Subscribe {
            id: id.clone(),
            frame,
            ack: options.ack,
            deliver,
            reply,
        };
        self.request(request)?;
        // Made before waiting, so that dropping this future unsubscribes.
        let subscription =
            Subscription::new(id, messages, self.requests.downgrade(), self.shared.clone());
        answer(answered, &self.shared).await?;
        Ok(subscription)
    }

    /// Begins a transaction (BEGIN, waits for the RECEIPT).
    pub async fn begin(&self) -> Result<Transaction, ClientError> {
        let number = self.shared.next_transaction.fetch_add(1, Ordering::Relaxed);
        let id = format!("tx-{number}");
        let (reply, answered) = oneshot::channel();
        self.request(Request::Begin {
            transaction: id.clone(),
            reply,
        })?;
        // Made before waiting, so that dropping this future aborts.
        let transaction = Transaction::new(self.clone(), id);
        answer(answered, &self.shared).await?;
        Ok(transaction)
    }

    /// Sends DISCONNECT (after everything submitted before it) and waits for the broker to
    /// confirm it, then ends the connection for every clone of this client. Requests still
    /// unconfirmed then fail with [`ClientError::Closed`].
    pub async fn close(&self) -> Result<(), ClientError> {
        let (reply, answered) = oneshot::channel();
        if self.requests.send(Request::Close { reply }).is_err() {
            return Ok(());
        }
        match answered.await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    pub(crate) fn request(&self, request: Request) -> Result<(), ClientError> {
        self.requests
            .send(request)
            .map_err(|_| self.shared.terminal_error())
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// A send in flight; resolves with the outcome once the broker confirmed it (or it failed).
#[derive(Debug)]
#[must_use = "a send is confirmed only when its handle resolves"]
pub struct SendHandle {
    message_id: Option<String>,
    state: HandleState,
}

#[derive(Debug)]
enum HandleState {
    Waiting(oneshot::Receiver<Result<(), ClientError>>, Arc<Shared>),
    Failed(Option<ClientError>),
}

impl SendHandle {
    fn failed(error: ClientError) -> SendHandle {
        SendHandle {
            message_id: None,
            state: HandleState::Failed(Some(error)),
        }
    }

    /// The message-id the message was sent with; `None` if it was refused before sending
    /// (an invalid destination, a closed client).
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

impl Future for SendHandle {
    type Output = Result<(), ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            HandleState::Waiting(receiver, shared) => match Pin::new(receiver).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(_)) => Poll::Ready(Err(shared.terminal_error())),
                Poll::Pending => Poll::Pending,
            },
            HandleState::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or(ClientError::Closed)))
            }
        }
    }
}
