//! Messages, the system messages the runtime delivers, and call replies.
//!
//! A [`Message`] is any `Send` value, boxed. Calls carry a [`ReplyTo`] whose
//! reply goes straight into a one-shot cell the caller waits on, never
//! through the caller's mailbox: a reply that arrives after the caller gave
//! up is dropped, not left behind as a stray message.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::pid::{ExitReason, MonitorRef, Pid};

/// A message: any `Send` value. Handlers take it apart with
/// [`Message::downcast`] or [`Message::downcast_ref`].
pub struct Message(Box<dyn Any + Send>);

impl Message {
    /// Wraps a value.
    pub fn new<T: Any + Send>(value: T) -> Message {
        Message(Box::new(value))
    }

    /// Whether the message holds a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.0.is::<T>()
    }

    /// Takes the `T` out, or gives the message back unchanged.
    pub fn downcast<T: Any>(self) -> Result<T, Message> {
        match self.0.downcast::<T>() {
            Ok(value) => Ok(*value),
            Err(other) => Err(Message(other)),
        }
    }

    /// Borrows the `T` inside, if that is what it holds.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Message { .. }")
    }
}

/// Delivered to a process that traps exits when a linked process exits or
/// someone sends it an exit signal (Erlang's `{'EXIT', From, Reason}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Who sent the signal ([`Pid::NODE`] for the node's own API).
    pub from: Pid,
    /// The reason it carries.
    pub reason: ExitReason,
}

/// Delivered to a monitoring process when the monitored one exits
/// (Erlang's `{'DOWN', Ref, process, Pid, Reason}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    /// The monitor that fired.
    pub monitor: MonitorRef,
    /// The process that exited.
    pub pid: Pid,
    /// Its exit reason; [`ExitReason::NoProc`] if it was already gone.
    pub reason: ExitReason,
}

/// What sits in a mailbox.
pub(crate) enum Envelope {
    /// A plain message (`send`, timers, ports, system messages).
    Info(Message),
    /// A port's `Data` event, counted as unhandled (for the port's
    /// backpressure) until the handler returns.
    PortData(Message, crate::port::PortCredit),
    /// A `cast`: fire-and-forget request.
    Cast(Message),
    /// A `call`: request with a one-shot reply cell.
    Call(Message, ReplyTo),
    /// Acknowledges a synchronous spawn once init has succeeded; if the
    /// process dies first the ack fails with the exit reason.
    InitAck(ReplyTo),
    /// Work of the runtime's own, run with the actor in hand (see
    /// `system.rs`).
    System(crate::system::QueuedTask),
}

/// Why a call got no reply; turned into a `CallError` by the caller, who
/// knows the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoReply {
    /// The callee exited before replying, with this reason.
    Exited(ExitReason),
    /// The callee's handler panicked while it held the request.
    Crashed,
    /// The callee dropped the request without replying.
    Dropped,
}

enum Slot {
    Waiting,
    Done(Result<Message, NoReply>),
    Abandoned,
}

/// The one-shot cell a caller waits on.
pub(crate) struct ReplyCell {
    /// Written once by the replier (Release) after `slot` holds the result;
    /// the waiter spins on it before parking.
    ready: AtomicBool,
    slot: Mutex<Slot>,
    waiter: Thread,
}

/// How long a waiter spins (then yields, so that a replier waiting for
/// a core gets this one) before it parks: waking a parked thread costs
/// about 10 µs on this kind of machine, a round trip through a busy node far
/// less.
const SPIN: Duration = Duration::from_micros(30);

impl ReplyCell {
    /// A cell to be waited on by the current thread.
    pub(crate) fn new() -> Arc<ReplyCell> {
        Arc::new(ReplyCell {
            ready: AtomicBool::new(false),
            slot: Mutex::new(Slot::Waiting),
            waiter: thread::current(),
        })
    }

    fn complete(&self, result: Result<Message, NoReply>) {
        let mut slot = self.slot.lock();
        if let Slot::Waiting = *slot {
            *slot = Slot::Done(result);
            drop(slot);
            self.ready.store(true, Ordering::Release);
            self.waiter.unpark();
        }
        // Abandoned: the caller timed out; the late reply is discarded here.
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<Result<Message, NoReply>> {
        let mut slot = self.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Abandoned) {
            Slot::Done(result) => Some(result),
            Slot::Waiting | Slot::Abandoned => None,
        }
    }

    /// Waits for the result until `timeout`; `None` on timeout, after which
    /// any late result is discarded.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Result<Message, NoReply>> {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let mut spins = 0u32;
        loop {
            if self.is_ready() {
                return self.take();
            }
            spins += 1;
            if spins >= 64 && start.elapsed() >= SPIN.min(timeout) {
                break;
            }
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // The replier may need this core (a busy machine).
                thread::yield_now();
            }
        }
        loop {
            if self.is_ready() {
                return self.take();
            }
            let now = Instant::now();
            match deadline {
                Some(deadline) if now >= deadline => return self.take(),
                Some(deadline) => thread::park_timeout(deadline - now),
                None => thread::park(),
            }
        }
    }
}

/// The right to answer one call. Reply with [`ReplyTo::reply`], now or later
/// from any process or thread. Dropping it unanswered fails the call.
pub struct ReplyTo {
    cell: Option<Arc<ReplyCell>>,
    /// Instead of a waiting caller: run with the reply (`None`: none will
    /// come), on the thread that answers (`Node::call_then`).
    then: Option<ReplyCallback>,
}

/// What `Node::call_then` runs with a call's reply.
pub(crate) type ReplyCallback = Box<dyn FnOnce(Option<Message>) + Send>;

impl ReplyTo {
    pub(crate) fn new(cell: Arc<ReplyCell>) -> ReplyTo {
        ReplyTo { cell: Some(cell), then: None }
    }

    pub(crate) fn then(callback: ReplyCallback) -> ReplyTo {
        ReplyTo { cell: None, then: Some(callback) }
    }

    /// Sends the reply. If the caller already timed out it is discarded.
    pub fn reply(mut self, reply: Message) {
        if let Some(cell) = self.cell.take() {
            cell.complete(Ok(reply));
        } else if let Some(then) = self.then.take() {
            then(Some(reply));
        }
    }

    /// Convenience for `reply(Message::new(value))`.
    pub fn reply_with<T: Any + Send>(self, value: T) {
        self.reply(Message::new(value))
    }

    /// Forgets the caller without telling it (its send failed; it knows).
    pub(crate) fn disarm(&mut self) {
        self.cell = None;
        self.then = None;
    }

    pub(crate) fn fail(mut self, why: NoReply) {
        if let Some(cell) = self.cell.take() {
            cell.complete(Err(why));
        } else if let Some(then) = self.then.take() {
            then(None);
        }
    }
}

thread_local! {
    /// The exit reason of the process whose actor this thread is dropping.
    static EXITING: std::cell::RefCell<Option<ExitReason>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (which drops an exiting process's actor) so that any `ReplyTo`
/// dropped inside fails its call with `reason`.
pub(crate) fn while_exiting<R>(reason: &ExitReason, f: impl FnOnce() -> R) -> R {
    let previous = EXITING.with(|e| e.replace(Some(reason.clone())));
    let result = f();
    EXITING.with(|e| *e.borrow_mut() = previous);
    result
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            let why = if thread::panicking() {
                NoReply::Crashed
            } else {
                EXITING.with(|e| e.borrow().clone()).map_or(NoReply::Dropped, NoReply::Exited)
            };
            cell.complete(Err(why));
        } else if let Some(then) = self.then.take() {
            then(None);
        }
    }
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyTo { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_reply_is_discarded_after_timeout() {
        let cell = ReplyCell::new();
        let reply = ReplyTo::new(cell.clone());
        assert!(cell.wait(Duration::from_millis(5)).is_none());
        reply.reply_with(1u32);
        assert!(cell.take().is_none(), "a late reply must not be kept");
    }

    #[test]
    fn dropped_reply_fails_the_call() {
        let cell = ReplyCell::new();
        drop(ReplyTo::new(cell.clone()));
        assert_eq!(cell.wait(Duration::from_secs(1)).unwrap().unwrap_err(), NoReply::Dropped);
    }

    #[test]
    fn reply_from_another_thread_wakes_a_parked_waiter() {
        let cell = ReplyCell::new();
        let reply = ReplyTo::new(cell.clone());
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            reply.reply_with(7u64);
        });
        let got = cell.wait(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(got.downcast::<u64>().unwrap(), 7);
        t.join().unwrap();
    }
}
