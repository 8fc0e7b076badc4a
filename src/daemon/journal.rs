//! The journal of migrations: every migration is written (and synced) to disk before it starts and
//! closed when it ends, so that after a crash the daemon knows which migrations may still be in
//! flight, reconciles each with the hypervisor, and never starts a second migration of a VM whose
//! first one has not been accounted for.
//!
//! Format: one JSON object per line, append-only. A torn last line (crash mid-write) is ignored;
//! a corrupt line elsewhere is an error naming the file and line. The file is compacted (rewritten
//! with only the open entries) when it grows. This module does no hypervisor calls itself:
//! [`reconcile`] maps what the hypervisor says to an outcome, the daemon does the asking.

use crate::hypervisor::VmState;
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Compact when the file holds this many closed records.
const COMPACT_AFTER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// `doing` says which step failed ("cannot read", "cannot write journal record", …).
    #[error("{path}: {doing}: {source}")]
    Io {
        path: String,
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: corrupt journal record ({source}); move the file aside to start afresh"
    )]
    Corrupt {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("journal entry {0} is not open")]
    NotOpen(u64),
}

/// A migration as recorded before it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub vm: VmId,
    /// Source host name (this host when written).
    pub from: String,
    pub to: String,
    /// Token epoch and sequence under which the migration was decided.
    pub epoch: u64,
    pub seq: u64,
    /// Wall-clock start, milliseconds since the Unix epoch (for operators; never compared).
    pub started_unix_ms: u64,
}

/// How a migration ended, as its journal entry closes (`outcome` in the file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Succeeded,
    Failed {
        reason: String,
    },
    Aborted {
        reason: String,
    },
    /// After a restart, the hypervisor showed the VM gone from here: it reached the destination.
    ReconciledCompleted,
    /// After a restart, the VM still ran here with no job: the migration did not happen.
    ReconciledFailed,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Record {
    Begin(Entry),
    End { id: u64, outcome: Ending },
}

/// What to do about an entry left open by a crash, given the VM's state on this host now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The VM is no longer here: it completed; close with `ReconciledCompleted` and announce it.
    Completed,
    /// The VM runs here with no job: nothing moved; close with `ReconciledFailed`.
    Failed,
    /// A job is still running (libvirt survives our crash): leave the entry open, treat the VM as
    /// busy, ask again later. Never start another migration of it meanwhile.
    StillRunning,
}

pub fn reconcile(state: VmState) -> Reconciled {
    match state {
        VmState::Absent => Reconciled::Completed,
        VmState::Running => Reconciled::Failed,
        VmState::Migrating => Reconciled::StillRunning,
    }
}

/// The last migration of `vm` the journal file at `path` holds, and how it ended (`None`: still
/// open). Reads the file without opening it for append: for a log line about that VM (zombies),
/// not for settling. Unreadable lines are skipped; a missing file holds nothing.
pub fn last_of(path: &Path, vm: VmId) -> Result<Option<(Entry, Option<Ending>)>, JournalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.display().to_string(),
                doing: "cannot read",
                source,
            });
        }
    };
    let mut last: Option<(Entry, Option<Ending>)> = None;
    for rec in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
    {
        match rec {
            Record::Begin(e) if e.vm == vm => last = Some((e, None)),
            Record::End { id, outcome } => {
                if let Some((e, how)) = last.as_mut()
                    && e.id == id
                {
                    *how = Some(outcome);
                }
            }
            Record::Begin(_) => {}
        }
    }
    Ok(last)
}

/// An open journal file.
pub struct Journal {
    path: PathBuf,
    file: File,
    open: BTreeMap<u64, Entry>,
    next_id: u64,
    closed_records: usize,
}

impl Journal {
    /// Opens (or creates) the journal and returns it with the entries a previous run left open.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Entry>), JournalError> {
        let p = path.display().to_string();
        let io = |doing: &'static str| {
            let path = p.clone();
            move |source| JournalError::Io {
                path,
                doing,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("cannot create directory"))?;
        }
        let mut open = BTreeMap::new();
        let mut next_id = 1;
        let mut closed_records = 0;
        if path.exists() {
            let f = File::open(path).map_err(io("cannot read"))?;
            let lines: Vec<String> = BufReader::new(f)
                .lines()
                .collect::<Result<_, _>>()
                .map_err(io("cannot read"))?;
            let n = lines.len();
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let rec: Record = match serde_json::from_str(line) {
                    Ok(r) => r,
                    // A torn final line is what a crash mid-append leaves: the record never
                    // counted, because a migration starts only after its Begin is synced.
                    Err(_) if i + 1 == n => break,
                    Err(e) => {
                        return Err(JournalError::Corrupt {
                            path: p,
                            line: i + 1,
                            source: e,
                        });
                    }
                };
                match rec {
                    Record::Begin(e) => {
                        next_id = next_id.max(e.id + 1);
                        open.insert(e.id, e);
                    }
                    Record::End { id, .. } => {
                        next_id = next_id.max(id + 1);
                        open.remove(&id);
                        closed_records += 2;
                    }
                }
            }
        }
        let leftover: Vec<Entry> = open.values().cloned().collect();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("cannot open for append"))?;
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            open,
            next_id,
            closed_records,
        };
        if j.closed_records >= COMPACT_AFTER {
            j.compact()?;
        }
        Ok((j, leftover))
    }

    /// Records a migration about to start; returns once the record is on disk.
    pub fn begin(
        &mut self,
        vm: VmId,
        from: &str,
        to: &str,
        epoch: u64,
        seq: u64,
        started_unix_ms: u64,
    ) -> Result<Entry, JournalError> {
        let entry = Entry {
            id: self.next_id,
            vm,
            from: from.to_string(),
            to: to.to_string(),
            epoch,
            seq,
            started_unix_ms,
        };
        self.append(&Record::Begin(entry.clone()))?;
        self.next_id += 1;
        self.open.insert(entry.id, entry.clone());
        Ok(entry)
    }

    /// Closes a migration with its outcome.
    pub fn end(&mut self, id: u64, outcome: Ending) -> Result<(), JournalError> {
        if !self.open.contains_key(&id) {
            return Err(JournalError::NotOpen(id));
        }
        self.append(&Record::End { id, outcome })?;
        self.open.remove(&id);
        self.closed_records += 2;
        if self.closed_records >= COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    /// Migrations started and not yet closed.
    pub fn open_entries(&self) -> impl Iterator<Item = &Entry> {
        self.open.values()
    }

    /// Whether `vm` has an open migration (so it must not be migrated again).
    pub fn is_open(&self, vm: VmId) -> bool {
        self.open.values().any(|e| e.vm == vm)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, rec: &Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(rec).expect("journal records serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|source| JournalError::Io {
                path: self.path.display().to_string(),
                doing: "cannot write journal record",
                source,
            })
    }

    /// Rewrites the file with only the open entries (write beside, sync, rename).
    fn compact(&mut self) -> Result<(), JournalError> {
        let p = self.path.display().to_string();
        let tmp = self.path.with_extension("compact");
        let write = || -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            for e in self.open.values() {
                let mut line = serde_json::to_string(&Record::Begin(e.clone()))?;
                line.push('\n');
                f.write_all(line.as_bytes())?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            OpenOptions::new().append(true).open(&self.path)
        };
        self.file = write().map_err(|source| JournalError::Io {
            path: p,
            doing: "cannot compact journal",
            source,
        })?;
        self.closed_records = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_entries_survive_a_restart_and_closed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, left) = Journal::open(&path).unwrap();
        assert!(left.is_empty());
        let a = j.begin(VmId(1), "hv1", "hv2", 7, 3, 1000).unwrap();
        let b = j.begin(VmId(2), "hv1", "hv3", 7, 4, 2000).unwrap();
        assert_ne!(a.id, b.id);
        j.end(a.id, Ending::Succeeded).unwrap();
        assert!(j.is_open(VmId(2)) && !j.is_open(VmId(1)));
        assert!(matches!(
            j.end(a.id, Ending::Succeeded),
            Err(JournalError::NotOpen(_))
        ));
        drop(j);

        let (j, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![b.clone()]);
        assert!(j.is_open(VmId(2)));
        drop(j);

        // A torn final line (crash mid-append) is ignored; ids keep increasing.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"record\":\"begin\",\"id\":9").unwrap();
        drop(f);
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left.len(), 1);
        let c = j.begin(VmId(3), "hv1", "hv4", 8, 1, 3000).unwrap();
        assert!(c.id > b.id);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        std::fs::write(
            &path,
            "garbage\n{\"record\":\"end\",\"id\":1,\"outcome\":\"succeeded\"}\n",
        )
        .unwrap();
        match Journal::open(&path) {
            Err(JournalError::Corrupt { line, .. }) => assert_eq!(line, 1),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("corrupt journal accepted"),
        }
    }

    #[test]
    fn compaction_keeps_only_open_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        let keep = j.begin(VmId(99), "a", "b", 1, 0, 0).unwrap();
        for i in 0..(COMPACT_AFTER as u32) {
            let e = j.begin(VmId(i), "a", "b", 1, i as u64, 0).unwrap();
            j.end(
                e.id,
                Ending::Failed {
                    reason: "test".into(),
                },
            )
            .unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 10, "compacted file has {lines} lines");
        drop(j);
        let (_, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![keep]);
    }

    #[test]
    fn reconciliation_rules() {
        assert_eq!(reconcile(VmState::Absent), Reconciled::Completed);
        assert_eq!(reconcile(VmState::Running), Reconciled::Failed);
        assert_eq!(reconcile(VmState::Migrating), Reconciled::StillRunning);
    }

    #[test]
    fn the_last_migration_of_a_vm_is_found_with_its_ending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        assert_eq!(last_of(&path, VmId(1)).unwrap(), None);
        let (mut j, _) = Journal::open(&path).unwrap();
        let a = j.begin(VmId(1), "hv1", "hv2", 7, 3, 1000).unwrap();
        j.end(a.id, Ending::Succeeded).unwrap();
        let b = j.begin(VmId(1), "hv1", "hv3", 7, 5, 2000).unwrap();
        let other = j.begin(VmId(2), "hv1", "hv3", 7, 6, 2000).unwrap();
        j.end(other.id, Ending::Succeeded).unwrap();
        assert_eq!(last_of(&path, VmId(1)).unwrap(), Some((b.clone(), None)));
        let failed = Ending::Failed {
            reason: "virDomainMigrate3".into(),
        };
        j.end(b.id, failed.clone()).unwrap();
        assert_eq!(last_of(&path, VmId(1)).unwrap(), Some((b, Some(failed))));
        assert_eq!(last_of(&path, VmId(3)).unwrap(), None);
    }
}
