//! The consumer side: subscriptions, the messages they yield, acknowledgements.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::connection::Request;
use super::{answer, ClientError, Shared};
use crate::protocol::stomp::frame::{Command, Frame, Version};

/// How the broker learns that a message was consumed (the SUBSCRIBE `ack` header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Consumed once written to the client.
    #[default]
    Auto,
    /// [`Message::ack`] acknowledges that message and every earlier one on the subscription.
    Client,
    /// [`Message::ack`] acknowledges that message only.
    ClientIndividual,
}

impl AckMode {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

/// Headers the client sets itself on SUBSCRIBE; the same names in
/// [`SubscribeOptions::headers`] are dropped (a `receipt` of the caller's would be answered in
/// place of the client's own, which then never resolves).
const RESERVED_SUBSCRIBE_HEADERS: &[&str] =
    &["id", "destination", "ack", "receipt", "content-length"];

/// Options of one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    pub ack: AckMode,
    /// `activemq.prefetchSize`: how many unacknowledged messages the broker may push.
    pub prefetch: Option<u32>,
    /// `activemq.subscriptionName`: makes a topic subscription durable. Needs
    /// [`ClientOptions::client_id`](super::ClientOptions::client_id).
    pub durable_name: Option<String>,
    /// A JMS message selector (the `selector` header).
    pub selector: Option<String>,
    /// Extra SUBSCRIBE headers (not `id`, `destination`, `ack`, `receipt` or
    /// `content-length`, which the client sets).
    pub headers: Vec<(String, String)>,
}

impl SubscribeOptions {
    /// The SUBSCRIBE frame, without a receipt.
    pub(crate) fn frame(&self, id: &str, destination: &str) -> Frame {
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", destination)
            .header("ack", self.ack.as_str());
        if let Some(prefetch) = self.prefetch {
            frame = frame.header("activemq.prefetchSize", prefetch.to_string());
        }
        if let Some(name) = &self.durable_name {
            frame = frame.header("activemq.subscriptionName", name.as_str());
        }
        if let Some(selector) = &self.selector {
            frame = frame.header("selector", selector.as_str());
        }
        frame.headers.extend(
            self.headers
                .iter()
                .filter(|(name, _)| !RESERVED_SUBSCRIBE_HEADERS.contains(&name.as_str()))
                .cloned(),
        );
        frame
    }
}

/// A stream of messages from one destination. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: String,
    messages: mpsc::UnboundedReceiver<Message>,
    requests: mpsc::WeakUnboundedSender<Request>,
    shared: Arc<Shared>,
    subscribed: bool,
}

impl Subscription {
    pub(crate) fn new(
        id: String,
        messages: mpsc::UnboundedReceiver<Message>,
        requests: mpsc::WeakUnboundedSender<Request>,
        shared: Arc<Shared>,
    ) -> Subscription {
        Subscription {
            id,
            messages,
            requests,
            shared,
            subscribed: true,
        }
    }

    /// The subscription id (the SUBSCRIBE `id` header), kept across reconnects.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next message; `None` once the client is closed or has given up (see
    /// [`Subscription::close_reason`]). Messages to acknowledge that a lost connection
    /// delivered are skipped, as ActiveMQ's client clears its prefetched messages at a
    /// failover: the broker delivers them again on the new connection.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let message = self.messages.recv().await?;
            self.shared.taken(super::unread_cost(&message));
            let live = self.shared.live_generation.load(Ordering::Acquire);
            match &message.acker {
                Some(acker) if acker.generation != live => continue,
                _ => return Some(message),
            }
        }
    }

    /// Why [`Subscription::next`] returned `None`: [`ClientError::Closed`] after a close, the
    /// failover error if the client gave up.
    pub fn close_reason(&self) -> ClientError {
        self.shared.terminal_error()
    }

    /// Sends UNSUBSCRIBE and waits for the RECEIPT. Messages already received stay readable.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.subscribed = false;
        let Some(requests) = self.requests.upgrade() else {
            return Ok(());
        };
        let (reply, answered) = oneshot::channel();
        let request = Request::Unsubscribe {
            id: self.id.clone(),
            reply: Some(reply),
        };
        if requests.send(request).is_err() {
            return Ok(());
        }
        answer(answered, &self.shared).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // What was received and never taken no longer holds the connection back.
        self.messages.close();
        while let Ok(message) = self.messages.try_recv() {
            self.shared.taken(super::unread_cost(&message));
        }
        if let (true, Some(requests)) = (self.subscribed, self.requests.upgrade()) {
            let _ = requests.send(Request::Unsubscribe {
                id: self.id.clone(),
                reply: None,
            });
        }
    }
}

/// A message received on a [`Subscription`].
#[derive(Debug)]
pub struct Message {
    headers: Vec<(String, String)>,
    body: Bytes,
    /// `None` on an auto-ack subscription.
    acker: Option<Acker>,
}

/// What acknowledging a message needs: the way back to the connection task, and which
/// connection (by generation) and protocol version delivered it.
#[derive(Debug)]
pub(crate) struct Acker {
    pub(crate) requests: mpsc::WeakUnboundedSender<Request>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) generation: u64,
    pub(crate) version: Version,
}

impl Message {
    pub(crate) fn new(frame: Frame, acker: Option<Acker>) -> Message {
        Message {
            headers: frame.headers,
            body: frame.body,
            acker,
        }
    }

    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header, in wire order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The STOMP destination, e.g. `/queue/orders`.
    pub fn destination(&self) -> &str {
        self.header("destination").unwrap_or("")
    }

    /// The message-id the producer sent it with.
    pub fn message_id(&self) -> &str {
        self.header("message-id").unwrap_or("")
    }

    /// The id of the subscription it arrived on.
    pub fn subscription(&self) -> &str {
        self.header("subscription").unwrap_or("")
    }

    /// Whether the broker says it delivered this message before (`redelivered:true`).
    pub fn redelivered(&self) -> bool {
        self.header("redelivered") == Some("true")
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// Whether it came on a subscription whose messages are acknowledged (not auto-ack).
    pub(crate) fn needs_ack(&self) -> bool {
        self.acker.is_some()
    }

    /// Acknowledges the message (ACK, waits for the RECEIPT). Does nothing on an auto-ack
    /// subscription. Fails with [`ClientError::StaleDelivery`] if the connection that delivered
    /// it was lost: the broker will deliver it again.
    pub async fn ack(&self) -> Result<(), ClientError> {
        self.acknowledge(Command::Ack, None).await
    }

    /// Sends the ACK now and returns its answer to wait for later, so that many
    /// acknowledgements can be in flight at once (one round trip each, waited for one after
    /// another, would bound a consumer to one message per round trip). The answers are those
    /// of [`Message::ack`].
    pub fn send_ack(&self) -> Result<PendingAck, ClientError> {
        self.request(Command::Ack, None)
    }

    /// Tells the broker the message was not consumed (NACK, STOMP 1.1 and later).
    pub async fn nack(&self) -> Result<(), ClientError> {
        self.acknowledge(Command::Nack, None).await
    }

    pub(crate) async fn acknowledge(
        &self,
        command: Command,
        transaction: Option<&str>,
    ) -> Result<(), ClientError> {
        self.request(command, transaction)?.answer().await
    }

    /// Hands the ACK or NACK to the connection task; the answer comes through the result.
    fn request(
        &self,
        command: Command,
        transaction: Option<&str>,
    ) -> Result<PendingAck, ClientError> {
        let Some(acker) = &self.acker else {
            return Ok(PendingAck { reply: None });
        };
        let mut frame = Frame::new(command);
        match acker.version {
            Version::V1_2 => {
                let id = self.header("ack").unwrap_or(self.message_id());
                frame = frame.header("id", id);
            }
            Version::V1_1 => {
                frame = frame
                    .header("subscription", self.subscription())
                    .header("message-id", self.message_id());
            }
            Version::V1_0 => frame = frame.header("message-id", self.message_id()),
        }
        if let Some(transaction) = transaction {
            frame = frame.header("transaction", transaction);
        }
        let Some(requests) = acker.requests.upgrade() else {
            return Err(acker.shared.terminal_error());
        };
        let (reply, answered) = oneshot::channel();
        let request = Request::Ack {
            frame,
            generation: acker.generation,
            transaction: transaction.map(str::to_string),
            reply,
        };
        requests
            .send(request)
            .map_err(|_| acker.shared.terminal_error())?;
        Ok(PendingAck {
            reply: Some((answered, acker.shared.clone())),
        })
    }
}

/// An acknowledgement sent and not answered yet (see [`Message::send_ack`]).
#[derive(Debug)]
pub struct PendingAck {
    /// `None`: nothing to wait for (an auto-ack subscription).
    reply: Option<(Reply, Arc<Shared>)>,
}

/// Where the connection task answers a request.
type Reply = oneshot::Receiver<Result<(), ClientError>>;

impl PendingAck {
    /// Waits for the answer (once given, it is not given again).
    pub async fn answer(&mut self) -> Result<(), ClientError> {
        match &mut self.reply {
            None => Ok(()),
            Some((reply, shared)) => reply.await.unwrap_or_else(|_| Err(shared.terminal_error())),
        }
    }

    /// The answer if it has come, without waiting (once given, it is not given again).
    pub fn try_answer(&mut self) -> Option<Result<(), ClientError>> {
        let Some((reply, shared)) = &mut self.reply else {
            return Some(Ok(()));
        };
        match reply.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(shared.terminal_error())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller's `receipt` header would be answered in place of the client's own (whose
    /// request then never resolves), and its `id` would name another subscription.
    #[test]
    fn caller_headers_cannot_replace_what_the_client_sets() {
        let options = SubscribeOptions {
            headers: vec![
                ("receipt".into(), "1".into()),
                ("id".into(), "other".into()),
                ("activemq.priority".into(), "5".into()),
            ],
            ..SubscribeOptions::default()
        };
        let frame = options.frame("sub-1", "/queue/a");
        assert_eq!(frame.get("id"), Some("sub-1"));
        assert_eq!(frame.headers.iter().filter(|(n, _)| n == "id").count(), 1);
        assert!(frame.headers.iter().all(|(n, _)| n != "receipt"));
        assert_eq!(frame.get("activemq.priority"), Some("5"));
    }
}
