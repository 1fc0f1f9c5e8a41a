//! A TCP proxy that a test can cut, to partition one process from a server without stopping
//! either: [`Proxy::cut`] stops forwarding in both directions on every connection (bytes wait
//! in the kernel's buffers, new connections are accepted but get no answer), as a network
//! partition would; [`Proxy::heal`] forwards again, in order, so a stream survives a cut that
//! its peers survive (what a peer closed meanwhile is closed then).
//!
//! Used to cut one broker off from ZooKeeper while it keeps running and keeps its clients and
//! its replication links, and to cut a master off from its slaves while it keeps ZooKeeper and
//! its clients. [`Proxy::cut_at`] arms a trip wire instead: the proxy cuts itself the moment a
//! client sends given bytes, before forwarding them, so a test can partition a process in the
//! middle of a conversation it cannot time from outside.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a pump of a cut proxy looks whether it is healed.
const PAUSED_POLL: Duration = Duration::from_millis(10);

/// A proxy from a loopback port of its own to `target`; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    wire: TripWire,
}

/// Bytes whose sending by a client cuts the proxy (see [`Proxy::cut_at`]); set when it trips.
#[derive(Clone, Default)]
struct TripWire(Arc<Mutex<Option<Vec<u8>>>>, Arc<AtomicBool>);

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        Proxy::listen(SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    /// Listens on `listen` (port 0: any free port) and forwards every connection to `target`.
    pub fn listen(listen: SocketAddr, target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let wire = TripWire::default();
        let (c, s, w) = (cut.clone(), stop.clone(), wire.clone());
        std::thread::Builder::new()
            .name(format!("proxy-{addr}"))
            .spawn(move || accept_loop(listener, target, c, s, w))?;
        Ok(Proxy {
            addr,
            cut,
            stop,
            wire,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding, both ways, on every connection.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Arms a trip wire: the first time a client sends `bytes` (within one read of the
    /// proxy's, or across two), the proxy cuts itself as [`Proxy::cut`] does, before it
    /// forwards them. Fires once; [`Proxy::tripped`] tells whether it has.
    pub fn cut_at(&self, bytes: &[u8]) {
        *self.wire.0.lock().unwrap() = Some(bytes.to_vec());
    }

    /// Whether the trip wire of [`Proxy::cut_at`] fired.
    pub fn tripped(&self) -> bool {
        self.wire.1.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    wire: TripWire,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let (cut, stop, wire) = (cut.clone(), stop.clone(), wire.clone());
                let _ = std::thread::Builder::new()
                    .name("proxy-connection".into())
                    .spawn(move || connect_and_pump(client, target, cut, stop, wire));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(PAUSED_POLL),
            Err(_) => std::thread::sleep(PAUSED_POLL),
        }
    }
}

/// Connects to `target` once the proxy is not cut, then pumps both ways until either side
/// closes.
fn connect_and_pump(
    client: TcpStream,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    wire: TripWire,
) {
    if client.set_nonblocking(false).is_err() {
        return;
    }
    while cut.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(PAUSED_POLL);
    }
    let Ok(server) = TcpStream::connect(target) else {
        return; // the client sees its connection closed, as if refused
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (c, s) = (cut.clone(), stop.clone());
    let _ = std::thread::Builder::new()
        .name("proxy-pump".into())
        .spawn(move || pump(client2, server2, c, s, Some(wire)));
    pump(server, client, cut, stop, None);
}

/// Copies `from` to `to` while not cut; at the end of `from` (or an error) shuts both down.
/// With a `wire` (the client's direction), bytes that trip it cut the proxy and wait.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    wire: Option<TripWire>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of what was read before, so that bytes split across two reads trip the wire.
    let mut tail: Vec<u8> = Vec::new();
    // Read while cut by the wire, forwarded once healed.
    let mut held: Option<usize> = None;
    // A short read timeout, so that a cut (or the proxy's end) is noticed while idle.
    let _ = from.set_read_timeout(Some(PAUSED_POLL));
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if cut.load(Ordering::SeqCst) {
            std::thread::sleep(PAUSED_POLL);
            continue;
        }
        if let Some(n) = held.take() {
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(wire) = &wire {
                    tail.extend_from_slice(&buf[..n]);
                    if wire.trips(&tail) {
                        cut.store(true, Ordering::SeqCst);
                        held = Some(n);
                        continue;
                    }
                    let keep = tail.len().min(256);
                    tail.drain(..tail.len() - keep);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl TripWire {
    /// Whether `seen` holds the armed bytes; if so the wire is spent and marked tripped.
    fn trips(&self, seen: &[u8]) -> bool {
        let mut armed = self.0.lock().unwrap();
        let Some(bytes) = armed.as_ref() else {
            return false;
        };
        if bytes.is_empty() || !seen.windows(bytes.len()).any(|w| w == bytes.as_slice()) {
            return false;
        }
        *armed = None;
        self.1.store(true, Ordering::SeqCst);
        true
    }
}
