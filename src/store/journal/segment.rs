//! Segment files on disk: their names, preallocation with written zeros, the spare segment
//! (`next-segment.tmp`) prepared ahead on its own thread, fsyncs of segments and of the
//! directory, and `pread`/`pwrite` for Windows.
//!
//! It must never open the spare over an existing file (where a deleted name lingers, it can
//! still name the current segment), nor read or interpret what a segment holds.

use std::fs::{self, File, OpenOptions};
#[cfg(unix)]
pub(super) use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use tracing::warn;

#[cfg(windows)]
pub(super) use windows_io::FileExt;

use super::{io_error, WriteClock};
use crate::store::record::Position;
use crate::store::StoreError;
/// The file name of the segment starting at `start`.
pub fn segment_file_name(start: Position) -> String {
    format!("{:016x}.log", start.0)
}

pub(super) fn segment_path(directory: &Path, start: u64) -> PathBuf {
    directory.join(segment_file_name(Position(start)))
}

/// No journal reaches this far (4 EiB written); a segment name past it was not written by a
/// journal, and position arithmetic on it could overflow.
const MAX_SEGMENT_START: u64 = 1 << 62;

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .filter(|&start| start <= MAX_SEGMENT_START)
}

/// Extends `file` to `len` bytes of written zeros (never shrinks it). Zeros are written, not
/// `fallocate`d: overwriting an unwritten extent makes every later `fdatasync` update extent
/// metadata too, which costs a third more per fsync on ext4 (see the journal's module docs).
/// Each 256 KiB written moves `clock` on: the disk is answering (a large `log_size` on a slow
/// disk takes a while once the page cache throttles the writes).
pub(super) fn preallocate(
    file: &File,
    len: u64,
    path: &Path,
    clock: &WriteClock,
) -> Result<(), StoreError> {
    let size = file.metadata().map_err(io_error("stat", path))?.len();
    static ZEROS: [u8; 256 << 10] = [0; 256 << 10];
    let mut at = size;
    while at < len {
        let n = (len - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)
            .map_err(io_error("preallocate", path))?;
        at += n as u64;
        clock.progressed();
    }
    Ok(())
}

/// The file the next segment is prepared in (see the journal's module docs); never read by
/// recovery.
pub(super) const SPARE_FILE: &str = "next-segment.tmp";

/// Prepares the next segment on its own thread: `SPARE_FILE`, `len` bytes of zeros, fsynced
/// when `fsync` is on. The writer links it into place at rotation.
/// `None` when no thread could be started: the writer then prepares the segment at rotation.
pub(super) fn prepare_spare(
    directory: &Path,
    len: u64,
    fsync: bool,
    clock: WriteClock,
) -> Option<JoinHandle<Result<File, StoreError>>> {
    let path = directory.join(SPARE_FILE);
    let prepare = move || {
        // Never an existing file: where a deleted name lingers while a handle is open (Windows
        // without POSIX delete semantics, Wine), `SPARE_FILE` can still name the current
        // segment, linked into place at the last rotation; truncating it would wipe that
        // segment. The writer then creates the segment itself at rotation.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        // A writer waiting for it at rotation sees the disk answer as it is written.
        preallocate(&file, len, &path, &clock)?;
        if fsync {
            file.sync_data().map_err(io_error("fsync", &path))?;
        }
        Ok(file)
    };
    std::thread::Builder::new()
        .name("ferromq-journal-prealloc".into())
        .spawn(prepare)
        .inspect_err(|e| warn!("could not start the segment preparation thread: {e}"))
        .ok()
}

/// Makes the directory's entries (new, renamed and deleted segments) durable.
pub(super) fn sync_directory(directory: &Path) -> Result<(), StoreError> {
    crate::store::sync::sync_directory(directory).map_err(io_error("fsync directory", directory))
}

/// Syncs every segment in `starts` and the directory: segments written while fsync was off
/// (a slave under `local_disk`) may be only in the page cache, and once fsync is on their
/// bytes count as durable.
/// The file in the journal directory that says every finished segment was sealed: fsynced
/// before a byte of the next one was written (the journal runs with fsync on, and ran so since
/// this file was made). A power loss then tears only the last segment, and recovery reads a
/// bad frame in an earlier one, or a gap between segments, as damage whatever follows it.
pub const SEALED_FILE: &str = "journal.sealed";

/// Makes (`on`, after every retained segment is synced) or removes (before anything is written
/// without fsync) [`SEALED_FILE`], durably.
pub(super) fn set_sealed(directory: &Path, on: bool) -> Result<(), StoreError> {
    let path = directory.join(SEALED_FILE);
    let present = path.exists();
    if on && !present {
        let file = File::create(&path).map_err(io_error("create", &path))?;
        file.sync_all().map_err(io_error("fsync", &path))?;
    } else if !on && present {
        fs::remove_file(&path).map_err(io_error("delete", &path))?;
    } else {
        return Ok(());
    }
    sync_directory(directory)
}

/// Fsyncs the segments at `starts` (calling `synced` after each), then the directory.
pub(super) fn sync_segments(
    directory: &Path,
    starts: impl IntoIterator<Item = u64>,
    mut synced: impl FnMut(),
) -> Result<(), StoreError> {
    for start in starts {
        let path = segment_path(directory, start);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error("open to fsync", &path))?;
        file.sync_data().map_err(io_error("fsync", &path))?;
        synced();
    }
    sync_directory(directory)
}

/// `pread`/`pwrite` for Windows, as `std::os::unix::fs::FileExt` names them: `seek_read` and
/// `seek_write` also move the handle's cursor, which the journal never uses.
#[cfg(windows)]
mod windows_io {
    use std::fs::File;
    use std::io::{Error, ErrorKind, Result};
    use std::os::windows::fs::FileExt as _;

    pub trait FileExt {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()>;
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    }

    impl FileExt for File {
        fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> Result<()> {
            while !buf.is_empty() {
                match self.seek_write(buf, offset) {
                    Ok(0) => return Err(Error::new(ErrorKind::WriteZero, "wrote nothing")),
                    Ok(n) => {
                        buf = &buf[n..];
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }

        fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> Result<()> {
            while !buf.is_empty() {
                match self.seek_read(buf, offset) {
                    Ok(0) => return Err(Error::new(ErrorKind::UnexpectedEof, "end of file")),
                    Ok(n) => {
                        buf = &mut buf[n..];
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}
