//! The node process: opens the store, starts the broker core, listens on the configured
//! connectors and gives each connection to the protocol its first bytes name.
//!
//! It owns sockets and tasks, never broker state; it must never answer a client itself beyond
//! refusing a protocol it cannot tell.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::{Broker, BrokerOptions};
use crate::config::{Config, ConnectorScheme};
use crate::protocol::stomp::session::{self as stomp, StompOptions};
use crate::protocol::{detect, Detected};
use crate::store::{Position, Store, StoreOptions};

/// How long a new connection may take to send enough bytes to tell its protocol.
const DETECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running node: its broker core and the addresses it listens on.
pub struct Node {
    pub broker: Broker,
    pub addresses: Vec<SocketAddr>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens the store, recovers, starts the core and binds every connector.
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        let (confirmed_tx, confirmed_rx) = watch::channel(Position(0));
        let options = StoreOptions {
            directory: config.store.directory.clone(),
            log_size: config.store.log_size,
            fsync: config.store.sync.fsync_locally(),
        };
        let directory = options.directory.clone();
        let (store, recovered) = tokio::task::spawn_blocking(move || {
            Store::open(
                options,
                Box::new(move |position| {
                    let _ = confirmed_tx.send(position);
                }),
            )
        })
        .await?
        .with_context(|| format!("opening the store in {}", directory.display()))?;
        let epoch = recovered.epoch + 1;
        let messages: usize = recovered.queues.iter().map(|(_, m)| m.len()).sum();
        tracing::info!(
            node = %config.broker.name,
            role = "standalone",
            epoch,
            position = recovered.end.0,
            messages,
            directory = %directory.display(),
            "store recovered; serving as standalone master"
        );
        let broker = Broker::start(
            store,
            recovered,
            confirmed_rx,
            epoch,
            BrokerOptions {
                name: config.broker.name.clone(),
                max_redeliveries: config.broker.max_redeliveries,
                topic_pending_limit: config.broker.topic_pending_limit,
                ..BrokerOptions::default()
            },
        )?;
        let stomp_options = Arc::new(StompOptions {
            max_frame_size: config.broker.max_frame_size as usize,
            users: config
                .broker
                .users
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            connect_timeout: DETECT_TIMEOUT,
        });
        let mut addresses = Vec::new();
        let mut listeners = Vec::new();
        for connector in &config.transport.connectors {
            let listener = TcpListener::bind(connector.address.as_str())
                .await
                .with_context(|| format!("binding connector {connector}"))?;
            let address = listener.local_addr()?;
            tracing::info!(%connector, %address, "accepting clients");
            addresses.push(address);
            let scheme = connector.scheme;
            listeners.push(tokio::spawn(accept_loop(
                listener,
                scheme,
                broker.clone(),
                stomp_options.clone(),
            )));
        }
        Ok(Node {
            broker,
            addresses,
            listeners,
        })
    }

    /// Stops accepting new connections.
    pub fn stop_listening(&self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if !config.is_standalone() {
        tracing::warn!(
            "replication settings are present, but this build runs the node standalone: \
             ZooKeeper election arrives with the replication step"
        );
    }
    let node = Node::start(&config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.stop_listening();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    scheme: ConnectorScheme,
    broker: Broker,
    stomp_options: Arc<StompOptions>,
) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let broker = broker.clone();
        let stomp_options = stomp_options.clone();
        tokio::spawn(async move {
            handle_connection(socket, peer, scheme, broker, stomp_options).await;
        });
    }
}

async fn handle_connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    scheme: ConnectorScheme,
    broker: Broker,
    stomp_options: Arc<StompOptions>,
) {
    let mut initial = BytesMut::with_capacity(4096);
    let detected = match scheme {
        ConnectorScheme::Stomp => Detected::Stomp,
        ConnectorScheme::Tcp => {
            let read = tokio::time::timeout(DETECT_TIMEOUT, async {
                loop {
                    if let Some(d) = detect(&initial) {
                        return Some(d);
                    }
                    match socket.read_buf(&mut initial).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            match read {
                Ok(Some(d)) => d,
                Ok(None) => return,
                Err(_) => {
                    tracing::debug!(%peer, "no protocol detected before the timeout; closing");
                    return;
                }
            }
        }
    };
    match detected {
        Detected::Stomp => stomp::serve(socket, initial, broker, stomp_options, peer).await,
        Detected::OpenWire => {
            tracing::warn!(%peer, "OpenWire client refused: OpenWire support is not built yet");
            let _ = socket.shutdown().await;
        }
        Detected::Unknown => {
            tracing::info!(%peer, "unknown protocol; closing the connection");
            let _ = socket
                .write_all(b"ERROR\nmessage:unknown protocol: expected STOMP\n\n\0")
                .await;
            let _ = socket.shutdown().await;
        }
    }
}
