//! The `ferromq` command line.
//!
//! - `broker`: run a broker node ([`crate::server::run`]).
//! - `produce`, `consume`: send or receive messages through [`crate::client`].
//! - `bench`: concurrent producers and consumers; rates and send latency percentiles.
//! - `status`: the cluster's members as ZooKeeper shows them.
//!
//! Exit codes: 0 success; 1 failure (including `consume` receiving fewer messages than asked);
//! 2 usage or configuration error, or a broker start-up refused in a way only a person can
//! mend (a damaged store, a cluster member's store under a standalone configuration, a volume
//! too small, a store directory that is a file or not the user's to use;
//! [`crate::server::needs_operator`]), which supervisors should not retry.
//! `status --expect-members` uses the Nagios plugin codes instead: 0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN.

/// `print!` / `println!` / `eprint!` / `eprintln!` that never panic: output to a closed pipe
/// (`ferromq status | head -1`, a log reader that went away) is dropped, not a panic.
macro_rules! emit {
    ($stream:ident, $write:ident, $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = $write!(std::io::$stream(), $($arg)*);
    }};
}
macro_rules! out {
    ($($arg:tt)*) => { emit!(stdout, write, $($arg)*) };
}
macro_rules! outln {
    ($($arg:tt)*) => { emit!(stdout, writeln, $($arg)*) };
}
macro_rules! errout {
    ($($arg:tt)*) => { emit!(stderr, write, $($arg)*) };
}
macro_rules! errln {
    ($($arg:tt)*) => { emit!(stderr, writeln, $($arg)*) };
}

mod bench;
mod consume;
mod produce;
mod report;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{AckMode, Client, ClientOptions, HeartBeat};

/// The exit code of usage and configuration errors (clap uses it too).
const USAGE_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "ferromq",
    version,
    about = "A replicated message broker with ActiveMQ's master/slave model, and its tools",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Run a broker node until SIGINT, SIGTERM or SIGHUP.
    Broker(BrokerArgs),
    /// Send messages to a destination and report how fast the broker confirmed them.
    Produce(produce::ProduceArgs),
    /// Receive messages from a destination and print their bodies.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and send latency with concurrent producers and consumers.
    Bench(bench::BenchArgs),
    /// Show the cluster as ZooKeeper sees it: members, roles, epochs, positions.
    Status(status::StatusArgs),
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// Configuration file (TOML); without it, defaults and FERROMQ_* environment variables.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

/// How to reach the broker; shared by the client commands.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// Broker URL: tcp://HOST:PORT, HOST:PORT,HOST:PORT, or
    /// failover:(tcp://A:PORT,tcp://B:PORT)?initialReconnectDelay=100&timeout=5000 (ActiveMQ's
    /// failover options).
    #[arg(
        long,
        short = 'u',
        value_name = "URL",
        default_value = "tcp://127.0.0.1:61616"
    )]
    url: String,
    /// Login sent on CONNECT.
    #[arg(long, value_name = "USER")]
    login: Option<String>,
    /// Passcode sent on CONNECT.
    #[arg(long, value_name = "PASSWORD")]
    passcode: Option<String>,
    /// Client id sent on CONNECT (ActiveMQ's clientId); a durable subscription is kept under
    /// it, so `consume --durable` needs one.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// STOMP heart-beat period, both ways: a broker silent for 2.25 times this long (a paused
    /// process, a dead machine) is taken for dead and the failover URL's next broker tried.
    /// 0 turns heart-beats off.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration_arg)]
    heart_beat: Duration,
}

impl ConnectArgs {
    pub(crate) async fn connect(&self) -> Result<Client, crate::client::ClientError> {
        let options = ClientOptions {
            login: self.login.clone(),
            passcode: self.passcode.clone(),
            client_id: self.client_id.clone(),
            heartbeat: HeartBeat::every(self.heart_beat),
            ..ClientOptions::default()
        };
        Client::connect(&self.url, options).await
    }
}

/// The `--ack` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AckArg {
    /// The broker counts a message consumed once it is written to the consumer.
    Auto,
    /// Each message is acknowledged (ACK) after it is handled.
    Client,
    /// Like client, acknowledging each message alone.
    ClientIndividual,
}

impl From<AckArg> for AckMode {
    fn from(ack: AckArg) -> AckMode {
        match ack {
            AckArg::Auto => AckMode::Auto,
            AckArg::Client => AckMode::Client,
            AckArg::ClientIndividual => AckMode::ClientIndividual,
        }
    }
}

/// Parses `5s`, `500ms`, `2m`, `1h` (a bare number is milliseconds), as the configuration does.
pub(crate) fn duration_arg(value: &str) -> Result<Duration, String> {
    crate::config::parse_duration(value).map_err(|e| e.to_string())
}

/// The largest message body the tools make: far above any broker's frame limit (ferromq's
/// default is 100 MiB, as ActiveMQ's), far below what would exhaust memory.
const MAX_BODY_SIZE: u64 = 1 << 30;

/// Parses a message size, `1024`, `4KiB`, `1MiB`, as the configuration does; at most 1 GiB.
pub(crate) fn size_arg(value: &str) -> Result<usize, String> {
    let bytes = crate::config::parse_size(value).map_err(|e| e.to_string())?;
    if bytes > MAX_BODY_SIZE {
        return Err(format!("size {value:?} is over the 1GiB the tools send"));
    }
    usize::try_from(bytes).map_err(|_| format!("size {value:?} is too large"))
}

/// Runs the command line: parses the arguments, starts logging (RUST_LOG, default `info`,
/// `warn` for `status`, on stderr) and a multi-threaded runtime, and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            if e.use_stderr() && status::is_check(&args) {
                return status::usage_error(&e, &args);
            }
            e.exit()
        }
    };
    // The health check's output is read by monitors and people: its own lines, not the
    // ZooKeeper client's session chatter (RUST_LOG still overrides).
    init_tracing(if matches!(cli.command, CliCommand::Status(_)) {
        "warn"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            errln!("ferromq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// Standard error for the log, write errors ignored: a log reader that went away (a closed
/// pipe) must not stop the broker. tracing-subscriber reports a failed write with
/// `eprintln!`, which panics on that same closed pipe.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        // Colour only for a person at a terminal: log files and test harnesses parse plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        CliCommand::Broker(args) => broker(args).await,
        CliCommand::Produce(args) => produce::run(args).await,
        CliCommand::Consume(args) => consume::run(args).await,
        CliCommand::Bench(args) => bench::run(args).await,
        CliCommand::Status(args) => status::run(args).await,
    }
}

async fn broker(args: BrokerArgs) -> ExitCode {
    let config = match crate::config::Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            errln!("ferromq broker: {e}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    crate::heap::spawn_trimmer();
    crate::files::raise_limit();
    match crate::server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("ferromq broker: {e:#}");
            if crate::server::needs_operator(&e) {
                ExitCode::from(USAGE_ERROR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Parses a command line (without the program name), for tests.
#[cfg(test)]
fn parse_command(args: &[&str]) -> CliCommand {
    let argv = std::iter::once("ferromq").chain(args.iter().copied());
    Cli::parse_from(argv).command
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_subcommand_with_a_description() {
        let help = Cli::command().render_help().to_string();
        for line in [
            "broker   Run a broker node",
            "produce  Send messages",
            "consume  Receive messages",
            "bench    Measure throughput",
        ] {
            assert!(help.contains(line), "{line:?} missing from:\n{help}");
        }
    }

    #[test]
    fn every_argument_has_help() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(arg.get_help().is_some(), "{path} --{id} has no help text");
                }
            }
            for sub in command.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "ferromq");
    }

    #[test]
    fn durations_and_sizes_use_the_configuration_units() {
        assert_eq!(duration_arg("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration_arg("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration_arg("soon").is_err());
        assert_eq!(size_arg("4KiB"), Ok(4096));
        assert_eq!(size_arg("100"), Ok(100));
        assert!(size_arg("big").is_err());
        assert!(size_arg("2GiB").unwrap_err().contains("1GiB"));
    }

    #[test]
    fn usage_errors_are_reported() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            parse(&["ferromq", "bench", "--count", "5", "--duration", "1s"]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            parse(&[
                "ferromq",
                "produce",
                "--destination",
                "queue://q",
                "--inflight",
                "0"
            ]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&[
                "ferromq",
                "consume",
                "--destination",
                "queue://q",
                "--timeout",
                "x"
            ]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        // Windows and sizes that would exhaust memory, and a bench that measures nothing.
        let invalid = [
            &["ferromq", "produce", "-d", "queue://q", "-w", "4294967295"][..],
            &["ferromq", "produce", "-d", "queue://q", "--size", "2GiB"],
            &["ferromq", "bench", "-w", "4294967295"],
            &["ferromq", "bench", "--producers", "0"],
        ];
        for args in invalid {
            assert_eq!(
                parse(args),
                Err(clap::error::ErrorKind::ValueValidation),
                "{args:?}"
            );
        }
        assert!(parse(&["ferromq", "bench", "--drain-only", "-c", "1"]).is_ok());
        assert!(parse(&["ferromq", "broker", "--config", "b.toml"]).is_ok());
    }
}
