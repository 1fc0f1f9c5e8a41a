//! Delayed delivery: messages held until due (their bodies left in the journal), released in
//! due order and in bounded batches, and the scheduler's management requests (browse, remove).
//!
//! It must never show a held message before it is due, nor leave one in two places (its move
//! out of the holding area is one record).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{
    leave_body_on_disk, now_ms, record_len, remove_entry, Core, Publish, Routed, ADMIN_BATCH_BYTES,
    HOLDING, RELEASE_BATCH,
};
use crate::broker::queue::{Body, Entry};
use crate::broker::{schedule, BrokerError, Destination, NewMessage};
use crate::store::{Header, Message};

/// How many scheduled messages one step of a scheduler management request (see
/// [`Core::manage_step`]) looks at, and how many browse copies it sends, under one hold of the
/// core lock; [`crate::broker::Session`] takes the lock again for the next step.
const MANAGE_SCAN: usize = 4_096;

const MANAGE_COPIES: usize = 256;

impl Core {
    /// Keeps a confirmed message that is not yet due out of dispatch until `due`: a message in
    /// the holding area ([`Publish::Scheduled`], persistent or not), or one an older version
    /// stored at its destination with its due time. Its body waits in the journal (read back
    /// when due), so a backlog of scheduled messages costs memory only for their headers. (Every
    /// held message is stored: non-persistent delayed messages go to the holding area too.)
    pub(super) fn hold(&mut self, due: i64, mut publish: Publish) {
        let spill = |entry: &mut Entry| {
            if entry.key.is_some() && matches!(entry.body, Body::Uncounted) {
                leave_body_on_disk(entry);
            }
        };
        match &mut publish {
            Publish::Queue(_, entry) | Publish::Scheduled(entry) => spill(entry),
            Publish::Recovered(_, entries) => entries.iter_mut().for_each(spill),
            Publish::Topic(..) => {}
        }
        let earliest = self.scheduled.keys().next().is_none_or(|(d, _)| due < *d);
        self.scheduled.insert((due, self.next_scheduled), publish);
        self.next_scheduled += 1;
        if earliest {
            self.scheduler_wake.notify_one();
        }
    }

    /// Publishes the held messages that are due, in due order (each to the tail of its queue),
    /// at most [`RELEASE_BATCH`] at a time so that many messages due at once do not keep the
    /// core locked; returns how long until the next one is (zero: more are due already).
    pub fn release_due(&mut self) -> Option<Duration> {
        let now = now_ms();
        let mut due = Vec::new();
        let mut moves = Vec::new();
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now || due.len() + moves.len() == RELEASE_BATCH {
                break;
            }
            match entry.remove() {
                Publish::Scheduled(held) => moves.push(held),
                other => due.push(other),
            }
        }
        if !due.is_empty() {
            self.publish_now(due);
        }
        if !moves.is_empty() {
            self.move_due(moves);
        }
        let (next, _) = self.scheduled.keys().next()?;
        if *next <= now {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_millis(next.saturating_sub(now) as u64))
    }

    /// Routes due messages from the holding area to their destinations as sends made now (the
    /// durable subscriptions and subscribers of this moment). Each message's add there and its
    /// removal from [`HOLDING`] are in one record (with other moves, up to
    /// [`MOVE_RECORD_LEN`](super::MOVE_RECORD_LEN)), so that a crash leaves it in one place or
    /// the other. One that fails (its body cannot be
    /// read back, the store failed) stays in the holding area of the store, for a restart or a
    /// later master to move.
    fn move_due(&mut self, moves: Vec<Entry>) {
        let mut chunk = (Routed::default(), 0);
        for held in moves {
            let moved = self.route_due(held).and_then(|(entries, stored, publish)| {
                let len = record_len(&entries);
                if len > crate::store::record::MAX_RECORD_LEN {
                    return self.move_in_two(entries, stored, publish);
                }
                self.gather_move(&mut chunk, len, entries, stored, publish)
            });
            if let Err(error) = moved {
                tracing::error!(%error, "could not move a due scheduled message to its destination");
            }
        }
        if !chunk.0.entries.is_empty() {
            if let Err(error) = self.append_moves(chunk.0) {
                tracing::error!(%error, "could not move due scheduled messages to their destinations");
            }
        }
    }

    /// What moving `held` out of the holding area takes: the entries (its add at its
    /// destination, if stored there, then its removal from [`HOLDING`]), whether it is stored,
    /// and what to publish once they are confirmed.
    fn route_due(
        &mut self,
        held: Entry,
    ) -> Result<(Vec<crate::store::Entry>, bool, Vec<Publish>), BrokerError> {
        let Some(key) = held.key else {
            return Err(BrokerError::InvalidMessage(
                "a held message without a key".into(),
            ));
        };
        let message = self.with_body(&held)?;
        if matches!(held.body, Body::OnDisk) {
            self.stats.bodies_read_back += 1;
        }
        let (mut entries, publish) = match Destination::parse(&message.destination) {
            Ok(destination) => self.route(held.origin, &destination, message),
            Err(_) => {
                tracing::warn!(destination = %message.destination, "dropping a scheduled message for no destination");
                (Vec::new(), Vec::new())
            }
        };
        let stored = !entries.is_empty();
        entries.push(remove_entry(HOLDING, key));
        Ok((entries, stored, publish))
    }

    /// A scheduler management request (`scheduler_support` on, a send to a destination named
    /// [`schedule::MANAGEMENT_DESTINATION`]), read from `new`, or `None` for an ordinary send.
    /// Such a send is never delivered, as in ActiveMQ, whatever it asks.
    pub fn management_request(
        &self,
        destinations: &[Destination],
        new: &NewMessage,
    ) -> Result<Option<Management>, BrokerError> {
        let [destination] = destinations else {
            return Ok(None);
        };
        if !self.options.scheduler_support || !schedule::is_management(destination.name()) {
            return Ok(None);
        }
        let reply_to = new
            .headers
            .iter()
            .find(|h| h.name == crate::broker::REPLY_TO_HEADER)
            .map_or("", |h| h.value.as_str());
        let request = schedule::request(&new.headers, reply_to)?;
        let reply_to = match &request.action {
            schedule::Action::Browse(to) => Some(reply_destination(to)?),
            _ => None,
        };
        Ok(Some(Management {
            request,
            reply_to,
            next: None,
            browsed: HashSet::new(),
            next_of: HashMap::new(),
            removing: HashSet::new(),
        }))
    }

    /// One step of a management request: looks at up to [`MANAGE_SCAN`] of the scheduled
    /// messages (in due order, from where the last step stopped), browsing (sending up to
    /// [`MANAGE_COPIES`] non-persistent copies to the reply-to) or removing them (journaled
    /// removes of their [`HOLDING`] adds). Answers whether more steps are needed.
    ///
    /// A repeated message's deliveries share a job id and are one job, as in ActiveMQ: a
    /// browse sends one copy per job (of its next delivery), a removal removes every delivery.
    /// A range selects the jobs whose next delivery is due in it (ActiveMQ keeps a job under
    /// its next run time): a job's later repeats in the range do not select it, and a ranged
    /// REMOVEALL removes the repeats of a job it selects, in the range or not.
    pub fn manage_step(&mut self, session: u64, m: &mut Management) -> Result<bool, BrokerError> {
        use std::ops::Bound;
        let range = m.request.range;
        if matches!(m.request.action, schedule::Action::Nothing)
            || range.is_some_and(|(start, end)| start > end)
        {
            return Ok(false);
        }
        // With a range, the scan starts at the earliest delivery, to tell each job's next
        // delivery; a browse ends it at the range's end, a removal goes on for the repeats.
        let end = match (&m.request.action, range) {
            (schedule::Action::Browse(_), Some((_, end))) => Bound::Included((end, u64::MAX)),
            _ => Bound::Unbounded,
        };
        let start = m.next.map_or(Bound::Unbounded, Bound::Included);
        let (mut looked, mut chosen) = (0, Vec::new());
        let mut more = false;
        for (key, publish) in self.scheduled.range((start, end)) {
            if looked == MANAGE_SCAN || chosen.len() == MANAGE_COPIES {
                m.next = Some(*key);
                more = true;
                break;
            }
            looked += 1;
            let Publish::Scheduled(entry) = publish else {
                continue;
            };
            let job = job_id(&entry.message);
            // Whether this is its job's next delivery and due in the range (a ranged request
            // only: the map of jobs seen grows with the scan).
            let mut selected = || {
                let (start, end) = range.expect("a ranged request");
                if key.0 > end {
                    return false;
                }
                let first = *m.next_of.entry(job.to_string()).or_insert(*key);
                first == *key && key.0 >= start
            };
            let wanted = match (&m.request.action, range) {
                (schedule::Action::Browse(_), None) => !m.browsed.contains(job),
                (schedule::Action::Browse(_), Some(_)) => selected() && !m.browsed.contains(job),
                (schedule::Action::Remove(id), _) => id == job,
                (schedule::Action::RemoveAll, None) => true,
                (schedule::Action::RemoveAll, Some((_, end))) => {
                    if selected() {
                        m.removing.insert(job.to_string());
                    } else if key.0 > end && m.removing.is_empty() {
                        break;
                    }
                    m.removing.contains(job)
                }
                (schedule::Action::Nothing, _) => false,
            };
            if wanted {
                chosen.push(*key);
            }
        }
        match m.reply_to.clone() {
            Some(reply_to) => {
                if let Some(stopped) = self.browse_copies(session, &reply_to, &chosen, m) {
                    m.next = Some(stopped);
                    more = true;
                }
            }
            None => {
                let removes = chosen
                    .iter()
                    .filter_map(|key| match self.scheduled.remove(key) {
                        Some(Publish::Scheduled(e)) => e.key.map(|k| remove_entry(HOLDING, k)),
                        _ => None,
                    })
                    .collect();
                self.append_in_chunks(removes)?;
            }
        }
        Ok(more)
    }

    /// Sends a copy of each of the scheduled messages at `keys` to `reply_to`, as ActiveMQ's
    /// browse does: non-persistent, with an id of its own, JMSType `Advisory`, its
    /// destination in `original-destination` and its job id in `scheduledJobId`. A copy
    /// whose body cannot be read back is skipped (and logged). Stops once the copies hold
    /// [`ADMIN_BATCH_BYTES`], answering the first key not copied.
    fn browse_copies(
        &mut self,
        session: u64,
        reply_to: &Destination,
        keys: &[(i64, u64)],
        m: &mut Management,
    ) -> Option<(i64, u64)> {
        let mut sends = Vec::with_capacity(keys.len());
        let (mut bytes, mut stopped) = (0, None);
        for key in keys {
            if bytes >= ADMIN_BATCH_BYTES {
                stopped = Some(*key);
                break;
            }
            let Some(Publish::Scheduled(entry)) = self.scheduled.get(key) else {
                continue;
            };
            let entry = entry.clone();
            let message = match self.with_body(&entry) {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(%error, "could not read a scheduled message back to browse it");
                    continue;
                }
            };
            if matches!(entry.body, Body::OnDisk) {
                self.stats.bodies_read_back += 1;
            }
            let job = job_id(&message).to_string();
            if !m.browsed.insert(job.clone()) {
                continue;
            }
            let mut copy = (*message).clone();
            bytes += copy.body.len();
            copy.headers.retain(|h| {
                ![
                    crate::broker::JMS_TYPE_HEADER,
                    "original-destination",
                    schedule::SCHEDULED_ID,
                ]
                .contains(&h.name.as_str())
            });
            copy.headers.extend([
                Header::text(crate::broker::JMS_TYPE_HEADER, schedule::BROWSE_TYPE),
                Header::text("original-destination", copy.destination.clone()),
                Header::text(schedule::SCHEDULED_ID, job),
            ]);
            copy.message_id = self.new_message_id(session);
            copy.producer_id = String::new();
            copy.producer_sequence = 0;
            copy.persistent = false;
            copy.deliver_at = 0;
            copy.destination = reply_to.canonical();
            sends.push((reply_to.clone(), Arc::new(copy)));
        }
        // Non-persistent and not delayed: [`Core::route`] stores none of them.
        let routed = self.route_all(session, sends);
        debug_assert!(routed.entries.is_empty());
        self.publish_now(routed.publish);
        stopped
    }

    /// A move whose add names so many queues that it and the removal pass a record's limit:
    /// stored first, removed after (a crash between the two delivers it twice, never loses
    /// it).
    fn move_in_two(
        &mut self,
        mut entries: Vec<crate::store::Entry>,
        stored: bool,
        publish: Vec<Publish>,
    ) -> Result<(), BrokerError> {
        // `route_due` puts the removal last.
        let remove = entries.pop();
        let mut add = Routed::default();
        add.push(entries, stored, publish);
        self.append_moves(add)?;
        match remove {
            Some(remove) => self.append(vec![remove]).map(drop),
            None => Ok(()),
        }
    }

    /// What the sweep task waits on besides its tick (see [`Core::hold`]).
    pub fn scheduler_wake(&self) -> Arc<tokio::sync::Notify> {
        self.scheduler_wake.clone()
    }

    /// The messages `message`, sent by `session`, is delivered as (see [`schedule`]): itself
    /// stamped with its due time if it asks for one and `scheduler_support` is on, and with
    /// repeats a copy per delivery, each stamped and with an id of its own; else itself,
    /// untouched.
    pub(super) fn schedule(
        &mut self,
        session: u64,
        message: Arc<Message>,
    ) -> Result<Vec<Arc<Message>>, BrokerError> {
        if !self.options.scheduler_support {
            return Ok(vec![message]);
        }
        let Some(plan) = schedule::plan(&message.headers, now_ms())? else {
            return Ok(vec![message]);
        };
        let mut deliveries = Vec::with_capacity(plan.repeat as usize + 1);
        for due in plan.deliveries() {
            let mut copy = (*message).clone();
            schedule::stamp(&mut copy, due);
            if plan.repeat > 0 {
                copy.message_id = self.new_message_id(session);
            }
            deliveries.push(Arc::new(copy));
        }
        Ok(deliveries)
    }

    /// How many messages [`Core::schedule`] makes of `message` (refusing it as that would).
    pub(super) fn deliveries(&self, message: &Message) -> Result<usize, BrokerError> {
        if !self.options.scheduler_support {
            return Ok(1);
        }
        Ok(schedule::plan(&message.headers, now_ms())?.map_or(1, |p| p.repeat as usize + 1))
    }
}

/// The job id of a scheduled message (its `scheduledJobId`, see [`schedule::stamp`]): repeated
/// deliveries of one message share it.
fn job_id(message: &Message) -> &str {
    message
        .headers
        .iter()
        .find(|h| h.name == schedule::SCHEDULED_ID)
        .map_or(message.message_id.as_str(), |h| h.value.as_str())
}

/// The destination a reply-to header names, in the core's form (see
/// `crate::protocol::destination_to_core`): a queue or a topic, or a JMS client's temporary
/// queue or topic (`temp-queue://ID:...`), which the core keeps as a queue or a topic of that
/// name.
fn reply_destination(reply_to: &str) -> Result<Destination, BrokerError> {
    let invalid = || BrokerError::InvalidDestination(reply_to.to_string());
    if let Some(name) = reply_to.strip_prefix("temp-queue://") {
        return Destination::parse(&format!("queue://{name}")).map_err(|_| invalid());
    }
    if let Some(name) = reply_to.strip_prefix("temp-topic://") {
        return Destination::parse(&format!("topic://{name}")).map_err(|_| invalid());
    }
    Destination::parse(reply_to).map_err(|_| invalid())
}

/// A scheduler management request under way (see [`Core::manage_step`]).
pub struct Management {
    request: schedule::Request,
    /// A browse's destination for the copies.
    reply_to: Option<Destination>,
    /// Where the next step starts (the first key the last one did not look at).
    next: Option<(i64, u64)>,
    /// The job ids a browse sent a copy of.
    browsed: HashSet<String>,
    /// A ranged request's jobs seen so far, each with the key of its next delivery (the first
    /// seen).
    next_of: HashMap<String, (i64, u64)>,
    /// The jobs a ranged REMOVEALL selected: every delivery of theirs goes.
    removing: HashSet<String>,
}
