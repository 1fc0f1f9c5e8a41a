//! Making files and directory entries durable, the same way on Unix and Windows.
//!
//! Owns nothing; must never be skipped where the store's rules call for an fsync. On Windows
//! `FlushFileBuffers` needs a handle opened for writing, and a directory cannot be opened as a
//! file at all (NTFS journals its own metadata), so a directory sync is a no-op there.

#[cfg(unix)]
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Flushes the file at `path` (data and metadata) to the disk.
pub(crate) fn sync_file(path: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.sync_all()
}

/// Makes the entries of `directory` (files created, renamed or deleted in it) durable.
pub(crate) fn sync_directory(directory: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return File::open(directory)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = directory;
        Ok(())
    }
}
