//! A queue's messages and consumers, and what one delivery carries. Pure data: the rules
//! for moving messages between these live in `core.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::memory::Resident;
use super::selector::Selector;
use super::{Delivery, Destination};
use crate::store::{Message, MessageKey};

/// One message on a queue (or held for a topic subscriber).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Orders the queue; kept across redeliveries so a returned message goes back to its place.
    pub seq: u64,
    /// Where the message is stored; `None` for a non-persistent message.
    pub key: Option<MessageKey>,
    /// Without its body when the body is [`Body::OnDisk`].
    pub message: Arc<Message>,
    pub redeliveries: u32,
    pub body: Body,
}

/// Where a queue entry's body is, as the broker's `memory_limit` sees it.
#[derive(Debug, Clone)]
pub(super) enum Body {
    /// Not counted yet: the entry is not on a queue (`Core::admit` decides).
    Uncounted,
    /// In memory, counted against the limit while the entry lives (the share is held for its
    /// `Drop`).
    InMemory { _share: Resident },
    /// Left in the journal (past the limit); read back from the message's key before delivery.
    OnDisk,
}

impl Entry {
    /// A new entry, its body not yet counted (see `Core::admit`).
    pub fn new(key: Option<MessageKey>, message: Arc<Message>, redeliveries: u32) -> Entry {
        Entry {
            seq: 0,
            key,
            message,
            redeliveries,
            body: Body::Uncounted,
        }
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        // Zero or negative: never expires (ActiveMQ's `expireTime > 0`).
        self.message.expiration > 0 && self.message.expiration <= now_ms
    }
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Messages ready for delivery, in order.
    pub ready: BTreeMap<u64, Entry>,
    /// Consumer ids, served round-robin.
    pub consumers: Vec<u64>,
    pub next_consumer: usize,
    /// Ready entries that carry an expiration, so the sweep can skip queues without any.
    pub expiring: usize,
}

impl Queue {
    pub fn push(&mut self, entry: Entry) {
        if entry.message.expiration > 0 {
            self.expiring += 1;
        }
        self.ready.insert(entry.seq, entry);
    }
}

/// Where a consumer's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A queue, or a durable subscription's queue.
    Queue(String),
    /// A non-durable topic subscription: messages are not stored for it.
    Topic(String),
}

/// A delivered, unacknowledged message.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    /// The queue it came from; `None` for a non-durable topic subscription.
    pub queue: Option<String>,
    pub entry: Entry,
}

#[derive(Debug)]
pub(super) struct Consumer {
    pub session: u64,
    pub subscription: String,
    pub destination: Destination,
    pub source: Source,
    /// Unacknowledged deliveries allowed beyond those the client reported consumed; 0 means
    /// the consumer only receives what it pulls.
    pub prefetch: u32,
    /// Outstanding pull requests: each lets one delivery past a full window.
    pub pulls: u32,
    /// The client reported every delivery up to this tag consumed (OpenWire's delivered ack):
    /// they stay unacknowledged but no longer fill the window.
    pub delivered_upto: u64,
    /// How many of `in_flight` are at or below `delivered_upto`.
    pub delivered: usize,
    /// Only messages this selector accepts are delivered (JMS selector).
    pub selector: Option<Arc<Selector>>,
    /// Delivered and not acknowledged, by tag (tags grow, so this is delivery order).
    pub in_flight: BTreeMap<u64, InFlight>,
    /// Topic messages beyond the prefetch window, oldest first (non-durable topics only).
    pub pending: std::collections::VecDeque<Entry>,
    pub deliveries: mpsc::UnboundedSender<Delivery>,
    /// Topic messages discarded because this subscriber fell too far behind.
    pub discarded: u64,
}

impl Consumer {
    /// Whether this consumer's selector accepts `message` (delivered `redeliveries` times).
    pub fn accepts(&self, message: &Message, redeliveries: u32) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.matches_with_redeliveries(message, redeliveries))
    }

    /// Deliveries filling the prefetch window.
    pub fn window_used(&self) -> usize {
        self.in_flight.len() - self.delivered
    }

    pub fn has_credit(&self) -> bool {
        self.pulls > 0 || self.window_used() < self.prefetch as usize
    }

    /// Bookkeeping after deliveries left `in_flight` (acknowledged or returned).
    pub fn forget(&mut self, tags: impl IntoIterator<Item = u64>) {
        let upto = self.delivered_upto;
        let gone = tags.into_iter().filter(|t| *t <= upto).count();
        self.delivered = self.delivered.saturating_sub(gone);
    }

    /// Marks every delivery up to `tag` consumed by the client.
    pub fn mark_delivered(&mut self, tag: u64) {
        if tag <= self.delivered_upto {
            return;
        }
        let newly = self.in_flight.range(self.delivered_upto + 1..=tag).count();
        self.delivered += newly;
        self.delivered_upto = tag;
    }
}
