//! The one place that spawns and joins the daemon's tasks. Every task is tracked, so shutdown
//! can wait for all of them; long-lived ones watch the cancellation token. The turn is a task of
//! its own whose handle is kept here, so shutdown waits for the token to be handed on (bounded)
//! instead of polling a flag. The token loss check is one task at a time, kept here too.
//!
//! Owns task handles only: no daemon state, no decisions.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(super) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// The turns not yet ended: at most one works on a token at a time, except that a token
    /// arriving while an older turn winds down gets a turn of its own. Shutdown waits for all.
    turns: Mutex<Vec<JoinHandle<()>>>,
    /// The token loss check in progress, if any.
    loss_check: Mutex<Option<JoinHandle<()>>>,
}

fn running(h: &Option<JoinHandle<()>>) -> bool {
    h.as_ref().is_some_and(|h| !h.is_finished())
}

impl Tasks {
    pub(super) fn new() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            turns: Mutex::new(Vec::new()),
            loss_check: Mutex::new(None),
        }
    }

    /// Runs `task` until it ends; shutdown waits for it.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Runs `task` until it ends or the daemon stops, whichever is first.
    pub(super) fn spawn_until_stopped(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Starts a turn. A turn still winding down (its token handed on) is left to finish.
    pub(super) fn start_turn(&self, turn: impl Future<Output = ()> + Send + 'static) {
        let h = self.tracker.spawn(turn);
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.retain(|t| !t.is_finished());
        turns.push(h);
    }

    /// Whether a token loss check is under way (only the event loop starts them).
    pub(super) fn loss_check_running(&self) -> bool {
        running(&self.loss_check.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn start_loss_check(&self, check: impl Future<Output = ()> + Send + 'static) {
        let h = self.tracker.spawn(check);
        *self.loss_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }

    /// Shutting down: no new decision, no new token minted.
    pub(super) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub(super) fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// Stops at once, as a crash would: the turns and the loss check are aborted where they
    /// stand (a token held is not handed on), long-lived tasks see the stop.
    pub(super) fn abort(&self) {
        self.stop.cancel();
        for t in self
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(h) = self
            .loss_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
        self.tracker.close();
    }

    /// Stops: tells every task, waits up to `turn_limit` for the turns to hand the token on,
    /// then up to `rest_limit` for every other task. Returns whether every turn ended in time.
    pub(super) async fn shut_down(&self, turn_limit: Duration, rest_limit: Duration) -> bool {
        self.stop.cancel();
        let turns = std::mem::take(&mut *self.turns.lock().unwrap_or_else(|e| e.into_inner()));
        let turn_ended = tokio::time::timeout(turn_limit, futures::future::join_all(turns))
            .await
            .is_ok();
        self.tracker.close();
        if tokio::time::timeout(rest_limit, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                tasks = self.tracker.len(),
                "tasks still running at shutdown; left to the runtime"
            );
        }
        turn_ended
    }
}
