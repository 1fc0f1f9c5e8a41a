//! Protocol sessions: opening and closing them, their client connection (for noLocal) and the
//! ids of the messages they send.
//!
//! It must never know which protocol a session speaks.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::{connection_origin, Core, SessionState};
use crate::broker::{BrokerError, Delivery};

impl Core {
    /// Opens a session for a client connecting from `peer`. A non-empty `client_id` already
    /// held by another open session is refused ([`BrokerError::ClientIdInUse`]), as ActiveMQ
    /// refuses a second connection with a client id (its default, without link stealing).
    pub fn open_session(
        &mut self,
        client_id: Option<String>,
        peer: &str,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> Result<u64, BrokerError> {
        let id = self.next_session;
        if let Some(name) = client_id.as_ref().filter(|c| !c.is_empty()) {
            if let Some(holder) = self.client_ids.get(name).and_then(|s| self.sessions.get(s)) {
                return Err(BrokerError::ClientIdInUse {
                    client_id: name.clone(),
                    peer: holder.peer.clone(),
                });
            }
            self.client_ids.insert(name.clone(), id);
        }
        self.next_session += 1;
        self.sessions.insert(
            id,
            SessionState {
                client_id,
                peer: peer.to_string(),
                deliveries,
                subscriptions: HashMap::new(),
                transactions: HashMap::new(),
                origin: id,
            },
        );
        Ok(id)
    }

    /// Woken whenever a session closes.
    pub fn session_closed(&self) -> Arc<Notify> {
        self.session_closed.clone()
    }

    /// Session `session` serves client connection `connection`: its messages are that
    /// connection's for noLocal (see [`connection_origin`]). Called before it subscribes.
    pub fn set_connection(&mut self, session: u64, connection: &str) {
        if let Some(state) = self.sessions.get_mut(&session) {
            state.origin = connection_origin(connection);
        }
    }

    pub fn close_session(&mut self, session: u64) {
        let Some(state) = self.sessions.get(&session) else {
            return;
        };
        let transactions: Vec<String> = state.transactions.keys().cloned().collect();
        let subscriptions: Vec<String> = state.subscriptions.keys().cloned().collect();
        // Subscriptions first: an aborted transaction's messages must not go back to a
        // consumer of this session, which would count a second redelivery when it ends.
        for sub in subscriptions {
            let _ = self.unsubscribe(session, &sub);
        }
        for tx in transactions {
            let _ = self.abort(session, &tx);
        }
        if let Some(name) = self.sessions.remove(&session).and_then(|s| s.client_id) {
            if self.client_ids.get(&name) == Some(&session) {
                self.client_ids.remove(&name);
            }
        }
        self.session_closed.notify_waiters();
    }

    pub(super) fn session(&mut self, session: u64) -> Result<&mut SessionState, BrokerError> {
        self.sessions
            .get_mut(&session)
            .ok_or(BrokerError::ShuttingDown)
    }

    /// An id of the broker's own for a message of `session`, never given before (the boot
    /// time tells this run's from an earlier one's).
    pub(super) fn new_message_id(&mut self, session: u64) -> String {
        let n = self.next_message;
        self.next_message += 1;
        format!("ID:{}-{}:{}:{}", self.options.name, self.boot, session, n)
    }

    /// Whether `session` has a subscription (see `Session::hold_back`).
    pub fn has_subscriptions(&self, session: u64) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| !s.subscriptions.is_empty())
    }
}
