//! The M:N work-stealing scheduler.
//!
//! One worker thread per core (by default), each with a FIFO run queue of
//! pids (crossbeam-deque) that the others steal from, plus a global injector
//! for work that comes from outside the workers. Run queues hold pids, not
//! references: a queued process cannot exit before it runs (only its own turn
//! ends it), so the table lookup at run time always finds it.
//!
//! # Locality
//!
//! A process woken by a handler goes into its worker's LIFO slot and runs
//! next on the same worker, while its data is still in that core's cache (a
//! message ring or a request/reply pair then never crosses cores). At most
//! [`MAX_LIFO_STREAK`] LIFO runs follow each other before the slot goes to the
//! back of the queue, so a ping-pong pair cannot starve the rest. The slot is
//! an `AtomicU64` holding a pid so that the watchdog can rescue it from a
//! worker stuck in a handler.
//!
//! # Parking
//!
//! An idle worker looks for work for [`IDLE_SPIN`] (waking a parked thread
//! costs microseconds), yielding its core between looks (on a busy machine
//! a pure spin takes the core from the very thread that would give it
//! work), then registers as a sleeper and parks. Whoever
//! pushes to a run queue calls [`Scheduler::notify`], which wakes one sleeper
//! unless some worker is already searching. The sleeper re-checks every queue
//! after registering and the pusher checks for sleepers after pushing, both
//! behind SeqCst fences, so a wake-up is never lost.
//!
//! # Watchdog
//!
//! Each worker publishes a turn counter (odd while inside a turn). A worker
//! whose counter stays odd and unchanged for the watchdog threshold is
//! blocked in a handler: the watchdog marks it, moves its LIFO slot to the
//! injector and starts a replacement worker. When the blocked worker comes
//! back it is surplus and retires at its next idle moment.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::sync::{Parker, Unparker};
use parking_lot::{Mutex, RwLock};

use crate::node::{NodeInner, Sched};
use crate::pid::Pid;
use crate::table::ProcCache;

/// Consecutive LIFO-slot runs before the slot yields to the run queue.
const MAX_LIFO_STREAK: u32 = 8;
/// How long an idle worker looks for work before parking.
const IDLE_SPIN: Duration = Duration::from_micros(50);
/// A parked worker wakes this often anyway (shutdown, retirement).
const PARK_TIMEOUT: Duration = Duration::from_millis(100);
/// Every this many picks, the injector is checked before the local queue so
/// work from outside is not starved by busy workers.
const INJECTOR_INTERVAL: u32 = 61;

pub(crate) struct Scheduler {
    injector: Injector<Pid>,
    workers: RwLock<Vec<Arc<WorkerShared>>>,
    sleepers: Mutex<Vec<Arc<WorkerShared>>>,
    searching: AtomicUsize,
    sleeping: AtomicUsize,
    /// Workers neither blocked nor retired.
    active: AtomicUsize,
    target: usize,
    shutdown: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicUsize,
    replacements: AtomicU64,
    /// Wakes a worker waiting in the port poller (see [`WorkerShared::polling`]);
    /// set when the ports start.
    pub(crate) io_waker: OnceLock<Arc<mio::Waker>>,
}

/// What other threads see of a worker.
pub(crate) struct WorkerShared {
    id: usize,
    stealer: Stealer<Pid>,
    /// Raw pid in the LIFO slot, 0 if empty. Written by the owner (swap);
    /// taken by the owner, or by others once the worker is blocked.
    lifo: AtomicU64,
    unparker: Unparker,
    /// `turns << 1 | in_turn`, written by the owner only.
    turn: AtomicU64,
    /// Set by the watchdog, cleared by the owner when its turn ends.
    blocked: AtomicBool,
    retired: AtomicBool,
    /// Waiting in the port poller rather than parked: set before the
    /// worker joins the sleepers, so whoever pops it wakes the poller.
    polling: AtomicBool,
}

/// A worker's own state, on its thread's stack.
pub(crate) struct WorkerLocal {
    shared: Arc<WorkerShared>,
    /// Processes this worker sent to or ran lately.
    pub(crate) cache: ProcCache,
    queue: Worker<Pid>,
    lifo_streak: Cell<u32>,
    tick: Cell<u32>,
    turns: Cell<u64>,
    /// Nesting of inline turns (a call running its callee on this worker).
    depth: Cell<u32>,
}

impl Scheduler {
    pub(crate) fn new(workers: usize) -> Scheduler {
        Scheduler {
            injector: Injector::new(),
            workers: RwLock::new(Vec::new()),
            sleepers: Mutex::new(Vec::new()),
            searching: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            target: workers.max(1),
            shutdown: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(0),
            replacements: AtomicU64::new(0),
            io_waker: OnceLock::new(),
        }
    }

    /// Starts the configured number of workers and, if `watchdog` is set,
    /// the watchdog thread.
    pub(crate) fn start(node: &Arc<NodeInner>, watchdog: Option<Duration>) {
        for _ in 0..node.scheduler.target {
            node.scheduler.spawn_worker(node);
        }
        if let Some(threshold) = watchdog {
            let watched = node.clone();
            let handle = thread::Builder::new()
                .name("relive-watchdog".into())
                .spawn(move || watched.scheduler.watchdog(&watched, threshold))
                .expect("spawning the watchdog thread");
            node.scheduler.threads.lock().push(handle);
        }
    }

    fn spawn_worker(&self, node: &Arc<NodeInner>) {
        let queue = Worker::new_fifo();
        let parker = Parker::new();
        let shared = Arc::new(WorkerShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            stealer: queue.stealer(),
            lifo: AtomicU64::new(0),
            unparker: parker.unparker().clone(),
            turn: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            polling: AtomicBool::new(false),
        });
        self.workers.write().push(shared.clone());
        self.active.fetch_add(1, Ordering::SeqCst);
        let local = WorkerLocal {
            shared,
            cache: ProcCache::new(),
            queue,
            lifo_streak: Cell::new(0),
            tick: Cell::new(0),
            turns: Cell::new(0),
            depth: Cell::new(0),
        };
        let node = node.clone();
        let handle = thread::Builder::new()
            .name(format!("relive-worker-{}", local.shared.id))
            .spawn(move || {
                node.scheduler.worker_loop(&node, &local, &parker);
            })
            .expect("spawning a scheduler worker thread");
        self.threads.lock().push(handle);
    }

    /// Queues a process from outside the workers.
    pub(crate) fn inject(&self, pid: Pid) {
        self.injector.push(pid);
        self.notify();
    }

    /// Wakes one sleeping worker if work was queued and nobody is searching.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) > 0 || self.sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        let sleeper = {
            let mut sleepers = self.sleepers.lock();
            let sleeper = sleepers.pop();
            if sleeper.is_some() {
                self.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            sleeper
        };
        if let Some(sleeper) = sleeper {
            sleeper.wake(self);
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Workers started by the watchdog to replace blocked ones, so far.
    pub(crate) fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Relaxed)
    }

    /// Stops every thread and waits for them (except the calling one, if it
    /// is a worker).
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for worker in self.workers.read().iter() {
            worker.wake(self);
        }
        let handles = std::mem::take(&mut *self.threads.lock());
        let me = thread::current().id();
        for handle in handles {
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }

    fn worker_loop(&self, node: &Arc<NodeInner>, local: &WorkerLocal, parker: &Parker) {
        loop {
            if self.is_shutting_down() {
                break;
            }
            if let Some(pid) = local.find_work(self) {
                node.run(pid, local);
                continue;
            }
            self.searching.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            let mut found = None;
            let mut rounds = 0u32;
            while !self.is_shutting_down() {
                found = local.find_work(self);
                if found.is_some() {
                    break;
                }
                rounds += 1;
                if rounds.is_multiple_of(8) {
                    // Sockets ready meanwhile are read now, not after the
                    // spin: their owners go to this worker's queue.
                    // The spin still ends after IDLE_SPIN: a worker that
                    // polled forever would keep its core busy while the node
                    // is idle, taking it from every other program.
                    let polled = match node.ports.poller() {
                        Some(mut poller) => {
                            poller.wait(Duration::ZERO);
                            poller.dispatch(node, Sched::Local(local));
                            true
                        }
                        None => false,
                    };
                    if started.elapsed() >= IDLE_SPIN {
                        break;
                    }
                    if polled {
                        continue;
                    }
                }
                // Yield rather than spin: on a busy machine the thread
                // that would give this worker work needs the core.
                thread::yield_now();
            }
            let last_searcher = self.searching.fetch_sub(1, Ordering::SeqCst) == 1;
            if let Some(pid) = found {
                if last_searcher && (!self.injector.is_empty() || !local.queue.is_empty()) {
                    self.notify();
                }
                node.run(pid, local);
                continue;
            }
            if local.retire_if_surplus(self) {
                return;
            }
            // An idle worker waits in the port poller when no one else
            // does: a socket that becomes ready wakes it, and it runs the
            // owner itself (see port.rs, `Baton`).
            let mut poller = node.ports.poller();
            local.shared.polling.store(poller.is_some(), Ordering::SeqCst);
            self.sleepers.lock().push(local.shared.clone());
            self.sleeping.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let idle = !self.has_work(local) && !self.is_shutting_down();
            match poller.as_mut() {
                Some(poller) => poller.wait(if idle { PARK_TIMEOUT } else { Duration::ZERO }),
                None if idle => parker.park_timeout(PARK_TIMEOUT),
                None => {}
            }
            {
                let mut sleepers = self.sleepers.lock();
                if let Some(at) = sleepers.iter().position(|w| w.id == local.shared.id) {
                    sleepers.swap_remove(at);
                    self.sleeping.fetch_sub(1, Ordering::SeqCst);
                }
            }
            local.shared.polling.store(false, Ordering::SeqCst);
            if let Some(poller) = poller {
                poller.dispatch(node, Sched::Local(local));
            }
        }
        local.give_back_work(self);
    }

    fn has_work(&self, local: &WorkerLocal) -> bool {
        local.shared.lifo.load(Ordering::SeqCst) != 0
            || !local.queue.is_empty()
            || !self.injector.is_empty()
            || self.workers.read().iter().any(|w| !w.stealer.is_empty())
    }

    fn watchdog(&self, node: &Arc<NodeInner>, threshold: Duration) {
        let tick = (threshold / 4).clamp(Duration::from_millis(1), Duration::from_millis(25));
        let mut seen: HashMap<usize, (u64, Instant)> = HashMap::new();
        while !self.is_shutting_down() {
            thread::sleep(tick);
            let now = Instant::now();
            let workers = self.workers.read().clone();
            seen.retain(|id, _| workers.iter().any(|w| w.id == *id));
            for worker in &workers {
                if worker.retired.load(Ordering::Acquire) || worker.blocked.load(Ordering::Acquire) {
                    continue;
                }
                let turn = worker.turn.load(Ordering::Relaxed);
                let entry = seen.entry(worker.id).or_insert((turn, now));
                if entry.0 != turn || turn & 1 == 0 {
                    *entry = (turn, now);
                    continue;
                }
                if now.duration_since(entry.1) < threshold {
                    continue;
                }
                worker.blocked.store(true, Ordering::SeqCst);
                let active = self.active.fetch_sub(1, Ordering::SeqCst) - 1;
                if let Some(pid) = Pid::from_u64(worker.lifo.swap(0, Ordering::AcqRel)) {
                    self.injector.push(pid);
                }
                tracing::warn!(
                    worker = worker.id,
                    blocked_for = ?now.duration_since(entry.1),
                    "a handler has blocked a scheduler worker; starting a replacement worker"
                );
                if active < self.target {
                    self.replacements.fetch_add(1, Ordering::Relaxed);
                    self.spawn_worker(node);
                }
                self.notify();
            }
        }
    }
}

impl WorkerShared {
    /// Wakes this worker from its park, or from the port poller.
    fn wake(&self, scheduler: &Scheduler) {
        if self.polling.load(Ordering::SeqCst)
            && let Some(waker) = scheduler.io_waker.get()
        {
            let _ = waker.wake();
        }
        self.unparker.unpark();
    }
}

impl WorkerLocal {
    /// Queues a process woken by the handler running on this worker.
    pub(crate) fn schedule(&self, scheduler: &Scheduler, pid: Pid) {
        let previous = self.shared.lifo.swap(pid.as_u64(), Ordering::AcqRel);
        if let Some(previous) = Pid::from_u64(previous) {
            self.queue.push(previous);
            scheduler.notify();
        }
    }

    /// Puts a process that used up its budget at the back of the queue.
    pub(crate) fn requeue(&self, scheduler: &Scheduler, pid: Pid) {
        self.queue.push(pid);
        scheduler.notify();
    }

    /// Makes the LIFO slot stealable before this worker blocks.
    pub(crate) fn flush_lifo(&self, scheduler: &Scheduler) {
        if let Some(pid) = Pid::from_u64(self.shared.lifo.swap(0, Ordering::AcqRel)) {
            self.queue.push(pid);
        }
        if !self.queue.is_empty() {
            scheduler.notify();
        }
    }

    pub(crate) fn depth(&self) -> u32 {
        self.depth.get()
    }

    /// Marks the start of a turn (possibly nested).
    pub(crate) fn turn_started(&self) {
        self.depth.set(self.depth.get() + 1);
        self.publish_turn();
    }

    /// Marks the end of a turn.
    pub(crate) fn turn_ended(&self, scheduler: &Scheduler) {
        self.depth.set(self.depth.get() - 1);
        self.publish_turn();
        if self.depth.get() == 0
            && self.shared.blocked.load(Ordering::Relaxed)
            && self.shared.blocked.swap(false, Ordering::SeqCst)
        {
            scheduler.active.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn publish_turn(&self) {
        let turns = self.turns.get() + 1;
        self.turns.set(turns);
        self.shared.turn.store(turns << 1 | u64::from(self.depth.get() > 0), Ordering::Relaxed);
    }

    fn find_work(&self, scheduler: &Scheduler) -> Option<Pid> {
        let tick = self.tick.get().wrapping_add(1);
        self.tick.set(tick);
        if tick.is_multiple_of(INJECTOR_INTERVAL)
            && let Some(pid) = self.steal_injector(scheduler)
        {
            return Some(pid);
        }
        if let Some(pid) = Pid::from_u64(self.shared.lifo.swap(0, Ordering::AcqRel)) {
            let streak = self.lifo_streak.get();
            if streak < MAX_LIFO_STREAK {
                self.lifo_streak.set(streak + 1);
                return Some(pid);
            }
            self.queue.push(pid);
        }
        self.lifo_streak.set(0);
        if let Some(pid) = self.queue.pop() {
            return Some(pid);
        }
        if let Some(pid) = self.steal_injector(scheduler) {
            return Some(pid);
        }
        self.steal_from_workers(scheduler)
    }

    fn steal_injector(&self, scheduler: &Scheduler) -> Option<Pid> {
        loop {
            match scheduler.injector.steal_batch_and_pop(&self.queue) {
                Steal::Success(pid) => return Some(pid),
                Steal::Empty => return None,
                Steal::Retry => continue,
            }
        }
    }

    fn steal_from_workers(&self, scheduler: &Scheduler) -> Option<Pid> {
        let workers = scheduler.workers.read();
        let start = self.tick.get() as usize % workers.len().max(1);
        for i in 0..workers.len() {
            let victim = &workers[(start + i) % workers.len()];
            if victim.id == self.shared.id {
                continue;
            }
            loop {
                match victim.stealer.steal_batch_and_pop(&self.queue) {
                    Steal::Success(pid) => return Some(pid),
                    Steal::Empty => break,
                    Steal::Retry => continue,
                }
            }
            if victim.blocked.load(Ordering::Acquire)
                && let Some(pid) = Pid::from_u64(victim.lifo.swap(0, Ordering::AcqRel))
            {
                return Some(pid);
            }
        }
        None
    }

    /// Retires this worker if there are more active workers than wanted
    /// (after a blocked worker came back). Hands its queue to the injector.
    fn retire_if_surplus(&self, scheduler: &Scheduler) -> bool {
        let active = scheduler.active.load(Ordering::SeqCst);
        if active <= scheduler.target
            || scheduler
                .active
                .compare_exchange(active, active - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        self.shared.retired.store(true, Ordering::Release);
        scheduler.workers.write().retain(|w| w.id != self.shared.id);
        self.give_back_work(scheduler);
        true
    }

    fn give_back_work(&self, scheduler: &Scheduler) {
        if let Some(pid) = Pid::from_u64(self.shared.lifo.swap(0, Ordering::AcqRel)) {
            scheduler.injector.push(pid);
        }
        while let Some(pid) = self.queue.pop() {
            scheduler.injector.push(pid);
        }
        scheduler.notify();
    }
}
