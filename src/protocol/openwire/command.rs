//! The OpenWire data structures and commands, one struct per marshaller, fields in v12 order.
//!
//! Nullable Java references are `Option`s; Java `byte` fields that hold codes or priorities are
//! `u8`. Fields that only exist from some version on say so; encoding for an older version
//! drops them and decoding leaves them at their default.

use bytes::Bytes;

use super::primitive::PrimitiveMap;

/// The `DATA_STRUCTURE_TYPE` codes this codec marshals (`CommandTypes`).
pub mod type_code {
    pub const NULL: u8 = 0;
    pub const WIRE_FORMAT_INFO: u8 = 1;
    pub const BROKER_INFO: u8 = 2;
    pub const CONNECTION_INFO: u8 = 3;
    pub const SESSION_INFO: u8 = 4;
    pub const CONSUMER_INFO: u8 = 5;
    pub const PRODUCER_INFO: u8 = 6;
    pub const TRANSACTION_INFO: u8 = 7;
    pub const DESTINATION_INFO: u8 = 8;
    pub const REMOVE_SUBSCRIPTION_INFO: u8 = 9;
    pub const KEEP_ALIVE_INFO: u8 = 10;
    pub const SHUTDOWN_INFO: u8 = 11;
    pub const REMOVE_INFO: u8 = 12;
    pub const CONTROL_COMMAND: u8 = 14;
    pub const FLUSH_COMMAND: u8 = 15;
    pub const CONNECTION_ERROR: u8 = 16;
    pub const CONSUMER_CONTROL: u8 = 17;
    pub const CONNECTION_CONTROL: u8 = 18;
    pub const PRODUCER_ACK: u8 = 19;
    pub const MESSAGE_PULL: u8 = 20;
    pub const MESSAGE_DISPATCH: u8 = 21;
    pub const MESSAGE_ACK: u8 = 22;
    pub const ACTIVEMQ_MESSAGE: u8 = 23;
    pub const ACTIVEMQ_BYTES_MESSAGE: u8 = 24;
    pub const ACTIVEMQ_MAP_MESSAGE: u8 = 25;
    pub const ACTIVEMQ_OBJECT_MESSAGE: u8 = 26;
    pub const ACTIVEMQ_STREAM_MESSAGE: u8 = 27;
    pub const ACTIVEMQ_TEXT_MESSAGE: u8 = 28;
    pub const ACTIVEMQ_BLOB_MESSAGE: u8 = 29;
    pub const RESPONSE: u8 = 30;
    pub const EXCEPTION_RESPONSE: u8 = 31;
    pub const DATA_RESPONSE: u8 = 32;
    pub const DATA_ARRAY_RESPONSE: u8 = 33;
    pub const INTEGER_RESPONSE: u8 = 34;
    pub const ACTIVEMQ_QUEUE: u8 = 100;
    pub const ACTIVEMQ_TOPIC: u8 = 101;
    pub const ACTIVEMQ_TEMP_QUEUE: u8 = 102;
    pub const ACTIVEMQ_TEMP_TOPIC: u8 = 103;
    pub const MESSAGE_ID: u8 = 110;
    pub const LOCAL_TRANSACTION_ID: u8 = 111;
    pub const XA_TRANSACTION_ID: u8 = 112;
    pub const CONNECTION_ID: u8 = 120;
    pub const SESSION_ID: u8 = 121;
    pub const CONSUMER_ID: u8 = 122;
    pub const PRODUCER_ID: u8 = 123;
    pub const BROKER_ID: u8 = 124;
}

// ---------------------------------------------------------------------------------------------
// Data structures
// ---------------------------------------------------------------------------------------------

/// The four destination classes (type codes 100..=103).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DestinationKind {
    /// `ActiveMQQueue` (100).
    #[default]
    Queue,
    /// `ActiveMQTopic` (101).
    Topic,
    /// `ActiveMQTempQueue` (102).
    TempQueue,
    /// `ActiveMQTempTopic` (103).
    TempTopic,
}

/// An `ActiveMQDestination`: its class and physical name (may be a composite `a,b`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Destination {
    /// Queue, topic or a temporary one.
    pub kind: DestinationKind,
    /// The name, e.g. `orders` or `ActiveMQ.Advisory.TempQueue,ActiveMQ.Advisory.TempTopic`.
    pub physical_name: Option<String>,
}

/// `ConnectionId` (120).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ConnectionId {
    /// E.g. `ID:host-12345-1700000000000-1:1`.
    pub value: Option<String>,
}

/// `BrokerId` (124).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BrokerId {
    /// The broker's id string.
    pub value: Option<String>,
}

/// `SessionId` (121).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SessionId {
    /// The owning connection's id string.
    pub connection_id: Option<String>,
    /// The session number (-1 for a connection's implicit session).
    pub value: i64,
}

/// `ProducerId` (123). Note the wire order: connection, value, session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ProducerId {
    /// The owning connection's id string.
    pub connection_id: Option<String>,
    /// The producer number.
    pub value: i64,
    /// The session number.
    pub session_id: i64,
}

/// `ConsumerId` (122). Note the wire order: connection, session, value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ConsumerId {
    /// The owning connection's id string.
    pub connection_id: Option<String>,
    /// The session number.
    pub session_id: i64,
    /// The consumer number.
    pub value: i64,
}

/// Java's `toString()` of a `ProducerId` / `ConsumerId`: `<connection id>:<session>:<number>`.
fn id_text(
    f: &mut std::fmt::Formatter<'_>,
    connection: &Option<String>,
    session: i64,
    value: i64,
) -> std::fmt::Result {
    write!(
        f,
        "{}:{session}:{value}",
        connection.as_deref().unwrap_or("")
    )
}

impl std::fmt::Display for ProducerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        id_text(f, &self.connection_id, self.session_id, self.value)
    }
}

impl std::fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        id_text(f, &self.connection_id, self.session_id, self.value)
    }
}

/// `MessageId` (110).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MessageId {
    /// A free-form id replacing the structured one (v10+; e.g. ids from other protocols).
    pub text_view: Option<String>,
    /// The producer that sent the message.
    pub producer_id: Option<ProducerId>,
    /// Counts 1, 2, 3... per producer.
    pub producer_sequence_id: i64,
    /// Assigned by the broker.
    pub broker_sequence_id: i64,
}

/// `LocalTransactionId` (111).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LocalTransactionId {
    /// The transaction number within the connection.
    pub value: i64,
    /// The owning connection.
    pub connection_id: Option<ConnectionId>,
}

/// `XATransactionId` (112).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct XaTransactionId {
    /// The XA format id.
    pub format_id: i32,
    /// The global transaction id.
    pub global_transaction_id: Option<Bytes>,
    /// The branch qualifier.
    pub branch_qualifier: Option<Bytes>,
}

/// A `TransactionId`: local or XA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionId {
    /// A JMS local transaction.
    Local(LocalTransactionId),
    /// An XA transaction.
    Xa(XaTransactionId),
}

/// One frame of a Java stack trace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StackTraceElement {
    /// The declaring class.
    pub class_name: Option<String>,
    /// The method.
    pub method_name: Option<String>,
    /// The source file, if known.
    pub file_name: Option<String>,
    /// The line number (negative when unknown or native).
    pub line_number: i32,
}

/// A Java `Throwable` as loose encoding carries it.
///
/// The stack trace and the cause are only on the wire when `StackTraceEnabled` was
/// negotiated ([`super::Format::stack_trace`]); otherwise they are dropped on encoding and
/// empty after decoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Throwable {
    /// The exception class, e.g. `javax.jms.JMSSecurityException`.
    pub class_name: Option<String>,
    /// The message.
    pub message: Option<String>,
    /// The stack trace.
    pub stack_trace: Vec<StackTraceElement>,
    /// The cause.
    pub cause: Option<Box<Throwable>>,
}

/// As Java's `Throwable.toString()`: `class: message`, or the class alone.
impl std::fmt::Display for Throwable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let class = self.class_name.as_deref().unwrap_or("java.lang.Throwable");
        match &self.message {
            Some(message) => write!(f, "{class}: {message}"),
            None => f.write_str(class),
        }
    }
}

/// Any marshallable object, for fields typed `DataStructure` in Java
/// (`Message.dataStructure`, `DataResponse.data`, `RemoveInfo.objectId`...).
#[derive(Debug, Clone, PartialEq)]
pub enum DataStructure {
    /// A command (e.g. the `DestinationInfo` inside an advisory message).
    Command(Box<Command>),
    /// A queue, topic or temporary destination.
    Destination(Destination),
    /// A connection id.
    ConnectionId(ConnectionId),
    /// A session id.
    SessionId(SessionId),
    /// A producer id.
    ProducerId(ProducerId),
    /// A consumer id.
    ConsumerId(ConsumerId),
    /// A broker id.
    BrokerId(BrokerId),
    /// A message id.
    MessageId(MessageId),
    /// A transaction id.
    TransactionId(TransactionId),
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// `WireFormatInfo` (1): the first frame each side sends. Has no command id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireFormatInfo {
    /// The highest OpenWire version the sender speaks.
    pub version: i32,
    /// The options (`StackTraceEnabled`, `MaxInactivityDuration`...); `None` if not sent.
    pub properties: Option<PrimitiveMap>,
}

/// `BrokerInfo` (2).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BrokerInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub broker_id: Option<BrokerId>,
    pub broker_url: Option<String>,
    pub peer_broker_infos: Option<Vec<BrokerInfo>>,
    pub broker_name: Option<String>,
    pub slave_broker: bool,
    pub master_broker: bool,
    pub fault_tolerant_configuration: bool,
    pub duplex_connection: bool,
    pub network_connection: bool,
    pub connection_id: i64,
    pub broker_upload_url: Option<String>,
    pub network_properties: Option<String>,
}

/// `ConnectionInfo` (3).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub connection_id: Option<ConnectionId>,
    pub client_id: Option<String>,
    pub password: Option<String>,
    pub user_name: Option<String>,
    pub broker_path: Option<Vec<BrokerId>>,
    pub broker_master_connector: bool,
    pub manageable: bool,
    pub client_master: bool,
    pub fault_tolerant: bool,
    /// Set when a failover client replays its state after a reconnect.
    pub failover_reconnect: bool,
    /// v8+.
    pub client_ip: Option<String>,
}

/// `SessionInfo` (4).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub session_id: Option<SessionId>,
}

/// `ConsumerInfo` (5).
///
/// `additionalPredicate` (a `BooleanExpression`, only ever set by broker networks) is not
/// modelled: it encodes as null and a non-null one is rejected on decoding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumerInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub consumer_id: Option<ConsumerId>,
    pub browser: bool,
    pub destination: Option<Destination>,
    pub prefetch_size: i32,
    pub maximum_pending_message_limit: i32,
    pub dispatch_async: bool,
    pub selector: Option<String>,
    /// v10+.
    pub client_id: Option<String>,
    pub subscription_name: Option<String>,
    pub no_local: bool,
    pub exclusive: bool,
    pub retroactive: bool,
    pub priority: u8,
    pub broker_path: Option<Vec<BrokerId>>,
    pub network_subscription: bool,
    pub optimized_acknowledge: bool,
    pub no_range_acks: bool,
    pub network_consumer_path: Option<Vec<ConsumerId>>,
}

/// `ProducerInfo` (6).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProducerInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub producer_id: Option<ProducerId>,
    pub destination: Option<Destination>,
    pub broker_path: Option<Vec<BrokerId>>,
    pub dispatch_async: bool,
    pub window_size: i32,
}

/// `TransactionInfo` (7). `transaction_type`: 0 BEGIN, 1 PREPARE, 2 COMMIT_ONE_PHASE,
/// 3 COMMIT_TWO_PHASE, 4 ROLLBACK, 5 RECOVER, 6 FORGET, 7 END.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransactionInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub connection_id: Option<ConnectionId>,
    pub transaction_id: Option<TransactionId>,
    pub transaction_type: u8,
}

/// `DestinationInfo` (8). `operation_type`: 0 add, 1 remove.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DestinationInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub connection_id: Option<ConnectionId>,
    pub destination: Option<Destination>,
    pub operation_type: u8,
    pub timeout: i64,
    pub broker_path: Option<Vec<BrokerId>>,
}

/// `RemoveSubscriptionInfo` (9): unsubscribe a durable subscription.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoveSubscriptionInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub connection_id: Option<ConnectionId>,
    pub subscription_name: Option<String>,
    pub client_id: Option<String>,
}

/// A command with only the base fields: `KeepAliveInfo` (10), `ShutdownInfo` (11),
/// `FlushCommand` (15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BaseCommand {
    pub command_id: i32,
    pub response_required: bool,
}

/// `RemoveInfo` (12): close the connection, session, consumer or producer named by
/// `object_id`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoveInfo {
    pub command_id: i32,
    pub response_required: bool,
    pub object_id: Option<DataStructure>,
    pub last_delivered_sequence_id: i64,
}

/// `ControlCommand` (14).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlCommand {
    pub command_id: i32,
    pub response_required: bool,
    pub command: Option<String>,
}

/// `ConnectionError` (16).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionError {
    pub command_id: i32,
    pub response_required: bool,
    pub exception: Option<Throwable>,
    pub connection_id: Option<ConnectionId>,
}

/// `ConsumerControl` (17).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumerControl {
    pub command_id: i32,
    pub response_required: bool,
    pub destination: Option<Destination>,
    pub close: bool,
    pub consumer_id: Option<ConsumerId>,
    pub prefetch: i32,
    pub flush: bool,
    pub start: bool,
    pub stop: bool,
}

/// `ConnectionControl` (18).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionControl {
    pub command_id: i32,
    pub response_required: bool,
    pub close: bool,
    pub exit: bool,
    pub fault_tolerant: bool,
    pub resume: bool,
    pub suspend: bool,
    pub connected_brokers: Option<String>,
    pub reconnect_to: Option<String>,
    pub rebalance_connection: bool,
    /// v8+.
    pub token: Option<Bytes>,
}

/// `ProducerAck` (19): producer flow-control credit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProducerAck {
    pub command_id: i32,
    pub response_required: bool,
    pub producer_id: Option<ProducerId>,
    pub size: i32,
}

/// `MessagePull` (20).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessagePull {
    pub command_id: i32,
    pub response_required: bool,
    pub consumer_id: Option<ConsumerId>,
    pub destination: Option<Destination>,
    pub timeout: i64,
    pub correlation_id: Option<String>,
    pub message_id: Option<MessageId>,
}

/// `MessageDispatch` (21). A `None` message answers a `MessagePull` that timed out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageDispatch {
    pub command_id: i32,
    pub response_required: bool,
    pub consumer_id: Option<ConsumerId>,
    pub destination: Option<Destination>,
    pub message: Option<Box<Message>>,
    pub redelivery_counter: i32,
}

/// `MessageAck` (22). `ack_type`: 0 DELIVERED, 1 POISON, 2 STANDARD, 3 REDELIVERED,
/// 4 INDIVIDUAL, 5 UNMATCHED, 6 EXPIRED.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageAck {
    pub command_id: i32,
    pub response_required: bool,
    pub destination: Option<Destination>,
    pub transaction_id: Option<TransactionId>,
    pub consumer_id: Option<ConsumerId>,
    pub ack_type: u8,
    pub first_message_id: Option<MessageId>,
    pub last_message_id: Option<MessageId>,
    pub message_count: i32,
    /// v7+.
    pub poison_cause: Option<Throwable>,
}

/// The fields `ActiveMQBlobMessage` (29) adds to a message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobInfo {
    pub remote_blob_url: Option<String>,
    pub mime_type: Option<String>,
    pub deleted_by_broker: bool,
}

/// Which message class (type code 23..=29) a [`Message`] is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MessageKind {
    /// `ActiveMQMessage` (23): no body.
    #[default]
    Message,
    /// `ActiveMQBytesMessage` (24).
    Bytes,
    /// `ActiveMQMapMessage` (25): `content` is a marshalled primitive map.
    Map,
    /// `ActiveMQObjectMessage` (26): `content` is a serialized Java object.
    Object,
    /// `ActiveMQStreamMessage` (27).
    Stream,
    /// `ActiveMQTextMessage` (28): `content` is int32 length + modified UTF-8
    /// (see [`super::decode_text_body`]), deflated when `compressed`.
    Text,
    /// `ActiveMQBlobMessage` (29), with its extra fields.
    Blob(BlobInfo),
}

/// A message (types 23..=29). The body (`content`) and properties (`marshalled_properties`,
/// a primitive map: [`PrimitiveMap::decode`]) are kept as opaque bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub command_id: i32,
    pub response_required: bool,
    /// The message class.
    pub kind: MessageKind,
    pub producer_id: Option<ProducerId>,
    pub destination: Option<Destination>,
    pub transaction_id: Option<TransactionId>,
    pub original_destination: Option<Destination>,
    pub message_id: Option<MessageId>,
    pub original_transaction_id: Option<TransactionId>,
    pub group_id: Option<String>,
    pub group_sequence: i32,
    pub correlation_id: Option<String>,
    pub persistent: bool,
    pub expiration: i64,
    pub priority: u8,
    pub reply_to: Option<Destination>,
    pub timestamp: i64,
    /// `JMSType`.
    pub jms_type: Option<String>,
    pub content: Option<Bytes>,
    pub marshalled_properties: Option<Bytes>,
    pub data_structure: Option<DataStructure>,
    pub target_consumer_id: Option<ConsumerId>,
    pub compressed: bool,
    pub redelivery_counter: i32,
    pub broker_path: Option<Vec<BrokerId>>,
    pub arrival: i64,
    pub user_id: Option<String>,
    /// Java spells it `recievedByDFBridge`.
    pub received_by_df_bridge: bool,
    pub droppable: bool,
    pub cluster: Option<Vec<BrokerId>>,
    pub broker_in_time: i64,
    pub broker_out_time: i64,
    /// v10+.
    pub jmsx_group_first_for_consumer: bool,
}

/// `Response` (30), and the base of the other responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Response {
    pub command_id: i32,
    pub response_required: bool,
    /// The `command_id` of the command answered.
    pub correlation_id: i32,
}

/// `ExceptionResponse` (31).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExceptionResponse {
    pub command_id: i32,
    pub response_required: bool,
    pub correlation_id: i32,
    pub exception: Option<Throwable>,
}

/// `DataResponse` (32).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataResponse {
    pub command_id: i32,
    pub response_required: bool,
    pub correlation_id: i32,
    pub data: Option<DataStructure>,
}

/// `DataArrayResponse` (33).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataArrayResponse {
    pub command_id: i32,
    pub response_required: bool,
    pub correlation_id: i32,
    pub data: Option<Vec<DataStructure>>,
}

/// `IntegerResponse` (34).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntegerResponse {
    pub command_id: i32,
    pub response_required: bool,
    pub correlation_id: i32,
    pub result: i32,
}

/// Every command this codec decodes and encodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// 1.
    WireFormatInfo(WireFormatInfo),
    /// 2.
    BrokerInfo(BrokerInfo),
    /// 3.
    ConnectionInfo(ConnectionInfo),
    /// 4.
    SessionInfo(SessionInfo),
    /// 5.
    ConsumerInfo(ConsumerInfo),
    /// 6.
    ProducerInfo(ProducerInfo),
    /// 7.
    TransactionInfo(TransactionInfo),
    /// 8.
    DestinationInfo(DestinationInfo),
    /// 9.
    RemoveSubscriptionInfo(RemoveSubscriptionInfo),
    /// 10.
    KeepAliveInfo(BaseCommand),
    /// 11.
    ShutdownInfo(BaseCommand),
    /// 12.
    RemoveInfo(RemoveInfo),
    /// 14.
    ControlCommand(ControlCommand),
    /// 15.
    FlushCommand(BaseCommand),
    /// 16.
    ConnectionError(ConnectionError),
    /// 17.
    ConsumerControl(ConsumerControl),
    /// 18.
    ConnectionControl(ConnectionControl),
    /// 19.
    ProducerAck(ProducerAck),
    /// 20.
    MessagePull(MessagePull),
    /// 21.
    MessageDispatch(MessageDispatch),
    /// 22.
    MessageAck(MessageAck),
    /// 23..=29, by [`Message::kind`].
    Message(Box<Message>),
    /// 30.
    Response(Response),
    /// 31.
    ExceptionResponse(ExceptionResponse),
    /// 32.
    DataResponse(DataResponse),
    /// 33.
    DataArrayResponse(DataArrayResponse),
    /// 34.
    IntegerResponse(IntegerResponse),
}

impl Message {
    /// The type code of this message's class.
    pub fn type_code(&self) -> u8 {
        use type_code::*;
        match self.kind {
            MessageKind::Message => ACTIVEMQ_MESSAGE,
            MessageKind::Bytes => ACTIVEMQ_BYTES_MESSAGE,
            MessageKind::Map => ACTIVEMQ_MAP_MESSAGE,
            MessageKind::Object => ACTIVEMQ_OBJECT_MESSAGE,
            MessageKind::Stream => ACTIVEMQ_STREAM_MESSAGE,
            MessageKind::Text => ACTIVEMQ_TEXT_MESSAGE,
            MessageKind::Blob(_) => ACTIVEMQ_BLOB_MESSAGE,
        }
    }
}

impl Destination {
    /// A queue.
    pub fn queue(name: impl Into<String>) -> Self {
        Destination {
            kind: DestinationKind::Queue,
            physical_name: Some(name.into()),
        }
    }

    /// A topic.
    pub fn topic(name: impl Into<String>) -> Self {
        Destination {
            kind: DestinationKind::Topic,
            physical_name: Some(name.into()),
        }
    }

    /// The type code of this destination's class.
    pub fn type_code(&self) -> u8 {
        use type_code::*;
        match self.kind {
            DestinationKind::Queue => ACTIVEMQ_QUEUE,
            DestinationKind::Topic => ACTIVEMQ_TOPIC,
            DestinationKind::TempQueue => ACTIVEMQ_TEMP_QUEUE,
            DestinationKind::TempTopic => ACTIVEMQ_TEMP_TOPIC,
        }
    }
}

impl Command {
    /// The type code written before the command's body.
    pub fn type_code(&self) -> u8 {
        use type_code::*;
        match self {
            Command::WireFormatInfo(_) => WIRE_FORMAT_INFO,
            Command::BrokerInfo(_) => BROKER_INFO,
            Command::ConnectionInfo(_) => CONNECTION_INFO,
            Command::SessionInfo(_) => SESSION_INFO,
            Command::ConsumerInfo(_) => CONSUMER_INFO,
            Command::ProducerInfo(_) => PRODUCER_INFO,
            Command::TransactionInfo(_) => TRANSACTION_INFO,
            Command::DestinationInfo(_) => DESTINATION_INFO,
            Command::RemoveSubscriptionInfo(_) => REMOVE_SUBSCRIPTION_INFO,
            Command::KeepAliveInfo(_) => KEEP_ALIVE_INFO,
            Command::ShutdownInfo(_) => SHUTDOWN_INFO,
            Command::RemoveInfo(_) => REMOVE_INFO,
            Command::ControlCommand(_) => CONTROL_COMMAND,
            Command::FlushCommand(_) => FLUSH_COMMAND,
            Command::ConnectionError(_) => CONNECTION_ERROR,
            Command::ConsumerControl(_) => CONSUMER_CONTROL,
            Command::ConnectionControl(_) => CONNECTION_CONTROL,
            Command::ProducerAck(_) => PRODUCER_ACK,
            Command::MessagePull(_) => MESSAGE_PULL,
            Command::MessageDispatch(_) => MESSAGE_DISPATCH,
            Command::MessageAck(_) => MESSAGE_ACK,
            Command::Message(m) => m.type_code(),
            Command::Response(_) => RESPONSE,
            Command::ExceptionResponse(_) => EXCEPTION_RESPONSE,
            Command::DataResponse(_) => DATA_RESPONSE,
            Command::DataArrayResponse(_) => DATA_ARRAY_RESPONSE,
            Command::IntegerResponse(_) => INTEGER_RESPONSE,
        }
    }

    /// The command id (0 for `WireFormatInfo`, which has none).
    pub fn command_id(&self) -> i32 {
        self.header().0
    }

    /// Whether the sender waits for a `Response` (false for `WireFormatInfo`).
    pub fn response_required(&self) -> bool {
        self.header().1
    }

    fn header(&self) -> (i32, bool) {
        macro_rules! h {
            ($c:expr) => {
                ($c.command_id, $c.response_required)
            };
        }
        match self {
            Command::WireFormatInfo(_) => (0, false),
            Command::BrokerInfo(c) => h!(c),
            Command::ConnectionInfo(c) => h!(c),
            Command::SessionInfo(c) => h!(c),
            Command::ConsumerInfo(c) => h!(c),
            Command::ProducerInfo(c) => h!(c),
            Command::TransactionInfo(c) => h!(c),
            Command::DestinationInfo(c) => h!(c),
            Command::RemoveSubscriptionInfo(c) => h!(c),
            Command::KeepAliveInfo(c) | Command::ShutdownInfo(c) | Command::FlushCommand(c) => {
                h!(c)
            }
            Command::RemoveInfo(c) => h!(c),
            Command::ControlCommand(c) => h!(c),
            Command::ConnectionError(c) => h!(c),
            Command::ConsumerControl(c) => h!(c),
            Command::ConnectionControl(c) => h!(c),
            Command::ProducerAck(c) => h!(c),
            Command::MessagePull(c) => h!(c),
            Command::MessageDispatch(c) => h!(c),
            Command::MessageAck(c) => h!(c),
            Command::Message(c) => h!(c),
            Command::Response(c) => h!(c),
            Command::ExceptionResponse(c) => h!(c),
            Command::DataResponse(c) => h!(c),
            Command::DataArrayResponse(c) => h!(c),
            Command::IntegerResponse(c) => h!(c),
        }
    }

    /// The Java class name, for logs and errors.
    pub fn name(&self) -> &'static str {
        super::marshal::type_name(self.type_code())
    }
}
