//! The admin endpoint: a small HTTP listener for monitoring, load balancers and operators,
//! where ActiveMQ has its web console (`[admin] bind`, e.g. `tcp://127.0.0.1:8161`).
//!
//! - `GET /health`: 200 while the process runs, with its role, epoch, position (the journal's
//!   end: current on the node that serves, where the role began on the others) and whether it
//!   serves clients (JSON). For "is the node alive" checks and restart supervisors.
//! - `GET /ready`: the same body; 200 only while this node serves clients (the master, or a
//!   standalone node), its store accepts writes and its disk has not stalled
//!   (`store.stall_timeout`) and, on a master, its ZooKeeper lease holds; 503 otherwise. For load balancers that send clients to the master only.
//! - `GET /metrics`: Prometheus text format: role, epoch, positions, sessions, per-queue depth,
//!   consumers and unacknowledged deliveries, message counters, memory held for queued bodies;
//!   on a node that does not serve (a slave), its store's journal end and disk use.
//! - `GET /queues`: the queues as JSON (503 when this node serves no clients).
//! - Destination operations, as the web console's (JSON answers; 503 where `/queues` is):
//!   `POST /queues/<name>/purge` (ActiveMQ's `purge()`), `DELETE /queues/<name>`
//!   (`removeQueue`) and `POST /queues/<name>/retry` (`retryMessages()`, for a DLQ). `<name>`
//!   is a name as `/queues` lists it (`queue://orders`, percent-encoded or not) or a bare
//!   queue name (`orders`). They are refused (403) unless `[admin] token` is set, and then
//!   need `Authorization: Bearer <token>` (401), compared in constant time.
//!
//! It runs on a thread and runtime of its own ([`serve_on_own_thread`]): the node's runtime
//! workers can all wait on a stalled disk at once, and the endpoint must answer then.
//!
//! It owns the listener, the parsing of requests (a bounded head read under a deadline; a
//! body of at most 64 KiB is read and ignored, a longer one refused), the authorization of
//! write operations and the rendering of what [`Status`] and the broker core report. It
//! changes broker state only through the
//! core's admin operations ([`Broker::purge_queue`], [`Broker::delete_queue`],
//! [`Broker::retry_dead_letters`]), which journal every change as any other, and only for a
//! request that carries the configured token. It must never change state any other way or
//! without that token, hold the core's lock while writing to a socket, or let a malformed
//! request do more than get a 4xx answer and a closed connection.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::broker::{AdminError, Broker};
use crate::server::{FailureRun, Mode};
use crate::store::{StoreFigures, StoreGauge};

/// The longest request head read; longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;
/// The longest request body read (and ignored: no request takes one, but a client may send an
/// empty form); longer ones get 413.
const MAX_BODY: usize = 64 * 1024;
/// A client has this long to send its request head.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// A client has this long to take the response.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Requests answered at once; past that, connections wait to be accepted, so a flood of
/// admin connections cannot take the open files kept for the store (see `files`).
const REQUESTS_AT_ONCE: usize = 32;
/// How long a write operation's answer waits for it to finish and its last record to be
/// confirmed (a cluster that lost its quorum confirms nothing) before it answers 503; the
/// operation goes on, and may still be confirmed.
const CONFIRM_DEADLINE: Duration = Duration::from_secs(30);

/// What this node is, as the node's lifecycle last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// `standalone`, `master`, `slave` or `candidate`.
    pub name: &'static str,
    pub epoch: u64,
    /// The end of this node's journal when the role began.
    pub position: u64,
}

/// A master's replication, as the endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// Slave acknowledgements a confirmation needs (`replicas / 2`).
    pub needed: usize,
    /// The connected slaves.
    pub slaves: Vec<Slave>,
    /// ZooKeeper vouches for this mastership now (its lease holds: see
    /// [`crate::election::Lease`]); without it nothing is confirmed and `/ready` answers 503.
    pub lease_held: bool,
}

/// A slave connected to this master.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Slave {
    pub node: String,
    pub address: String,
    /// The journal position it last acknowledged holding.
    pub acked: u64,
}

/// Reads a master's replication when asked.
pub type ReplicationSource = Box<dyn Fn() -> Replication + Send + Sync>;

/// The node's role, set by the lifecycle at each role change and read by the endpoint.
pub struct Status {
    node: String,
    role: Mutex<Role>,
    /// Set while this node is master.
    replication: Mutex<Option<ReplicationSource>>,
    /// The node's store, whichever role holds it (a slave's figures come from here).
    store: Mutex<Option<StoreGauge>>,
    /// Why the store's disk counts as stalled, while it does (see [`crate::watchdog`]).
    store_stall: Mutex<Option<String>>,
    /// Stalls seen since start, so that a monitor that polls less often than they last sees
    /// them too.
    store_stalls: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("node", &self.node)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Status {
    pub fn new(node: &str) -> Arc<Status> {
        Arc::new(Status {
            node: node.to_string(),
            role: Mutex::new(Role {
                name: "candidate",
                epoch: 0,
                position: 0,
            }),
            replication: Mutex::new(None),
            store: Mutex::new(None),
            store_stall: Mutex::new(None),
            store_stalls: Default::default(),
        })
    }

    /// The store's disk stalled (`Some(why)`), or answers again (`None`).
    pub fn set_store_stall(&self, stall: Option<String>) {
        if stall.is_some() {
            self.store_stalls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *self.store_stall.lock().unwrap_or_else(|p| p.into_inner()) = stall;
    }

    /// The store this node opened (again at each reopening).
    pub fn set_store(&self, gauge: StoreGauge) {
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(gauge);
    }

    fn store_figures(&self) -> Option<StoreFigures> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(StoreGauge::figures)
    }

    /// Where a master's replication is read (`None` when this node stops being master).
    pub fn set_replication(&self, source: Option<ReplicationSource>) {
        *self.replication.lock().unwrap_or_else(|p| p.into_inner()) = source;
    }

    pub fn replication(&self) -> Option<Replication> {
        self.replication
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|source| source())
    }

    pub fn set_role(&self, name: &'static str, epoch: u64, position: u64) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = Role {
            name,
            epoch,
            position,
        };
    }

    pub fn role(&self) -> Role {
        self.role.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The endpoint served on a thread and runtime of its own ([`serve_on_own_thread`]); it stops
/// when this is dropped.
#[derive(Debug)]
pub struct AdminThread {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Disconnected once the thread has dropped its runtime, and with it every clone of the
    /// broker core its tasks held.
    ended: std::sync::mpsc::Receiver<()>,
}

impl AdminThread {
    /// Where the endpoint listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// How long dropping an [`AdminThread`] waits for its thread to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Drop for AdminThread {
    /// Stops the endpoint and waits (up to 5 s: a request may be blocked on the
    /// core's lock) until its thread has let go of the broker core, so that the core, and its
    /// store, is closed by whoever drops it last on the node's side, not on this thread while
    /// the process exits; and its port is closed.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.ended.recv_timeout(STOP_WAIT);
    }
}

/// [`serve`] on a thread of its own, with a single-threaded runtime: the node's runtime
/// workers can all be blocked at once (each waiting on the store's disk in an inline batch
/// while it stalls, say), and `/health` and `/ready` must still answer then, for the monitor
/// that is to notice.
pub async fn serve_on_own_thread(
    bind: &str,
    status: Arc<Status>,
    mode: watch::Receiver<Mode>,
    token: Option<String>,
) -> anyhow::Result<AdminThread> {
    let (started, start) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (end, ended) = std::sync::mpsc::channel::<()>();
    let bind = bind.to_string();
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            // Dropped last, after the runtime below.
            let _end = end;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ =
                        started
                            .send(Err(anyhow::Error::new(e)
                                .context("starting the admin endpoint's runtime")));
                    return;
                }
            };
            runtime.block_on(async move {
                match serve(&bind, status, mode, token).await {
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                    Ok((address, task)) => {
                        let _ = started.send(Ok(address));
                        // Until the handle is dropped (or its owner is gone).
                        let _ = stopped.await;
                        task.abort();
                    }
                }
            });
        })
        .context("starting the admin endpoint's thread")?;
    let address = start
        .await
        .context("the admin endpoint's thread ended at start")??;
    Ok(AdminThread {
        address,
        stop: Some(stop),
        ended,
    })
}

/// Binds `bind` and serves the endpoint until the returned task is aborted. `mode` is the
/// client listeners' mode: it says whether (and with which broker core) this node serves.
/// `token` is `[admin] token`: without one, write operations are refused.
pub async fn serve(
    bind: &str,
    status: Arc<Status>,
    mode: watch::Receiver<Mode>,
    token: Option<String>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let token: Arc<Option<String>> = Arc::new(token);
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the admin endpoint on {bind}"))?;
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        writes = if token.is_some() { "with the token" } else { "refused: no [admin] token" },
        "admin endpoint listening (/health, /ready, /metrics, /queues)"
    );
    let task = tokio::spawn(async move {
        let at_once = Arc::new(tokio::sync::Semaphore::new(REQUESTS_AT_ONCE));
        let mut accept_failures = FailureRun::default();
        loop {
            // A place first, so connections past the bound wait in the listen backlog, where
            // they take none of this process's files.
            let Ok(permit) = at_once.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    if accept_failures.failed() {
                        tracing::warn!(error = %e, "admin endpoint: accept failed; retrying every 100 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Some(failures) = accept_failures.ended() {
                tracing::info!(failures, "admin endpoint: accepting again");
            }
            let status = status.clone();
            let mode = mode.clone();
            let token = token.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &status, &mode, token.as_deref()).await {
                    tracing::debug!(%peer, error = %e, "admin endpoint: request failed");
                }
                drop(permit);
            });
        }
    });
    Ok((address, task))
}

/// Reads one request, writes one response, closes.
async fn answer(
    mut stream: TcpStream,
    status: &Status,
    mode: &watch::Receiver<Mode>,
    token: Option<&str>,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_DEADLINE, read_head(&mut stream)).await {
        Err(_) => Response::text(408, "request head not received in time\n"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(head)) => match parse_request(&head) {
            Err(response) => response,
            Ok(request) => {
                // Read before answering: closing with unread bytes resets the connection, and
                // the client may lose the answer.
                let mut unread = (&mut stream).take(request.body_unread as u64);
                let mut sink = tokio::io::sink();
                let drained = tokio::io::copy(&mut unread, &mut sink);
                if tokio::time::timeout(READ_DEADLINE, drained).await.is_err() {
                    let response = Response::text(408, "request body not received in time\n");
                    return write_response(&mut stream, &response).await;
                }
                let view = View::of(status, mode);
                let mut response = match Operation::of(&request.path) {
                    Some(operation) => operation.answer(&request, &view, token).await,
                    None => route(&request, &view),
                };
                // HEAD: GET's headers, Content-Length included, without the body.
                response.head_only = request.method == "HEAD";
                response
            }
        },
    };
    write_response(&mut stream, &response).await
}

/// Writes `response` and closes, within [`WRITE_DEADLINE`]: a client that stops reading (a hung
/// scraper, a slow network) must not keep one of the [`REQUESTS_AT_ONCE`] places for good, or
/// enough of them would leave `/ready` and `/health` unanswered.
async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let written = async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_DEADLINE, written).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read the response in time",
        )),
    }
}

/// The request head (through the blank line), or what arrived of it when the client stopped
/// sending or it grew past [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head_end(&head).is_none() && head.len() <= MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    /// The `Authorization` header's value, if the request has one.
    authorization: Option<String>,
    /// Bytes of the body (`Content-Length`, at most [`MAX_BODY`]) not read with the head.
    body_unread: usize,
}

/// Where the head's header lines end and where its body starts: at the first blank line,
/// whether its lines end with `\r\n` or with LF alone (which HTTP lets a server accept), or a
/// mix of both.
fn head_end(head: &[u8]) -> Option<(usize, usize)> {
    head.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .find_map(|(i, _)| {
            let end = if i > 0 && head[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            match head.get(i + 1..) {
                Some([b'\n', ..]) => Some((end, i + 2)),
                Some([b'\r', b'\n', ..]) => Some((end, i + 3)),
                _ => None,
            }
        })
}

/// The method and path of a request head; a 4xx response when it is not a usable one.
fn parse_request(head: &[u8]) -> Result<Request, Response> {
    if head.len() > MAX_HEAD {
        return Err(Response::text(431, "request head too large\n"));
    }
    let Some((end, body_start)) = head_end(head) else {
        return Err(Response::text(400, "incomplete request head\n"));
    };
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return Err(Response::text(400, "request head is not UTF-8\n"));
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::text(400, "malformed request line\n"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Err(Response::text(400, "malformed request line\n"));
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let header = |wanted: &str| {
        text.lines().skip(1).find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(wanted)
                .then(|| value.trim().to_string())
        })
    };
    let body = match header("content-length").map(|n| n.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Err(Response::text(413, "no request here takes a body\n")),
        Some(Err(_)) => return Err(Response::text(400, "malformed Content-Length\n")),
    };
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        authorization: header("authorization"),
        body_unread: body.saturating_sub(head.len() - body_start),
    })
}

/// What one request sees: the role and, while serving, the broker core.
struct View {
    node: String,
    role: Role,
    broker: Option<Broker>,
    /// Why clients are refused, when they are.
    refusal: Option<String>,
    /// Why the store accepts no more writes, once it failed (a full disk, say).
    store_failure: Option<String>,
    /// Why the store's disk counts as stalled, while it does.
    store_stall: Option<String>,
    /// Stalls seen since start.
    store_stalls: u64,
    /// The journal's end: the serving node's current one, else where the role began.
    position: u64,
    /// A master's slaves.
    replication: Option<Replication>,
    /// The store's figures when no broker core serves (a slave's, a candidate's).
    store: Option<StoreFigures>,
}

impl View {
    fn of(status: &Status, mode: &watch::Receiver<Mode>) -> View {
        let (broker, refusal) = match &*mode.borrow() {
            Mode::Serve(broker) => (Some(broker.clone()), None),
            Mode::Refuse(reason)
            | Mode::Electing(reason)
            | Mode::Closed(reason)
            | Mode::Pending(reason) => (None, Some(reason.clone())),
        };
        let store_failure = broker.as_ref().and_then(Broker::store_failure);
        let role = status.role();
        let position = broker
            .as_ref()
            .map_or(role.position, |broker| broker.stats().journal_end);
        let store = broker.is_none().then(|| status.store_figures()).flatten();
        View {
            node: status.node.clone(),
            role,
            broker,
            refusal,
            store_failure,
            store_stall: status
                .store_stall
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            store_stalls: status
                .store_stalls
                .load(std::sync::atomic::Ordering::Relaxed),
            replication: status.replication(),
            store,
            position,
        }
    }

    fn health_json(&self) -> String {
        serde_json::json!({
            "status": "up",
            "node": self.node,
            "role": self.role.name,
            "epoch": self.role.epoch,
            "position": self.position,
            "serving": self.broker.is_some(),
            "reason": self.refusal,
            "store_failure": self.store_failure,
            "store_stall": self.store_stall,
            "slaves": self.replication.as_ref().map(|r| &r.slaves),
            "slaves_needed": self.replication.as_ref().map(|r| r.needed),
            "lease_held": self.replication.as_ref().map(|r| r.lease_held),
        })
        .to_string()
            + "\n"
    }
}

/// A write operation on a queue: what a path under `/queues/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    Purge(String),
    Delete(String),
    Retry(String),
}

impl Operation {
    /// The operation `path` names (`/queues/<name>/purge`, `/queues/<name>`,
    /// `/queues/<name>/retry`), its name still as written; `None` for any other path, such as
    /// a misspelt operation (`/queues/<name>/prge`: a name holds no `/` but its scheme's, a
    /// `/` in a queue's name is written `%2F`).
    fn of(path: &str) -> Option<Operation> {
        let rest = path.strip_prefix("/queues/")?;
        let operation = if let Some(name) = rest.strip_suffix("/purge") {
            Operation::Purge(name.to_string())
        } else if let Some(name) = rest.strip_suffix("/retry") {
            Operation::Retry(name.to_string())
        } else {
            Operation::Delete(rest.to_string())
        };
        let name = operation.name();
        let bare = name.split_once("://").map_or(name, |(_, bare)| bare);
        (!bare.contains('/')).then_some(operation)
    }

    fn method(&self) -> &'static str {
        match self {
            Operation::Delete(_) => "DELETE",
            Operation::Purge(_) | Operation::Retry(_) => "POST",
        }
    }

    fn name(&self) -> &str {
        match self {
            Operation::Purge(name) | Operation::Delete(name) | Operation::Retry(name) => name,
        }
    }

    /// Checks the request as [`Operation::refusal`] does, then runs the operation on the
    /// serving core.
    async fn answer(&self, request: &Request, view: &View, token: Option<&str>) -> Response {
        let (queue, broker) = match self.refusal(request, view, token) {
            Err(response) => return response,
            Ok(ready) => ready,
        };
        // On a task of its own: a client that goes away, or the deadline, never stops an
        // operation between two batches.
        let run = {
            let (operation, queue) = (self.clone(), queue.clone());
            tokio::spawn(async move {
                match operation {
                    Operation::Purge(_) => broker
                        .purge_queue(&queue)
                        .await
                        .map(|removed| serde_json::json!({ "queue": queue, "removed": removed })),
                    Operation::Delete(_) => broker.delete_queue(&queue).await.map(|removed| {
                        serde_json::json!({ "queue": queue, "removed": removed, "deleted": true })
                    }),
                    Operation::Retry(_) => broker.retry_dead_letters(&queue).await.map(|r| {
                        serde_json::json!({ "queue": queue, "moved": r.moved, "left": r.left })
                    }),
                }
            })
        };
        let outcome = tokio::time::timeout(CONFIRM_DEADLINE, run).await;
        let (code, body) = match outcome {
            Err(_) => (
                503,
                serde_json::json!({ "queue": queue, "error": format!("not done within {CONFIRM_DEADLINE:?} (a cluster without its quorum confirms nothing): it goes on, and may still be confirmed; see /queues") }),
            ),
            Ok(Err(panicked)) => (
                500,
                serde_json::json!({ "queue": queue, "error": format!("the operation failed: {panicked}") }),
            ),
            Ok(Ok(Ok(done))) => (200, done),
            Ok(Ok(Err(error))) => {
                let code = match &error {
                    AdminError::UnknownQueue(_) => 404,
                    AdminError::Conflict(_) => 409,
                    AdminError::Broker(_) => 503,
                };
                (
                    code,
                    serde_json::json!({ "queue": queue, "error": error.to_string() }),
                )
            }
        };
        tracing::info!(operation = ?self, queue, code, outcome = %body, "admin operation");
        Response::json(code, body.to_string() + "\n")
    }

    /// The canonical queue and the serving core to run the operation on, or the answer that
    /// refuses it: 405 for another method, 403 without a configured token, 401 without the
    /// right `Authorization`, 503 on a node that serves no clients, 404 for a name that
    /// names no queue.
    fn refusal(
        &self,
        request: &Request,
        view: &View,
        token: Option<&str>,
    ) -> Result<(String, Broker), Response> {
        if request.method != self.method() {
            let mut response = Response::text(405, &format!("only {} here\n", self.method()));
            response.headers.push(("Allow", self.method().into()));
            return Err(response);
        }
        let Some(token) = token else {
            return Err(Response::text(
                403,
                "write operations are off: set [admin] token (admin.token) in the configuration \
                 to allow them\n",
            ));
        };
        // The scheme is case-insensitive (RFC 9110).
        let offered = request
            .authorization
            .as_deref()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credentials)| credentials.trim());
        if !offered.is_some_and(|offered| crate::secret::same(offered, token)) {
            let mut response = Response::text(
                401,
                "write operations need Authorization: Bearer <[admin] token>\n",
            );
            response.headers.push(("WWW-Authenticate", "Bearer".into()));
            return Err(response);
        }
        let Some(broker) = &view.broker else {
            return Err(Response::json(503, view.health_json()));
        };
        let queue =
            match percent_decoded(self.name()) {
                Some(name) if name.contains("://") => name,
                Some(name) if !name.is_empty() => format!("queue://{name}"),
                Some(_) => return Err(Response::text(404, "not found: no such queue name\n")),
                None => return Err(Response::text(
                    400,
                    "bad request: the queue name's percent-encoding is malformed (each % takes \
                     two hex digits, and the name decodes to UTF-8)\n",
                )),
            };
        Ok((queue, broker.clone()))
    }
}

/// `text` with its `%XX` escapes decoded; `None` when one is malformed or the result is not
/// UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn route(request: &Request, view: &View) -> Response {
    let known = ["/health", "/ready", "/metrics", "/queues"];
    if !known.contains(&request.path.as_str()) {
        return Response::text(
            404,
            "not found: try /health, /ready, /metrics, /queues, or POST /queues/<name>/purge, \
             POST /queues/<name>/retry, DELETE /queues/<name>\n",
        );
    }
    if request.method != "GET" && request.method != "HEAD" {
        let mut response = Response::text(405, "only GET and HEAD\n");
        response.headers.push(("Allow", "GET, HEAD".into()));
        return response;
    }
    match request.path.as_str() {
        "/health" => Response::json(200, view.health_json()),
        "/ready" => {
            let ready = view.broker.is_some()
                && view.store_failure.is_none()
                && view.store_stall.is_none()
                && view.replication.as_ref().is_none_or(|r| r.lease_held);
            let code = if ready { 200 } else { 503 };
            Response::json(code, view.health_json())
        }
        "/metrics" => Response {
            code: 200,
            headers: vec![(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8".into(),
            )],
            body: metrics(view).into_bytes(),
            head_only: false,
        },
        _ => match &view.broker {
            Some(broker) => {
                let queues = broker.queue_stats();
                Response::json(
                    200,
                    serde_json::to_string(&queues).unwrap_or_default() + "\n",
                )
            }
            None => Response::json(503, view.health_json()),
        },
    }
}

/// Metrics of the store, shown by every node (name, help).
const JOURNAL_END: (&str, &str) = ("ferromq_journal_end_bytes", "Journal end position");
const JOURNAL_RETAINED: (&str, &str) = (
    "ferromq_journal_retained_bytes",
    "Journal bytes of segments not yet released (disk use grows with it)",
);
const STORE_SIZE: (&str, &str) = (
    "ferromq_store_size_bytes",
    "Disk the journal's retained segments take, each at least log_size (compared with store_limit)",
);

/// Prometheus text exposition of `view`.
fn metrics(view: &View) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let node = escape_label(&view.node);
    gauge(
        "ferromq_role",
        "1 for this node's current role",
        "gauge",
        &[(
            format!("{{node=\"{node}\",role=\"{}\"}}", view.role.name),
            1,
        )],
    );
    gauge(
        "ferromq_serving",
        "1 while this node accepts clients (master or standalone)",
        "gauge",
        &[(String::new(), u64::from(view.broker.is_some()))],
    );
    gauge(
        "ferromq_store_failed",
        "1 once the store accepts no more writes (see the log for why)",
        "gauge",
        &[(String::new(), u64::from(view.store_failure.is_some()))],
    );
    gauge(
        "ferromq_store_stalled",
        "1 while a journal write or fsync has been unfinished for store.stall_timeout",
        "gauge",
        &[(String::new(), u64::from(view.store_stall.is_some()))],
    );
    gauge(
        "ferromq_store_stalls_total",
        "Disk stalls seen since start",
        "counter",
        &[(String::new(), view.store_stalls)],
    );
    gauge(
        "ferromq_epoch",
        "Epoch of the current role",
        "gauge",
        &[(String::new(), view.role.epoch)],
    );
    if let Some(replication) = &view.replication {
        gauge(
            "ferromq_replication_slaves",
            "Slaves connected to this master",
            "gauge",
            &[(String::new(), replication.slaves.len() as u64)],
        );
        gauge(
            "ferromq_replication_slaves_needed",
            "Slave acknowledgements a confirmation needs (replicas/2); fewer connected: nothing is confirmed",
            "gauge",
            &[(String::new(), replication.needed as u64)],
        );
        gauge(
            "ferromq_master_lease_held",
            "1 while ZooKeeper vouches for this master (a request answered within 0.9 session timeouts); 0: nothing is confirmed",
            "gauge",
            &[(String::new(), u64::from(replication.lease_held))],
        );
        let acked: Vec<(String, u64)> = replication
            .slaves
            .iter()
            .map(|s| {
                (
                    format!(
                        "{{slave=\"{}\",address=\"{}\"}}",
                        escape_label(&s.node),
                        escape_label(&s.address)
                    ),
                    s.acked,
                )
            })
            .collect();
        gauge(
            "ferromq_replication_slave_acked_bytes",
            "Journal position each slave last acknowledged (behind ferromq_journal_end_bytes by its lag)",
            "gauge",
            &acked,
        );
    }
    let Some(broker) = &view.broker else {
        // Not serving: the store's own figures (a slave's copy grows with the master's journal).
        if let Some(store) = view.store {
            let figures = [
                (JOURNAL_END, store.journal_end),
                (JOURNAL_RETAINED, store.journal_retained),
                (STORE_SIZE, store.disk_bytes),
            ];
            for ((name, help), value) in figures {
                gauge(name, help, "gauge", &[(String::new(), value)]);
            }
        }
        return out;
    };
    let stats = broker.stats();
    let counters: [(&str, &str, u64); 8] = [
        (
            "ferromq_messages_enqueued_total",
            "Messages put on queues",
            stats.enqueued,
        ),
        (
            "ferromq_messages_delivered_total",
            "Deliveries to consumers",
            stats.delivered,
        ),
        (
            "ferromq_messages_acknowledged_total",
            "Acknowledged deliveries",
            stats.acknowledged,
        ),
        (
            "ferromq_messages_duplicate_total",
            "Re-sent messages already stored, dropped",
            stats.duplicates_dropped,
        ),
        (
            "ferromq_messages_dead_lettered_total",
            "Messages moved to a dead-letter queue",
            stats.dead_lettered,
        ),
        (
            "ferromq_messages_expired_total",
            "Messages expired on queues",
            stats.expired,
        ),
        (
            "ferromq_topic_discarded_total",
            "Messages discarded for slow topic subscribers",
            stats.topic_discarded,
        ),
        (
            "ferromq_bodies_read_back_total",
            "Queued bodies read back from the journal (past memory_limit)",
            stats.bodies_read_back,
        ),
    ];
    for (name, help, value) in counters {
        gauge(name, help, "counter", &[(String::new(), value)]);
    }
    let gauges: [(&str, &str, u64); 13] = [
        (JOURNAL_END.0, JOURNAL_END.1, stats.journal_end),
        (JOURNAL_RETAINED.0, JOURNAL_RETAINED.1, stats.journal_retained),
        (STORE_SIZE.0, STORE_SIZE.1, stats.store_bytes),
        (
            "ferromq_store_limit_bytes",
            "store_limit, capped at start to the disk's room",
            stats.store_limit,
        ),
        (
            "ferromq_store_full",
            "1 while the store is at store_limit: persistent sends wait (or are refused with send_fail_if_no_space)",
            u64::from(stats.store_full),
        ),
        (
            "ferromq_confirmed_position_bytes",
            "Confirmed watermark (held as sync requires)",
            stats.confirmed,
        ),
        ("ferromq_sessions", "Client sessions", stats.sessions as u64),
        ("ferromq_consumers", "Consumers", stats.consumers as u64),
        (
            "ferromq_pending_confirmations",
            "Sends and commits waiting for their confirmation",
            stats.pending_confirmations as u64,
        ),
        (
            "ferromq_queued_body_bytes",
            "Bytes of queued messages held in memory, bodies and headers (see memory_limit)",
            stats.resident_bytes,
        ),
        (
            "ferromq_queued_non_persistent_body_bytes",
            "The non-persistent part; at memory_limit their producers are paused",
            stats.transient_bytes,
        ),
        (
            "ferromq_queues",
            "Queues, durable subscriptions' included",
            stats.queues as u64,
        ),
        (
            "ferromq_scheduled_messages",
            "Delayed messages not yet due (scheduler_support), on no queue until then",
            stats.scheduled as u64,
        ),
    ];
    for (name, help, value) in gauges {
        gauge(name, help, "gauge", &[(String::new(), value)]);
    }
    let queues = broker.queue_stats();
    let per_queue = |f: fn(&crate::broker::QueueStats) -> usize| -> Vec<(String, u64)> {
        queues
            .iter()
            .map(|q| {
                (
                    format!("{{queue=\"{}\"}}", escape_label(&q.name)),
                    f(q) as u64,
                )
            })
            .collect()
    };
    gauge(
        "ferromq_queue_messages",
        "Messages waiting on the queue",
        "gauge",
        &per_queue(|q| q.ready),
    );
    gauge(
        "ferromq_queue_consumers",
        "Consumers of the queue",
        "gauge",
        &per_queue(|q| q.consumers),
    );
    gauge(
        "ferromq_queue_in_flight",
        "Delivered, unacknowledged messages of the queue",
        "gauge",
        &per_queue(|q| q.in_flight),
    );
    out
}

/// A label value as the exposition format writes it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Response {
    code: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Written without its body (the answer to a HEAD), Content-Length still the body's.
    head_only: bool,
}

impl Response {
    fn text(code: u16, body: &str) -> Response {
        Response {
            code,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn json(code: u16, body: String) -> Response {
        Response {
            code,
            headers: vec![("Content-Type", "application/json".into())],
            body: body.into_bytes(),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.code {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            413 => "Payload Too Large",
            500 => "Internal Server Error",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.code);
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(
            out,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Result<Request, u16> {
        parse_request(head.as_bytes()).map_err(|r| r.code)
    }

    #[test]
    fn requests_are_parsed_and_bad_ones_get_a_4xx() {
        assert_eq!(
            request("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request {
                method: "GET".into(),
                path: "/metrics".into(),
                authorization: None,
                body_unread: 0,
            })
        );
        assert_eq!(
            request("GET /health HTTP/1.0\r\n\r\n").unwrap().path,
            "/health"
        );
        assert_eq!(request("GET /health HTTP/1.1\r\n"), Err(400));
        assert_eq!(request("GET /health\r\n\r\n"), Err(400));
        assert_eq!(request("GET health HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(request("\u{1}\u{2}garbage\r\n\r\n"), Err(400));
        assert_eq!(request("GET / HTTP/1.1 extra\r\n\r\n"), Err(400));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(request(&long), Err(431));
        assert_eq!(
            parse_request(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).map_err(|r| r.code),
            Err(400)
        );
    }

    fn view(serving: bool) -> View {
        View {
            node: "n\"1".into(),
            role: Role {
                name: if serving { "master" } else { "slave" },
                epoch: 7,
                position: 42,
            },
            broker: None,
            refusal: (!serving).then(|| "a master serves elsewhere".into()),
            store_failure: None,
            store_stall: None,
            store_stalls: 0,
            position: 42,
            replication: None,
            store: None,
        }
    }

    /// A master shows its slaves: how many are connected against how many a confirmation
    /// needs, and what each acknowledged, in `/metrics` and `/health`; other roles show none.
    #[test]
    fn a_master_shows_its_slaves() {
        let mut master = view(true);
        master.replication = Some(Replication {
            needed: 1,
            slaves: vec![Slave {
                node: "n2".into(),
                address: "10.0.0.2:40000".into(),
                acked: 4096,
            }],
            lease_held: true,
        });
        let text = metrics(&master);
        for line in [
            "ferromq_replication_slaves 1\n",
            "ferromq_replication_slaves_needed 1\n",
            "ferromq_master_lease_held 1\n",
            "ferromq_replication_slave_acked_bytes{slave=\"n2\",address=\"10.0.0.2:40000\"} 4096\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let json: serde_json::Value = serde_json::from_str(&master.health_json()).unwrap();
        assert_eq!(json["slaves_needed"], 1);
        assert_eq!(json["slaves"][0]["node"], "n2");
        assert_eq!(json["slaves"][0]["acked"], 4096);
        assert_eq!(json["lease_held"], true);
        let slave = view(false);
        assert!(!metrics(&slave).contains("ferromq_replication"));
        let json: serde_json::Value = serde_json::from_str(&slave.health_json()).unwrap();
        assert!(json["slaves"].is_null());
    }

    /// A serving master is ready only while its lease holds: one resumed after a pause past
    /// its ZooKeeper session, whose clients a new master may already serve, answers 503 (and
    /// confirms nothing) until it steps down or ZooKeeper vouches for it again.
    #[tokio::test]
    async fn a_master_is_ready_only_while_its_lease_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut master = view(true);
        master.broker = Some(Broker::start_for_tests(dir.path(), Default::default()));
        let ready = |master: &View| route(&get_request("/ready"), master).code;
        assert_eq!(ready(&master), 200, "standalone: no lease");
        for (held, code) in [(true, 200), (false, 503)] {
            master.replication = Some(Replication {
                needed: 1,
                slaves: Vec::new(),
                lease_held: held,
            });
            assert_eq!(ready(&master), code, "lease held: {held}");
            let gauge = format!("ferromq_master_lease_held {}\n", u8::from(held));
            assert!(metrics(&master).contains(&gauge), "{gauge}");
        }
    }

    /// A standalone node whose disk stalled serves on (nothing to hand over to) but is not
    /// ready, says why in `/health`, and shows it in `/metrics`, so a monitor alerts on it.
    #[tokio::test]
    async fn a_node_whose_disk_stalled_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = view(true);
        node.broker = Some(Broker::start_for_tests(dir.path(), Default::default()));
        assert_eq!(route(&get_request("/ready"), &node).code, 200);
        assert!(metrics(&node).contains("ferromq_store_stalled 0\n"));
        node.store_stall = Some("the store's disk stalled".into());
        assert_eq!(route(&get_request("/ready"), &node).code, 503);
        let health = route(&get_request("/health"), &node);
        assert_eq!(health.code, 200, "the process runs");
        let json: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
        assert_eq!(json["store_stall"], "the store's disk stalled");
        assert!(metrics(&node).contains("ferromq_store_stalled 1\n"));
    }

    fn get_request(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            authorization: None,
            body_unread: 0,
        }
    }

    #[test]
    fn routes_answer_by_role() {
        let get = get_request;
        let slave = view(false);
        assert_eq!(route(&get("/health"), &slave).code, 200);
        assert_eq!(route(&get("/ready"), &slave).code, 503);
        assert_eq!(route(&get("/queues"), &slave).code, 503);
        assert_eq!(route(&get("/nope"), &slave).code, 404);
        let post = Request {
            method: "POST".into(),
            path: "/health".into(),
            authorization: None,
            body_unread: 0,
        };
        assert_eq!(route(&post, &slave).code, 405);
        let body = String::from_utf8(route(&get("/health"), &slave).body).unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["role"], "slave");
        assert_eq!(json["epoch"], 7);
        assert_eq!(json["position"], 42);
        assert_eq!(json["serving"], false);
        assert_eq!(json["reason"], "a master serves elsewhere");
        let text = metrics(&slave);
        assert!(
            text.contains("ferromq_role{node=\"n\\\"1\",role=\"slave\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ferromq_serving 0\n"), "{text}");
        assert!(text.contains("ferromq_store_failed 0\n"), "{text}");
        assert!(!text.contains("ferromq_store_size_bytes"), "{text}");
        // A slave's store, read through its gauge.
        let slave = View {
            store: Some(StoreFigures {
                journal_end: 5000,
                journal_retained: 4000,
                disk_bytes: 1 << 20,
            }),
            ..view(false)
        };
        let text = metrics(&slave);
        for line in [
            "ferromq_journal_end_bytes 5000\n",
            "ferromq_journal_retained_bytes 4000\n",
            "ferromq_store_size_bytes 1048576\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    fn write(method: &str, path: &str, authorization: Option<&str>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            authorization: authorization.map(str::to_string),
            body_unread: 0,
        }
    }

    /// The answer to a write operation: its code and body.
    async fn operate(request: &Request, view: &View, token: Option<&str>) -> (u16, String) {
        let operation = Operation::of(&request.path).expect("a write operation's path");
        let response = operation.answer(request, view, token).await;
        let body = String::from_utf8(response.body.clone()).unwrap();
        if response.code == 405 {
            assert!(response.headers.iter().any(|(n, _)| *n == "Allow"));
        }
        if response.code == 401 {
            assert!(response
                .headers
                .contains(&("WWW-Authenticate", "Bearer".into())));
        }
        (response.code, body)
    }

    #[test]
    fn the_authorization_header_is_parsed_and_names_are_decoded() {
        let parsed =
            parse_request(b"POST /queues/q/purge HTTP/1.1\r\nauthorization:  Bearer s3 \r\n\r\n");
        assert_eq!(
            parsed.map_err(|r| r.code).unwrap().authorization.as_deref(),
            Some("Bearer s3")
        );
        assert_eq!(
            Operation::of("/queues/queue%3A%2F%2Fa%2Fb/retry"),
            Some(Operation::Retry("queue%3A%2F%2Fa%2Fb".into()))
        );
        assert_eq!(
            percent_decoded("queue%3A%2F%2Fa%2Fb").as_deref(),
            Some("queue://a/b")
        );
        let with_body = b"POST /queues/q/purge HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(
            parse_request(with_body)
                .map_err(|r| r.code)
                .unwrap()
                .body_unread,
            3
        );
        let huge = b"POST /queues/q/purge HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
        assert_eq!(parse_request(huge).map_err(|r| r.code).unwrap_err(), 413);
        let bad = b"POST /queues/q/purge HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse_request(bad).map_err(|r| r.code).unwrap_err(), 400);
        // Lines ended with LF alone, as some hand-written clients send them.
        let bare = parse_request(b"POST /queues/q/purge HTTP/1.1\nContent-Length: 4\n\nab");
        let bare = bare.map_err(|r| r.code).unwrap();
        assert_eq!(
            (bare.path.as_str(), bare.body_unread),
            ("/queues/q/purge", 2)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nx\n\n"), Some((14, 18)));
        // Mixed line ends: the first blank line ends the head all the same.
        assert_eq!(head_end(b"GET / HTTP/1.1\n\r\nx"), Some((14, 17)));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\nx"), Some((14, 17)));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(percent_decoded("%zz"), None);
        assert_eq!(percent_decoded("%4"), None);
        assert_eq!(percent_decoded("%ff"), None);
        assert_eq!(Operation::of("/queues"), None);
        // A misspelt operation names no queue: 404, not "only DELETE here".
        assert_eq!(Operation::of("/queues/q/prge"), None);
        assert_eq!(
            Operation::of("/queues/queue://q"),
            Some(Operation::Delete("queue://q".into()))
        );
        assert_eq!(
            Operation::of("/queues/queue://q/purge"),
            Some(Operation::Purge("queue://q".into()))
        );
        let misspelt = Request {
            method: "POST".into(),
            path: "/queues/q/prge".into(),
            authorization: None,
            body_unread: 0,
        };
        assert_eq!(route(&misspelt, &view(true)).code, 404);
    }

    /// `GET path` over a plain socket, with a read deadline: the whole response, or why none.
    fn blocking_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// The endpoint answers while the runtime that started it runs nothing at all (as when
    /// every worker waits on a stalled disk): it has a thread and runtime of its own. Served
    /// on the caller's runtime instead ([`serve`]), the same request would get no answer
    /// until that runtime ran again. The port is closed once dropping the handle returns.
    #[test]
    fn the_endpoint_answers_while_the_nodes_runtime_is_blocked() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_tx, mode) = watch::channel(Mode::Refuse("not serving".into()));
        let status = Status::new("n1");
        status.set_store_stall(Some("no write finished for 31s".into()));
        let admin = runtime
            .block_on(serve_on_own_thread("127.0.0.1:0", status, mode, None))
            .unwrap();
        // Outside `block_on`, this thread's runtime runs no task.
        let health = blocking_get(admin.address(), "/health").unwrap();
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains("no write finished for 31s"), "{health}");
        let ready = blocking_get(admin.address(), "/ready").unwrap();
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");

        // Dropping the handle returns once the thread has let go of the port.
        let address = admin.address();
        drop(admin);
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "the port still accepts after the handle was dropped"
        );
    }

    /// The endpoint of a node that serves no clients, on a free port; keep the sender, or
    /// its mode ends.
    async fn serve_not_serving() -> (watch::Sender<Mode>, SocketAddr, tokio::task::JoinHandle<()>) {
        let (tx, mode) = watch::channel(Mode::Refuse("not serving".into()));
        let (address, task) = serve("127.0.0.1:0", Status::new("n1"), mode, None)
            .await
            .unwrap();
        (tx, address, task)
    }

    /// A client that stops sending before its head ends, or before the body its
    /// Content-Length announces, is answered 408 once the read deadline passes, rather than
    /// closed without a word. In paused time: the deadline passes as soon as nothing else runs.
    #[tokio::test(start_paused = true)]
    async fn a_request_cut_short_is_answered_408() {
        let (_tx, address, task) = serve_not_serving().await;
        for (request, says) in [
            (
                &b"GET /health HTTP/1.1\r\n"[..],
                "request head not received in time",
            ),
            (
                &b"GET /health HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"[..],
                "request body not received in time",
            ),
        ] {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
            assert!(answer.contains(says), "{answer}");
        }
        task.abort();
    }

    /// Connections that send nothing hold their request's place only up to the bound: the
    /// next request waits, unanswered, and is answered once one of them leaves.
    #[tokio::test]
    async fn requests_at_once_are_bounded() {
        let (_tx, address, task) = serve_not_serving().await;
        let mut silent = Vec::new();
        for _ in 0..REQUESTS_AT_ONCE {
            silent.push(TcpStream::connect(address).await.unwrap());
        }
        let mut waiting = TcpStream::connect(address).await.unwrap();
        waiting
            .write_all(b"GET /health HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let early = tokio::time::timeout(
            Duration::from_millis(500),
            waiting.read_to_string(&mut answer),
        )
        .await;
        assert!(early.is_err(), "answered past the bound: {answer}");
        silent.pop();
        tokio::time::timeout(Duration::from_secs(4), waiting.read_to_string(&mut answer))
            .await
            .expect("answered once a place is free")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        task.abort();
    }

    /// A client that stops reading (a hung scraper) gives its request's place back once the
    /// write deadline passes; without it, 32 of them left `/ready` unanswered for good.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_the_response_gives_its_place_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // Far more than the socket buffers hold: the write blocks while the client reads
        // nothing.
        let response = Response::text(200, &"x".repeat(64 << 20));
        let result = write_response(&mut server, &response).await;
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        drop(client);
    }

    /// HEAD answers GET's status and headers, Content-Length the length GET's body has, and
    /// no body.
    #[tokio::test]
    async fn head_announces_the_length_of_the_body_it_leaves_out() {
        let (_tx, address, task) = serve_not_serving().await;
        let ask = |method: &'static str| async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let request = format!("{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            (head.to_string(), body.to_string())
        };
        let (get_head, get_body) = ask("GET").await;
        let (head_head, head_body) = ask("HEAD").await;
        assert!(!get_body.is_empty());
        assert!(
            get_head.contains(&format!("Content-Length: {}\r\n", get_body.len())),
            "{get_head}"
        );
        assert_eq!(head_body, "");
        assert!(
            head_head.contains(&format!("Content-Length: {}\r\n", get_body.len())),
            "{head_head}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn write_operations_are_refused_without_the_token_a_serving_core_or_a_queue() {
        let token = Some("s3cret");
        let right = Some("Bearer s3cret");
        let slave = view(false);
        // The method comes first: 405 with Allow.
        let wrong_method = write("GET", "/queues/q/purge", right);
        assert_eq!(operate(&wrong_method, &slave, token).await.0, 405);
        assert_eq!(
            operate(&write("POST", "/queues/q", right), &slave, token)
                .await
                .0,
            405
        );
        // No token configured: 403 naming the key, whatever the request carries.
        let (code, body) = operate(&write("POST", "/queues/q/purge", right), &slave, None).await;
        assert_eq!(code, 403);
        assert!(body.contains("admin.token"), "{body}");
        // A token configured: 401 without it, or with another.
        for authorization in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let request = write("DELETE", "/queues/q", authorization);
            assert_eq!(
                operate(&request, &slave, token).await.0,
                401,
                "{authorization:?}"
            );
        }
        // Authorized (the scheme in any case), on a node that serves no clients: 503.
        let request = write("POST", "/queues/q/purge", Some("bearer s3cret"));
        assert_eq!(operate(&request, &slave, token).await.0, 503);
        let request = write("POST", "/queues/q/retry", right);
        assert_eq!(operate(&request, &slave, token).await.0, 503);

        // On the serving core: an unknown queue is 404; a known one is purged.
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start_for_tests(dir.path(), Default::default());
        let (session, _rx) = broker.open_session(None);
        for body in ["a", "b"] {
            let message = crate::broker::NewMessage {
                persistent: true,
                body: bytes::Bytes::copy_from_slice(body.as_bytes()),
                ..Default::default()
            };
            let destination = crate::broker::Destination::Queue("q".into());
            session
                .send(&destination, message, None)
                .unwrap()
                .await
                .unwrap();
        }
        let mut master = view(true);
        master.broker = Some(broker.clone());
        let request = write("POST", "/queues/nope/purge", right);
        assert_eq!(operate(&request, &master, token).await.0, 404);
        // A malformed escape is named, not taken for a queue that does not exist.
        let request = write("POST", "/queues/q%zz/purge", right);
        let (code, body) = operate(&request, &master, token).await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("percent-encoding"), "{body}");
        let request = write("POST", "/queues/q/retry", right);
        let (code, body) = operate(&request, &master, token).await;
        assert_eq!(code, 409, "{body}");
        let request = write("POST", "/queues/queue%3A%2F%2Fq/purge", right);
        let (code, body) = operate(&request, &master, token).await;
        assert_eq!(code, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["removed"], 2);
        assert_eq!(json["queue"], "queue://q");
        assert_eq!(broker.queue_depth("queue://q"), 0);
        let (code, body) = operate(&write("DELETE", "/queues/q", right), &master, token).await;
        assert_eq!(code, 200, "{body}");
        assert!(broker.queue_stats().is_empty());
        // GET /queues/... is not an operation's method; the listing stays open.
        assert_eq!(route(&write("GET", "/queues", None), &master).code, 200);
    }
}
