//! The node: the process table, the scheduler, names, timers and ports of
//! one runtime instance, and the public API to them ([`Node`]).
//!
//! # A turn
//!
//! A worker runs a scheduled process by taking its actor out of the mailbox
//! (`Mailbox::begin`) and taking steps from it (`Mailbox::next`) until it is idle or has handled
//! `budget` messages, in which case it goes to the back of the run queue.
//! Every callback runs under `catch_unwind`: a panic ends that process with
//! `ExitReason::Panic` and nothing else.
//!
//! # Exit
//!
//! A process exits only inside its own turn (`exit_process`): its mailbox
//! closes (pending calls fail with its reason), it leaves the table and the
//! registry, linked processes get an exit signal, monitors fire, its ports
//! close, and its actor is dropped last, outside every lock.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::code_server::CodeServer;
use crate::ctx::Ctx;
use crate::error::{
    CallError, ConfigChangeError, JsonCallError, LinkError, RegisterError, SendError, SpawnError,
    SuspendError,
};
use crate::mailbox::{Begin, Next, Push, Signal};
use crate::message::{Down, Envelope, Exit, Message, NoReply, ReplyCell, ReplyTo};
use crate::module::{ModuleReply, Payload, json_to_payload, payload_to_json};
use crate::pid::{ExitReason, MonitorRef, Pid, TimerRef};
use crate::port::{ConnectOpts, ListenOpts, ListenerInfo, Listening, PortError, PortId, PortInfo, Ports};
use crate::process::{Actor, Proc, Relations, Watcher};
use crate::remote::Remote;
use crate::scheduler::{Scheduler, WorkerLocal};
use crate::table::ProcessTable;
use crate::timer::Timers;

/// How deep calls may nest running their callee on the caller's worker.
const MAX_INLINE_DEPTH: u32 = 4;

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Scheduler worker threads (default: one per core).
    pub workers: usize,
    /// Messages a process may handle in one turn before others get a go.
    pub budget: usize,
    /// Most processes alive at once (Erlang's `+P`).
    pub max_processes: usize,
    /// A worker stuck in one handler this long gets a replacement; `None`
    /// disables the watchdog.
    pub watchdog: Option<Duration>,
    /// Where the code server keeps loaded libraries (`<dir>/<sha256>.so`);
    /// `None` runs the node without a code server (native processes only).
    pub code_dir: Option<std::path::PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            workers: thread::available_parallelism().map_or(2, |n| n.get()),
            budget: 64,
            max_processes: 1 << 24,
            watchdog: Some(Duration::from_millis(100)),
            code_dir: None,
        }
    }
}

/// Where a message goes: a pid, a registered name, or a name on another
/// node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A process by pid (an external pid reaches another node).
    Pid(Pid),
    /// A process by registered name, looked up at send time.
    Name(Arc<str>),
    /// A process registered as `name` on another node (Erlang's
    /// `{Name, Node}`), reached through the installed
    /// [`crate::Remote`]. Sends only: a call to it fails with
    /// [`SendError::NotRegistered`] (call through relive-dist instead).
    Remote {
        /// The registered name there.
        name: Arc<str>,
        /// The node's full name, `name@host`.
        node: Arc<str>,
    },
}

impl From<Pid> for Dest {
    fn from(pid: Pid) -> Dest {
        Dest::Pid(pid)
    }
}

impl From<&str> for Dest {
    fn from(name: &str) -> Dest {
        Dest::Name(name.into())
    }
}

impl From<String> for Dest {
    fn from(name: String) -> Dest {
        Dest::Name(name.into())
    }
}

impl From<Arc<str>> for Dest {
    fn from(name: Arc<str>) -> Dest {
        Dest::Name(name)
    }
}

/// Wraps a value as a [`Message`], passing a `Message` through unchanged.
pub(crate) fn into_message<T: Any + Send>(value: T) -> Message {
    let mut value = Some(value);
    if let Some(message) = (&mut value as &mut dyn Any).downcast_mut::<Option<Message>>() {
        return message.take().expect("value is Some");
    }
    Message::new(value.expect("value is Some"))
}

/// Where a newly runnable process is queued.
#[derive(Clone, Copy)]
pub(crate) enum Sched<'a> {
    /// On the current worker (the caller runs inside a turn).
    Local(&'a WorkerLocal),
    /// On the global injector.
    Global,
}

/// A handle to a running node. Cheap to clone; every clone is the same node.
/// Call [`Node::shutdown`] to stop it.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    pub(crate) table: ProcessTable,
    pub(crate) scheduler: Scheduler,
    registry: RwLock<HashMap<Arc<str>, Pid>>,
    pub(crate) timers: Timers,
    pub(crate) ports: Ports,
    pub(crate) code: std::sync::OnceLock<Arc<CodeServer>>,
    next_ref: AtomicU64,
    budget: usize,
    service_threads: Mutex<Vec<JoinHandle<()>>>,
    /// The running release's configuration (see [`Node::set_config`]).
    config: RwLock<Arc<Payload>>,
    /// Other nodes' processes, once a distribution layer is installed.
    remote: std::sync::OnceLock<Arc<dyn Remote>>,
}

/// Blocks until a process exits; made by [`Node::exit_waiter`].
pub struct ExitWaiter {
    cell: Arc<ReplyCell>,
    monitor: MonitorRef,
    node: Arc<NodeInner>,
}

impl ExitWaiter {
    /// The exit reason, or `None` if the process is still alive after
    /// `timeout`. A process that was already gone reports `noproc`.
    pub fn wait(self, timeout: Duration) -> Option<ExitReason> {
        let result = self.cell.wait(timeout);
        self.node.demonitor(None, self.monitor);
        match result? {
            Ok(message) => message.downcast::<ExitReason>().ok(),
            Err(_) => None,
        }
    }
}

impl Node {
    /// Starts a node: its workers, watchdog and timer thread (the port I/O
    /// thread starts with the first [`Node::listen`]).
    pub fn start(config: NodeConfig) -> Node {
        let inner = Arc::new(NodeInner {
            table: ProcessTable::new(config.max_processes),
            scheduler: Scheduler::new(config.workers),
            registry: RwLock::new(HashMap::new()),
            timers: Timers::new(),
            ports: Ports::new(),
            next_ref: AtomicU64::new(1),
            budget: config.budget.max(1),
            service_threads: Mutex::new(Vec::new()),
            code: std::sync::OnceLock::new(),
            config: RwLock::new(Arc::new(Payload::empty_map())),
            remote: std::sync::OnceLock::new(),
        });
        if let Some(dir) = config.code_dir {
            let _ = inner.code.set(Arc::new(CodeServer::new(dir, Arc::downgrade(&inner))));
        }
        Scheduler::start(&inner, config.watchdog);
        let timer_node = inner.clone();
        let timer = thread::Builder::new()
            .name("relive-timers".into())
            .spawn(move || timer_node.timers.run(&timer_node))
            .expect("spawning the timer thread");
        inner.service_threads.lock().push(timer);
        Node { inner }
    }

    /// Stops every thread of the node and drops all processes (their
    /// pending callers get `shutdown`). Idempotent.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        inner.ports.shutdown();
        inner.timers.shutdown();
        inner.scheduler.shutdown();
        let handles = std::mem::take(&mut *inner.service_threads.lock());
        for handle in handles {
            let _ = handle.join();
        }
        for proc in inner.table.all() {
            inner.exit_process(&proc, None, ExitReason::Shutdown, Sched::Global);
        }
    }

    /// Spawns a process running `actor`; it runs `init` first.
    ///
    /// # Errors
    /// [`SpawnError::TooManyProcesses`] when the table is full.
    pub fn spawn(&self, actor: impl Actor) -> Result<Pid, SpawnError> {
        let proc = self.inner.create(Box::new(actor), None, None)?;
        self.inner.scheduler.inject(proc.pid);
        Ok(proc.pid)
    }

    /// Spawns a process and waits until its `init` has run.
    ///
    /// # Errors
    /// [`SpawnError::InitFailed`] with the reason init gave (or its panic),
    /// [`SpawnError::TooManyProcesses`], [`SpawnError::Timeout`].
    pub fn spawn_sync(&self, actor: impl Actor, timeout: Duration) -> Result<Pid, SpawnError> {
        self.inner.spawn_sync(Box::new(actor), None, timeout, Sched::Global)
    }

    /// Sends a plain message (Erlang's `!`). Sending to a dead pid does
    /// nothing and says so.
    ///
    /// # Errors
    /// [`SendError::NoProc`] for a dead pid, [`SendError::NotRegistered`]
    /// for an unknown name.
    pub fn send<T: Any + Send>(&self, to: impl Into<Dest>, message: T) -> Result<(), SendError> {
        self.inner.send(to.into(), Envelope::Info(into_message(message)), Sched::Global)
    }

    /// Sends a cast (handled by `handle_cast`).
    ///
    /// # Errors
    /// As [`Node::send`].
    pub fn cast<T: Any + Send>(&self, to: impl Into<Dest>, message: T) -> Result<(), SendError> {
        self.inner.send(to.into(), Envelope::Cast(into_message(message)), Sched::Global)
    }

    /// Calls a process and waits for its reply, at most `timeout`.
    ///
    /// # Errors
    /// See [`CallError`]: dead or unknown target, timeout (a late reply is
    /// discarded), the callee exiting or dropping the request.
    pub fn call<T: Any + Send>(
        &self,
        to: impl Into<Dest>,
        request: T,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let to = to.into();
        if NodeInner::is_remote(&to) {
            return self.inner.call_remote(None, &to, into_message(request), timeout, None);
        }
        let pid = self.inner.resolve(&to).map_err(CallError::from)?;
        self.inner.call(pid, into_message(request), timeout, None)
    }

    /// Calls a process without waiting: `then` runs with the reply on the
    /// thread that answers (a scheduler worker: it must not block), or
    /// with `None` when none will come (the callee exited or dropped the
    /// request). For a distribution layer answering another node's
    /// gen_server calls, which must never wait on a busy process.
    ///
    /// # Errors
    /// [`SendError`] for a dead or unknown target (`then` is dropped
    /// unrun).
    pub fn call_then<T: Any + Send>(
        &self,
        to: impl Into<Dest>,
        request: T,
        then: impl FnOnce(Option<Message>) + Send + 'static,
    ) -> Result<(), SendError> {
        let pid = self.inner.resolve(&to.into())?;
        let envelope = Envelope::Call(into_message(request), ReplyTo::then(Box::new(then)));
        match self.inner.deliver(pid, envelope, Sched::Global) {
            Ok(()) => Ok(()),
            Err(envelope) => {
                // Not a failed call: the caller learns it from the error.
                if let Envelope::Call(_, mut reply) = envelope {
                    reply.disarm();
                }
                Err(SendError::NoProc(pid))
            }
        }
    }

    /// Sends an exit signal from outside any process ([`Pid::NODE`]):
    /// `kill` always kills, `normal` is ignored unless trapped, others kill
    /// a process that does not trap exits.
    pub fn exit(&self, pid: Pid, reason: ExitReason) {
        self.inner.signal_exit(pid, Pid::NODE, reason, Sched::Global);
    }

    /// A waiter that learns how `pid` exits (a monitor whose `Down` goes to
    /// the calling thread). Call [`ExitWaiter::wait`] on the same thread.
    pub fn exit_waiter(&self, pid: Pid) -> ExitWaiter {
        self.inner.exit_waiter(pid)
    }

    /// Registers `name` for `pid`.
    ///
    /// # Errors
    /// See [`RegisterError`].
    pub fn register(&self, name: &str, pid: Pid) -> Result<(), RegisterError> {
        self.inner.register(name.into(), pid)
    }

    /// Removes a registered name; false if it was not registered.
    pub fn unregister(&self, name: &str) -> bool {
        self.inner.unregister(name)
    }

    /// The pid registered as `name`.
    pub fn whereis(&self, name: &str) -> Option<Pid> {
        self.inner.whereis(name)
    }

    /// The name `pid` is registered under, if any.
    pub fn name_of(&self, pid: Pid) -> Option<Arc<str>> {
        let proc = self.inner.table.get(pid)?;
        let cell = proc.relations.lock();
        cell.relations.as_ref()?.name.clone()
    }

    /// All registered names, sorted.
    pub fn registered(&self) -> Vec<(Arc<str>, Pid)> {
        let mut names: Vec<_> = self.inner.registry.read().iter().map(|(n, p)| (n.clone(), *p)).collect();
        names.sort();
        names
    }

    /// Delivers `message` to `to` after `delay` (as a plain message).
    pub fn send_after<T: Any + Send>(&self, to: Pid, message: T, delay: Duration) -> TimerRef {
        self.inner.send_after(to, into_message(message), delay)
    }

    /// Cancels a timer; true if it had not fired yet.
    pub fn cancel_timer(&self, timer: TimerRef) -> bool {
        self.inner.timers.cancel(timer)
    }

    /// Suspends a process: its mailbox keeps accepting messages, none is
    /// handled until [`Node::resume`]. Returns once no handler of the
    /// process is running. Exit signals still reach it.
    ///
    /// # Errors
    /// [`SuspendError::NoProc`], [`SuspendError::AlreadySuspended`], or
    /// [`SuspendError::Timeout`] if its current handler did not return in
    /// `timeout` (the process is then resumed, as it was).
    pub fn suspend(&self, pid: Pid, timeout: Duration) -> Result<(), SuspendError> {
        self.inner.suspend(pid, timeout)
    }

    /// Resumes a suspended process; messages that arrived meanwhile are
    /// handled in order.
    ///
    /// # Errors
    /// [`SuspendError::NoProc`], [`SuspendError::NotSuspended`].
    pub fn resume(&self, pid: Pid) -> Result<(), SuspendError> {
        self.inner.resume(pid, Sched::Global)
    }

    /// Runs `f` on the actor of a suspended process (its state, for
    /// inspection or migration).
    ///
    /// # Errors
    /// [`SuspendError::NoProc`], [`SuspendError::NotSuspended`].
    pub fn with_suspended<R>(
        &self,
        pid: Pid,
        f: impl FnOnce(&mut Box<dyn Actor>) -> R,
    ) -> Result<R, SuspendError> {
        let proc = self.inner.table.get(pid).ok_or(SuspendError::NoProc(pid))?;
        if !proc.mailbox.is_suspended() {
            return Err(SuspendError::NotSuspended(pid));
        } // A worker may hold the actor for a moment to find it has nothing
        // to do; wait for it to be parked.
        proc.mailbox.wait_parked(Duration::from_secs(5));
        let mut actor = proc.mailbox.borrow().ok_or(SuspendError::NoProc(pid))?;
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut actor)));
        match proc.mailbox.put_back(actor) {
            Ok(Push::Schedule) => {
                drop(proc);
                self.inner.schedule(pid, Sched::Global);
            }
            Ok(_) => {}
            Err(actor) => drop(actor),
        }
        result.map_err(|panic| SuspendError::Panicked(pid, panic_message(panic.as_ref())))
    }

    /// Queues `task` to run inside process `pid`'s own turn, after the
    /// messages already in its mailbox, with its actor in hand (see
    /// [`crate::system`]). The process is paused only while the task runs.
    ///
    /// # Errors
    /// [`SendError::NoProc`] if the process is gone.
    pub fn system_task<R: Send + 'static>(
        &self,
        pid: Pid,
        task: impl FnOnce(&mut dyn Actor, &crate::system::TaskGuard) -> R + Send + 'static,
    ) -> Result<crate::system::SystemTask<R>, SendError> {
        let (queued, waiter) = crate::system::new_task(task);
        self.push_system(pid, queued)?;
        Ok(waiter)
    }

    pub(crate) fn push_system(&self, pid: Pid, task: crate::system::QueuedTask) -> Result<(), SendError> {
        let Some(proc) = self.inner.table.get(pid) else {
            task.disarm();
            return Err(SendError::NoProc(pid));
        };
        match proc.mailbox.push_system(Envelope::System(task)) {
            Push::Schedule => {
                drop(proc);
                self.inner.schedule(pid, Sched::Global);
                Ok(())
            }
            Push::Queued => Ok(()),
            Push::Dead(envelope) => {
                // The caller learns it from the error: the task must not
                // report itself dropped as well.
                if let Envelope::System(task) = envelope {
                    task.disarm();
                }
                Err(SendError::NoProc(pid))
            }
        }
    }

    /// What has gone through `pid`'s mailbox (see [`crate::MailboxCounts`]).
    pub fn mailbox_counts(&self, pid: Pid) -> Option<crate::mailbox::MailboxCounts> {
        self.inner.table.get(pid).map(|p| p.mailbox.counts())
    }

    /// The node's code server, if it was started with
    /// [`NodeConfig::code_dir`].
    pub fn code_server(&self) -> Option<Arc<CodeServer>> {
        self.inner.code.get().cloned()
    }

    /// Spawns a process running the current version of `module` and waits
    /// for its init. `init_arg` is the MessagePack init argument.
    ///
    /// # Errors
    /// [`SpawnError::UnknownModule`], [`SpawnError::InitFailed`] with the
    /// module's error or panic, and as [`Node::spawn_sync`].
    pub fn spawn_module(
        &self,
        module: &str,
        init_arg: Payload,
        timeout: Duration,
    ) -> Result<Pid, SpawnError> {
        let code = self.code_server().ok_or_else(|| SpawnError::UnknownModule(module.to_string()))?;
        let actor = code
            .module_process(module, init_arg.0)
            .map_err(|_| SpawnError::UnknownModule(module.to_string()))?;
        self.spawn_sync(actor, timeout)
    }

    /// Calls a module process with a JSON request (sent as MessagePack) and
    /// returns its reply as JSON.
    ///
    /// # Errors
    /// [`JsonCallError`]: the call failed, the module refused the request,
    /// or the answer is not a module reply.
    pub fn call_json(
        &self,
        to: impl Into<Dest>,
        request: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, JsonCallError> {
        let payload = json_to_payload(request).map_err(JsonCallError::Encode)?;
        let reply = self.call(to, payload, timeout)?;
        let reply = reply.downcast::<ModuleReply>().map_err(|_| JsonCallError::NotAModule)?;
        payload_to_json(&reply.map_err(JsonCallError::Refused)?).map_err(JsonCallError::Decode)
    }

    /// Casts a JSON message (sent as MessagePack) to a module process.
    ///
    /// # Errors
    /// As [`Node::cast`].
    pub fn cast_json(&self, to: impl Into<Dest>, message: &serde_json::Value) -> Result<(), SendError> {
        let payload = json_to_payload(message).expect("every JSON value has a MessagePack form");
        self.cast(to, payload)
    }

    /// Sets the node's configuration: one MessagePack value for the running
    /// release (its `[config]` table), read by module processes with
    /// relive-abi's `Ctx::config`. Returns the previous one, to restore if
    /// an upgrade that brought the new one is undone. Setting it tells no
    /// process: run [`Node::config_change`] (or
    /// [`ModuleProcess::config_change`](crate::ModuleProcess::config_change))
    /// on each process that must hear of it, after this.
    pub fn set_config(&self, config: Payload) -> Arc<Payload> {
        std::mem::replace(&mut *self.inner.config.write(), Arc::new(config))
    }

    /// The node's configuration; an empty MessagePack map until
    /// [`Node::set_config`] sets one.
    pub fn config(&self) -> Arc<Payload> {
        self.inner.config()
    }

    /// Runs module process `pid`'s `config_change(old → new)` inside its own
    /// turn, as a system task (after the messages already in its mailbox),
    /// and waits: up to `reach` for the process to get to it, then up to
    /// `run` for the callback. Call [`Node::set_config`] with `new` first,
    /// so that the callback's `Ctx::config` reads the new configuration.
    ///
    /// For many processes at once, queue
    /// [`ModuleProcess::config_change`](crate::ModuleProcess::config_change)
    /// in a [`crate::system::TaskGroup`] instead (after `guard.commit()`).
    ///
    /// # Errors
    /// [`ConfigChangeError::Refused`] if the callback returned an error or
    /// panicked (the process keeps running on its state as the callback
    /// left it); [`ConfigChangeError::NoProc`],
    /// [`ConfigChangeError::NotAModuleProcess`], or
    /// [`ConfigChangeError::Task`] if it did not run in time.
    pub fn config_change(
        &self,
        pid: Pid,
        old: Arc<Payload>,
        new: Arc<Payload>,
        reach: Duration,
        run: Duration,
    ) -> Result<(), ConfigChangeError> {
        // Weak: a task left in a mailbox must not keep the node alive.
        let node = Arc::downgrade(&self.inner);
        let task = self
            .system_task(pid, move |actor, guard| {
                let process = actor.as_module_process().ok_or(ConfigChangeError::NotAModuleProcess(pid))?;
                let node =
                    node.upgrade().map(|inner| Node { inner }).ok_or(ConfigChangeError::NoProc(pid))?;
                if !guard.commit() {
                    // The waiter gave up; it reports the timeout itself.
                    return Ok(());
                }
                process.config_change(&node, &old, &new).map_err(|error| ConfigChangeError::Refused {
                    pid,
                    module: process.code().name().to_string(),
                    version: process.code().version().clone(),
                    error,
                })
            })
            .map_err(|_| ConfigChangeError::NoProc(pid))?;
        match task.wait(reach, run) {
            Ok(done) => done.value,
            Err(crate::system::TaskError::Exited) => Err(ConfigChangeError::NoProc(pid)),
            Err(error) => Err(ConfigChangeError::Task { pid, error }),
        }
    }

    /// Whether `pid` is alive.
    pub fn is_alive(&self, pid: Pid) -> bool {
        self.inner.table.get(pid).is_some()
    }

    /// Messages waiting in a process's mailbox.
    pub fn message_queue_len(&self, pid: Pid) -> Option<usize> {
        self.inner.table.get(pid).map(|p| p.mailbox.len())
    }

    /// Opens a TCP listener on `addr` owned by `owner` (see [`crate::port`]).
    /// The owner gets [`crate::PortEvent::Accepted`] for each connection;
    /// each connection belongs to the pid `opts.handler` returns, or else to
    /// the owner. The listener closes when its owner exits.
    ///
    /// # Errors
    /// [`PortError::Bind`] naming the address, [`PortError::NoProc`] for a
    /// dead owner, [`PortError::ShuttingDown`], [`PortError::Start`].
    pub fn listen(&self, addr: SocketAddr, owner: Pid, opts: ListenOpts) -> Result<ListenerInfo, PortError> {
        self.inner.ports.listen(&self.inner, addr, owner, opts)
    }

    /// Writes bytes on a connection, from any thread, without waiting:
    /// straight to the socket from the caller's thread while nothing is
    /// queued before them; what the socket does not take at once is queued
    /// and written by the port I/O thread. Bytes sent from one thread go
    /// out in order. A write error, or more unsent output than the
    /// connection's limit allows, closes the connection (its owner gets
    /// `Closed` with the reason).
    ///
    /// # Errors
    /// [`PortError::Closed`], [`PortError::Unknown`],
    /// [`PortError::NotAConnection`], [`PortError::ShuttingDown`].
    pub fn port_send(&self, port: PortId, bytes: impl Into<Vec<u8>>) -> Result<(), PortError> {
        self.inner.ports.send(port, std::borrow::Cow::Owned(bytes.into()))
    }

    /// As [`Node::port_send`] for borrowed bytes: copied only if the socket
    /// does not take them all at once.
    ///
    /// # Errors
    /// As [`Node::port_send`].
    pub fn port_send_slice(&self, port: PortId, bytes: &[u8]) -> Result<(), PortError> {
        self.inner.ports.send(port, std::borrow::Cow::Borrowed(bytes))
    }

    /// Caps the connections (accepted and outbound, over all listeners) the
    /// node's ports hold at once; `None` lifts the cap. A client accepted
    /// over it is refused as over a listener's own cap
    /// ([`crate::ListenOpts::max_connections`]), and [`Node::connect`]
    /// fails with [`PortError::TooManyConnections`]. A daemon sets it below
    /// its file-descriptor limit, so clients can never take the descriptors
    /// its control socket and store need.
    pub fn set_max_connections(&self, max: Option<usize>) {
        self.inner.ports.set_max_connections(max);
    }

    /// Connections whose socket is open now (accepted and outbound).
    pub fn port_connections(&self) -> usize {
        self.inner.ports.connections()
    }

    /// Closes a port; queued output is still written. No `Closed` event is
    /// sent for it.
    ///
    /// # Errors
    /// [`PortError::Closed`], [`PortError::Unknown`].
    pub fn port_close(&self, port: PortId) -> Result<(), PortError> {
        self.inner.ports.close(&self.inner, port)
    }

    /// Opens a TCP connection to `addr` owned by `owner`, as an accepted
    /// connection is (its events go to `owner`, framed as `opts` says; no
    /// `Accepted` event). The connect itself runs on the port I/O thread;
    /// this waits for it at most `timeout`.
    ///
    /// # Errors
    /// [`PortError::Connect`] naming the address (refused, unreachable),
    /// [`PortError::ConnectTimeout`], [`PortError::NoProc`] for a dead
    /// owner, [`PortError::ShuttingDown`], [`PortError::Start`].
    pub fn connect(
        &self,
        addr: SocketAddr,
        owner: Pid,
        opts: ConnectOpts,
        timeout: Duration,
    ) -> Result<PortId, PortError> {
        self.inner.ports.connect(&self.inner, addr, owner, opts, timeout)
    }

    /// Replaces a listener's options in place (an upgraded owner applying
    /// its version's caps and limits): connections it accepts from now on
    /// get them; connections open already keep theirs. The socket stays
    /// open and bound.
    ///
    /// # Errors
    /// [`PortError::NotAListener`], [`PortError::Closed`],
    /// [`PortError::Unknown`], [`PortError::ShuttingDown`].
    pub fn set_listen_opts(&self, port: PortId, opts: ListenOpts) -> Result<(), PortError> {
        self.inner.ports.set_listen_opts(port, None, opts)
    }

    /// Gives a port to `owner`: every later event goes to it and the port
    /// now closes when it exits. The socket stays open.
    ///
    /// # Errors
    /// [`PortError::NoProc`] for a dead owner, [`PortError::Closed`],
    /// [`PortError::Unknown`].
    pub fn port_set_owner(&self, port: PortId, owner: Pid) -> Result<(), PortError> {
        self.inner.ports.set_owner(&self.inner, port, owner)
    }

    /// Owner, addresses and byte counts of an open port.
    pub fn port_info(&self, port: PortId) -> Option<PortInfo> {
        self.inner.ports.info(port)
    }

    /// The open ports, by id.
    pub fn ports(&self) -> Vec<PortId> {
        self.inner.ports.list()
    }

    /// Every open listener with its owner and bound address, by port id:
    /// the addresses the node serves, for a status report. Connections are
    /// left out (there may be thousands, and [`Node::ports`] lists them).
    /// Cheap: a read of the ports table, never a round trip through the
    /// I/O thread; a listener closed by [`Node::port_close`] is gone from
    /// the list once that returns.
    pub fn listeners(&self) -> Vec<Listening> {
        self.inner.ports.listeners()
    }

    /// The raw fd of every socket the node's ports hold, by port id.
    #[cfg(unix)]
    pub fn port_raw_fds(&self) -> Vec<(PortId, RawFd)> {
        self.inner.ports.raw_fds()
    }

    /// Processes alive now.
    pub fn process_count(&self) -> usize {
        self.inner.table.live()
    }

    /// Pids of all live processes.
    pub fn processes(&self) -> Vec<Pid> {
        self.inner.table.all().iter().map(|p| p.pid).collect()
    }

    /// Workers the watchdog has started to replace blocked ones.
    pub fn worker_replacements(&self) -> u64 {
        self.inner.scheduler.replacements()
    }

    /// Installs the distribution layer: from now on whatever is addressed
    /// to an external pid or a [`Dest::Remote`] goes to `remote` (see
    /// [`crate::remote`]). Once per node.
    ///
    /// # Errors
    /// The given `remote` back if one is installed already.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> Result<(), Arc<dyn Remote>> {
        self.inner.remote.set(remote)
    }

    /// Whether a distribution layer is installed.
    pub fn has_remote(&self) -> bool {
        self.inner.remote.get().is_some()
    }

    /// The node's name in a cluster and the nodes connected now, when a
    /// distribution layer is installed.
    pub fn remote_info(&self) -> Option<crate::remote::RemoteInfo> {
        self.inner.remote.get().map(|remote| remote.info())
    }

    /// For the distribution layer: the external pid `remote` links to
    /// local process `local` (Erlang's LINK from the wire).
    ///
    /// # Errors
    /// [`LinkError::NoProc`] if `local` is not alive (answer with an exit
    /// signal `noproc`).
    pub fn link_remote(&self, remote: Pid, local: Pid) -> Result<(), LinkError> {
        let added = self.inner.table.get(local).is_some_and(|proc| {
            let mut cell = proc.relations.lock();
            !cell.closed && {
                let links = &mut cell.get().links;
                if !links.contains(&remote) {
                    links.push(remote);
                }
                true
            }
        });
        if added { Ok(()) } else { Err(LinkError::NoProc(local)) }
    }

    /// For the distribution layer: the external pid `remote` removed its
    /// link to `local` (UNLINK_ID from the wire); true if there was one.
    pub fn unlink_remote(&self, remote: Pid, local: Pid) -> bool {
        self.inner.table.get(local).is_some_and(|proc| {
            proc.relations.lock().relations.as_mut().is_some_and(|r| {
                let before = r.links.len();
                r.links.retain(|l| *l != remote);
                r.links.len() != before
            })
        })
    }

    /// For the distribution layer: an exit signal from the external pid
    /// `from` to local process `to`. `link_broken` (Erlang's EXIT, or a
    /// lost connection): `from` exited while linked to `to`; the signal
    /// only acts if the link is still there, and removes it. Otherwise an
    /// explicit exit signal (EXIT2), which acts as [`Node::exit`] does.
    pub fn exit_from_remote(&self, from: Pid, to: Pid, reason: ExitReason, link_broken: bool) {
        if link_broken && !self.unlink_remote(from, to) {
            return;
        }
        self.inner.signal_exit(to, from, reason, Sched::Global);
    }

    /// For the distribution layer: the external pid `watcher` monitors
    /// local process `target`. When `target` exits (at once if it is not
    /// alive), [`Remote::down`] is called with the returned monitor.
    pub fn monitor_for_remote(&self, watcher: Pid, target: Pid) -> MonitorRef {
        self.inner.monitor(Watcher::Process(watcher), target, Sched::Global)
    }

    /// Removes a monitor made by [`Node::monitor_for_remote`]; true if it
    /// had not fired.
    pub fn demonitor_for_remote(&self, monitor: MonitorRef) -> bool {
        self.inner.demonitor(None, monitor)
    }

    /// For the distribution layer: the process an external pid that local
    /// process `watcher` monitors exited (or the connection to its node was
    /// lost): `watcher` gets `down` unless it removed the monitor.
    pub fn remote_down(&self, watcher: Pid, down: Down) {
        let active = self.inner.table.get(watcher).is_some_and(|proc| {
            proc.relations.lock().relations.as_mut().is_some_and(|r| {
                let before = r.monitoring.len();
                r.monitoring.retain(|m| m.id != down.monitor.id);
                r.monitoring.len() != before
            })
        });
        if active {
            let _ = self.inner.deliver(watcher, Envelope::Info(Message::new(down)), Sched::Global);
        }
    }
}

impl NodeInner {
    pub(crate) fn next_ref(&self) -> u64 {
        self.next_ref.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn config(&self) -> Arc<Payload> {
        self.config.read().clone()
    }

    pub(crate) fn whereis(&self, name: &str) -> Option<Pid> {
        self.registry.read().get(name).copied()
    }

    pub(crate) fn resolve(&self, dest: &Dest) -> Result<Pid, SendError> {
        match dest {
            Dest::Pid(pid) => Ok(*pid),
            Dest::Name(name) => {
                self.registry.read().get(name).copied().ok_or_else(|| SendError::NotRegistered(name.clone()))
            }
            Dest::Remote { name, node } => Err(SendError::NotRegistered(format!("{name} on {node}").into())),
        }
    }

    pub(crate) fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }

    pub(crate) fn schedule(&self, pid: Pid, sched: Sched<'_>) {
        match sched {
            Sched::Local(worker) => worker.schedule(&self.scheduler, pid),
            Sched::Global => self.scheduler.inject(pid),
        }
    }

    pub(crate) fn send(&self, to: Dest, envelope: Envelope, sched: Sched<'_>) -> Result<(), SendError> {
        self.send_as(None, to, envelope, sched)
    }

    /// As `send`, naming the sender for another node's benefit.
    pub(crate) fn send_as(
        &self,
        from: Option<Pid>,
        to: Dest,
        envelope: Envelope,
        sched: Sched<'_>,
    ) -> Result<(), SendError> {
        if let Dest::Remote { name, node } = &to {
            let not_sent = || SendError::NotRegistered(format!("{name} on {node}").into());
            let remote = self.remote().ok_or_else(not_sent)?;
            let (message, cast) = match envelope {
                Envelope::Info(message) => (message, false),
                Envelope::Cast(message) => (message, true),
                _ => return Err(not_sent()),
            };
            return remote.send_named(from, name, node, message, cast).map_err(|_| not_sent());
        }
        let pid = self.resolve(&to)?;
        if pid.is_external() {
            return self.deliver_external(from, pid, envelope).map_err(|_| SendError::NoProc(pid));
        }
        self.deliver(pid, envelope, sched).map_err(|_| SendError::NoProc(pid))
    }

    /// Hands what is addressed to an external pid to the distribution
    /// layer: plain messages and casts; a `Down` for a remote watcher.
    fn deliver_external(&self, from: Option<Pid>, pid: Pid, envelope: Envelope) -> Result<(), Envelope> {
        let Some(remote) = self.remote() else { return Err(envelope) };
        match envelope {
            Envelope::Info(message) => match message.downcast::<Down>() {
                Ok(down) => {
                    remote.down(pid, down);
                    Ok(())
                }
                Err(message) => remote.send(from, pid, message, false).map_err(Envelope::Info),
            },
            Envelope::Cast(message) => remote.send(from, pid, message, true).map_err(Envelope::Cast),
            other => Err(other),
        }
    }

    /// Pushes an envelope and queues the process if it became runnable.
    pub(crate) fn deliver(&self, pid: Pid, envelope: Envelope, sched: Sched<'_>) -> Result<(), Envelope> {
        if pid.is_external() {
            return self.deliver_external(None, pid, envelope);
        }
        let pushed = match sched {
            Sched::Local(worker) => worker.cache.push(&self.table, pid, envelope),
            Sched::Global => match self.table.get(pid) {
                Some(proc) => proc.mailbox.push(envelope),
                None => Push::Dead(envelope),
            },
        };
        match pushed {
            Push::Schedule => {
                self.schedule(pid, sched);
                Ok(())
            }
            Push::Queued => Ok(()),
            Push::Dead(envelope) => Err(envelope),
        }
    }

    /// Builds and publishes a process, scheduled but not yet queued: the
    /// caller queues it or runs it inline.
    pub(crate) fn create(
        &self,
        actor: Box<dyn Actor>,
        link_to: Option<Pid>,
        ack: Option<ReplyTo>,
    ) -> Result<Arc<Proc>, SpawnError> {
        if self.scheduler.is_shutting_down() {
            return Err(SpawnError::ShuttingDown);
        }
        let relations = link_to.map(|parent| {
            Box::new(Relations { parent: Some(parent), links: vec![parent], ..Default::default() })
        });
        let proc = self
            .table
            .insert(|pid| Arc::new(Proc::new(pid, actor, relations)))
            .ok_or(SpawnError::TooManyProcesses(self.table_capacity()))?;
        if let Some(parent) = link_to {
            let parent_alive = self.table.get(parent).is_some_and(|p| {
                let mut cell = p.relations.lock();
                !cell.closed && {
                    cell.get().links.push(proc.pid);
                    true
                }
            });
            if !parent_alive {
                // The parent died between spawn and link: the child learns
                // it as Erlang's spawn_link would tell it.
                let _ = proc.mailbox.signal(Signal::Exit(
                    ExitReason::NoProc,
                    Envelope::Info(Message::new(Exit { from: parent, reason: ExitReason::NoProc })),
                ));
            }
        }
        if let Some(ack) = ack {
            // The runtime's own envelope: not a message the process received.
            let _ = proc.mailbox.push_system(Envelope::InitAck(ack));
        }
        Ok(proc)
    }

    fn table_capacity(&self) -> usize {
        self.table.capacity()
    }

    pub(crate) fn spawn_sync(
        self: &Arc<Self>,
        actor: Box<dyn Actor>,
        link_to: Option<Pid>,
        timeout: Duration,
        sched: Sched<'_>,
    ) -> Result<Pid, SpawnError> {
        let cell = ReplyCell::new();
        let proc = self.create(actor, link_to, Some(ReplyTo::new(cell.clone())))?;
        let pid = proc.pid;
        self.run_or_schedule(&proc, &cell, sched);
        drop(proc);
        match self.wait_reply(&cell, timeout, sched) {
            Some(Ok(_)) => Ok(pid),
            Some(Err(NoReply::Exited(reason))) => Err(SpawnError::InitFailed(pid, reason)),
            Some(Err(_)) => Err(SpawnError::InitFailed(pid, ExitReason::error("init crashed"))),
            None => Err(SpawnError::Timeout(pid, timeout)),
        }
    }

    /// A process the caller just made runnable: on a worker, run its turn
    /// here and now (until `cell` is answered) instead of waking another
    /// worker; otherwise queue it.
    fn run_or_schedule(self: &Arc<Self>, proc: &Arc<Proc>, cell: &ReplyCell, sched: Sched<'_>) {
        match sched {
            Sched::Local(worker) if worker.depth() < MAX_INLINE_DEPTH => {
                worker.turn_started();
                self.run_turn(proc, worker, Some(cell));
                worker.turn_ended(&self.scheduler);
            }
            sched => self.schedule(proc.pid, sched),
        }
    }

    fn wait_reply(
        &self,
        cell: &ReplyCell,
        timeout: Duration,
        sched: Sched<'_>,
    ) -> Option<Result<Message, NoReply>> {
        if !cell.is_ready()
            && let Sched::Local(worker) = sched
        {
            worker.flush_lifo(&self.scheduler);
        }
        cell.wait(timeout)
    }

    pub(crate) fn call(
        self: &Arc<Self>,
        pid: Pid,
        request: Message,
        timeout: Duration,
        worker: Option<&WorkerLocal>,
    ) -> Result<Message, CallError> {
        if pid.is_external() {
            return self.call_remote(None, &Dest::Pid(pid), request, timeout, worker);
        }
        let sched = worker.map_or(Sched::Global, Sched::Local);
        let started = std::time::Instant::now();
        let cell = ReplyCell::new();
        let proc = self.table.get(pid).ok_or(CallError::NoProc(pid))?;
        match proc.mailbox.push(Envelope::Call(request, ReplyTo::new(cell.clone()))) {
            Push::Dead(_) => return Err(CallError::NoProc(pid)),
            Push::Queued => drop(proc),
            Push::Schedule => {
                let proc = Arc::clone(&proc);
                self.run_or_schedule(&proc, &cell, sched);
            }
        }
        // The callee may have run inline already: wait only for what is
        // left of the timeout.
        let left = timeout.saturating_sub(started.elapsed());
        match self.wait_reply(&cell, left, sched) {
            // An inline turn cannot be interrupted: a reply that took longer
            // than the timeout is still a timeout, and is discarded.
            Some(Ok(_)) if started.elapsed() > timeout => Err(CallError::Timeout(pid, timeout)),
            Some(Ok(reply)) => Ok(reply),
            Some(Err(NoReply::Exited(reason))) => Err(CallError::Exited(pid, reason)),
            Some(Err(NoReply::Crashed)) => Err(CallError::Crashed(pid)),
            Some(Err(NoReply::Dropped)) => Err(CallError::NoReply(pid)),
            None => Err(CallError::Timeout(pid, timeout)),
        }
    }

    /// Whether `to` is another node's process.
    pub(crate) fn is_remote(to: &Dest) -> bool {
        match to {
            Dest::Pid(pid) => pid.is_external(),
            Dest::Name(_) => false,
            Dest::Remote { .. } => true,
        }
    }

    /// A call to another node's process, through the installed
    /// [`Remote`]; waits here as a local call does.
    pub(crate) fn call_remote(
        &self,
        from: Option<Pid>,
        to: &Dest,
        request: Message,
        timeout: Duration,
        worker: Option<&WorkerLocal>,
    ) -> Result<Message, CallError> {
        // The pid a call error names: the target's, or one standing for
        // `{Name, Node}` (`<N.0.0>`).
        let target = match to {
            Dest::Pid(pid) => *pid,
            Dest::Name(name) => return Err(CallError::NotRegistered(name.clone())),
            Dest::Remote { name, node } => {
                let Some(_) = self.remote() else {
                    return Err(CallError::NotRegistered(format!("{name} on {node}").into()));
                };
                Pid::from_external(&crate::pid::ExternalPid {
                    node: node.clone(),
                    id: 0,
                    serial: 0,
                    creation: 0,
                })
            }
        };
        let Some(remote) = self.remote() else { return Err(CallError::NoProc(target)) };
        let sched = worker.map_or(Sched::Global, Sched::Local);
        let cell = ReplyCell::new();
        remote.call(from, to, request, ReplyTo::new(cell.clone()));
        match self.wait_reply(&cell, timeout, sched) {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(NoReply::Exited(reason))) => Err(CallError::Exited(target, reason)),
            Some(Err(NoReply::Crashed)) => Err(CallError::Crashed(target)),
            Some(Err(NoReply::Dropped)) => Err(CallError::NoReply(target)),
            None => Err(CallError::Timeout(target, timeout)),
        }
    }

    /// Runs one scheduled process (a worker's main job).
    pub(crate) fn run(self: &Arc<Self>, pid: Pid, worker: &WorkerLocal) {
        let Some(proc) = worker.cache.get(&self.table, pid) else {
            return;
        };
        worker.turn_started();
        self.run_turn(&proc, worker, None);
        worker.turn_ended(&self.scheduler);
    }

    /// One turn of `proc`: steps until idle, exit, the budget, or (inline)
    /// until `until` is answered.
    fn run_turn(self: &Arc<Self>, proc: &Arc<Proc>, worker: &WorkerLocal, until: Option<&ReplyCell>) {
        let sched = Sched::Local(worker);
        let mut held = match proc.mailbox.begin() {
            Begin::Run(actor) => Some(actor),
            Begin::Skip => return,
            Begin::Exit(reason) => return self.exit_process(proc, None, reason, sched),
        };
        for _ in 0..self.budget {
            if until.is_some_and(ReplyCell::is_ready) && proc.mailbox.try_idle(&mut held) {
                return;
            }
            let step = proc.mailbox.next(&mut held);
            let Some(actor) = held.as_mut() else { return };
            let mut ctx = Ctx::new(self, proc, worker);
            let mut run_terminate = true;
            let outcome = match step {
                Next::Idle => return,
                Next::Exit(reason) => return self.exit_process(proc, held, reason, sched),
                Next::Init => catch_unwind(AssertUnwindSafe(|| {
                    if let Err(reason) = actor.init(&mut ctx) {
                        run_terminate = false;
                        ctx.stop(reason);
                    }
                })),
                Next::Deliver(envelope) => catch_unwind(AssertUnwindSafe(|| match envelope {
                    Envelope::Info(message) => actor.handle(message, &mut ctx),
                    // The credit is given back once the handler returns.
                    Envelope::PortData(message, _credit) => actor.handle(message, &mut ctx),
                    Envelope::Cast(message) => actor.handle_cast(message, &mut ctx),
                    Envelope::Call(request, reply) => actor.handle_call(request, reply, &mut ctx),
                    Envelope::InitAck(reply) => reply.reply_with(()),
                    Envelope::System(task) => task.run(actor.as_mut()),
                })),
            };
            let reason = match outcome {
                Err(panic) => ExitReason::Panic(panic_message(panic.as_ref()).into()),
                Ok(()) => match ctx.take_stop() {
                    None => continue,
                    Some(reason) => {
                        if run_terminate {
                            let terminated =
                                catch_unwind(AssertUnwindSafe(|| actor.terminate(&reason, &mut ctx)));
                            if let Err(panic) = terminated {
                                tracing::error!(pid = %proc.pid, panic = panic_message(panic.as_ref()), "terminate panicked");
                            }
                        }
                        reason
                    }
                },
            };
            return self.exit_process(proc, held, reason, sched);
        }
        if let Some(actor) = held {
            proc.mailbox.pause(actor);
        }
        if until.is_some() {
            worker.schedule(&self.scheduler, proc.pid);
        } else {
            worker.requeue(&self.scheduler, proc.pid);
        }
    }

    /// Ends a process (see the module doc). Runs on the process's own
    /// worker, or at shutdown.
    pub(crate) fn exit_process(
        &self,
        proc: &Proc,
        actor: Option<Box<dyn Actor>>,
        reason: ExitReason,
        sched: Sched<'_>,
    ) {
        let pid = proc.pid;
        let (leftovers, parked) = proc.mailbox.close();
        let actor = actor.or(parked);
        self.table.remove(pid);
        // The state goes before anyone hears of the exit: whoever learns that
        // a process is dead (a monitor, a purge waiting for its victims) can
        // rely on its state and its hold on a code version being gone.
        // Replies the actor still holds fail with its exit reason, as a
        // gen_server caller would learn it from its monitor.
        let dropped =
            crate::message::while_exiting(&reason, || catch_unwind(AssertUnwindSafe(move || drop(actor))));
        if let Err(panic) = dropped {
            tracing::error!(%pid, panic = panic_message(panic.as_ref()), "dropping the actor panicked");
        }
        let relations = {
            let mut cell = proc.relations.lock();
            cell.closed = true;
            cell.relations.take()
        };
        match &reason {
            ExitReason::Panic(_) => tracing::error!(%pid, %reason, "process crashed"),
            reason if !reason.is_clean() => tracing::debug!(%pid, %reason, "process exited"),
            _ => {}
        }
        for envelope in leftovers {
            if let Envelope::Call(_, reply) | Envelope::InitAck(reply) = envelope {
                reply.fail(NoReply::Exited(reason.clone()));
            }
        }
        if let Some(relations) = relations {
            let relations = *relations;
            if let Some(name) = relations.name {
                let mut registry = self.registry.write();
                if registry.get(&name) == Some(&pid) {
                    registry.remove(&name);
                }
            }
            let signal = reason.propagated();
            for linked in relations.links {
                if linked.is_external() {
                    if let Some(remote) = self.remote() {
                        remote.exit(pid, linked, &signal, true);
                    }
                    continue;
                }
                if let Some(other) = self.table.get(linked)
                    && let Some(r) = other.relations.lock().relations.as_mut()
                {
                    r.links.retain(|l| *l != pid);
                }
                self.signal_exit(linked, pid, signal.clone(), sched);
            }
            for (id, watcher) in relations.monitored_by {
                if let Some(watcher) = watcher.notify(&signal) {
                    let down = Down { monitor: MonitorRef { id, target: pid }, pid, reason: signal.clone() };
                    let _ = self.deliver(watcher, Envelope::Info(Message::new(down)), sched);
                }
            }
            for monitor in relations.monitoring {
                if monitor.target.is_external() {
                    if let Some(remote) = self.remote() {
                        remote.demonitor(pid, monitor);
                    }
                    continue;
                }
                self.remove_monitor(monitor);
            }
            for port in relations.ports {
                self.ports.close_owned(port, pid);
            }
        }
    }

    pub(crate) fn signal_exit(&self, target: Pid, from: Pid, reason: ExitReason, sched: Sched<'_>) {
        if target.is_external() {
            if let Some(remote) = self.remote() {
                remote.exit(from, target, &reason, false);
            }
            return;
        }
        let Some(proc) = self.table.get(target) else {
            return;
        };
        let signal = match reason {
            ExitReason::Kill => Signal::Kill,
            reason => {
                let exit = Exit { from, reason: reason.clone() };
                Signal::Exit(reason, Envelope::Info(Message::new(exit)))
            }
        };
        if let Push::Schedule = proc.mailbox.signal(signal) {
            drop(proc);
            self.schedule(target, sched);
        }
    }

    pub(crate) fn link(&self, me: Pid, other: Pid, sched: Sched<'_>) -> Result<(), LinkError> {
        if me == other {
            return Ok(());
        }
        if other.is_external() && !me.is_external() {
            return self.link_external(me, other, sched);
        }
        let linked = match (self.table.get(me), self.table.get(other)) {
            (Some(a), Some(b)) => {
                let (first, second) = if me < other { (&a, &b) } else { (&b, &a) };
                let mut first = first.relations.lock();
                let mut second = second.relations.lock();
                if first.closed || second.closed {
                    false
                } else {
                    for (cell, peer) in [
                        (&mut first, if me < other { other } else { me }),
                        (&mut second, if me < other { me } else { other }),
                    ] {
                        let links = &mut cell.get().links;
                        if !links.contains(&peer) {
                            links.push(peer);
                        }
                    }
                    true
                }
            }
            _ => false,
        };
        if linked {
            Ok(())
        } else {
            self.signal_exit(me, other, ExitReason::NoProc, sched);
            Err(LinkError::NoProc(other))
        }
    }

    /// Links local `me` to the external pid `other`: recorded here, then
    /// told to the other node.
    fn link_external(&self, me: Pid, other: Pid, sched: Sched<'_>) -> Result<(), LinkError> {
        let Some(remote) = self.remote() else {
            self.signal_exit(me, other, ExitReason::error("noconnection"), sched);
            return Err(LinkError::NoProc(other));
        };
        let recorded = self.table.get(me).is_some_and(|proc| {
            let mut cell = proc.relations.lock();
            !cell.closed && {
                let links = &mut cell.get().links;
                if !links.contains(&other) {
                    links.push(other);
                }
                true
            }
        });
        if recorded {
            remote.link(me, other);
        }
        Ok(())
    }

    pub(crate) fn unlink(&self, me: Pid, other: Pid) {
        if other.is_external()
            && let Some(remote) = self.remote()
        {
            remote.unlink(me, other);
        }
        for (pid, peer) in [(me, other), (other, me)] {
            if let Some(proc) = self.table.get(pid)
                && let Some(r) = proc.relations.lock().relations.as_mut()
            {
                r.links.retain(|l| *l != peer);
            }
        }
    }

    pub(crate) fn monitor(&self, watcher: Watcher, target: Pid, sched: Sched<'_>) -> MonitorRef {
        let monitor = MonitorRef { id: self.next_ref(), target };
        let watcher_pid = match &watcher {
            Watcher::Process(pid) => Some(*pid),
            Watcher::Waiter(_) => None,
        };
        if target.is_external()
            && let Some(me) = watcher_pid.filter(|pid| !pid.is_external())
        {
            return self.monitor_external(me, monitor, sched);
        }
        let rejected = match self.table.get(target) {
            Some(proc) => {
                let mut cell = proc.relations.lock();
                if cell.closed {
                    Some(watcher)
                } else {
                    cell.get().monitored_by.push((monitor.id, watcher));
                    None
                }
            }
            None => Some(watcher),
        };
        match rejected {
            Some(watcher) => {
                if let Some(pid) = watcher.notify(&ExitReason::NoProc) {
                    let down = Down { monitor, pid: target, reason: ExitReason::NoProc };
                    let _ = self.deliver(pid, Envelope::Info(Message::new(down)), sched);
                }
            }
            None => {
                if let Some(proc) = watcher_pid.and_then(|pid| self.table.get(pid)) {
                    proc.relations.lock().get().monitoring.push(monitor);
                }
            }
        }
        monitor
    }

    /// Local `me` monitors an external pid: recorded here, then told to
    /// the other node, whose answer comes back through `Node::remote_down`.
    fn monitor_external(&self, me: Pid, monitor: MonitorRef, sched: Sched<'_>) -> MonitorRef {
        let recorded = self.table.get(me).is_some_and(|proc| {
            let mut cell = proc.relations.lock();
            !cell.closed && {
                cell.get().monitoring.push(monitor);
                true
            }
        });
        match self.remote() {
            Some(remote) if recorded => remote.monitor(me, monitor),
            Some(_) => {}
            None => {
                if let Some(proc) = self.table.get(me)
                    && let Some(r) = proc.relations.lock().relations.as_mut()
                {
                    r.monitoring.retain(|m| m.id != monitor.id);
                }
                let down = Down { monitor, pid: monitor.target, reason: ExitReason::error("noconnection") };
                let _ = self.deliver(me, Envelope::Info(Message::new(down)), sched);
            }
        }
        monitor
    }

    /// Removes a monitor from both ends; true if it was still active.
    pub(crate) fn demonitor(&self, watcher: Option<Pid>, monitor: MonitorRef) -> bool {
        let mut held = false;
        if let Some(proc) = watcher.and_then(|pid| self.table.get(pid))
            && let Some(r) = proc.relations.lock().relations.as_mut()
        {
            let before = r.monitoring.len();
            r.monitoring.retain(|m| m.id != monitor.id);
            held = r.monitoring.len() != before;
        }
        if monitor.target.is_external() {
            if let (Some(remote), Some(watcher)) = (self.remote(), watcher)
                && held
            {
                remote.demonitor(watcher, monitor);
            }
            return held;
        }
        self.remove_monitor(monitor)
    }

    fn remove_monitor(&self, monitor: MonitorRef) -> bool {
        let Some(target) = self.table.get(monitor.target) else {
            return false;
        };
        let mut cell = target.relations.lock();
        let Some(r) = cell.relations.as_mut() else {
            return false;
        };
        let before = r.monitored_by.len();
        r.monitored_by.retain(|(id, _)| *id != monitor.id);
        r.monitored_by.len() != before
    }

    pub(crate) fn exit_waiter(self: &Arc<Self>, pid: Pid) -> ExitWaiter {
        let cell = ReplyCell::new();
        let monitor = self.monitor(Watcher::Waiter(cell.clone()), pid, Sched::Global);
        ExitWaiter { cell, monitor, node: self.clone() }
    }

    pub(crate) fn register(&self, name: Arc<str>, pid: Pid) -> Result<(), RegisterError> {
        let mut registry = self.registry.write();
        if let Some(&holder) = registry.get(&name) {
            return Err(RegisterError::NameTaken { name, holder });
        }
        let proc = self.table.get(pid).ok_or(RegisterError::NoProc(pid))?;
        let mut cell = proc.relations.lock();
        if cell.closed {
            return Err(RegisterError::NoProc(pid));
        }
        let relations = cell.get();
        if let Some(existing) = &relations.name {
            return Err(RegisterError::AlreadyNamed { pid, name: existing.clone() });
        }
        relations.name = Some(name.clone());
        registry.insert(name, pid);
        Ok(())
    }

    pub(crate) fn unregister(&self, name: &str) -> bool {
        let Some(pid) = self.registry.write().remove(name) else {
            return false;
        };
        if let Some(proc) = self.table.get(pid)
            && let Some(r) = proc.relations.lock().relations.as_mut()
        {
            r.name = None;
        }
        true
    }

    pub(crate) fn send_after(&self, to: Pid, message: Message, delay: Duration) -> TimerRef {
        let timer = TimerRef(self.next_ref());
        self.timers.add(timer, delay, to, message);
        timer
    }

    pub(crate) fn set_trap_exit(&self, pid: Pid, on: bool) -> bool {
        self.table.get(pid).is_some_and(|p| p.mailbox.set_trap_exit(on))
    }

    pub(crate) fn suspend(&self, pid: Pid, timeout: Duration) -> Result<(), SuspendError> {
        let proc = self.table.get(pid).ok_or(SuspendError::NoProc(pid))?;
        if !proc.mailbox.suspend() {
            return Err(if self.table.get(pid).is_some() {
                SuspendError::AlreadySuspended(pid)
            } else {
                SuspendError::NoProc(pid)
            });
        } // Wait for a handler in progress: once the actor is parked, any later
        // turn sees the suspension before it handles anything.
        if !proc.mailbox.wait_parked(timeout) {
            drop(proc);
            let _ = self.resume(pid, Sched::Global);
            return Err(SuspendError::Timeout(pid, timeout));
        }
        Ok(())
    }

    pub(crate) fn resume(&self, pid: Pid, sched: Sched<'_>) -> Result<(), SuspendError> {
        let proc = self.table.get(pid).ok_or(SuspendError::NoProc(pid))?;
        match proc.mailbox.resume() {
            None => Err(SuspendError::NotSuspended(pid)),
            Some(Push::Schedule) => {
                drop(proc);
                self.schedule(pid, sched);
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn add_port(&self, owner: Pid, port: u64) -> bool {
        self.table.get(owner).is_some_and(|p| {
            let mut cell = p.relations.lock();
            !cell.closed && {
                cell.get().ports.push(port);
                true
            }
        })
    }

    pub(crate) fn remove_port(&self, owner: Pid, port: u64) {
        if let Some(proc) = self.table.get(owner)
            && let Some(r) = proc.relations.lock().relations.as_mut()
        {
            r.ports.retain(|p| *p != port);
        }
    }

    pub(crate) fn spawn_from(
        &self,
        actor: Box<dyn Actor>,
        link_to: Option<Pid>,
        sched: Sched<'_>,
    ) -> Result<Pid, SpawnError> {
        let proc = self.create(actor, link_to, None)?;
        self.schedule(proc.pid, sched);
        Ok(proc.pid)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
