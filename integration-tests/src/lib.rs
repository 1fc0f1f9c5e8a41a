//! Harness for tests that start the real `ferromq` binary and talk to it like a user.
//!
//! - [`ferromq_bin`] finds the binary: `$FERROMQ_BIN` when set, else
//!   `<workspace>/target/debug/ferromq`. Without `$FERROMQ_BIN` it runs
//!   `cargo build --bin ferromq` from the workspace root once per test process (a no-op when the
//!   binary is up to date), so a plain `cargo test -p ferromq-integration-tests` never runs a
//!   missing or stale broker. Nested cargo does not deadlock: `cargo test` releases the build
//!   directory lock before it runs test binaries.
//! - [`BrokerProcess`] runs one broker in its own directory on a port the OS picks, collects its
//!   log lines (echoed to stderr, so a failing test shows them) and can kill -9, terminate and
//!   restart it.
//! - [`StompClient`] is a small blocking raw STOMP client that writes exact frames and reads
//!   frames back with timeouts, for assertions on the wire and for malformed input.
//! - [`wait_until`] polls a condition until a deadline: tests never sleep for a fixed time to
//!   wait for something to happen.
//! - [`Watchdog`] bounds a whole test: one that hangs ends its test process within minutes,
//!   with the logs of every broker still alive, instead of running until CI's time is out.
//! - [`stall`] makes a broker's disk stall (its fsyncs wait) and answer again.
//! - [`java`] runs the stock ActiveMQ Java JMS client (OpenWire) scenarios of
//!   `integration-tests/java/`.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

pub mod cluster;
pub mod java;
pub mod proxy;
pub mod stall;
pub mod windows;
pub mod zk;

/// How long a broker may take to print `accepting clients`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The default wait for one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// xorshift64*: enough to vary a test's choices (an order of faults, a port) from a printed
/// seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (made odd: xorshift needs a state that is not zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

// ----- waiting -------------------------------------------------------------------------------

/// `Instant::now() + after`.
pub fn deadline(after: Duration) -> Instant {
    Instant::now() + after
}

/// Polls `condition` until it holds (true) or `deadline` passes (false). The pause between
/// polls grows from 1 ms to 10 ms.
pub fn wait_until(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

// ----- the watchdog ----------------------------------------------------------------------------

/// How long a test that runs brokers may take before its [`Watchdog`] ends the test process.
/// The slowest test takes about a minute.
pub const TEST_LIMIT: Duration = Duration::from_secs(8 * 60);

/// A broker's label and its log lines (see [`BrokerProcess`]), while the broker lives.
type LiveLogs = Vec<(String, Weak<Mutex<Vec<String>>>)>;

/// The log lines of every broker started in this process.
static LIVE_LOGS: Mutex<LiveLogs> = Mutex::new(Vec::new());

/// How many log lines of each broker a watchdog prints.
const WATCHDOG_TAIL: usize = 400;

/// Ends the whole test process if it is not dropped within its limit: a test that hangs (a
/// send that never resolves, a process that never exits) then fails at once with what the
/// brokers logged, rather than holding the run until CI's time is out.
///
/// On expiry it writes to the process's real stderr (libtest captures `eprintln!`, and a
/// process that exits never shows what was captured): the test's name, then the last lines
/// of every broker still alive. It kills this process's children (brokers, ZooKeeper) and
/// exits with status 101, as a failed test does.
pub struct Watchdog {
    _cancel: mpsc::Sender<()>,
}

impl Watchdog {
    /// Starts a watchdog for `what` (a test's name) that fires after `limit`.
    pub fn start(what: &str, limit: Duration) -> Watchdog {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(limit) {
                expire(&what, limit);
            }
        });
        Watchdog { _cancel: cancel }
    }
}

fn expire(what: &str, limit: Duration) -> ! {
    let mut report = format!(
        "\n==== WATCHDOG: {what} still runs after {limit:?}; ending the test process ====\n"
    );
    let live: Vec<(String, Arc<Mutex<Vec<String>>>)> = LIVE_LOGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(label, logs)| Some((label.clone(), logs.upgrade()?)))
        .collect();
    for (label, logs) in live {
        let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let from = logs.len().saturating_sub(WATCHDOG_TAIL);
        report.push_str(&format!(
            "---- [{label}]: last {} of {} log lines\n",
            logs.len() - from,
            logs.len()
        ));
        for line in &logs[from..] {
            report.push_str(&format!("[{label}] {line}\n"));
        }
    }
    report.push_str(&format!("==== WATCHDOG: {what} failed ====\n"));
    let _ = io::stderr().write_all(report.as_bytes());
    let _ = io::stderr().flush();
    // The brokers and ZooKeeper servers this process started: nothing would kill them now.
    let _ = Command::new("pkill")
        .args(["-KILL", "-P", &std::process::id().to_string()])
        .status();
    std::process::exit(101);
}

/// Makes `logs` visible to a [`Watchdog`] that fires while they live.
fn register_logs(label: &str, logs: &Arc<Mutex<Vec<String>>>) {
    let mut live = LIVE_LOGS.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|(_, logs)| logs.strong_count() > 0);
    live.push((label.to_string(), Arc::downgrade(logs)));
}

/// Milliseconds since the Unix epoch (the unit of STOMP's `expires` header).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A name unique within this test process, for queues, topics and client ids.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ----- the binary ----------------------------------------------------------------------------

/// The cargo workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests/ has a parent")
        .to_path_buf()
}

/// The `ferromq` binary, built once per test process unless `$FERROMQ_BIN` names one.
pub fn ferromq_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FERROMQ_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "FERROMQ_BIN={} is not a file", bin.display());
            return bin;
        }
        let root = workspace_root();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        let bin = target
            .join("debug")
            .join(format!("ferromq{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["build", "--bin", "ferromq"])
            .current_dir(&root)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {cargo:?} build --bin ferromq: {e}"));
        assert!(
            output.status.success(),
            "`cargo build --bin ferromq` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            bin.is_file(),
            "`cargo build --bin ferromq` succeeded but {} is missing",
            bin.display()
        );
        bin
    })
}

/// `GET path` on an HTTP endpoint (the admin endpoint); the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
}

/// Writes `request` raw to an HTTP endpoint and reads the whole answer (the endpoint closes);
/// the status code and the body.
pub fn http_request(addr: &str, request: &str) -> Result<(u16, String)> {
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(FRAME_TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Removes every `FERROMQ_*` variable this process inherited from `command`'s environment:
/// the developer's own overrides must not leak into a test's broker or CLI. Variables the
/// caller sets on `command` afterwards are kept.
pub fn without_ferromq_env(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.to_ascii_uppercase().starts_with("FERROMQ_"))
        {
            command.env_remove(key);
        }
    }
    command
}

/// `ferromq` ([`ferromq_bin`]) without the inherited `FERROMQ_*` variables
/// ([`without_ferromq_env`]) and with `NO_COLOR=1`; no arguments yet.
pub fn ferromq_command() -> Command {
    let mut command = Command::new(ferromq_bin());
    without_ferromq_env(&mut command).env("NO_COLOR", "1");
    command
}

/// Runs `ferromq ARGS...` ([`ferromq_command`]) to completion with a deadline; returns
/// (status, stdout, stderr).
pub fn run_cli(args: &[&str], timeout: Duration) -> Result<(ExitStatus, String, String)> {
    let mut command = ferromq_command();
    command.args(args);
    run_with_timeout(command, timeout)
}

/// Runs `ferromq ARGS...` with `input` on its standard input (then closed), to completion with
/// a deadline; returns (status, stdout, stderr).
pub fn run_cli_with_input(
    args: &[&str],
    input: &[u8],
    timeout: Duration,
) -> Result<(ExitStatus, String, String)> {
    let mut command = ferromq_command();
    command.args(args);
    run_with_input(command, Some(input.to_vec()), timeout)
}

/// Runs a command to completion with a deadline (killing it past the deadline); returns
/// (status, stdout, stderr).
pub fn run_with_timeout(
    command: Command,
    timeout: Duration,
) -> Result<(ExitStatus, String, String)> {
    run_with_input(command, None, timeout)
}

/// [`run_with_timeout`], writing `input` (if any) to the command's standard input and then
/// closing it; without input, standard input is empty.
fn run_with_input(
    mut command: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(ExitStatus, String, String)> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {shown}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A thread: a command that stops reading early must not block the test.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
    }
    let stdout = read_all_in_thread(child.stdout.take().expect("piped"));
    let stderr = read_all_in_thread(child.stderr.take().expect("piped"));
    let mut status = None;
    let finished = wait_until(deadline(timeout), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok((status, stdout, stderr)),
        None => {
            bail!("{shown} did not exit within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
    }
}

fn read_all_in_thread(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

// ----- child processes -----------------------------------------------------------------------

/// Sends a signal by name (`"TERM"`, `"STOP"`, ...) to process `pid` with `kill -SIG`; an
/// error if `kill` cannot be run or fails (no such process).
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running kill -{signal} {pid}"))?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

/// A child process that a test starts itself (not a [`BrokerProcess`]), killed (SIGKILL) and
/// reaped when the guard drops, also when the test panics or returns early with an error:
/// no test leaves a process behind. Derefs to the [`Child`] (its pipes, `id`, `try_wait`).
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `command`; `what` names it in errors.
    pub fn spawn(what: &str, command: &mut Command) -> Result<ChildGuard> {
        let child = command
            .spawn()
            .with_context(|| format!("spawning {what} ({command:?})"))?;
        Ok(ChildGuard {
            child,
            what: what.to_string(),
        })
    }

    /// Sends a signal by name (`"TERM"`, ...) with `kill -SIG`; an error if that fails.
    pub fn signal(&self, signal: &str) -> Result<()> {
        send_signal(self.child.id(), signal).with_context(|| format!("signalling {}", self.what))
    }

    /// Waits until the process exits, polling, for up to `timeout`; past it the process is
    /// killed and this is an error. Its standard output and error must be read elsewhere (or
    /// not be pipes), or a process that fills them never exits.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut status = None;
        let exited = wait_until(deadline(timeout), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("{} did not exit within {timeout:?}; killed", self.what);
        }
        Ok(status.expect("exited"))
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- ports ---------------------------------------------------------------------------------

/// An address on which connections are refused for as long as this lives: a loopback socket
/// bound to a port the OS picks, never listening. A connection to it is answered with a reset
/// (`ECONNREFUSED`), and no other socket can take the port meanwhile: the socket is bound
/// without `SO_REUSEADDR`, so binding the port fails for every other socket (a broker's or a
/// ZooKeeper server's listener of another test) and the kernel gives it to no outgoing
/// connection. A port bound, released and then used would do neither: another test may listen
/// on it by then, and "nothing listens there" would turn into a connection to a stranger.
pub struct RefusingAddr {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl RefusingAddr {
    /// Binds `127.0.0.1:0` without listening.
    pub fn new() -> Result<RefusingAddr> {
        let socket = tokio::net::TcpSocket::new_v4().context("creating a TCP socket")?;
        socket.set_reuseaddr(false)?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("binding 127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        Ok(RefusingAddr {
            _socket: socket,
            addr,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Candidate loopback ports, endless, for a listener that must get the same port again after
/// its process is killed and started again (a cluster node on its failover URL's port): while
/// the process is down nothing holds the port, and a port of the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`) may meanwhile be given to a `bind(0)` (another
/// test's broker or admin endpoint) or to an outgoing connection as its local port (a client
/// reconnecting to that very port would even connect to itself). So the candidates are random
/// ports below that range, which the kernel never hands out on its own; where the range leaves
/// no room (it starts at 2048 or below), free ports from `bind(0)`. A candidate may be taken
/// by something listening already: the caller tries to bind it and takes the next one if that
/// fails.
pub fn stable_ports() -> impl Iterator<Item = u16> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low > 2048);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng::new(seed);
    std::iter::repeat_with(move || match below {
        Some(low) => 1024 + rng.below(usize::from(low - 1024)) as u16,
        None => cluster::free_port(),
    })
}

// ----- the broker process --------------------------------------------------------------------

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the logger colours its output.
/// Reads `pipe` line by line on a thread of its own: each line, made readable by `clean`, is
/// echoed to stderr as `[label] line` (so a failing test shows it) and kept in `lines`.
pub(crate) fn echo_lines(
    pipe: impl Read + Send + 'static,
    label: String,
    lines: Arc<Mutex<Vec<String>>>,
    clean: fn(&[u8]) -> String,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = clean(&raw);
            eprintln!("[{label}] {line}");
            lines.lock().unwrap().push(line);
        }
    })
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The `address=HOST:PORT` field of a log line.
fn parse_address(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .and_then(|a| a.trim_matches(|c| c == '"' || c == ',').parse().ok())
}

/// The address clients reach a broker at, from its `accepting clients ... address=HOST:PORT`
/// log line (ANSI colours allowed); `None` for any other line. This is how a broker started
/// on port 0 is found (see [`BrokerProcess`]), for tests that read the broker's log
/// themselves.
pub fn accepting_clients_address(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    if !line.contains("accepting clients") {
        return None;
    }
    parse_address(&line)
}

/// The `[store]` line every test broker gets: segments of 16 MiB instead of the default
/// 100 MiB, since each node writes its segment and the prepared next one in full at start.
pub const TEST_LOG_SIZE: &str = "log_size = \"16MiB\"";

/// One running `ferromq broker` process with its own directory.
///
/// Its config is `<dir>/ferromq.toml`: one `tcp://127.0.0.1:0` connector, the store in
/// `<dir>/data`, and the caller's extra TOML appended (which must not repeat the `[transport]`
/// or `[store]` tables). Drop kills the process.
pub struct BrokerProcess {
    name: String,
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
    /// Every log line of every run of this broker, ANSI-stripped.
    logs: Arc<Mutex<Vec<String>>>,
    /// Runs the broker instead of the Linux binary (the Windows build under Wine).
    launcher: Option<Launcher>,
    /// Bounds the test that runs this broker (see [`Watchdog`]).
    _watchdog: Watchdog,
}

/// Another way to run `ferromq`: a program, its first arguments, and environment variables.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(String, std::ffi::OsString)>,
}

impl BrokerProcess {
    /// Writes the config and starts the broker; returns once it accepts clients.
    pub fn start(dir: &Path, extra_toml: &str) -> Result<BrokerProcess> {
        let mut broker = BrokerProcess::configure(dir, extra_toml)?;
        broker.spawn()?;
        Ok(broker)
    }

    /// Like [`start`](Self::start), with the broker run by `launcher`.
    pub fn start_with_launcher(
        launcher: Launcher,
        dir: &Path,
        extra_toml: &str,
    ) -> Result<BrokerProcess> {
        let mut broker = BrokerProcess::configure(dir, extra_toml)?;
        broker.launcher = Some(launcher);
        broker.spawn()?;
        Ok(broker)
    }

    /// Like [`start`](Self::start), the broker listening on a port from [`stable_ports`]
    /// (below the kernel's ephemeral range) written into its config, so that after a kill it
    /// can come back on that port ([`restart_retrying`](Self::restart_retrying),
    /// [`restart_on_same_port`](Self::restart_on_same_port)) without the port being given to
    /// another socket meanwhile. A port found taken at start is replaced by another.
    pub fn start_on_stable_port(dir: &Path, extra_toml: &str) -> Result<BrokerProcess> {
        let mut last = None;
        let candidates = stable_ports()
            .filter(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
            .take(5);
        for port in candidates {
            let mut broker = BrokerProcess::configure_on(dir, port, extra_toml)?;
            match broker.spawn() {
                Ok(()) if broker.addr.port() == port => return Ok(broker),
                Ok(()) => bail!(
                    "the broker listens on {} instead of port {port}",
                    broker.addr
                ),
                Err(e) => {
                    eprintln!("a broker on port {port} did not start: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no port to try")))
    }

    /// Writes the config of a broker in `dir` (a port chosen at start, the store in
    /// `dir/data`, then `extra_toml`); starts nothing.
    fn configure(dir: &Path, extra_toml: &str) -> Result<BrokerProcess> {
        BrokerProcess::configure_on(dir, 0, extra_toml)
    }

    /// [`configure`](Self::configure) with the client connector on `port` (0: any).
    fn configure_on(dir: &Path, port: u16, extra_toml: &str) -> Result<BrokerProcess> {
        let name = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map(|n| n.rsplit("::").next().unwrap_or(n).to_string())
            .unwrap_or_else(|| "broker".to_string());
        std::fs::create_dir_all(dir)?;
        let config = dir.join("ferromq.toml");
        let text = format!(
            "[transport]\nconnectors = [\"tcp://127.0.0.1:{port}\"]\n\n[store]\ndirectory = {}\n{}\n\n{}\n",
            toml_string(&dir.join("data").to_string_lossy()),
            TEST_LOG_SIZE,
            extra_toml
        );
        std::fs::write(&config, text).context("writing the broker config")?;
        Ok(BrokerProcess::new(name, config, dir))
    }

    /// A broker not started yet, its logs registered with, and its test bounded by, a
    /// [`Watchdog`].
    fn new(name: String, config: PathBuf, dir: &Path) -> BrokerProcess {
        let logs = Arc::new(Mutex::new(Vec::new()));
        register_logs(&name, &logs);
        BrokerProcess {
            _watchdog: Watchdog::start(&name, TEST_LIMIT),
            name,
            config,
            dir: dir.to_path_buf(),
            child: None,
            readers: Vec::new(),
            addr: "127.0.0.1:0".parse().expect("literal"),
            logs,
            launcher: None,
        }
    }

    /// Writes `config_text` as the whole config (`<dir>/ferromq.toml`: the caller names the
    /// connectors and the store directory) and starts the broker; returns once it accepts
    /// clients. Its log lines are echoed to stderr prefixed with `[name]`.
    pub fn start_with_config(name: &str, dir: &Path, config_text: &str) -> Result<BrokerProcess> {
        BrokerProcess::start_with_config_by(None, name, dir, config_text)
    }

    /// Like [`start_with_config`](Self::start_with_config), run by `launcher` if given.
    pub fn start_with_config_by(
        launcher: Option<Launcher>,
        name: &str,
        dir: &Path,
        config_text: &str,
    ) -> Result<BrokerProcess> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("ferromq.toml");
        std::fs::write(&config, config_text).context("writing the broker config")?;
        let mut broker = BrokerProcess::new(name.to_string(), config, dir);
        broker.launcher = launcher;
        broker.spawn()?;
        Ok(broker)
    }

    /// Sends a signal by name (`"STOP"`, `"CONT"`, ...) to the running broker with `kill -SIG`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let child = self.child.as_ref().ok_or_else(|| anyhow!("not running"))?;
        send_signal(child.id(), signal)
    }

    fn spawn(&mut self) -> Result<()> {
        let first_line = self.logs.lock().unwrap().len();
        let mut command = match &self.launcher {
            None => Command::new(ferromq_bin()),
            Some(launcher) => {
                let mut command = Command::new(&launcher.program);
                command.args(&launcher.args);
                for (key, value) in &launcher.env {
                    command.env(key, value);
                }
                command
            }
        };
        command
            .arg("broker")
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The developer's own overrides must not leak into a test broker.
        without_ferromq_env(&mut command);
        let mut child = command.spawn().context("spawning ferromq broker")?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        self.readers.push(self.log_reader(stdout));
        self.readers.push(self.log_reader(stderr));
        self.child = Some(child);
        let end = deadline(STARTUP_TIMEOUT);
        loop {
            let found = self.logs.lock().unwrap()[first_line..]
                .iter()
                .find(|l| l.contains("accepting clients"))
                .cloned();
            if let Some(line) = found {
                self.addr = parse_address(&line)
                    .ok_or_else(|| anyhow!("no address=HOST:PORT in log line {line:?}"))?;
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().expect("just set").try_wait()? {
                self.join_readers();
                bail!(
                    "broker {} exited ({status}) before accepting clients; log:\n{}",
                    self.name,
                    self.logs.lock().unwrap()[first_line..].join("\n")
                );
            }
            if Instant::now() >= end {
                bail!(
                    "broker {} printed no `accepting clients` line within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.name,
                    self.logs.lock().unwrap()[first_line..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_reader(&self, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        echo_lines(pipe, self.name.clone(), self.logs.clone(), |raw| {
            strip_ansi(String::from_utf8_lossy(raw).trim_end())
        })
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Where clients connect (this run's port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The process id of the running broker.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", child.id()))
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", child.id());
        }
        let mut exit = None;
        let exited = wait_until(deadline(timeout), || {
            exit = child.try_wait().ok().flatten();
            exit.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            self.join_readers();
            bail!(
                "broker {} did not exit within {timeout:?} of SIGTERM",
                self.name
            );
        }
        self.join_readers();
        Ok(exit.expect("exited"))
    }

    /// Starts the broker again on the same directory and config (kills it first if it runs).
    /// The port may change: use [`addr`](Self::addr) afterwards.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Like [`restart`](Self::restart), but listening on the port of the previous run, so that
    /// clients with that address (failover URLs) find the broker again. The config keeps the
    /// fixed port from then on. Start such a broker with
    /// [`start_on_stable_port`](Self::start_on_stable_port): a port of the ephemeral range, as
    /// port 0 gives, may be handed to another socket (a reconnecting client's own) while the
    /// broker is down.
    pub fn restart_on_same_port(&mut self) -> Result<()> {
        self.kill9();
        let text = std::fs::read_to_string(&self.config)?;
        let fixed = format!("\"tcp://127.0.0.1:{}\"", self.addr.port());
        std::fs::write(&self.config, text.replace("\"tcp://127.0.0.1:0\"", &fixed))?;
        let old = self.addr;
        self.restart_retrying()?;
        if self.addr != old {
            bail!("restarted on {} instead of {old}", self.addr);
        }
        Ok(())
    }

    /// Like [`restart`](Self::restart) for a broker on a fixed port, which may be in TIME_WAIT
    /// or briefly taken: retried, as a service manager would, for up to [`STARTUP_TIMEOUT`].
    pub fn restart_retrying(&mut self) -> Result<()> {
        let end = deadline(STARTUP_TIMEOUT);
        loop {
            match self.restart() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < end => {
                    eprintln!("restarting {}: {e:#}; retrying", self.name);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.context(format!("restarting {}", self.name))),
            }
        }
    }

    /// How the process ended, once it has (without stopping it); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether any log line (of any run) contains `text`.
    pub fn logs_contain(&self, text: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// The bodies of every message waiting on `queue`, in delivery order: a new client
    /// subscribes, sends a `sentinel` message behind them and receives up to it (the sentinel
    /// is left out).
    pub fn remaining_bodies(&self, queue: &str) -> Result<Vec<String>> {
        let mut consumer = self.client()?;
        consumer.subscribe("remaining", queue, &[])?;
        consumer.send_persistent(queue, b"sentinel")?;
        let mut got = consumer.recv_until(b"sentinel", FRAME_TIMEOUT)?;
        got.pop();
        Ok(got.iter().map(Frame::text).collect())
    }

    /// The admin endpoint's `host:port`, from the log line that announces it (logged just
    /// after the client listener's, so it is waited for, up to [`FRAME_TIMEOUT`]).
    pub fn admin_addr(&self) -> Option<String> {
        let mut found = None;
        wait_until(deadline(FRAME_TIMEOUT), || {
            found = self
                .logs()
                .iter()
                .rev()
                .find(|l| l.contains("admin endpoint listening"))
                .and_then(|l| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix("address="))
                        .map(|a| a.trim_matches('"').to_string())
                });
            found.is_some()
        });
        found
    }

    /// Every log line so far (of every run).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// A connected STOMP 1.2 client.
    pub fn client(&self) -> Result<StompClient> {
        StompClient::connect(self.addr)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ----- frames --------------------------------------------------------------------------------

/// A STOMP frame as seen on the wire (headers unescaped, in order, repeats kept).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame {
            command: command.to_string(),
            ..Frame::default()
        }
    }

    /// Appends a header (builder style).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Frame {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Appends headers (builder style).
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Frame {
        for (k, v) in headers {
            self.headers.push((k.to_string(), v.to_string()));
        }
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The frame's bytes. With `escape` (STOMP 1.1/1.2, not for CONNECT) header names and
    /// values are escaped. No `content-length` is added.
    pub fn encode(&self, escape: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        for (k, v) in &self.headers {
            if escape {
                out.extend_from_slice(escape_header(k).as_bytes());
                out.push(b':');
                out.extend_from_slice(escape_header(v).as_bytes());
            } else {
                out.extend_from_slice(k.as_bytes());
                out.push(b':');
                out.extend_from_slice(v.as_bytes());
            }
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ':' => out.push_str("\\c"),
            c => out.push(c),
        }
    }
    out
}

fn unescape_header(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            other => bail!("invalid escape \\{other:?} in header {s:?}"),
        }
    }
    Ok(out)
}

/// Parses one frame from `buf[*pos..]`, advancing `pos`. `Ok(None)`: incomplete. Heart-beat
/// EOLs before a frame are skipped.
fn parse_frame(buf: &[u8], pos: &mut usize, unescape: bool) -> Result<Option<Frame>> {
    let mut at = *pos;
    while at < buf.len() && (buf[at] == b'\n' || buf[at] == b'\r') {
        at += 1;
    }
    *pos = at;
    let mut lines = Vec::new();
    let body_start = loop {
        let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let mut line = &buf[at..at + nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        at += nl + 1;
        if line.is_empty() {
            break at;
        }
        lines.push(
            std::str::from_utf8(line)
                .with_context(|| format!("non-UTF-8 frame line {line:?}"))?
                .to_string(),
        );
    };
    let command = lines.first().cloned().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines.iter().skip(1) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("header line without ':' {line:?}"))?;
        if unescape && command != "CONNECTED" {
            headers.push((unescape_header(k)?, unescape_header(v)?));
        } else {
            headers.push((k.to_string(), v.to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .context("bad content-length from the server")?;
    let body_end = match length {
        Some(n) => {
            if buf.len() <= body_start + n {
                return Ok(None);
            }
            if buf[body_start + n] != 0 {
                bail!("no NUL after a {n}-byte body");
            }
            body_start + n
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(n) => body_start + n,
            None => return Ok(None),
        },
    };
    *pos = body_end + 1;
    Ok(Some(Frame {
        command,
        headers,
        body: buf[body_start..body_end].to_vec(),
    }))
}

// ----- the raw client ------------------------------------------------------------------------

/// What [`StompClient::poll`] saw.
#[derive(Debug)]
pub enum Incoming {
    Frame(Frame),
    /// The server closed the connection (or reset it).
    Closed,
    TimedOut,
}

/// A blocking raw STOMP client.
///
/// Frames read but not yet asked for wait in an inbox, so a client can wait for a RECEIPT
/// while MESSAGE frames arrive, and read those afterwards.
pub struct StompClient {
    stream: TcpStream,
    buf: Vec<u8>,
    inbox: VecDeque<Frame>,
    closed: bool,
    /// The negotiated version, from CONNECTED (`1.0` before).
    pub version: String,
    next_receipt: u64,
}

impl StompClient {
    /// A TCP connection with nothing sent yet.
    pub fn open(addr: SocketAddr) -> Result<StompClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(StompClient {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            inbox: VecDeque::new(),
            closed: false,
            version: "1.0".into(),
            next_receipt: 1,
        })
    }

    /// Connects with STOMP 1.2.
    pub fn connect(addr: SocketAddr) -> Result<StompClient> {
        Self::connect_with(addr, &[])
    }

    /// Connects with `accept-version:1.2` (unless given), `host:localhost` and `headers`
    /// (e.g. `client-id`); fails unless the answer is CONNECTED.
    pub fn connect_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<StompClient> {
        let mut all = Vec::new();
        if !headers.iter().any(|(k, _)| *k == "accept-version") {
            all.push(("accept-version", "1.2"));
        }
        all.push(("host", "localhost"));
        all.extend_from_slice(headers);
        Self::connect_exact(addr, &all)
    }

    /// Sends a CONNECT frame with exactly `headers` (none added: without `accept-version`
    /// this is a STOMP 1.0 client); fails unless the answer is CONNECTED.
    pub fn connect_exact(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<StompClient> {
        let mut client = Self::open(addr)?;
        let connect = Frame::new("CONNECT").headers(headers);
        client.write_raw(&connect.encode(false))?;
        let answer = client.expect_frame(FRAME_TIMEOUT)?;
        if answer.command != "CONNECTED" {
            bail!("expected CONNECTED, got {answer:?}");
        }
        client.version = answer.get("version").unwrap_or("1.0").to_string();
        Ok(client)
    }

    fn escapes(&self) -> bool {
        self.version != "1.0"
    }

    /// Writes bytes as they are.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes a frame (escaped per the negotiated version); adds `content-length` to frames
    /// with a body unless present.
    pub fn send_frame(&mut self, frame: &Frame) -> Result<()> {
        let mut frame = frame.clone();
        if !frame.body.is_empty() && frame.get("content-length").is_none() {
            let length = frame.body.len().to_string();
            frame = frame.header("content-length", length);
        }
        let bytes = frame.encode(self.escapes() && frame.command != "CONNECT");
        self.write_raw(&bytes)
            .with_context(|| format!("writing a {} frame", frame.command))
    }

    /// A fresh receipt id for this connection.
    pub fn receipt_id(&mut self) -> String {
        let id = format!("rcpt-{}", self.next_receipt);
        self.next_receipt += 1;
        id
    }

    /// Reads more bytes (waiting until `deadline`) and moves whole frames to the inbox.
    /// Returns false on timeout; sets `closed` at end of stream or reset.
    fn fill(&mut self, deadline: Instant) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(false);
        }
        self.stream.set_read_timeout(Some(remaining))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
            }
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.closed = true;
            }
            Err(e) => return Err(e).context("reading from the broker"),
        }
        let mut pos = 0;
        let unescape = self.escapes();
        while let Some(frame) = parse_frame(&self.buf, &mut pos, unescape)? {
            self.inbox.push_back(frame);
        }
        self.buf.drain(..pos);
        Ok(true)
    }

    /// The next frame, or why there is none.
    pub fn poll(&mut self, timeout: Duration) -> Result<Incoming> {
        let end = deadline(timeout);
        loop {
            if let Some(frame) = self.inbox.pop_front() {
                return Ok(Incoming::Frame(frame));
            }
            if self.closed {
                return Ok(Incoming::Closed);
            }
            if !self.fill(end)? && !self.closed {
                return Ok(Incoming::TimedOut);
            }
        }
    }

    /// The next frame; an error on timeout or close.
    pub fn expect_frame(&mut self, timeout: Duration) -> Result<Frame> {
        match self.poll(timeout)? {
            Incoming::Frame(f) => Ok(f),
            Incoming::Closed => bail!("the broker closed the connection"),
            Incoming::TimedOut => bail!("no frame within {timeout:?}"),
        }
    }

    /// Takes the first inbox frame matching `pick`, reading until `deadline`. An ERROR frame
    /// fails the wait.
    fn take(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl Fn(&Frame) -> bool,
    ) -> Result<Frame> {
        let end = deadline(timeout);
        loop {
            if let Some(error) = self.inbox.iter().find(|f| f.command == "ERROR") {
                bail!(
                    "ERROR frame while waiting for {what}: message={:?} body={:?}",
                    error.get("message"),
                    error.text()
                );
            }
            if let Some(i) = self.inbox.iter().position(&pick) {
                return Ok(self.inbox.remove(i).expect("found"));
            }
            if self.closed {
                bail!("the broker closed the connection while we waited for {what}");
            }
            if !self.fill(end)? && !self.closed {
                bail!("no {what} within {timeout:?}");
            }
        }
    }

    /// Waits for `RECEIPT receipt-id:id`; other frames stay in the inbox.
    pub fn wait_receipt(&mut self, id: &str, timeout: Duration) -> Result<()> {
        self.take(timeout, &format!("RECEIPT {id}"), |f| {
            f.command == "RECEIPT" && f.get("receipt-id") == Some(id)
        })
        .map(|_| ())
    }

    /// Sends `frame` with a fresh `receipt` header and waits for its RECEIPT.
    pub fn request(&mut self, frame: Frame) -> Result<()> {
        let id = self.receipt_id();
        self.send_frame(&frame.header("receipt", id.clone()))?;
        self.wait_receipt(&id, FRAME_TIMEOUT)
    }

    /// SEND without a receipt.
    pub fn send_nowait(
        &mut self,
        destination: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<()> {
        let frame = Frame::new("SEND")
            .header("destination", destination)
            .headers(headers)
            .body(body);
        self.send_frame(&frame)
    }

    /// SEND with a receipt, waiting for it.
    pub fn send(&mut self, destination: &str, body: &[u8], headers: &[(&str, &str)]) -> Result<()> {
        let frame = Frame::new("SEND")
            .header("destination", destination)
            .headers(headers)
            .body(body);
        self.request(frame)
            .with_context(|| format!("receipted SEND to {destination}"))
    }

    /// A persistent SEND with a receipt, waiting for it.
    pub fn send_persistent(&mut self, destination: &str, body: &[u8]) -> Result<()> {
        self.send(destination, body, &[("persistent", "true")])
    }

    /// SUBSCRIBE with a receipt, waiting for it.
    pub fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        headers: &[(&str, &str)],
    ) -> Result<()> {
        let frame = Frame::new("SUBSCRIBE")
            .header("id", id)
            .header("destination", destination)
            .headers(headers);
        self.request(frame)
            .with_context(|| format!("SUBSCRIBE {id} to {destination}"))
    }

    /// The next MESSAGE frame (other frames stay in the inbox).
    pub fn recv_message(&mut self, timeout: Duration) -> Result<Frame> {
        self.take(timeout, "a MESSAGE", |f| f.command == "MESSAGE")
    }

    /// The next MESSAGE frame, or `None` if none arrives within `timeout`.
    pub fn try_recv_message(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let end = deadline(timeout);
        loop {
            if let Some(error) = self.inbox.iter().find(|f| f.command == "ERROR") {
                bail!("ERROR frame: {:?}", error.get("message"));
            }
            if let Some(i) = self.inbox.iter().position(|f| f.command == "MESSAGE") {
                return Ok(self.inbox.remove(i));
            }
            if self.closed {
                bail!("the broker closed the connection");
            }
            if !self.fill(end)? && !self.closed {
                return Ok(None);
            }
        }
    }

    /// Receives messages until one with body `last` arrives; returns all of them, `last`
    /// included. Fails if that takes longer than `timeout` in all.
    pub fn recv_until(&mut self, last: &[u8], timeout: Duration) -> Result<Vec<Frame>> {
        let end = deadline(timeout);
        let mut got = Vec::new();
        loop {
            let remaining = end.saturating_duration_since(Instant::now());
            let frame = self.recv_message(remaining).with_context(|| {
                format!(
                    "waiting for the message {:?} ({} others received)",
                    String::from_utf8_lossy(last),
                    got.len()
                )
            })?;
            let done = frame.body == last;
            got.push(frame);
            if done {
                return Ok(got);
            }
        }
    }

    /// Subscribes to `queue` with client acks and a prefetch of `n`, receives `n` messages and
    /// acknowledges them all (one cumulative ACK, with its receipt); their bodies.
    pub fn consume_acked(&mut self, queue: &str, n: usize) -> Result<Vec<String>> {
        let prefetch = n.to_string();
        self.subscribe(
            "acked",
            queue,
            &[("ack", "client"), ("activemq.prefetchSize", &prefetch)],
        )?;
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.recv_message(FRAME_TIMEOUT)?);
        }
        if let Some(last) = got.last() {
            self.ack(last)?;
        }
        Ok(got.iter().map(Frame::text).collect())
    }

    /// The ACK (or NACK) frame for a MESSAGE, per the negotiated version.
    pub fn ack_frame(&self, command: &str, message: &Frame) -> Frame {
        let frame = Frame::new(command);
        if self.version == "1.2" {
            frame.header("id", message.get("ack").unwrap_or_default())
        } else {
            frame
                .header("message-id", message.get("message-id").unwrap_or_default())
                .header(
                    "subscription",
                    message.get("subscription").unwrap_or_default(),
                )
        }
    }

    /// ACKs a message and waits for the receipt.
    pub fn ack(&mut self, message: &Frame) -> Result<()> {
        let frame = self.ack_frame("ACK", message);
        self.request(frame).context("ACK")
    }

    /// NACKs a message and waits for the receipt.
    pub fn nack(&mut self, message: &Frame) -> Result<()> {
        let frame = self.ack_frame("NACK", message);
        self.request(frame).context("NACK")
    }

    /// DISCONNECT with a receipt; waits for it and for the close.
    pub fn disconnect(mut self) -> Result<()> {
        self.request(Frame::new("DISCONNECT"))
            .context("DISCONNECT")?;
        Ok(())
    }

    /// Drops the TCP connection without a DISCONNECT (as a crashed client would).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Waits for an ERROR frame and then for the server to close the connection; returns the
    /// ERROR frame. Frames before the ERROR are skipped.
    pub fn expect_error_then_close(&mut self, timeout: Duration) -> Result<Frame> {
        let end = deadline(timeout);
        let error = loop {
            match self.poll(end.saturating_duration_since(Instant::now()))? {
                Incoming::Frame(f) if f.command == "ERROR" => break f,
                Incoming::Frame(_) => continue,
                Incoming::Closed => bail!("the connection closed without an ERROR frame"),
                Incoming::TimedOut => bail!("no ERROR frame within {timeout:?}"),
            }
        };
        self.expect_closed(end.saturating_duration_since(Instant::now()))
            .with_context(|| format!("after ERROR {:?}", error.get("message")))?;
        Ok(error)
    }

    /// Waits for the server to close the connection; frames before the close are skipped.
    pub fn expect_closed(&mut self, timeout: Duration) -> Result<()> {
        let end = deadline(timeout);
        loop {
            match self.poll(end.saturating_duration_since(Instant::now()))? {
                Incoming::Frame(_) => continue,
                Incoming::Closed => return Ok(()),
                Incoming::TimedOut => bail!("the connection stayed open for {timeout:?}"),
            }
        }
    }

    /// A clone of the socket, for a second thread that only writes.
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere() {
        let wire = b"\nMESSAGE\nmessage-id:ID\\cp1\\c1\ncontent-length:3\n\na\0b\0\r\nRECEIPT\r\nreceipt-id:r1\r\n\r\n\0";
        for split in 0..wire.len() {
            let mut buf = wire[..split].to_vec();
            let mut frames = Vec::new();
            let mut pos = 0;
            while let Some(f) = parse_frame(&buf, &mut pos, true).unwrap() {
                frames.push(f);
            }
            buf.drain(..pos);
            buf.extend_from_slice(&wire[split..]);
            let mut pos = 0;
            while let Some(f) = parse_frame(&buf, &mut pos, true).unwrap() {
                frames.push(f);
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].get("message-id"), Some("ID:p1:1"));
            assert_eq!(frames[0].body, b"a\0b");
            assert_eq!(frames[1].command, "RECEIPT");
            assert_eq!(frames[1].get("receipt-id"), Some("r1"));
        }
    }

    #[test]
    fn address_from_a_log_line() {
        let line = strip_ansi(
            "2024-01-01T00:00:00Z  INFO ferromq::server: accepting clients connector=tcp://127.0.0.1:0 \u{1b}[3maddress\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:40123",
        );
        assert_eq!(
            parse_address(&line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
    }

    #[test]
    fn a_refusing_address_refuses_and_keeps_its_port() {
        let refusing = RefusingAddr::new().unwrap();
        for _ in 0..3 {
            let error = TcpStream::connect_timeout(&refusing.addr(), Duration::from_secs(5))
                .expect_err("a connection to a socket that does not listen");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
        }
        let taken = std::net::TcpListener::bind(refusing.addr());
        assert!(taken.is_err(), "another socket bound {}", refusing.addr());
    }

    #[test]
    fn stable_ports_are_below_the_ephemeral_range() {
        let Some(low) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .filter(|&low| low > 2048)
        else {
            return;
        };
        assert!(stable_ports().take(1000).all(|p| (1024..low).contains(&p)));
    }

    #[test]
    fn escapes_round_trip() {
        let s = "a:b\\c\nd\re";
        assert_eq!(unescape_header(&escape_header(s)).unwrap(), s);
    }
}
