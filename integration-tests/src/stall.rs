//! A disk that stalls, for the tests of `store.stall_timeout`: a shim preloaded into the broker
//! (`LD_PRELOAD`) makes its `fsync` and `fdatasync` calls wait while a file named
//! [`STALL_FILE`] exists in its working directory (the broker's own directory), as they would on
//! a dead SAN path or a hung NFS mount, while the process, its ZooKeeper session and its
//! sockets stay up. The shim is compiled with the system's C compiler (the one Rust links
//! with) once per test process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{ferromq_bin, Launcher};

/// While a file of this name exists in a broker's directory, its fsyncs wait.
pub const STALL_FILE: &str = "STALL_DISK";

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

static void wait_while_stalled(void) {
    while (access("STALL_DISK", F_OK) == 0) {
        usleep(10000);
    }
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_while_stalled();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_while_stalled();
    return real(fd);
}
"#;

/// The compiled shim (panics naming the compiler's error if it cannot be built).
pub fn shim() -> &'static Path {
    static SHIM_PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &SHIM_PATH
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("ferromq-stall-shim-")
                .tempdir()
                .expect("a directory for the stall shim");
            let source = dir.path().join("stall.c");
            let library = dir.path().join("stall.so");
            std::fs::write(&source, SHIM).expect("writing the stall shim's source");
            let compiler = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
            let output = Command::new(&compiler)
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&library)
                .arg(&source)
                .arg("-ldl")
                .output()
                .unwrap_or_else(|e| panic!("running {compiler:?} for the stall shim: {e}"));
            assert!(
                output.status.success(),
                "compiling the stall shim failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            (dir, library)
        })
        .1
}

/// Runs `ferromq` with the shim preloaded and `store.stall_timeout` set to `stall_timeout`
/// (through the environment, so that the caller's TOML stays its own).
pub fn launcher(stall_timeout: &str) -> Launcher {
    Launcher {
        program: ferromq_bin().to_path_buf(),
        args: Vec::new(),
        env: vec![
            ("LD_PRELOAD".into(), OsString::from(shim())),
            (
                "FERROMQ_STORE__STALL_TIMEOUT".into(),
                OsString::from(stall_timeout),
            ),
        ],
    }
}

/// Stalls (`true`) or releases the disk of the broker whose directory is `dir`.
pub fn set_stalled(dir: &Path, stalled: bool) {
    let file = dir.join(STALL_FILE);
    if stalled {
        std::fs::write(&file, b"").expect("creating the stall file");
    } else {
        std::fs::remove_file(&file).expect("removing the stall file");
    }
}
