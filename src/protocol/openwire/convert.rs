//! Between OpenWire messages and the broker core's messages.
//!
//! Owns the mapping of JMS message classes, JMS header fields and typed properties onto the
//! core's protocol-neutral [`NewMessage`]/[`StoredMessage`], done the way ActiveMQ maps JMS
//! messages to STOMP frames, so that STOMP and OpenWire clients read each other's messages:
//!
//! | JMS                     | stored as                                               |
//! |-------------------------|---------------------------------------------------------|
//! | TextMessage body        | UTF-8 bytes, body type TEXT (null text: TEXT_NULL, no bytes) |
//! | BytesMessage body       | the bytes, body type BYTES                              |
//! | Map/Object/StreamMessage| OpenWire's encoding of the body, body type MAP/OBJECT/STREAM |
//! | a compressed body       | inflated (bounded by `max_frame_size`), then as above   |
//! | JMSCorrelationID        | header `correlation-id`                                 |
//! | JMSReplyTo              | header `reply-to` as `queue://x`, `topic://x`, `temp-queue://x`, `temp-topic://x` (STOMP: `/queue/x`, ...) |
//! | JMSType                 | header `jms-type` (STOMP: `type`)                       |
//! | JMSXGroupID, JMSXGroupSeq | headers of those names                                |
//! | JMSMessageID            | the message id, `<producer id>:<sequence>`              |
//! | properties              | headers, with their JMS type in `Header.kind`           |
//!
//! Pure functions: no I/O, no session state. It must never decide what a client is answered.

use bytes::{Bytes, BytesMut};

use super::{
    decode_text_body, encode_text_body, Destination as OwDestination, DestinationKind, Message,
    MessageId, MessageKind, PrimitiveMap, PrimitiveValue, ProducerId,
};
use crate::broker::{
    composite_members, BodyType, BrokerError, Destination, Header, NewMessage, PropertyType,
};
use crate::store::Message as StoredMessage;

/// Headers that carry JMS header fields rather than properties.
const CORRELATION_ID: &str = "correlation-id";
const REPLY_TO: &str = crate::broker::REPLY_TO_HEADER;
const TYPE: &str = crate::broker::JMS_TYPE_HEADER;
const GROUP_ID: &str = "JMSXGroupID";
const GROUP_SEQ: &str = "JMSXGroupSeq";
const ORIGINAL_DESTINATION: &str = "original-destination";

/// ActiveMQ's prefix of advisory topics, which ferromq accepts subscriptions to but never
/// publishes on.
pub const ADVISORY_PREFIX: &str = "ActiveMQ.Advisory.";

/// `MessageId.toString()`: the text view when set, else `<producer id>:<sequence>`.
pub fn message_id_text(id: &MessageId) -> String {
    if let Some(text) = &id.text_view {
        return text.clone();
    }
    let producer = id
        .producer_id
        .as_ref()
        .map(ProducerId::to_string)
        .unwrap_or_default();
    format!("{producer}:{}", id.producer_sequence_id)
}

/// The structured `MessageId` of a stored message id.
///
/// An id an OpenWire producer made (`ID:host-1-2-3:1:1:1:5`) comes back exactly. Any other id
/// (a STOMP client's, or one the broker made) becomes a text view over a producer derived from
/// the id itself, so that distinct messages never share a (producer, sequence) pair: the JMS
/// client drops such a pair as a duplicate.
pub fn parse_message_id(text: &str, broker_sequence_id: i64) -> MessageId {
    let structured = (|| {
        let (rest, seq) = text.rsplit_once(':')?;
        let (rest, value) = rest.rsplit_once(':')?;
        let (connection, session) = rest.rsplit_once(':')?;
        let producer = ProducerId {
            connection_id: Some(connection.to_string()),
            value: value.parse().ok()?,
            session_id: session.parse().ok()?,
        };
        let id = MessageId {
            text_view: None,
            producer_id: Some(producer),
            producer_sequence_id: seq.parse().ok()?,
            broker_sequence_id,
        };
        // Only when printing it gives the same text back (no leading zeros, signs...).
        (!connection.is_empty() && message_id_text(&id) == text).then_some(id)
    })();
    if let Some(id) = structured {
        return id;
    }
    let (producer, sequence) = match text.rsplit_once(':') {
        Some((p, s)) if !p.is_empty() => match s.parse::<i64>() {
            Ok(s) => (p, s),
            Err(_) => (text, 1),
        },
        _ => (text, 1),
    };
    MessageId {
        text_view: Some(text.to_string()),
        producer_id: Some(ProducerId {
            connection_id: Some(producer.to_string()),
            value: 0,
            session_id: 0,
        }),
        producer_sequence_id: sequence,
        broker_sequence_id,
    }
}

/// The core destination an OpenWire destination names (a temporary one is a plain queue or
/// topic of the same name). Composite destinations (`a,b`) are refused.
pub fn core_destination(d: &OwDestination) -> Result<Destination, String> {
    let name = d
        .physical_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "a destination without a name".to_string())?;
    if name.contains(',') {
        return Err(format!(
            "composite destination '{name}' is not supported: use one destination per producer or consumer"
        ));
    }
    Ok(match d.kind {
        DestinationKind::Queue | DestinationKind::TempQueue => Destination::Queue(name.into()),
        DestinationKind::Topic | DestinationKind::TempTopic => Destination::Topic(name.into()),
    })
}

/// The core destinations a producer's or consumer's destination names: itself, or each member of a
/// composite one (`a,b`; ActiveMQ's `ActiveMQDestination.getCompositeDestinations`). A member
/// is of the composite's kind unless prefixed `queue://` or `topic://`
/// (`queue://a,topic://b`). Temporary members are refused: their messages would have to be
/// kept off disk while the other members' are stored.
pub fn core_destinations(d: &OwDestination) -> Result<Vec<Destination>, BrokerError> {
    let name = d.physical_name.as_deref().unwrap_or("");
    let temporary = matches!(
        d.kind,
        DestinationKind::TempQueue | DestinationKind::TempTopic
    );
    let members = composite_members(name, |member| {
        if temporary {
            return Err("a temporary destination cannot be composite".into());
        }
        if member.starts_with("temp-queue://") || member.starts_with("temp-topic://") {
            return Err(format!(
                "member '{member}' is temporary: name only queues and topics"
            ));
        }
        let (kind, bare) = if let Some(n) = member.strip_prefix("queue://") {
            (DestinationKind::Queue, n)
        } else if let Some(n) = member.strip_prefix("topic://") {
            (DestinationKind::Topic, n)
        } else {
            (d.kind, member)
        };
        if bare.is_empty() || bare.contains("://") {
            return Err(format!(
                "member '{member}' is not a name, queue://NAME or topic://NAME"
            ));
        }
        Ok(match kind {
            DestinationKind::Topic => Destination::Topic(bare.to_string()),
            _ => Destination::Queue(bare.to_string()),
        })
    })?;
    match members {
        Some(members) => Ok(members),
        None => core_destination(d)
            .map(|d| vec![d])
            .map_err(BrokerError::InvalidName),
    }
}

/// A destination as ActiveMQ writes it in STOMP headers.
pub fn stomp_name(d: &OwDestination) -> String {
    let name = d.physical_name.as_deref().unwrap_or("");
    match d.kind {
        DestinationKind::Queue => format!("/queue/{name}"),
        DestinationKind::Topic => format!("/topic/{name}"),
        DestinationKind::TempQueue => format!("/temp-queue/{name}"),
        DestinationKind::TempTopic => format!("/temp-topic/{name}"),
    }
}

/// Reads a destination written by [`stomp_name`], by a STOMP client, or in the core's
/// canonical form (`queue://x`).
pub fn parse_destination(text: &str) -> Option<OwDestination> {
    let forms = [
        ("/queue/", DestinationKind::Queue),
        ("/topic/", DestinationKind::Topic),
        ("/temp-queue/", DestinationKind::TempQueue),
        ("/temp-topic/", DestinationKind::TempTopic),
        ("/remote-temp-queue/", DestinationKind::TempQueue),
        ("/remote-temp-topic/", DestinationKind::TempTopic),
        ("queue://", DestinationKind::Queue),
        ("topic://", DestinationKind::Topic),
        ("temp-queue://", DestinationKind::TempQueue),
        ("temp-topic://", DestinationKind::TempTopic),
    ];
    forms.iter().find_map(|(prefix, kind)| {
        let name = text.strip_prefix(prefix)?;
        (!name.is_empty()).then(|| OwDestination {
            kind: *kind,
            physical_name: Some(name.to_string()),
        })
    })
}

/// Why an OpenWire message cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("a compressed body (jms.useCompression) that does not inflate: {0}")]
    BadCompression(String),
    #[error(
        "a compressed body (jms.useCompression) that inflates to more than {0} bytes, the \
         broker's max_frame_size"
    )]
    InflatesTooLarge(usize),
    #[error("blob messages are not supported")]
    Blob,
    #[error("the message has no destination")]
    NoDestination,
    #[error("bad message: {0}")]
    Malformed(String),
}

/// The first `n` bytes (or fewer, if the stream ends before) of the zlib stream `compressed`
/// (what Java's `DeflaterOutputStream` and `Deflater` write).
fn inflate_first(compressed: &[u8], n: usize) -> Result<Vec<u8>, ConvertError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .take(n as u64)
        .read_to_end(&mut out)
        .map_err(|e| ConvertError::BadCompression(e.to_string()))?;
    Ok(out)
}

/// The zlib stream `compressed` inflated, if that makes at most `limit` bytes.
fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, ConvertError> {
    let out = inflate_first(compressed, limit + 1)?;
    if out.len() > limit {
        return Err(ConvertError::InflatesTooLarge(limit));
    }
    Ok(out)
}

/// The body of a message sent with `jms.useCompression=true`, inflated, at most `limit` bytes.
/// As the client compresses it: a BytesMessage's content is the body's length (4 bytes, big
/// endian) then a zlib stream that starts with the body; any other kind's is the zlib stream of its
/// uncompressed content (a text body's length and modified UTF-8 included).
fn inflate_content(
    kind: &MessageKind,
    content: &[u8],
    limit: usize,
) -> Result<Bytes, ConvertError> {
    if content.is_empty() {
        return Ok(Bytes::new());
    }
    let body = if matches!(kind, MessageKind::Bytes) {
        let Some((length, stream)) = content.split_first_chunk::<4>() else {
            return Err(ConvertError::BadCompression(format!(
                "{} bytes, too short for the body's length",
                content.len()
            )));
        };
        let length = i32::from_be_bytes(*length);
        let length = usize::try_from(length).map_err(|_| {
            ConvertError::BadCompression(format!("a negative body length ({length})"))
        })?;
        if length > limit {
            return Err(ConvertError::InflatesTooLarge(limit));
        }
        // The client deflates the whole buffer its body was written into, so the stream may
        // go on past the body (zeros); like the client, read only the body's length.
        let body = inflate_first(stream, length)?;
        if body.len() != length {
            return Err(ConvertError::BadCompression(format!(
                "{} bytes inflated where the message says {length}",
                body.len()
            )));
        }
        body
    } else {
        inflate(content, limit)?
    };
    Ok(Bytes::from(body))
}

fn non_empty(body: &Bytes) -> Option<Bytes> {
    (!body.is_empty()).then(|| body.clone())
}

/// The core's view of a message an OpenWire producer sent. A compressed body is inflated (to
/// at most `max_body` bytes) and stored as if sent uncompressed, so STOMP clients read it and
/// JMS consumers receive it uncompressed, as ActiveMQ's STOMP and JMS clients would read it.
pub fn to_new_message(m: &Message, max_body: usize) -> Result<NewMessage, ConvertError> {
    let inflated = match (&m.content, m.compressed) {
        (Some(content), true) => Some(inflate_content(&m.kind, content, max_body)?),
        (content, _) => content.clone(),
    };
    let content = &inflated;
    let (body_type, body) = match &m.kind {
        MessageKind::Message => (BodyType::None, Bytes::new()),
        MessageKind::Text => {
            let text = match content {
                Some(content) => {
                    decode_text_body(content).map_err(|e| ConvertError::Malformed(e.to_string()))?
                }
                None => None,
            };
            match text {
                Some(text) => (BodyType::Text, Bytes::from(text.into_bytes())),
                None => (BodyType::TextNull, Bytes::new()),
            }
        }
        MessageKind::Bytes => (BodyType::Bytes, content.clone().unwrap_or_default()),
        MessageKind::Map => (BodyType::Map, content.clone().unwrap_or_default()),
        MessageKind::Object => (BodyType::Object, content.clone().unwrap_or_default()),
        MessageKind::Stream => (BodyType::Stream, content.clone().unwrap_or_default()),
        MessageKind::Blob(_) => return Err(ConvertError::Blob),
    };
    let mut headers = Vec::new();
    if let Some(id) = &m.correlation_id {
        headers.push(Header::text(CORRELATION_ID, id.clone()));
    }
    if let Some(reply_to) = &m.reply_to {
        headers.push(Header::text(
            REPLY_TO,
            crate::protocol::destination_to_core(&stomp_name(reply_to)),
        ));
    }
    if let Some(t) = &m.jms_type {
        headers.push(Header::text(TYPE, t.clone()));
    }
    if let Some(group) = &m.group_id {
        headers.push(Header::text(GROUP_ID, group.clone()));
        headers.push(Header {
            name: GROUP_SEQ.into(),
            value: m.group_sequence.to_string(),
            kind: PropertyType::Int as i32,
        });
    }
    if let Some(original) = &m.original_destination {
        if let Ok(d) = core_destination(original) {
            headers.push(Header::text(ORIGINAL_DESTINATION, d.canonical()));
        }
    }
    if let Some(props) = &m.marshalled_properties {
        let props =
            PrimitiveMap::decode(props).map_err(|e| ConvertError::Malformed(e.to_string()))?;
        for (name, value) in props.entries {
            if let Some(header) = property_header(name, value) {
                headers.push(header);
            }
        }
    }
    let message_id = m.message_id.as_ref().map(message_id_text);
    Ok(NewMessage {
        message_id,
        persistent: m.persistent,
        // The session knows whether the destination is temporary.
        temporary: false,
        expiration: m.expiration.max(0),
        priority: u32::from(m.priority.min(9)),
        timestamp: m.timestamp,
        headers,
        body_type,
        body,
    })
}

/// A JMS property as a header; `None` for values JMS properties cannot hold (maps, lists,
/// byte arrays), which are dropped. A null property is kept, as a header of type null.
fn property_header(name: String, value: PrimitiveValue) -> Option<Header> {
    let (value, kind) = match value {
        PrimitiveValue::Bool(v) => (v.to_string(), PropertyType::Boolean),
        PrimitiveValue::Byte(v) => (v.to_string(), PropertyType::Byte),
        PrimitiveValue::Short(v) => (v.to_string(), PropertyType::Short),
        PrimitiveValue::Int(v) => (v.to_string(), PropertyType::Int),
        PrimitiveValue::Long(v) => (v.to_string(), PropertyType::Long),
        PrimitiveValue::Double(v) => (java_text(format!("{v:e}")), PropertyType::Double),
        PrimitiveValue::Float(v) => (java_text(format!("{v:e}")), PropertyType::Float),
        PrimitiveValue::String(v) => (v, PropertyType::String),
        PrimitiveValue::Char(c) => (
            char::from_u32(u32::from(c))
                .unwrap_or('\u{fffd}')
                .to_string(),
            PropertyType::Char,
        ),
        PrimitiveValue::Null => (String::new(), PropertyType::Null),
        PrimitiveValue::Map(_) | PrimitiveValue::List(_) => {
            let mut wrapped = PrimitiveMap::new();
            wrapped.insert(WRAPPED, value);
            let mut out = BytesMut::new();
            if let Err(e) = wrapped.encode(&mut out) {
                tracing::debug!(property = %name, error = %e, "dropping a property that cannot be encoded");
                return None;
            }
            let hex = out.iter().map(|b| format!("{b:02x}")).collect();
            (hex, PropertyType::Openwire)
        }
        PrimitiveValue::Bytes(_) => {
            tracing::debug!(property = %name, "dropping a property JMS cannot carry");
            return None;
        }
    };
    Some(Header {
        name,
        value,
        kind: kind as i32,
    })
}

/// A floating-point number as Java's `Double.toString` (or `Float.toString`) writes it, which is
/// what ActiveMQ shows a STOMP reader of a JMS client's property: `1.0`, `0.001`, `1.0E7`,
/// `1.5E-4`, `Infinity`, `NaN`, `-0.0`. `scientific` is Rust's shortest `{:e}` form of it
/// (`1e7`, `-1.5e-4`, `inf`, `NaN`), whose digits it keeps.
fn java_text(scientific: String) -> String {
    if scientific == "NaN" {
        return scientific;
    }
    let (sign, unsigned) = match scientific.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", scientific.as_str()),
    };
    let Some((mantissa, exponent)) = unsigned.split_once('e') else {
        return format!("{sign}Infinity");
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return scientific;
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits.bytes().all(|d| d == b'0') {
        return format!("{sign}0.0");
    }
    if (-3..7).contains(&exponent) {
        let point = exponent + 1;
        let (whole, fraction) = if point <= 0 {
            (
                "0".to_string(),
                format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)),
            )
        } else {
            let point = point as usize;
            let whole = format!("{digits:0<point$}");
            let fraction = digits.get(point..).unwrap_or("").to_string();
            (whole[..point].to_string(), fraction)
        };
        let fraction = if fraction.is_empty() {
            "0".into()
        } else {
            fraction
        };
        return format!("{sign}{whole}.{fraction}");
    }
    let (first, rest) = digits.split_at(1);
    let rest = if rest.is_empty() { "0" } else { rest };
    format!("{sign}{first}.{rest}E{exponent}")
}

/// A header's value as the typed property a JMS client expects (a string when it does not
/// parse as its declared type).
fn property_value(h: &Header) -> PrimitiveValue {
    let text = || PrimitiveValue::String(h.value.clone());
    match PropertyType::try_from(h.kind).unwrap_or(PropertyType::String) {
        PropertyType::String => text(),
        PropertyType::Null => PrimitiveValue::Null,
        PropertyType::Boolean => match h.value.as_str() {
            "true" => PrimitiveValue::Bool(true),
            "false" => PrimitiveValue::Bool(false),
            _ => text(),
        },
        PropertyType::Byte => h
            .value
            .parse()
            .map_or_else(|_| text(), PrimitiveValue::Byte),
        PropertyType::Short => h
            .value
            .parse()
            .map_or_else(|_| text(), PrimitiveValue::Short),
        PropertyType::Int => h.value.parse().map_or_else(|_| text(), PrimitiveValue::Int),
        PropertyType::Long => h
            .value
            .parse()
            .map_or_else(|_| text(), PrimitiveValue::Long),
        PropertyType::Double => h
            .value
            .parse()
            .map_or_else(|_| text(), PrimitiveValue::Double),
        PropertyType::Float => h
            .value
            .parse()
            .map_or_else(|_| text(), PrimitiveValue::Float),
        PropertyType::Char => {
            let mut units = h.value.encode_utf16();
            match (units.next(), units.next()) {
                (Some(unit), None) => PrimitiveValue::Char(unit),
                _ => text(),
            }
        }
        PropertyType::Openwire => unwrap_property(&h.value).unwrap_or_else(text),
    }
}

/// The entry of the one-entry map a map or list property is kept in (see `property_header`).
const WRAPPED: &str = "v";

/// A map or list property back from its hex form; `None` if it is not one.
fn unwrap_property(hex: &str) -> Option<PrimitiveValue> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    PrimitiveMap::decode(&bytes).ok()?.get(WRAPPED).cloned()
}

/// The OpenWire message a consumer on `destination` receives for a stored message.
/// `broker_sequence_id` goes into the message id; the client echoes it in its acks.
pub fn to_openwire(
    stored: &StoredMessage,
    destination: &OwDestination,
    redeliveries: u32,
    broker_sequence_id: i64,
    now_ms: i64,
) -> Result<Message, ConvertError> {
    let body_type = BodyType::try_from(stored.body_type).unwrap_or(BodyType::Unspecified);
    let body_type = match body_type {
        BodyType::Unspecified if std::str::from_utf8(&stored.body).is_ok() => BodyType::Text,
        BodyType::Unspecified => BodyType::Bytes,
        other => other,
    };
    let (kind, content) = match body_type {
        BodyType::None => (MessageKind::Message, None),
        BodyType::Text => {
            let text = String::from_utf8_lossy(&stored.body);
            let mut out = BytesMut::with_capacity(stored.body.len() + 8);
            encode_text_body(Some(&text), &mut out)
                .map_err(|e| ConvertError::Malformed(e.to_string()))?;
            (MessageKind::Text, Some(out.freeze()))
        }
        BodyType::TextNull => (MessageKind::Text, None),
        // No body: the producer's content was null (an empty map or stream marshals to a few
        // bytes). The JMS client reads null content as an empty map, a null object, an empty
        // stream; empty bytes would fail to unmarshal.
        BodyType::Map => (MessageKind::Map, non_empty(&stored.body)),
        BodyType::Object => (MessageKind::Object, non_empty(&stored.body)),
        BodyType::Stream => (MessageKind::Stream, non_empty(&stored.body)),
        BodyType::Bytes | BodyType::Unspecified => (MessageKind::Bytes, Some(stored.body.clone())),
    };
    let mut m = Message {
        kind,
        content,
        persistent: stored.persistent,
        expiration: stored.expiration,
        priority: stored.priority.min(9) as u8,
        timestamp: stored.timestamp,
        redelivery_counter: i32::try_from(redeliveries).unwrap_or(i32::MAX),
        broker_in_time: stored.timestamp,
        broker_out_time: now_ms,
        ..Message::default()
    };
    let id = parse_message_id(&stored.message_id, broker_sequence_id);
    m.producer_id = id.producer_id.clone();
    m.message_id = Some(id);
    // The destination the producer addressed, keeping the subscriber's class (temporary or
    // not) when it is the subscriber's own destination.
    m.destination = Some(match parse_destination(&stored.destination) {
        Some(d) if core_destination(&d).ok() == core_destination(destination).ok() => {
            destination.clone()
        }
        Some(d) => d,
        None => destination.clone(),
    });
    let mut props = PrimitiveMap::new();
    // The first of repeated names wins; a set, since a message may carry many thousands.
    let mut named = std::collections::HashSet::new();
    for h in &stored.headers {
        match h.name.as_str() {
            CORRELATION_ID => m.correlation_id = Some(h.value.clone()),
            // One that names no destination (a STOMP client's free text) is a string
            // property, as ActiveMQ keeps it.
            REPLY_TO if parse_destination(&h.value).is_none() => {
                if named.insert(h.name.as_str()) {
                    props.entries.push((h.name.clone(), property_value(h)));
                }
            }
            REPLY_TO => m.reply_to = parse_destination(&h.value),
            TYPE => m.jms_type = Some(h.value.clone()),
            GROUP_ID => m.group_id = Some(h.value.clone()),
            GROUP_SEQ => m.group_sequence = h.value.parse().unwrap_or(0),
            ORIGINAL_DESTINATION => m.original_destination = parse_destination(&h.value),
            _ => {
                if named.insert(h.name.as_str()) {
                    props.entries.push((h.name.clone(), property_value(h)));
                }
            }
        }
    }
    if !props.entries.is_empty() {
        let mut out = BytesMut::new();
        props
            .encode(&mut out)
            .map_err(|e| ConvertError::Malformed(e.to_string()))?;
        m.marshalled_properties = Some(out.freeze());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> ProducerId {
        ProducerId {
            connection_id: Some("ID:host-4100-1700000000000-1:1".into()),
            value: 3,
            session_id: 2,
        }
    }

    #[test]
    fn openwire_message_ids_round_trip_exactly() {
        let id = MessageId {
            text_view: None,
            producer_id: Some(producer()),
            producer_sequence_id: 42,
            broker_sequence_id: 0,
        };
        let text = message_id_text(&id);
        assert_eq!(text, "ID:host-4100-1700000000000-1:1:2:3:42");
        let back = parse_message_id(&text, 7);
        assert_eq!(back.producer_id, id.producer_id);
        assert_eq!(back.producer_sequence_id, 42);
        assert_eq!(back.broker_sequence_id, 7);
        assert_eq!(back.text_view, None);
    }

    #[test]
    fn foreign_message_ids_stay_distinct_and_print_unchanged() {
        let a = parse_message_id("ID:node-18c:3:17", 1);
        let b = parse_message_id("ID:node-18c:3:18", 2);
        let c = parse_message_id("no-colon", 3);
        assert_eq!(message_id_text(&a), "ID:node-18c:3:17");
        assert_eq!(message_id_text(&c), "no-colon");
        let pair = |m: &MessageId| (m.producer_id.clone(), m.producer_sequence_id);
        assert_ne!(pair(&a), pair(&b));
        assert_ne!(pair(&a), pair(&c));
        assert!(a.producer_id.is_some() && c.producer_id.is_some());
    }

    #[test]
    fn destinations_map_both_ways() {
        let temp = OwDestination {
            kind: DestinationKind::TempQueue,
            physical_name: Some("ID:h-1:1:1".into()),
        };
        assert_eq!(stomp_name(&temp), "/temp-queue/ID:h-1:1:1");
        assert_eq!(parse_destination(&stomp_name(&temp)), Some(temp.clone()));
        assert_eq!(
            core_destination(&temp),
            Ok(Destination::Queue("ID:h-1:1:1".into()))
        );
        assert_eq!(
            parse_destination("topic://prices"),
            Some(OwDestination::topic("prices"))
        );
        assert!(core_destination(&OwDestination::queue("a,b")).is_err());
        assert!(core_destination(&OwDestination::default()).is_err());
    }

    /// A composite destination's members are of its kind unless prefixed (ActiveMQ's
    /// `ActiveMQDestination.createDestination(name, defaultType)`).
    #[test]
    fn a_composite_destinations_members_are_of_its_kind_unless_prefixed() {
        let composite = OwDestination {
            kind: DestinationKind::Topic,
            physical_name: Some("a, queue://b,topic://c".into()),
        };
        assert_eq!(
            core_destinations(&composite).unwrap(),
            [
                Destination::Topic("a".into()),
                Destination::Queue("b".into()),
                Destination::Topic("c".into())
            ]
        );
        assert_eq!(
            core_destinations(&OwDestination::queue("a")).unwrap(),
            [Destination::Queue("a".into())]
        );
    }

    /// A body limit no test message reaches.
    const MAX: usize = 64 << 20;

    fn text_body(text: &str) -> Bytes {
        let mut out = BytesMut::new();
        encode_text_body(Some(text), &mut out).unwrap();
        out.freeze()
    }

    #[test]
    fn a_text_message_with_headers_and_properties_survives_the_core() {
        let mut props = PrimitiveMap::new();
        props.insert("flag", PrimitiveValue::Bool(true));
        props.insert("count", PrimitiveValue::Int(-5));
        props.insert("big", PrimitiveValue::Long(1 << 40));
        props.insert("ratio", PrimitiveValue::Double(0.1));
        props.insert("name", PrimitiveValue::String("x y".into()));
        props.insert("initial", PrimitiveValue::Char(u16::from(b'x')));
        let mut nested = PrimitiveMap::new();
        nested.insert("a", PrimitiveValue::Int(1));
        props.insert("mapped", PrimitiveValue::Map(nested));
        props.insert(
            "listed",
            PrimitiveValue::List(vec![
                PrimitiveValue::Int(1),
                PrimitiveValue::String("x".into()),
            ]),
        );
        props.insert("tenth", PrimitiveValue::Float(0.1));
        props.insert("unset", PrimitiveValue::Null);
        let mut marshalled = BytesMut::new();
        props.encode(&mut marshalled).unwrap();
        let sent = Message {
            kind: MessageKind::Text,
            destination: Some(OwDestination::queue("orders")),
            message_id: Some(MessageId {
                text_view: None,
                producer_id: Some(producer()),
                producer_sequence_id: 9,
                broker_sequence_id: 0,
            }),
            correlation_id: Some("c-1".into()),
            reply_to: Some(OwDestination {
                kind: DestinationKind::TempQueue,
                physical_name: Some("ID:t:1:1".into()),
            }),
            jms_type: Some("order".into()),
            persistent: true,
            priority: 7,
            expiration: 0,
            timestamp: 1_700_000_000_123,
            content: Some(text_body("héllo")),
            marshalled_properties: Some(marshalled.freeze()),
            ..Message::default()
        };
        let new = to_new_message(&sent, MAX).unwrap();
        assert_eq!(new.body_type, BodyType::Text);
        assert_eq!(&new.body[..], "héllo".as_bytes());
        assert_eq!(
            new.message_id.as_deref(),
            Some("ID:host-4100-1700000000000-1:1:2:3:9")
        );
        let find = |n: &str| {
            new.headers
                .iter()
                .find(|h| h.name == n)
                .unwrap()
                .value
                .clone()
        };
        assert_eq!(find("correlation-id"), "c-1");
        assert_eq!(find("reply-to"), "temp-queue://ID:t:1:1");
        assert_eq!(find("jms-type"), "order");
        assert_eq!(find("count"), "-5");

        let stored = StoredMessage {
            message_id: new.message_id.clone().unwrap(),
            destination: "queue://orders".into(),
            persistent: true,
            priority: new.priority,
            timestamp: new.timestamp,
            headers: new.headers.clone(),
            body: new.body.clone(),
            body_type: new.body_type as i32,
            ..StoredMessage::default()
        };
        let back = to_openwire(&stored, &OwDestination::queue("orders"), 2, 77, 5).unwrap();
        assert_eq!(back.kind, MessageKind::Text);
        assert_eq!(back.content, sent.content);
        assert_eq!(back.correlation_id, sent.correlation_id);
        assert_eq!(back.reply_to, sent.reply_to);
        assert_eq!(back.jms_type, sent.jms_type);
        assert_eq!(back.priority, 7);
        assert_eq!(back.timestamp, sent.timestamp);
        assert_eq!(back.redelivery_counter, 2);
        assert_eq!(back.message_id.as_ref().unwrap().broker_sequence_id, 77);
        assert_eq!(back.producer_id, Some(producer()));
        let props_back =
            PrimitiveMap::decode(back.marshalled_properties.as_ref().unwrap()).unwrap();
        assert_eq!(props_back, props);
    }

    #[test]
    fn stomp_bodies_become_text_or_bytes_messages() {
        let stored = StoredMessage {
            message_id: "ID:n-1:1:1".into(),
            destination: "queue://q".into(),
            body: Bytes::from_static(b"plain"),
            body_type: BodyType::Text as i32,
            headers: vec![Header::text("color", "red")],
            ..StoredMessage::default()
        };
        let m = to_openwire(&stored, &OwDestination::queue("q"), 0, 1, 0).unwrap();
        assert_eq!(m.kind, MessageKind::Text);
        assert_eq!(
            decode_text_body(m.content.as_ref().unwrap())
                .unwrap()
                .as_deref(),
            Some("plain")
        );
        let props = PrimitiveMap::decode(m.marshalled_properties.as_ref().unwrap()).unwrap();
        assert_eq!(props.string("color"), Some("red"));

        let bytes = StoredMessage {
            body: Bytes::from_static(&[0xff, 0, 1]),
            body_type: BodyType::Unspecified as i32,
            ..stored
        };
        let m = to_openwire(&bytes, &OwDestination::queue("q"), 0, 1, 0).unwrap();
        assert_eq!(m.kind, MessageKind::Bytes);
        assert_eq!(m.content.as_deref(), Some(&[0xff, 0, 1][..]));
    }

    /// A MapMessage, ObjectMessage or StreamMessage sent with null content (an empty map
    /// made with `createMapMessage()`, `createObjectMessage(null)`) goes back out with null
    /// content, which the JMS client reads as an empty map, a null object, an empty stream;
    /// empty content would fail to unmarshal (`EOFException`). A TextMessage with null text
    /// goes back out with null text, not "" (and "" stays "").
    #[test]
    fn null_bodies_stay_null() {
        let kinds = [
            MessageKind::Map,
            MessageKind::Object,
            MessageKind::Stream,
            MessageKind::Text,
        ];
        for kind in kinds {
            let sent = Message {
                kind: kind.clone(),
                content: None,
                ..Message::default()
            };
            let new = to_new_message(&sent, 1 << 20).unwrap();
            let stored = StoredMessage {
                message_id: "ID:n-1:1:1".into(),
                destination: "queue://q".into(),
                body: new.body,
                body_type: new.body_type as i32,
                ..StoredMessage::default()
            };
            let out = to_openwire(&stored, &OwDestination::queue("q"), 0, 1, 0).unwrap();
            assert_eq!((out.kind, out.content), (kind, None));
        }
        let mut empty = BytesMut::new();
        encode_text_body(Some(""), &mut empty).unwrap();
        let sent = Message {
            kind: MessageKind::Text,
            content: Some(empty.freeze()),
            ..Message::default()
        };
        let new = to_new_message(&sent, 1 << 20).unwrap();
        assert_eq!(new.body_type, BodyType::Text);
        let stored = StoredMessage {
            message_id: "ID:n-1:1:2".into(),
            destination: "queue://q".into(),
            body: new.body,
            body_type: new.body_type as i32,
            ..StoredMessage::default()
        };
        let out = to_openwire(&stored, &OwDestination::queue("q"), 0, 1, 0).unwrap();
        let text = decode_text_body(out.content.as_deref().expect("content")).unwrap();
        assert_eq!(text.as_deref(), Some(""));
    }

    #[test]
    fn blob_messages_are_refused_by_name() {
        let m = Message {
            kind: MessageKind::Blob(Default::default()),
            ..Message::default()
        };
        assert_eq!(to_new_message(&m, MAX).unwrap_err(), ConvertError::Blob);
    }

    /// What Java's `DeflaterOutputStream` (and `Deflater`) write: a zlib stream.
    fn deflate(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    /// `jms.useCompression=true`: a text body is the zlib stream of its usual encoding; a
    /// bytes body is its length (4 bytes, big endian) and the zlib stream of the bytes. Both
    /// are stored inflated, as if sent uncompressed.
    #[test]
    fn compressed_bodies_are_stored_inflated() {
        let text = "compressible ".repeat(100);
        let sent = Message {
            kind: MessageKind::Text,
            compressed: true,
            content: Some(Bytes::from(deflate(&text_body(&text)))),
            ..Message::default()
        };
        let new = to_new_message(&sent, MAX).unwrap();
        assert_eq!(
            (new.body_type, &new.body[..]),
            (BodyType::Text, text.as_bytes())
        );

        // As the client writes it: the length, then the deflated buffer the body was written
        // into, whose unused end (zeros) is deflated too.
        let body = vec![7u8; 5000];
        let mut content = (body.len() as i32).to_be_bytes().to_vec();
        content.extend(deflate(&[&body[..], &[0u8; 3192]].concat()));
        let sent = Message {
            kind: MessageKind::Bytes,
            compressed: true,
            content: Some(Bytes::from(content)),
            ..Message::default()
        };
        let new = to_new_message(&sent, MAX).unwrap();
        assert_eq!((new.body_type, &new.body[..]), (BodyType::Bytes, &body[..]));

        // Map, Object and Stream bodies are compressed whole, like a text body.
        let sent = Message {
            kind: MessageKind::Map,
            compressed: true,
            content: Some(Bytes::from(deflate(b"map encoding"))),
            ..Message::default()
        };
        assert_eq!(
            &to_new_message(&sent, MAX).unwrap().body[..],
            b"map encoding"
        );
    }

    /// A body that does not inflate, or would inflate past the frame limit (a few KB of zeros
    /// deflate to a few bytes), is refused naming the problem, before it takes any memory.
    #[test]
    fn bad_or_oversized_compressed_bodies_are_refused() {
        let bomb = deflate(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 2048);
        for kind in [MessageKind::Text, MessageKind::Object] {
            let sent = Message {
                kind,
                compressed: true,
                content: Some(Bytes::from(bomb.clone())),
                ..Message::default()
            };
            assert_eq!(
                to_new_message(&sent, 4096).unwrap_err(),
                ConvertError::InflatesTooLarge(4096)
            );
        }
        // More than the stream holds.
        let mut said_more = 2_000_000i32.to_be_bytes().to_vec();
        said_more.extend(&bomb);
        let mut said_large = (1i32 << 20).to_be_bytes().to_vec();
        said_large.extend(&bomb);
        for (content, limit) in [
            ([&3i32.to_be_bytes()[..], b"not zlib"].concat(), MAX),
            (vec![0, 0], MAX),
            ((-1i32).to_be_bytes().to_vec(), MAX),
            (said_more, MAX),
        ] {
            let sent = Message {
                kind: MessageKind::Bytes,
                compressed: true,
                content: Some(Bytes::from(content.clone())),
                ..Message::default()
            };
            let err = to_new_message(&sent, limit).unwrap_err();
            assert!(
                matches!(err, ConvertError::BadCompression(_)),
                "{content:?}: {err:?}"
            );
            assert!(err.to_string().contains("jms.useCompression"), "{err}");
        }
        let sent = Message {
            kind: MessageKind::Bytes,
            compressed: true,
            content: Some(Bytes::from(said_large)),
            ..Message::default()
        };
        assert_eq!(
            to_new_message(&sent, 4096).unwrap_err(),
            ConvertError::InflatesTooLarge(4096)
        );
    }

    /// JMSType and a property called `type` are two things, both ways.
    #[test]
    fn a_property_named_type_stays_a_property() {
        let mut props = PrimitiveMap::new();
        props.insert("type", PrimitiveValue::String("invoice".into()));
        let mut marshalled = BytesMut::new();
        props.encode(&mut marshalled).unwrap();
        let sent = Message {
            kind: MessageKind::Text,
            destination: Some(OwDestination::queue("orders")),
            jms_type: Some("order".into()),
            content: Some(text_body("x")),
            marshalled_properties: Some(marshalled.freeze()),
            ..Message::default()
        };
        let new = to_new_message(&sent, MAX).unwrap();
        let stored = StoredMessage {
            message_id: "ID:h-1:1:1:1".into(),
            destination: "queue://orders".into(),
            headers: new.headers.clone(),
            body: new.body.clone(),
            body_type: new.body_type as i32,
            ..StoredMessage::default()
        };
        let back = to_openwire(&stored, &OwDestination::queue("orders"), 0, 1, 0).unwrap();
        let props_back = back
            .marshalled_properties
            .as_ref()
            .map(|p| PrimitiveMap::decode(p).unwrap())
            .unwrap_or_default();
        assert_eq!(
            (back.jms_type.as_deref(), props_back.string("type")),
            (Some("order"), Some("invoice"))
        );
    }

    /// Doubles and floats are written as Java writes them (what ActiveMQ shows a STOMP reader),
    /// and read back to the same value.
    #[test]
    fn floating_point_properties_are_written_as_java_writes_them() {
        let double = |v: f64| java_text(format!("{v:e}"));
        for (v, text) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e20, "1.0E20"),
            (1e-7, "1.0E-7"),
            (1.5e-4, "1.5E-4"),
            (0.001, "0.001"),
            (1234567.0, "1234567.0"),
            (1e7, "1.0E7"),
            (-2.5e10, "-2.5E10"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::MAX, "1.7976931348623157E308"),
        ] {
            assert_eq!(double(v), text, "{v:e}");
            let back: f64 = text.parse().unwrap();
            assert!(back == v || (v.is_nan() && back.is_nan()), "{text}");
        }
        let float = |v: f32| java_text(format!("{v:e}"));
        assert_eq!(float(1e10), "1.0E10");
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(2.5), "2.5");
    }

    /// A STOMP client's `reply-to` that names no destination reaches a JMS client as the
    /// string property `reply-to`, with no JMSReplyTo, as ActiveMQ hands it over.
    #[test]
    fn a_reply_to_naming_no_destination_is_a_string_property() {
        let stored = StoredMessage {
            message_id: "ID:h-1:1:1:1".into(),
            destination: "queue://orders".into(),
            headers: vec![Header::text(REPLY_TO, "plainname")],
            body_type: BodyType::Text as i32,
            ..StoredMessage::default()
        };
        let back = to_openwire(&stored, &OwDestination::queue("orders"), 0, 1, 0).unwrap();
        assert_eq!(back.reply_to, None);
        let props = PrimitiveMap::decode(back.marshalled_properties.as_ref().unwrap()).unwrap();
        assert_eq!(props.string(REPLY_TO), Some("plainname"));
    }
}
