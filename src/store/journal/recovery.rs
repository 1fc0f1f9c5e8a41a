//! Recovery at open: scans every segment file, keeps the longest valid prefix of the journal,
//! cuts a torn tail and the preallocated zeros of finished segments, and deletes segments
//! unreachable past a hole and tombstones that carry no information.
//!
//! A copy that cuts more than a batch of records after a corrupt frame (a cluster node's: the
//! only copy refuses to) is marked damaged first ([`DAMAGED_FILE`]), and stays so until
//! replication has refilled it.
//!
//! It must never interpret records beyond checking that their frames decode, nor cut the
//! records after a corrupt frame in the only copy of the journal, nor cut them in any copy
//! without marking it damaged.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::Path;

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use super::segment::{
    parse_segment_name, segment_file_name, segment_path, sync_directory, SEALED_FILE,
};
use super::{io_error, SegmentState, MAX_BATCH_BYTES, READ_CHUNK};
use crate::store::record::{
    check_frame, decode_frame, FrameError, Position, FRAME_HEADER_LEN, MAX_RECORD_LEN,
};
use crate::store::StoreError;

/// The file in the journal directory that says this copy lost records it held (see
/// `mark_damaged`); its text says what was cut.
pub const DAMAGED_FILE: &str = "journal.damaged";

/// Records, durably, that this journal lost records it held. Written before the cut, so that a
/// crash between the two leaves the mark rather than a shorter journal that looks whole.
fn mark_damaged(directory: &Path, description: &str) -> Result<(), StoreError> {
    let path = directory.join(DAMAGED_FILE);
    let mut previous = fs::read_to_string(&path).unwrap_or_default();
    previous.push_str(description);
    let file = File::create(&path).map_err(io_error("create", &path))?;
    (&file)
        .write_all(previous.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &path))?;
    sync_directory(directory)
}

pub(super) struct Recovery {
    /// Every remaining segment file, oldest first; the last is the current segment (`Live`).
    pub(super) segments: Vec<(u64, SegmentState)>,
    pub(super) end: u64,
}

/// Scans the segments, keeps the longest valid prefix of the journal and normalizes the files.
pub(super) fn recover(
    directory: &Path,
    fsync: bool,
    only_copy: bool,
) -> Result<Recovery, StoreError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(directory).map_err(io_error("list", directory))? {
        let entry = entry.map_err(io_error("list", directory))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(start) => files.push(start),
            None if name.ends_with(".log") => {
                warn!(file = %entry.path().display(), "ignoring a .log file that is not named like a journal segment (16 lower-case hex digits, at most 4000000000000000)")
            }
            None => {}
        }
    }
    files.sort_unstable();
    if files.is_empty() {
        let path = segment_path(directory, 0);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create segment", &path))?;
        if fsync {
            sync_directory(directory)?;
        }
        info!(directory = %directory.display(), "created a new journal");
        return Ok(Recovery {
            segments: vec![(0, SegmentState::Live)],
            end: 0,
        });
    }

    let sealed = directory.join(SEALED_FILE).exists();
    // (start, length, tombstone)
    let mut kept: Vec<(u64, u64, bool)> = Vec::new();
    let mut expected: Option<u64> = None;
    let mut recovered_frames = 0u64;
    for (i, &start) in files.iter().enumerate() {
        let path = segment_path(directory, start);
        let is_last = i + 1 == files.len();
        if let Some(expected) = expected {
            if start != expected {
                // A segment missing, or one cut short: what follows cannot be reached.
                let cause = format!(
                    "the segment starts at {start} but the previous one ends at {expected}: the \
                     records between are missing"
                );
                let later = valid_bytes_of(directory, &files[i..])?;
                // The previous segment ends there: what its refusal names.
                let previous = segment_path(directory, files[i - 1]);
                judge(&Damage {
                    directory,
                    only_copy,
                    sealed,
                    path: &previous,
                    position: expected,
                    cause: &cause,
                    same: 0,
                    later,
                })?;
                warn!(
                    file = %path.display(),
                    position = expected,
                    "journal segment starts at {start} but the previous one ends at {expected}: \
                     the journal ends at the gap"
                );
                delete_unreachable(directory, &files[i..], fsync)?;
                break;
            }
        }
        let scan = scan_segment(&path).map_err(io_error("read", &path))?;
        if scan.size == 0 && !is_last {
            kept.push((start, 0, true));
            expected = None;
            continue;
        }
        let mut problem = scan.problem;
        if problem.is_none() && !is_last && scan.valid_len < scan.size {
            if start + scan.valid_len == files[i + 1] {
                // A finished segment whose preallocated tail was not cut yet.
                cut_to(&path, scan.valid_len, fsync)?;
            } else {
                // Zeros where records should be (the next segment starts later): data lost
                // in the middle, treated as a corrupt frame. Only a zero-length file is a
                // tombstone. With fsync on, a segment is released only once its data is
                // durable and its cut to zero bytes is fsynced before the next batch counts
                // (a skipped range's tombstone is cut and fsynced with the batch after it),
                // so a released segment reads back as its records or as nothing, never as
                // zeros with records after them. Without fsync a power loss can undo that
                // cut and lose the data alike: a released segment and a lost live one then
                // look the same, and only cutting here (or refusing, for the only copy) is
                // safe.
                problem = Some(format!(
                    "zeros from byte {} on, where the records up to the next segment at {} \
                     should be: their data was lost",
                    scan.valid_len,
                    files[i + 1]
                ));
            }
        }
        recovered_frames += scan.frames;
        kept.push((start, scan.valid_len, false));
        expected = Some(start + scan.valid_len);
        if let Some(cause) = problem {
            let position = start + scan.valid_len;
            let same = valid_bytes_after(&path, scan.valid_len).map_err(io_error("read", &path))?;
            let later = valid_bytes_of(directory, &files[i + 1..])?;
            judge(&Damage {
                directory,
                only_copy,
                sealed,
                path: &path,
                position,
                cause: &cause,
                same,
                later,
            })?;
            warn!(
                file = %path.display(),
                position,
                "journal frame at position {position} is torn or corrupt ({cause}); truncating \
                 the segment there"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open for truncation", &path))?;
            file.set_len(scan.valid_len)
                .map_err(io_error("truncate", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            if !is_last {
                delete_unreachable(directory, &files[i + 1..], fsync)?;
            }
            break;
        }
    }

    normalize(directory, &mut kept)?;
    let &(last_start, last_len, _) = kept.last().expect("the last kept file is never removed");
    let end = last_start + last_len;
    let segments = kept
        .iter()
        .map(|&(start, _, tombstone)| {
            let state = if tombstone {
                SegmentState::Released
            } else {
                SegmentState::Live
            };
            (start, state)
        })
        .collect();
    info!(
        directory = %directory.display(),
        end,
        frames = recovered_frames,
        "journal recovered"
    );
    Ok(Recovery { segments, end })
}

/// Where recovery stops reading: a bad frame (or a gap between segments) at `position`,
/// with `same` bytes of valid records after it in its segment and `later` in later segments.
struct Damage<'a> {
    directory: &'a Path,
    only_copy: bool,
    sealed: bool,
    path: &'a Path,
    position: u64,
    cause: &'a str,
    same: u64,
    later: u64,
}

/// Whether the records after a bad frame may be a torn write, and so cut: only if they fit in
/// the batch that was being written (a torn batch can leave its later pages written and an
/// earlier one not, and a batch spanning a rotation can tear the end of one segment and leave
/// the start of the next written), and, in a journal whose finished segments were sealed
/// ([`SEALED_FILE`]), only in its last segment. Otherwise they were confirmed: the only copy
/// refuses to open ([`StoreError::CorruptBeforeRecords`]); another copy is marked damaged,
/// durably, before it cuts them.
fn judge(damage: &Damage<'_>) -> Result<(), StoreError> {
    let after = damage.same + damage.later;
    let torn = after <= MAX_BATCH_BYTES as u64 && !(damage.sealed && damage.later > 0);
    if torn {
        return Ok(());
    }
    let position = damage.position;
    let cause = damage.cause;
    if damage.only_copy {
        return Err(StoreError::CorruptBeforeRecords {
            path: damage.path.to_path_buf(),
            position: Position(position),
            cause: cause.to_owned(),
            after,
        });
    }
    // Another copy holds them: cut, but say (durably, before cutting) that this copy lost
    // records, until it has copied a master's journal again.
    let description = format!(
        "{after} bytes of records after a corrupt frame at position {position} in {} ({cause}) \
         were cut when the journal was recovered\n",
        damage.path.display()
    );
    mark_damaged(damage.directory, &description)?;
    error!(
        file = %damage.path.display(),
        position,
        after,
        "journal damaged: {after} bytes of records follow a corrupt frame at position \
         {position} ({cause}); cutting them, and marking this copy damaged (file \
         {DAMAGED_FILE}) until it has caught up with a master"
    );
    Ok(())
}

/// Bytes of valid records in the segments starting at `starts`.
fn valid_bytes_of(directory: &Path, starts: &[u64]) -> Result<u64, StoreError> {
    let mut bytes = 0;
    for &start in starts {
        let path = segment_path(directory, start);
        bytes += scan_segment(&path)
            .map_err(io_error("read", &path))?
            .valid_len;
    }
    Ok(bytes)
}

/// Deletes tombstones that carry no information (leading, or right after another tombstone),
/// and an empty last segment that directly follows a segment with data (so the current segment
/// always holds the last record, if there is one).
fn normalize(directory: &Path, kept: &mut Vec<(u64, u64, bool)>) -> Result<(), StoreError> {
    let mut index = 0;
    while index < kept.len() {
        let (start, _, tombstone) = kept[index];
        let redundant = tombstone && (index == 0 || kept[index - 1].2);
        if redundant {
            let path = segment_path(directory, start);
            debug!(file = %path.display(), "deleting a redundant tombstone");
            fs::remove_file(&path).map_err(io_error("delete", &path))?;
            kept.remove(index);
        } else {
            index += 1;
        }
    }
    if let [.., (previous_start, previous_len, false), (last_start, 0, false)] = kept[..] {
        if previous_start + previous_len == last_start {
            let path = segment_path(directory, last_start);
            fs::remove_file(&path).map_err(io_error("delete", &path))?;
            kept.pop();
        }
    }
    Ok(())
}

fn cut_to(path: &Path, len: u64, fsync: bool) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open for truncation", path))?;
    file.set_len(len).map_err(io_error("truncate", path))?;
    if fsync {
        file.sync_all().map_err(io_error("fsync", path))?;
    }
    Ok(())
}

fn delete_unreachable(directory: &Path, starts: &[u64], fsync: bool) -> Result<(), StoreError> {
    let names: Vec<String> = starts
        .iter()
        .map(|&s| segment_file_name(Position(s)))
        .collect();
    error!(
        directory = %directory.display(),
        "deleting journal segments unreachable past a hole: {}",
        names.join(", ")
    );
    for &start in starts {
        let path = segment_path(directory, start);
        fs::remove_file(&path).map_err(io_error("delete", &path))?;
    }
    if fsync {
        sync_directory(directory)?;
    }
    Ok(())
}

struct Scan {
    /// Size of the file.
    size: u64,
    /// Length of the valid frames (the data); zeros may follow up to `size`.
    valid_len: u64,
    frames: u64,
    /// Why the segment stops being valid at `valid_len` (before its end), if it does.
    problem: Option<String>,
}

/// Checks every frame of one segment file.
fn scan_segment(path: &Path) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut input = BufReader::with_capacity(READ_CHUNK, file);
    let mut offset = 0u64;
    let mut frames = 0;
    let problem = loop {
        let remaining = size - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < FRAME_HEADER_LEN as u64 {
            break Some(format!("torn frame header: {remaining} bytes"));
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        input.read_exact(&mut header)?;
        if header == [0u8; FRAME_HEADER_LEN] {
            // The end of the data in a preallocated segment: only zeros may follow.
            break first_non_zero(&mut input, remaining - FRAME_HEADER_LEN as u64)?.map(|at| {
                format!(
                    "zero frame header followed by non-zero bytes {} bytes later",
                    at + FRAME_HEADER_LEN as u64
                )
            });
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        if len > MAX_RECORD_LEN {
            break Some(FrameError::TooLarge(len, MAX_RECORD_LEN).to_string());
        }
        let frame_len = (FRAME_HEADER_LEN + len) as u64;
        if remaining < frame_len {
            break Some(format!(
                "torn frame: {len} body bytes declared, {} present",
                remaining - FRAME_HEADER_LEN as u64
            ));
        }
        let mut frame = vec![0u8; FRAME_HEADER_LEN + len];
        frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
        input.read_exact(&mut frame[FRAME_HEADER_LEN..])?;
        if let Err(e) = check_frame(&frame) {
            break Some(e.to_string());
        }
        if let Err(e) = decode_frame(Bytes::from(frame)) {
            break Some(e.to_string());
        }
        offset += frame_len;
        frames += 1;
    };
    Ok(Scan {
        size,
        valid_len: offset,
        frames,
        problem,
    })
}

/// Bytes of valid frames following the bad frame at `from` in the segment at `path`: the run
/// of consecutive frames that check, starting at the first offset after `from` where one does
/// (searched up to a batch and a record beyond it). A torn tail has no more than a batch after
/// it; zeros (a preallocated tail) have none.
fn valid_bytes_after(path: &Path, from: u64) -> std::io::Result<u64> {
    let bytes = fs::read(path)?;
    let Ok(from) = usize::try_from(from) else {
        return Ok(0);
    };
    let length_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .filter(|&len| len > 0 && len <= MAX_RECORD_LEN)
    };
    let chain = |at: usize| {
        let mut end = at;
        while let Some(Ok(Some(len))) = bytes.get(end..).map(check_frame) {
            end += len;
        }
        (end - at) as u64
    };
    // Most often the bad frame's length is intact (a damaged body): its successor starts
    // where it says it ends.
    if let Some(declared) = length_at(from) {
        let after = chain(from + FRAME_HEADER_LEN + declared);
        if after > 0 {
            return Ok(after);
        }
    }
    let search_end = bytes
        .len()
        .min(from.saturating_add(1 + MAX_BATCH_BYTES + MAX_RECORD_LEN));
    // Checksums computed over candidates, bounded: garbage whose length field happens to fit
    // would otherwise cost a checksum of up to a whole segment at each offset.
    let mut budget = 4 * MAX_RECORD_LEN;
    for at in from + 1..search_end {
        let Some(len) = length_at(at) else { continue };
        if at + FRAME_HEADER_LEN + len > bytes.len() {
            continue;
        }
        if budget < len {
            break;
        }
        budget -= len;
        if let Ok(Some(_)) = check_frame(&bytes[at..]) {
            return Ok(chain(at));
        }
    }
    Ok(0)
}

/// Length of the data (valid frames) in a segment file, preallocated tail excluded (tests).
#[cfg(test)]
pub(crate) fn data_len(path: &Path) -> u64 {
    scan_segment(path).unwrap().valid_len
}

/// [`data_len`] of a segment file a directory listing named, or `None` if it is gone by now
/// (the writer thread deletes released segments while tests look: tests).
#[cfg(test)]
pub(crate) fn listed_data_len(path: &Path) -> Option<u64> {
    match scan_segment(path) {
        Ok(scan) => Some(scan.valid_len),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("scanning {}: {e}", path.display()),
    }
}

/// The offset of the first non-zero byte among the next `n` bytes of `input`, if any.
fn first_non_zero(input: &mut impl Read, n: u64) -> std::io::Result<Option<u64>> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut at = 0u64;
    while at < n {
        let len = (n - at).min(chunk.len() as u64) as usize;
        input.read_exact(&mut chunk[..len])?;
        if let Some(i) = chunk[..len].iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += len as u64;
    }
    Ok(None)
}
