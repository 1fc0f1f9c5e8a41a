//! STOMP transactions: BEGIN, then SENDs and ACKs carrying its `transaction` header, then
//! COMMIT or ABORT.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::connection::Request;
use super::{answer, Client, ClientError, Message, SendHandle, SendOptions};
use crate::protocol::stomp::frame::Command;

/// An open transaction, from [`Client::begin`]. Dropping it without [`Transaction::commit`]
/// aborts it. It does not survive a lost connection: its sends, acks and commit then fail with
/// [`ClientError::TransactionRolledBack`].
#[derive(Debug)]
pub struct Transaction {
    client: Client,
    id: String,
    open: bool,
}

impl Transaction {
    pub(crate) fn new(client: Client, id: String) -> Transaction {
        Transaction {
            client,
            id,
            open: true,
        }
    }

    /// The transaction id (the `transaction` header).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends within the transaction and waits for the RECEIPT (the message is delivered only
    /// at commit).
    pub async fn send(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        options: SendOptions,
    ) -> Result<(), ClientError> {
        self.send_nowait(destination, body, options).await
    }

    /// Like [`Client::send_nowait`], within the transaction.
    pub fn send_nowait(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        options: SendOptions,
    ) -> SendHandle {
        self.client
            .submit_send(destination, body.into(), options, Some(&self.id))
    }

    /// Acknowledges `message` within the transaction.
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        message.acknowledge(Command::Ack, Some(&self.id)).await
    }

    /// Refuses `message` within the transaction.
    pub async fn nack(&self, message: &Message) -> Result<(), ClientError> {
        message.acknowledge(Command::Nack, Some(&self.id)).await
    }

    /// Commits and waits for the RECEIPT. If the connection is lost before the RECEIPT, the
    /// outcome is unknown: [`ClientError::CommitOutcomeUnknown`].
    pub async fn commit(mut self) -> Result<(), ClientError> {
        self.open = false;
        let (reply, answered) = oneshot::channel();
        self.client.request(Request::Commit {
            transaction: self.id.clone(),
            reply,
        })?;
        answer(answered, self.client.shared()).await
    }

    /// Rolls back and waits for the RECEIPT.
    pub async fn abort(mut self) -> Result<(), ClientError> {
        self.open = false;
        let (reply, answered) = oneshot::channel();
        self.client.request(Request::Abort {
            transaction: self.id.clone(),
            reply: Some(reply),
        })?;
        answer(answered, self.client.shared()).await
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.open {
            let _ = self.client.request(Request::Abort {
                transaction: self.id.clone(),
                reply: None,
            });
        }
    }
}
