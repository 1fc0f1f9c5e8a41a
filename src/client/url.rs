//! Broker URLs as ActiveMQ users write them.
//!
//! - `tcp://host:port` or `stomp://host:port` (also `nio://`, ActiveMQ's other plain TCP
//!   transport): one broker;
//! - `host:port,host:port`: a plain comma list;
//! - `failover:(tcp://a:61613,tcp://b:61613)?initialReconnectDelay=100&randomize=false`, or
//!   `failover:tcp://a:61613,tcp://b:61613?randomize=false` without the parentheses.
//!
//! Whatever the form, the client fails over between the listed brokers once connected; only
//! `failover:` URLs take options, with ActiveMQ's names, units (milliseconds) and defaults.
//! Without `failover:`, as with ActiveMQ's `tcp://`, a first connection that cannot be made is
//! an error at once (one pass over the list) rather than retried. A port left out is
//! 61616 (ActiveMQ's and ferromq's default connector, which detects STOMP), or 61613 for
//! `stomp://`. ActiveMQ's other options, which this client has no use for (`trackMessages`,
//! `priorityBackup`, `nested.*`, `jms.*`, and on an address `soTimeout`, `wireFormat.*`,
//! `transport.*`, ...), are ignored with a warning, so that a URL copied from a Java
//! application works. An option ActiveMQ does not know either (a misspelt
//! `initialReconectDelay`) is refused, naming it and the option it resembles, as ActiveMQ's
//! client refuses it ("Invalid connect parameters"): taken silently, it would leave the default
//! in force.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The port of `tcp://host` without one: ActiveMQ's and ferromq's default connector.
pub const DEFAULT_PORT: u16 = 61616;
/// The port of `stomp://host` without one: STOMP's registered port.
pub const DEFAULT_STOMP_PORT: u16 = 61613;

/// The failover options this client applies (see [`parse_options`]).
const FAILOVER_OPTIONS: &[&str] = &[
    "initialReconnectDelay",
    "maxReconnectDelay",
    "useExponentialBackOff",
    "backOffMultiplier",
    "reconnectDelayExponent",
    "maxReconnectAttempts",
    "startupMaxReconnectAttempts",
    "randomize",
    "timeout",
];

/// ActiveMQ's other failover transport options: accepted, ignored with a warning.
const FAILOVER_OPTIONS_IGNORED: &[&str] = &[
    "backup",
    "backupPoolSize",
    "maxCacheSize",
    "priorityBackup",
    "priorityURIs",
    "rebalanceUpdateURIs",
    "reconnectDelay",
    "reconnectSupported",
    "trackMessages",
    "trackTransactionProducers",
    "updateURIsSupported",
    "updateURIsURL",
    "warnAfterReconnectAttempts",
];

/// ActiveMQ's TCP transport options (on an address): accepted, ignored with a warning.
const TCP_OPTIONS_IGNORED: &[&str] = &[
    "closeAsync",
    "connectionTimeout",
    "diffServ",
    "dynamicManagement",
    "ioBufferSize",
    "jmxPort",
    "keepAlive",
    "logWriterName",
    "minmumWireFormatVersion",
    "soLinger",
    "soTimeout",
    "socketBufferSize",
    "startLogging",
    "tcpNoDelay",
    "trace",
    "typeOfService",
    "useLocalHost",
];

/// Option families ActiveMQ hands to another layer (the connection factory, the wire format,
/// the nested transports, the socket): accepted wherever they appear, ignored with a warning.
const IGNORED_PREFIXES: &[&str] = &["jms.", "nested.", "wireformat.", "transport.", "socket."];

/// Schemes that are plain TCP carrying STOMP.
const TCP_SCHEMES: &[&str] = &["tcp", "stomp", "nio", "stomp+nio"];

/// One broker to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddress {
    /// A host name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp://{}:{}", self.host, self.port)
        }
    }
}

/// How many reconnect passes over the broker list are allowed (ActiveMQ's `-1` is `Unlimited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptLimit {
    /// Retry forever (ActiveMQ: -1).
    Unlimited,
    /// At most this many passes; 0 means do not retry.
    Limited(u32),
}

/// The failover transport's options, with ActiveMQ's names in the comments and its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverOptions {
    /// `initialReconnectDelay` (ms, default 10): the first delay between reconnect passes.
    pub initial_reconnect_delay: Duration,
    /// `maxReconnectDelay` (ms, default 30000): the cap on the delay.
    pub max_reconnect_delay: Duration,
    /// `useExponentialBackOff` (default true): grow the delay by `backoff_multiplier`.
    pub use_exponential_backoff: bool,
    /// `backOffMultiplier`, alias `reconnectDelayExponent` (default 2.0).
    pub backoff_multiplier: f64,
    /// `maxReconnectAttempts` (default -1, forever; 0: never reconnect).
    pub max_reconnect_attempts: AttemptLimit,
    /// `startupMaxReconnectAttempts` (default -1: same as `maxReconnectAttempts`): the limit for
    /// the first connect of a client.
    pub startup_max_reconnect_attempts: AttemptLimit,
    /// `randomize` (default true): shuffle the broker list before each pass.
    pub randomize: bool,
    /// `timeout` (ms, default -1 = `None`, wait forever): how long a request waits for a
    /// connection while the client is disconnected before it fails.
    pub timeout: Option<Duration>,
}

impl Default for FailoverOptions {
    fn default() -> FailoverOptions {
        FailoverOptions {
            initial_reconnect_delay: Duration::from_millis(10),
            max_reconnect_delay: Duration::from_millis(30_000),
            use_exponential_backoff: true,
            backoff_multiplier: 2.0,
            max_reconnect_attempts: AttemptLimit::Unlimited,
            startup_max_reconnect_attempts: AttemptLimit::Unlimited,
            randomize: true,
            timeout: None,
        }
    }
}

/// A parsed broker URL: the brokers in the order given, and the failover options.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverUrl {
    pub brokers: Vec<BrokerAddress>,
    pub options: FailoverOptions,
    /// Options that were ignored (unknown or nested), as written; each was logged as a warning.
    pub ignored_options: Vec<String>,
}

/// Why a broker URL was refused; each names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("empty broker URL")]
    Empty,
    #[error("empty broker address in {0:?} (two commas in a row, or a trailing comma?)")]
    EmptyAddress(String),
    #[error("unbalanced parentheses in {0:?}")]
    Parentheses(String),
    #[error(
        "unexpected {rest:?} after the closing parenthesis in {url:?}: options start with '?'"
    )]
    TrailingText { url: String, rest: String },
    #[error("unsupported scheme {scheme:?} in {part:?}: use tcp://, stomp:// or failover:(...); TLS is not supported")]
    Scheme { scheme: String, part: String },
    #[error("missing host in {0:?}")]
    MissingHost(String),
    #[error("invalid port {port:?} in {part:?}: expected 1 to 65535")]
    Port { port: String, part: String },
    #[error("malformed option {0:?}: expected name=value")]
    OptionSyntax(String),
    #[error("invalid value {value:?} for option {option}: expected {expected}")]
    OptionValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "unknown option {option:?} in {part:?}{}: ActiveMQ's client refuses it too (\"Invalid \
         connect parameters\"); taken silently it would leave the default in force",
        .resembles.as_ref().map(|r| format!(" (did you mean {r}?)")).unwrap_or_default()
    )]
    UnknownOption {
        option: String,
        part: String,
        resembles: Option<&'static str>,
    },
}

impl FromStr for FailoverUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<FailoverUrl, UrlError> {
        FailoverUrl::parse(s)
    }
}

impl fmt::Display for FailoverUrl {
    /// The broker list as `(tcp://a:1,tcp://b:2)`, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, broker) in self.brokers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{broker}")?;
        }
        f.write_str(")")
    }
}

impl FailoverUrl {
    /// Parses any of the accepted forms (see the module documentation).
    pub fn parse(input: &str) -> Result<FailoverUrl, UrlError> {
        let url = input.trim();
        if url.is_empty() {
            return Err(UrlError::Empty);
        }
        let mut ignored = Vec::new();
        let failover = strip_prefix_ignore_case(url, "failover:");
        let (list, query) = match failover {
            Some(rest) => split_failover(url, rest.strip_prefix("//").unwrap_or(rest))?,
            None => (url, None),
        };
        let mut brokers = Vec::new();
        for part in list.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(UrlError::EmptyAddress(url.to_string()));
            }
            brokers.push(parse_address(part, &mut ignored)?);
        }
        let mut options = FailoverOptions::default();
        if failover.is_none() {
            // As ActiveMQ's `tcp://`: a broker that cannot be reached at the start is an error
            // at once (one pass over the list), not a wait for ever.
            options.startup_max_reconnect_attempts = AttemptLimit::Limited(0);
        }
        if let Some(query) = query {
            parse_options(query, &mut options, &mut ignored)?;
        }
        for option in &ignored {
            let shown = loggable_option(option);
            tracing::warn!(option = %shown, "ignoring unsupported option in broker URL");
        }
        Ok(FailoverUrl {
            brokers,
            options,
            ignored_options: ignored,
        })
    }
}

/// Splits what follows `failover:` into the broker list and the option query.
fn split_failover<'a>(url: &str, rest: &'a str) -> Result<(&'a str, Option<&'a str>), UrlError> {
    let rest = rest.trim();
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner
            .rfind(')')
            .ok_or_else(|| UrlError::Parentheses(url.to_string()))?;
        let list = &inner[..close];
        if list.contains('(') || list.contains(')') {
            return Err(UrlError::Parentheses(url.to_string()));
        }
        let after = inner[close + 1..].trim();
        let query = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix('?')
                    .ok_or_else(|| UrlError::TrailingText {
                        url: url.to_string(),
                        rest: after.to_string(),
                    })?,
            ),
        };
        return Ok((list, query));
    }
    if rest.contains('(') || rest.contains(')') {
        return Err(UrlError::Parentheses(url.to_string()));
    }
    // Without parentheses, a query on the last address is taken as the failover options: that
    // is what `failover:tcp://a:1,tcp://b:2?randomize=false` means to the person writing it.
    let last = rest.rfind(',').map_or(0, |comma| comma + 1);
    match rest[last..].find('?') {
        Some(q) => Ok((&rest[..last + q], Some(&rest[last + q + 1..]))),
        None => Ok((rest, None)),
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parses `tcp://host:port`, `stomp://host`, `host:port`, `[::1]:61613`; a nested query is
/// ignored (its options are added to `ignored`).
fn parse_address(part: &str, ignored: &mut Vec<String>) -> Result<BrokerAddress, UrlError> {
    let mut rest = part;
    let mut default_port = DEFAULT_PORT;
    if let Some((scheme, after)) = part.split_once("://") {
        if !TCP_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            return Err(UrlError::Scheme {
                scheme: scheme.to_string(),
                part: part.to_string(),
            });
        }
        if scheme.to_ascii_lowercase().starts_with("stomp") {
            default_port = DEFAULT_STOMP_PORT;
        }
        rest = after;
    } else if strip_prefix_ignore_case(part, "failover:").is_some() {
        return Err(UrlError::Scheme {
            scheme: "failover".to_string(),
            part: part.to_string(),
        });
    }
    if let Some((authority, query)) = rest.split_once('?') {
        for option in query.split('&').filter(|o| !o.is_empty()) {
            check_known(option, part, &[TCP_OPTIONS_IGNORED])?;
            ignored.push(format!("{option} (on {part})"));
        }
        rest = authority;
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| UrlError::MissingHost(part.to_string()))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(UrlError::Port {
                        port: after.to_string(),
                        part: part.to_string(),
                    })
                }
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains('/') || (host.contains(':') && !rest.starts_with('[')) {
        return Err(UrlError::MissingHost(part.to_string()));
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlError::Port {
                port: port.to_string(),
                part: part.to_string(),
            })?,
    };
    Ok(BrokerAddress {
        host: host.to_string(),
        port,
    })
}

fn parse_options(
    query: &str,
    options: &mut FailoverOptions,
    ignored: &mut Vec<String>,
) -> Result<(), UrlError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| UrlError::OptionSyntax(pair.to_string()))?;
        let (name, value) = (name.trim(), value.trim());
        match name.to_ascii_lowercase().as_str() {
            "initialreconnectdelay" => {
                options.initial_reconnect_delay = parse_millis(name, value)?;
            }
            "maxreconnectdelay" => options.max_reconnect_delay = parse_millis(name, value)?,
            "useexponentialbackoff" => options.use_exponential_backoff = parse_bool(name, value)?,
            "backoffmultiplier" | "reconnectdelayexponent" => {
                options.backoff_multiplier = value
                    .parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .ok_or_else(|| invalid(name, value, "a positive number such as 2.0"))?;
            }
            "maxreconnectattempts" => {
                options.max_reconnect_attempts = parse_attempts(name, value)?;
            }
            "startupmaxreconnectattempts" => {
                options.startup_max_reconnect_attempts = parse_attempts(name, value)?;
            }
            "randomize" => options.randomize = parse_bool(name, value)?,
            // As ActiveMQ's FailoverTransport: only a positive timeout limits (0 as -1).
            "timeout" => {
                options.timeout = parse_minus_one(name, value, "-1 or milliseconds")?
                    .filter(|&ms| ms > 0)
                    .map(Duration::from_millis)
            }
            _ => {
                check_known(pair, query, &[FAILOVER_OPTIONS, FAILOVER_OPTIONS_IGNORED])?;
                ignored.push(pair.to_string());
            }
        }
    }
    Ok(())
}

/// Refuses an option (`name=value`, in `part`) that is in none of `known` and has none of the
/// [`IGNORED_PREFIXES`], naming the known option it resembles, if one does.
fn check_known(option: &str, part: &str, known: &[&[&'static str]]) -> Result<(), UrlError> {
    let name = option.split_once('=').map_or(option, |(n, _)| n).trim();
    let lower = name.to_ascii_lowercase();
    let names = || known.iter().flat_map(|list| list.iter().copied());
    if IGNORED_PREFIXES.iter().any(|p| lower.starts_with(p))
        || names().any(|n| n.eq_ignore_ascii_case(name))
    {
        return Ok(());
    }
    let resembles = names()
        .map(|n| (edit_distance(&n.to_ascii_lowercase(), &lower), n))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n);
    Err(UrlError::UnknownOption {
        option: name.to_string(),
        part: part.to_string(),
        resembles,
    })
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn invalid(option: &str, value: &str, expected: &'static str) -> UrlError {
    UrlError::OptionValue {
        option: option.to_string(),
        value: value.to_string(),
        expected,
    }
}

fn parse_millis(option: &str, value: &str) -> Result<Duration, UrlError> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| invalid(option, value, "a whole number of milliseconds"))
}

fn parse_bool(option: &str, value: &str) -> Result<bool, UrlError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(option, value, "true or false")),
    }
}

/// `-1` is `None`; otherwise a non-negative integer.
fn parse_minus_one(
    option: &str,
    value: &str,
    expected: &'static str,
) -> Result<Option<u64>, UrlError> {
    match value.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n as u64)),
        _ => Err(invalid(option, value, expected)),
    }
}

fn parse_attempts(option: &str, value: &str) -> Result<AttemptLimit, UrlError> {
    const EXPECTED: &str = "-1 (forever) or a number of attempts";
    match parse_minus_one(option, value, EXPECTED)? {
        None => Ok(AttemptLimit::Unlimited),
        Some(n) => u32::try_from(n)
            .map(AttemptLimit::Limited)
            .map_err(|_| invalid(option, value, EXPECTED)),
    }
}

/// An option as it may be logged: the name only when it may hold a secret
/// (`jms.password=...`).
fn loggable_option(option: &str) -> String {
    match option.split_once('=') {
        Some((name, _))
            if ["password", "passcode", "secret", "token"]
                .iter()
                .any(|s| name.to_ascii_lowercase().contains(s)) =>
        {
            format!("{name}=(hidden)")
        }
        _ => option.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::failover::Phase;

    #[test]
    fn secrets_in_ignored_options_are_not_logged() {
        assert_eq!(
            loggable_option("jms.password=s3cret"),
            "jms.password=(hidden)"
        );
        assert_eq!(loggable_option("jms.userName=app"), "jms.userName=app");
        assert_eq!(loggable_option("trace"), "trace");
    }

    fn addr(host: &str, port: u16) -> BrokerAddress {
        BrokerAddress {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn single_urls_and_plain_lists() {
        let url = FailoverUrl::parse("tcp://broker1:61616").unwrap();
        assert_eq!(url.brokers, vec![addr("broker1", 61616)]);
        // As ActiveMQ's tcp://: the first connection is tried once, not for ever.
        assert_eq!(
            url.options,
            FailoverOptions {
                startup_max_reconnect_attempts: AttemptLimit::Limited(0),
                ..FailoverOptions::default()
            }
        );
        assert_eq!(url.options.passes_allowed(Phase::Startup), Some(1));
        assert_eq!(url.options.passes_allowed(Phase::Reconnect), None);
        let url = FailoverUrl::parse("failover:(tcp://broker1:61616)").unwrap();
        assert_eq!(url.options, FailoverOptions::default());

        let url = FailoverUrl::parse("stomp://10.0.0.1").unwrap();
        assert_eq!(url.brokers, vec![addr("10.0.0.1", DEFAULT_STOMP_PORT)]);

        let url = FailoverUrl::parse(" a:1, b:2 ,tcp://c:3/").unwrap();
        assert_eq!(url.brokers, vec![addr("a", 1), addr("b", 2), addr("c", 3)]);

        let url = FailoverUrl::parse("[::1]:61613,tcp://[fe80::1],broker").unwrap();
        assert_eq!(
            url.brokers,
            vec![
                addr("::1", 61613),
                addr("fe80::1", 61616),
                addr("broker", 61616)
            ]
        );
        assert_eq!(url.brokers[0].to_string(), "tcp://[::1]:61613");
    }

    #[test]
    fn activemq_defaults() {
        let o = FailoverOptions::default();
        assert_eq!(o.initial_reconnect_delay, Duration::from_millis(10));
        assert_eq!(o.max_reconnect_delay, Duration::from_millis(30_000));
        assert!(o.use_exponential_backoff);
        assert_eq!(o.backoff_multiplier, 2.0);
        assert_eq!(o.max_reconnect_attempts, AttemptLimit::Unlimited);
        assert_eq!(o.startup_max_reconnect_attempts, AttemptLimit::Unlimited);
        assert!(o.randomize);
        assert_eq!(o.timeout, None);
    }

    #[test]
    fn failover_with_parentheses_and_every_option() {
        let url = FailoverUrl::parse(
            "failover:(tcp://192.168.74.55:61616,tcp://192.168.74.26:61616,tcp://192.168.74.25:61616)\
             ?initialReconnectDelay=1000&maxReconnectDelay=5000&useExponentialBackOff=false\
             &backOffMultiplier=1.5&maxReconnectAttempts=0&startupMaxReconnectAttempts=3\
             &randomize=false&timeout=2500",
        )
        .unwrap();
        assert_eq!(
            url.brokers,
            vec![
                addr("192.168.74.55", 61616),
                addr("192.168.74.26", 61616),
                addr("192.168.74.25", 61616)
            ]
        );
        let o = &url.options;
        assert_eq!(o.initial_reconnect_delay, Duration::from_millis(1000));
        assert_eq!(o.max_reconnect_delay, Duration::from_millis(5000));
        assert!(!o.use_exponential_backoff);
        assert_eq!(o.backoff_multiplier, 1.5);
        assert_eq!(o.max_reconnect_attempts, AttemptLimit::Limited(0));
        assert_eq!(o.startup_max_reconnect_attempts, AttemptLimit::Limited(3));
        assert!(!o.randomize);
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert!(url.ignored_options.is_empty());
        assert_eq!(
            url.to_string(),
            "(tcp://192.168.74.55:61616,tcp://192.168.74.26:61616,tcp://192.168.74.25:61616)"
        );
    }

    #[test]
    fn failover_without_parentheses() {
        let url =
            FailoverUrl::parse("failover:tcp://a:1,tcp://b:2?randomize=false&timeout=-1").unwrap();
        assert_eq!(url.brokers, vec![addr("a", 1), addr("b", 2)]);
        assert!(!url.options.randomize);
        assert_eq!(url.options.timeout, None);
        // As ActiveMQ's FailoverTransport, 0 sets no timeout either (it used to fail at once).
        let url = FailoverUrl::parse("failover:(tcp://a:1)?timeout=0").unwrap();
        assert_eq!(url.options.timeout, None);

        let url = FailoverUrl::parse("FAILOVER://(tcp://a:1)").unwrap();
        assert_eq!(url.brokers, vec![addr("a", 1)]);
    }

    /// A misspelt option is refused, naming it and the option meant, as ActiveMQ's client
    /// refuses it: ignored, it would leave the default in force (a client retrying for ever
    /// instead of giving up).
    #[test]
    fn options_activemq_does_not_know_either_are_refused() {
        let err = |s: &str| FailoverUrl::parse(s).unwrap_err().to_string();
        let e = err("failover:(tcp://a:1)?initialReconectDelay=1000&maxReconectAttempts=0");
        assert!(
            e.contains("unknown option \"initialReconectDelay\"")
                && e.contains("did you mean initialReconnectDelay?")
                && e.contains("Invalid connect parameters"),
            "{e}"
        );
        let e = err("failover:(tcp://a:1)?maxReconectAttempts=0");
        assert!(e.contains("did you mean maxReconnectAttempts?"), "{e}");
        let e = err("tcp://a:1?bogus=1");
        assert!(
            e.contains("unknown option \"bogus\" in \"tcp://a:1?bogus=1\"") && !e.contains("mean"),
            "{e}"
        );
        let e = err("tcp://a:1?soTimeot=5");
        assert!(e.contains("did you mean soTimeout?"), "{e}");
        // A failover option on an address is not a TCP option (ActiveMQ refuses it there too).
        assert!(err("tcp://a:1?randomize=false").contains("unknown option"));
        // ActiveMQ's own options, copied from a Java application, still pass (ignored).
        let url = FailoverUrl::parse(
            "failover:(tcp://a:1?soTimeout=5&socket.x=1&transport.useKeepAlive=false)\
             ?jms.prefetchPolicy.all=10&priorityBackup=true&UPDATEURISSUPPORTED=false",
        )
        .unwrap();
        assert_eq!(url.ignored_options.len(), 6, "{:?}", url.ignored_options);
    }

    #[test]
    fn activemq_options_this_client_has_no_use_for_are_ignored() {
        let url = FailoverUrl::parse(
            "failover:(tcp://a:1?wireFormat.maxInactivityDuration=0,tcp://b:2)\
             ?nested.wireFormat.x=1&trackMessages=true&reconnectDelayExponent=3",
        )
        .unwrap();
        assert_eq!(url.brokers, vec![addr("a", 1), addr("b", 2)]);
        assert_eq!(url.options.backoff_multiplier, 3.0);
        assert_eq!(
            url.ignored_options,
            vec![
                "wireFormat.maxInactivityDuration=0 (on tcp://a:1?wireFormat.maxInactivityDuration=0)",
                "nested.wireFormat.x=1",
                "trackMessages=true"
            ]
        );
    }

    #[test]
    fn option_names_are_case_insensitive() {
        let url =
            FailoverUrl::parse("failover:(a:1)?RANDOMIZE=FALSE&MaxReconnectAttempts=7").unwrap();
        assert!(!url.options.randomize);
        assert_eq!(url.options.max_reconnect_attempts, AttemptLimit::Limited(7));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let err = |s: &str| FailoverUrl::parse(s).unwrap_err().to_string();
        assert_eq!(err(""), "empty broker URL");
        assert!(err("failover:(tcp://a:1").contains("unbalanced parentheses"));
        assert!(err("failover:(tcp://a:1)x").contains("\"x\""));
        assert!(err("ssl://a:1").contains("\"ssl\""));
        assert!(err("tcp://a:1,,tcp://b:2").contains("empty broker address"));
        assert!(err("tcp://:61613").contains("missing host in \"tcp://:61613\""));
        let e = err("tcp://a:99999");
        assert!(
            e.contains("\"99999\"") && e.contains("tcp://a:99999"),
            "{e}"
        );
        assert!(err("a:0").contains("invalid port \"0\""));
        let e = err("failover:(a:1)?maxReconnectAttempts=-2");
        assert!(
            e.contains("maxReconnectAttempts") && e.contains("\"-2\""),
            "{e}"
        );
        let e = err("failover:(a:1)?initialReconnectDelay=1s");
        assert!(
            e.contains("initialReconnectDelay") && e.contains("milliseconds"),
            "{e}"
        );
        assert!(err("failover:(a:1)?randomize=yes").contains("true or false"));
        assert!(err("failover:(a:1)?backOffMultiplier=0").contains("backOffMultiplier"));
        assert!(err("failover:(a:1)?timeout").contains("expected name=value"));
        assert!(err("failover:(failover:(a:1))").contains("parentheses"));
    }
}
