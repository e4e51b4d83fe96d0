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
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::SendError;
use crate::node::Node;
use crate::pid::Pid;
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

impl QueuedTask {
    /// Drops the task without reporting it dropped (it was never queued).
    pub(crate) fn disarm(mut self) {
        self.on_drop = None;
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

/// Dropping the handle gives the task up: it will not start, and if it
/// runs, it cannot commit.
impl<R> Drop for SystemTask<R> {
    fn drop(&mut self) {
        abandon(&self.shared.stage);
    }
}

fn abandon(stage: &AtomicU8) {
    for from in [PENDING, RUNNING] {
        if stage.compare_exchange(from, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return;
        }
    }
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

/// Dropping a group without collecting it gives up its tasks (see
/// [`SystemTask`]).
impl<R> Drop for TaskGroup<R> {
    fn drop(&mut self) {
        for member in &self.members {
            abandon(&member.stage);
        }
    }
}

/// Many tasks queued at once, one per process, collected together: the
/// way to run a system task in thousands of processes. Results come back
/// through one channel as processes finish them, so waiting costs nothing
/// per task, and a process that is slow to reach its task or to finish it
/// is found by its deadline.
pub struct TaskGroup<R> {
    epoch: Instant,
    sender: mpsc::Sender<(usize, Outcome<R>)>,
    results: mpsc::Receiver<(usize, Outcome<R>)>,
    members: Vec<Member>,
}

struct Member {
    pid: Pid,
    stage: Arc<AtomicU8>,
    /// Nanoseconds after the group's epoch when the task started; 0 while
    /// it has not.
    started: Arc<AtomicU64>,
    queued: Duration,
}

impl<R: Send + 'static> Default for TaskGroup<R> {
    fn default() -> Self {
        TaskGroup::new()
    }
}

impl<R: Send + 'static> TaskGroup<R> {
    /// An empty group.
    pub fn new() -> TaskGroup<R> {
        let (sender, results) = mpsc::channel();
        TaskGroup { epoch: Instant::now(), sender, results, members: Vec::new() }
    }

    /// Tasks queued so far.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True if none was queued.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Queues `task` in process `pid` (see [`crate::Node::system_task`]).
    ///
    /// # Errors
    /// [`SendError::NoProc`] if the process is gone.
    pub fn queue(
        &mut self,
        node: &Node,
        pid: Pid,
        task: impl FnOnce(&mut dyn Actor, &TaskGuard) -> R + Send + 'static,
    ) -> Result<(), SendError> {
        let index = self.members.len();
        let stage = Arc::new(AtomicU8::new(PENDING));
        let started = Arc::new(AtomicU64::new(0));
        let (sender, epoch, started_at) = (self.sender.clone(), self.epoch, Arc::clone(&started));
        let work: Work = Box::new(move |actor, guard| {
            let start = Instant::now();
            started_at.store(start.duration_since(epoch).as_nanos() as u64 + 1, Ordering::Release);
            let outcome = match catch_unwind(AssertUnwindSafe(|| task(actor, guard))) {
                Ok(value) => Outcome::Ran { value, ran_for: start.elapsed() },
                Err(panic) => Outcome::Panicked(crate::node::panic_message(panic.as_ref())),
            };
            let _ = sender.send((index, outcome));
        });
        let sender = self.sender.clone();
        let queued = QueuedTask {
            work: Some(work),
            on_drop: Some(Box::new(move || {
                let _ = sender.send((index, Outcome::Dropped));
            })),
            stage: Arc::clone(&stage),
        };
        node.push_system(pid, queued)?;
        self.members.push(Member { pid, stage, started, queued: self.epoch.elapsed() });
        Ok(())
    }

    /// Waits for every task: each may take `reach` from when it was queued
    /// to start, then `run` to finish (see [`SystemTask::wait`]). Results
    /// in the order the tasks were queued.
    pub fn collect(mut self, reach: Duration, run: Duration) -> Vec<(Pid, Result<TaskDone<R>, TaskError>)> {
        let members = std::mem::take(&mut self.members);
        let (epoch, results) = (self.epoch, &self.results);
        // Only the tasks hold senders now.
        self.sender = mpsc::channel().0;
        let mut done: Vec<Option<Result<TaskDone<R>, TaskError>>> = members.iter().map(|_| None).collect();
        let mut remaining = members.len();
        while remaining > 0 {
            match results.recv_timeout(Duration::from_millis(1)) {
                Ok((index, outcome)) => {
                    if done[index].is_some() {
                        continue;
                    }
                    let member = &members[index];
                    let started =
                        Duration::from_nanos(member.started.load(Ordering::Acquire).saturating_sub(1));
                    done[index] = Some(match outcome {
                        Outcome::Ran { value, ran_for } => {
                            Ok(TaskDone { value, ran_for, waited: started.saturating_sub(member.queued) })
                        }
                        Outcome::Panicked(text) => Err(TaskError::Panicked(text)),
                        Outcome::Dropped => Err(TaskError::Exited),
                    });
                    remaining -= 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = epoch.elapsed();
                    for (member, slot) in members.iter().zip(done.iter_mut()) {
                        if slot.is_some() {
                            continue;
                        }
                        let started = member.started.load(Ordering::Acquire);
                        let expired = if started == 0 {
                            now > member.queued + reach
                                && member
                                    .stage
                                    .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                                    .is_ok()
                                && {
                                    *slot = Some(Err(TaskError::NotStarted(reach)));
                                    true
                                }
                        } else {
                            now > Duration::from_nanos(started - 1) + run
                                && member
                                    .stage
                                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                                    .is_ok()
                                && {
                                    *slot = Some(Err(TaskError::Overran(run)));
                                    true
                                }
                        };
                        if expired {
                            remaining -= 1;
                        }
                    }
                }
                // Every task holds a sender until it reports.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        members
            .iter()
            .zip(done)
            .map(|(member, result)| (member.pid, result.unwrap_or(Err(TaskError::Exited))))
            .collect()
    }
}
