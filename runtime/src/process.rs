//! A process: what it runs ([`Actor`]) and what the runtime keeps for it.
//!
//! # Fields and who touches them
//!
//! - `pid`: set at spawn, never changes.
//! - `mailbox`: any thread pushes; only the worker running the process pops.
//!   Its lock also guards the scheduling flags and parks the actor between
//!   turns (see `mailbox.rs`): the worker that runs a turn owns the actor.
//! - `relations`: links, monitors, registered name, owned ports. Locked
//!   briefly by whoever links, monitors or registers; `closed` is set once,
//!   by the exiting process, and is never unset: after that, linking or
//!   monitoring it answers `noproc`.
//!
//! Lock order, when two are held: two `relations` in pid order; a
//! `mailbox` lock is never held while taking another lock.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::ctx::Ctx;
use crate::mailbox::Mailbox;
use crate::message::{Envelope, Message, ReplyCell, ReplyTo};
use crate::pid::{ExitReason, MonitorRef, Pid};

/// The code a process runs: a gen_server-like set of callbacks. Every
/// callback runs on a scheduler worker, one at a time per process, with
/// exclusive access to `self`. A panic in any of them crashes only this
/// process, with [`ExitReason::Panic`].
pub trait Actor: Send + 'static {
    /// Runs in the new process before any message. An error ends the process
    /// with that reason (and fails a synchronous spawn with it).
    fn init(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ExitReason> {
        let _ = ctx;
        Ok(())
    }

    /// A plain message: `send`, timers, ports, and, while trapping exits or
    /// monitoring, [`crate::Exit`] and [`crate::Down`].
    fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>);

    /// A `cast`. By default handled like a plain message.
    fn handle_cast(&mut self, message: Message, ctx: &mut Ctx<'_>) {
        self.handle(message, ctx)
    }

    /// A `call`. Answer through `reply`, now or later; dropping it unanswered
    /// fails the caller's call. By default calls are refused that way.
    fn handle_call(&mut self, request: Message, reply: ReplyTo, ctx: &mut Ctx<'_>) {
        let _ = (request, ctx);
        drop(reply);
    }

    /// Runs when the process stops itself ([`Ctx::stop`]), not when it is
    /// killed or crashes.
    fn terminate(&mut self, reason: &ExitReason, ctx: &mut Ctx<'_>) {
        let _ = (reason, ctx);
    }

    /// The module process inside, if this actor is one (the code server's
    /// way to migrate a suspended process). Not for other actors.
    #[doc(hidden)]
    fn as_module_process(&mut self) -> Option<&mut crate::module::ModuleProcess> {
        None
    }
}

/// An actor made of one closure that handles plain messages and casts.
pub fn actor_fn<F>(handler: F) -> impl Actor
where
    F: FnMut(Message, &mut Ctx<'_>) + Send + 'static,
{
    struct FnActor<F>(F);
    impl<F: FnMut(Message, &mut Ctx<'_>) + Send + 'static> Actor for FnActor<F> {
        fn handle(&mut self, message: Message, ctx: &mut Ctx<'_>) {
            (self.0)(message, ctx)
        }
    }
    FnActor(handler)
}

pub(crate) struct Proc {
    pub(crate) pid: Pid,
    pub(crate) mailbox: Mailbox<Envelope, Box<dyn Actor>>,
    pub(crate) relations: Mutex<RelationsCell>,
}

impl Proc {
    pub(crate) fn new(pid: Pid, actor: Box<dyn Actor>, relations: Option<Box<Relations>>) -> Proc {
        Proc {
            pid,
            mailbox: Mailbox::new(actor),
            relations: Mutex::new(RelationsCell { closed: false, relations }),
        }
    }
}

/// Relations of a process, allocated only once it has any (most idle
/// processes have none, which keeps a process at a few hundred bytes).
pub(crate) struct RelationsCell {
    pub(crate) closed: bool,
    pub(crate) relations: Option<Box<Relations>>,
}

impl RelationsCell {
    pub(crate) fn get(&mut self) -> &mut Relations {
        self.relations.get_or_insert_with(Default::default)
    }
}

#[derive(Default)]
pub(crate) struct Relations {
    /// The process that spawned this one linked, if any (OTP's parent).
    pub(crate) parent: Option<Pid>,
    pub(crate) links: Vec<Pid>,
    /// Monitors on this process.
    pub(crate) monitored_by: Vec<(u64, Watcher)>,
    /// Monitors this process holds on others.
    pub(crate) monitoring: Vec<MonitorRef>,
    pub(crate) name: Option<Arc<str>>,
    /// Ports this process owns; they close when it exits.
    pub(crate) ports: Vec<u64>,
}

/// Who learns of a monitored process's exit.
pub(crate) enum Watcher {
    /// A process, by a `Down` message.
    Process(Pid),
    /// A thread or handler blocked in `ExitWaiter::wait`.
    Waiter(Arc<ReplyCell>),
}

impl Watcher {
    pub(crate) fn notify(self, reason: &ExitReason) -> Option<Pid> {
        match self {
            Watcher::Process(pid) => Some(pid),
            Watcher::Waiter(cell) => {
                ReplyTo::new(cell).reply_with(reason.clone());
                None
            }
        }
    }
}
