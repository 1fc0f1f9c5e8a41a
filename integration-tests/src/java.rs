//! The stock ActiveMQ 5.x Java JMS client, for tests that talk OpenWire to ferromq the way a
//! Java application does.
//!
//! - `integration-tests/java/JmsCheck.java` holds the client scenarios (one per run, chosen by
//!   its first argument; its class doc lists the options and the output lines), and
//!   `RefBroker.java` an embedded stock ActiveMQ broker to check a scenario against
//!   (`integration-tests/java/run-reference.sh` runs them by hand).
//! - [`setup`] finds `java` and `javac` (`$JAVA_HOME/bin` first, then `PATH`), checks that
//!   Debian's `libactivemq-java` jars are there and compiles the sources once per test process
//!   into `<target>/jmscheck/<hash of the sources>`: into a unique directory first, renamed into
//!   place, so test processes running in parallel never see half-compiled classes.
//! - [`JavaRun`] runs one scenario as a child process: its output lines are collected (and
//!   echoed to stderr, prefixed `[jms <scenario>]`, so a failing test shows them), lines can be
//!   written to its standard input, it can be killed, and [`JavaRun::wait_with_deadline`] ends
//!   it (killing it past the deadline) with a [`JavaOutcome`].
//! - [`run_scenario`] runs a scenario to completion; [`JavaOutcome::assert_passed`] fails a test
//!   with the scenario's `FAIL` lines.
//! - [`ReferenceBroker`] runs `RefBroker` (real ActiveMQ, in memory) on a port the OS picks.
//!
//! JmsCheck has its own watchdog (option `timeout=SECS`); the deadline here is that plus
//! [`JVM_GRACE`], so a hanging scenario normally ends with JmsCheck's own report of where it
//! hung.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use crate::{deadline, run_with_timeout, wait_until, workspace_root};

/// Where Debian's `libactivemq-java` (and its dependencies) put the jars.
pub const JAR_DIR: &str = "/usr/share/java";

/// The client's classpath: the ActiveMQ client and what it needs at run time (the legacy jar
/// holds the marshallers of OpenWire versions 2 to 8, for clients told to speak them).
pub const CLIENT_JARS: [&str; 7] = [
    "activemq-client.jar",
    "activemq-openwire-legacy.jar",
    "geronimo-jms_1.1_spec.jar",
    "hawtbuf.jar",
    "slf4j-api.jar",
    "geronimo-j2ee-management-1.1-spec.jar",
    "slf4j-nop.jar",
];

/// Added to [`CLIENT_JARS`] for the reference broker.
pub const BROKER_JARS: [&str; 1] = ["activemq-broker.jar"];

/// How much longer than JmsCheck's own watchdog a run may take before it is killed (JVM start,
/// the watchdog's report).
pub const JVM_GRACE: Duration = Duration::from_secs(30);

/// The default watchdog of a scenario.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// What to install when something is missing.
const INSTALL_HINT: &str = "install a JDK and Debian's ActiveMQ client \
     (apt-get install -y default-jdk-headless libactivemq-java), or run scripts/test.sh, which \
     installs them";

/// The compiled sources and the commands to run them.
#[derive(Debug)]
pub struct Setup {
    /// The `java` launcher.
    pub java: PathBuf,
    /// The directory holding the compiled classes.
    pub classes: PathBuf,
    /// `classes` plus [`CLIENT_JARS`].
    pub client_classpath: String,
    /// `classes` plus [`CLIENT_JARS`] and [`BROKER_JARS`].
    pub broker_classpath: String,
}

/// The Java sources' directory.
pub fn sources_dir() -> PathBuf {
    workspace_root().join("integration-tests").join("java")
}

fn jdk_tool(name: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let tool = PathBuf::from(home).join("bin").join(name);
        if tool.is_file() {
            return tool;
        }
    }
    PathBuf::from(name)
}

fn jars(names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|n| Path::new(JAR_DIR).join(n)).collect()
}

fn join_classpath(first: &Path, jars: &[PathBuf]) -> String {
    std::iter::once(first.to_string_lossy().into_owned())
        .chain(jars.iter().map(|j| j.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(":")
}

/// Finds the JDK and the jars and compiles the sources, once per test process.
pub fn setup() -> Result<&'static Setup> {
    static SETUP: OnceLock<std::result::Result<Setup, String>> = OnceLock::new();
    SETUP
        .get_or_init(|| compile().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("the Java JMS client is not usable: {e}"))
}

fn compile() -> Result<Setup> {
    let client_jars = jars(&CLIENT_JARS);
    let all_jars: Vec<PathBuf> = client_jars
        .iter()
        .cloned()
        .chain(jars(&BROKER_JARS))
        .collect();
    let missing: Vec<String> = all_jars
        .iter()
        .filter(|j| !j.is_file())
        .map(|j| j.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!("missing {}: {INSTALL_HINT}", missing.join(", "));
    }
    let java = jdk_tool("java");
    let javac = jdk_tool("javac");
    let mut version = Command::new(&javac);
    version.arg("-version");
    match run_with_timeout(version, Duration::from_secs(60)) {
        Ok((status, _, _)) if status.success() => {}
        Ok((status, out, err)) => bail!(
            "{} -version failed ({status}): {out}{err}; {INSTALL_HINT}",
            javac.display()
        ),
        Err(e) => bail!("cannot run {}: {e:#}; {INSTALL_HINT}", javac.display()),
    }

    let dir = sources_dir();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "java"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        bail!("no .java files in {}", dir.display());
    }
    let mut hasher = DefaultHasher::new();
    for source in &sources {
        source.file_name().hash(&mut hasher);
        std::fs::read(source)
            .with_context(|| format!("reading {}", source.display()))?
            .hash(&mut hasher);
    }
    all_jars.hash(&mut hasher);
    let parent = target_dir().join("jmscheck");
    let classes = parent.join(format!("{:016x}", hasher.finish()));
    let setup = Setup {
        java,
        client_classpath: join_classpath(&classes, &client_jars),
        broker_classpath: join_classpath(&classes, &all_jars),
        classes: classes.clone(),
    };
    let done = |classes: &Path| classes.join("JmsCheck.class").is_file();
    if done(&classes) {
        return Ok(setup);
    }
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch = parent.join(format!("tmp-{}-{nanos}", std::process::id()));
    let mut command = Command::new(&javac);
    command
        .args(["-nowarn", "-encoding", "UTF-8", "-d"])
        .arg(&scratch)
        .arg("-cp")
        .arg(join_classpath(Path::new("."), &all_jars))
        .args(&sources);
    let (status, out, err) = run_with_timeout(command, Duration::from_secs(300))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        bail!("compiling {} failed ({status}):\n{out}{err}", dir.display());
    }
    // Another test process may have renamed its copy into place first: then use that one.
    if let Err(e) = std::fs::rename(&scratch, &classes) {
        let _ = std::fs::remove_dir_all(&scratch);
        if !done(&classes) {
            return Err(e).with_context(|| format!("moving the classes to {}", classes.display()));
        }
    }
    Ok(setup)
}

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `java` with options that start fast and stay small beside the broker under test.
fn java_command(setup: &Setup, classpath: &str, main: &str) -> Command {
    java_command_with(setup, &[], classpath, main)
}

/// [`java_command`] with system properties (`-Dname=value`) for the JVM.
fn java_command_with(
    setup: &Setup,
    properties: &[(&str, &str)],
    classpath: &str,
    main: &str,
) -> Command {
    let mut command = Command::new(&setup.java);
    command
        .args(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m"])
        .args(properties.iter().map(|(k, v)| format!("-D{k}={v}")))
        .args(["-cp", classpath, main])
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("JMSCHECK_TIMEOUT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Echoes and keeps the lines of a JmsCheck output pipe (NULs shown as `\0`).
fn line_reader(
    pipe: impl Read + Send + 'static,
    label: String,
    lines: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    crate::echo_lines(pipe, label, lines, |raw| {
        String::from_utf8_lossy(raw)
            .trim_end_matches(['\n', '\r'])
            .replace('\0', "\\0")
    })
}

// ----- one scenario --------------------------------------------------------------------------

/// How a JmsCheck run ended.
#[derive(Debug)]
pub struct JavaOutcome {
    /// `jms <scenario>`.
    pub label: String,
    pub scenario: String,
    /// None: killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl JavaOutcome {
    /// Exit 0 and a last line `PASS <scenario>`.
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success())
            && self.stdout.last().map(String::as_str) == Some(&format!("PASS {}", self.scenario))
    }

    /// The `FAIL ...` lines.
    pub fn failures(&self) -> Vec<&str> {
        self.stdout
            .iter()
            .filter(|l| l.starts_with("FAIL "))
            .map(String::as_str)
            .collect()
    }

    /// The last stdout line starting with `prefix`, without it.
    pub fn last_with(&self, prefix: &str) -> Option<&str> {
        self.stdout
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(prefix))
    }

    /// What went wrong, for a failure message: exit status, `FAIL` lines (or the last lines of
    /// output when there are none) and the end of stderr.
    pub fn summary(&self) -> String {
        let status = match self.status {
            Some(s) => format!("exited with {s}"),
            None => "was killed at its deadline".to_string(),
        };
        let failures = self.failures();
        let shown: Vec<&str> = if failures.is_empty() {
            let n = self.stdout.len();
            self.stdout[n.saturating_sub(15)..]
                .iter()
                .map(String::as_str)
                .collect()
        } else {
            failures
        };
        let n = self.stderr.len();
        let mut text = format!(
            "JmsCheck {} {status}:\n  {}",
            self.scenario,
            shown.join("\n  ")
        );
        if n > 0 {
            text.push_str(&format!(
                "\nstderr (last lines):\n  {}",
                self.stderr[n.saturating_sub(10)..].join("\n  ")
            ));
        }
        text
    }

    /// Panics with [`summary`](Self::summary) and `context` unless the scenario passed.
    pub fn assert_passed(&self, context: &str) {
        assert!(self.passed(), "{}\n{context}", self.summary());
    }
}

/// A running JmsCheck scenario. Drop kills it.
pub struct JavaRun {
    label: String,
    scenario: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    watchdog: Duration,
}

impl JavaRun {
    /// Starts `JmsCheck SCENARIO URL OPTIONS... timeout=<watchdog>`.
    pub fn start(
        scenario: &str,
        url: &str,
        options: &[&str],
        watchdog: Duration,
    ) -> Result<JavaRun> {
        let setup = setup()?;
        let mut command = java_command(setup, &setup.client_classpath, "JmsCheck");
        command
            .arg(scenario)
            .arg(url)
            .args(options)
            .arg(format!("timeout={}", watchdog.as_secs().max(1)));
        let shown = format!("{command:?}");
        eprintln!("running {shown}");
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {shown}"))?;
        let label = format!("jms {scenario}");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            line_reader(
                child.stdout.take().expect("piped"),
                label.clone(),
                stdout.clone(),
            ),
            line_reader(
                child.stderr.take().expect("piped"),
                format!("{label} stderr"),
                stderr.clone(),
            ),
        ];
        Ok(JavaRun {
            label,
            scenario: scenario.to_string(),
            stdin: child.stdin.take(),
            child: Some(child),
            stdout,
            stderr,
            readers,
            status: None,
            watchdog,
        })
    }

    /// `jms <scenario>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The output lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The last output line starting with `prefix`, without it.
    pub fn last_with(&self, prefix: &str) -> Option<String> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    }

    /// The number after the last line `PREFIX<number>` (0 before there is one), e.g. the
    /// progress lines `SENT 50` of failover-produce.
    pub fn progress(&self, prefix: &str) -> u64 {
        self.last_with(prefix)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `condition` holds or the process has exited (then false) or `deadline`
    /// passes (false).
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> bool {
        let mut held = false;
        wait_until(deadline, || {
            held = condition(self);
            held || !self.is_running()
        });
        held || condition(self)
    }

    /// Writes one line to its standard input.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: standard input already closed", self.label))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing {line:?} to {}", self.label))
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => {
                self.status = Some(status);
                false
            }
            Some(Ok(None)) => true,
            _ => false,
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.status.is_none() {
                let _ = child.kill();
                self.status = child.wait().ok();
            }
        }
    }

    /// Waits for the process to exit; past `deadline` kills it (the outcome's status is then
    /// None).
    pub fn wait_with_deadline(mut self, deadline: Instant) -> JavaOutcome {
        let finished = {
            let this = &mut self;
            wait_until(deadline, || !this.is_running())
        };
        let status = if finished {
            self.status
        } else {
            self.kill();
            None
        };
        self.stdin.take();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.child.take();
        JavaOutcome {
            label: self.label.clone(),
            scenario: self.scenario.clone(),
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }

    /// [`wait_with_deadline`](Self::wait_with_deadline) at the watchdog plus [`JVM_GRACE`]
    /// from now.
    pub fn wait(self) -> JavaOutcome {
        let end = deadline(self.watchdog + JVM_GRACE);
        self.wait_with_deadline(end)
    }
}

impl Drop for JavaRun {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `JmsCheck SCENARIO URL OPTIONS...` to completion, with a watchdog of `watchdog` (and a
/// deadline [`JVM_GRACE`] later).
pub fn run_scenario(
    scenario: &str,
    url: &str,
    options: &[&str],
    watchdog: Duration,
) -> Result<JavaOutcome> {
    let mut run = JavaRun::start(scenario, url, options, watchdog)?;
    // Nothing to say: end of input at once (failover-produce then stops at its minimum).
    run.stdin.take();
    Ok(run.wait())
}

// ----- the reference broker ------------------------------------------------------------------

/// Stock ActiveMQ (`RefBroker`: in memory, no JMX) on a loopback port the OS picks. Drop stops
/// it.
pub struct ReferenceBroker {
    child: Child,
    url: String,
    _stdin: ChildStdin,
    readers: Vec<JoinHandle<()>>,
}

impl ReferenceBroker {
    /// Starts it; returns once it accepts clients.
    pub fn start() -> Result<ReferenceBroker> {
        ReferenceBroker::start_with(&[])
    }

    /// Starts it with system properties (see `RefBroker.java`: `refbroker.deadLetterStrategy`);
    /// returns once it accepts clients.
    pub fn start_with(properties: &[(&str, &str)]) -> Result<ReferenceBroker> {
        let setup = setup()?;
        let mut child = java_command_with(setup, properties, &setup.broker_classpath, "RefBroker")
            .spawn()
            .context("spawning the reference broker")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            line_reader(
                child.stdout.take().expect("piped"),
                "activemq".into(),
                stdout.clone(),
            ),
            line_reader(
                child.stderr.take().expect("piped"),
                "activemq stderr".into(),
                stderr,
            ),
        ];
        let mut broker = ReferenceBroker {
            child,
            url: String::new(),
            _stdin: stdin,
            readers,
        };
        let mut url = None;
        let mut exited = None;
        wait_until(deadline(Duration::from_secs(60)), || {
            url = stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix("LISTENING ").map(str::to_string));
            exited = broker.child.try_wait().ok().flatten();
            url.is_some() || exited.is_some()
        });
        match (url, exited) {
            (Some(url), _) => {
                broker.url = url;
                Ok(broker)
            }
            (None, Some(status)) => {
                bail!("the reference broker exited ({status}) before listening")
            }
            (None, None) => bail!("the reference broker printed no LISTENING line within 60 s"),
        }
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for ReferenceBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}
