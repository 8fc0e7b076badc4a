//! The journal of migrations: every migration is written (and synced) to disk before it starts and
//! closed when it ends, so that after a crash the daemon knows which migrations may still be in
//! flight, reconciles each with the hypervisor, and never starts a second migration of a VM whose
//! first one has not been accounted for.
//!
//! Format: one JSON object per line, append-only. A torn tail (crash mid-write) is cut at open,
//! before anything is appended, and kept in `<journal>.corrupt` ([`tail`]); a corrupt line
//! elsewhere is an error naming the file and line. The file is compacted (rewritten with only the
//! open entries) when it grows. This module does no hypervisor calls itself:
//! [`reconcile`] maps what the hypervisor says to an outcome, the daemon does the asking.

use crate::hypervisor::VmState;
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

mod tail;

pub use tail::{Repair, corrupt_path};

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

impl JournalError {
    /// Turns the I/O error of step `doing` on the file at `path` into a journal error.
    fn io(path: &Path, doing: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| JournalError::Io {
            path,
            doing,
            source,
        }
    }
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
    /// What the migration forecast predicted for it (none without a forecast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Figures>,
}

/// One migration's figures: predicted when it starts (`Entry::predicted`), reported by the
/// hypervisor when it ends (the `actual` of its closing record), so the journal holds both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// `pre_copy`, `pre_copy_auto_converge` or `post_copy` (`crate::forecast::Mode::name`);
    /// reported: `post_copy` when the job switched to post-copy, else how it was started.
    pub mode: String,
    pub bytes: u64,
    pub time_ms: u64,
    pub downtime_ms: u64,
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
    End {
        id: u64,
        outcome: Ending,
        /// What the hypervisor reported of a migration that went through.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actual: Option<Figures>,
    },
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
        Err(source) => return Err(JournalError::io(path, "cannot read")(source)),
    };
    let mut last: Option<(Entry, Option<Ending>)> = None;
    for rec in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
    {
        match rec {
            Record::Begin(e) if e.vm == vm => last = Some((e, None)),
            Record::End { id, outcome, .. } => {
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
    /// Torn bytes cut when this journal was opened.
    repairs: Vec<Repair>,
}

impl Journal {
    /// Opens (or creates) the journal and returns it with the entries a previous run left open.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Entry>), JournalError> {
        let io = |doing| JournalError::io(path, doing);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("cannot create directory"))?;
        }
        let mut open = BTreeMap::new();
        let mut next_id = 1;
        let mut closed_records = 0;
        let mut repairs = Vec::new();
        if path.exists() {
            let bytes = std::fs::read(path).map_err(io("cannot read"))?;
            let scan = tail::scan(&path.display().to_string(), &bytes)?;
            // Cut before the file is opened for append: the next record must start a line.
            repairs = tail::repair(path, &scan)?;
            for rec in scan.records {
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
            repairs,
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
        self.begin_predicted(vm, (from, to), (epoch, seq), started_unix_ms, None)
    }

    /// [`Journal::begin`], with what the forecast predicted of the migration.
    pub fn begin_predicted(
        &mut self,
        vm: VmId,
        (from, to): (&str, &str),
        (epoch, seq): (u64, u64),
        started_unix_ms: u64,
        predicted: Option<Figures>,
    ) -> Result<Entry, JournalError> {
        let entry = Entry {
            id: self.next_id,
            vm,
            from: from.to_string(),
            to: to.to_string(),
            epoch,
            seq,
            started_unix_ms,
            predicted,
        };
        self.append(&Record::Begin(entry.clone()))?;
        self.next_id += 1;
        self.open.insert(entry.id, entry.clone());
        Ok(entry)
    }

    /// Closes a migration with its outcome.
    pub fn end(&mut self, id: u64, outcome: Ending) -> Result<(), JournalError> {
        self.end_reported(id, outcome, None)
    }

    /// [`Journal::end`], with what the hypervisor reported of the migration.
    pub fn end_reported(
        &mut self,
        id: u64,
        outcome: Ending,
        actual: Option<Figures>,
    ) -> Result<(), JournalError> {
        if !self.open.contains_key(&id) {
            return Err(JournalError::NotOpen(id));
        }
        self.append(&Record::End {
            id,
            outcome,
            actual,
        })?;
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

    /// The torn bytes cut when the journal was opened (each logged; kept in `.corrupt`).
    pub fn repairs(&self) -> &[Repair] {
        &self.repairs
    }

    fn append(&mut self, rec: &Record) -> Result<(), JournalError> {
        append_json_line(&self.file, rec)
            .map_err(JournalError::io(&self.path, "cannot write journal record"))
    }

    /// Rewrites the file with only the open entries (write beside, sync, rename).
    fn compact(&mut self) -> Result<(), JournalError> {
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
        self.file = write().map_err(JournalError::io(&self.path, "cannot compact journal"))?;
        self.closed_records = 0;
        Ok(())
    }
}

/// Appends `v` to `file` as one JSON line and syncs it: on disk before what it tells happens.
/// The journal's records and the group-move record (`group_log`) are written so.
pub(super) fn append_json_line<T: Serialize>(mut file: &File, v: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_string(v).map_err(std::io::Error::other)?;
    line.push('\n');
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_keeps_its_forecast_and_its_reported_figures_and_old_records_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        // A record written before the figures existed.
        std::fs::write(
            &path,
            "{\"record\":\"begin\",\"id\":1,\"vm\":1,\"from\":\"hv1\",\"to\":\"hv2\",\"epoch\":1,\"seq\":1,\"started_unix_ms\":5}\n",
        )
        .unwrap();
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].predicted, None);
        j.end(left[0].id, Ending::Succeeded).unwrap();
        let figures = |mode: &str, bytes| Figures {
            mode: mode.into(),
            bytes,
            time_ms: 1_600,
            downtime_ms: 20,
        };
        let e = j
            .begin_predicted(
                VmId(2),
                ("hv1", "hv3"),
                (1, 2),
                6,
                Some(figures("pre_copy", 95_000_000)),
            )
            .unwrap();
        drop(j);
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![e.clone()], "the forecast survives a restart");
        j.end_reported(
            e.id,
            Ending::Succeeded,
            Some(figures("post_copy", 97_000_000)),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            last.contains("\"actual\":{\"mode\":\"post_copy\",\"bytes\":97000000"),
            "{last}"
        );
        // The closing record of a migration without figures is written as before.
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("\"outcome\":\"succeeded\"}")
        );
    }

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

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn a_torn_tail_never_swallows_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        let first = j.begin(VmId(1), "hv1", "hv2", 7, 3, 1000).unwrap();
        drop(j);
        // A crash in the middle of the next append.
        let torn = b"{\"record\":\"begin\",\"id\":2,\"vm\":";
        append_raw(&path, torn);

        // The next run starts, and begins a migration of another VM.
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![first.clone()]);
        let second = j.begin(VmId(2), "hv1", "hv3", 8, 1, 2000).unwrap();
        drop(j);
        // The run after it must still see that migration open (else the VM could be migrated
        // twice), and the one after that must start at all (no crash loop).
        let (mut j, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![first.clone(), second.clone()]);
        let third = j.begin(VmId(3), "hv1", "hv4", 8, 2, 3000).unwrap();
        j.end(first.id, Ending::Succeeded).unwrap();
        drop(j);
        let (_, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![second, third]);

        // What the tail held is kept for the operator.
        let kept = std::fs::read(corrupt_path(&path)).expect("the torn bytes are kept");
        assert!(kept.windows(torn.len()).any(|w| w == torn), "{kept:?}");
    }

    #[test]
    fn a_record_appended_after_a_failed_write_survives() {
        // A write that failed half-way while the daemon runs on (a full disk): the migration did
        // not start, and the daemon appends its next record later in the same run, glued to the
        // torn bytes. The next open keeps the glued record and cuts the torn bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        let first = j.begin(VmId(1), "hv1", "hv2", 7, 3, 1000).unwrap();
        let torn = b"{\"record\":\"begin\",\"id\":2,\"vm\":\"10.";
        append_raw(&path, torn);
        let second = j.begin(VmId(2), "hv1", "hv3", 8, 1, 2000).unwrap();
        drop(j);
        let (_, left) = Journal::open(&path).unwrap();
        assert_eq!(left, vec![first, second]);
        let kept = std::fs::read(corrupt_path(&path)).expect("the torn bytes are kept");
        assert!(kept.starts_with(torn), "{kept:?}");
    }

    #[test]
    fn torn_tails_of_every_shape_are_cut_and_kept() {
        // A record cut inside a multi-byte character (host names are UTF-8), a record whole but
        // for its newline (the write that failed before the sync), the zeros a file system can
        // leave after a crash, and an unparseable last line.
        let whole = |host: &str| {
            let mut l = serde_json::to_string(&Record::Begin(Entry {
                id: 5,
                vm: VmId(5),
                from: "hv1".into(),
                to: host.into(),
                epoch: 1,
                seq: 1,
                started_unix_ms: 0,
                predicted: None,
            }))
            .unwrap();
            l.push('\n');
            l.into_bytes()
        };
        let cut_utf8 = {
            let l = whole("hôte-é");
            let at = l.iter().position(|b| *b == 0xc3).unwrap() + 1;
            l[..at].to_vec()
        };
        let no_newline = {
            let l = whole("hv9");
            l[..l.len() - 1].to_vec()
        };
        let tails: [(&str, Vec<u8>); 4] = [
            ("partial UTF-8", cut_utf8),
            ("no trailing newline", no_newline),
            ("zeros", vec![0u8; 37]),
            (
                "unparseable last line",
                b"{\"record\":\"end\",\"id\n".to_vec(),
            ),
        ];
        for (what, tail) in tails {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal");
            let (mut j, _) = Journal::open(&path).unwrap();
            let open = j.begin(VmId(1), "hv1", "hv2", 7, 3, 1000).unwrap();
            drop(j);
            let before = std::fs::metadata(&path).unwrap().len();
            append_raw(&path, &tail);

            let (mut j, left) =
                Journal::open(&path).unwrap_or_else(|e| panic!("{what}: start fails: {e}"));
            assert_eq!(left, vec![open.clone()], "{what}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                before,
                "{what}: the file is cut back to its last whole record"
            );
            let next = j.begin(VmId(2), "hv1", "hv3", 8, 1, 2000).unwrap();
            drop(j);
            let (_, left) = Journal::open(&path).unwrap();
            assert_eq!(left, vec![open, next], "{what}");
            let kept = std::fs::read(corrupt_path(&path)).unwrap();
            assert!(kept.starts_with(&tail), "{what}: {kept:?}");
        }
    }

    #[test]
    fn the_corrupt_file_is_appended_to_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        drop(Journal::open(&path).unwrap());
        append_raw(&path, b"{\"record\":\"be");
        let (j, _) = Journal::open(&path).unwrap();
        assert_eq!(j.repairs().len(), 1);
        assert_eq!(j.repairs()[0].offset, 0);
        assert_eq!(j.repairs()[0].length, 13);
        drop(j);
        append_raw(&path, b"\x00\x00");
        let (j, _) = Journal::open(&path).unwrap();
        assert_eq!(j.repairs().len(), 1);
        drop(j);
        let kept = std::fs::read(corrupt_path(&path)).unwrap();
        assert_eq!(kept, b"{\"record\":\"be\n\x00\x00\n");
        // A clean journal repairs nothing.
        let (j, _) = Journal::open(&path).unwrap();
        assert!(j.repairs().is_empty());
    }

    #[test]
    fn a_record_glued_to_torn_bytes_by_an_older_version_is_kept() {
        // Before this repair existed, the next record was appended right after the torn bytes:
        // the line holds torn bytes then a whole record, in the middle of the file or at its end.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let rec = |id: u64, vm: u32| {
            let mut l = serde_json::to_string(&Record::Begin(Entry {
                id,
                vm: VmId(vm),
                from: "hv1".into(),
                to: "hv2".into(),
                epoch: 1,
                seq: id,
                started_unix_ms: 0,
                predicted: None,
            }))
            .unwrap();
            l.push('\n');
            l
        };
        let text = format!(
            "{}{{\"record\":\"be{}{{\"record\":\"end\",\"id\":{}{}",
            rec(1, 1),
            rec(2, 2),
            rec(3, 3),
            rec(4, 4)
        );
        std::fs::write(&path, &text).unwrap();
        let (_, left) = Journal::open(&path).expect("a glued line does not stop the start");
        let vms: Vec<VmId> = left.iter().map(|e| e.vm).collect();
        assert_eq!(vms, vec![VmId(1), VmId(2), VmId(3), VmId(4)]);
        let kept = std::fs::read_to_string(corrupt_path(&path)).unwrap();
        assert_eq!(kept, "{\"record\":\"be\n{\"record\":\"end\",\"id\":\n");
        // The file now holds whole records only.
        let (_, again) = Journal::open(&path).unwrap();
        assert_eq!(again, left);
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
