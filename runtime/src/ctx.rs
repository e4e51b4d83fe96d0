//! [`Ctx`]: what a handler can do, as the process it runs in.
//!
//! Sends from a handler queue the woken process on the current worker (see
//! `scheduler.rs`), and a call or synchronous spawn runs the callee right
//! here when it was idle, so a request/reply pair costs no thread wake-up.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{CallError, LinkError, RegisterError, SendError, SpawnError, SuspendError};
use crate::message::{Envelope, Message};
use crate::node::{Dest, Node, NodeInner, Sched, into_message};
use crate::pid::{ExitReason, MonitorRef, Pid, TimerRef};
use crate::process::{Actor, Proc, Watcher};
use crate::scheduler::WorkerLocal;

/// The handle a callback gets to act as its process.
pub struct Ctx<'a> {
    node: &'a Arc<NodeInner>,
    proc: &'a Proc,
    worker: &'a WorkerLocal,
    stop: Option<ExitReason>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(node: &'a Arc<NodeInner>, proc: &'a Proc, worker: &'a WorkerLocal) -> Ctx<'a> {
        Ctx { node, proc, worker, stop: None }
    }

    pub(crate) fn take_stop(&mut self) -> Option<ExitReason> {
        self.stop.take()
    }

    pub(crate) fn sched(&self) -> Sched<'a> {
        Sched::Local(self.worker)
    }

    pub(crate) fn inner(&self) -> &'a Arc<NodeInner> {
        self.node
    }

    pub(crate) fn worker(&self) -> &'a WorkerLocal {
        self.worker
    }

    /// This process's pid (Erlang's `self()`).
    pub fn pid(&self) -> Pid {
        self.proc.pid
    }

    /// The process that spawned this one linked ([`Ctx::spawn_link`] and
    /// friends), as OTP's proc_lib records it; `None` if spawned unlinked.
    pub fn parent(&self) -> Option<Pid> {
        self.proc.relations.lock().relations.as_ref().and_then(|r| r.parent)
    }

    /// The node this process runs on.
    pub fn node(&self) -> Node {
        Node { inner: self.node.clone() }
    }

    /// Ends this process with `reason` once the current callback returns
    /// (`terminate` runs first).
    pub fn stop(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }

    /// Sends a plain message.
    ///
    /// # Errors
    /// [`SendError::NoProc`] for a dead pid (the message is dropped, as in
    /// Erlang), [`SendError::NotRegistered`] for an unknown name.
    pub fn send<T: Any + Send>(&self, to: impl Into<Dest>, message: T) -> Result<(), SendError> {
        self.node.send_as(Some(self.pid()), to.into(), Envelope::Info(into_message(message)), self.sched())
    }

    /// Sends a cast.
    ///
    /// # Errors
    /// As [`Ctx::send`].
    pub fn cast<T: Any + Send>(&self, to: impl Into<Dest>, message: T) -> Result<(), SendError> {
        self.node.send_as(Some(self.pid()), to.into(), Envelope::Cast(into_message(message)), self.sched())
    }

    /// Calls another process and blocks this one until it replies or
    /// `timeout` passes.
    ///
    /// # Errors
    /// See [`CallError`].
    pub fn call<T: Any + Send>(
        &self,
        to: impl Into<Dest>,
        request: T,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let to = to.into();
        if crate::node::NodeInner::is_remote(&to) {
            return self.node.call_remote(
                Some(self.pid()),
                &to,
                into_message(request),
                timeout,
                Some(self.worker),
            );
        }
        let pid = self.node.resolve(&to)?;
        if pid == self.pid() {
            return Err(CallError::CallingSelf(pid));
        }
        self.node.call(pid, into_message(request), timeout, Some(self.worker))
    }

    /// Spawns an unlinked process.
    ///
    /// # Errors
    /// [`SpawnError::TooManyProcesses`], [`SpawnError::ShuttingDown`].
    pub fn spawn(&self, actor: impl Actor) -> Result<Pid, SpawnError> {
        self.node.spawn_from(Box::new(actor), None, self.sched())
    }

    /// Spawns a process linked to this one.
    ///
    /// # Errors
    /// As [`Ctx::spawn`].
    pub fn spawn_link(&self, actor: impl Actor) -> Result<Pid, SpawnError> {
        self.spawn_link_boxed(Box::new(actor))
    }

    /// [`Ctx::spawn_link`] for an already boxed actor.
    ///
    /// # Errors
    /// As [`Ctx::spawn`].
    pub fn spawn_link_boxed(&self, actor: Box<dyn Actor>) -> Result<Pid, SpawnError> {
        self.node.spawn_from(actor, Some(self.pid()), self.sched())
    }

    /// Spawns a linked process and waits until its `init` succeeded
    /// (OTP's `proc_lib:start_link`).
    ///
    /// # Errors
    /// [`SpawnError::InitFailed`] with init's reason, and as [`Ctx::spawn`].
    pub fn spawn_link_sync(&self, actor: Box<dyn Actor>, timeout: Duration) -> Result<Pid, SpawnError> {
        self.node.spawn_sync(actor, Some(self.pid()), timeout, self.sched())
    }

    /// Links this process with `other` (both ways).
    ///
    /// # Errors
    /// [`LinkError::NoProc`] if `other` is gone; a `noproc` exit signal is
    /// then sent to this process too, as in Erlang.
    pub fn link(&self, other: Pid) -> Result<(), LinkError> {
        self.node.link(self.pid(), other, self.sched())
    }

    /// Removes a link (both ways).
    pub fn unlink(&self, other: Pid) {
        self.node.unlink(self.pid(), other)
    }

    /// Monitors `target`: a [`crate::Down`] arrives when it exits (at once,
    /// with `noproc`, if it is already gone).
    pub fn monitor(&self, target: Pid) -> MonitorRef {
        self.node.monitor(Watcher::Process(self.pid()), target, self.sched())
    }

    /// Removes a monitor; true if it had not fired.
    pub fn demonitor(&self, monitor: MonitorRef) -> bool {
        self.node.demonitor(Some(self.pid()), monitor)
    }

    /// Sends an exit signal to `target` from this process.
    pub fn exit(&self, target: Pid, reason: ExitReason) {
        self.node.signal_exit(target, self.pid(), reason, self.sched())
    }

    /// Turns exit trapping on or off; returns the previous setting.
    pub fn trap_exit(&self, on: bool) -> bool {
        self.node.set_trap_exit(self.pid(), on)
    }

    /// Registers this process under `name`.
    ///
    /// # Errors
    /// See [`RegisterError`].
    pub fn register(&self, name: &str) -> Result<(), RegisterError> {
        self.node.register(name.into(), self.pid())
    }

    /// Removes a registered name, whoever holds it; false if it was not
    /// registered.
    pub fn unregister(&self, name: &str) -> bool {
        self.node.unregister(name)
    }

    /// The pid registered as `name`.
    pub fn whereis(&self, name: &str) -> Option<Pid> {
        self.node.whereis(name)
    }

    /// Delivers `message` to `to` after `delay`.
    pub fn send_after<T: Any + Send>(&self, to: Pid, message: T, delay: Duration) -> TimerRef {
        self.node.send_after(to, into_message(message), delay)
    }

    /// Cancels a timer; true if it had not fired yet.
    pub fn cancel_timer(&self, timer: TimerRef) -> bool {
        self.node.timers.cancel(timer)
    }

    /// Blocks this process until `pid` exits or `timeout` passes; the exit
    /// reason, or `None` on timeout. Used by supervisors to wait for a child
    /// they told to stop.
    pub fn wait_exit(&self, pid: Pid, timeout: Duration) -> Option<ExitReason> {
        let waiter = self.node.exit_waiter(pid);
        self.worker.flush_lifo(&self.node.scheduler);
        waiter.wait(timeout)
    }

    /// Suspends another process (see [`Node::suspend`]).
    ///
    /// # Errors
    /// As [`Node::suspend`], and [`SuspendError::SuspendingSelf`].
    pub fn suspend(&self, pid: Pid, timeout: Duration) -> Result<(), SuspendError> {
        if pid == self.pid() {
            return Err(SuspendError::SuspendingSelf(pid));
        }
        self.worker.flush_lifo(&self.node.scheduler);
        self.node.suspend(pid, timeout)
    }

    /// Resumes a suspended process.
    ///
    /// # Errors
    /// As [`Node::resume`].
    pub fn resume(&self, pid: Pid) -> Result<(), SuspendError> {
        self.node.resume(pid, self.sched())
    }

    /// Sends a plain [`Message`] (already wrapped).
    ///
    /// # Errors
    /// As [`Ctx::send`].
    pub fn send_message(&self, to: impl Into<Dest>, message: Message) -> Result<(), SendError> {
        self.node.send_as(Some(self.pid()), to.into(), Envelope::Info(message), self.sched())
    }
}
