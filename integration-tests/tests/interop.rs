//! Clients that are not this crate's raw client: stomp.py (test 11) and the `ferromq` CLI.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use ferromq_integration_tests::{run_with_timeout, workspace_root, BrokerProcess};

/// Whether `python3` with the `stomp` module is available. Outside CI a missing one skips the
/// test (with a message); under CI (`$CI` set) it fails it.
fn stomp_py_available() -> Result<bool> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let problem = match Command::new("python3")
        .args(["-c", "import stomp"])
        .output()
    {
        Err(e) => format!("python3 cannot be run: {e}"),
        Ok(out) if !out.status.success() => format!(
            "python3 cannot import stomp (pip install stomp.py): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => return Ok(true),
    };
    if ci {
        bail!("{problem}; CI must have it");
    }
    eprintln!("SKIPPED stomp_py_client_round_trip: {problem}");
    Ok(false)
}

/// Test 11: stomp.py sends 100 receipted persistent messages and consumes them with
/// client-individual acks (see `python/stomp_py_roundtrip.py`).
#[test]
fn stomp_py_client_round_trip() -> Result<()> {
    if !stomp_py_available()? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let broker = BrokerProcess::start(dir.path(), "")?;
    let script = workspace_root().join("integration-tests/python/stomp_py_roundtrip.py");
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
