//! The registry of the temporary destinations live on this node, shared by every protocol's
//! connections: a STOMP client's `/temp-queue/` and a JMS client's `TemporaryQueue` alike.
//!
//! It owns only names and owners (the core keeps the destinations themselves); it must never
//! decide who may use a destination beyond answering whose it is.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::openwire::Destination as OwDestination;

/// The temporary destinations live on this node. A JMS client learns them from advisory
/// messages (`ActiveMQ.Advisory.TempQueue`, `ActiveMQ.Advisory.TempTopic`) and refuses to send
/// to a temporary destination it has not heard of, so every connection with an advisory
/// consumer is told of each one created or deleted, whichever protocol's connection made it.
#[derive(Debug)]
pub struct TempDestinations {
    live: Mutex<HashMap<OwDestination, String>>,
    events: broadcast::Sender<TempEvent>,
}

#[derive(Debug, Clone)]
pub(crate) struct TempEvent {
    pub destination: OwDestination,
    pub connection_id: String,
    /// Created (else deleted).
    pub added: bool,
}

impl Default for TempDestinations {
    fn default() -> Self {
        TempDestinations {
            live: Mutex::new(HashMap::new()),
            events: broadcast::channel(4096).0,
        }
    }
}

impl TempDestinations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwDestination, String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(&self, destination: OwDestination, connection_id: &str) {
        self.lock()
            .insert(destination.clone(), connection_id.to_string());
        let _ = self.events.send(TempEvent {
            destination,
            connection_id: connection_id.to_string(),
            added: true,
        });
    }

    pub(crate) fn remove(&self, destination: &OwDestination) {
        if let Some(connection_id) = self.lock().remove(destination) {
            let _ = self.events.send(TempEvent {
                destination: destination.clone(),
                connection_id,
                added: false,
            });
        }
    }

    /// Creations and deletions from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TempEvent> {
        self.events.subscribe()
    }

    /// The connection that made `destination`, while it lives.
    pub(crate) fn owner(&self, destination: &OwDestination) -> Option<String> {
        self.lock().get(destination).cloned()
    }

    #[cfg(test)]
    pub(crate) fn snapshot_is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every live one, as creation events (for a connection that starts listening).
    pub(crate) fn snapshot(&self) -> Vec<TempEvent> {
        self.lock()
            .iter()
            .map(|(d, c)| TempEvent {
                destination: d.clone(),
                connection_id: c.clone(),
                added: true,
            })
            .collect()
    }
}
