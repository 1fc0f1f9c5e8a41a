//! The configuration file, environment overrides and their validation.
//!
//! Sources, later ones overriding earlier ones:
//! 1. the defaults ([`Config::default`]);
//! 2. the TOML file given with `--config` (a missing or unreadable file is an error);
//! 3. environment variables `FERROMQ_<SECTION>__<KEY>`, e.g. `FERROMQ_REPLICATION__ZK_ADDRESS`,
//!    `FERROMQ_STORE__SYNC` (see [`env`](mod@env) for the details).
//!
//! Keys are ActiveMQ's attribute names in snake_case (`zkAddress` is `zk_address`). Unknown keys
//! are errors, and every error names the key and where its value came from (file or variable).
//!
//! ```toml
//! [broker]
//! name = "ferromq-cluster"        # brokerName; the znode `id` shared by one cluster
//! [transport]
//! connectors = ["tcp://0.0.0.0:61616"]
//! [store]
//! directory = "data"
//! sync = "local_disk"
//! [replication]
//! zk_address = "zk1:2181,zk2:2181,zk3:2181"   # absent: a standalone node
//! ```

pub mod connector;
pub mod env;
pub mod sync;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::broker::virtual_topic::VirtualTopics;
use figment::providers::{Format, Serialized, Toml};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};

pub use connector::{Connector, ConnectorOptions, ConnectorScheme, HostPort};
pub use env::{env_var_name, ENV_PREFIX};
pub use sync::{SyncPolicy, SYNC_WORDS};
pub use units::{format_duration, format_size, parse_duration, parse_size};

/// One MiB, in bytes.
pub const MIB: u64 = 1024 * 1024;
/// The smallest accepted `store.log_size`.
pub const MIN_LOG_SIZE: u64 = MIB;
/// The smallest accepted `broker.max_frame_size`.
pub const MIN_FRAME_SIZE: u64 = 1024;
/// The largest accepted `broker.max_frame_size`: 255 MiB, so that a persistent message as
/// large as a frame, with what the journal adds to it, stays within the journal's record limit
/// of 256 MiB (a larger one would be taken off the wire and then refused at the store).
pub const MAX_FRAME_SIZE: u64 = 255 * MIB;
const _: () = assert!(MAX_FRAME_SIZE < crate::store::record::MAX_RECORD_LEN as u64);

/// A value that could not be parsed (a duration, size, sync word or address). When it comes
/// from a configuration source, figment adds the key and the source to the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    fn new(message: impl Into<String>) -> ParseError {
        ParseError(message.into())
    }
}

/// Why the configuration could not be loaded. Every message names the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file is missing or unreadable.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Syntax error, unknown key or badly typed value. figment's message names the key and
    /// the source (`for key "default.store.sync" in conf/node1.toml TOML file`); several
    /// errors are separated by newlines.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    /// A value that parsed but is not acceptable (found by [`Config::validate`]).
    #[error("invalid configuration: `{key}`{}: {message}", in_origin(.origin))]
    Invalid {
        /// The dotted key, e.g. `replication.replicas`.
        key: String,
        /// Where the value came from (`conf/node1.toml TOML file`,
        /// `environment variable FERROMQ_REPLICATION__REPLICAS`, `built-in default`); `None`
        /// when [`Config::validate`] is called on a value built in code.
        origin: Option<String>,
        message: String,
    },
}

// `?` into anyhow::Error needs this.
const _: () = {
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    let _ = assert_error::<ConfigError>;
};

fn in_origin(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|o| format!(" in {o}"))
        .unwrap_or_default()
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Parse(Box::new(e))
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        origin: None,
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub transport: TransportConfig,
    pub store: StoreConfig,
    pub replication: ReplicationConfig,
    pub admin: AdminConfig,
}

/// `[admin]`: the monitoring endpoint (health, readiness, Prometheus metrics, queues), where
/// ActiveMQ has its web console.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the HTTP endpoint listens, e.g. `tcp://127.0.0.1:8161` (port 0: any free port).
    /// Absent or empty (the default): no endpoint.
    #[serde(with = "connector::optional_tcp_uri")]
    pub bind: Option<HostPort>,
    /// The secret that allows the endpoint's write operations (purge, delete, retry a DLQ):
    /// a request must carry `Authorization: Bearer <token>`. Absent (the default): they are
    /// refused (an empty one too). ActiveMQ's web console asks for a user of its
    /// `jetty-realm.properties`. `FERROMQ_ADMIN__TOKEN` keeps it out of the file.
    #[serde(
        deserialize_with = "units::optional_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<String>,
}

/// `[broker]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// ActiveMQ's `brokerName` (default `"localhost"`); all nodes of one cluster share it (it
    /// is the `id` in their znodes).
    #[serde(deserialize_with = "units::lenient_string")]
    pub name: String,
    /// The largest frame a client may send, in bytes (default 100 MiB, the `wireFormat.maxFrameSize`
    /// of ActiveMQ's shipped `activemq.xml`; `"100MiB"` or an integer).
    #[serde(with = "units::size")]
    pub max_frame_size: u64,
    /// After this many redeliveries a message goes to its DLQ (ActiveMQ's
    /// `maximumRedeliveries`, default 6; -1, as in ActiveMQ: never, kept here as `u32::MAX`).
    #[serde(with = "units::redeliveries")]
    pub max_redeliveries: u32,
    /// Which DLQ a dead letter goes to (ActiveMQ's `<deadLetterStrategy>`): `shared` (the
    /// default: all to `ActiveMQ.DLQ`) or `individual` (one DLQ for each destination, named
    /// by the four keys below).
    pub dead_letter_strategy: DeadLetterStrategyKind,
    /// `individual`: a queue's DLQ is this + the queue's name + `dead_letter_queue_suffix`
    /// (ActiveMQ's `queuePrefix`, default `ActiveMQ.DLQ.Queue.`).
    #[serde(deserialize_with = "units::lenient_string")]
    pub dead_letter_queue_prefix: String,
    /// `individual`: appended to a queue's DLQ name (ActiveMQ's `queueSuffix`, default empty).
    #[serde(deserialize_with = "units::lenient_string")]
    pub dead_letter_queue_suffix: String,
    /// `individual`: a durable topic subscription's DLQ (a queue) is this + the topic's name +
    /// `dead_letter_topic_suffix` (ActiveMQ's `topicPrefix`, default `ActiveMQ.DLQ.Topic.`).
    #[serde(deserialize_with = "units::lenient_string")]
    pub dead_letter_topic_prefix: String,
    /// `individual`: appended to a topic's DLQ name (ActiveMQ's `topicSuffix`, default empty).
    #[serde(deserialize_with = "units::lenient_string")]
    pub dead_letter_topic_suffix: String,
    /// Messages buffered for one slow non-durable topic subscriber beyond its prefetch before
    /// the oldest are discarded (default 1000).
    pub topic_pending_limit: usize,
    /// The most messages one page of a queue browse (a JMS `QueueBrowser`, a STOMP
    /// `browser:true` subscription) reads (ActiveMQ's `<policyEntry maxBrowsePageSize>`,
    /// default 400). A browser is shown the whole queue, page after page; this bounds what one
    /// page reads back from the journal and holds, and how long it holds the broker's lock.
    pub max_browse_page_size: usize,
    /// Bytes of message bodies and headers the broker keeps in memory for queued messages
    /// (ActiveMQ's `<memoryUsage limit>`, default 64 MiB). Past it, the bodies of further persistent
    /// messages stay in the journal and are read back when their turn comes; non-persistent
    /// messages, which are nowhere else, always stay in memory. Also the most body bytes one
    /// non-durable topic subscriber is handed unacknowledged, and keeps pending.
    #[serde(with = "units::size")]
    pub memory_limit: u64,
    /// ActiveMQ's `<systemUsage sendFailIfNoSpace>` (default false): while the store is at
    /// `store.store_limit`, a persistent send (or a commit carrying one) is refused with an
    /// error naming the limit, instead of its connection being held back until there is room.
    pub send_fail_if_no_space: bool,
    /// ActiveMQ's `schedulerSupport` (default false): a message sent with the property or
    /// STOMP header `AMQ_SCHEDULED_DELAY` (milliseconds) is delivered only after that delay.
    /// Off, the property is an ordinary one and the message is delivered at once.
    pub scheduler_support: bool,
    /// ActiveMQ's `useVirtualTopics` (default true): a message sent to a topic
    /// `virtual_topic_name` matches is also copied to its consumer queues.
    pub use_virtual_topics: bool,
    /// ActiveMQ's `<virtualTopic name>`: the topics that are virtual (default
    /// `VirtualTopic.>`; `>` makes every topic one).
    #[serde(deserialize_with = "units::lenient_string")]
    pub virtual_topic_name: String,
    /// ActiveMQ's `<virtualTopic prefix>`: a consumer queue is named this + the topic's name +
    /// `virtual_topic_postfix`, a `*` segment standing for the consuming system (default
    /// `Consumer.*.`).
    #[serde(deserialize_with = "units::lenient_string")]
    pub virtual_topic_prefix: String,
    /// ActiveMQ's `<virtualTopic postfix>` (default empty).
    #[serde(deserialize_with = "units::lenient_string")]
    pub virtual_topic_postfix: String,
    /// login -> password. When non-empty, CONNECT must authenticate.
    #[serde(deserialize_with = "units::lenient_string_map")]
    pub users: BTreeMap<String, String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: "localhost".to_owned(),
            max_frame_size: 100 * MIB,
            max_redeliveries: 6,
            dead_letter_strategy: DeadLetterStrategyKind::Shared,
            dead_letter_queue_prefix: "ActiveMQ.DLQ.Queue.".to_owned(),
            dead_letter_queue_suffix: String::new(),
            dead_letter_topic_prefix: "ActiveMQ.DLQ.Topic.".to_owned(),
            dead_letter_topic_suffix: String::new(),
            topic_pending_limit: 1000,
            max_browse_page_size: 400,
            memory_limit: 64 * MIB,
            send_fail_if_no_space: false,
            scheduler_support: false,
            use_virtual_topics: true,
            virtual_topic_name: "VirtualTopic.>".to_owned(),
            virtual_topic_prefix: "Consumer.*.".to_owned(),
            virtual_topic_postfix: String::new(),
            users: BTreeMap::new(),
        }
    }
}

/// `broker.dead_letter_strategy`: ActiveMQ's `<sharedDeadLetterStrategy>` or
/// `<individualDeadLetterStrategy>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStrategyKind {
    /// Every dead letter goes to `ActiveMQ.DLQ`.
    #[default]
    Shared,
    /// Each destination has its own DLQ (prefix + name + suffix).
    Individual,
}

impl BrokerConfig {
    /// The virtual topic rule of the four `virtual_topic` keys; `None` when
    /// `use_virtual_topics` is off. The error names the key at fault.
    pub fn virtual_topics(&self) -> Result<Option<VirtualTopics>, ConfigError> {
        if !self.use_virtual_topics {
            return Ok(None);
        }
        VirtualTopics::new(
            &self.virtual_topic_name,
            &self.virtual_topic_prefix,
            &self.virtual_topic_postfix,
        )
        .map(Some)
        .map_err(|e| {
            let key = match e.part {
                "name" => "broker.virtual_topic_name",
                "postfix" => "broker.virtual_topic_postfix",
                _ => "broker.virtual_topic_prefix",
            };
            invalid(key, e.message)
        })
    }

    /// CONNECT must carry a valid login and passcode (`users` is non-empty).
    pub fn requires_authentication(&self) -> bool {
        !self.users.is_empty()
    }
}

/// `[transport]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Client listeners (default `["tcp://0.0.0.0:61616"]`): `tcp://` detects the protocol,
    /// `stomp://` is STOMP only.
    #[serde(deserialize_with = "connector::list")]
    pub connectors: Vec<Connector>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connectors: vec![Connector::new(
                ConnectorScheme::Tcp,
                HostPort::new("0.0.0.0", 61616),
            )],
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The store directory (default `data`; a relative path is relative to the working
    /// directory).
    pub directory: PathBuf,
    /// Size of one journal segment in bytes (ActiveMQ's `logSize`, default 100 MiB).
    #[serde(with = "units::size")]
    pub log_size: u64,
    /// When a persistent send is confirmed (default `local_disk`).
    pub sync: SyncPolicy,
    /// The disk the journal's retained segments may take (ActiveMQ's `<storeUsage limit>`,
    /// default 100 GiB; at least twice `log_size`). At it, producers of persistent messages
    /// are held back (or refused, `broker.send_fail_if_no_space`) until consumers free space.
    /// Capped at start to the directory's free space plus what the journal takes.
    #[serde(with = "units::size")]
    pub store_limit: u64,
    /// How long the journal's writer may be at work (a write, an fsync, preparing or releasing
    /// a segment) without finishing any of it before the disk counts as stalled (default 30 s;
    /// `"0s"`: never). A cluster node whose disk stalls leaves the cluster and
    /// exits, so that another node takes over; a standalone one logs it (see
    /// [`crate::watchdog`]).
    #[serde(with = "units::duration")]
    pub stall_timeout: Duration,
}

/// The default of `store.stall_timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            directory: PathBuf::from("data"),
            log_size: 100 * MIB,
            sync: SyncPolicy::default(),
            store_limit: crate::broker::DEFAULT_STORE_LIMIT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// `[replication]`: ActiveMQ's `<replicatedLevelDB>` attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Cluster size (default 3); quorum = replicas/2 + 1.
    pub replicas: u32,
    /// The replication listener opened by the master (default `tcp://0.0.0.0:61619`; port 0
    /// means any free port).
    #[serde(with = "connector::tcp_uri")]
    pub bind: HostPort,
    /// ZooKeeper connect string, e.g. `zk1:2181,zk2:2181,zk3:2181` (optional chroot suffix
    /// `/chroot`). `None` (absent or `""`): a standalone node.
    #[serde(deserialize_with = "units::optional_string")]
    pub zk_address: Option<String>,
    /// ZooKeeper digest password (optional).
    #[serde(deserialize_with = "units::optional_string")]
    pub zk_password: Option<String>,
    /// Parent znode of the group (default `/activemq/leveldb-stores`).
    #[serde(deserialize_with = "units::lenient_string")]
    pub zk_path: String,
    /// ZooKeeper session timeout (default 2 s).
    #[serde(with = "units::duration")]
    pub zk_session_timeout: Duration,
    /// Host part of the address the master advertises; `None`: the machine's hostname, see
    /// [`ReplicationConfig::advertised_hostname`].
    #[serde(deserialize_with = "units::optional_string")]
    pub hostname: Option<String>,
    /// Election tie-break (default 1): higher wins among equally up-to-date nodes.
    pub weight: u32,
    /// Shared secret a slave presents at login (default `""`).
    #[serde(deserialize_with = "units::lenient_string")]
    pub security_token: String,
    /// Published in the znode JSON only (optional).
    #[serde(deserialize_with = "units::optional_string")]
    pub container: Option<String>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replicas: 3,
            bind: HostPort::new("0.0.0.0", 61619),
            zk_address: None,
            zk_password: None,
            zk_path: "/activemq/leveldb-stores".to_owned(),
            zk_session_timeout: Duration::from_secs(2),
            hostname: None,
            weight: 1,
            security_token: String::new(),
            container: None,
        }
    }
}

impl ReplicationConfig {
    /// Members needed to elect a master and to confirm a write: replicas/2 + 1.
    pub fn quorum(&self) -> u32 {
        self.replicas / 2 + 1
    }

    /// Slave acknowledgements the master waits for under a `remote_*`/`quorum_*` sync policy:
    /// replicas/2 (0 when replicas < 2).
    pub fn slave_acks_required(&self) -> u32 {
        self.replicas / 2
    }

    /// `hostname` if configured, else the machine's hostname, looked up now.
    pub fn advertised_hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(local_hostname)
    }
}

/// The machine's hostname (Linux: /proc/sys/kernel/hostname, else /etc/hostname, else
/// `$HOSTNAME`; Windows: `%COMPUTERNAME%`, which Windows sets for every process, services
/// included), or `localhost`.
pub fn local_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .chain(std::env::var("COMPUTERNAME").ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Config {
    /// Defaults, then the TOML file at `path` (if given), then the process environment's
    /// `FERROMQ_<SECTION>__<KEY>` variables; then [`Config::validate`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars = std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        });
        Config::load_with_env(path, vars)
    }

    /// [`Config::load`] with an explicit list of environment variables (name, value) instead of
    /// the process environment. Names not starting with `FERROMQ_` are ignored.
    pub fn load_with_env<I, K, V>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            // figment reports a missing file, but not always with its path: check first.
            if let Err(source) = std::fs::File::open(path) {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
            figment = figment.merge(PlainKeys(Toml::file_exact(path)));
        }
        let figment = figment.merge(env::EnvOverrides::from_pairs(env));
        Config::extract(&figment)
    }

    /// Defaults overridden by a TOML document (no environment), validated. For tests and tools.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(PlainKeys(Toml::string(toml)));
        Config::extract(&figment)
    }

    fn extract(figment: &Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract()?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid {
                key,
                origin: None,
                message,
            } => ConfigError::Invalid {
                origin: describe_origin(figment, &key),
                key,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// A node without `replication.zk_address`: no election, no replication; it is always
    /// the master of its own store.
    pub fn is_standalone(&self) -> bool {
        self.replication.zk_address.is_none()
    }

    /// Checks what types cannot: ranges, forms and conflicts. Called by the loaders; call it
    /// again after changing a `Config` in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        /// ZooKeeper's own ceiling with a long tickTime (20 ticks of 30 s): anything longer is
        /// a typo.
        const MAX_ZK_SESSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
        let b = &self.broker;
        if b.name.trim().is_empty() {
            return Err(invalid("broker.name", "must not be empty"));
        }
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&b.max_frame_size) {
            return Err(invalid(
                "broker.max_frame_size",
                format!(
                    "{} bytes is out of range: must be between {MIN_FRAME_SIZE} and \
                     {MAX_FRAME_SIZE} bytes (255 MiB, below the journal's 256 MiB record limit)",
                    b.max_frame_size
                ),
            ));
        }
        if b.dead_letter_strategy == DeadLetterStrategyKind::Individual {
            check_dead_letter_names(b)?;
        }
        b.virtual_topics()?;
        if b.max_browse_page_size == 0 {
            return Err(invalid(
                "broker.max_browse_page_size",
                "must be at least 1 (it is how many messages a queue browser is shown)",
            ));
        }
        if b.memory_limit == 0 {
            return Err(invalid(
                "broker.memory_limit",
                "must be positive (it bounds the message bodies held in memory; 0 would hold \
                 back every producer of non-persistent messages for good)",
            ));
        }
        if b.users.keys().any(|login| login.is_empty()) {
            return Err(invalid("broker.users", "a login must not be empty"));
        }

        let t = &self.transport;
        if t.connectors.is_empty() {
            return Err(invalid(
                "transport.connectors",
                "at least one connector is required, e.g. [\"tcp://0.0.0.0:61616\"]",
            ));
        }
        for (i, a) in t.connectors.iter().enumerate() {
            if let Some(b) = t.connectors[..i]
                .iter()
                .find(|b| same_listen_addr(&a.address, &b.address))
            {
                return Err(invalid(
                    "transport.connectors",
                    format!("connectors {b} and {a} would listen on the same port"),
                ));
            }
        }

        let s = &self.store;
        if s.directory.as_os_str().is_empty() {
            return Err(invalid("store.directory", "must not be empty"));
        }
        let directory = s.directory.to_string_lossy();
        if directory.contains("${") || directory.starts_with('~') {
            return Err(invalid(
                "store.directory",
                format!(
                    "{directory:?} would be taken literally: ferromq does not expand ActiveMQ's \
                     ${{...}} placeholders or ~; write the path out"
                ),
            ));
        }
        if let Some(c) = directory.chars().find(|c| c.is_control()) {
            return Err(invalid(
                "store.directory",
                format!(
                    "{directory:?} holds a control character ({:?}): in a TOML \"...\" string a \
                     backslash starts an escape (\\f, \\b, \\t, \\n, \\r), so a Windows path \
                     such as \"C:\\ferromq\\broker\" loses characters; write it in single quotes \
                     ('C:\\ferromq\\broker'), with doubled backslashes, or with forward slashes",
                    c
                ),
            ));
        }
        if s.log_size < MIN_LOG_SIZE {
            return Err(invalid(
                "store.log_size",
                format!(
                    "{} bytes is too small: the minimum is {MIN_LOG_SIZE} (1 MiB)",
                    s.log_size
                ),
            ));
        }
        if s.store_limit / 2 < s.log_size && s.store_limit == crate::broker::DEFAULT_STORE_LIMIT {
            // store_limit was left at its default: the value to change is log_size.
            return Err(invalid(
                "store.log_size",
                format!(
                    "{} bytes is too large: store_limit (default {} bytes) must be at least \
                     twice log_size, since the current journal segment alone takes log_size; \
                     lower log_size or raise store.store_limit",
                    s.log_size, s.store_limit
                ),
            ));
        }
        if s.store_limit / 2 < s.log_size {
            return Err(invalid(
                "store.store_limit",
                format!(
                    "{} bytes is too small: it must be at least twice log_size (2 × {} = {} \
                     bytes), since the current journal segment alone takes log_size",
                    s.store_limit,
                    s.log_size,
                    s.log_size.saturating_mul(2)
                ),
            ));
        }

        let r = &self.replication;
        if r.replicas < 1 {
            return Err(invalid("replication.replicas", "must be at least 1"));
        }
        // A standalone node never binds `replication.bind`.
        let replication_bind = (!self.is_standalone()).then_some(&r.bind);
        if let Some(c) = replication_bind.and_then(|bind| {
            t.connectors
                .iter()
                .find(|c| same_listen_addr(&c.address, bind))
        }) {
            return Err(invalid(
                "replication.bind",
                format!(
                    "{} would listen on the same port as connector {c}",
                    r.bind.to_tcp_uri()
                ),
            ));
        }
        if let Some(zk) = &r.zk_address {
            check_zk_address(zk).map_err(|m| invalid("replication.zk_address", m))?;
        }
        if let Some(admin) = &self.admin.bind {
            let clash = t
                .connectors
                .iter()
                .map(|c| (c.to_string(), &c.address))
                .chain(
                    replication_bind
                        .map(|bind| (format!("replication.bind {}", bind.to_tcp_uri()), bind)),
                )
                .find(|(_, address)| same_listen_addr(address, admin));
            if let Some((other, _)) = clash {
                return Err(invalid(
                    "admin.bind",
                    format!(
                        "{} would listen on the same port as {other}",
                        admin.to_tcp_uri()
                    ),
                ));
            }
        }
        if let Some(token) = &self.admin.token {
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "admin.token",
                    "must not hold spaces or control characters (it is sent in an HTTP header)",
                ));
            }
        }
        if !s.stall_timeout.is_zero() && s.stall_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "store.stall_timeout",
                format!(
                    "{:?} is too short: \"0s\" (never) or at least 1s (a busy disk takes that \
                     long now and then; the default is \"30s\")",
                    s.stall_timeout
                ),
            ));
        }
        check_zk_path(&r.zk_path).map_err(|m| invalid("replication.zk_path", m))?;
        if r.zk_session_timeout > MAX_ZK_SESSION_TIMEOUT {
            return Err(invalid(
                "replication.zk_session_timeout",
                format!(
                    "{:?} is too long: at most {MAX_ZK_SESSION_TIMEOUT:?} (ZooKeeper grants at \
                     most 20 ticks, 40s with its default tickTime; a master cut off from it \
                     steps down after half the timeout)",
                    r.zk_session_timeout
                ),
            ));
        }
        if r.zk_session_timeout < std::time::Duration::from_millis(100) {
            return Err(invalid(
                "replication.zk_session_timeout",
                format!(
                    "{:?} is too short: at least 100ms (ActiveMQ's default is \"2s\")",
                    r.zk_session_timeout
                ),
            ));
        }
        if let Some(h) = &r.hostname {
            if h.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(invalid(
                    "replication.hostname",
                    format!("{h:?} is not a host name"),
                ));
            }
        }
        Ok(())
    }
}

/// The individual dead-letter strategy's prefixes and suffixes: a prefix and suffix both
/// empty would dead-letter a message into the queue it is on, and a wildcard or `,` would make
/// DLQs no consumer could subscribe to by name.
fn check_dead_letter_names(b: &BrokerConfig) -> Result<(), ConfigError> {
    let pairs = [
        (
            "broker.dead_letter_queue_prefix",
            &b.dead_letter_queue_prefix,
            "broker.dead_letter_queue_suffix",
            &b.dead_letter_queue_suffix,
        ),
        (
            "broker.dead_letter_topic_prefix",
            &b.dead_letter_topic_prefix,
            "broker.dead_letter_topic_suffix",
            &b.dead_letter_topic_suffix,
        ),
    ];
    for (prefix_key, prefix, suffix_key, suffix) in pairs {
        if prefix.is_empty() && suffix.is_empty() {
            return Err(invalid(
                prefix_key,
                format!(
                    "must not be empty while `{suffix_key}` is empty too (with \
                     dead_letter_strategy = \"individual\"): the DLQ would be the destination \
                     itself"
                ),
            ));
        }
        for (key, value) in [(prefix_key, prefix), (suffix_key, suffix)] {
            if let Some(c) = value
                .chars()
                .find(|c| matches!(c, '*' | '>' | ',') || c.is_control())
            {
                return Err(invalid(
                    key,
                    format!(
                        "{value:?} contains {c:?}: DLQ names cannot hold wildcards (`*`, `>`), \
                         `,` or control characters"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Two listeners that cannot both bind: same non-zero port, and the same host or a wildcard of
/// the same address family (`0.0.0.0` and `[::]` on one port is how a node listens on both
/// IPv4 and IPv6 where `[::]` takes IPv6 alone, as on Windows; where it takes both, the bind
/// itself says so).
fn same_listen_addr(a: &HostPort, b: &HostPort) -> bool {
    let family = |h: &HostPort| {
        h.host()
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| ip.is_ipv4())
    };
    let other_families = matches!((family(a), family(b)), (Some(x), Some(y)) if x != y);
    a.port() != 0
        && a.port() == b.port()
        && !other_families
        && (a.host().eq_ignore_ascii_case(b.host()) || a.is_unspecified() || b.is_unspecified())
}

/// `host[:port],host[:port],...[/chroot]`
pub(crate) fn check_zk_address(zk: &str) -> Result<(), String> {
    zk_servers(zk)?;
    if let Some(i) = zk.find('/') {
        check_zk_path(&zk[i..]).map_err(|m| format!("{zk:?}: chroot {m}"))?;
    }
    Ok(())
}

/// The servers of a ZooKeeper connect string `host[:port],host[:port],...[/chroot]`, each as
/// `host:port` (`[::1]:port` for IPv6), with ZooKeeper's port 2181 where none is given; the
/// error names the first server that is not `host[:port]`.
pub(crate) fn zk_servers(zk: &str) -> Result<Vec<String>, String> {
    let servers = zk.find('/').map_or(zk, |i| &zk[..i]);
    servers
        .split(',')
        .map(|server| {
            let server = server.trim();
            let bad = |why: &str| format!("{zk:?}: server {server:?} {why}");
            let (host, port) = if let Some(rest) = server.strip_prefix('[') {
                match rest.split_once(']') {
                    Some((host, "")) => (host, None),
                    Some((host, after)) => match after.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => return Err(bad("is not host:port")),
                    },
                    None => return Err(bad("lacks a `]`")),
                }
            } else {
                match server.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (server, None),
                }
            };
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(bad("has no valid host; expected host:port, e.g. zk1:2181"));
            }
            match port {
                Some(port) if !matches!(port.parse::<u16>(), Ok(p) if p != 0) => {
                    Err(bad("has an invalid port"))
                }
                Some(_) => Ok(server.to_owned()),
                None => Ok(format!("{server}:2181")),
            }
        })
        .collect()
}

/// An absolute znode path: starts with '/', no trailing '/', no empty, `.` or `..` segments.
pub(crate) fn check_zk_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(format!("{path:?} must not end with '/'"));
    }
    if path == "/" {
        return Err(
            "\"/\" is the root: name a parent znode such as /activemq/leveldb-stores".into(),
        );
    }
    if path[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.contains(char::is_control))
    {
        return Err(format!(
            "{path:?} is not a valid znode path (empty, `.` or `..` segment)"
        ));
    }
    Ok(())
}

/// A provider whose error messages name keys as `store.sync` rather than figment's
/// `default.store.sync` (we use no profiles).
struct PlainKeys<P>(P);

impl<P: Provider> Provider for PlainKeys<P> {
    fn metadata(&self) -> Metadata {
        self.0
            .metadata()
            .interpolater(|_: &Profile, keys: &[&str]| keys.join("."))
    }

    fn data(&self) -> Result<figment::value::Map<Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

/// Where the value of `key` came from, for error messages.
fn describe_origin(figment: &Figment, key: &str) -> Option<String> {
    let md = figment.find_metadata(key)?;
    Some(match &md.source {
        Some(Source::Code(_)) => "built-in default".to_owned(),
        Some(source) => format!("{source} {}", md.name),
        None if md.name == env::ENV_SOURCE_NAME => {
            let parts: Vec<&str> = key.split('.').collect();
            format!("{} {}", md.name, md.interpolate(&Profile::Default, &parts))
        }
        None => md.name.to_string(),
    })
}

impl fmt::Display for Config {
    /// A one-line summary for the startup log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connectors: Vec<String> = self
            .transport
            .connectors
            .iter()
            .map(ToString::to_string)
            .collect();
        write!(
            f,
            "broker {} on [{}], store {} (sync {}, log_size {}, store_limit {}), ",
            self.broker.name,
            connectors.join(", "),
            self.store.directory.display(),
            self.store.sync,
            format_size(self.store.log_size),
            format_size(self.store.store_limit),
        )?;
        match &self.replication.zk_address {
            None => f.write_str("standalone"),
            Some(zk) => write!(
                f,
                "replicas {} via ZooKeeper {}{}",
                self.replication.replicas, zk, self.replication.zk_path
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const NO_ENV: [(&str, &str); 0] = [];

    /// What `ferromq status` and a node probe when ZooKeeper gives no session.
    #[test]
    fn a_connect_strings_servers_get_zookeepers_port_when_they_name_none() {
        assert_eq!(
            zk_servers("zk1:2182, zk2,[::1]:2183,[fe80::1]/activemq").unwrap(),
            ["zk1:2182", "zk2:2181", "[::1]:2183", "[fe80::1]:2181"]
        );
        assert!(zk_servers("zk1:2181,:2181").is_err());
    }

    fn toml_file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .prefix("ferromq-test-")
            .suffix(".toml")
            .tempfile()
            .unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn file_name(f: &tempfile::NamedTempFile) -> String {
        f.path().file_name().unwrap().to_string_lossy().into_owned()
    }

    fn load_err(contents: &str) -> (String, String) {
        let f = toml_file(contents);
        let err = Config::load_with_env(Some(f.path()), NO_ENV).unwrap_err();
        (err.to_string(), file_name(&f))
    }

    /// Values an operator copying from `activemq.xml` or a template might write, each refused
    /// naming its key; string values from the environment stay strings.
    #[test]
    fn placeholders_zero_memory_and_endless_sessions_are_refused() {
        for (toml, key, says) in [
            (
                "[store]\ndirectory = \"${activemq.data}/leveldb\"\n",
                "store.directory",
                "placeholders",
            ),
            ("[store]\ndirectory = \"~/data\"\n", "store.directory", "~"),
            // A Windows path in a basic TOML string: \f and \b are escapes.
            (
                "[store]\ndirectory = \"C:\\ferromq\\broker\"\n",
                "store.directory",
                "single quotes",
            ),
            (
                "[broker]\nmemory_limit = 0\n",
                "broker.memory_limit",
                "positive",
            ),
            (
                "[replication]\nzk_session_timeout = \"3000000s\"\n",
                "replication.zk_session_timeout",
                "too long",
            ),
        ] {
            let (err, _) = load_err(toml);
            assert!(err.contains(key) && err.contains(says), "{toml}: {err}");
        }
        let c = Config::load_with_env(
            None,
            [
                ("FERROMQ_BROKER__VIRTUAL_TOPIC_POSTFIX", ".1"),
                ("FERROMQ_BROKER__VIRTUAL_TOPIC_PREFIX", "1."),
                ("FERROMQ_ADMIN__BIND", "tcp://127.0.0.1:8161"),
            ],
        )
        .unwrap();
        assert_eq!(c.broker.virtual_topic_postfix, ".1");
        assert_eq!(c.broker.virtual_topic_prefix, "1.");
        // ActiveMQ's "unlimited" redeliveries.
        let f = toml_file("[broker]\nmax_redeliveries = -1\n");
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(c.broker.max_redeliveries, u32::MAX);
        let (err, _) = load_err("[broker]\nmax_redeliveries = -2\n");
        assert!(
            err.contains("max_redeliveries") && err.contains("-1"),
            "{err}"
        );
        // The admin endpoint's address written as an HTTP URL is taken too.
        let f = toml_file("[admin]\nbind = \"http://127.0.0.1:8161/\"\n");
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(c.admin.bind.unwrap().to_tcp_uri(), "tcp://127.0.0.1:8161");
    }

    #[test]
    fn defaults() {
        let c = Config::load_with_env(None, NO_ENV).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.broker.name, "localhost");
        assert_eq!(c.broker.max_frame_size, 100 * MIB);
        assert_eq!(c.broker.max_redeliveries, 6);
        assert_eq!(c.broker.topic_pending_limit, 1000);
        assert_eq!(c.broker.max_browse_page_size, 400);
        assert_eq!(c.broker.memory_limit, 64 * MIB);
        assert_eq!(
            c.broker.dead_letter_strategy,
            DeadLetterStrategyKind::Shared
        );
        assert_eq!(c.broker.dead_letter_queue_prefix, "ActiveMQ.DLQ.Queue.");
        assert_eq!(c.broker.dead_letter_topic_prefix, "ActiveMQ.DLQ.Topic.");
        assert_eq!(c.broker.dead_letter_queue_suffix, "");
        assert_eq!(c.broker.dead_letter_topic_suffix, "");
        assert!(!c.broker.requires_authentication());
        assert_eq!(c.transport.connectors.len(), 1);
        assert_eq!(c.transport.connectors[0].to_string(), "tcp://0.0.0.0:61616");
        assert_eq!(c.store.directory, PathBuf::from("data"));
        assert_eq!(c.store.log_size, 104_857_600);
        assert_eq!(c.store.sync, SyncPolicy::LOCAL_DISK);
        let r = &c.replication;
        assert_eq!(r.replicas, 3);
        assert_eq!((r.quorum(), r.slave_acks_required()), (2, 1));
        assert_eq!(r.bind.to_tcp_uri(), "tcp://0.0.0.0:61619");
        assert_eq!(r.zk_path, "/activemq/leveldb-stores");
        assert_eq!(r.zk_session_timeout, Duration::from_secs(2));
        assert_eq!(r.weight, 1);
        assert_eq!(r.security_token, "");
        assert!(r.zk_address.is_none() && r.zk_password.is_none() && r.container.is_none());
        assert!(c.is_standalone());
        assert!(!r.advertised_hostname().is_empty());
        c.validate().unwrap();
        assert_eq!(Config::from_toml_str("").unwrap(), c);
    }

    #[test]
    fn virtual_topics_are_activemqs_default_configurable_and_checked() {
        let default = Config::default();
        assert_eq!(
            crate::server::broker_options(&default).virtual_topics,
            Some(VirtualTopics::activemq_default())
        );
        let f = toml_file(
            "[broker]\nvirtual_topic_name = \">\"\nvirtual_topic_prefix = \"VirtualTopicConsumers.*.\"\n",
        );
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(
            crate::server::broker_options(&c).virtual_topics,
            Some(VirtualTopics::new(">", "VirtualTopicConsumers.*.", "").unwrap())
        );
        let f = toml_file("[broker]\nuse_virtual_topics = false\n");
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(crate::server::broker_options(&c).virtual_topics, None);
        for (toml, key) in [
            (
                "virtual_topic_prefix = \"Consumer.*\"",
                "broker.virtual_topic_prefix",
            ),
            ("virtual_topic_prefix = \"\"", "broker.virtual_topic_prefix"),
            (
                "virtual_topic_name = \"a.>.b\"",
                "broker.virtual_topic_name",
            ),
            (
                "virtual_topic_postfix = \"x\"",
                "broker.virtual_topic_postfix",
            ),
        ] {
            let (err, file) = load_err(&format!("[broker]\n{toml}\n"));
            assert!(err.contains(key) && err.contains(&file), "{toml}: {err}");
        }
    }

    #[test]
    fn stall_timeout_defaults_to_30s_takes_zero_for_never_and_refuses_a_hair_trigger() {
        assert_eq!(
            Config::default().store.stall_timeout,
            Duration::from_secs(30)
        );
        let f = toml_file("[store]\nstall_timeout = \"5s\"\n");
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(c.store.stall_timeout, Duration::from_secs(5));
        let c = Config::load_with_env(None, [("FERROMQ_STORE__STALL_TIMEOUT", "0s")]).unwrap();
        assert!(c.store.stall_timeout.is_zero(), "\"0s\": never");
        for (value, says) in [("\"500ms\"", "too short"), ("\"soon\"", "")] {
            let (err, file) = load_err(&format!("[store]\nstall_timeout = {value}\n"));
            assert!(
                err.contains("store.stall_timeout") && err.contains(&file) && err.contains(says),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn store_limit_and_send_fail_if_no_space_from_file_and_environment() {
        let c = Config::default();
        assert_eq!(c.store.store_limit, 100 * 1024 * MIB);
        assert!(!c.broker.send_fail_if_no_space);
        let options = crate::server::broker_options(&c);
        assert_eq!(options.store_limit, 100 << 30);
        assert!(!options.send_fail_if_no_space);
        let f = toml_file(
            "[broker]\nsend_fail_if_no_space = true\n[store]\nlog_size = \"1MiB\"\n\
             store_limit = \"3MiB\"\n",
        );
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(c.store.store_limit, 3 * MIB);
        assert!(c.broker.send_fail_if_no_space);
        let options = crate::server::broker_options(&c);
        assert_eq!(options.store_limit, 3 * MIB);
        assert!(options.send_fail_if_no_space);
        let c = Config::load_with_env(
            Some(f.path()),
            [
                ("FERROMQ_STORE__STORE_LIMIT", "2GiB"),
                ("FERROMQ_BROKER__SEND_FAIL_IF_NO_SPACE", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.store.store_limit, 2048 * MIB, "the environment wins");
        assert!(!c.broker.send_fail_if_no_space);

        let (err, file) = load_err("[store]\nstore_limit = \"150MiB\"\n");
        assert!(
            err.contains("store.store_limit")
                && err.contains(&file)
                && err.contains("at least twice log_size (2 × 104857600 = 209715200 bytes)"),
            "{err}"
        );
        let (err, file) = load_err("[store]\nstore_limit = \"lots\"\n");
        assert!(
            err.contains("store.store_limit") && err.contains(&file),
            "{err}"
        );
        let (err, file) = load_err("[broker]\nsend_fail_if_no_space = \"yes please\"\n");
        assert!(
            err.contains("broker.send_fail_if_no_space") && err.contains(&file),
            "{err}"
        );
        let err = Config::load_with_env(None, [("FERROMQ_STORE__STORE_LIMIT", "1KiB")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store.store_limit") && err.contains("FERROMQ_STORE__STORE_LIMIT"),
            "{err}"
        );
    }

    #[test]
    fn scheduler_support_is_off_unless_the_file_or_the_environment_turns_it_on() {
        assert!(!Config::default().broker.scheduler_support);
        let f = toml_file("[broker]\nscheduler_support = true\n");
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert!(c.broker.scheduler_support);
        assert!(crate::server::broker_options(&c).scheduler_support);
        let c =
            Config::load_with_env(None, [("FERROMQ_BROKER__SCHEDULER_SUPPORT", "true")]).unwrap();
        assert!(c.broker.scheduler_support);
        let c = Config::load_with_env(
            Some(f.path()),
            [("FERROMQ_BROKER__SCHEDULER_SUPPORT", "false")],
        )
        .unwrap();
        assert!(!c.broker.scheduler_support, "the environment wins");
        let (err, file) = load_err("[broker]\nscheduler_support = \"sometimes\"\n");
        assert!(
            err.contains("broker.scheduler_support") && err.contains(&file),
            "{err}"
        );
    }

    #[test]
    fn file_overrides() {
        let f = toml_file(
            r#"
            [broker]
            name = "ferromq-cluster"
            max_frame_size = "100MB"
            users = { admin = "secret", guest = 1234 }

            [transport]
            connectors = ["tcp://0.0.0.0:61616", "stomp://127.0.0.1:61613"]

            [store]
            directory = "/var/lib/ferromq"
            log_size = 2097152
            sync = "local_disk,quorum_mem"

            [replication]
            replicas = 5
            bind = "tcp://0.0.0.0:0"
            zk_address = "zk1:2181,zk2:2181,zk3:2181"
            zk_session_timeout = 500
            hostname = "node1"
            weight = 7
            security_token = 12345
            "#,
        );
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        assert_eq!(c.broker.name, "ferromq-cluster");
        assert_eq!(c.broker.max_frame_size, 100 * MIB);
        assert_eq!(
            c.broker.max_redeliveries, 6,
            "untouched keys keep their default"
        );
        assert_eq!(c.broker.users["admin"], "secret");
        assert_eq!(c.broker.users["guest"], "1234");
        assert!(c.broker.requires_authentication());
        assert_eq!(c.transport.connectors[1].scheme, ConnectorScheme::Stomp);
        assert_eq!(
            c.transport.connectors[1].address.to_string(),
            "127.0.0.1:61613"
        );
        assert_eq!(c.store.directory, PathBuf::from("/var/lib/ferromq"));
        assert_eq!(c.store.log_size, 2 * MIB);
        assert!(c.store.sync.fsync_locally());
        assert_eq!(c.replication.replicas, 5);
        assert_eq!(c.replication.bind.port(), 0);
        assert_eq!(c.replication.zk_session_timeout, Duration::from_millis(500));
        assert_eq!(c.replication.advertised_hostname(), "node1");
        assert_eq!(c.replication.weight, 7);
        assert_eq!(c.replication.security_token, "12345");
        assert!(!c.is_standalone());
    }

    #[test]
    fn env_overrides_file() {
        let f = toml_file(
            "[replication]\nzk_address = \"zk1:2181\"\nreplicas = 5\n[store]\nsync = \"quorum_mem\"\n",
        );
        let env = [
            ("FERROMQ_REPLICATION__ZK_ADDRESS", "zk9:2181/chroot"),
            ("FERROMQ_REPLICATION__SECURITY_TOKEN", "12345"),
            ("FERROMQ_REPLICATION__ZK_SESSION_TIMEOUT", "1m"),
            ("FERROMQ_STORE__SYNC", "local_disk,quorum_disk"),
            ("FERROMQ_STORE__LOG_SIZE", "64MiB"),
            ("FERROMQ_BROKER__NAME", "42"),
            (
                "FERROMQ_TRANSPORT__CONNECTORS",
                "tcp://0.0.0.0:61626,stomp://0.0.0.0:61613",
            ),
            ("FERROMQ_CONFIG", "/etc/ferromq.toml"),
            ("HOME", "/root"),
        ];
        let c = Config::load_with_env(Some(f.path()), env).unwrap();
        assert_eq!(c.replication.zk_address.as_deref(), Some("zk9:2181/chroot"));
        assert_eq!(c.replication.replicas, 5, "file value kept");
        assert_eq!(c.replication.security_token, "12345");
        assert_eq!(c.replication.zk_session_timeout, Duration::from_secs(60));
        assert!(c.store.sync.quorum_disk && c.store.sync.local_disk && !c.store.sync.quorum_mem);
        assert_eq!(c.store.log_size, 64 * MIB);
        assert_eq!(c.broker.name, "42");
        assert_eq!(c.transport.connectors.len(), 2);

        // A list in figment's syntax, a numeric token with leading zeros, and an empty
        // zk_address switching a clustered file back to standalone.
        let env = [
            (
                "FERROMQ_TRANSPORT__CONNECTORS",
                "[tcp://0.0.0.0:1, stomp://0.0.0.0:2]",
            ),
            ("FERROMQ_REPLICATION__SECURITY_TOKEN", "007"),
            ("FERROMQ_REPLICATION__ZK_ADDRESS", ""),
        ];
        let c = Config::load_with_env(Some(f.path()), env).unwrap();
        assert_eq!(c.transport.connectors[1].to_string(), "stomp://0.0.0.0:2");
        assert_eq!(c.replication.security_token, "007");
        assert!(c.is_standalone());
    }

    #[test]
    fn numeric_security_token_from_env() {
        let env = [("FERROMQ_REPLICATION__SECURITY_TOKEN", "12345")];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.replication.security_token, "12345");
        let env = [("FERROMQ_REPLICATION__ZK_PASSWORD", "4711")];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.replication.zk_password.as_deref(), Some("4711"));
        let env = [("FERROMQ_ADMIN__TOKEN", "0815")];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("0815"));
        let env = [("FERROMQ_ADMIN__TOKEN", "")];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.admin.token, None);
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = Config::load_with_env(Some(&path), NO_ENV).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let (err, file) = load_err("[replication]\nreplicaz = 3\n");
        assert!(err.contains("replicaz") && err.contains(&file), "{err}");

        let (err, file) = load_err("[replicaton]\nreplicas = 3\n");
        assert!(err.contains("replicaton") && err.contains(&file), "{err}");

        let err = Config::load_with_env(None, [("FERROMQ_STORE__SYNK", "local_mem")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("synk") && err.contains("environment variable"),
            "{err}"
        );
    }

    #[test]
    fn bad_sync_word() {
        let (err, file) = load_err("[store]\nsync = \"local_disk,quorum_dsk\"\n");
        assert!(err.contains("quorum_dsk"), "{err}");
        assert!(err.contains("store.sync") && err.contains(&file), "{err}");
        assert!(
            err.contains("quorum_disk") && err.contains("local_mem"),
            "{err}"
        );

        let err = Config::load_with_env(None, [("FERROMQ_STORE__SYNC", "fast")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"fast\"") && err.contains("FERROMQ_STORE__SYNC"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration() {
        let (err, file) = load_err("[replication]\nzk_session_timeout = \"2 weeks\"\n");
        assert!(err.contains("replication.zk_session_timeout"), "{err}");
        assert!(err.contains(&file) && err.contains("2 weeks"), "{err}");

        let env = [("FERROMQ_REPLICATION__ZK_SESSION_TIMEOUT", "-5")];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(
            err.contains("FERROMQ_REPLICATION__ZK_SESSION_TIMEOUT"),
            "{err}"
        );
    }

    #[test]
    fn bad_size() {
        let (err, file) = load_err("[store]\nlog_size = \"lots\"\n");
        assert!(
            err.contains("store.log_size") && err.contains(&file),
            "{err}"
        );
    }

    #[test]
    fn bad_connector_scheme() {
        let (err, file) = load_err(
            "[transport]\nconnectors = [\"tcp://0.0.0.0:61616\", \"ssl://0.0.0.0:61617\"]\n",
        );
        assert!(err.contains("ssl://0.0.0.0:61617"), "{err}");
        assert!(
            err.contains("transport.connectors") && err.contains(&file),
            "{err}"
        );

        let (err, _) = load_err("[replication]\nbind = \"stomp://0.0.0.0:61619\"\n");
        assert!(err.contains("replication.bind"), "{err}");
    }

    #[test]
    fn validation_names_key_and_origin() {
        let (err, file) = load_err("[replication]\nreplicas = 0\n");
        assert!(
            err.contains("replication.replicas") && err.contains(&file),
            "{err}"
        );

        let env = [("FERROMQ_REPLICATION__REPLICAS", "0")];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("FERROMQ_REPLICATION__REPLICAS"), "{err}");

        let cases = [
            ("[store]\nlog_size = \"512KiB\"", "store.log_size"),
            ("[broker]\nmax_frame_size = 10", "broker.max_frame_size"),
            (
                "[broker]\nmax_frame_size = \"256MiB\"",
                "broker.max_frame_size",
            ),
            // store_limit left at its default: the error names the key that was set.
            ("[store]\nlog_size = \"60GiB\"", "store.log_size"),
            (
                "[transport]\nconnectors = [\"tcp://0.0.0.0:1?wireFormat.maxFrameSize=268435456\"]",
                "wireFormat.maxFrameSize",
            ),
            ("[admin]\nbind = \"tcp://0.0.0.0:61616\"", "admin.bind"),
            ("[admin]\ntoken = \"a b\"", "admin.token"),
            ("[admin]\ntoken = [\"a\"]", "admin.token"),
            ("[broker]\nname = \"\"", "broker.name"),
            (
                "[broker]\nmax_browse_page_size = 0",
                "broker.max_browse_page_size",
            ),
            ("[transport]\nconnectors = []", "transport.connectors"),
            (
                "[transport]\nconnectors = [\"tcp://0.0.0.0:1\", \"stomp://127.0.0.1:1\"]",
                "transport.connectors",
            ),
            (
                "[replication]\nzk_address = \"zk1:2181\"\nbind = \"tcp://0.0.0.0:61616\"",
                "replication.bind",
            ),
            (
                "[replication]\nzk_path = \"activemq\"",
                "replication.zk_path",
            ),
            (
                "[replication]\nzk_path = \"/activemq/\"",
                "replication.zk_path",
            ),
            ("[replication]\nzk_path = \"/a//b\"", "replication.zk_path"),
            ("[replication]\nzk_path = \"/\"", "replication.zk_path"),
            (
                "[replication]\nzk_address = \"zk1:2181,:2181\"",
                "replication.zk_address",
            ),
            (
                "[replication]\nzk_address = \"zk1:x\"",
                "replication.zk_address",
            ),
            (
                "[replication]\nzk_address = \"zk1:2181/\"",
                "replication.zk_address",
            ),
            (
                "[replication]\nzk_session_timeout = 0",
                "replication.zk_session_timeout",
            ),
            (
                "[replication]\nzk_session_timeout = \"50ms\"",
                "replication.zk_session_timeout",
            ),
            ("[replication]\nhostname = \"a b\"", "replication.hostname"),
        ];
        for (toml, key) in cases {
            let (err, file) = load_err(toml);
            assert!(err.contains(key) && err.contains(&file), "{toml}: {err}");
            let err = Config::from_toml_str(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }

        let ok = [
            "[replication]\nzk_address = \"zk1:2181,[::1]:2181,zk3/chroot/x\"",
            "[replication]\nbind = \"tcp://127.0.0.1:61616\"\n[transport]\nconnectors = [\"tcp://10.0.0.1:61616\"]",
            "[transport]\nconnectors = [\"tcp://0.0.0.0:0\", \"stomp://0.0.0.0:0\"]",
            // IPv4 and IPv6 on one port (where `[::]` takes IPv6 alone, as on Windows).
            "[transport]\nconnectors = [\"tcp://0.0.0.0:61616\", \"tcp://[::]:61616\"]",
            // A standalone node never binds replication.bind (61619 by default).
            "[transport]\nconnectors = [\"stomp://0.0.0.0:61619\"]",
            "[store]\nlog_size = \"60GiB\"\nstore_limit = \"120GiB\"",
            "[broker]\nmax_frame_size = \"255MiB\"",
        ];
        for toml in ok {
            Config::from_toml_str(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        }

        let mut c = Config::default();
        c.replication.replicas = 0;
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { origin: None, .. }));
    }

    #[test]
    fn dead_letter_strategy_keys() {
        let f = toml_file(
            r#"
            [broker]
            dead_letter_strategy = "individual"
            dead_letter_queue_prefix = "DLQ."
            dead_letter_queue_suffix = ".dead"
            dead_letter_topic_prefix = ""
            dead_letter_topic_suffix = ".DLT"
            "#,
        );
        let c = Config::load_with_env(Some(f.path()), NO_ENV).unwrap();
        let b = &c.broker;
        assert_eq!(b.dead_letter_strategy, DeadLetterStrategyKind::Individual);
        assert_eq!(
            (
                b.dead_letter_queue_prefix.as_str(),
                b.dead_letter_queue_suffix.as_str(),
                b.dead_letter_topic_prefix.as_str(),
                b.dead_letter_topic_suffix.as_str()
            ),
            ("DLQ.", ".dead", "", ".DLT")
        );

        // From the environment; the default prefixes stay.
        let env = [
            ("FERROMQ_BROKER__DEAD_LETTER_STRATEGY", "individual"),
            ("FERROMQ_BROKER__DEAD_LETTER_QUEUE_SUFFIX", "007"),
        ];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(
            c.broker.dead_letter_strategy,
            DeadLetterStrategyKind::Individual
        );
        assert_eq!(c.broker.dead_letter_queue_prefix, "ActiveMQ.DLQ.Queue.");
        assert_eq!(c.broker.dead_letter_queue_suffix, "007");

        // An unknown strategy names the key, the file and the valid words.
        let (err, file) = load_err("[broker]\ndead_letter_strategy = \"per_queue\"\n");
        assert!(
            err.contains("broker.dead_letter_strategy") && err.contains(&file),
            "{err}"
        );
        assert!(
            err.contains("shared") && err.contains("individual"),
            "{err}"
        );
        let env = [("FERROMQ_BROKER__DEAD_LETTER_STRATEGY", "Individual")];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(
            err.contains("FERROMQ_BROKER__DEAD_LETTER_STRATEGY"),
            "{err}"
        );

        // Individual with a prefix and suffix both empty would dead-letter into the queue
        // itself; a wildcard or comma would make a DLQ nobody can subscribe to.
        let cases = [
            (
                "dead_letter_queue_prefix = \"\"",
                "broker.dead_letter_queue_prefix",
                "the DLQ would be the destination itself",
            ),
            (
                "dead_letter_topic_prefix = \"\"\ndead_letter_topic_suffix = \"\"",
                "broker.dead_letter_topic_prefix",
                "the DLQ would be the destination itself",
            ),
            (
                "dead_letter_queue_prefix = \"DLQ.>.\"",
                "broker.dead_letter_queue_prefix",
                "'>'",
            ),
            (
                "dead_letter_topic_suffix = \",x\"",
                "broker.dead_letter_topic_suffix",
                "','",
            ),
        ];
        for (keys, key, why) in cases {
            let toml = format!("[broker]\ndead_letter_strategy = \"individual\"\n{keys}\n");
            let (err, file) = load_err(&toml);
            assert!(
                err.contains(key) && err.contains(&file) && err.contains(why),
                "{toml}: {err}"
            );
            // The shared strategy does not use them.
            let shared = toml.replace("individual", "shared");
            Config::from_toml_str(&shared).unwrap_or_else(|e| panic!("{shared}: {e}"));
        }
        let env = [
            ("FERROMQ_BROKER__DEAD_LETTER_STRATEGY", "individual"),
            ("FERROMQ_BROKER__DEAD_LETTER_QUEUE_PREFIX", ""),
        ];
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(
            err.contains("broker.dead_letter_queue_prefix")
                && err.contains("FERROMQ_BROKER__DEAD_LETTER_QUEUE_PREFIX"),
            "{err}"
        );
    }

    #[test]
    fn toml_syntax_error_names_file() {
        let (err, file) = load_err("[store\n");
        assert!(err.contains(&file), "{err}");
    }

    #[test]
    fn defaults_round_trip_through_serialize() {
        // Serialized::defaults relies on Serialize and Deserialize agreeing.
        let mut c = Config::default();
        c.store.sync = "local_disk,quorum_mem".parse().unwrap();
        c.replication.zk_session_timeout = Duration::from_millis(1500);
        c.replication.zk_address = Some("zk1:2181".into());
        c.broker.dead_letter_strategy = DeadLetterStrategyKind::Individual;
        c.broker.dead_letter_queue_suffix = ".dead".into();
        c.transport
            .connectors
            .push("stomp://[::]:61613".parse().unwrap());
        let back: Config = Figment::from(Serialized::defaults(&c)).extract().unwrap();
        assert_eq!(back, c);
        assert!(c.to_string().contains("zk1:2181/activemq/leveldb-stores"));
    }

    #[test]
    fn conf_files_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{files:?}");
        let mut cluster = Vec::new();
        for path in &files {
            let c = Config::load_with_env(Some(path), NO_ENV)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy();
            if name.starts_with("node") {
                assert!(!c.is_standalone(), "{name}");
                assert_eq!(c.replication.replicas, 3, "{name}");
                cluster.push(c);
            } else if name == "standalone.toml" {
                assert!(c.is_standalone());
            }
        }
        assert_eq!(cluster.len(), 3);
        for c in &cluster[1..] {
            assert_eq!(c.broker.name, cluster[0].broker.name);
            assert_eq!(c.replication.zk_address, cluster[0].replication.zk_address);
            assert_eq!(c.replication.zk_path, cluster[0].replication.zk_path);
            assert_eq!(
                c.replication.security_token,
                cluster[0].replication.security_token
            );
            assert_ne!(c.replication.hostname, cluster[0].replication.hostname);
        }
    }
}
