//! System tasks: runtime work that runs inside a process's own turn, between
//! two of its messages, with its actor in hand (Erlang's system messages, as
//! `sys:change_code` uses them).
//!
//! The process is not suspended to run one: it reaches the task in mailbox
//! order, runs it on its own worker, and goes on with its next message. So a
//! process is paused only while its task runs, while its mailbox keeps
//! accepting, and many processes run their tasks in parallel on all workers.
//!
//! # Invariants
//! - A task runs at most once, and never after its waiter gave up on it:
//!   [`TaskGuard::commit`] is the one point where a task may still be
//!   abandoned, and a task that changes its process does so only after a
//!   successful commit.
//! - A panic in a task is caught; the process lives on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::process::Actor;

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const COMMITTED: u8 = 2;
const ABANDONED: u8 = 3;

type Work = Box<dyn FnOnce(&mut dyn Actor, &TaskGuard) + Send>;

struct Shared<R> {
    stage: Arc<AtomicU8>,
    progress: Mutex<Progress<R>>,
    changed: Condvar,
}

struct Progress<R> {
    started: Option<Instant>,
    outcome: Option<Outcome<R>>,
}

enum Outcome<R> {
    Ran {
        value: R,
        ran_for: Duration,
    },
    Panicked(String),
    /// Dropped unrun: the process exited first.
    Dropped,
}

impl<R> Shared<R> {
    fn start(&self) -> Instant {
        let now = Instant::now();
        self.progress.lock().started = Some(now);
        self.changed.notify_all();
        now
    }

    fn finish(&self, outcome: Outcome<R>) {
        let mut progress = self.progress.lock();
        if progress.outcome.is_none() {
            progress.outcome = Some(outcome);
        }
        self.changed.notify_all();
    }
}

/// A task as it sits in a mailbox.
pub(crate) struct QueuedTask {
    work: Option<Work>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
    stage: Arc<AtomicU8>,
}

impl QueuedTask {
    /// Runs the task on `actor`, unless its waiter gave up before it
    /// started.
    pub(crate) fn run(mut self, actor: &mut dyn Actor) {
        let Some(work) = self.work.take() else { return };
        if self.stage.compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        let guard = TaskGuard { stage: Arc::clone(&self.stage) };
        work(actor, &guard);
    }
}

impl Drop for QueuedTask {
    fn drop(&mut self) {
        if self.work.is_some()
            && let Some(on_drop) = self.on_drop.take()
        {
            on_drop();
        }
    }
}

/// Given to a running task: the last chance to learn whether its result
/// is still wanted.
pub struct TaskGuard {
    stage: Arc<AtomicU8>,
}

impl TaskGuard {
    /// True if the waiter still wants the result, and from now on it will
    /// take it whatever happens; false if it gave up (the task must then
    /// change nothing).
    pub fn commit(&self) -> bool {
        self.stage.compare_exchange(RUNNING, COMMITTED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// The waiter's side of a queued task.
pub struct SystemTask<R> {
    shared: Arc<Shared<R>>,
    queued_at: Instant,
}

/// A task that ran.
#[derive(Debug)]
pub struct TaskDone<R> {
    /// What it returned.
    pub value: R,
    /// How long it ran: how long its process was paused for it.
    pub ran_for: Duration,
    /// How long it waited in the mailbox before it started.
    pub waited: Duration,
}

/// Why a task gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The process did not reach the task in time (it is busy, suspended
    /// or has a long queue); the task will not run.
    #[error("the process did not reach the task within {0:?}")]
    NotStarted(Duration),
    /// The task started but did not finish in time; whatever it returns
    /// is discarded and it changes nothing it has not committed.
    #[error("the task did not finish within {0:?}")]
    Overran(Duration),
    /// The process exited before running the task.
    #[error("the process exited before it ran the task")]
    Exited,
    /// The task panicked (the process lives on).
    #[error("the task panicked: {0}")]
    Panicked(String),
}

pub(crate) fn new_task<R: Send + 'static>(
    work: impl FnOnce(&mut dyn Actor, &TaskGuard) -> R + Send + 'static,
) -> (QueuedTask, SystemTask<R>) {
    let stage = Arc::new(AtomicU8::new(PENDING));
    let shared = Arc::new(Shared {
        stage: Arc::clone(&stage),
        progress: Mutex::new(Progress { started: None, outcome: None }),
        changed: Condvar::new(),
    });
    let for_run = Arc::clone(&shared);
    let work: Work = Box::new(move |actor, guard| {
        let started = for_run.start();
        let outcome = match catch_unwind(AssertUnwindSafe(|| work(actor, guard))) {
            Ok(value) => Outcome::Ran { value, ran_for: started.elapsed() },
            Err(panic) => Outcome::Panicked(crate::node::panic_message(panic.as_ref())),
        };
        for_run.finish(outcome);
    });
    let for_drop = Arc::clone(&shared);
    let queued = QueuedTask {
        work: Some(work),
        on_drop: Some(Box::new(move || for_drop.finish(Outcome::Dropped))),
        stage,
    };
    (queued, SystemTask { shared, queued_at: Instant::now() })
}

impl<R> SystemTask<R> {
    /// Waits up to `start_timeout` (from when the task was queued) for the
    /// process to start the task, then up to `run_timeout` for it to
    /// finish.
    ///
    /// # Errors
    /// [`TaskError`]; after `NotStarted` or `Overran` the task changes
    /// nothing (see [`TaskGuard::commit`]).
    pub fn wait(self, start_timeout: Duration, run_timeout: Duration) -> Result<TaskDone<R>, TaskError> {
        let shared = &self.shared;
        let mut progress = shared.progress.lock();
        let start_deadline = self.queued_at + start_timeout;
        while progress.started.is_none() && progress.outcome.is_none() {
            if shared.changed.wait_until(&mut progress, start_deadline).timed_out()
                && progress.started.is_none()
                && progress.outcome.is_none()
                && shared
                    .stage
                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Err(TaskError::NotStarted(start_timeout));
            }
        }
        let started = progress.started.unwrap_or_else(Instant::now);
        let run_deadline = started + run_timeout;
        while progress.outcome.is_none() {
            if shared.changed.wait_until(&mut progress, run_deadline).timed_out()
                && progress.outcome.is_none()
            {
                if shared
                    .stage
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(TaskError::Overran(run_timeout));
                }
                // Committed: it is applying its result now; that part is
                // the runtime's own and short.
                while progress.outcome.is_none() {
                    shared.changed.wait(&mut progress);
                }
            }
        }
        match progress.outcome.take().expect("the loop ends with an outcome") {
            Outcome::Ran { value, ran_for } => {
                Ok(TaskDone { value, ran_for, waited: started.saturating_duration_since(self.queued_at) })
            }
            Outcome::Panicked(text) => Err(TaskError::Panicked(text)),
            Outcome::Dropped => Err(TaskError::Exited),
        }
    }
}
