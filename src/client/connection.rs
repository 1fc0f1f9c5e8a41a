//! The connection task: the one owner of the socket.
//!
//! Handles ([`Client`](super::Client), subscriptions, messages, transactions) send it
//! [`Request`]s over an unbounded channel, in order. The task turns each into a frame with a
//! `receipt` header (the receipt id is the request's sequence number, its *op*), writes it, and
//! keeps it in the *outbox* until the RECEIPT arrives; then it answers the request.
//!
//! When the connection is lost, the task decides per outbox entry (see [`Driver::on_lost`]):
//! sends and subscriptions wait for the next connection; acks, transactional work and
//! unsubscribes are answered at once. It then reconnects as `failover` decides, handling
//! requests meanwhile, and on the new connection writes every confirmed subscription again,
//! then the outbox in op order: re-sent messages keep their frames, hence their message-ids.
//! While disconnected, each waiting request fails after the failover `timeout`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::failover::{broker_unavailable, connect_order, Phase};
use super::handshake::{error_text, handshake, AttemptError, Link};
use super::subscription::Acker;
use super::url::{BrokerAddress, FailoverUrl};
use super::{AckMode, ClientError, ClientOptions, Message, Shared};
use crate::protocol::stomp::frame::{encode, Command, Frame, Item, Version};

/// Where the task answers a request.
pub(crate) type Reply = oneshot::Sender<Result<(), ClientError>>;

/// How long the broker may stay silent when it promised a heart-beat every `period`: twice
/// the period, as the STOMP spec suggests, plus a quarter for a broker that times its
/// heart-beats by ticks (it may be silent for almost two periods) and for scheduling delays.
fn silence_allowed(period: std::time::Duration) -> std::time::Duration {
    period * 2 + period / 4
}

/// Past this many unwritten bytes, the task stops taking requests until the socket drains.
const OUTPUT_HIGH_WATER: usize = 1 << 20;
/// The initial capacity of the output buffer.
const WRITE_BUFFER: usize = 64 * 1024;

/// What the handles ask of the task.
#[derive(Debug)]
pub(crate) enum Request {
    /// A SEND frame with its destination and message-id; the task adds the receipt.
    Send {
        frame: Frame,
        transaction: Option<String>,
        reply: Reply,
    },
    /// A SUBSCRIBE frame (without receipt), kept to be written again on every reconnect.
    Subscribe {
        id: String,
        frame: Frame,
        ack: AckMode,
        deliver: mpsc::UnboundedSender<Message>,
        reply: Reply,
    },
    Unsubscribe {
        id: String,
        reply: Option<Reply>,
    },
    Begin {
        transaction: String,
        reply: Reply,
    },
    Commit {
        transaction: String,
        reply: Reply,
    },
    Abort {
        transaction: String,
        reply: Option<Reply>,
    },
    /// An ACK or NACK frame for a message delivered on connection number `generation`.
    Ack {
        frame: Frame,
        generation: u64,
        transaction: Option<String>,
        reply: Reply,
    },
    /// DISCONNECT after everything before it, then stop.
    Close {
        reply: Reply,
    },
}

/// What an outbox entry is, which decides its fate when the connection is lost.
#[derive(Debug)]
enum Kind {
    Send { transaction: Option<String> },
    Subscribe { id: String },
    Unsubscribe,
    Begin { transaction: String },
    Commit { transaction: String },
    Abort { transaction: String },
    Ack { transaction: Option<String> },
    Disconnect,
}

/// A request written (or waiting to be written) and not yet confirmed.
#[derive(Debug)]
struct Pending {
    /// The frame, `receipt` included: re-sent as it is.
    frame: Frame,
    kind: Kind,
    reply: Option<Reply>,
    /// When it first waited for a connection (submitted while disconnected, or its connection
    /// lost). The failover `timeout` counts from there, across later connections that end
    /// before confirming it, so a broker that drops every connection cannot hold it for ever.
    waiting_since: Option<Instant>,
    /// Written to some connection at least once: the broker may have applied it.
    ever_written: bool,
}

impl Pending {
    fn respond(self, result: Result<(), ClientError>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(result);
        }
    }
}

#[derive(Debug)]
struct SubscriptionEntry {
    /// SUBSCRIBE without receipt, for re-subscribing.
    frame: Frame,
    ack: AckMode,
    deliver: mpsc::UnboundedSender<Message>,
    /// The broker confirmed it on some connection; until then the outbox holds it.
    confirmed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransactionState {
    /// BEGIN waits in the outbox for a connection.
    Waiting,
    /// BEGIN was written on connection `generation`; the transaction dies with it.
    Open { generation: u64 },
}

/// Whether a request may go out now (or wait for a connection), or is already answered.
enum Admission {
    Go,
    Done(Result<(), ClientError>),
}

/// Why [`Driver::serve`] returned.
#[derive(Debug)]
enum Ended {
    Lost(String),
    /// The broker ended the connection with an ERROR that refused no single request.
    Refused(String),
    Closed,
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The connection task's state.
pub(crate) struct Driver {
    url: FailoverUrl,
    options: ClientOptions,
    requests: mpsc::UnboundedReceiver<Request>,
    /// Handed to messages so that they can be acknowledged without keeping the client alive.
    weak_requests: mpsc::WeakUnboundedSender<Request>,
    shared: Arc<Shared>,

    /// Connections made so far; messages remember the one that delivered them.
    generation: u64,
    connected: bool,
    version: Version,
    /// Encoded frames not yet written to the socket.
    out: BytesMut,
    next_op: u64,
    /// Unconfirmed requests by op (= receipt id), in submission order.
    outbox: BTreeMap<u64, Pending>,
    subscriptions: BTreeMap<String, SubscriptionEntry>,
    transactions: HashMap<String, TransactionState>,

    /// The index in `url.brokers` of the broker last connected to.
    last_broker: Option<usize>,
    disconnected_since: Instant,
    /// The latest failure per broker, for error messages.
    last_errors: Vec<(BrokerAddress, String)>,
    /// Set once DISCONNECT is written: give up waiting for its receipt at this instant.
    closing: Option<Instant>,
    /// A close requested while disconnected, answered when the task ends.
    close_reply: Option<Reply>,
    /// Connections in a row that the broker ended with an ERROR before it confirmed a send or
    /// delivered a message: each counts as a failed pass, so that a broker that accepts
    /// connections but refuses the work (its store failed, say) is retried with back-off, not
    /// in a tight loop, and `maxReconnectAttempts` still ends it. Any other loss (the broker
    /// went away) starts again from the initial delay, as in ActiveMQ.
    unproductive: u32,
    /// Something was confirmed or delivered on the current connection.
    productive: bool,
}

impl Driver {
    pub(crate) fn new(
        url: FailoverUrl,
        options: ClientOptions,
        requests: mpsc::UnboundedReceiver<Request>,
        weak_requests: mpsc::WeakUnboundedSender<Request>,
        shared: Arc<Shared>,
    ) -> Driver {
        Driver {
            url,
            options,
            requests,
            weak_requests,
            shared,
            generation: 0,
            connected: false,
            version: Version::V1_0,
            out: BytesMut::with_capacity(WRITE_BUFFER),
            next_op: 1,
            outbox: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            transactions: HashMap::new(),
            last_broker: None,
            disconnected_since: Instant::now(),
            last_errors: Vec::new(),
            closing: None,
            close_reply: None,
            unproductive: 0,
            productive: false,
        }
    }

    /// Connects (answering `ready`), serves, fails over, until closed or out of attempts.
    pub(crate) async fn run(mut self, ready: oneshot::Sender<Result<(), ClientError>>) {
        let mut ready = Some(ready);
        let mut phase = Phase::Startup;
        loop {
            let connected = match (phase, self.url.options.timeout) {
                // As ActiveMQ's failover transport: the first connection is a request too, and
                // waits no longer than `timeout` (a cluster without a master, say).
                (Phase::Startup, Some(timeout)) => {
                    match tokio::time::timeout(timeout, self.connect(phase)).await {
                        Ok(connected) => connected,
                        Err(_) => Err(ClientError::Unreachable {
                            waited: timeout,
                            last_errors: self.describe_errors(),
                            in_doubt: false,
                        }),
                    }
                }
                _ => self.connect(phase).await,
            };
            let link = match connected {
                Ok(link) => link,
                Err(error) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(error.clone()));
                    }
                    return self.finish(error);
                }
            };
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            let address = link.address.clone();
            let (reason, refused) = match self.serve(link).await {
                Ended::Closed => return self.finish(ClientError::Closed),
                Ended::Lost(reason) => (reason, false),
                Ended::Refused(reason) => (reason, true),
            };
            let productive = std::mem::take(&mut self.productive);
            self.unproductive = if refused && !productive {
                self.unproductive.saturating_add(1)
            } else {
                0
            };
            self.on_lost(&address, &reason);
            if self.closing.is_some() {
                return self.finish(ClientError::Closed);
            }
            phase = Phase::Reconnect;
        }
    }

    /// Passes over the broker list until one accepts, as the failover options allow.
    /// `Err(Closed)`: the client was closed meanwhile.
    async fn connect(&mut self, phase: Phase) -> Result<Link, ClientError> {
        let options = self.url.options.clone();
        let allowed = options.passes_allowed(phase);
        let mut pass = match phase {
            Phase::Startup => 0,
            // The first lost connection retries at the initial delay; each further one that
            // achieved nothing waits longer (see `unproductive`).
            Phase::Reconnect => self.unproductive.saturating_sub(1),
        };
        loop {
            if allowed.is_some_and(|allowed| pass >= allowed) {
                return Err(ClientError::GaveUp {
                    passes: pass,
                    brokers: self.url.to_string(),
                    last_errors: self.describe_errors(),
                });
            }
            let delay = options.delay_before_pass(phase, pass);
            if !delay.is_zero() {
                self.while_disconnected(tokio::time::sleep(delay))
                    .await
                    .ok_or(ClientError::Closed)?;
            }
            let order = connect_order(
                self.url.brokers.len(),
                self.last_broker,
                options.randomize,
                &mut rand::rng(),
            );
            for index in order {
                let address = self.url.brokers[index].clone();
                let attempt = handshake(
                    address.clone(),
                    self.connect_frame(&address),
                    self.options.heartbeat,
                    self.options.connect_timeout,
                    self.options.max_frame_size,
                );
                match self.while_disconnected(attempt).await {
                    None => return Err(ClientError::Closed),
                    Some(Ok(link)) => {
                        self.last_broker = Some(index);
                        self.last_errors.clear();
                        return Ok(link);
                    }
                    Some(Err(AttemptError::Refused(message)))
                        if phase == Phase::Startup && !broker_unavailable(&message) =>
                    {
                        return Err(ClientError::ConnectRefused {
                            broker: address.to_string(),
                            message,
                        });
                    }
                    Some(Err(error)) => {
                        tracing::debug!(broker = %address, %error, "connection attempt failed");
                        self.record_error(&address, error.to_string());
                    }
                }
            }
            pass += 1;
            tracing::warn!(
                pass,
                brokers = %self.url,
                errors = %self.describe_errors(),
                "could not connect to any broker"
            );
        }
    }

    fn connect_frame(&self, address: &BrokerAddress) -> Frame {
        let heartbeat = self.options.heartbeat;
        let mut frame = Frame::new(Command::Connect)
            .header("accept-version", "1.0,1.1,1.2")
            .header("host", address.host.as_str())
            .header(
                "heart-beat",
                format!(
                    "{},{}",
                    heartbeat.send.as_millis(),
                    heartbeat.receive.as_millis()
                ),
            );
        let optional = [
            ("login", &self.options.login),
            ("passcode", &self.options.passcode),
            ("client-id", &self.options.client_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                frame = frame.header(name, value.as_str());
            }
        }
        frame
    }

    fn record_error(&mut self, address: &BrokerAddress, error: String) {
        match self.last_errors.iter_mut().find(|(a, _)| a == address) {
            Some(entry) => entry.1 = error,
            None => self.last_errors.push((address.clone(), error)),
        }
    }

    fn describe_errors(&self) -> String {
        if self.last_errors.is_empty() {
            return "none recorded".to_string();
        }
        let described: Vec<String> = self
            .last_errors
            .iter()
            .map(|(address, error)| format!("{address}: {error}"))
            .collect();
        described.join("; ")
    }

    /// Runs `work` (a delay, a connection attempt) while taking requests and failing those
    /// that waited longer than the failover timeout. `None`: the client was closed.
    async fn while_disconnected<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                output = &mut work => return Some(output),
                request = self.requests.recv() => match request {
                    None => return None,
                    Some(Request::Close { reply }) => {
                        self.close_reply = Some(reply);
                        return None;
                    }
                    Some(request) => self.on_request(request),
                },
                () = sleep_until_some(deadline) => self.expire(),
            }
        }
    }

    /// When the oldest waiting request times out. Requests are in submission order, so the
    /// oldest has the earliest deadline.
    fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.url.options.timeout?;
        let (_, oldest) = self.outbox.first_key_value()?;
        Some(oldest.waiting_since.unwrap_or(self.disconnected_since) + timeout)
    }

    fn expire(&mut self) {
        let Some(timeout) = self.url.options.timeout else {
            return;
        };
        let now = Instant::now();
        while let Some(entry) = self.outbox.first_entry() {
            let since = entry.get().waiting_since.unwrap_or(self.disconnected_since);
            if since + timeout > now {
                break;
            }
            let pending = entry.remove();
            self.forget(&pending.kind);
            let error = ClientError::Unreachable {
                waited: timeout,
                last_errors: self.describe_errors(),
                in_doubt: pending.ever_written,
            };
            pending.respond(Err(error));
        }
    }

    /// Serves one connection until it is lost or the client closes.
    async fn serve(&mut self, link: Link) -> Ended {
        let Link {
            mut reader,
            mut writer,
            mut decoder,
            mut input,
            version,
            heartbeat,
            address,
        } = link;
        self.connected = true;
        self.generation += 1;
        self.shared
            .live_generation
            .store(self.generation, Ordering::Release);
        self.version = version;
        self.out.clear();
        self.shared.set_broker(Some(address.clone()));
        let (resubscribed, replayed) = self.replay();
        if self.generation == 1 {
            tracing::debug!(broker = %address, %version, "connected");
        } else {
            self.shared.count_reconnect();
            tracing::info!(
                broker = %address,
                resubscribed,
                replayed,
                "reconnected: subscriptions renewed, unconfirmed requests sent again"
            );
        }
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        loop {
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(Item::Frame(frame))) => {
                        if let Some(ended) = self.on_frame(frame) {
                            return ended;
                        }
                    }
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        return Ended::Lost(format!("undecodable frame from the broker: {e}"))
                    }
                }
            }
            let accepting = self.closing.is_none() && self.out.len() < OUTPUT_HIGH_WATER;
            let heartbeat_due = heartbeat.send.map(|period| last_write + period);
            // The application is behind: stop reading until it catches up (the broker is not
            // silent then, merely held back). Not while a request waits for its RECEIPT, up to
            // a hard limit: the application may be waiting for that RECEIPT (a subscribe, a
            // send) before it takes any message, and the RECEIPT may be behind the messages.
            let unread = self.shared.unread.load(Ordering::Acquire);
            let reading = unread < super::UNREAD_HIGH_WATER
                || (!self.outbox.is_empty() && unread < super::UNREAD_HARD_LIMIT);
            let silence_limit = heartbeat
                .receive
                .filter(|_| reading)
                .map(|period| last_read + silence_allowed(period));
            tokio::select! {
                read = reader.read_buf(&mut input), if reading => match read {
                    Ok(0) => return Ended::Lost("the broker closed the connection".to_string()),
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                () = self.shared.read_more.notified(), if !reading => last_read = Instant::now(),
                written = writer.write(&self.out), if !self.out.is_empty() => match written {
                    Ok(0) => return Ended::Lost("the connection accepts no more bytes".to_string()),
                    Ok(n) => {
                        self.out.advance(n);
                        last_write = Instant::now();
                    }
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                request = self.requests.recv(), if accepting => {
                    self.take(request);
                    // Take what else is queued, so that one write carries many frames.
                    while self.closing.is_none() && self.out.len() < OUTPUT_HIGH_WATER {
                        match self.requests.try_recv() {
                            Ok(request) => self.take(Some(request)),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => self.take(None),
                        }
                    }
                }
                () = sleep_until_some(heartbeat_due), if self.out.is_empty() => self.out.put_u8(b'\n'),
                () = sleep_until_some(silence_limit) => {
                    let period = heartbeat.receive.unwrap_or_default();
                    return Ended::Lost(format!(
                        "no heart-beat from the broker for {} ms",
                        silence_allowed(period).as_millis()
                    ));
                }
                () = sleep_until_some(self.closing) => {
                    tracing::warn!(broker = %address, "the broker did not confirm DISCONNECT in time");
                    return Ended::Closed;
                }
            }
        }
    }

    /// A request taken while connected; `None`: every client handle is gone, so close.
    fn take(&mut self, request: Option<Request>) {
        match request {
            None => self.begin_close(None),
            Some(request) => self.on_request(request),
        }
    }

    /// Writes every confirmed subscription, then the outbox in op order. Returns how many
    /// subscriptions and requests were written.
    fn replay(&mut self) -> (usize, usize) {
        let mut resubscribed = 0;
        for entry in self.subscriptions.values().filter(|entry| entry.confirmed) {
            encode(&entry.frame, self.version, &mut self.out);
            resubscribed += 1;
        }
        let outbox = std::mem::take(&mut self.outbox);
        let replayed = outbox.len();
        for (op, pending) in outbox {
            self.dispatch(op, pending);
        }
        (resubscribed, replayed)
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Send {
                frame,
                transaction,
                reply,
            } => self.submit(frame, Kind::Send { transaction }, Some(reply)),
            Request::Subscribe {
                id,
                frame,
                ack,
                deliver,
                reply,
            } => {
                let entry = SubscriptionEntry {
                    frame: frame.clone(),
                    ack,
                    deliver,
                    confirmed: false,
                };
                self.subscriptions.insert(id.clone(), entry);
                self.submit(frame, Kind::Subscribe { id }, Some(reply));
            }
            Request::Unsubscribe { id, reply } => {
                // Disconnected, there is nothing to undo on the broker: the subscription is
                // simply not renewed.
                if self.subscriptions.remove(&id).is_some() && self.connected {
                    let frame = Frame::new(Command::Unsubscribe).header("id", id);
                    self.submit(frame, Kind::Unsubscribe, reply);
                } else if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Request::Begin { transaction, reply } => {
                let frame = Frame::new(Command::Begin).header("transaction", transaction.as_str());
                self.submit(frame, Kind::Begin { transaction }, Some(reply));
            }
            Request::Commit { transaction, reply } => {
                let frame = Frame::new(Command::Commit).header("transaction", transaction.as_str());
                self.submit(frame, Kind::Commit { transaction }, Some(reply));
            }
            Request::Abort { transaction, reply } => {
                let frame = Frame::new(Command::Abort).header("transaction", transaction.as_str());
                self.submit(frame, Kind::Abort { transaction }, reply);
            }
            Request::Ack {
                frame,
                generation,
                transaction,
                reply,
            } => {
                if self.connected && generation == self.generation {
                    self.submit(frame, Kind::Ack { transaction }, Some(reply));
                } else {
                    let _ = reply.send(Err(ClientError::StaleDelivery));
                }
            }
            Request::Close { reply } => {
                if self.connected {
                    self.begin_close(Some(reply));
                } else {
                    self.close_reply = Some(reply);
                }
            }
        }
    }

    fn begin_close(&mut self, reply: Option<Reply>) {
        if self.closing.is_some() {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        self.closing = Some(Instant::now() + self.options.connect_timeout);
        self.submit(Frame::new(Command::Disconnect), Kind::Disconnect, reply);
    }

    /// Gives the request its op and receipt, then writes it (or queues it while disconnected).
    fn submit(&mut self, mut frame: Frame, kind: Kind, reply: Option<Reply>) {
        let op = self.next_op;
        self.next_op += 1;
        frame.headers.push(("receipt".to_string(), op.to_string()));
        let now = Instant::now();
        let pending = Pending {
            frame,
            kind,
            reply,
            waiting_since: (!self.connected).then_some(now),
            ever_written: false,
        };
        self.dispatch(op, pending);
    }

    fn dispatch(&mut self, op: u64, mut pending: Pending) {
        match self.admit(&pending.kind) {
            Admission::Done(result) => pending.respond(result),
            Admission::Go => {
                if self.connected {
                    encode(&pending.frame, self.version, &mut self.out);
                    pending.ever_written = true;
                }
                self.outbox.insert(op, pending);
            }
        }
    }

    /// The transaction rules, applied whenever a request is about to be written or queued: a
    /// transaction lives on the connection its BEGIN was written to.
    fn admit(&mut self, kind: &Kind) -> Admission {
        match kind {
            Kind::Begin { transaction } => {
                let state = if self.connected {
                    TransactionState::Open {
                        generation: self.generation,
                    }
                } else {
                    TransactionState::Waiting
                };
                self.transactions.insert(transaction.clone(), state);
                Admission::Go
            }
            Kind::Send {
                transaction: Some(transaction),
            }
            | Kind::Ack {
                transaction: Some(transaction),
            } => {
                if self.transaction_alive(transaction) {
                    Admission::Go
                } else {
                    Admission::Done(Err(ClientError::TransactionRolledBack(transaction.clone())))
                }
            }
            Kind::Commit { transaction } => {
                if self.transaction_alive(transaction) {
                    Admission::Go
                } else {
                    self.transactions.remove(transaction);
                    Admission::Done(Err(ClientError::TransactionRolledBack(transaction.clone())))
                }
            }
            Kind::Abort { transaction } => {
                if self.transaction_alive(transaction) {
                    Admission::Go
                } else {
                    // Its connection is gone, and the transaction with it.
                    self.transactions.remove(transaction);
                    Admission::Done(Ok(()))
                }
            }
            Kind::Subscribe { id } => {
                if self.subscriptions.contains_key(id) {
                    Admission::Go
                } else {
                    // Unsubscribed before the broker ever confirmed it.
                    Admission::Done(Ok(()))
                }
            }
            Kind::Send { transaction: None }
            | Kind::Ack { transaction: None }
            | Kind::Unsubscribe
            | Kind::Disconnect => Admission::Go,
        }
    }

    fn transaction_alive(&self, transaction: &str) -> bool {
        match self.transactions.get(transaction) {
            Some(TransactionState::Waiting) => true,
            Some(TransactionState::Open { generation }) => {
                self.connected && *generation == self.generation
            }
            None => false,
        }
    }

    /// Drops the state a refused or expired request would have created.
    fn forget(&mut self, kind: &Kind) {
        match kind {
            Kind::Subscribe { id } => {
                self.subscriptions.remove(id);
            }
            Kind::Begin { transaction }
            | Kind::Commit { transaction }
            | Kind::Abort { transaction } => {
                self.transactions.remove(transaction);
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Option<Ended> {
        match frame.command {
            Command::Message => {
                self.productive = true;
                self.deliver(frame);
                None
            }
            Command::Receipt => self.on_receipt(&frame),
            Command::Error => self.on_error(&frame),
            other => {
                tracing::debug!(command = %other, "ignoring an unexpected frame from the broker");
                None
            }
        }
    }

    fn deliver(&mut self, frame: Frame) {
        let Some(entry) = frame
            .get("subscription")
            .and_then(|id| self.subscriptions.get(id))
        else {
            tracing::debug!(
                subscription = frame.get("subscription").unwrap_or(""),
                "dropping a MESSAGE for no current subscription"
            );
            return;
        };
        let acker = (entry.ack != AckMode::Auto).then(|| Acker {
            requests: self.weak_requests.clone(),
            shared: self.shared.clone(),
            generation: self.generation,
            version: self.version,
        });
        // A dropped receiver means the Subscription is being dropped; it unsubscribes.
        let message = Message::new(frame, acker);
        let cost = super::unread_cost(&message);
        self.shared.unread.fetch_add(cost, Ordering::AcqRel);
        if entry.deliver.send(message).is_err() {
            self.shared.taken(cost);
        }
    }

    fn on_receipt(&mut self, frame: &Frame) -> Option<Ended> {
        let op = frame.get("receipt-id")?.parse::<u64>().ok()?;
        let mut pending = self.outbox.remove(&op)?;
        let ended = match &pending.kind {
            Kind::Subscribe { id } => {
                if let Some(entry) = self.subscriptions.get_mut(id) {
                    entry.confirmed = true;
                }
                None
            }
            Kind::Commit { transaction } | Kind::Abort { transaction } => {
                self.productive = true;
                self.transactions.remove(transaction);
                None
            }
            Kind::Send { .. } => {
                self.productive = true;
                None
            }
            Kind::Disconnect => {
                // Answered when the task has ended, so that a closed client looks closed.
                self.close_reply = pending.reply.take();
                Some(Ended::Closed)
            }
            _ => None,
        };
        pending.respond(Ok(()));
        ended
    }

    /// An ERROR naming one of our requests by `receipt-id` refuses that request, unless it says
    /// the broker cannot serve at all; any other ERROR ends the connection (failover).
    fn on_error(&mut self, frame: &Frame) -> Option<Ended> {
        let message = error_text(frame);
        let refused = frame
            .get("receipt-id")
            .and_then(|id| id.parse::<u64>().ok())
            .filter(|_| !broker_unavailable(&message))
            .and_then(|op| self.outbox.remove(&op));
        let Some(pending) = refused else {
            self.refuse_too_large(&message);
            return Some(Ended::Refused(format!("the broker sent ERROR: {message}")));
        };
        tracing::warn!(%message, command = %pending.frame.command, "the broker refused a request");
        self.forget(&pending.kind);
        pending.respond(Err(ClientError::Rejected { message }));
        // ActiveMQ and ferromq keep the connection after refusing a well-formed frame; a
        // broker that closes it after its ERROR is handled when that happens.
        None
    }

    /// A broker's `frame too large: ... exceeds the limit of N bytes` (it then closes the
    /// connection, naming no request): every waiting request whose frame is over N is refused
    /// with it rather than re-sent on the next connection, where it would be refused again, for
    /// ever.
    fn refuse_too_large(&mut self, message: &str) {
        let Some(limit) = frame_limit(message) else {
            return;
        };
        let too_large: Vec<u64> = self
            .outbox
            .iter()
            .filter(|(_, pending)| {
                let mut encoded = BytesMut::new();
                encode(&pending.frame, self.version, &mut encoded);
                encoded.len() > limit
            })
            .map(|(&op, _)| op)
            .collect();
        for op in too_large {
            if let Some(pending) = self.outbox.remove(&op) {
                tracing::warn!(%message, command = %pending.frame.command, "the broker refused a request");
                self.forget(&pending.kind);
                pending.respond(Err(ClientError::Rejected {
                    message: message.to_string(),
                }));
            }
        }
    }

    /// Decides the fate of every unconfirmed request when the connection is lost: sends and
    /// subscriptions wait for the next connection; the rest is answered now.
    fn on_lost(&mut self, address: &BrokerAddress, reason: &str) {
        self.connected = false;
        self.shared.live_generation.store(0, Ordering::Release);
        self.out.clear();
        self.disconnected_since = Instant::now();
        self.shared.set_broker(None);
        self.last_errors = vec![(address.clone(), format!("connection lost: {reason}"))];
        tracing::warn!(
            broker = %address,
            %reason,
            unconfirmed = self.outbox.len(),
            "connection lost; failing over"
        );
        for (op, pending) in std::mem::take(&mut self.outbox) {
            let outcome = match &pending.kind {
                Kind::Send { transaction: None } | Kind::Subscribe { .. } => None,
                Kind::Send {
                    transaction: Some(transaction),
                } => Some(Err(ClientError::TransactionRolledBack(transaction.clone()))),
                Kind::Ack { .. } => Some(Err(ClientError::StaleDelivery)),
                Kind::Begin { transaction } => {
                    self.transactions.remove(transaction);
                    Some(Err(ClientError::Interrupted))
                }
                Kind::Commit { transaction } => {
                    self.transactions.remove(transaction);
                    Some(Err(ClientError::CommitOutcomeUnknown(transaction.clone())))
                }
                Kind::Abort { transaction } => {
                    self.transactions.remove(transaction);
                    Some(Ok(()))
                }
                Kind::Unsubscribe => Some(Ok(())),
                Kind::Disconnect => None, // answered when the task ends
            };
            match outcome {
                None => {
                    let mut pending = pending;
                    pending.waiting_since.get_or_insert(self.disconnected_since);
                    self.outbox.insert(op, pending);
                }
                Some(result) => pending.respond(result),
            }
        }
    }

    /// Ends the task: answers every waiting request with `error`, ends the subscriptions.
    fn finish(mut self, error: ClientError) {
        if error != ClientError::Closed {
            tracing::error!(%error, "STOMP client stopped");
        }
        self.shared.set_terminal(error.clone());
        for (_, pending) in std::mem::take(&mut self.outbox) {
            match pending.kind {
                Kind::Disconnect => pending.respond(Ok(())),
                _ => pending.respond(Err(error.clone())),
            }
        }
        self.subscriptions.clear();
        if let Some(reply) = self.close_reply.take() {
            let _ = reply.send(Ok(()));
        }
    }
}

/// The limit a broker's `frame too large: ... exceeds the limit of N bytes` names (ferromq's
/// words), if `message` is that.
fn frame_limit(message: &str) -> Option<usize> {
    let rest = message.split("exceeds the limit of ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
