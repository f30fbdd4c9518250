//! The journal's line format (`<crc32 hex> <json>`), reading a journal file back, and the file
//! where corrupt lines are kept aside.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{JOURNAL_MODE, JournalError, Record, Replay};
use crate::model::job::JobId;

/// Where lines that failed their checksum (and a torn tail) are kept, with their line numbers,
/// before the journal is rewritten without them.
pub const CORRUPT_FILE: &str = "journal.corrupt";

/// A line kept aside: its number and raw bytes.
pub(super) type AsideLine = (usize, Vec<u8>);

/// Appends `(line number, raw bytes)` entries to `path` (root only) and syncs it.
pub(super) fn keep_aside(path: &Path, lines: &[AsideLine]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(JOURNAL_MODE)
        .open(path)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (n, raw) in lines {
        writeln!(
            f,
            "# line {n} of the journal, set aside at unix time {stamp}"
        )?;
        f.write_all(raw)?;
        f.write_all(b"\n")?;
    }
    f.sync_all()
}

impl Record {
    /// The job a record is about (`None` for the header).
    pub fn job(&self) -> Option<JobId> {
        match self {
            Self::Header { .. } => None,
            Self::Submitted { id, .. }
            | Self::Started { id, .. }
            | Self::Held { id, .. }
            | Self::Ended { id, .. }
            | Self::Accounted { id, .. } => Some(*id),
        }
    }
}

pub(super) fn encode(rec: &Record) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_vec(rec)?;
    let mut line = format!("{:08x} ", crc32(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

pub(super) fn decode(line: &[u8]) -> Result<Record, String> {
    if line.len() < 10 || line[8] != b' ' {
        return Err("no checksum prefix".into());
    }
    let want = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("bad checksum prefix")?;
    let body = &line[9..];
    if crc32(body) != want {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Calls `f(line number, line without its newline)` for every complete line of the file at
/// `path` (missing file: none); returns the bytes of a torn tail (a last line without newline).
pub(super) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> io::Result<()>,
) -> Result<Option<Vec<u8>>, JournalError> {
    let rerr = |source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Open {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let got = reader.read_until(b'\n', &mut line).map_err(rerr)?;
        if got == 0 {
            return Ok(None);
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            // Torn tail: the crash interrupted this write; it was never acknowledged.
            return Ok(Some(line));
        }
        line.pop();
        f(n, &line).map_err(rerr)?;
    }
}

/// Replays the journal at `path` (missing file: empty state).
pub fn read(path: &Path) -> Result<Replay, JournalError> {
    read_with_aside(path).map(|(r, _)| r)
}

/// Replays the journal and returns the lines to keep aside: corrupt ones and a torn tail.
pub(super) fn read_with_aside(path: &Path) -> Result<(Replay, Vec<AsideLine>), JournalError> {
    let mut replay = Replay::default();
    let mut aside = Vec::new();
    let mut lines = 0;
    let torn = for_each_line(path, |n, line| {
        lines = n;
        match decode(line) {
            Ok(rec) => replay.apply(rec),
            Err(why) => {
                replay.corrupt.push((n, why));
                aside.push((n, line.to_vec()));
            }
        }
        Ok(())
    })?;
    if let Some(t) = torn {
        aside.push((lines + 1, t));
    }
    Ok((replay, aside))
}

/// CRC-32 (IEEE), bitwise: records are small and this runs once per record.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
