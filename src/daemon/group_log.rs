//! The holder's record of the group moves it carries out, beside the journal
//! (`<journal>.groups`, one JSON line a record, synced): the plan when it starts, each move as it
//! completes, how it ended (done, or undone after a move failed). Each migration of a plan is
//! also journalled by the host that runs it, like any other (`journal`): that is what makes a
//! crash mid-migration safe. This record makes the decision one entry: after a crash the daemon
//! reads which plan was left half-done and which of its moves had completed, says so in the log,
//! and closes it as interrupted (its completed moves stay: each VM runs on exactly one host, and
//! the next turns judge the placement afresh).
//!
//! A record it cannot write stops the plan before its first move (nothing starts unrecorded);
//! a step or an end it cannot write is logged and the plan goes on (the journal of each
//! migration still holds the truth of where each VM went).

use scored_proto::{Stamp, VmId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One move of a plan as the file stores it (host names: stable across a changed topology).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedMove {
    pub vm: VmId,
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Line {
    Begin {
        id: u64,
        at: Stamp,
        moves: Vec<LoggedMove>,
        benefit: f64,
        migration_cost: f64,
        unix_ms: u64,
    },
    /// Move `index` of plan `id` completed (`undo`: a move undoing one, after a failure).
    Step {
        id: u64,
        index: usize,
        undo: bool,
    },
    End {
        id: u64,
        outcome: String,
    },
}

/// A plan a previous run left without its end: what it was and how far it got.
#[derive(Clone, Debug, PartialEq)]
pub struct Interrupted {
    pub id: u64,
    pub at: Stamp,
    pub moves: Vec<LoggedMove>,
    /// Moves that completed, in order (and the undoing moves, flagged).
    pub done: Vec<(usize, bool)>,
}

/// Where the group record of a journal at `journal` is kept.
pub fn path_beside(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".groups");
    PathBuf::from(p)
}

#[derive(Debug)]
pub struct GroupLog {
    /// Opened (and emptied) once per run; every record is appended and synced.
    file: std::fs::File,
    next_id: u64,
}

impl GroupLog {
    /// Opens the record at `path`, closes the plans a previous run left open (returned, for the
    /// log) and starts the file afresh: closed plans are history the log already told.
    pub fn open(path: &Path) -> std::io::Result<(GroupLog, Vec<Interrupted>)> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut open: Vec<Interrupted> = Vec::new();
        let mut next_id = 1;
        // A torn last line (a crash mid-write) is skipped like any unreadable one: the plan it
        // began never started, or the step it told is in that migration's own journal.
        for line in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        {
            match line {
                Line::Begin { id, at, moves, .. } => {
                    next_id = next_id.max(id + 1);
                    open.push(Interrupted {
                        id,
                        at,
                        moves,
                        done: Vec::new(),
                    });
                }
                Line::Step { id, index, undo } => {
                    if let Some(p) = open.iter_mut().find(|p| p.id == id) {
                        p.done.push((index, undo));
                    }
                }
                Line::End { id, .. } => open.retain(|p| p.id != id),
            }
        }
        // The ids go on from the highest the file held: the plans of a run and of the one
        // before it have different ids in the log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok((GroupLog { file, next_id }, open))
    }

    fn append(&self, line: &Line) -> std::io::Result<()> {
        super::journal::append_json_line(&self.file, line)
    }

    /// Records a plan about to start; its id.
    pub fn begin(
        &mut self,
        at: Stamp,
        moves: Vec<LoggedMove>,
        benefit: f64,
        migration_cost: f64,
        unix_ms: u64,
    ) -> std::io::Result<u64> {
        let id = self.next_id;
        self.append(&Line::Begin {
            id,
            at,
            moves,
            benefit,
            migration_cost,
            unix_ms,
        })?;
        self.next_id += 1;
        Ok(id)
    }

    pub fn step(&self, id: u64, index: usize, undo: bool) -> std::io::Result<()> {
        self.append(&Line::Step { id, index, undo })
    }

    pub fn end(&self, id: u64, outcome: &str) -> std::io::Result<()> {
        self.append(&Line::End {
            id,
            outcome: outcome.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mv(vm: u32) -> LoggedMove {
        LoggedMove {
            vm: VmId(vm),
            from: "a1".into(),
            to: "b1".into(),
        }
    }

    #[test]
    fn a_plan_left_open_is_reported_with_its_completed_moves_and_the_ids_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("h.journal"));
        let at = Stamp::new(3, 7);
        {
            let (mut log, open) = GroupLog::open(&path).unwrap();
            assert!(open.is_empty());
            let done = log.begin(at, vec![mv(1)], 10.0, 1.0, 0).unwrap();
            log.step(done, 0, false).unwrap();
            log.end(done, "done").unwrap();
            let cut = log
                .begin(at, vec![mv(1), mv(2), mv(3)], 10.0, 3.0, 0)
                .unwrap();
            log.step(cut, 0, false).unwrap();
            log.step(cut, 1, false).unwrap();
            assert_eq!((done, cut), (1, 2));
        }
        // A crash mid-write leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"record\":\"step\",\"id\":2,\"ind").unwrap();
        drop(f);
        let (mut log, open) = GroupLog::open(&path).unwrap();
        assert_eq!(
            open,
            vec![Interrupted {
                id: 2,
                at,
                moves: vec![mv(1), mv(2), mv(3)],
                done: vec![(0, false), (1, false)],
            }]
        );
        assert_eq!(log.begin(at, vec![mv(4)], 1.0, 0.5, 0).unwrap(), 3);
        // Reported once: the next open finds only the plan begun since.
        drop(log);
        let (_, open) = GroupLog::open(&path).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, 3);
    }
}
