//! ActiveMQ's delayed delivery (`<broker schedulerSupport="true">`, here `[broker]
//! scheduler_support`): which messages are scheduled, and for when. The core reads the
//! properties by name (a JMS property or a STOMP header, whose values are strings) and stamps
//! the message with its due time (`Message::deliver_at`).
//!
//! As ActiveMQ's job scheduler store keeps every scheduled message, the core
//! (`core::scheduled`) stores a stamped message, persistent or not, as one record in the
//! holding queue `scheduled://` (body in the journal, not in memory), whatever subscribers
//! exist, so that a restart or a failover keeps it. When it is due, one record removes it
//! from there and stores it at its destination, routed as a send made then (a topic: the
//! durable subscriptions and subscribers of that moment); a non-persistent one stays
//! non-persistent.
//!
//! As ActiveMQ's `SchedulerBroker` reads them:
//! - `AMQ_SCHEDULED_DELAY` (ms): the message is due that long after it is stored (a
//!   transaction's sends: after the commit). Zero or negative: at once.
//! - `AMQ_SCHEDULED_PERIOD` is the delay when `AMQ_SCHEDULED_DELAY` is not positive
//!   (ActiveMQ's job scheduler adds it to the job's start).
//! - `AMQ_SCHEDULED_REPEAT` more deliveries (at most [`MAX_REPEAT`], ActiveMQ's limit) follow
//!   the first, a period apart (all at once without a positive period, as ActiveMQ fires
//!   them). Each is a message of its own with an id of its own, as ActiveMQ's are; ferromq
//!   stores them all (in the holding queue) with the send, each with its due time, so a repeat
//!   needs nothing more than a delayed message does. A negative repeat (ActiveMQ: for ever) is refused.
//! - A value must be a whole number: an integer property, or a string holding one (Java's
//!   `Long.valueOf`); another type or text is refused, as ActiveMQ's send fails on it.
//! - A non-empty `AMQ_SCHEDULED_CRON` is refused, naming the property: ferromq has no cron
//!   schedules.
//! - A message carrying `scheduledJobId` (ActiveMQ's `AMQ_SCHEDULED_ID`, which a delivered
//!   scheduled message carries) is not scheduled again.
//!
//! The delivered message, as ActiveMQ's, no longer has the four scheduling properties (the
//! held one keeps them, for a browse's copy: `delivered` drops them), has `scheduledJobId`,
//! and its time to live counts from its due time (its JMSTimestamp becomes the due time).
//!
//! It also reads requests to ActiveMQ's scheduler management destination
//! ([`MANAGEMENT_DESTINATION`]: `BROWSE`, `REMOVE`, `REMOVEALL`, an optional due-time range) as
//! ActiveMQ's `SchedulerBroker` does ([`request`]); `core::scheduled` carries them out
//! (`Core::manage_step`). This module owns no state and never touches the store or the
//! protocols: it only reads headers and stamps messages.

use super::BrokerError;
use crate::store::{Header, Message, PropertyType};

/// Milliseconds to wait before delivery.
pub const SCHEDULED_DELAY: &str = "AMQ_SCHEDULED_DELAY";
/// Milliseconds between repeats (the delay when there is none).
pub const SCHEDULED_PERIOD: &str = "AMQ_SCHEDULED_PERIOD";
/// How many more times to deliver, a period apart.
pub const SCHEDULED_REPEAT: &str = "AMQ_SCHEDULED_REPEAT";
/// A cron schedule: refused unless empty.
pub const SCHEDULED_CRON: &str = "AMQ_SCHEDULED_CRON";
/// Set on a delivered scheduled message; a message carrying it is not scheduled again.
pub const SCHEDULED_ID: &str = "scheduledJobId";
/// The most repeats one message may ask for (ActiveMQ's `SchedulerBroker.MAX_REPEAT_ALLOWED`).
pub const MAX_REPEAT: i64 = 1000;

/// Every scheduling property's name starts so: a message without one costs one look at each
/// header name.
const PREFIX: &str = "AMQ_SCHEDULED_";

/// When a scheduled message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Schedule {
    /// The first delivery, in ms since the epoch.
    pub due: i64,
    /// How many more deliveries follow (at most [`MAX_REPEAT`]).
    pub repeat: u32,
    /// Milliseconds between deliveries (0: all at `due`).
    pub period: i64,
}

impl Schedule {
    /// When delivery `k` (0, the first, to `repeat`) is due; `None` past any representable
    /// time.
    fn due_of(&self, k: u32) -> Option<i64> {
        self.period
            .checked_mul(i64::from(k))
            .and_then(|wait| self.due.checked_add(wait))
    }

    /// Every delivery's due time, in order.
    pub fn deliveries(&self) -> impl Iterator<Item = i64> + '_ {
        (0..=self.repeat).map(|k| self.due_of(k).expect("checked by plan"))
    }
}

/// Whether a message with these `headers` waits in the holding area, stored in the journal
/// even when it is not persistent (a delay, a repeat), when the broker schedules (with
/// `scheduler_support`).
pub(super) fn is_held(headers: &[Header], now: i64) -> bool {
    plan(headers, now)
        .ok()
        .flatten()
        .is_some_and(|p| p.due > now || p.repeat > 0)
}

/// When a message with these `headers`, stored at `now` (ms since the epoch), is delivered;
/// `None` when it is not scheduled. Errors name the property at fault.
pub(super) fn plan(headers: &[Header], now: i64) -> Result<Option<Schedule>, BrokerError> {
    if !headers.iter().any(|h| h.name.starts_with(PREFIX)) {
        return Ok(None);
    }
    // A property set to null is as good as absent (ActiveMQ's scheduler reads null).
    let find = |name: &str| {
        headers
            .iter()
            .find(|h| h.name == name && h.kind != PropertyType::Null as i32)
    };
    if find(SCHEDULED_ID).is_some() {
        return Ok(None);
    }
    let cron = find(SCHEDULED_CRON);
    let delay = find(SCHEDULED_DELAY).map(whole_number).transpose()?;
    let period = find(SCHEDULED_PERIOD).map(whole_number).transpose()?;
    if cron.is_none() && delay.is_none() && period.is_none() {
        return Ok(None);
    }
    if let Some(cron) = cron.filter(|c| !c.value.is_empty()) {
        return Err(BrokerError::Unsupported(format!(
            "{SCHEDULED_CRON} ('{}'): cron schedules are not supported; use {SCHEDULED_DELAY}, \
             {SCHEDULED_PERIOD} and {SCHEDULED_REPEAT}",
            cron.value
        )));
    }
    let repeat = find(SCHEDULED_REPEAT)
        .map(whole_number)
        .transpose()?
        .unwrap_or(0);
    if repeat < 0 {
        return Err(BrokerError::Unsupported(format!(
            "{SCHEDULED_REPEAT} {repeat}: repeating for ever is not supported; give a number \
             of repeats"
        )));
    }
    if repeat > MAX_REPEAT {
        return Err(BrokerError::InvalidMessage(format!(
            "{SCHEDULED_REPEAT} {repeat} is more than {MAX_REPEAT}, the most allowed"
        )));
    }
    let beyond = |name: &str, wait: i64| {
        BrokerError::InvalidMessage(format!(
            "{name} of {wait} ms puts a delivery beyond any representable time"
        ))
    };
    let (name, wait) = match (delay, period) {
        (Some(d), _) if d > 0 => (SCHEDULED_DELAY, d),
        (_, Some(p)) => (SCHEDULED_PERIOD, p),
        (d, None) => (SCHEDULED_DELAY, d.unwrap_or(0)),
    };
    let due = now
        .checked_add(wait.max(0))
        .ok_or_else(|| beyond(name, wait))?;
    let schedule = Schedule {
        due,
        repeat: repeat as u32,
        period: period.unwrap_or(0).max(0),
    };
    match schedule.due_of(schedule.repeat) {
        Some(_) => Ok(Some(schedule)),
        None => Err(beyond(SCHEDULED_PERIOD, schedule.period)),
    }
}

/// A scheduling property's value as a number of milliseconds.
fn whole_number(header: &Header) -> Result<i64, BrokerError> {
    let integer = matches!(
        PropertyType::try_from(header.kind),
        Ok(PropertyType::String
            | PropertyType::Byte
            | PropertyType::Short
            | PropertyType::Int
            | PropertyType::Long)
    );
    let parsed = integer.then(|| header.value.parse::<i64>().ok()).flatten();
    parsed.ok_or_else(|| {
        BrokerError::InvalidMessage(format!(
            "{} must be a whole number of milliseconds (an integer property, or a string \
             holding one), not '{}'",
            header.name, header.value
        ))
    })
}

/// The properties a scheduled message is sent with, which [`delivered`] drops.
const SCHEDULING: [&str; 4] = [
    SCHEDULED_DELAY,
    SCHEDULED_PERIOD,
    SCHEDULED_REPEAT,
    SCHEDULED_CRON,
];

/// Makes `message` a scheduled one, due at `due`: with `scheduledJobId` (its message id), and
/// with its time to live counted from `due` (JMSTimestamp moved to `due`, the expiration with
/// it). It keeps its scheduling properties while held, as ActiveMQ's job keeps the message as
/// sent: a browse's copy carries them (a selector on `AMQ_SCHEDULED_DELAY` picks copies);
/// [`delivered`] drops them.
pub(super) fn stamp(message: &mut Message, due: i64) {
    message
        .headers
        .push(Header::text(SCHEDULED_ID, message.message_id.clone()));
    message.deliver_at = due;
    if message.expiration > 0 && due > message.timestamp {
        let ttl = message.expiration.saturating_sub(message.timestamp);
        message.expiration = due.saturating_add(ttl);
        message.timestamp = due;
    }
}

/// A scheduled message as it is delivered, as ActiveMQ delivers it: without the scheduling
/// properties (`message` itself when it has none).
pub(super) fn delivered(message: std::sync::Arc<Message>) -> std::sync::Arc<Message> {
    let scheduling = |h: &Header| SCHEDULING.contains(&h.name.as_str());
    if !message.headers.iter().any(scheduling) {
        return message;
    }
    let mut message = std::sync::Arc::unwrap_or_clone(message);
    message.headers.retain(|h| !scheduling(h));
    std::sync::Arc::new(message)
}

/// ActiveMQ's scheduler management destination: a send to a destination whose name starts so
/// (in any case, as ActiveMQ compares it) is a request to the scheduler, never delivered.
pub const MANAGEMENT_DESTINATION: &str = "ActiveMQ.Scheduler.Management";
/// The request's property naming what to do: [`BROWSE`], [`REMOVE`] or [`REMOVEALL`].
pub const ACTION: &str = "AMQ_SCHEDULER_ACTION";
/// With [`ACTION_END_TIME`]: only the jobs next due in this range (ms since the epoch,
/// inclusive). ActiveMQ's constant for it is `ScheduledMessage.AMQ_SCHEDULER_ACTION_START_TIME`,
/// but the property it names, which its client sends, is `ACTION_START_TIME`.
pub const ACTION_START_TIME: &str = "ACTION_START_TIME";
/// See [`ACTION_START_TIME`] (`ScheduledMessage.AMQ_SCHEDULER_ACTION_END_TIME`).
pub const ACTION_END_TIME: &str = "ACTION_END_TIME";
/// Sends a copy of each scheduled message to the request's reply-to.
pub const BROWSE: &str = "BROWSE";
/// Removes the scheduled message(s) whose [`SCHEDULED_ID`] the request carries.
pub const REMOVE: &str = "REMOVE";
/// Removes every scheduled message (in the range, if one is given).
pub const REMOVEALL: &str = "REMOVEALL";
/// The JMSType of a browse copy, as ActiveMQ sets it (`AdvisorySupport.ADIVSORY_MESSAGE_TYPE`).
pub const BROWSE_TYPE: &str = "Advisory";

/// Whether a send to `name` (a destination's name, without its kind) is a management request.
pub fn is_management(name: &str) -> bool {
    name.get(..MANAGEMENT_DESTINATION.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(MANAGEMENT_DESTINATION))
}

/// What a management request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A copy of each scheduled message to this destination (the core's name of the reply-to).
    Browse(String),
    /// Remove the scheduled messages with this job id.
    Remove(String),
    RemoveAll,
    /// Nothing: no action, an unknown one, a BROWSE without a reply-to or a REMOVE without a
    /// job id (ActiveMQ ignores each).
    Nothing,
}

/// A management request read from a message's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    /// Only messages due from `.0` to `.1` (inclusive); both properties or neither count.
    pub range: Option<(i64, i64)>,
}

/// Reads a management request as ActiveMQ's `SchedulerBroker` does: the action is compared
/// as given (`browse` is no action); `reply_to` is the request's reply-to header. A range bound
/// that is not a whole number is refused, naming the property.
pub fn request(headers: &[Header], reply_to: &str) -> Result<Request, BrokerError> {
    let find = |name: &str| headers.iter().find(|h| h.name == name);
    let action = match find(ACTION).map(|h| h.value.as_str()) {
        Some(BROWSE) if !reply_to.is_empty() => Action::Browse(reply_to.to_string()),
        Some(REMOVE) => match find(SCHEDULED_ID) {
            Some(id) => Action::Remove(id.value.clone()),
            None => Action::Nothing,
        },
        Some(REMOVEALL) => Action::RemoveAll,
        _ => Action::Nothing,
    };
    let range = match (find(ACTION_START_TIME), find(ACTION_END_TIME)) {
        (Some(start), Some(end)) if matches!(action, Action::Browse(_) | Action::RemoveAll) => {
            Some((whole_number(start)?, whole_number(end)?))
        }
        _ => None,
    };
    Ok(Request { action, range })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(name: &str, value: &str, kind: PropertyType) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
            kind: kind as i32,
        }
    }

    #[test]
    fn management_requests_are_read_as_activemq_reads_them() {
        assert!(is_management("ActiveMQ.Scheduler.Management"));
        assert!(is_management("activemq.scheduler.management.x"));
        assert!(!is_management("ActiveMQ.Scheduler"));
        assert!(!is_management("ActiveMQ.Scheduler.Managemen\u{e9}"));
        let action = |a: &str| Header::text(ACTION, a);
        let id = Header::text(SCHEDULED_ID, "ID:x:1");
        let range = [
            Header::text(ACTION_START_TIME, "10"),
            typed(ACTION_END_TIME, "20", PropertyType::Long),
        ];
        let read = |headers: &[Header], reply: &str| request(headers, reply).unwrap();
        let browse = [&range[..], &[action(BROWSE)]].concat();
        assert_eq!(
            read(&browse, "queue://r"),
            Request {
                action: Action::Browse("queue://r".into()),
                range: Some((10, 20))
            }
        );
        assert_eq!(read(&browse, "").action, Action::Nothing);
        assert_eq!(
            read(&[action("browse")], "queue://r").action,
            Action::Nothing
        );
        assert_eq!(
            read(&[action("PURGE")], "queue://r").action,
            Action::Nothing
        );
        assert_eq!(read(&[], "queue://r").action, Action::Nothing);
        assert_eq!(read(&[action(REMOVE)], "").action, Action::Nothing);
        assert_eq!(
            read(&[action(REMOVE), id], "").action,
            Action::Remove("ID:x:1".into())
        );
        let all = [&range[..1], &[action(REMOVEALL)]].concat();
        assert_eq!(read(&all, "").range, None, "one bound is none");
        let bad = [
            action(REMOVEALL),
            range[0].clone(),
            Header::text(ACTION_END_TIME, "x"),
        ];
        let e = request(&bad, "").unwrap_err().to_string();
        assert!(e.contains(ACTION_END_TIME), "{e}");
    }

    #[test]
    fn a_message_without_the_properties_is_not_scheduled() {
        let headers = [Header::text("AMQ_SCHEDULED", "5"), Header::text("x", "1")];
        assert_eq!(plan(&headers, 1000), Ok(None));
        // Only a repeat (no delay, period or cron): ActiveMQ sends it at once too.
        let headers = [Header::text(SCHEDULED_REPEAT, "3")];
        assert_eq!(plan(&headers, 1000), Ok(None));
    }

    /// A schedule without repeats, due at `due`.
    fn once(due: i64) -> Option<Schedule> {
        Some(Schedule {
            due,
            repeat: 0,
            period: 0,
        })
    }

    #[test]
    fn the_delay_is_a_long_or_a_string_holding_one() {
        let at = |h: Header| plan(&[h], 1000);
        assert_eq!(
            at(typed(SCHEDULED_DELAY, "250", PropertyType::Long)),
            Ok(once(1250))
        );
        assert_eq!(
            at(typed(SCHEDULED_DELAY, "250", PropertyType::Int)),
            Ok(once(1250))
        );
        assert_eq!(at(Header::text(SCHEDULED_DELAY, "+250")), Ok(once(1250)));
        // Zero or negative: at once.
        assert_eq!(at(Header::text(SCHEDULED_DELAY, "-5")), Ok(once(1000)));
        assert_eq!(at(Header::text(SCHEDULED_DELAY, "0")), Ok(once(1000)));
        for bad in [
            Header::text(SCHEDULED_DELAY, "soon"),
            Header::text(SCHEDULED_DELAY, " 5"),
            Header::text(SCHEDULED_DELAY, "1.5"),
            Header::text(SCHEDULED_DELAY, "99999999999999999999"),
            typed(SCHEDULED_DELAY, "1.5", PropertyType::Double),
            typed(SCHEDULED_DELAY, "true", PropertyType::Boolean),
        ] {
            let e = at(bad.clone()).unwrap_err().to_string();
            assert!(e.contains(SCHEDULED_DELAY) && e.contains(&bad.value), "{e}");
        }
        let e = at(Header::text(SCHEDULED_DELAY, i64::MAX.to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SCHEDULED_DELAY), "{e}");
    }

    #[test]
    fn a_period_is_the_delay_unless_one_is_given_and_spaces_the_repeats() {
        let period = Header::text(SCHEDULED_PERIOD, "300");
        let delay = Header::text(SCHEDULED_DELAY, "100");
        let repeat = |n: &str| Header::text(SCHEDULED_REPEAT, n);
        let every = |due, repeat| {
            Some(Schedule {
                due,
                repeat,
                period: 300,
            })
        };
        let due = |headers: &[Header]| {
            let s = plan(headers, 1000).unwrap().unwrap();
            s.deliveries().collect::<Vec<_>>()
        };
        assert_eq!(
            plan(std::slice::from_ref(&period), 1000),
            Ok(every(1300, 0))
        );
        assert_eq!(
            plan(&[delay.clone(), period.clone()], 1000),
            Ok(every(1100, 0))
        );
        let twice = [delay.clone(), period.clone(), repeat("2")];
        assert_eq!(plan(&twice, 1000), Ok(every(1100, 2)));
        assert_eq!(due(&twice), [1100, 1400, 1700]);
        assert_eq!(due(&[period.clone(), repeat("1")]), [1300, 1600]);
        // Without a positive period every repeat is due at once (as ActiveMQ fires them).
        assert_eq!(due(&[delay.clone(), repeat("2")]), [1100, 1100, 1100]);
        let far = Header::text(SCHEDULED_PERIOD, (i64::MAX / 2).to_string());
        for (bad, name) in [
            (vec![delay.clone(), repeat("-1")], SCHEDULED_REPEAT),
            (vec![delay.clone(), repeat("1001")], SCHEDULED_REPEAT),
            (vec![delay.clone(), repeat("x")], SCHEDULED_REPEAT),
            (vec![delay.clone(), far, repeat("5")], SCHEDULED_PERIOD),
            (
                vec![Header::text(SCHEDULED_CRON, "* * * * *")],
                SCHEDULED_CRON,
            ),
        ] {
            let e = plan(&bad, 1000).unwrap_err().to_string();
            assert!(e.contains(name), "{bad:?}: {e}");
        }
        let empty_cron = Header::text(SCHEDULED_CRON, "");
        assert_eq!(plan(&[empty_cron], 1000), Ok(once(1000)));
    }

    #[test]
    fn a_message_delivered_by_the_scheduler_is_not_scheduled_again() {
        let headers = [
            Header::text(SCHEDULED_DELAY, "100"),
            Header::text(SCHEDULED_ID, "ID:x:1"),
        ];
        assert_eq!(plan(&headers, 1000), Ok(None));
    }

    #[test]
    fn stamping_keeps_the_properties_delivery_drops_them_and_the_time_to_live_moves() {
        let mut m = Message {
            message_id: "ID:p:1".into(),
            timestamp: 1000,
            expiration: 1500,
            headers: vec![
                Header::text(SCHEDULED_DELAY, "2000"),
                Header::text("keep", "1"),
                Header::text(SCHEDULED_REPEAT, "0"),
            ],
            ..Message::default()
        };
        stamp(&mut m, 3000);
        let names =
            |m: &Message| -> Vec<String> { m.headers.iter().map(|h| h.name.clone()).collect() };
        assert_eq!(
            names(&m),
            [SCHEDULED_DELAY, "keep", SCHEDULED_REPEAT, SCHEDULED_ID]
        );
        assert_eq!(m.headers[3].value, "ID:p:1");
        assert_eq!(
            (m.deliver_at, m.timestamp, m.expiration),
            (3000, 3000, 3500)
        );
        let m = delivered(std::sync::Arc::new(m));
        assert_eq!(names(&m), ["keep", SCHEDULED_ID]);
        let mut never = Message {
            timestamp: 1000,
            ..Message::default()
        };
        stamp(&mut never, 3000);
        assert_eq!((never.timestamp, never.expiration), (1000, 0));
    }
}
