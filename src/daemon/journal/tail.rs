//! Reading the journal's bytes back, and making a torn file whole before anything is appended.
//!
//! Every record is written as one line (`…}\n`) and synced before the migration it announces
//! starts, so bytes after the last newline are a write that never completed: the record never
//! counted. Left in place, the next record would be appended right after them, and the merged
//! line would hide that record (an open migration forgotten, the VM migrated twice) or, once
//! more records follow, stop every later start. So the torn bytes are cut here, at open, and
//! kept in `<journal>.corrupt` (appended to, never overwritten) for the operator.
//!
//! Also cut: an unparseable last line, and — in lines written by versions without this repair —
//! torn bytes with a whole record glued after them (the record is kept). Any other unparseable
//! line is corruption this module does not guess about: an error naming the file and line.
//!
//! Must not: drop a whole record, or write anything but the cut (and, for glued lines, the
//! journal rewritten with its whole records in their order).

use super::{JournalError, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Torn bytes cut from the journal when it was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Where the torn bytes started in the file as found.
    pub offset: u64,
    pub length: u64,
}

/// What the journal's bytes hold.
pub(super) struct Scan {
    /// Whole records, in file order.
    pub records: Vec<Record>,
    /// Torn fragments: their offset in the file and their bytes.
    pub torn: Vec<(u64, Vec<u8>)>,
    /// How to make the file whole again, if it is not.
    pub fix: Fix,
}

pub(super) enum Fix {
    None,
    /// Everything from this offset on is torn.
    Truncate(u64),
    /// Torn bytes sit before whole records: write these lines instead.
    Rewrite(Vec<u8>),
}

/// How a record starts as serialized (the tag comes first): where a glued record is looked for.
const RECORD_START: &[u8] = b"{\"record\":";

/// Parses `bytes` (the whole file). `path` names the file in errors.
pub(super) fn scan(path: &str, bytes: &[u8]) -> Result<Scan, JournalError> {
    let mut records = Vec::new();
    let mut torn = Vec::new();
    // Whole lines, as written back if a rewrite is needed.
    let mut kept = Vec::with_capacity(bytes.len());
    // End of the whole lines before the first torn fragment.
    let mut clean_end = 0u64;
    let mut rewrite = false;
    let mut start = 0usize;
    let mut number = 0usize;
    while start < bytes.len() {
        number += 1;
        let newline = bytes[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|n| start + n);
        let end = newline.unwrap_or(bytes.len());
        let after = newline.map_or(bytes.len(), |n| n + 1);
        let line = &bytes[start..end];
        let last = after >= bytes.len();
        let whole = match newline {
            // A line without its newline is a write that did not complete, even if it parses.
            None => None,
            Some(_) if line.iter().all(u8::is_ascii_whitespace) => Some(None),
            Some(_) => match serde_json::from_slice::<Record>(line) {
                Ok(r) => Some(Some(r)),
                Err(e) => match glued(line) {
                    Some((at, r)) => {
                        torn.push((start as u64, line[..at].to_vec()));
                        records.push(r);
                        kept.extend_from_slice(&line[at..]);
                        kept.push(b'\n');
                        rewrite = true;
                        start = after;
                        continue;
                    }
                    None if last => None,
                    None => {
                        return Err(JournalError::Corrupt {
                            path: path.to_string(),
                            line: number,
                            source: e,
                        });
                    }
                },
            },
        };
        match whole {
            Some(record) => {
                records.extend(record);
                kept.extend_from_slice(&bytes[start..after]);
                if torn.is_empty() {
                    clean_end = after as u64;
                } else {
                    rewrite = true;
                }
            }
            None => torn.push((start as u64, bytes[start..].to_vec())),
        }
        start = after;
    }
    let fix = if rewrite {
        Fix::Rewrite(kept)
    } else if !torn.is_empty() {
        Fix::Truncate(clean_end)
    } else {
        Fix::None
    };
    Ok(Scan { records, torn, fix })
}

/// A whole record glued after torn bytes in `line`: where it starts, and the record.
fn glued(line: &[u8]) -> Option<(usize, Record)> {
    let mut at = line.len();
    while let Some(p) = line[..at]
        .windows(RECORD_START.len())
        .rposition(|w| w == RECORD_START)
    {
        if p == 0 {
            return None;
        }
        if let Ok(r) = serde_json::from_slice::<Record>(&line[p..]) {
            return Some((p, r));
        }
        at = p;
    }
    None
}

/// `<journal>.corrupt`, beside the journal.
pub fn corrupt_path(journal: &Path) -> PathBuf {
    let mut name = journal
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".corrupt");
    journal.with_file_name(name)
}

/// Keeps the torn bytes, then makes the journal whole; logs and returns what was cut. The
/// bytes are on disk in `.corrupt` before the journal loses them.
pub(super) fn repair(path: &Path, scan: &Scan) -> Result<Vec<Repair>, JournalError> {
    if scan.torn.is_empty() {
        return Ok(Vec::new());
    }
    let io = |doing| JournalError::io(path, doing);
    let corrupt = corrupt_path(path);
    {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&corrupt)
            .map_err(io("cannot open the .corrupt file"))?;
        for (_, bytes) in &scan.torn {
            // One fragment per line, so fragments of successive repairs stay apart.
            f.write_all(bytes)
                .and_then(|_| f.write_all(b"\n"))
                .map_err(io("cannot keep torn bytes in the .corrupt file"))?;
        }
        f.sync_all()
            .map_err(io("cannot keep torn bytes in the .corrupt file"))?;
    }
    match &scan.fix {
        Fix::None => {}
        Fix::Truncate(at) => {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("cannot open to cut the torn tail"))?;
            f.set_len(*at)
                .and_then(|_| f.sync_all())
                .map_err(io("cannot cut the torn tail"))?;
        }
        Fix::Rewrite(lines) => {
            let tmp = path.with_extension("repair");
            let write = || -> std::io::Result<()> {
                let mut f = File::create(&tmp)?;
                f.write_all(lines)?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write().map_err(io("cannot rewrite the journal without its torn bytes"))?;
        }
    }
    let repairs: Vec<Repair> = scan
        .torn
        .iter()
        .map(|(offset, bytes)| Repair {
            offset: *offset,
            length: bytes.len() as u64,
        })
        .collect();
    for r in &repairs {
        tracing::warn!(
            journal = %path.display(),
            offset = r.offset,
            length = r.length,
            kept_in = %corrupt.display(),
            "journal: torn record cut (a write the last run did not finish)"
        );
    }
    Ok(repairs)
}
