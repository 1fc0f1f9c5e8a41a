//! The client's error type.

use std::time::Duration;

use super::url::UrlError;

/// Why a client operation failed. `Clone`, so one connection failure can answer every request
/// that was waiting on it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(
        "invalid destination {0:?}: use queue://NAME, topic://NAME, /queue/NAME, /topic/NAME or a bare NAME (a queue)"
    )]
    InvalidDestination(String),
    /// The broker answered CONNECT with an ERROR that is not about its own availability (bad
    /// credentials, say): the first connect gives up at once rather than retry.
    #[error("{broker} refused the connection: {message}")]
    ConnectRefused { broker: String, message: String },
    /// The failover attempt limit was reached.
    #[error(
        "gave up after {passes} connection attempt(s) over {brokers}; last errors: {last_errors}"
    )]
    GaveUp {
        passes: u32,
        brokers: String,
        last_errors: String,
    },
    /// A request waited longer than the failover `timeout` for a connection.
    #[error(
        "broker unreachable: no connection for {} ms (failover timeout); last errors: {last_errors}{}",
        .waited.as_millis(),
        in_doubt_note(.in_doubt)
    )]
    Unreachable {
        waited: Duration,
        last_errors: String,
        /// The request had been written to a connection that was then lost: the broker may have
        /// applied it.
        in_doubt: bool,
    },
    /// The broker answered this request with an ERROR (its `message` header).
    #[error("broker refused the request: {message}")]
    Rejected { message: String },
    #[error("transaction {0} was rolled back: its connection was lost")]
    TransactionRolledBack(String),
    #[error("the connection was lost after COMMIT of transaction {0} was sent: it may or may not have been applied")]
    CommitOutcomeUnknown(String),
    #[error("the connection was lost before the broker confirmed the request")]
    Interrupted,
    #[error("the message arrived on a connection that has since been lost: the broker will redeliver it")]
    StaleDelivery,
    #[error("a durable subscription needs a client id (ClientOptions::client_id)")]
    MissingClientId,
    #[error("the client is closed")]
    Closed,
}

fn in_doubt_note(in_doubt: &bool) -> &'static str {
    if *in_doubt {
        "; the request may have reached a broker before its connection was lost"
    } else {
        ""
    }
}
