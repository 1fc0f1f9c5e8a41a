//! A replicated ferromq cluster for tests: a real ZooKeeper ensemble of three members and three
//! `ferromq broker` processes, each with its own store, configured like
//! `scripts/local-cluster.sh` (`replicas = 3`, `zk_path = /activemq/leveldb-stores`,
//! `sync = local_disk`, a 2 s session timeout; ZooKeeper runs with `tickTime=500`, so 2 s is
//! honoured).
//!
//! Each node listens for clients on a port picked when the cluster starts (below the kernel's
//! ephemeral range, see [`stable_ports`](crate::stable_ports)) and written into its config, so
//! it keeps the port across restarts and [`Cluster::failover_url`] stays valid.
//!
//! A partitionable cluster ([`Cluster::start_partitionable`]) puts proxies on the links a
//! network partition cuts: each node reaches every ZooKeeper server through proxies of its
//! own, and reaches a master's replication listener through the master's replication proxy.
//! For the latter, node `i` binds its replication listener on a port `Ri` picked when the
//! cluster starts, `127.0.0.1:Ri`, and advertises `127.0.0.2:Ri` (`hostname = "127.0.0.2"`),
//! where its proxy listens: every slave connecting to node `i` as master goes through it.
//!
//! Cluster tests are heavy (three JVMs and three brokers each) and timing-sensitive (a 2 s
//! session timeout), so [`Cluster::start`] holds a process-wide lock for the life of the
//! cluster: the cluster tests of one test binary run one at a time.
//!
//! The methods block: from async code call them through `spawn_blocking` or `block_in_place`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::proxy::Proxy;
use crate::zk::{ZkEnsemble, ZkVersion};
use crate::StompClient;
use crate::{run_cli, toml_string, wait_until, BrokerProcess, Frame, Incoming};

/// The broker name of every node (the `id` of the members' znodes).
pub const BROKER_NAME: &str = "cluster";
/// The members' parent znode.
pub const ZK_PATH: &str = "/activemq/leveldb-stores";
/// The nodes' ZooKeeper session timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
/// Every node's `[admin] token`: the admin endpoint's queue operations need it.
pub const ADMIN_TOKEN: &str = "cluster-admin-token";
/// How long a probe waits for the answer to CONNECT.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Held while a cluster lives: one cluster at a time per test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a node's client port answers to a STOMP CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// CONNECTED: the node serves clients.
    Serving,
    /// An ERROR frame with this `message` (a non-master: "not the master: ...").
    Refused(String),
    /// Nothing listening, no answer in time, or closed without a frame.
    Down(String),
    /// The process is paused (SIGSTOP) or not running: not probed.
    NotRunning,
}

/// One node of the cluster.
pub struct Node {
    pub broker: BrokerProcess,
    pub port: u16,
    pub dir: PathBuf,
    stopped: bool,
    running: bool,
}

impl Node {
    /// `127.0.0.1:PORT` of the client connector.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The log lines that announce a role change, oldest first.
    pub fn role_changes(&self) -> Vec<String> {
        self.broker
            .logs()
            .into_iter()
            .filter(|l| l.contains("role change:"))
            .collect()
    }

    /// Whether the latest role change logged is `role change: master`.
    pub fn logs_say_master(&self) -> bool {
        self.role_changes()
            .last()
            .is_some_and(|l| l.contains("role change: master"))
    }
}

/// Three ferromq nodes and their ZooKeeper ensemble.
pub struct Cluster {
    /// The nodes, 0..3 (0..2 for [`Cluster::start_pair_of_one_replica`]). Dropped first
    /// (killed).
    pub nodes: Vec<Node>,
    /// The ensemble (dropped after the nodes).
    pub zk: ZkEnsemble,
    dir: tempfile::TempDir,
    name: String,
    /// Lines every node's `[broker]` section gets (see [`Cluster::start_with`]).
    broker_extra: String,
    /// Every node's `zk_session_timeout` (see [`Cluster::start_with_session_timeout`]).
    zk_session_timeout: &'static str,
    /// Every node's `replicas`.
    replicas: usize,
    /// Per node, one proxy per ensemble member that the node reaches ZooKeeper through (see
    /// [`Cluster::start_partitionable`]); empty when the nodes connect directly.
    zk_proxies: Vec<Vec<Proxy>>,
    /// Per node, the proxy in front of its replication listener (see the module doc); empty
    /// when slaves connect directly.
    replication_proxies: Vec<Proxy>,
    /// What runs each node (see [`Cluster::start_stallable`]); `None`: the binary itself.
    launcher: Option<crate::Launcher>,
    _serial: MutexGuard<'static, ()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.broker.kill9();
        }
        if std::thread::panicking() || std::env::var_os("ZK_KEEP_DIR").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "cluster {} kept in {}",
                self.name,
                self.dir.path().display()
            );
        }
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Where a node's replication listener binds (`127.0.0.1:port`, 0: any free port) and the
/// host it advertises with that port.
#[derive(Clone, Copy, Debug)]
pub struct ReplicationAddress {
    pub port: u16,
    pub hostname: &'static str,
}

impl ReplicationAddress {
    /// Any free port, advertised as `127.0.0.1`: slaves connect directly.
    pub const DIRECT: ReplicationAddress = ReplicationAddress {
        port: 0,
        hostname: "127.0.0.1",
    };
}

/// A node's whole config; `broker_extra` adds lines to its `[broker]` section.
pub fn node_config(
    replicas: usize,
    port: u16,
    replication: ReplicationAddress,
    data: &std::path::Path,
    zk_address: &str,
    broker_extra: &str,
    zk_session_timeout: &str,
) -> String {
    format!(
        "[broker]\n\
         name = {name}\n\
         {broker_extra}\n\
         \n\
         [transport]\n\
         connectors = [\"tcp://127.0.0.1:{port}\"]\n\
         \n\
         [store]\n\
         directory = {data}\n\
         sync = \"local_disk\"\n\
         {log_size}\n\
         \n\
         [replication]\n\
         replicas = {replicas}\n\
         bind = \"tcp://127.0.0.1:{replication_port}\"\n\
         zk_address = {zk}\n\
         zk_path = {path}\n\
         zk_session_timeout = {session_timeout}\n\
         hostname = {hostname}\n\
         security_token = \"t\"\n\
         \n\
         [admin]\n\
         bind = \"tcp://127.0.0.1:0\"\n\
         token = {token}\n",
        token = toml_string(ADMIN_TOKEN),
        name = toml_string(BROKER_NAME),
        data = toml_string(&data.to_string_lossy()),
        zk = toml_string(zk_address),
        session_timeout = toml_string(zk_session_timeout),
        path = toml_string(ZK_PATH),
        log_size = crate::TEST_LOG_SIZE,
        replication_port = replication.port,
        hostname = toml_string(replication.hostname),
    )
}

impl Cluster {
    /// Starts a ZooKeeper ensemble of `version` and three nodes (`replicas` must be 3). Returns
    /// once every node accepts client connections (which does not mean a master is elected:
    /// see [`wait_for_master`](Self::wait_for_master)).
    pub fn start(version: ZkVersion, replicas: usize) -> Cluster {
        Cluster::start_with(version, replicas, "")
    }

    /// Like [`start`](Self::start), every node's `[broker]` section with `broker_extra` too
    /// (`"scheduler_support = true"`).
    pub fn start_with(version: ZkVersion, replicas: usize, broker_extra: &str) -> Cluster {
        assert_eq!(replicas, 3, "the cluster tests run three nodes");
        Cluster::start_inner(version, 3, 3, broker_extra, false, "2s", None)
    }

    /// Two nodes with `replicas = 1`: a master confirms on its own fsync, and its slave follows
    /// without holding confirmations up (what a user with two machines may configure).
    pub fn start_pair_of_one_replica(version: ZkVersion) -> Cluster {
        Cluster::start_inner(version, 2, 1, "", false, "2s", None)
    }

    /// Like [`start`](Self::start), with every node's `zk_session_timeout` set to `timeout`
    /// instead of 2 s (at most 10 s: the servers' `tickTime` is 500 ms).
    pub fn start_with_session_timeout(version: ZkVersion, timeout: &'static str) -> Cluster {
        Cluster::start_inner(version, 3, 3, "", false, timeout, None)
    }

    /// Like [`start`](Self::start), each node reaching ZooKeeper through proxies of its own, so
    /// that [`cut_from_zookeeper`](Self::cut_from_zookeeper) can partition it from the ensemble
    /// while it keeps running, serving and replicating, and the slaves reaching each node's
    /// replication listener through a proxy, so that
    /// [`cut_replication`](Self::cut_replication) can partition a master from its slaves while
    /// it keeps ZooKeeper and its clients.
    pub fn start_partitionable(version: ZkVersion) -> Cluster {
        Cluster::start_inner(version, 3, 3, "", true, "2s", None)
    }

    /// Like [`start`](Self::start), each node run with a disk that can be made to stall
    /// ([`crate::stall`]: [`stall_disk`](Self::stall_disk)), `store.stall_timeout = "2s"`,
    /// `store.sync = sync` (`"quorum_disk"`: slaves fsync too, so a slave's disk can stall)
    /// and a `zk_session_timeout` of 10 s: a node that leaves the election is replaced well
    /// before its session could expire.
    pub fn start_stallable(version: ZkVersion, sync: &str) -> Cluster {
        Cluster::start_stallable_with(version, sync, "2s")
    }

    /// Like [`start_stallable`](Self::start_stallable) with `store.stall_timeout =
    /// stall_timeout` (`"0s"`: a node whose disk stalls waits for it, as long as it takes).
    pub fn start_stallable_with(version: ZkVersion, sync: &str, stall_timeout: &str) -> Cluster {
        let mut launcher = crate::stall::launcher(stall_timeout);
        launcher
            .env
            .push(("FERROMQ_STORE__SYNC".into(), sync.into()));
        Cluster::start_inner(version, 3, 3, "", false, "10s", Some(launcher))
    }

    /// Stalls node `i`'s disk: its fsyncs wait from now on.
    pub fn stall_disk(&self, i: usize) {
        assert!(self.launcher.is_some(), "needs Cluster::start_stallable");
        crate::stall::set_stalled(&self.nodes[i].dir, true);
    }

    /// Ends the stall of node `i`'s disk: its waiting fsyncs go ahead.
    pub fn unstall_disk(&self, i: usize) {
        crate::stall::set_stalled(&self.nodes[i].dir, false);
    }

    fn start_inner(
        version: ZkVersion,
        nodes: usize,
        replicas: usize,
        broker_extra: &str,
        partitionable: bool,
        zk_session_timeout: &'static str,
        launcher: Option<crate::Launcher>,
    ) -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let name = std::thread::current()
            .name()
            .map(|n| n.rsplit("::").next().unwrap_or(n).to_string())
            .unwrap_or_else(|| "cluster".into());
        let zk = ZkEnsemble::start(version, 3);
        let zk_proxies = if partitionable {
            let members: Vec<SocketAddr> = zk
                .connect_string()
                .split(',')
                .map(|a| a.parse().expect("a member's address"))
                .collect();
            (0..nodes)
                .map(|_| {
                    members
                        .iter()
                        .map(|&m| Proxy::start(m).expect("starting a ZooKeeper proxy"))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let replication_proxies = if partitionable {
            (0..nodes).map(|_| replication_proxy()).collect()
        } else {
            Vec::new()
        };
        let dir = tempfile::Builder::new()
            .prefix("ferromq-cluster-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            zk,
            dir,
            name,
            broker_extra: broker_extra.to_string(),
            zk_session_timeout,
            replicas,
            zk_proxies,
            replication_proxies,
            launcher,
            _serial: serial,
        };
        for i in 0..nodes {
            let node = cluster
                .start_node(i)
                .unwrap_or_else(|e| panic!("starting node {i}: {e:#}"));
            cluster.nodes.push(node);
        }
        cluster
    }

    fn start_node(&self, i: usize) -> Result<Node> {
        let dir = self.dir.path().join(format!("node{i}"));
        let zk_address = match self.zk_proxies.get(i) {
            Some(proxies) => proxies
                .iter()
                .map(|p| p.addr().to_string())
                .collect::<Vec<_>>()
                .join(","),
            None => self.zk.connect_string(),
        };
        let replication = match self.replication_proxies.get(i) {
            Some(proxy) => ReplicationAddress {
                port: proxy.addr().port(),
                hostname: REPLICATION_PROXY_HOST,
            },
            None => ReplicationAddress::DIRECT,
        };
        // The replication ports are free on 127.0.0.1 until a master binds one: not for clients.
        let reserved: Vec<u16> = self
            .replication_proxies
            .iter()
            .map(|p| p.addr().port())
            .collect();
        let mut last = None;
        // The port is written into the node's config and not held while the node is down (a
        // kill -9, then a restart on it): one below the ephemeral range, which no `bind(0)`
        // and no outgoing connection is given meanwhile (see `stable_ports`). One found taken
        // (by a listener, or before the broker binds it) is replaced by another.
        let candidates = crate::stable_ports()
            .filter(|p| !reserved.contains(p))
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            .take(5);
        for port in candidates {
            let config = node_config(
                self.replicas,
                port,
                replication,
                &dir.join("data"),
                &zk_address,
                &self.broker_extra,
                self.zk_session_timeout,
            );
            match BrokerProcess::start_with_config_by(
                self.launcher.clone(),
                &format!("{}/n{i}", self.name),
                &dir,
                &config,
            ) {
                Ok(broker) => {
                    if broker.addr().port() != port {
                        bail!("node {i} listens on {} instead of {port}", broker.addr());
                    }
                    return Ok(Node {
                        broker,
                        port,
                        dir,
                        stopped: false,
                        running: true,
                    });
                }
                Err(e) => {
                    eprintln!("node {i} on port {port} did not start: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no free port for node {i}")))
    }

    /// Partitions node `i` from every ZooKeeper server (its proxies stop forwarding); it keeps
    /// running, its clients and its replication links. Needs
    /// [`start_partitionable`](Self::start_partitionable).
    pub fn cut_from_zookeeper(&self, i: usize) {
        for p in &self.zk_proxies[i] {
            p.cut();
        }
    }

    /// Ends [`cut_from_zookeeper`](Self::cut_from_zookeeper).
    pub fn heal_zookeeper(&self, i: usize) {
        for p in &self.zk_proxies[i] {
            p.heal();
        }
    }

    /// Partitions node `i`, as master, from its slaves: every link into its replication
    /// listener stops forwarding, those open and those opened meanwhile; it keeps ZooKeeper and
    /// its clients. Needs [`start_partitionable`](Self::start_partitionable).
    pub fn cut_replication(&self, i: usize) {
        self.replication_proxies[i].cut();
    }

    /// Ends [`cut_replication`](Self::cut_replication).
    pub fn heal_replication(&self, i: usize) {
        self.replication_proxies[i].heal();
    }

    /// The ZooKeeper connect string.
    pub fn zk_address(&self) -> String {
        self.zk.connect_string()
    }

    /// `failover:(tcp://127.0.0.1:p1,tcp://127.0.0.1:p2,tcp://127.0.0.1:p3)?...` with
    /// `initialReconnectDelay=100&maxReconnectDelay=1000&randomize=false`.
    pub fn failover_url(&self) -> String {
        self.failover_url_with("")
    }

    /// [`failover_url`](Self::failover_url) with more options (`"&timeout=3000"`).
    pub fn failover_url_with(&self, more: &str) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("tcp://127.0.0.1:{}", n.port))
            .collect();
        format!(
            "failover:({})?initialReconnectDelay=100&maxReconnectDelay=1000&randomize=false{more}",
            list.join(",")
        )
    }

    /// What node `i` answers to CONNECT now.
    pub fn probe(&self, i: usize) -> Probe {
        let node = &self.nodes[i];
        if node.stopped || !node.running {
            return Probe::NotRunning;
        }
        probe_addr(node.addr())
    }

    /// Every node that answers CONNECT with CONNECTED and whose log's latest role change is
    /// `role change: master`.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].logs_say_master() && self.probe(i) == Probe::Serving)
            .collect()
    }

    /// The master, if exactly one node is.
    pub fn master(&self) -> Option<usize> {
        match self.masters().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Waits until exactly one node is master; a description of every node if not by then.
    pub fn wait_for_master(&self, deadline: Instant) -> Result<usize> {
        let mut found = None;
        if wait_until(deadline, || {
            found = self.master();
            found.is_some()
        }) {
            return Ok(found.expect("found"));
        }
        bail!("no single master by the deadline:\n{}", self.describe())
    }

    /// `kill -9` of node `master`, then waits (until `deadline`) for another node to be master;
    /// returns it, or panics saying which master was killed.
    pub fn kill_master(&mut self, master: usize, deadline: Instant) -> usize {
        self.kill9(master);
        self.wait_for_new_master(master, deadline)
            .unwrap_or_else(|e| panic!("after kill -9 of master {master}: {e:#}"))
    }

    /// Waits until exactly one node other than `not` is master.
    pub fn wait_for_new_master(&self, not: usize, deadline: Instant) -> Result<usize> {
        let mut found = None;
        if wait_until(deadline, || {
            found = self.master().filter(|&m| m != not);
            found.is_some()
        }) {
            return Ok(found.expect("found"));
        }
        bail!(
            "no single master other than node {not} by the deadline:\n{}",
            self.describe()
        )
    }

    /// Each node's probe and latest role change, for failure messages.
    pub fn describe(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "node {i} (port {}): {:?}; last role change: {}",
                    self.nodes[i].port,
                    self.probe(i),
                    self.nodes[i]
                        .role_changes()
                        .last()
                        .map(String::as_str)
                        .unwrap_or("none")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// kill -9 node `i` (also when paused).
    pub fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.broker.kill9();
        node.running = false;
        node.stopped = false;
    }

    /// SIGTERM to node `i`; waits for it to exit.
    pub fn terminate(&mut self, i: usize) -> Result<ExitStatus> {
        let node = &mut self.nodes[i];
        node.running = false;
        node.stopped = false;
        node.broker.terminate(Duration::from_secs(30))
    }

    /// Pauses node `i` with SIGSTOP.
    pub fn sigstop(&mut self, i: usize) {
        self.nodes[i]
            .broker
            .signal("STOP")
            .unwrap_or_else(|e| panic!("SIGSTOP node {i}: {e:#}"));
        self.nodes[i].stopped = true;
    }

    /// Resumes node `i` with SIGCONT.
    pub fn sigcont(&mut self, i: usize) {
        self.nodes[i]
            .broker
            .signal("CONT")
            .unwrap_or_else(|e| panic!("SIGCONT node {i}: {e:#}"));
        self.nodes[i].stopped = false;
    }

    /// Starts node `i` again (kill -9 first if it runs) on its port, with its store. If the
    /// port is briefly taken by another process, retries until [`STARTUP_TIMEOUT`](crate::STARTUP_TIMEOUT).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.broker
            .restart_retrying()
            .with_context(|| format!("restarting node {i}"))?;
        node.running = true;
        node.stopped = false;
        if node.broker.addr().port() != node.port {
            bail!(
                "node {i} restarted on {} instead of port {}",
                node.broker.addr(),
                node.port
            );
        }
        Ok(())
    }

    /// The nodes that should run (not killed, stopped or paused by the test) but whose process
    /// has exited, each with its exit status and last log lines.
    pub fn exited_on_their_own(&mut self) -> Vec<(usize, String)> {
        let mut exited = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.running && !node.stopped && !node.broker.is_running() {
                let status = node.broker.exit_status();
                let logs = node.broker.logs();
                let tail = logs[logs.len().saturating_sub(15)..].join("\n");
                exited.push((i, format!("exit {status:?}; last lines:\n{tail}")));
            }
        }
        exited
    }

    /// The log lines of node `i` from line `from` on (see [`log_len`](Self::log_len)).
    pub fn logs_since(&self, i: usize, from: usize) -> Vec<String> {
        let logs = self.nodes[i].broker.logs();
        logs.get(from..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// The log lines of node `i` from line `from` on that contain `text`.
    pub fn logged_since(&self, i: usize, from: usize, text: &str) -> Vec<String> {
        let mut lines = self.logs_since(i, from);
        lines.retain(|l| l.contains(text));
        lines
    }

    /// How many log lines node `i` has printed so far (all runs).
    pub fn log_len(&self, i: usize) -> usize {
        self.nodes[i].broker.logs().len()
    }

    /// Runs the ensemble's zkCli with `args`; its standard output.
    pub fn zkcli(&self, args: &[&str]) -> String {
        self.zk.zkcli(args)
    }

    /// The member znodes under [`ZK_PATH`] as zkCli's `ls` lists them (names, not paths);
    /// panics with zkCli's output if it printed no listing.
    pub fn znodes(&self) -> Vec<String> {
        let ls = self.zkcli(&["ls", ZK_PATH]);
        let listed = ls
            .lines()
            .find(|l| l.starts_with('['))
            .unwrap_or_else(|| panic!("no listing in zkCli output:\n{ls}"));
        listed
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `ferromq status --zk-address ... --zk-path ...`: (exit success, stdout, stderr).
    pub fn status(&self) -> Result<(bool, String, String)> {
        let zk = self.zk_address();
        let (status, out, err) = run_cli(
            &["status", "--zk-address", &zk, "--zk-path", ZK_PATH],
            Duration::from_secs(30),
        )?;
        Ok((status.success(), out, err))
    }

    /// `ferromq status --expect-members N`, the health check a monitor runs: (exit code,
    /// stdout, stderr). The exit code is `None` when the check was killed by a signal.
    pub fn health_check(&self, expected: usize) -> Result<(Option<i32>, String, String)> {
        let zk = self.zk_address();
        let expected = expected.to_string();
        let (status, out, err) = run_cli(
            &[
                "status",
                "--zk-address",
                &zk,
                "--zk-path",
                ZK_PATH,
                "--expect-members",
                &expected,
            ],
            Duration::from_secs(30),
        )?;
        Ok((status.code(), out, err))
    }

    /// The rows of `ferromq status` (header excluded), each split at whitespace: znode, id,
    /// role, elected?, epoch, position, address, weight, quorum, slaves, node.
    pub fn status_rows(&self) -> Result<Vec<Vec<String>>> {
        let (_, out, err) = self.status()?;
        let mut lines = out.lines();
        match lines.next() {
            Some(h) if h.starts_with("znode") => {}
            _ => return Err(anyhow!("no status table:\nstdout:\n{out}\nstderr:\n{err}")),
        }
        Ok(lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect())
    }

    /// Node `i`'s id (its store's `node.id`, the `node` column of `ferromq status`), once it
    /// has one.
    pub fn node_id(&self, i: usize) -> Option<String> {
        let path = self.nodes[i].dir.join("data").join("node.id");
        let id = std::fs::read_to_string(path).ok()?;
        Some(id.trim().to_string()).filter(|id| !id.is_empty())
    }

    /// A raw STOMP client connected to node `i`.
    pub fn client(&self, i: usize) -> Result<StompClient> {
        StompClient::connect(self.nodes[i].addr())
    }
}

/// The host a node of a partitionable cluster advertises for its replication listener: its
/// proxy listens there.
const REPLICATION_PROXY_HOST: &str = "127.0.0.2";

/// A proxy from `127.0.0.2:R` to `127.0.0.1:R`, for a port R free on both when picked: the
/// node whose replication listener binds `127.0.0.1:R` advertises `127.0.0.2:R`.
///
/// Nothing holds `127.0.0.1:R` while the node is not master, so R is one of
/// [`stable_ports`](crate::stable_ports), below the kernel's ephemeral range where there is
/// room: no `bind(0)` (an admin endpoint's, another test's) and no outgoing connection is given
/// it meanwhile. The proxy holding `127.0.0.2:R` keeps other clusters, which pick the same way,
/// off it.
fn replication_proxy() -> Proxy {
    let host: std::net::IpAddr = REPLICATION_PROXY_HOST.parse().expect("an IP address");
    let mut last = None;
    for port in crate::stable_ports().take(50) {
        let master = SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(e) = TcpListener::bind(master) {
            last = Some(e);
            continue;
        }
        match Proxy::listen(SocketAddr::new(host, port), master) {
            Ok(proxy) => return proxy,
            Err(e) => last = Some(e),
        }
    }
    panic!(
        "no port free on both 127.0.0.1 and {REPLICATION_PROXY_HOST} for a replication proxy: {:?}",
        last
    )
}

/// What `addr` answers to a STOMP 1.2 CONNECT within `PROBE_TIMEOUT`.
pub fn probe_addr(addr: SocketAddr) -> Probe {
    let mut client = match StompClient::open(addr) {
        Ok(c) => c,
        Err(e) => return Probe::Down(format!("{e:#}")),
    };
    let connect = Frame::new("CONNECT")
        .header("accept-version", "1.2")
        .header("host", "localhost");
    if let Err(e) = client.write_raw(&connect.encode(false)) {
        return Probe::Down(format!("writing CONNECT: {e}"));
    }
    match client.poll(PROBE_TIMEOUT) {
        Ok(Incoming::Frame(f)) if f.command == "CONNECTED" => {
            client.drop_connection();
            Probe::Serving
        }
        Ok(Incoming::Frame(f)) if f.command == "ERROR" => {
            Probe::Refused(f.get("message").unwrap_or_default().to_string())
        }
        Ok(Incoming::Frame(f)) => Probe::Down(format!("unexpected answer {f:?}")),
        Ok(Incoming::Closed) => Probe::Down("closed without a frame".into()),
        Ok(Incoming::TimedOut) => Probe::Down(format!("no answer within {PROBE_TIMEOUT:?}")),
        Err(e) => Probe::Down(format!("{e:#}")),
    }
}
