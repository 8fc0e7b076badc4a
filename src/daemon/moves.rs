//! The migrations this host knows of in the last day, for the placement rules' budgets (per VM
//! per day, per host per hour): its own (out of here), the VMs that arrived here, and every
//! move a peer announced. Kept on disk beside the journal (`<journal>.moves`, one JSON line a
//! move, wall-clock times) so a restart does not reset the budgets: at open the file is read,
//! moves older than a day are dropped and the file is rewritten with the rest.
//!
//! It counts; it never refuses a move (the budget itself is `rules::Budget`). A move it cannot
//! write is still counted in memory (logged): a lost line costs a budget that is too generous
//! after a restart, never a migration.

use crate::topology::{HostId, Topology};
use scored_proto::VmId;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How long a move counts: the longest budget period.
pub const DAY_MS: u64 = 24 * 3600 * 1000;
pub const HOUR_MS: u64 = 3600 * 1000;
/// Two reports of one VM's move between the same hosts this close together are one move.
pub const SAME_MOVE_MS: u64 = 10 * 60 * 1000;
/// Moves remembered at most: about 45 moves a minute for a whole day. Past it the oldest go
/// first (a budget then errs on the generous side).
pub const MAX_MOVES: usize = 1 << 16;

/// One move as the file stores it (host names: stable across a changed topology file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    vm: VmId,
    from: String,
    to: String,
    unix_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Move {
    vm: VmId,
    from: HostId,
    to: HostId,
    unix_ms: u64,
}

/// The moves of the last day, oldest first.
#[derive(Debug, Default)]
pub struct MoveLog {
    path: Option<PathBuf>,
    moves: VecDeque<Move>,
    /// Lines in the file, to rewrite it when it holds far more than the moves kept.
    lines: usize,
}

/// Where the moves of a journal at `journal` are kept.
pub fn path_beside(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".moves");
    PathBuf::from(p)
}

impl MoveLog {
    /// Reads the moves of the last day from `path` (a missing file is none; unreadable lines are
    /// skipped and logged) and rewrites the file with them.
    pub fn open(path: &Path, topo: &Topology, now_ms: u64) -> Self {
        let mut log = MoveLog {
            path: Some(path.to_path_buf()),
            ..Self::default()
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "moves of the last day not read: budgets start afresh");
                String::new()
            }
        };
        for (n, line) in text.lines().enumerate() {
            let Ok(l) = serde_json::from_str::<Line>(line) else {
                tracing::warn!(file = %path.display(), line = n + 1, "unreadable move skipped");
                continue;
            };
            let host = |name: &str| topo.host_by_name(name).map(|h| h.id);
            if let (Some(from), Some(to)) = (host(&l.from), host(&l.to))
                && now_ms.saturating_sub(l.unix_ms) < DAY_MS
            {
                log.push(Move {
                    vm: l.vm,
                    from,
                    to,
                    unix_ms: l.unix_ms,
                });
            }
        }
        log.rewrite(topo);
        log
    }

    fn push(&mut self, m: Move) {
        // Announcements can arrive out of order: keep the deque sorted by time.
        let at = self.moves.partition_point(|x| x.unix_ms <= m.unix_ms);
        self.moves.insert(at, m);
        while self.moves.len() > MAX_MOVES {
            self.moves.pop_front();
        }
    }

    fn line(topo: &Topology, m: &Move) -> String {
        let l = Line {
            vm: m.vm,
            from: topo.host(m.from).name.clone(),
            to: topo.host(m.to).name.clone(),
            unix_ms: m.unix_ms,
        };
        let mut s = serde_json::to_string(&l).expect("a move serialises");
        s.push('\n');
        s
    }

    fn rewrite(&mut self, topo: &Topology) {
        let Some(path) = &self.path else { return };
        let text: String = self.moves.iter().map(|m| Self::line(topo, m)).collect();
        let tmp = path.with_extension("moves.tmp");
        let done = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        match done {
            Ok(()) => self.lines = self.moves.len(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "moves of the last day not written")
            }
        }
    }

    /// `vm` moved from `from` to `to` at `unix_ms`. One move is often told twice (its source's
    /// announcement, the destination's arrival): the same move within [`SAME_MOVE_MS`] of one
    /// already known counts once.
    pub fn record(&mut self, topo: &Topology, vm: VmId, from: HostId, to: HostId, unix_ms: u64) {
        let m = Move {
            vm,
            from,
            to,
            unix_ms,
        };
        if self.moves.iter().rev().any(|o| {
            o.vm == vm && o.from == from && o.to == to && o.unix_ms.abs_diff(unix_ms) < SAME_MOVE_MS
        }) {
            return;
        }
        self.push(m);
        // Forget what no budget counts any more.
        while self
            .moves
            .front()
            .is_some_and(|o| unix_ms.saturating_sub(o.unix_ms) >= DAY_MS)
        {
            self.moves.pop_front();
        }
        let Some(path) = self.path.clone() else {
            return;
        };
        if self.lines > 2 * self.moves.len() + 1024 {
            self.rewrite(topo);
            return;
        }
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(Self::line(topo, &m).as_bytes()));
        match appended {
            Ok(()) => self.lines += 1,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "move not written: counted until the next restart only")
            }
        }
    }

    /// Moves of `vm` in the last day before `now_ms`.
    pub fn vm_moves(&self, vm: VmId, now_ms: u64) -> u32 {
        self.since(now_ms, DAY_MS).filter(|m| m.vm == vm).count() as u32
    }

    /// Moves out of or into `host` in the last hour before `now_ms`.
    pub fn host_moves(&self, host: HostId, now_ms: u64) -> u32 {
        self.since(now_ms, HOUR_MS)
            .filter(|m| m.from == host || m.to == host)
            .count() as u32
    }

    fn since(&self, now_ms: u64, period: u64) -> impl Iterator<Item = &Move> {
        let from = now_ms.saturating_sub(period);
        let start = self.moves.partition_point(|m| m.unix_ms <= from);
        self.moves.range(start..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology::parse(
            Path::new("moves-topology.toml"),
            "[levels]\nnames = [\"rack\"]\nweights = [1.0]\n\n\
             [[host]]\nname = \"h1\"\npath = [\"tor1\"]\n\n\
             [[host]]\nname = \"h2\"\npath = [\"tor1\"]\n\n\
             [[host]]\nname = \"h3\"\npath = [\"tor1\"]\n",
        )
        .unwrap()
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn moves_of_the_last_day_and_hour_are_counted_and_survive_a_restart() {
        let topo = topo();
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("h1.journal"));
        let (h1, h2, h3) = (HostId(0), HostId(1), HostId(2));
        let v = VmId(7);
        {
            let mut log = MoveLog::open(&path, &topo, NOW);
            // Two days ago: forgotten. Five hours ago: counts for the day only. Just now: both.
            log.record(&topo, v, h1, h2, NOW - 2 * DAY_MS);
            log.record(&topo, v, h2, h3, NOW - 5 * HOUR_MS);
            log.record(&topo, VmId(8), h3, h1, NOW - 60_000);
            log.record(&topo, v, h3, h1, NOW - 1000);
        }
        let log = MoveLog::open(&path, &topo, NOW);
        assert_eq!(log.vm_moves(v, NOW), 2, "V moved twice in the last day");
        assert_eq!(log.vm_moves(VmId(8), NOW), 1);
        // The destination's arrival after the source's announcement: the same move.
        let mut log = log;
        log.record(&topo, VmId(8), h3, h1, NOW - 50_000);
        assert_eq!(log.vm_moves(VmId(8), NOW), 1);
        assert_eq!(log.host_moves(h1, NOW), 2, "into h1 twice in the last hour");
        assert_eq!(log.host_moves(h2, NOW), 0, "h2's move was five hours ago");
        // A day later nothing counts any more.
        assert_eq!(log.vm_moves(v, NOW + DAY_MS), 0);
        // The rewrite at open dropped the move of two days ago.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
