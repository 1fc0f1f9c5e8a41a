//! ferromq's Windows build, run under Wine so that Linux CI exercises the code paths that
//! differ on Windows (positional I/O, file syncs that need a writable handle, no directory
//! sync, delete semantics that keep a removed name while a handle is open).
//!
//! [`wine_launcher`] builds `ferromq.exe` once per test process (cargo's `x86_64-pc-windows-gnu`
//! target, the MinGW linker), puts it in `target/windows-under-wine/` beside a stand-in for
//! `bcryptprimitives.dll` (`integration-tests/windows/bcryptprimitives.c`: Debian 12's Wine 8
//! lacks the DLL that Rust's standard library takes random numbers from on Windows 10 and
//! later), and prepares a Wine prefix there. `scripts/test-deps.sh` installs the target, MinGW
//! and Wine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::{run_with_timeout, workspace_root, Launcher};

const TARGET: &str = "x86_64-pc-windows-gnu";
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// Wine's loader: Debian's `wine64` package installs it outside `$PATH`.
fn wine() -> Result<PathBuf> {
    let packaged = Path::new("/usr/lib/wine/wine64");
    if packaged.is_file() {
        return Ok(packaged.to_path_buf());
    }
    for name in ["wine64", "wine"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if let Some(path) = found.filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("Wine is not installed (scripts/test-deps.sh installs Debian's wine64)")
}

/// Runs `command` to completion within `timeout`; fails with its output otherwise.
fn run(mut command: Command, what: &str, timeout: Duration) -> Result<()> {
    command.stdin(Stdio::null());
    let (status, stdout, stderr) = run_with_timeout(command, timeout)?;
    if !status.success() {
        bail!("{what} failed ({status}):\n{stdout}\n{stderr}");
    }
    Ok(())
}

/// Builds the Windows binary and the DLL stand-in, prepares the Wine prefix; returns how to
/// run `ferromq.exe` (add `broker --config ...`). Built once per test process.
pub fn wine_launcher() -> Result<Launcher> {
    static PREPARED: OnceLock<Result<Launcher, String>> = OnceLock::new();
    PREPARED
        .get_or_init(|| prepare().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn prepare() -> Result<Launcher> {
    let wine = wine()?;
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--bin", "ferromq", "--target", TARGET])
        .current_dir(&root);
    run(
        build,
        &format!("cargo build --target {TARGET} (rustup target add {TARGET}; MinGW's gcc)"),
        Duration::from_secs(900),
    )?;
    let exe = target.join(TARGET).join("debug").join("ferromq.exe");

    let home = target.join("windows-under-wine");
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(&exe, bin.join("ferromq.exe"))
        .with_context(|| format!("copying {}", exe.display()))?;
    let mut gcc = Command::new(MINGW_GCC);
    gcc.arg("-shared")
        .arg("-o")
        .arg(bin.join("bcryptprimitives.dll"))
        .arg(root.join("integration-tests/windows/bcryptprimitives.c"))
        .arg("-ladvapi32");
    run(gcc, MINGW_GCC, Duration::from_secs(120))?;

    let env = vec![
        (
            "WINEPREFIX".to_string(),
            home.join("prefix").into_os_string(),
        ),
        ("WINEDEBUG".to_string(), "-all".into()),
        ("WINEDLLOVERRIDES".to_string(), "mscoree,mshtml=".into()),
    ];
    // The first run of a new prefix sets it up (tens of seconds); do it before any deadline
    // of a test.
    let mut boot = Command::new(&wine);
    boot.arg("wineboot").arg("--init").env_remove("DISPLAY");
    for (key, value) in &env {
        boot.env(key, value);
    }
    run(boot, "wineboot --init", Duration::from_secs(300))?;
    Ok(Launcher {
        program: wine,
        args: vec![bin.join("ferromq.exe").into_os_string()],
        env,
    })
}
