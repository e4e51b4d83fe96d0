//! The mailbox and the scheduling hand-off: the one place that decides when a
//! process must be put on a run queue.
//!
//! # Protocol
//!
//! All state lives under one lock, so every rule below is checked and
//! changed atomically with the queue itself:
//!
//! - `scheduled` is true while the process sits on a run queue or a worker
//!   runs it. Exactly one party turns it from false to true (a sender, a
//!   resume, an exit signal) and that party, and only it, queues the process.
//!   So a process is never queued twice and never runs on two workers.
//! - The running worker turns `scheduled` false only in [`Mailbox::next`],
//!   at the moment it finds nothing to do. A message pushed after that sees
//!   `scheduled == false` and queues the process again: no wake-up is lost.
//! - `suspended`: messages keep arriving and are kept; [`Mailbox::next`]
//!   hands out none of them until [`Mailbox::resume`]. A pending exit is
//!   still handed out, so a suspended process can be killed.
//! - `pending_exit` holds a fatal exit signal (kill, or an untrapped
//!   non-normal exit). It overtakes queued messages: the process dies at the
//!   start of its next step, as an Erlang process does on a signal.
//! - `dead` is never unset. After [`Mailbox::close`] every push is refused and
//!   gives the envelope back to the sender.
//! - `actor` (the process's code and state) is here while nobody runs the
//!   process. A worker takes it at the start of a turn ([`Mailbox::begin`])
//!   and puts it back in the same critical section that turns `scheduled`
//!   off ([`Mailbox::next`] on `Idle`), so one lock serves both the queue and
//!   the exclusive right to run the process. `suspend` waits until it is
//!   back; `borrow` lends it out while the process is suspended.

use std::collections::VecDeque;

use crate::pid::ExitReason;
use crate::sync::Mutex;

pub(crate) struct Mailbox<T, A> {
    state: Mutex<State<T, A>>,
}

struct State<T, A> {
    queue: VecDeque<T>,
    actor: Option<A>,
    scheduled: bool,
    suspended: bool,
    trap_exit: bool,
    initialized: bool,
    dead: bool,
    pending_exit: Option<ExitReason>,
    /// Messages ever queued here (what an upgrade report counts).
    received: u64,
    /// System tasks ever queued here.
    system: u64,
    /// Envelopes ever taken out to be handled.
    taken: u64,
}

/// What has gone through a mailbox, for accounting across an upgrade: at
/// any moment `received + system == queued + taken` plus whatever a
/// process exit dropped, so two readings of a live process show whether
/// anything went missing in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxCounts {
    /// Envelopes waiting now (messages and system tasks).
    pub queued: usize,
    /// Messages ever queued (sends, casts, calls, exit signals as messages;
    /// not the runtime's own envelopes such as a spawn's acknowledgement).
    pub received: u64,
    /// The runtime's own envelopes ever queued (system tasks, spawn
    /// acknowledgements).
    pub system: u64,
    /// Envelopes ever taken out to be handled.
    pub taken: u64,
}

impl MailboxCounts {
    /// Envelopes that arrived between `earlier` and this reading but are
    /// neither waiting nor handled: 0 unless something dropped them.
    pub fn missing_since(&self, earlier: &MailboxCounts) -> u64 {
        let arrived = (earlier.queued as u64)
            .saturating_add(self.received.saturating_sub(earlier.received))
            .saturating_add(self.system.saturating_sub(earlier.system));
        arrived.saturating_sub((self.queued as u64).saturating_add(self.taken.saturating_sub(earlier.taken)))
    }
}

/// What [`Mailbox::glance`] shows.
pub(crate) struct Glance<'a, A> {
    pub(crate) queued: usize,
    pub(crate) capacity: usize,
    pub(crate) taken: u64,
    pub(crate) actor: Option<&'a mut A>,
}

/// What a push did.
#[must_use]
pub(crate) enum Push<T> {
    /// The caller turned `scheduled` on and must queue the process.
    Schedule,
    /// Queued (or ignored, for a normal exit signal); nothing more to do.
    Queued,
    /// The process is dead; here is the envelope back.
    Dead(T),
}

/// The next thing the running worker must do.
pub(crate) enum Next<T> {
    /// Run the process's init (first step of a new process).
    Init,
    /// Handle this envelope.
    Deliver(T),
    /// Terminate with this reason.
    Exit(ExitReason),
    /// Nothing to do; `scheduled` is now false.
    Idle,
}

/// How a turn starts.
pub(crate) enum Begin<A> {
    /// Run with this actor.
    Run(A),
    /// The actor is lent out (the process is suspended and being migrated);
    /// nothing to do, and `scheduled` is now false.
    Skip,
    /// Terminate now, without the actor (it is lent out, or gone).
    Exit(ExitReason),
}

/// How an exit signal is delivered.
pub(crate) enum Signal<T> {
    /// `exit(pid, kill)`: cannot be trapped.
    Kill,
    /// Any other reason; `as_message` builds the `Exit` message for a process
    /// that traps exits.
    Exit(ExitReason, T),
}

impl<T, A> Mailbox<T, A> {
    /// A mailbox for a new process: scheduled (its spawner queues it to run
    /// init) and not yet initialized.
    pub(crate) fn new(actor: A) -> Mailbox<T, A> {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                actor: Some(actor),
                scheduled: true,
                suspended: false,
                trap_exit: false,
                initialized: false,
                dead: false,
                pending_exit: None,
                received: 0,
                system: 0,
                taken: 0,
            }),
        }
    }

    pub(crate) fn push(&self, envelope: T) -> Push<T> {
        self.enqueue(envelope, false)
    }

    /// Queues work of the runtime's own (a system task, a spawn's
    /// acknowledgement): like `push`, but not counted as a received message.
    pub(crate) fn push_system(&self, envelope: T) -> Push<T> {
        self.enqueue(envelope, true)
    }

    #[inline]
    fn enqueue(&self, envelope: T, system: bool) -> Push<T> {
        let mut s = self.state.lock();
        if s.dead {
            return Push::Dead(envelope);
        }
        s.queue.push_back(envelope);
        if system {
            s.system += 1;
        } else {
            s.received += 1;
        }
        s.claim(false)
    }

    /// Delivers an exit signal with Erlang's rules: kill always kills; a
    /// trapping process gets a message; `normal` is otherwise ignored; any
    /// other reason kills.
    pub(crate) fn signal(&self, signal: Signal<T>) -> Push<T> {
        let mut s = self.state.lock();
        if s.dead {
            return match signal {
                Signal::Kill => Push::Queued,
                Signal::Exit(_, message) => Push::Dead(message),
            };
        }
        match signal {
            Signal::Kill => {
                s.pending_exit = Some(ExitReason::Killed);
                s.claim(true)
            }
            Signal::Exit(_, message) if s.trap_exit => {
                s.queue.push_back(message);
                s.received += 1;
                s.claim(false)
            }
            Signal::Exit(ExitReason::Normal, _) => Push::Queued,
            Signal::Exit(reason, _) => {
                if s.pending_exit.is_none() {
                    s.pending_exit = Some(reason);
                }
                s.claim(true)
            }
        }
    }

    /// Starts a turn of a scheduled process: takes its actor.
    pub(crate) fn begin(&self) -> Begin<A> {
        let mut s = self.state.lock();
        match s.actor.take() {
            Some(actor) => Begin::Run(actor),
            None => match s.pending_exit.take() {
                Some(reason) => Begin::Exit(reason),
                None => {
                    s.scheduled = false;
                    Begin::Skip
                }
            },
        }
    }

    /// Takes the next step for the running worker, which holds the actor in
    /// `held`. On `Idle` the actor goes back into the mailbox and the process
    /// is no longer scheduled.
    pub(crate) fn next(&self, held: &mut Option<A>) -> Next<T> {
        let mut s = self.state.lock();
        if let Some(reason) = s.pending_exit.take() {
            return Next::Exit(reason);
        }
        if !s.initialized {
            s.initialized = true;
            return Next::Init;
        }
        if !s.suspended
            && let Some(envelope) = s.queue.pop_front()
        {
            s.taken += 1;
            return Next::Deliver(envelope);
        }
        s.actor = held.take();
        s.scheduled = false;
        Next::Idle
    }

    /// Ends a turn that used up its budget: the actor goes back, the process
    /// stays scheduled and the caller must queue it again.
    pub(crate) fn pause(&self, actor: A) {
        self.state.lock().actor = Some(actor);
    }

    /// Waits (polling, it is rare and short) until no worker holds the
    /// actor, so no handler is running; false on timeout. True for a dead
    /// process too.
    pub(crate) fn wait_parked(&self, timeout: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        let mut round = 0u32;
        loop {
            {
                let s = self.state.lock();
                if s.actor.is_some() || s.dead {
                    return true;
                }
            }
            if started.elapsed() >= timeout {
                return false;
            }
            round += 1;
            if round < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }

    /// Lends the actor of a suspended process out (for inspection or
    /// migration); `None` if not suspended, dead, or held by a worker.
    pub(crate) fn borrow(&self) -> Option<A> {
        let mut s = self.state.lock();
        if !s.suspended || s.dead {
            return None;
        }
        s.actor.take()
    }

    /// Returns a lent actor. `Schedule` if an exit signal came meanwhile and
    /// the process must run to act on it; `Dead` gives the actor back if the
    /// process died meanwhile (the caller drops it).
    pub(crate) fn put_back(&self, actor: A) -> Result<Push<T>, A> {
        let mut s = self.state.lock();
        if s.dead {
            return Err(actor);
        }
        s.actor = Some(actor);
        // A worker that found the actor lent out went idle: whoever resumed
        // the process or sent to it meanwhile may have had nobody to queue it.
        if s.pending_exit.is_some() {
            Ok(s.claim(true))
        } else if !s.suspended && (!s.queue.is_empty() || !s.initialized) {
            Ok(s.claim(false))
        } else {
            Ok(Push::Queued)
        }
    }

    /// For a worker that wants to end a turn early: goes idle (and returns
    /// true) only if there is nothing to do; otherwise the process stays
    /// scheduled and the caller must queue it.
    pub(crate) fn try_idle(&self, held: &mut Option<A>) -> bool {
        let mut s = self.state.lock();
        let has_work = s.pending_exit.is_some() || !s.initialized || (!s.suspended && !s.queue.is_empty());
        if !has_work {
            s.actor = held.take();
            s.scheduled = false;
        }
        !has_work
    }

    /// Stops handing out messages. Returns false if the process is dead or
    /// was already suspended.
    pub(crate) fn suspend(&self) -> bool {
        let mut s = self.state.lock();
        if s.dead || s.suspended {
            return false;
        }
        s.suspended = true;
        true
    }

    /// Hands out messages again; `Schedule` when the process has work and
    /// must be queued. `None` if it was not suspended (or is dead).
    pub(crate) fn resume(&self) -> Option<Push<T>> {
        let mut s = self.state.lock();
        if s.dead || !s.suspended {
            return None;
        }
        s.suspended = false;
        if s.queue.is_empty() && s.initialized { Some(Push::Queued) } else { Some(s.claim(false)) }
    }

    pub(crate) fn is_suspended(&self) -> bool {
        self.state.lock().suspended
    }

    /// Sets the trap_exit flag, returning the old value.
    pub(crate) fn set_trap_exit(&self, on: bool) -> bool {
        std::mem::replace(&mut self.state.lock().trap_exit, on)
    }

    pub(crate) fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// A glance at the mailbox for the observer, under its lock: `look`
    /// gets the queue's length and allocated capacity, the envelopes ever
    /// taken out, and the actor when it is parked here (not while a worker
    /// runs it or it is lent out). `look` must be quick: every sender to
    /// this process waits for it.
    pub(crate) fn glance<R>(&self, look: impl FnOnce(Glance<'_, A>) -> R) -> R {
        let mut s = self.state.lock();
        let s = &mut *s;
        look(Glance {
            queued: s.queue.len(),
            capacity: s.queue.capacity(),
            taken: s.taken,
            actor: s.actor.as_mut(),
        })
    }

    /// What has gone through this mailbox.
    pub(crate) fn counts(&self) -> MailboxCounts {
        let s = self.state.lock();
        MailboxCounts { queued: s.queue.len(), received: s.received, system: s.system, taken: s.taken }
    }

    /// Marks the process dead and returns what was left in the queue, and
    /// the actor if it was parked here.
    pub(crate) fn close(&self) -> (VecDeque<T>, Option<A>) {
        let mut s = self.state.lock();
        s.dead = true;
        s.pending_exit = None;
        (std::mem::take(&mut s.queue), s.actor.take())
    }
}

impl<T, A> State<T, A> {
    /// Turns `scheduled` on if the process can run now (`urgent` ignores a
    /// suspension, for exit signals).
    fn claim(&mut self, urgent: bool) -> Push<T> {
        if self.scheduled || (self.suspended && !urgent) {
            Push::Queued
        } else {
            self.scheduled = true;
            Push::Schedule
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    type Mb = Mailbox<u32, ()>;

    /// Runs init and goes idle, as a first turn does.
    fn idle(mb: &Mb) {
        let Begin::Run(()) = mb.begin() else { panic!("actor missing") };
        assert!(matches!(mb.next(&mut Some(())), Next::Init));
        assert!(matches!(mb.next(&mut Some(())), Next::Idle));
    }

    fn next(mb: &Mb) -> Next<u32> {
        mb.next(&mut Some(()))
    }

    #[test]
    fn a_push_to_an_idle_process_schedules_it_once() {
        let mb: Mb = Mailbox::new(());
        idle(&mb);
        assert!(matches!(mb.push(1), Push::Schedule));
        assert!(matches!(mb.push(2), Push::Queued));
        assert!(matches!(next(&mb), Next::Deliver(1)));
        assert!(matches!(next(&mb), Next::Deliver(2)));
        assert!(matches!(next(&mb), Next::Idle));
        assert!(matches!(mb.push(3), Push::Schedule));
    }

    #[test]
    fn suspended_mailbox_keeps_messages_until_resume() {
        let mb: Mb = Mailbox::new(());
        idle(&mb);
        assert!(mb.suspend());
        assert!(matches!(mb.push(1), Push::Queued));
        assert!(matches!(mb.push(2), Push::Queued));
        assert!(matches!(mb.resume(), Some(Push::Schedule)));
        assert!(matches!(next(&mb), Next::Deliver(1)));
        assert!(matches!(next(&mb), Next::Deliver(2)));
    }

    #[test]
    fn a_fatal_signal_overtakes_suspension_and_queue() {
        let mb: Mb = Mailbox::new(());
        idle(&mb);
        assert!(mb.suspend());
        assert!(matches!(mb.push(1), Push::Queued));
        assert!(matches!(mb.signal(Signal::Exit(ExitReason::error("boom"), 9)), Push::Schedule));
        assert!(matches!(next(&mb), Next::Exit(ExitReason::Error(_))));
    }

    #[test]
    fn trapped_exits_become_messages_and_normal_is_ignored() {
        let mb: Mb = Mailbox::new(());
        idle(&mb);
        assert!(matches!(mb.signal(Signal::Exit(ExitReason::Normal, 5)), Push::Queued));
        assert!(matches!(next(&mb), Next::Idle));
        mb.set_trap_exit(true);
        assert!(matches!(mb.signal(Signal::Exit(ExitReason::Normal, 5)), Push::Schedule));
        assert!(matches!(next(&mb), Next::Deliver(5)));
        assert!(matches!(next(&mb), Next::Idle));
        assert!(matches!(mb.signal(Signal::Kill), Push::Schedule));
        assert!(matches!(next(&mb), Next::Exit(ExitReason::Killed)));
    }

    #[test]
    fn a_closed_mailbox_refuses_and_returns_envelopes() {
        let mb: Mb = Mailbox::new(());
        assert!(!matches!(mb.push(1), Push::Dead(_)));
        assert_eq!(mb.close().0.len(), 1);
        assert!(matches!(mb.push(2), Push::Dead(2)));
    }

    #[test]
    fn the_actor_is_parked_while_idle_and_lent_only_when_suspended() {
        let mb: Mb = Mailbox::new(());
        idle(&mb);
        assert!(mb.borrow().is_none(), "not suspended: no lending");
        assert!(mb.suspend());
        mb.borrow().expect("suspended and parked");
        assert!(!mb.wait_parked(std::time::Duration::from_millis(1)));
        assert!(matches!(mb.signal(Signal::Kill), Push::Schedule));
        assert!(matches!(mb.begin(), Begin::Exit(ExitReason::Killed)));
        assert!(matches!(mb.put_back(()), Ok(Push::Queued)));
        assert!(mb.wait_parked(std::time::Duration::from_millis(1)));
    }
}

/// Model checks of the hand-off: run with
/// `RUSTFLAGS="--cfg loom" cargo test -p relive-runtime --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    /// A worker's turn: handle until idle. Returns how many it handled.
    fn run(mb: &Mailbox<u32, ()>, running: &AtomicUsize) -> usize {
        let mut held = match mb.begin() {
            Begin::Run(actor) => Some(actor),
            _ => panic!("a scheduled process had no actor"),
        };
        let mut handled = 0;
        loop {
            let step = mb.next(&mut held);
            if let Next::Idle = step {
                // The actor is back and the process may already be claimed
                // by another worker: this one must not touch it again.
                break;
            }
            assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "process ran on two workers");
            match step {
                Next::Init => {}
                Next::Deliver(_) => handled += 1,
                Next::Exit(_) | Next::Idle => unreachable!(),
            }
            running.fetch_sub(1, Ordering::SeqCst);
        }
        handled
    }

    #[test]
    fn loom_no_lost_wakeup_and_no_double_scheduling() {
        loom::model(|| {
            let mb = Arc::new(Mailbox::<u32, ()>::new(()));
            let running = Arc::new(AtomicUsize::new(0));
            let handled = Arc::new(AtomicUsize::new(0));
            // The spawner scheduled the process; a worker runs init.
            handled.fetch_add(run(&mb, &running), Ordering::SeqCst);
            let senders: Vec<_> = (0..2)
                .map(|i| {
                    let (mb, running, handled) = (mb.clone(), running.clone(), handled.clone());
                    thread::spawn(move || {
                        // Whoever claims the schedule runs the turn, as a worker would.
                        if let Push::Schedule = mb.push(i) {
                            handled.fetch_add(run(&mb, &running), Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for s in senders {
                s.join().unwrap();
            }
            assert_eq!(handled.load(Ordering::SeqCst), 2, "a message was left unhandled");
        });
    }

    #[test]
    fn loom_messages_sent_while_suspended_are_handled_after_resume() {
        loom::model(|| {
            let mb = Arc::new(Mailbox::<u32, ()>::new(()));
            let running = Arc::new(AtomicUsize::new(0));
            let handled = Arc::new(AtomicUsize::new(0));
            run(&mb, &running);
            assert!(mb.suspend());
            let sender = {
                let (mb, running, handled) = (mb.clone(), running.clone(), handled.clone());
                thread::spawn(move || {
                    if let Push::Schedule = mb.push(1) {
                        handled.fetch_add(run(&mb, &running), Ordering::SeqCst);
                    }
                })
            };
            let resumer = {
                let (mb, running, handled) = (mb.clone(), running.clone(), handled.clone());
                thread::spawn(move || {
                    if let Some(Push::Schedule) = mb.resume() {
                        handled.fetch_add(run(&mb, &running), Ordering::SeqCst);
                    }
                })
            };
            sender.join().unwrap();
            resumer.join().unwrap();
            assert_eq!(handled.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn loom_kill_reaches_a_suspended_process() {
        loom::model(|| {
            let mb = Arc::new(Mailbox::<u32, ()>::new(()));
            let running = Arc::new(AtomicUsize::new(0));
            run(&mb, &running);
            assert!(mb.suspend());
            let killer = {
                let mb = mb.clone();
                thread::spawn(move || matches!(mb.signal(Signal::Kill), Push::Schedule))
            };
            let pusher = {
                let mb = mb.clone();
                thread::spawn(move || matches!(mb.push(1), Push::Schedule))
            };
            let killer_scheduled = killer.join().unwrap();
            let pusher_scheduled = pusher.join().unwrap();
            assert!(killer_scheduled && !pusher_scheduled, "kill must schedule; a suspended push must not");
            assert!(matches!(mb.next(&mut Some(())), Next::Exit(ExitReason::Killed)));
        });
    }
}
