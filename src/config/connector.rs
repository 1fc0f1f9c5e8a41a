//! Listener addresses written as ActiveMQ URIs: `tcp://0.0.0.0:61616`, `stomp://[::]:61613`,
//! `nio://0.0.0.0:61616?maximumConnections=1000&wireFormat.maxFrameSize=104857600`.
//!
//! A `<transportConnector uri>` copied from `activemq.xml` parses as ActiveMQ reads it where
//! ferromq can honour it (the schemes of plain TCP, and the two options above), and is refused
//! with an error naming what cannot be honoured (TLS, other protocols, other options) rather
//! than silently listening differently.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ParseError;

/// The protocol a client listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectorScheme {
    /// `tcp://`: the protocol is detected from the first bytes a client sends (ActiveMQ's
    /// `auto://` behaviour on its default port). Also written `nio://`, `auto://` or
    /// `auto+nio://` (ActiveMQ's OpenWire over NIO, and its protocol detection).
    Tcp,
    /// `stomp://`: STOMP only. Also written `stomp+nio://`.
    Stomp,
}

impl ConnectorScheme {
    /// The scheme of a connector URI written `name://` (any case); what to write instead
    /// when ferromq cannot listen as it asks.
    fn from_name(name: &str) -> Result<ConnectorScheme, String> {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "tcp" | "nio" | "auto" | "auto+nio" => Ok(ConnectorScheme::Tcp),
            "stomp" | "stomp+nio" => Ok(ConnectorScheme::Stomp),
            n if n.contains("ssl") || n == "wss" || n == "https" => Err(
                "TLS is not supported by ferromq's listeners: listen on tcp:// and terminate \
                 TLS in front of it (stunnel, HAProxy), or use a private network"
                    .into(),
            ),
            n if n.starts_with("amqp") || n.starts_with("mqtt") => {
                Err("ferromq speaks STOMP and OpenWire only".into())
            }
            _ => Err(
                "expected tcp:// (protocol detected; also nio://, auto://, auto+nio://) \
                 or stomp:// (also stomp+nio://)"
                    .into(),
            ),
        }
    }
}

/// The options of a connector URI (`?name=value&...`) that ferromq honours; any other is an
/// error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ConnectorOptions {
    /// `maximumConnections`: past this many open client connections, a new one is refused
    /// with an error naming the option.
    pub maximum_connections: Option<usize>,
    /// `wireFormat.maxFrameSize`: this connector's frame limit, in place of
    /// `broker.max_frame_size`.
    pub max_frame_size: Option<u64>,
}

impl ConnectorOptions {
    const MAXIMUM_CONNECTIONS: &'static str = "maximumConnections";
    const MAX_FRAME_SIZE: &'static str = "wireFormat.maxFrameSize";

    /// Parses `name=value&...` (the part after `?`).
    fn parse(query: &str, uri: &str) -> Result<ConnectorOptions, ParseError> {
        let bad = |why: String| ParseError::new(format!("invalid connector {uri:?}: {why}"));
        let mut options = ConnectorOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option {pair:?} has no `=value`")))?;
            let number = |what: &str, min: u64, max: u64| {
                value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "{what}={value:?}: expected an integer from {min} to {max}"
                        ))
                    })
            };
            let twice = || bad(format!("option {name:?} is given twice"));
            if name == Self::MAXIMUM_CONNECTIONS {
                if options.maximum_connections.is_some() {
                    return Err(twice());
                }
                options.maximum_connections = Some(number(name, 1, u32::MAX as u64)? as usize);
            } else if name == Self::MAX_FRAME_SIZE {
                if options.max_frame_size.is_some() {
                    return Err(twice());
                }
                options.max_frame_size =
                    Some(number(name, super::MIN_FRAME_SIZE, super::MAX_FRAME_SIZE)?);
            } else {
                return Err(bad(format!(
                    "option {name:?} is not supported (supported: {}, {})",
                    Self::MAXIMUM_CONNECTIONS,
                    Self::MAX_FRAME_SIZE
                )));
            }
        }
        Ok(options)
    }

    /// `?name=value&...`, or `""` without options.
    fn query(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(n) = self.maximum_connections {
            pairs.push(format!("{}={n}", Self::MAXIMUM_CONNECTIONS));
        }
        if let Some(n) = self.max_frame_size {
            pairs.push(format!("{}={n}", Self::MAX_FRAME_SIZE));
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

impl ConnectorScheme {
    /// The URI scheme, without `://`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectorScheme::Tcp => "tcp",
            ConnectorScheme::Stomp => "stomp",
        }
    }
}

impl fmt::Display for ConnectorScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listen or connect address `host:port` (`[::1]:61616` for IPv6; port 0 means "any free
/// port"), kept as that canonical string so that `as_str()` can go straight to
/// `tokio::net::TcpListener::bind` or `TcpStream::connect`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort(String);

impl HostPort {
    /// `host` is a name or an IP literal without brackets.
    pub fn new(host: &str, port: u16) -> HostPort {
        if host.contains(':') {
            HostPort(format!("[{host}]:{port}"))
        } else {
            HostPort(format!("{host}:{port}"))
        }
    }

    /// `host:port`, or `[v6]:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host, without IPv6 brackets.
    pub fn host(&self) -> &str {
        let (host, _) = self.0.rsplit_once(':').expect("validated host:port");
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    pub fn port(&self) -> u16 {
        let (_, port) = self.0.rsplit_once(':').expect("validated host:port");
        port.parse().expect("validated port")
    }

    /// The address as a `SocketAddr` when the host is an IP literal (no name resolution).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port()))
    }

    /// The host is a wildcard address (`0.0.0.0` or `::`): the listener accepts on every
    /// interface.
    pub fn is_unspecified(&self) -> bool {
        self.host()
            .parse::<IpAddr>()
            .map(|ip| ip.is_unspecified())
            .unwrap_or(false)
    }

    /// Parses `host:port` or `[v6]:port` (the part of a URI after `scheme://`). `uri` is the
    /// whole text, for error messages.
    fn parse_authority(authority: &str, uri: &str) -> Result<HostPort, ParseError> {
        let bad = |why: &str| ParseError::new(format!("invalid address {uri:?}: {why}"));
        if authority.contains(['?', '#']) {
            return Err(bad("URI options (`?...`) are not supported"));
        }
        if authority.contains('/') {
            return Err(bad("a path is not allowed; expected scheme://host:port"));
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing `]` after an IPv6 address"))?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between `[` and `]`"));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing `:port`"))?;
            (v6, port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| bad("missing `:port`"))?;
            if host.contains(':') {
                return Err(bad("write an IPv6 address in brackets: [::1]:61616"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad(
                "missing host (use 0.0.0.0 to listen on every interface)",
            ));
        }
        if host.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(bad("invalid host"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("the port must be an integer from 0 to 65535"))?;
        Ok(HostPort::new(host, port))
    }

    /// Parses `tcp://host:port` (the form of `replication.bind`).
    pub fn parse_tcp_uri(uri: &str) -> Result<HostPort, ParseError> {
        match split_scheme(uri)? {
            (scheme, authority) if scheme.eq_ignore_ascii_case("tcp") => {
                HostPort::parse_authority(authority, uri)
            }
            (scheme, _) => Err(ParseError::new(format!(
                "unsupported scheme {scheme:?} in {uri:?}: expected tcp://host:port"
            ))),
        }
    }

    /// `tcp://host:port`, the form [`HostPort::parse_tcp_uri`] reads.
    pub fn to_tcp_uri(&self) -> String {
        format!("tcp://{self}")
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn split_scheme(uri: &str) -> Result<(&str, &str), ParseError> {
    uri.trim().split_once("://").ok_or_else(|| {
        ParseError::new(format!(
            "invalid address {uri:?}: expected scheme://host:port, e.g. tcp://0.0.0.0:61616"
        ))
    })
}

/// One client listener of `transport.connectors`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connector {
    pub scheme: ConnectorScheme,
    /// `host:port`; `address.as_str()` is what `TcpListener::bind` takes.
    pub address: HostPort,
    pub options: ConnectorOptions,
}

impl Connector {
    /// A connector without options.
    pub fn new(scheme: ConnectorScheme, address: HostPort) -> Connector {
        Connector {
            scheme,
            address,
            options: ConnectorOptions::default(),
        }
    }
}

impl FromStr for Connector {
    type Err = ParseError;

    fn from_str(uri: &str) -> Result<Connector, ParseError> {
        let uri = uri.trim();
        let (scheme, rest) = split_scheme(uri)?;
        let scheme = ConnectorScheme::from_name(scheme).map_err(|why| {
            ParseError::new(format!(
                "unsupported scheme {scheme:?} in connector {uri:?}: {why}"
            ))
        })?;
        let (authority, options) = match rest.split_once('?') {
            Some((authority, query)) => (authority, ConnectorOptions::parse(query, uri)?),
            None => (rest, ConnectorOptions::default()),
        };
        Ok(Connector {
            scheme,
            address: HostPort::parse_authority(authority, uri)?,
            options,
        })
    }
}

impl fmt::Display for Connector {
    /// The URI form: `tcp://0.0.0.0:61616`, with its options.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme,
            self.address,
            self.options.query()
        )
    }
}

impl Serialize for Connector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Connector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "connector::tcp_uri")]` for a [`HostPort`] written as `tcp://host:port`.
pub mod tcp_uri {
    use super::*;

    pub fn serialize<S: Serializer>(value: &HostPort, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_tcp_uri())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HostPort, D::Error> {
        let s = String::deserialize(deserializer)?;
        HostPort::parse_tcp_uri(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "connector::optional_tcp_uri")]` for an optional [`HostPort`]: absent or
/// `""` is `None`.
pub mod optional_tcp_uri {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<HostPort>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(&value.to_tcp_uri()),
            None => serializer.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<HostPort>, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        // An HTTP endpoint's address may be written as one (`http://0.0.0.0:8161`).
        let trimmed = s.trim();
        let s = match trimmed.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => {
                format!("tcp://{}", trimmed[7..].trim_end_matches('/'))
            }
            _ => s,
        };
        HostPort::parse_tcp_uri(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// `#[serde(deserialize_with = "connector::list")]`: a list of connector URIs, or one string of
/// comma-separated URIs (handy in `FERROMQ_TRANSPORT__CONNECTORS=tcp://...,stomp://...`).
pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Connector>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    let uris = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(uris) => uris,
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    uris.iter()
        .map(|uri| uri.parse().map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connectors() {
        let c: Connector = "tcp://0.0.0.0:61616".parse().unwrap();
        assert_eq!(c.scheme, ConnectorScheme::Tcp);
        assert_eq!(c.address.host(), "0.0.0.0");
        assert_eq!(c.address.port(), 61616);
        assert!(c.address.is_unspecified());
        assert_eq!(
            c.address.socket_addr(),
            Some("0.0.0.0:61616".parse().unwrap())
        );
        assert_eq!(c.to_string(), "tcp://0.0.0.0:61616");

        let c: Connector = "STOMP://broker.example:61613".parse().unwrap();
        assert_eq!(c.scheme, ConnectorScheme::Stomp);
        assert_eq!(c.address.to_string(), "broker.example:61613");
        assert_eq!(c.address.socket_addr(), None);

        let c: Connector = "tcp://[::1]:0".parse().unwrap();
        assert_eq!(c.address.host(), "::1");
        assert_eq!(c.address.port(), 0);
        assert_eq!(c.to_string(), "tcp://[::1]:0");
    }

    /// A `<transportConnector uri>` from `activemq.xml` parses as ActiveMQ reads it: the NIO
    /// and auto-detecting schemes of plain TCP, `maximumConnections` and
    /// `wireFormat.maxFrameSize`; TLS and other protocols are refused saying why.
    #[test]
    fn activemq_connector_uris() {
        let c: Connector =
            "nio://0.0.0.0:61616?maximumConnections=1000&wireFormat.maxFrameSize=104857600"
                .parse()
                .unwrap();
        assert_eq!(c.scheme, ConnectorScheme::Tcp);
        assert_eq!(c.address.port(), 61616);
        assert_eq!(
            c.options,
            ConnectorOptions {
                maximum_connections: Some(1000),
                max_frame_size: Some(104_857_600),
            }
        );
        assert_eq!(
            c.to_string(),
            "tcp://0.0.0.0:61616?maximumConnections=1000&wireFormat.maxFrameSize=104857600"
        );
        assert_eq!(c.to_string().parse::<Connector>().unwrap(), c);
        for (uri, scheme) in [
            ("auto://0.0.0.0:1", ConnectorScheme::Tcp),
            ("auto+nio://0.0.0.0:1", ConnectorScheme::Tcp),
            (
                "stomp+nio://0.0.0.0:1?maximumConnections=5",
                ConnectorScheme::Stomp,
            ),
        ] {
            assert_eq!(uri.parse::<Connector>().unwrap().scheme, scheme, "{uri}");
        }
        for (uri, says) in [
            ("ssl://0.0.0.0:61617", "TLS"),
            ("stomp+ssl://0.0.0.0:61612", "TLS"),
            ("amqp://0.0.0.0:5672", "STOMP and OpenWire only"),
            ("mqtt://0.0.0.0:1883", "STOMP and OpenWire only"),
            ("ws://0.0.0.0:61614", "expected tcp://"),
            (
                "tcp://0.0.0.0:1?transport.soTimeout=1",
                "transport.soTimeout",
            ),
        ] {
            let err = uri.parse::<Connector>().unwrap_err().to_string();
            assert!(err.contains(uri) && err.contains(says), "{uri}: {err}");
        }
    }

    #[test]
    fn rejects_bad_connectors() {
        let err = "ssl://0.0.0.0:61617"
            .parse::<Connector>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"ssl://0.0.0.0:61617\"") && err.contains("scheme"),
            "{err}"
        );
        for bad in [
            "0.0.0.0:61616",
            "tcp://0.0.0.0",
            "tcp://:61616",
            "tcp://0.0.0.0:70000",
            "tcp://::1:61616",
            "tcp://0.0.0.0:61616?maximumConnections=0",
            "tcp://0.0.0.0:61616?maximumConnections=10&maximumConnections=20",
            "tcp://0.0.0.0:61616?maximumConnections=many",
            "tcp://0.0.0.0:61616?wireFormat.maxFrameSize=10",
            "tcp://0.0.0.0:61616?transport.soTimeout=1000",
            "tcp://0.0.0.0:61616?maximumConnections",
            "tcp://0.0.0.0:61616/",
            "tcp://[::1:61616",
        ] {
            let err = bad.parse::<Connector>().unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn replication_bind() {
        let hp = HostPort::parse_tcp_uri("tcp://0.0.0.0:61619").unwrap();
        assert_eq!((hp.host(), hp.port()), ("0.0.0.0", 61619));
        assert_eq!(hp.as_str(), "0.0.0.0:61619");
        assert_eq!(hp.to_tcp_uri(), "tcp://0.0.0.0:61619");
        assert!(HostPort::parse_tcp_uri("stomp://0.0.0.0:61619").is_err());
    }
}
