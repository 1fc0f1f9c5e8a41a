//! Clients other than the raw test client: stomp.py (test 11) and the `ferromq` CLI.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use ferromq_integration_tests::{run_cli, run_with_timeout, workspace_root, BrokerProcess};

/// Whether `python3` with the `stomp` module is available. Outside CI a missing one skips the
/// test (with a message); under CI (`$CI` set) it fails it.
fn stomp_py_available(test: &str) -> Result<bool> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let problem = match Command::new("python3")
        .args(["-c", "import stomp"])
        .output()
    {
        Err(e) => format!("python3 cannot be run: {e}"),
        Ok(out) if !out.status.success() => format!(
            "python3 cannot import stomp (pip install stomp.py): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Ok(_) => return Ok(true),
    };
    if ci {
        bail!("{problem}; CI must have it");
    }
    eprintln!("SKIPPED {test}: {problem}");
    Ok(false)
}

/// Test 11: stomp.py sends 100 receipted persistent messages and consumes them with
/// client-individual acks (see `python/stomp_py_roundtrip.py`).
#[test]
fn stomp_py_client_round_trip() -> Result<()> {
    if !stomp_py_available("stomp_py_client_round_trip")? {
        return Ok(());
    }
    run_stomp_py("stomp_py_roundtrip.py")
}

/// Two stomp.py clients use `/temp-queue/replies` as `reply-to`; each gets exactly its own
/// replies (ActiveMQ's per-connection temporary queues; see `python/stomp_py_temp_queue.py`).
#[test]
fn stomp_py_temp_queue_replies_are_per_connection() -> Result<()> {
    if !stomp_py_available("stomp_py_temp_queue_replies_are_per_connection")? {
        return Ok(());
    }
    run_stomp_py("stomp_py_temp_queue.py")
}

/// stomp.py browses a queue with ActiveMQ's `browser:true` header: copies, then `browser:end`,
/// and the messages are still there for a consumer (see `python/stomp_py_browse.py`).
#[test]
fn stomp_py_browses_a_queue_without_consuming_it() -> Result<()> {
    if !stomp_py_available("stomp_py_browses_a_queue_without_consuming_it")? {
        return Ok(());
    }
    run_stomp_py("stomp_py_browse.py")
}

/// Runs `integration-tests/python/<script> HOST PORT` against a fresh broker; it must exit 0.
fn run_stomp_py(script: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let script = workspace_root()
        .join("integration-tests/python")
        .join(script);
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .arg(broker.addr().ip().to_string())
        .arg(broker.addr().port().to_string());
    let (status, stdout, stderr) = run_with_timeout(command, Duration::from_secs(120))?;
    eprintln!("stomp.py stdout:\n{stdout}\nstomp.py stderr:\n{stderr}");
    assert!(
        status.success(),
        "the stomp.py client failed ({status}): {stderr}"
    );
    Ok(())
}

/// The CLI as the README shows it: `ferromq produce` persistent messages, kill -9 the broker,
/// restart it, `ferromq consume` them all (exit 0); a further consume finds nothing and says
/// so with a non-zero exit.
#[test]
fn cli_produce_then_consume() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::start(dir.path(), "")?;
    let url = broker.url();
    let (status, stdout, stderr) = run_cli(
        &[
            "produce",
            "--url",
            &url,
            "--destination",
            "queue://orders",
            "--count",
            "100",
            "--size",
            "64",
            "--persistent",
        ],
        Duration::from_secs(60),
    )?;
    assert!(
        status.success(),
        "produce failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("confirmed 100"),
        "produce should report 100 confirmed sends: {stdout}"
    );

    broker.kill9();
    broker.restart()?;
    let url = broker.url();
    let (status, stdout, stderr) = run_cli(
        &[
            "consume",
            "--url",
            &url,
            "--destination",
            "queue://orders",
            "--count",
            "100",
            "--timeout",
            "10s",
            "--quiet",
        ],
        Duration::from_secs(60),
    )?;
    assert!(
        status.success(),
        "consume of 100 persistent messages after kill -9 failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.is_empty(), "--quiet printed bodies: {stdout}");

    let (status, _, stderr) = run_cli(
        &[
            "consume",
            "--url",
            &url,
            "--destination",
            "queue://orders",
            "--count",
            "1",
            "--timeout",
            "300ms",
            "--quiet",
        ],
        Duration::from_secs(60),
    )?;
    assert!(
        !status.success(),
        "consume of a message that is not there exited 0; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("received 0 of 1"),
        "consume should report what it got: {stderr}"
    );

    // Bodies: the message number, then 'x' up to --size; consume prints one per line.
    let (status, _, stderr) = run_cli(
        &[
            "produce",
            "--url",
            &url,
            "-d",
            "/queue/small",
            "-n",
            "3",
            "-s",
            "16",
        ],
        Duration::from_secs(60),
    )?;
    assert!(status.success(), "produce failed: {stderr}");
    let (status, stdout, stderr) = run_cli(
        &[
            "consume",
            "--url",
            &url,
            "-d",
            "/queue/small",
            "-n",
            "3",
            "-t",
            "10s",
            "--ack",
            "client",
        ],
        Duration::from_secs(60),
    )?;
    assert!(status.success(), "consume failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line per message: {stdout:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.len(), 16, "--size 16 body: {line:?}");
        assert!(line.starts_with(&format!("{} ", i + 1)), "body {line:?}");
    }
    Ok(())
}
