//! Loose marshalling of every data structure and command, field by field in the order of
//! ActiveMQ's `v12` marshallers, with the fields that older versions (1..=11) lack. Field
//! history (from ActiveMQ's `openwire/v1`..`v12` marshallers): v2 added MessagePull, ProducerInfo
//! `dispatchAsync`, BrokerInfo `duplexConnection`/`networkConnection`/`connectionId`, ConsumerControl
//! `flush`/`start`/`stop`, ConnectionInfo `clientMaster` and Message `droppable`; v3 added
//! ProducerAck, ActiveMQBlobMessage, ProducerInfo `windowSize`, MessagePull `correlationId`/`messageId`,
//! ConsumerInfo `networkConsumerPath`, BrokerInfo `brokerUploadUrl`/`networkProperties` and
//! Message `cluster`/`brokerInTime`/`brokerOutTime`; v5 added RemoveInfo `lastDeliveredSequenceId`;
//! v6 added ConsumerControl `destination`, ConnectionInfo `faultTolerant`/`failoverReconnect` and
//! ConnectionControl `connectedBrokers`/`reconnectTo`/`rebalanceConnection`; v7, v8 and v10 are
//! marked where they are read.
//!
//! Marshal cache off: a "cached" object field is encoded exactly like a nested one
//! (bool not-null, type byte, body).

use bytes::{BufMut, BytesMut};

use super::command::type_code::*;
use super::command::*;
use super::error::CodecError;
use super::primitive::read_map;
use super::wire::{put_bool, put_byte_seq, put_string, Reader};
use super::Format;

type Result<T> = std::result::Result<T, CodecError>;

/// The magic bytes at the start of a `WireFormatInfo` body.
pub(crate) const MAGIC: &[u8; 8] = b"ActiveMQ";

/// The Java class name of a type code ("unknown" for codes this codec does not know).
pub(crate) fn type_name(code: u8) -> &'static str {
    match code {
        WIRE_FORMAT_INFO => "WireFormatInfo",
        BROKER_INFO => "BrokerInfo",
        CONNECTION_INFO => "ConnectionInfo",
        SESSION_INFO => "SessionInfo",
        CONSUMER_INFO => "ConsumerInfo",
        PRODUCER_INFO => "ProducerInfo",
        TRANSACTION_INFO => "TransactionInfo",
        DESTINATION_INFO => "DestinationInfo",
        REMOVE_SUBSCRIPTION_INFO => "RemoveSubscriptionInfo",
        KEEP_ALIVE_INFO => "KeepAliveInfo",
        SHUTDOWN_INFO => "ShutdownInfo",
        REMOVE_INFO => "RemoveInfo",
        CONTROL_COMMAND => "ControlCommand",
        FLUSH_COMMAND => "FlushCommand",
        CONNECTION_ERROR => "ConnectionError",
        CONSUMER_CONTROL => "ConsumerControl",
        CONNECTION_CONTROL => "ConnectionControl",
        PRODUCER_ACK => "ProducerAck",
        MESSAGE_PULL => "MessagePull",
        MESSAGE_DISPATCH => "MessageDispatch",
        MESSAGE_ACK => "MessageAck",
        ACTIVEMQ_MESSAGE => "ActiveMQMessage",
        ACTIVEMQ_BYTES_MESSAGE => "ActiveMQBytesMessage",
        ACTIVEMQ_MAP_MESSAGE => "ActiveMQMapMessage",
        ACTIVEMQ_OBJECT_MESSAGE => "ActiveMQObjectMessage",
        ACTIVEMQ_STREAM_MESSAGE => "ActiveMQStreamMessage",
        ACTIVEMQ_TEXT_MESSAGE => "ActiveMQTextMessage",
        ACTIVEMQ_BLOB_MESSAGE => "ActiveMQBlobMessage",
        RESPONSE => "Response",
        EXCEPTION_RESPONSE => "ExceptionResponse",
        DATA_RESPONSE => "DataResponse",
        DATA_ARRAY_RESPONSE => "DataArrayResponse",
        INTEGER_RESPONSE => "IntegerResponse",
        ACTIVEMQ_QUEUE => "ActiveMQQueue",
        ACTIVEMQ_TOPIC => "ActiveMQTopic",
        ACTIVEMQ_TEMP_QUEUE => "ActiveMQTempQueue",
        ACTIVEMQ_TEMP_TOPIC => "ActiveMQTempTopic",
        MESSAGE_ID => "MessageId",
        LOCAL_TRANSACTION_ID => "LocalTransactionId",
        XA_TRANSACTION_ID => "XATransactionId",
        CONNECTION_ID => "ConnectionId",
        SESSION_ID => "SessionId",
        CONSUMER_ID => "ConsumerId",
        PRODUCER_ID => "ProducerId",
        BROKER_ID => "BrokerId",
        _ => "unknown",
    }
}

fn is_known(code: u8) -> bool {
    code != NULL && type_name(code) != "unknown"
}

pub(crate) fn is_command(code: u8) -> bool {
    matches!(code, WIRE_FORMAT_INFO..=INTEGER_RESPONSE) && is_known(code)
}

/// A message type (`ActiveMQMessage` to `ActiveMQBlobMessage`).
pub(crate) fn is_message(code: u8) -> bool {
    matches!(code, ACTIVEMQ_MESSAGE..=ACTIVEMQ_BLOB_MESSAGE)
}

/// The first OpenWire version that has type `code` (every other known type is in v1).
fn type_since(code: u8) -> i32 {
    match code {
        MESSAGE_PULL => 2,
        PRODUCER_ACK | ACTIVEMQ_BLOB_MESSAGE => 3,
        _ => 1,
    }
}

/// Reading or writing type `code` at a version that lacks it is an unknown type.
fn check_exists(code: u8, f: Format, what: &'static str, offset: usize) -> Result<()> {
    if f.version >= type_since(code) {
        return Ok(());
    }
    Err(CodecError::UnknownType {
        what,
        type_code: code,
        offset,
    })
}

/// A field that versions before `version` lack: read it, or take its default.
fn since<T: Default>(f: Format, version: i32, read: impl FnOnce() -> Result<T>) -> Result<T> {
    since_or(f, version, T::default(), read)
}

/// Like [`since`], with the value Java gives the field when the version lacks it.
fn since_or<T>(f: Format, version: i32, absent: T, read: impl FnOnce() -> Result<T>) -> Result<T> {
    if f.version >= version {
        read()
    } else {
        Ok(absent)
    }
}

/// An object that can sit in a nested (or, cache off, cached) object field.
pub(crate) trait Nested: Sized {
    /// What the field may hold, for errors.
    const EXPECTED: &'static str;
    fn accepts(code: u8) -> bool;
    /// Reads the body of an object of type `code` (already checked by `accepts`).
    fn read_typed(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Self>;
    fn type_code(&self) -> u8;
    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()>;
}

fn read_nested<T: Nested>(r: &mut Reader<'_>, f: Format, what: &'static str) -> Result<Option<T>> {
    if !r.bool(what)? {
        return Ok(None);
    }
    read_present::<T>(r, f, what).map(Some)
}

fn read_present<T: Nested>(r: &mut Reader<'_>, f: Format, what: &'static str) -> Result<T> {
    let at = r.offset();
    let code = r.u8(what)?;
    if !T::accepts(code) {
        return Err(if is_known(code) {
            CodecError::UnexpectedType {
                what,
                type_code: code,
                expected: T::EXPECTED,
                offset: at,
            }
        } else {
            CodecError::UnknownType {
                what,
                type_code: code,
                offset: at,
            }
        });
    }
    check_exists(code, f, what, at)?;
    r.enter(what)?;
    let value = T::read_typed(r, f, code)?;
    r.leave();
    Ok(value)
}

fn write_nested<T: Nested>(out: &mut BytesMut, f: Format, value: Option<&T>) -> Result<()> {
    match value {
        None => put_bool(out, false),
        Some(v) => {
            check_writable(v.type_code(), f)?;
            put_bool(out, true);
            out.put_u8(v.type_code());
            v.write_body(out, f)?;
        }
    }
    Ok(())
}

/// An array of nested objects: bool not-null, i16 count, nested objects (none may be null).
fn read_array<T: Nested>(
    r: &mut Reader<'_>,
    f: Format,
    what: &'static str,
) -> Result<Option<Vec<T>>> {
    if !r.bool(what)? {
        return Ok(None);
    }
    let at = r.offset();
    let count = r.i16(what)?;
    let count =
        usize::try_from(count).map_err(|_| r.malformed(what, at, "negative array length"))?;
    let mut items = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let item_at = r.offset();
        match read_nested::<T>(r, f, what)? {
            Some(item) => items.push(item),
            None => return Err(r.malformed(what, item_at, "null array element (not supported)")),
        }
    }
    Ok(Some(items))
}

fn write_array<T: Nested>(
    out: &mut BytesMut,
    f: Format,
    items: &Option<Vec<T>>,
    what: &'static str,
) -> Result<()> {
    match items {
        None => put_bool(out, false),
        Some(items) => {
            let count = i16::try_from(items.len()).map_err(|_| CodecError::Unencodable {
                what,
                reason: "more than 32767 array elements",
            })?;
            put_bool(out, true);
            out.put_i16(count);
            for item in items {
                write_nested(out, f, Some(item))?;
            }
        }
    }
    Ok(())
}

fn read_header(r: &mut Reader<'_>, name: &'static str) -> Result<(i32, bool)> {
    Ok((r.i32(name)?, r.bool(name)?))
}

fn write_header(out: &mut BytesMut, command_id: i32, response_required: bool) {
    out.put_i32(command_id);
    put_bool(out, response_required);
}

// ---------------------------------------------------------------------------------------------
// Throwable
// ---------------------------------------------------------------------------------------------

fn read_throwable(r: &mut Reader<'_>, f: Format, what: &'static str) -> Result<Option<Throwable>> {
    if !r.bool(what)? {
        return Ok(None);
    }
    r.enter(what)?;
    let class_name = r.string(what)?;
    let message = r.string(what)?;
    let mut stack_trace = Vec::new();
    let mut cause = None;
    if f.stack_trace {
        let at = r.offset();
        let frames = r.i16(what)?;
        let frames = usize::try_from(frames)
            .map_err(|_| r.malformed(what, at, "negative stack trace length"))?;
        stack_trace.reserve(frames.min(r.remaining() / 8));
        for _ in 0..frames {
            stack_trace.push(StackTraceElement {
                class_name: r.string(what)?,
                method_name: r.string(what)?,
                file_name: r.string(what)?,
                line_number: r.i32(what)?,
            });
        }
        cause = read_throwable(r, f, what)?.map(Box::new);
    }
    r.leave();
    Ok(Some(Throwable {
        class_name,
        message,
        stack_trace,
        cause,
    }))
}

fn write_throwable(
    out: &mut BytesMut,
    f: Format,
    t: Option<&Throwable>,
    what: &'static str,
) -> Result<()> {
    write_throwable_at(out, f, t, what, 0)
}

fn write_throwable_at(
    out: &mut BytesMut,
    f: Format,
    t: Option<&Throwable>,
    what: &'static str,
    depth: u32,
) -> Result<()> {
    let Some(t) = t else {
        put_bool(out, false);
        return Ok(());
    };
    if depth >= super::wire::MAX_DEPTH {
        return Err(CodecError::Unencodable {
            what,
            reason: "throwable causes nested too deep",
        });
    }
    put_bool(out, true);
    put_string(out, &t.class_name, what)?;
    put_string(out, &t.message, what)?;
    if f.stack_trace {
        let frames = i16::try_from(t.stack_trace.len()).map_err(|_| CodecError::Unencodable {
            what,
            reason: "more than 32767 stack frames",
        })?;
        out.put_i16(frames);
        for e in &t.stack_trace {
            put_string(out, &e.class_name, what)?;
            put_string(out, &e.method_name, what)?;
            put_string(out, &e.file_name, what)?;
            out.put_i32(e.line_number);
        }
        write_throwable_at(out, f, t.cause.as_deref(), what, depth + 1)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Data structures
// ---------------------------------------------------------------------------------------------

macro_rules! single {
    ($ty:ty, $code:expr, $name:literal, |$r:ident, $f:ident| $read:expr, |$s:ident, $out:ident, $wf:ident| $write:block) => {
        impl Nested for $ty {
            const EXPECTED: &'static str = $name;
            fn accepts(code: u8) -> bool {
                code == $code
            }
            fn read_typed($r: &mut Reader<'_>, $f: Format, _code: u8) -> Result<Self> {
                let _ = $f;
                $read
            }
            fn type_code(&self) -> u8 {
                $code
            }
            fn write_body(&self, $out: &mut BytesMut, $wf: Format) -> Result<()> {
                let $s = self;
                let _ = $wf;
                $write
                Ok(())
            }
        }
    };
}

single!(
    ConnectionId,
    CONNECTION_ID,
    "ConnectionId",
    |r, f| Ok(ConnectionId {
        value: r.string("ConnectionId.value")?
    }),
    |s, out, f| {
        put_string(out, &s.value, "ConnectionId.value")?;
    }
);

single!(
    BrokerId,
    BROKER_ID,
    "BrokerId",
    |r, f| Ok(BrokerId {
        value: r.string("BrokerId.value")?
    }),
    |s, out, f| {
        put_string(out, &s.value, "BrokerId.value")?;
    }
);

single!(
    SessionId,
    SESSION_ID,
    "SessionId",
    |r, f| Ok(SessionId {
        connection_id: r.string("SessionId.connectionId")?,
        value: r.i64("SessionId.value")?,
    }),
    |s, out, f| {
        put_string(out, &s.connection_id, "SessionId.connectionId")?;
        out.put_i64(s.value);
    }
);

single!(
    ProducerId,
    PRODUCER_ID,
    "ProducerId",
    |r, f| Ok(ProducerId {
        connection_id: r.string("ProducerId.connectionId")?,
        value: r.i64("ProducerId.value")?,
        session_id: r.i64("ProducerId.sessionId")?,
    }),
    |s, out, f| {
        put_string(out, &s.connection_id, "ProducerId.connectionId")?;
        out.put_i64(s.value);
        out.put_i64(s.session_id);
    }
);

single!(
    ConsumerId,
    CONSUMER_ID,
    "ConsumerId",
    |r, f| Ok(ConsumerId {
        connection_id: r.string("ConsumerId.connectionId")?,
        session_id: r.i64("ConsumerId.sessionId")?,
        value: r.i64("ConsumerId.value")?,
    }),
    |s, out, f| {
        put_string(out, &s.connection_id, "ConsumerId.connectionId")?;
        out.put_i64(s.session_id);
        out.put_i64(s.value);
    }
);

single!(
    MessageId,
    MESSAGE_ID,
    "MessageId",
    |r, f| Ok(MessageId {
        text_view: since(f, 10, || r.string("MessageId.textView"))?,
        producer_id: read_nested(r, f, "MessageId.producerId")?,
        producer_sequence_id: r.i64("MessageId.producerSequenceId")?,
        broker_sequence_id: r.i64("MessageId.brokerSequenceId")?,
    }),
    |s, out, f| {
        if f.version >= 10 {
            put_string(out, &s.text_view, "MessageId.textView")?;
        }
        write_nested(out, f, s.producer_id.as_ref())?;
        out.put_i64(s.producer_sequence_id);
        out.put_i64(s.broker_sequence_id);
    }
);

impl Nested for Destination {
    const EXPECTED: &'static str = "a destination";
    fn accepts(code: u8) -> bool {
        matches!(code, ACTIVEMQ_QUEUE..=ACTIVEMQ_TEMP_TOPIC)
    }
    fn read_typed(r: &mut Reader<'_>, _f: Format, code: u8) -> Result<Self> {
        let kind = match code {
            ACTIVEMQ_QUEUE => DestinationKind::Queue,
            ACTIVEMQ_TOPIC => DestinationKind::Topic,
            ACTIVEMQ_TEMP_QUEUE => DestinationKind::TempQueue,
            _ => DestinationKind::TempTopic,
        };
        Ok(Destination {
            kind,
            physical_name: r.string("ActiveMQDestination.physicalName")?,
        })
    }
    fn type_code(&self) -> u8 {
        Destination::type_code(self)
    }
    fn write_body(&self, out: &mut BytesMut, _f: Format) -> Result<()> {
        put_string(out, &self.physical_name, "ActiveMQDestination.physicalName")
    }
}

impl Nested for TransactionId {
    const EXPECTED: &'static str = "a transaction id";
    fn accepts(code: u8) -> bool {
        matches!(code, LOCAL_TRANSACTION_ID | XA_TRANSACTION_ID)
    }
    fn read_typed(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Self> {
        if code == LOCAL_TRANSACTION_ID {
            Ok(TransactionId::Local(LocalTransactionId {
                value: r.i64("LocalTransactionId.value")?,
                connection_id: read_nested(r, f, "LocalTransactionId.connectionId")?,
            }))
        } else {
            Ok(TransactionId::Xa(XaTransactionId {
                format_id: r.i32("XATransactionId.formatId")?,
                global_transaction_id: r.byte_seq("XATransactionId.globalTransactionId")?,
                branch_qualifier: r.byte_seq("XATransactionId.branchQualifier")?,
            }))
        }
    }
    fn type_code(&self) -> u8 {
        match self {
            TransactionId::Local(_) => LOCAL_TRANSACTION_ID,
            TransactionId::Xa(_) => XA_TRANSACTION_ID,
        }
    }
    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()> {
        match self {
            TransactionId::Local(t) => {
                out.put_i64(t.value);
                write_nested(out, f, t.connection_id.as_ref())
            }
            TransactionId::Xa(t) => {
                out.put_i32(t.format_id);
                put_byte_seq(
                    out,
                    &t.global_transaction_id,
                    "XATransactionId.globalTransactionId",
                )?;
                put_byte_seq(out, &t.branch_qualifier, "XATransactionId.branchQualifier")
            }
        }
    }
}

impl Nested for DataStructure {
    const EXPECTED: &'static str = "a data structure";
    fn accepts(code: u8) -> bool {
        is_known(code)
    }
    fn read_typed(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Self> {
        Ok(match code {
            ACTIVEMQ_QUEUE..=ACTIVEMQ_TEMP_TOPIC => {
                DataStructure::Destination(Destination::read_typed(r, f, code)?)
            }
            LOCAL_TRANSACTION_ID | XA_TRANSACTION_ID => {
                DataStructure::TransactionId(TransactionId::read_typed(r, f, code)?)
            }
            MESSAGE_ID => DataStructure::MessageId(MessageId::read_typed(r, f, code)?),
            CONNECTION_ID => DataStructure::ConnectionId(ConnectionId::read_typed(r, f, code)?),
            SESSION_ID => DataStructure::SessionId(SessionId::read_typed(r, f, code)?),
            CONSUMER_ID => DataStructure::ConsumerId(ConsumerId::read_typed(r, f, code)?),
            PRODUCER_ID => DataStructure::ProducerId(ProducerId::read_typed(r, f, code)?),
            BROKER_ID => DataStructure::BrokerId(BrokerId::read_typed(r, f, code)?),
            _ => DataStructure::Command(Box::new(Command::read_typed(r, f, code)?)),
        })
    }
    fn type_code(&self) -> u8 {
        match self {
            DataStructure::Command(c) => c.type_code(),
            DataStructure::Destination(d) => d.type_code(),
            DataStructure::ConnectionId(_) => CONNECTION_ID,
            DataStructure::SessionId(_) => SESSION_ID,
            DataStructure::ProducerId(_) => PRODUCER_ID,
            DataStructure::ConsumerId(_) => CONSUMER_ID,
            DataStructure::BrokerId(_) => BROKER_ID,
            DataStructure::MessageId(_) => MESSAGE_ID,
            DataStructure::TransactionId(t) => Nested::type_code(t),
        }
    }
    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()> {
        match self {
            DataStructure::Command(c) => c.write_body(out, f),
            DataStructure::Destination(d) => Nested::write_body(d, out, f),
            DataStructure::ConnectionId(v) => v.write_body(out, f),
            DataStructure::SessionId(v) => v.write_body(out, f),
            DataStructure::ProducerId(v) => v.write_body(out, f),
            DataStructure::ConsumerId(v) => v.write_body(out, f),
            DataStructure::BrokerId(v) => v.write_body(out, f),
            DataStructure::MessageId(v) => v.write_body(out, f),
            DataStructure::TransactionId(v) => v.write_body(out, f),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

fn read_wire_format_info(r: &mut Reader<'_>) -> Result<WireFormatInfo> {
    let at = r.offset();
    let magic = r.take(MAGIC.len(), "WireFormatInfo.magic")?;
    if magic != MAGIC {
        return Err(r.malformed("WireFormatInfo.magic", at, "not \"ActiveMQ\""));
    }
    let version = r.i32("WireFormatInfo.version")?;
    const WHAT: &str = "WireFormatInfo.marshalledProperties";
    let properties = if r.bool(WHAT)? {
        let len = r.length(WHAT)?;
        let base = r.offset();
        let bytes = r.take(len, WHAT)?;
        let mut sub = Reader::new(bytes, base);
        let map = read_map(&mut sub, WHAT)?;
        sub.finish(WHAT)?;
        Some(map)
    } else {
        None
    };
    Ok(WireFormatInfo {
        version,
        properties,
    })
}

fn write_wire_format_info(out: &mut BytesMut, w: &WireFormatInfo) -> Result<()> {
    out.put_slice(MAGIC);
    out.put_i32(w.version);
    match &w.properties {
        None => put_bool(out, false),
        Some(map) => {
            put_bool(out, true);
            let len_at = out.len();
            out.put_i32(0);
            map.encode(out)?;
            let len = out.len() - len_at - 4;
            let len = i32::try_from(len).map_err(|_| CodecError::Unencodable {
                what: "WireFormatInfo.marshalledProperties",
                reason: "longer than 2^31-1 bytes",
            })?;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

#[inline(never)]
fn read_broker_info(r: &mut Reader<'_>, f: Format) -> Result<BrokerInfo> {
    let (command_id, response_required) = read_header(r, "BrokerInfo")?;
    Ok(BrokerInfo {
        command_id,
        response_required,
        broker_id: read_nested(r, f, "BrokerInfo.brokerId")?,
        broker_url: r.string("BrokerInfo.brokerURL")?,
        peer_broker_infos: read_array(r, f, "BrokerInfo.peerBrokerInfos")?,
        broker_name: r.string("BrokerInfo.brokerName")?,
        slave_broker: r.bool("BrokerInfo.slaveBroker")?,
        master_broker: r.bool("BrokerInfo.masterBroker")?,
        fault_tolerant_configuration: r.bool("BrokerInfo.faultTolerantConfiguration")?,
        duplex_connection: f.version >= 2 && r.bool("BrokerInfo.duplexConnection")?,
        network_connection: f.version >= 2 && r.bool("BrokerInfo.networkConnection")?,
        connection_id: since(f, 2, || r.i64("BrokerInfo.connectionId"))?,
        broker_upload_url: since(f, 3, || r.string("BrokerInfo.brokerUploadUrl"))?,
        network_properties: since(f, 3, || r.string("BrokerInfo.networkProperties"))?,
    })
}

fn write_broker_info(out: &mut BytesMut, f: Format, c: &BrokerInfo) -> Result<()> {
    write_header(out, c.command_id, c.response_required);
    write_nested(out, f, c.broker_id.as_ref())?;
    put_string(out, &c.broker_url, "BrokerInfo.brokerURL")?;
    write_array(out, f, &c.peer_broker_infos, "BrokerInfo.peerBrokerInfos")?;
    put_string(out, &c.broker_name, "BrokerInfo.brokerName")?;
    put_bool(out, c.slave_broker);
    put_bool(out, c.master_broker);
    put_bool(out, c.fault_tolerant_configuration);
    if f.version >= 2 {
        put_bool(out, c.duplex_connection);
        put_bool(out, c.network_connection);
        out.put_i64(c.connection_id);
    }
    if f.version >= 3 {
        put_string(out, &c.broker_upload_url, "BrokerInfo.brokerUploadUrl")?;
        put_string(out, &c.network_properties, "BrokerInfo.networkProperties")?;
    }
    Ok(())
}

impl Nested for BrokerInfo {
    const EXPECTED: &'static str = "BrokerInfo";
    fn accepts(code: u8) -> bool {
        code == BROKER_INFO
    }
    fn read_typed(r: &mut Reader<'_>, f: Format, _code: u8) -> Result<Self> {
        read_broker_info(r, f)
    }
    fn type_code(&self) -> u8 {
        BROKER_INFO
    }
    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()> {
        write_broker_info(out, f, self)
    }
}

#[inline(never)]
fn read_connection_info(r: &mut Reader<'_>, f: Format) -> Result<ConnectionInfo> {
    let (command_id, response_required) = read_header(r, "ConnectionInfo")?;
    Ok(ConnectionInfo {
        command_id,
        response_required,
        connection_id: read_nested(r, f, "ConnectionInfo.connectionId")?,
        client_id: r.string("ConnectionInfo.clientId")?,
        password: r.string("ConnectionInfo.password")?,
        user_name: r.string("ConnectionInfo.userName")?,
        broker_path: read_array(r, f, "ConnectionInfo.brokerPath")?,
        broker_master_connector: r.bool("ConnectionInfo.brokerMasterConnector")?,
        manageable: r.bool("ConnectionInfo.manageable")?,
        client_master: f.version >= 2 && r.bool("ConnectionInfo.clientMaster")?,
        fault_tolerant: f.version >= 6 && r.bool("ConnectionInfo.faultTolerant")?,
        failover_reconnect: f.version >= 6 && r.bool("ConnectionInfo.failoverReconnect")?,
        client_ip: since(f, 8, || r.string("ConnectionInfo.clientIp"))?,
    })
}

fn write_connection_info(out: &mut BytesMut, f: Format, c: &ConnectionInfo) -> Result<()> {
    write_header(out, c.command_id, c.response_required);
    write_nested(out, f, c.connection_id.as_ref())?;
    put_string(out, &c.client_id, "ConnectionInfo.clientId")?;
    put_string(out, &c.password, "ConnectionInfo.password")?;
    put_string(out, &c.user_name, "ConnectionInfo.userName")?;
    write_array(out, f, &c.broker_path, "ConnectionInfo.brokerPath")?;
    put_bool(out, c.broker_master_connector);
    put_bool(out, c.manageable);
    if f.version >= 2 {
        put_bool(out, c.client_master);
    }
    if f.version >= 6 {
        put_bool(out, c.fault_tolerant);
        put_bool(out, c.failover_reconnect);
    }
    if f.version >= 8 {
        put_string(out, &c.client_ip, "ConnectionInfo.clientIp")?;
    }
    Ok(())
}

#[inline(never)]
fn read_consumer_info(r: &mut Reader<'_>, f: Format) -> Result<ConsumerInfo> {
    let (command_id, response_required) = read_header(r, "ConsumerInfo")?;
    let consumer_id = read_nested(r, f, "ConsumerInfo.consumerId")?;
    let browser = r.bool("ConsumerInfo.browser")?;
    let destination = read_nested(r, f, "ConsumerInfo.destination")?;
    let prefetch_size = r.i32("ConsumerInfo.prefetchSize")?;
    let maximum_pending_message_limit = r.i32("ConsumerInfo.maximumPendingMessageLimit")?;
    let dispatch_async = r.bool("ConsumerInfo.dispatchAsync")?;
    let selector = r.string("ConsumerInfo.selector")?;
    let client_id = since(f, 10, || r.string("ConsumerInfo.clientId"))?;
    let subscription_name = r.string("ConsumerInfo.subscriptionName")?;
    let no_local = r.bool("ConsumerInfo.noLocal")?;
    let exclusive = r.bool("ConsumerInfo.exclusive")?;
    let retroactive = r.bool("ConsumerInfo.retroactive")?;
    let priority = r.u8("ConsumerInfo.priority")?;
    let broker_path = read_array(r, f, "ConsumerInfo.brokerPath")?;
    const PREDICATE: &str = "ConsumerInfo.additionalPredicate";
    let at = r.offset();
    if r.bool(PREDICATE)? {
        return Err(r.malformed(PREDICATE, at, "a network bridge filter (not supported)"));
    }
    Ok(ConsumerInfo {
        command_id,
        response_required,
        consumer_id,
        browser,
        destination,
        prefetch_size,
        maximum_pending_message_limit,
        dispatch_async,
        selector,
        client_id,
        subscription_name,
        no_local,
        exclusive,
        retroactive,
        priority,
        broker_path,
        network_subscription: r.bool("ConsumerInfo.networkSubscription")?,
        optimized_acknowledge: r.bool("ConsumerInfo.optimizedAcknowledge")?,
        no_range_acks: r.bool("ConsumerInfo.noRangeAcks")?,
        network_consumer_path: since(f, 4, || {
            read_array(r, f, "ConsumerInfo.networkConsumerPath")
        })?,
    })
}

fn write_consumer_info(out: &mut BytesMut, f: Format, c: &ConsumerInfo) -> Result<()> {
    write_header(out, c.command_id, c.response_required);
    write_nested(out, f, c.consumer_id.as_ref())?;
    put_bool(out, c.browser);
    write_nested(out, f, c.destination.as_ref())?;
    out.put_i32(c.prefetch_size);
    out.put_i32(c.maximum_pending_message_limit);
    put_bool(out, c.dispatch_async);
    put_string(out, &c.selector, "ConsumerInfo.selector")?;
    if f.version >= 10 {
        put_string(out, &c.client_id, "ConsumerInfo.clientId")?;
    }
    put_string(out, &c.subscription_name, "ConsumerInfo.subscriptionName")?;
    put_bool(out, c.no_local);
    put_bool(out, c.exclusive);
    put_bool(out, c.retroactive);
    out.put_u8(c.priority);
    write_array(out, f, &c.broker_path, "ConsumerInfo.brokerPath")?;
    put_bool(out, false); // additionalPredicate
    put_bool(out, c.network_subscription);
    put_bool(out, c.optimized_acknowledge);
    put_bool(out, c.no_range_acks);
    if f.version >= 4 {
        write_array(
            out,
            f,
            &c.network_consumer_path,
            "ConsumerInfo.networkConsumerPath",
        )?;
    }
    Ok(())
}

#[inline(never)]
fn read_message(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Message> {
    let (command_id, response_required) = read_header(r, "Message")?;
    let mut m = Message {
        command_id,
        response_required,
        kind: MessageKind::Message,
        producer_id: read_nested(r, f, "Message.producerId")?,
        destination: read_nested(r, f, "Message.destination")?,
        transaction_id: read_nested(r, f, "Message.transactionId")?,
        original_destination: read_nested(r, f, "Message.originalDestination")?,
        message_id: read_nested(r, f, "Message.messageId")?,
        original_transaction_id: read_nested(r, f, "Message.originalTransactionId")?,
        group_id: r.string("Message.groupID")?,
        group_sequence: r.i32("Message.groupSequence")?,
        correlation_id: r.string("Message.correlationId")?,
        persistent: r.bool("Message.persistent")?,
        expiration: r.i64("Message.expiration")?,
        priority: r.u8("Message.priority")?,
        reply_to: read_nested(r, f, "Message.replyTo")?,
        timestamp: r.i64("Message.timestamp")?,
        jms_type: r.string("Message.type")?,
        content: r.byte_seq("Message.content")?,
        marshalled_properties: r.byte_seq("Message.marshalledProperties")?,
        data_structure: read_nested(r, f, "Message.dataStructure")?,
        target_consumer_id: read_nested(r, f, "Message.targetConsumerId")?,
        compressed: r.bool("Message.compressed")?,
        redelivery_counter: r.i32("Message.redeliveryCounter")?,
        broker_path: read_array(r, f, "Message.brokerPath")?,
        arrival: r.i64("Message.arrival")?,
        user_id: r.string("Message.userID")?,
        received_by_df_bridge: r.bool("Message.recievedByDFBridge")?,
        droppable: f.version >= 2 && r.bool("Message.droppable")?,
        cluster: since(f, 3, || read_array(r, f, "Message.cluster"))?,
        broker_in_time: since(f, 3, || r.i64("Message.brokerInTime"))?,
        broker_out_time: since(f, 3, || r.i64("Message.brokerOutTime"))?,
        jmsx_group_first_for_consumer: since(f, 10, || {
            r.bool("Message.jMSXGroupFirstForConsumer")
        })?,
    };
    m.kind = match code {
        ACTIVEMQ_BYTES_MESSAGE => MessageKind::Bytes,
        ACTIVEMQ_MAP_MESSAGE => MessageKind::Map,
        ACTIVEMQ_OBJECT_MESSAGE => MessageKind::Object,
        ACTIVEMQ_STREAM_MESSAGE => MessageKind::Stream,
        ACTIVEMQ_TEXT_MESSAGE => MessageKind::Text,
        ACTIVEMQ_BLOB_MESSAGE => MessageKind::Blob(BlobInfo {
            remote_blob_url: r.string("ActiveMQBlobMessage.remoteBlobUrl")?,
            mime_type: r.string("ActiveMQBlobMessage.mimeType")?,
            deleted_by_broker: r.bool("ActiveMQBlobMessage.deletedByBroker")?,
        }),
        _ => MessageKind::Message,
    };
    Ok(m)
}

fn write_message(out: &mut BytesMut, f: Format, m: &Message) -> Result<()> {
    write_header(out, m.command_id, m.response_required);
    write_nested(out, f, m.producer_id.as_ref())?;
    write_nested(out, f, m.destination.as_ref())?;
    write_nested(out, f, m.transaction_id.as_ref())?;
    write_nested(out, f, m.original_destination.as_ref())?;
    write_nested(out, f, m.message_id.as_ref())?;
    write_nested(out, f, m.original_transaction_id.as_ref())?;
    put_string(out, &m.group_id, "Message.groupID")?;
    out.put_i32(m.group_sequence);
    put_string(out, &m.correlation_id, "Message.correlationId")?;
    put_bool(out, m.persistent);
    out.put_i64(m.expiration);
    out.put_u8(m.priority);
    write_nested(out, f, m.reply_to.as_ref())?;
    out.put_i64(m.timestamp);
    put_string(out, &m.jms_type, "Message.type")?;
    put_byte_seq(out, &m.content, "Message.content")?;
    put_byte_seq(
        out,
        &m.marshalled_properties,
        "Message.marshalledProperties",
    )?;
    write_nested(out, f, m.data_structure.as_ref())?;
    write_nested(out, f, m.target_consumer_id.as_ref())?;
    put_bool(out, m.compressed);
    out.put_i32(m.redelivery_counter);
    write_array(out, f, &m.broker_path, "Message.brokerPath")?;
    out.put_i64(m.arrival);
    put_string(out, &m.user_id, "Message.userID")?;
    put_bool(out, m.received_by_df_bridge);
    if f.version >= 2 {
        put_bool(out, m.droppable);
    }
    if f.version >= 3 {
        write_array(out, f, &m.cluster, "Message.cluster")?;
        out.put_i64(m.broker_in_time);
        out.put_i64(m.broker_out_time);
    }
    if f.version >= 10 {
        put_bool(out, m.jmsx_group_first_for_consumer);
    }
    if let MessageKind::Blob(b) = &m.kind {
        put_string(out, &b.remote_blob_url, "ActiveMQBlobMessage.remoteBlobUrl")?;
        put_string(out, &b.mime_type, "ActiveMQBlobMessage.mimeType")?;
        put_bool(out, b.deleted_by_broker);
    }
    Ok(())
}

impl Nested for Message {
    const EXPECTED: &'static str = "a message";
    fn accepts(code: u8) -> bool {
        is_message(code)
    }
    fn read_typed(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Self> {
        read_message(r, f, code)
    }
    fn type_code(&self) -> u8 {
        Message::type_code(self)
    }
    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()> {
        write_message(out, f, self)
    }
}

impl Nested for Box<Message> {
    const EXPECTED: &'static str = "a message";
    fn accepts(code: u8) -> bool {
        <Message as Nested>::accepts(code)
    }
    fn read_typed(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Self> {
        read_message(r, f, code).map(Box::new)
    }
    fn type_code(&self) -> u8 {
        Message::type_code(self)
    }
    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()> {
        write_message(out, f, self)
    }
}

#[inline(never)]
fn read_session_info(r: &mut Reader<'_>, f: Format) -> Result<SessionInfo> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "SessionInfo")?;
    Ok(SessionInfo {
        command_id,
        response_required,
        session_id: read_nested(r, f, "SessionInfo.sessionId")?,
    })
}

#[inline(never)]
fn read_producer_info(r: &mut Reader<'_>, f: Format) -> Result<ProducerInfo> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ProducerInfo")?;
    Ok(ProducerInfo {
        command_id,
        response_required,
        producer_id: read_nested(r, f, "ProducerInfo.producerId")?,
        destination: read_nested(r, f, "ProducerInfo.destination")?,
        broker_path: read_array(r, f, "ProducerInfo.brokerPath")?,
        dispatch_async: f.version >= 2 && r.bool("ProducerInfo.dispatchAsync")?,
        window_size: since(f, 3, || r.i32("ProducerInfo.windowSize"))?,
    })
}

#[inline(never)]
fn read_transaction_info(r: &mut Reader<'_>, f: Format) -> Result<TransactionInfo> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "TransactionInfo")?;
    Ok(TransactionInfo {
        command_id,
        response_required,
        connection_id: read_nested(r, f, "TransactionInfo.connectionId")?,
        transaction_id: read_nested(r, f, "TransactionInfo.transactionId")?,
        transaction_type: r.u8("TransactionInfo.type")?,
    })
}

#[inline(never)]
fn read_destination_info(r: &mut Reader<'_>, f: Format) -> Result<DestinationInfo> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "DestinationInfo")?;
    Ok(DestinationInfo {
        command_id,
        response_required,
        connection_id: read_nested(r, f, "DestinationInfo.connectionId")?,
        destination: read_nested(r, f, "DestinationInfo.destination")?,
        operation_type: r.u8("DestinationInfo.operationType")?,
        timeout: r.i64("DestinationInfo.timeout")?,
        broker_path: read_array(r, f, "DestinationInfo.brokerPath")?,
    })
}

#[inline(never)]
fn read_remove_subscription_info(r: &mut Reader<'_>, f: Format) -> Result<RemoveSubscriptionInfo> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "RemoveSubscriptionInfo")?;
    Ok(RemoveSubscriptionInfo {
        command_id,
        response_required,
        connection_id: read_nested(r, f, "RemoveSubscriptionInfo.connectionId")?,
        subscription_name: r.string("RemoveSubscriptionInfo.subcriptionName")?,
        client_id: r.string("RemoveSubscriptionInfo.clientId")?,
    })
}

#[inline(never)]
fn read_remove_info(r: &mut Reader<'_>, f: Format) -> Result<RemoveInfo> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "RemoveInfo")?;
    Ok(RemoveInfo {
        command_id,
        response_required,
        object_id: read_nested(r, f, "RemoveInfo.objectId")?,
        // Before v5 there is no such field: -1 is "unknown", as the Java class defaults it.
        last_delivered_sequence_id: since_or(f, 5, -1, || {
            r.i64("RemoveInfo.lastDeliveredSequenceId")
        })?,
    })
}

#[inline(never)]
fn read_control_command(r: &mut Reader<'_>, f: Format) -> Result<ControlCommand> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ControlCommand")?;
    Ok(ControlCommand {
        command_id,
        response_required,
        command: r.string("ControlCommand.command")?,
    })
}

#[inline(never)]
fn read_connection_error(r: &mut Reader<'_>, f: Format) -> Result<ConnectionError> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ConnectionError")?;
    Ok(ConnectionError {
        command_id,
        response_required,
        exception: read_throwable(r, f, "ConnectionError.exception")?,
        connection_id: read_nested(r, f, "ConnectionError.connectionId")?,
    })
}

#[inline(never)]
fn read_consumer_control(r: &mut Reader<'_>, f: Format) -> Result<ConsumerControl> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ConsumerControl")?;
    Ok(ConsumerControl {
        command_id,
        response_required,
        destination: since(f, 6, || read_nested(r, f, "ConsumerControl.destination"))?,
        close: r.bool("ConsumerControl.close")?,
        consumer_id: read_nested(r, f, "ConsumerControl.consumerId")?,
        prefetch: r.i32("ConsumerControl.prefetch")?,
        flush: f.version >= 2 && r.bool("ConsumerControl.flush")?,
        start: f.version >= 2 && r.bool("ConsumerControl.start")?,
        stop: f.version >= 2 && r.bool("ConsumerControl.stop")?,
    })
}

#[inline(never)]
fn read_connection_control(r: &mut Reader<'_>, f: Format) -> Result<ConnectionControl> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ConnectionControl")?;
    Ok(ConnectionControl {
        command_id,
        response_required,
        close: r.bool("ConnectionControl.close")?,
        exit: r.bool("ConnectionControl.exit")?,
        fault_tolerant: r.bool("ConnectionControl.faultTolerant")?,
        resume: r.bool("ConnectionControl.resume")?,
        suspend: r.bool("ConnectionControl.suspend")?,
        connected_brokers: since(f, 6, || r.string("ConnectionControl.connectedBrokers"))?,
        reconnect_to: since(f, 6, || r.string("ConnectionControl.reconnectTo"))?,
        rebalance_connection: f.version >= 6 && r.bool("ConnectionControl.rebalanceConnection")?,
        token: since(f, 8, || r.byte_seq("ConnectionControl.token"))?,
    })
}

#[inline(never)]
fn read_producer_ack(r: &mut Reader<'_>, f: Format) -> Result<ProducerAck> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ProducerAck")?;
    Ok(ProducerAck {
        command_id,
        response_required,
        producer_id: read_nested(r, f, "ProducerAck.producerId")?,
        size: r.i32("ProducerAck.size")?,
    })
}

#[inline(never)]
fn read_message_pull(r: &mut Reader<'_>, f: Format) -> Result<MessagePull> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "MessagePull")?;
    Ok(MessagePull {
        command_id,
        response_required,
        consumer_id: read_nested(r, f, "MessagePull.consumerId")?,
        destination: read_nested(r, f, "MessagePull.destination")?,
        timeout: r.i64("MessagePull.timeout")?,
        correlation_id: since(f, 3, || r.string("MessagePull.correlationId"))?,
        message_id: since(f, 3, || read_nested(r, f, "MessagePull.messageId"))?,
    })
}

#[inline(never)]
fn read_message_dispatch(r: &mut Reader<'_>, f: Format) -> Result<MessageDispatch> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "MessageDispatch")?;
    Ok(MessageDispatch {
        command_id,
        response_required,
        consumer_id: read_nested(r, f, "MessageDispatch.consumerId")?,
        destination: read_nested(r, f, "MessageDispatch.destination")?,
        message: read_nested(r, f, "MessageDispatch.message")?,
        redelivery_counter: r.i32("MessageDispatch.redeliveryCounter")?,
    })
}

#[inline(never)]
fn read_message_ack(r: &mut Reader<'_>, f: Format) -> Result<MessageAck> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "MessageAck")?;
    Ok(MessageAck {
        command_id,
        response_required,
        destination: read_nested(r, f, "MessageAck.destination")?,
        transaction_id: read_nested(r, f, "MessageAck.transactionId")?,
        consumer_id: read_nested(r, f, "MessageAck.consumerId")?,
        ack_type: r.u8("MessageAck.ackType")?,
        first_message_id: read_nested(r, f, "MessageAck.firstMessageId")?,
        last_message_id: read_nested(r, f, "MessageAck.lastMessageId")?,
        message_count: r.i32("MessageAck.messageCount")?,
        poison_cause: since(f, 7, || read_throwable(r, f, "MessageAck.poisonCause"))?,
    })
}

#[inline(never)]
fn read_response(r: &mut Reader<'_>, f: Format) -> Result<Response> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "Response")?;
    Ok(Response {
        command_id,
        response_required,
        correlation_id: r.i32("Response.correlationId")?,
    })
}

#[inline(never)]
fn read_exception_response(r: &mut Reader<'_>, f: Format) -> Result<ExceptionResponse> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "ExceptionResponse")?;
    Ok(ExceptionResponse {
        command_id,
        response_required,
        correlation_id: r.i32("ExceptionResponse.correlationId")?,
        exception: read_throwable(r, f, "ExceptionResponse.exception")?,
    })
}

#[inline(never)]
fn read_data_response(r: &mut Reader<'_>, f: Format) -> Result<DataResponse> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "DataResponse")?;
    Ok(DataResponse {
        command_id,
        response_required,
        correlation_id: r.i32("DataResponse.correlationId")?,
        data: read_nested(r, f, "DataResponse.data")?,
    })
}

#[inline(never)]
fn read_data_array_response(r: &mut Reader<'_>, f: Format) -> Result<DataArrayResponse> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "DataArrayResponse")?;
    Ok(DataArrayResponse {
        command_id,
        response_required,
        correlation_id: r.i32("DataArrayResponse.correlationId")?,
        data: read_array(r, f, "DataArrayResponse.data")?,
    })
}

#[inline(never)]
fn read_integer_response(r: &mut Reader<'_>, f: Format) -> Result<IntegerResponse> {
    let _ = f;
    let (command_id, response_required) = read_header(r, "IntegerResponse")?;
    Ok(IntegerResponse {
        command_id,
        response_required,
        correlation_id: r.i32("IntegerResponse.correlationId")?,
        result: r.i32("IntegerResponse.result")?,
    })
}

impl Nested for Command {
    const EXPECTED: &'static str = "a command";
    fn accepts(code: u8) -> bool {
        is_command(code)
    }

    fn read_typed(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Self> {
        macro_rules! base {
            ($name:literal) => {{
                let (command_id, response_required) = read_header(r, $name)?;
                BaseCommand {
                    command_id,
                    response_required,
                }
            }};
        }
        Ok(match code {
            WIRE_FORMAT_INFO => Command::WireFormatInfo(read_wire_format_info(r)?),
            BROKER_INFO => Command::BrokerInfo(read_broker_info(r, f)?),
            CONNECTION_INFO => Command::ConnectionInfo(read_connection_info(r, f)?),
            SESSION_INFO => Command::SessionInfo(read_session_info(r, f)?),
            CONSUMER_INFO => Command::ConsumerInfo(read_consumer_info(r, f)?),
            PRODUCER_INFO => Command::ProducerInfo(read_producer_info(r, f)?),
            TRANSACTION_INFO => Command::TransactionInfo(read_transaction_info(r, f)?),
            DESTINATION_INFO => Command::DestinationInfo(read_destination_info(r, f)?),
            REMOVE_SUBSCRIPTION_INFO => {
                Command::RemoveSubscriptionInfo(read_remove_subscription_info(r, f)?)
            }
            KEEP_ALIVE_INFO => Command::KeepAliveInfo(base!("KeepAliveInfo")),
            SHUTDOWN_INFO => Command::ShutdownInfo(base!("ShutdownInfo")),
            FLUSH_COMMAND => Command::FlushCommand(base!("FlushCommand")),
            REMOVE_INFO => Command::RemoveInfo(read_remove_info(r, f)?),
            CONTROL_COMMAND => Command::ControlCommand(read_control_command(r, f)?),
            CONNECTION_ERROR => Command::ConnectionError(read_connection_error(r, f)?),
            CONSUMER_CONTROL => Command::ConsumerControl(read_consumer_control(r, f)?),
            CONNECTION_CONTROL => Command::ConnectionControl(read_connection_control(r, f)?),
            PRODUCER_ACK => Command::ProducerAck(read_producer_ack(r, f)?),
            MESSAGE_PULL => Command::MessagePull(read_message_pull(r, f)?),
            MESSAGE_DISPATCH => Command::MessageDispatch(read_message_dispatch(r, f)?),
            MESSAGE_ACK => Command::MessageAck(read_message_ack(r, f)?),
            ACTIVEMQ_MESSAGE..=ACTIVEMQ_BLOB_MESSAGE => {
                Command::Message(Box::new(read_message(r, f, code)?))
            }
            RESPONSE => Command::Response(read_response(r, f)?),
            EXCEPTION_RESPONSE => Command::ExceptionResponse(read_exception_response(r, f)?),
            DATA_RESPONSE => Command::DataResponse(read_data_response(r, f)?),
            DATA_ARRAY_RESPONSE => Command::DataArrayResponse(read_data_array_response(r, f)?),
            INTEGER_RESPONSE => Command::IntegerResponse(read_integer_response(r, f)?),
            _ => {
                return Err(CodecError::UnknownType {
                    what: "command",
                    type_code: code,
                    offset: r.offset().saturating_sub(1),
                })
            }
        })
    }

    fn type_code(&self) -> u8 {
        Command::type_code(self)
    }

    fn write_body(&self, out: &mut BytesMut, f: Format) -> Result<()> {
        match self {
            Command::WireFormatInfo(c) => write_wire_format_info(out, c),
            Command::BrokerInfo(c) => write_broker_info(out, f, c),
            Command::ConnectionInfo(c) => write_connection_info(out, f, c),
            Command::SessionInfo(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.session_id.as_ref())
            }
            Command::ConsumerInfo(c) => write_consumer_info(out, f, c),
            Command::ProducerInfo(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.producer_id.as_ref())?;
                write_nested(out, f, c.destination.as_ref())?;
                write_array(out, f, &c.broker_path, "ProducerInfo.brokerPath")?;
                if f.version >= 2 {
                    put_bool(out, c.dispatch_async);
                }
                if f.version >= 3 {
                    out.put_i32(c.window_size);
                }
                Ok(())
            }
            Command::TransactionInfo(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.connection_id.as_ref())?;
                write_nested(out, f, c.transaction_id.as_ref())?;
                out.put_u8(c.transaction_type);
                Ok(())
            }
            Command::DestinationInfo(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.connection_id.as_ref())?;
                write_nested(out, f, c.destination.as_ref())?;
                out.put_u8(c.operation_type);
                out.put_i64(c.timeout);
                write_array(out, f, &c.broker_path, "DestinationInfo.brokerPath")
            }
            Command::RemoveSubscriptionInfo(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.connection_id.as_ref())?;
                put_string(
                    out,
                    &c.subscription_name,
                    "RemoveSubscriptionInfo.subcriptionName",
                )?;
                put_string(out, &c.client_id, "RemoveSubscriptionInfo.clientId")
            }
            Command::KeepAliveInfo(c) | Command::ShutdownInfo(c) | Command::FlushCommand(c) => {
                write_header(out, c.command_id, c.response_required);
                Ok(())
            }
            Command::RemoveInfo(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.object_id.as_ref())?;
                if f.version >= 5 {
                    out.put_i64(c.last_delivered_sequence_id);
                }
                Ok(())
            }
            Command::ControlCommand(c) => {
                write_header(out, c.command_id, c.response_required);
                put_string(out, &c.command, "ControlCommand.command")
            }
            Command::ConnectionError(c) => {
                write_header(out, c.command_id, c.response_required);
                write_throwable(out, f, c.exception.as_ref(), "ConnectionError.exception")?;
                write_nested(out, f, c.connection_id.as_ref())
            }
            Command::ConsumerControl(c) => {
                write_header(out, c.command_id, c.response_required);
                if f.version >= 6 {
                    write_nested(out, f, c.destination.as_ref())?;
                }
                put_bool(out, c.close);
                write_nested(out, f, c.consumer_id.as_ref())?;
                out.put_i32(c.prefetch);
                if f.version >= 2 {
                    put_bool(out, c.flush);
                    put_bool(out, c.start);
                    put_bool(out, c.stop);
                }
                Ok(())
            }
            Command::ConnectionControl(c) => {
                write_header(out, c.command_id, c.response_required);
                put_bool(out, c.close);
                put_bool(out, c.exit);
                put_bool(out, c.fault_tolerant);
                put_bool(out, c.resume);
                put_bool(out, c.suspend);
                if f.version >= 6 {
                    put_string(
                        out,
                        &c.connected_brokers,
                        "ConnectionControl.connectedBrokers",
                    )?;
                    put_string(out, &c.reconnect_to, "ConnectionControl.reconnectTo")?;
                    put_bool(out, c.rebalance_connection);
                }
                if f.version >= 8 {
                    put_byte_seq(out, &c.token, "ConnectionControl.token")?;
                }
                Ok(())
            }
            Command::ProducerAck(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.producer_id.as_ref())?;
                out.put_i32(c.size);
                Ok(())
            }
            Command::MessagePull(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.consumer_id.as_ref())?;
                write_nested(out, f, c.destination.as_ref())?;
                out.put_i64(c.timeout);
                if f.version >= 3 {
                    put_string(out, &c.correlation_id, "MessagePull.correlationId")?;
                    write_nested(out, f, c.message_id.as_ref())?;
                }
                Ok(())
            }
            Command::MessageDispatch(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.consumer_id.as_ref())?;
                write_nested(out, f, c.destination.as_ref())?;
                write_nested(out, f, c.message.as_ref())?;
                out.put_i32(c.redelivery_counter);
                Ok(())
            }
            Command::MessageAck(c) => {
                write_header(out, c.command_id, c.response_required);
                write_nested(out, f, c.destination.as_ref())?;
                write_nested(out, f, c.transaction_id.as_ref())?;
                write_nested(out, f, c.consumer_id.as_ref())?;
                out.put_u8(c.ack_type);
                write_nested(out, f, c.first_message_id.as_ref())?;
                write_nested(out, f, c.last_message_id.as_ref())?;
                out.put_i32(c.message_count);
                if f.version >= 7 {
                    write_throwable(out, f, c.poison_cause.as_ref(), "MessageAck.poisonCause")?;
                }
                Ok(())
            }
            Command::Message(m) => write_message(out, f, m),
            Command::Response(c) => {
                write_header(out, c.command_id, c.response_required);
                out.put_i32(c.correlation_id);
                Ok(())
            }
            Command::ExceptionResponse(c) => {
                write_header(out, c.command_id, c.response_required);
                out.put_i32(c.correlation_id);
                write_throwable(out, f, c.exception.as_ref(), "ExceptionResponse.exception")
            }
            Command::DataResponse(c) => {
                write_header(out, c.command_id, c.response_required);
                out.put_i32(c.correlation_id);
                write_nested(out, f, c.data.as_ref())
            }
            Command::DataArrayResponse(c) => {
                write_header(out, c.command_id, c.response_required);
                out.put_i32(c.correlation_id);
                write_array(out, f, &c.data, "DataArrayResponse.data")
            }
            Command::IntegerResponse(c) => {
                write_header(out, c.command_id, c.response_required);
                out.put_i32(c.correlation_id);
                out.put_i32(c.result);
                Ok(())
            }
        }
    }
}

/// Reads the body of a top-level command of type `code`.
pub(crate) fn read_command(r: &mut Reader<'_>, f: Format, code: u8) -> Result<Command> {
    check_exists(code, f, "command", r.offset().saturating_sub(1))?;
    r.enter("command")?;
    let command = Command::read_typed(r, f, code)?;
    r.leave();
    Ok(command)
}

/// Writes the body (after the type byte) of a top-level command.
pub(crate) fn write_command(out: &mut BytesMut, f: Format, c: &Command) -> Result<()> {
    check_writable(c.type_code(), f)?;
    c.write_body(out, f)
}

/// Why a command cannot be written at the negotiated version.
pub(crate) const NOT_IN_VERSION: &str = "the negotiated OpenWire version has no such type";

fn check_writable(code: u8, f: Format) -> Result<()> {
    if f.version >= type_since(code) {
        return Ok(());
    }
    Err(CodecError::Unencodable {
        what: type_name(code),
        reason: NOT_IN_VERSION,
    })
}
