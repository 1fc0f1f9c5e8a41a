//! Building the state from what the store recovered at start: queues, durable subscriptions,
//! the producer audit and scheduled messages, shown once the epoch-start record is confirmed.
//!
//! It must never deliver a recovered message before the epoch-start record written after it is
//! confirmed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::{connection_origin, now_ms, Core, Publish, Stats, HOLDING};
use crate::broker::memory::Memory;
use crate::broker::queue::{Body, Entry};
use crate::broker::store_limit::{self, StoreUsage};
use crate::broker::{BrokerError, BrokerOptions, Confirmation};
use crate::store::{entry, EpochStart, Position, ProducerAudit, Recovered, Store};

impl Core {
    pub fn new(
        store: Store,
        recovered: Recovered,
        epoch: u64,
        options: BrokerOptions,
    ) -> Result<Core, BrokerError> {
        let boot = format!("{:x}", now_ms());
        let memory = Memory::new(options.memory_limit);
        let store_limit = store_limit::capped(
            options.store_limit,
            store.disk_bytes(),
            store.available_space(),
            store.log_size(),
            store.directory(),
        )?;
        let store_usage = StoreUsage::new(store_limit, options.send_fail_if_no_space);
        let mut core = Core {
            confirmed: Position(0),
            store: Some(store),
            bodies: std::sync::Mutex::new(None),
            closed_end: Position(0),
            epoch,
            options,
            failed: None,
            flush_due: false,
            last_sender: 0,
            senders_mixed_at: Instant::now(),
            pending: VecDeque::new(),
            queues: HashMap::new(),
            topics: HashMap::new(),
            wildcards: HashMap::new(),
            durables: HashMap::new(),
            virtual_queues: BTreeSet::new(),
            sweep_after: None,
            transaction_bytes: 0,
            sessions: HashMap::new(),
            client_ids: HashMap::new(),
            session_closed: Arc::default(),
            consumers: HashMap::new(),
            tags: HashMap::new(),
            producers: ProducerAudit::default(),
            producer_stamp: 0,
            next_session: 1,
            next_consumer: 1,
            next_tag: first_tag(epoch),
            next_seq: 1,
            next_message: 1,
            boot,
            stats: Stats::default(),
            memory,
            paging: false,
            transient_full: false,
            away_durables_missing: false,
            store_usage,
            measure_at: Position(0),
            expiry_from: String::new(),
            subscriptions_made: 0,
            started: Confirmation::done(),
            scheduled: BTreeMap::new(),
            next_scheduled: 0,
            scheduler_wake: Arc::new(tokio::sync::Notify::new()),
        };
        // Least recently stored first, so the audit forgets in the store's order.
        for (producer, sequence) in &recovered.producers {
            core.record_producer(producer, *sequence);
        }
        for subscription in recovered.subscriptions {
            core.register_durable(subscription);
        }
        let mut inherited = Vec::new();
        for (queue, messages) in recovered.queues {
            let holding = queue == HOLDING;
            if !holding {
                // The queue exists (and a consumer may subscribe) before its messages show.
                core.queues.entry(queue.clone()).or_default();
            }
            let mut entries = Vec::with_capacity(if holding { 0 } else { messages.len() });
            for (key, message) in messages {
                let redeliveries = message.redelivery_count;
                let origin = stored_origin(&message.producer_id);
                let mut entry = Entry::new(Some(key), Arc::new(message), redeliveries).from(origin);
                if entry.message.body.is_empty()
                    && recovered
                        .bodies_on_disk_from
                        .is_some_and(|from| key >= from)
                {
                    entry.body = Body::OnDisk;
                }
                if holding {
                    inherited.push(Publish::Scheduled(entry));
                } else {
                    entries.push(entry);
                }
            }
            if !entries.is_empty() {
                inherited.push(Publish::Recovered(queue, entries));
            }
        }
        // The epoch-start record comes first: nothing written under this epoch is confirmed
        // before it is held. Nor is anything recovered delivered before: a new master may hold
        // records that the previous one never had confirmed, and they are safe (on a quorum,
        // so that every later master holds them) only once the epoch-start record after them
        // is; delivered earlier, a message could be consumed and then lost with this node.
        core.append(vec![crate::store::Entry {
            kind: Some(entry::Kind::EpochStart(EpochStart {
                epoch,
                node: core.options.name.clone(),
            })),
        }])?;
        core.started = core.wait_for(inherited);
        Ok(core)
    }
}

/// The origin of a stored message, from its producer id (OpenWire's
/// `<connection id>:<session>:<producer>`); 0 (nobody's) for any other.
fn stored_origin(producer_id: &str) -> u64 {
    let mut parts = producer_id.rsplitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(connection)) if connection.starts_with("ID:") => {
            connection_origin(connection)
        }
        _ => 0,
    }
}

/// The first delivery tag of a core of `epoch`: `epoch << 40`, plus one. Each core numbers its
/// deliveries upwards from there, so a tag of a later epoch (a new master, or a standalone node
/// restarted) is above every tag an earlier core gave. A JMS client that failed over still
/// reports the tag of the last message it delivered, from the old master, when it closes its
/// consumer (`RemoveInfo.lastDeliveredSequenceId`): it is then below every tag of this core,
/// which tells it apart (see `Core::remove_consumer`; with small tags starting at 1 in each
/// core it was compared with this core's as if they were its own, and the new master's whole
/// prefetch came back "redelivered"). 2^40 deliveries per epoch; epochs past 2^23 share the
/// last range.
pub(super) fn first_tag(epoch: u64) -> u64 {
    (epoch.min((1 << 23) - 1) << 40) + 1
}
