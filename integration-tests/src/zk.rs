//! Real ZooKeeper ensembles for tests, 3.8 (Debian bookworm) or 3.4.13 (Debian bullseye's
//! package), installed by `scripts/zk.sh install`.
//!
//! [`ZkEnsemble::start`] writes the configs in a temporary directory, picks free loopback ports
//! at run time (so tests run in parallel; a collision is retried with new ports), runs one `java`
//! process per member with the same classpaths as `scripts/zk.sh`, and waits (polling `srvr`
//! with a deadline) until every member is leader or follower. `tickTime=500`, so a 2 s session
//! timeout is honoured. Drop kills every member (and keeps the directory, with each member's
//! `node<i>/zookeeper.out`, if the test is failing or `ZK_KEEP_DIR` is set).
//!
//! The methods block (they poll processes and sockets): from async tests call them through
//! `tokio::task::spawn_blocking` or `block_in_place`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Watchdog, TEST_LIMIT};

/// ZooKeeper 3.8 (Debian package `zookeeper`): the jar's manifest pulls its dependencies.
const ZK38_JAR: &str = "/usr/share/java/zookeeper.jar";
const ZK38_SLF4J: &str = "/usr/share/java/slf4j-simple.jar";
const ZK38_CLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

/// ZooKeeper 3.4.13, unpacked by `scripts/zk.sh install`, with bookworm's jars for its
/// dependencies.
const ZK34_JAR: &str = "/opt/zookeeper-3.4.13/zookeeper-3.4.13.jar";
const ZK34_DEPS: [&str; 4] = [
    "/usr/share/java/log4j-1.2.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/jline.jar",
];

/// How long an ensemble (or a restarted member) may take to serve.
pub const ZK_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which ZooKeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZkVersion {
    /// 3.8.0 from Debian bookworm.
    V3_8,
    /// 3.4.13 from Debian bullseye (the version the seed deployment runs).
    V3_4,
}

impl ZkVersion {
    fn files(self) -> Vec<&'static str> {
        match self {
            ZkVersion::V3_8 => vec![ZK38_JAR, ZK38_SLF4J, ZK38_CLI],
            ZkVersion::V3_4 => {
                let mut files = vec![ZK34_JAR];
                files.extend(ZK34_DEPS);
                files
            }
        }
    }

    /// Panics, telling to run `scripts/zk.sh install`, unless this version is installed.
    pub fn ensure_installed(self) {
        for file in self.files() {
            assert!(
                Path::new(file).exists(),
                "ZooKeeper {self:?} is not installed ({file} is missing): run `scripts/zk.sh install` \
                 (as root) first"
            );
        }
    }

    /// The server's (and for 3.4, the CLI's) classpath.
    fn classpath(self, dir: &Path) -> String {
        match self {
            ZkVersion::V3_8 => format!("{ZK38_JAR}:{ZK38_SLF4J}"),
            // `dir` first: it holds log4j.properties
            ZkVersion::V3_4 => format!("{}:{ZK34_JAR}:{}", dir.display(), ZK34_DEPS.join(":")),
        }
    }
}

struct Member {
    dir: PathBuf,
    config: PathBuf,
    client_port: u16,
    child: Option<Child>,
}

/// A loopback ZooKeeper ensemble of real server processes.
pub struct ZkEnsemble {
    version: ZkVersion,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Bounds the test that runs this ensemble (see [`Watchdog`]).
    _watchdog: Watchdog,
}

impl ZkEnsemble {
    /// Starts `members` servers (1 = standalone) and waits until all of them serve.
    pub fn start(version: ZkVersion, members: usize) -> ZkEnsemble {
        assert!(members >= 1, "an ensemble needs a member");
        version.ensure_installed();
        let mut last_error = String::new();
        for attempt in 1..=4 {
            let mut ensemble = ZkEnsemble::configure(version, members);
            for m in 0..members {
                ensemble.spawn(m);
            }
            match ensemble.wait_serving((0..members).collect(), ZK_START_TIMEOUT) {
                Ok(()) => return ensemble,
                Err(e) => {
                    // Most likely a port taken between picking and binding: new ports.
                    eprintln!("ZooKeeper {version:?} ensemble, attempt {attempt}: {e}");
                    last_error = e;
                }
            }
        }
        panic!("ZooKeeper {version:?} ensemble did not start: {last_error}");
    }

    fn configure(version: ZkVersion, members: usize) -> ZkEnsemble {
        let dir = tempfile::Builder::new()
            .prefix("zk-ensemble-")
            .tempdir()
            .expect("creating a temporary directory");
        let ports = free_ports(members * 3);
        let mut servers = String::new();
        if members > 1 {
            for m in 0..members {
                servers.push_str(&format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    m + 1,
                    ports[members + m],
                    ports[2 * members + m]
                ));
            }
        }
        if version == ZkVersion::V3_4 {
            std::fs::write(
                dir.path().join("log4j.properties"),
                "log4j.rootLogger=INFO, CONSOLE\n\
                 log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
                 log4j.appender.CONSOLE.Target=System.err\n\
                 log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n\n",
            )
            .expect("writing log4j.properties");
        }
        let mut list = Vec::new();
        for (m, &client_port) in ports[..members].iter().enumerate() {
            let member_dir = dir.path().join(format!("node{}", m + 1));
            let data = member_dir.join("data");
            std::fs::create_dir_all(&data).expect("creating a dataDir");
            std::fs::write(data.join("myid"), format!("{}\n", m + 1)).expect("writing myid");
            let config = member_dir.join("zoo.cfg");
            std::fs::write(
                &config,
                format!(
                    "tickTime=500\n\
                     initLimit=20\n\
                     syncLimit=10\n\
                     dataDir={}\n\
                     clientPort={}\n\
                     clientPortAddress=127.0.0.1\n\
                     maxClientCnxns=0\n\
                     4lw.commands.whitelist=srvr,stat,ruok,mntr,conf,cons,wchs,envi\n\
                     admin.enableServer=false\n\
                     preAllocSize=8192\n\
                     {servers}",
                    data.display(),
                    client_port
                ),
            )
            .expect("writing zoo.cfg");
            list.push(Member {
                dir: member_dir,
                config,
                client_port,
                child: None,
            });
        }
        ZkEnsemble {
            version,
            dir,
            members: list,
            _watchdog: Watchdog::start(
                std::thread::current().name().unwrap_or("a ZooKeeper test"),
                TEST_LIMIT,
            ),
        }
    }

    fn spawn(&mut self, member: usize) {
        let classpath = self.version.classpath(self.dir.path());
        let m = &mut self.members[member];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("zookeeper.out"))
            .expect("opening the member's log");
        let child = Command::new("java")
            .args([
                "-Xmx128m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.admin.enableServer=false",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(&m.config)
            .current_dir(&m.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn()
            .expect("spawning java (is a JRE installed?)");
        m.child = Some(child);
    }

    /// Waits until each of `members` answers `srvr` with leader or follower (standalone for a
    /// one-member ensemble).
    fn wait_serving(&mut self, members: Vec<usize>, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let mut waiting = Vec::new();
            for &m in &members {
                if let Some(child) = self.members[m].child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "member {m} exited ({status}); log tail:\n{}",
                            self.log_tail(m)
                        ));
                    }
                }
                match self.mode(m).as_deref() {
                    Some("leader") | Some("follower") | Some("standalone") => {}
                    other => waiting.push(format!("member {m}: {}", other.unwrap_or("down"))),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                let logs: Vec<String> = members
                    .iter()
                    .map(|&m| format!("--- member {m}:\n{}", self.log_tail(m)))
                    .collect();
                return Err(format!(
                    "not serving within {timeout:?}: {}\n{}",
                    waiting.join(", "),
                    logs.join("\n")
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn log_tail(&self, member: usize) -> String {
        let text = std::fs::read_to_string(self.members[member].dir.join("zookeeper.out"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The whole log of a member (for failure messages).
    pub fn log(&self, member: usize) -> String {
        std::fs::read_to_string(self.members[member].dir.join("zookeeper.out")).unwrap_or_default()
    }

    /// Which ZooKeeper this is.
    pub fn version(&self) -> ZkVersion {
        self.version
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The client port of a member (0-based).
    pub fn client_port(&self, member: usize) -> u16 {
        self.members[member].client_port
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`: every member, running or not.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether a member's process runs.
    pub fn is_running(&self, member: usize) -> bool {
        self.members[member].child.is_some()
    }

    /// Kills a member with SIGKILL and reaps it.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again (same config and data) and waits until it serves; the
    /// other members must form a quorum with it.
    pub fn start_member(&mut self, member: usize) {
        self.start_members(&[member]);
    }

    /// Starts killed members again together (an ensemble that lost its quorum needs a quorum
    /// of them back at once) and waits until each serves.
    pub fn start_members(&mut self, members: &[usize]) {
        for &member in members {
            assert!(
                self.members[member].child.is_none(),
                "member {member} is running"
            );
            self.spawn(member);
        }
        if let Err(e) = self.wait_serving(members.to_vec(), ZK_START_TIMEOUT) {
            panic!("restarting ZooKeeper members {members:?}: {e}");
        }
    }

    /// `Mode:` of a member's `srvr` answer (`leader`, `follower`, `standalone`), `None` if it
    /// does not answer or does not serve.
    pub fn mode(&self, member: usize) -> Option<String> {
        let reply = four_letter_word(self.members[member].client_port, "srvr")?;
        reply
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }

    /// The member that is leader now, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len())
            .filter(|&m| self.members[m].child.is_some())
            .find(|&m| self.mode(m).as_deref() == Some("leader"))
    }

    /// Runs the version's ZooKeeper CLI against a running member (`zkcli(&["get", "/x"])`) and
    /// returns its standard output.
    ///
    /// 3.8: `/usr/share/zookeeper/bin/zkCli.sh -server 127.0.0.1:PORT ARGS...`.
    /// 3.4: `org.apache.zookeeper.ZooKeeperMain` with the 3.4 jars. Its client cannot resolve
    /// any server on Java 14+ (it parses `InetSocketAddress.toString()`, which became
    /// `127.0.0.1/<unresolved>:PORT`), so it runs with a hosts file (`-Djdk.net.hosts.file`)
    /// that maps that very string to 127.0.0.1.
    pub fn zkcli(&self, args: &[&str]) -> String {
        let member = (0..self.members.len())
            .find(|&m| self.members[m].child.is_some())
            .expect("no ZooKeeper member is running");
        let server = format!("127.0.0.1:{}", self.members[member].client_port);
        let mut command = match self.version {
            ZkVersion::V3_8 => {
                let mut c = Command::new(ZK38_CLI);
                c.arg("-server").arg(&server);
                c
            }
            ZkVersion::V3_4 => {
                let hosts = self.dir.path().join("hosts");
                std::fs::write(
                    &hosts,
                    "127.0.0.1 localhost localhost/<unresolved> 127.0.0.1/<unresolved>\n",
                )
                .expect("writing the CLI's hosts file");
                let log4j = self.dir.path().join("cli-log4j.properties");
                std::fs::write(
                    &log4j,
                    "log4j.rootLogger=WARN, CONSOLE\n\
                     log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
                     log4j.appender.CONSOLE.Target=System.err\n\
                     log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
                     log4j.appender.CONSOLE.layout.ConversionPattern=%-5p %m%n\n",
                )
                .expect("writing the CLI's log4j.properties");
                let mut c = Command::new("java");
                c.arg("-Xmx64m")
                    .arg("-XX:TieredStopAtLevel=1")
                    .arg(format!("-Djdk.net.hosts.file={}", hosts.display()))
                    .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
                    .arg("-cp")
                    .arg(format!("{ZK34_JAR}:{}", ZK34_DEPS.join(":")))
                    .arg("org.apache.zookeeper.ZooKeeperMain")
                    .arg("-server")
                    .arg(&server);
                c
            }
        };
        command
            .args(args)
            .env("JVMFLAGS", "-Xmx64m")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawning the ZooKeeper CLI");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the ZooKeeper CLI ({args:?}) did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        if out.trim().is_empty() && !err.trim().is_empty() {
            eprintln!("ZooKeeper CLI {args:?} stderr:\n{err}");
        }
        out
    }
}

impl Drop for ZkEnsemble {
    /// Kills every member. The directory (configs, data, `node*/zookeeper.out`) is removed,
    /// unless the test is failing or `ZK_KEEP_DIR` is set: then its path is printed.
    fn drop(&mut self) {
        for m in 0..self.members.len() {
            self.kill(m);
        }
        if std::thread::panicking() || std::env::var_os("ZK_KEEP_DIR").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "ZooKeeper {:?} ensemble kept in {}",
                self.version,
                self.dir.path().display()
            );
        }
    }
}

/// Sends a four-letter word to 127.0.0.1:`port`; the reply, or `None` if nothing answers.
pub fn four_letter_word(port: u16, word: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    (!reply.is_empty()).then_some(reply)
}

/// `n` distinct loopback ports free now, from [`stable_ports`](crate::stable_ports): a member
/// killed and started again ([`ZkEnsemble::start_member`]) binds its ports anew, and ports
/// below the kernel's ephemeral range are not given to another socket while it is down.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    for port in crate::stable_ports().take(50 * n) {
        if ports.len() == n {
            break;
        }
        if !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free loopback ports: {ports:?}");
    ports
}
